#!/usr/bin/env bash
# Configure and build the plugins/ CMake project into plugins/build/VARIANT (incremental after the first time):
#   host      libdflash_trt_plugins.so with the kernels' math on host memory (what TensorRT-RTX loads on a CPU host)
#   cuda      the CUDA kernels with nvcc: sm_80/90/100/120 SASS + compute_80 PTX, warnings as errors
#   sanitize  the CTA harnesses under ThreadSanitizer and ASan + UBSan, with their ctest tests
# Extra arguments go to `cmake --build` (e.g. --target NAME). A lock serialises concurrent builds of one directory;
# scripts/setup.sh and the test fixtures (tests/plugins/conftest.py) both build through this script.
# Env: PYTHON (default .venv/bin/python: the CUDA build finds nccl.h in its environment), JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${1:?usage: scripts/build_plugins.sh host|cuda|sanitize [cmake --build args]}
shift
PY=${PYTHON:-$PWD/.venv/bin/python}
case "$VARIANT" in
    host) OPTIONS=() ;;
    cuda)
        NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc /usr/local/bin/nvcc 2>/dev/null | head -1 || true)
        [ -n "$NVCC" ] || { echo "build_plugins.sh: nvcc not found; the cuda variant needs the CUDA toolkit" >&2; exit 2; }
        OPTIONS=(-DDFLASH_TRT_CUDA=ON "-DCMAKE_CUDA_COMPILER=$NVCC") ;;
    sanitize) OPTIONS=(-DDFLASH_TRT_SANITIZE=ON) ;;
    *) echo "build_plugins.sh: unknown variant '$VARIANT'; use host, cuda or sanitize" >&2; exit 2 ;;
esac
mkdir -p plugins/build
exec 9> "plugins/build/.$VARIANT.lock"
flock 9
# configuring a configured directory again is cheap and keeps the options current
cmake -S plugins -B "plugins/build/$VARIANT" "-DPython3_EXECUTABLE=$PY" \
    "-DDFLASH_TRT_HEADERS_CACHE=$PWD/plugins/build/_deps/kernel-lens" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
    "${OPTIONS[@]}"
cmake --build "plugins/build/$VARIANT" -j "${JOBS:-2}" "$@"
