"""The CUDA build of plugins/: nvcc compiles every kernel as sm_80, sm_90, sm_100 and sm_120 SASS plus
compute_80 PTX with warnings as errors, ptxas reports no spills, and the resulting plugin library works
through TensorRT's entry points.

Without a GPU the kernels are compiled, not executed: the harness then checks that enqueue fails
cleanly (a logged error, no crash). The `gpu` tests run the kernels against the PyTorch reference
through libdflash_trt_math_cuda.so; they are skipped on machines without an NVIDIA GPU.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_host_math import GRID, TOLERANCE, MathLib, case_id, make_inputs, to_paged
from test_host_plugins import HOST_CASES, run_harness

from dflash_trt.hardware import has_gpu
from dflash_trt.plugins.reference import dflash_block_attention

ARCH_FLAGS = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ("80", "90", "100", "120")]
PTX_FLAG = "-gencode=arch=compute_80,code=compute_80"  # JIT-compiled by the driver for any other GPU >= 8.0
WERROR_FLAGS = ["-Werror=all-warnings", "-Xcompiler=-Wall,-Wextra,-Werror", "-Xptxas=-v"]
ROOT = Path(__file__).resolve().parents[2]
PTXAS_TOOL = ROOT / "plugins" / "tools" / "ptxas_resources.py"


def test_every_kernel_compiles_for_sm80_sm90_sm100_sm120_and_ptx_with_warnings_as_errors(cuda_build):
    commands = json.loads((cuda_build.dir / "compile_commands.json").read_text())
    compiled = {c["file"]: c["command"] for c in commands if c["file"].endswith(".cu")}
    sources = {str(p) for p in (cuda_build.dir.parents[1] / "src").rglob("*.cu")}
    assert sources and set(compiled) == sources, "every .cu under plugins/src is built"
    for source, command in compiled.items():
        flags = command.split()
        for flag in ARCH_FLAGS + [PTX_FLAG] + WERROR_FLAGS:
            assert flag in flags, f"{source} is compiled without {flag}"
        assert not [f for f in flags if f.startswith("-gencode") and f not in ARCH_FLAGS + [PTX_FLAG]], (
            "no arch-specific (a/f) targets: the kernels use no arch-specific instruction"
        )
    for artifact in (cuda_build.plugin_library, cuda_build.math_cuda, cuda_build.harness):
        assert artifact.is_file()


def test_cuda_plugin_library_through_tensorrt_entry_points(cuda_build):
    gpu = has_gpu()
    result, outcomes = run_harness(
        cuda_build.harness, cuda_build.plugin_library, *([] if gpu else ["--expect-enqueue-error"])
    )
    failed = [line for line in outcomes.values() if line.startswith("FAIL")]
    assert not failed, "\n".join(failed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend cuda" in result.stdout
    interface_cases = {c for c in HOST_CASES if "enqueue_host" not in c and "missing_page" not in c}
    error_cases = (
        set()
        if gpu
        else {
            "block_attention_enqueue_reports_cuda_error",
            "accept_tokens_enqueue_reports_cuda_error",
            "collectives_enqueue_reports_no_communicator",
        }
    )
    missing = (interface_cases | error_cases) - outcomes.keys()
    assert not missing, f"harness cases that did not run: {sorted(missing)}"


def test_ptxas_resources_no_spills_and_readme_table_current(cuda_build):
    """ptxas -v figures of every kernel and architecture (kept by the build's compiler launcher): no spill
    stores or loads, no stack frame, and plugins/README.md carries the current table."""
    result = subprocess.run(
        ["ctest", "--test-dir", str(cuda_build.dir), "-R", "^ptxas_resources$", "--output-on-failure"],
        capture_output=True,
        text=True,
    )  # the same check, via ctest
    assert result.returncode == 0 and "0 tests failed out of 1" in result.stdout, result.stdout[-3000:]
    table = subprocess.run(
        [sys.executable, str(PTXAS_TOOL), str(cuda_build.dir)], capture_output=True, text=True, check=True
    ).stdout
    assert "112 kernel builds (28 instantiations x 4 architectures): 0 bytes of spill stores and loads" in table
    for arch in ("sm_80", "sm_90", "sm_100", "sm_120"):
        assert f"{arch} regs" in table


def test_cuda_library_imports_no_copy_and_no_error_clearing(cuda_build):
    """The CUDA plugin library cannot copy a cache or clear another component's error: it imports no
    cudaMemcpy* and no cudaGetLastError from the CUDA runtime."""
    nm = subprocess.run(
        ["nm", "-D", "--undefined-only", str(cuda_build.plugin_library)], capture_output=True, text=True, check=True
    ).stdout
    imported = {line.split()[-1].split("@")[0] for line in nm.splitlines()}
    assert {"__cudaLaunchKernel", "cudaPeekAtLastError", "cudaFuncSetAttribute", "cudaMemsetAsync"} <= imported
    assert not {name for name in imported if name.startswith("cudaMemcpy") or name == "cudaGetLastError"}


# (compute capability, SMs, opt-in shared memory per CTA, shared memory per SM) answered by the fake runtime
FAKE_DEVICES = {
    "h100": (9, 0, 132, 227 * 1024, 228 * 1024),
    "rtx5090": (12, 0, 170, 99 * 1024, 100 * 1024),
    "t4": (7, 5, 40, 64 * 1024, 64 * 1024),
}


def _fake_runtime(cuda_build, tmp_path, device: str) -> tuple[dict[str, list[int]], list[str]]:
    """Run the harness's --fake-cuda-runtime cases on the CUDA build with tests/fakeCudart preloaded: the
    launches' host side runs for real, no kernel executes. Returns each step's statuses and the runtime log."""
    log = tmp_path / f"{device}.log"
    env = dict(
        os.environ,
        LD_PRELOAD=str(cuda_build.dir / "libdflash_trt_fake_cudart.so"),
        FAKE_CUDART_LOG=str(log),
        FAKE_CUDART_DEVICE=",".join(map(str, FAKE_DEVICES[device])),
    )
    result = subprocess.run(
        [str(cuda_build.harness), str(cuda_build.plugin_library), "--fake-cuda-runtime"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0 and "PASS fake_runtime_launches" in result.stdout, result.stdout + result.stderr
    statuses: dict[str, list[int]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("FAKE "):
            _, step, call, status = line.split()
            statuses.setdefault(f"{step} {call}", []).append(int(status))
    return statuses, log.read_text().splitlines() if log.exists() else []


def test_cuda_launches_on_a_fake_runtime_h100(cuda_build, tmp_path):
    """Compiled and host-side executed (no kernel runs): Qwen3-8B shape, batch 1, S 4096 on 132 SMs. The
    attention launches one kernel of 17 key splits x 8 kv heads (no merge kernel), 128 threads and the
    64-row tile's 108,292 B of shared memory, after a 32-byte memset of its 8 semaphores; the shared-memory
    limit is raised once per kernel, not per enqueue; every launch is checked with cudaPeekAtLastError; the
    KV appends launch (5 rows, 8 kv heads) in place and copy nothing; separate outputs are refused."""
    statuses, log = _fake_runtime(cuda_build, tmp_path, "h100")
    assert statuses["attention enqueue"] == [0, 0, 0] and statuses["paged_attention enqueue"] == [0]
    assert statuses["append enqueue"] == [0] and statuses["paged_append enqueue"] == [0]
    assert statuses["append_separate_outputs enqueue"] == [-1]
    launches = [line for line in log if line.startswith("launch")]
    assert launches == ["launch 17 8 1 128 1 1 108292"] * 4 + ["launch 5 8 1 128 1 1 0"] * 2
    assert [line for line in log if line.startswith("funcSetAttribute")] == [f"funcSetAttribute 8 {227 * 1024}"] * 2
    assert [line for line in log if line.startswith("memsetAsync")] == ["memsetAsync 32"] * 4
    assert log.count("peekAtLastError") == len(launches)
    assert not [line for line in log if line.startswith(("memcpyAsync", "getLastError"))]


def test_cuda_launches_on_a_fake_runtime_consumer_part(cuda_build, tmp_path):
    """99 KB per CTA (sm_120 consumer parts): 32-row tiles of 70,660 B, so 2 row tiles x 17 splits."""
    statuses, log = _fake_runtime(cuda_build, tmp_path, "rtx5090")
    assert statuses["attention onShapeChange"] == [0] and statuses["attention enqueue"] == [0, 0, 0]
    assert [line for line in log if line.startswith("launch 34")] == ["launch 34 8 1 128 1 1 70660"] * 4
    assert [line for line in log if line.startswith("funcSetAttribute")] == [f"funcSetAttribute 8 {99 * 1024}"] * 2


def test_cuda_plugins_refuse_an_unsupported_device(cuda_build, tmp_path):
    """Compute capability 7.5: every plugin refuses at build time (configurePlugin) and at run time
    (onShapeChange), the attention's enqueue too, and nothing is launched."""
    statuses, log = _fake_runtime(cuda_build, tmp_path, "t4")
    for step in ("attention", "paged_attention", "append", "paged_append"):
        assert statuses[f"{step} configure"] == [-1] and statuses[f"{step} onShapeChange"] == [-1], step
    assert statuses["attention enqueue"] == [-1, -1, -1]
    assert not [line for line in log if line.startswith(("launch", "funcSetAttribute", "memsetAsync"))]


@pytest.fixture(scope="module")
def cuda_math(cuda_build) -> MathLib:
    lib = MathLib(cuda_build.math_cuda)
    lib.lib.dflash_math_device_count.restype = ctypes.c_int32
    count = lib.lib.dflash_math_device_count()
    if count <= 0:
        pytest.skip(f"no usable CUDA device (cudaGetDeviceCount: {count})")
    assert lib.lib.dflash_math_backend() == b"cuda"
    return lib


@pytest.mark.gpu
@pytest.mark.parametrize("case", GRID, ids=[case_id(c) for c in GRID])
def test_cuda_block_attention_matches_reference(cuda_math, case):
    inputs = make_inputs(
        case["dtype"],
        case["batch"],
        case["block"],
        case["num_heads"],
        case["num_kv_heads"],
        case["head_dim"],
        case["cache"],
        case["ctx_lens"],
        case["seed"],
    )
    attrs = dict(
        num_heads=case["num_heads"],
        num_kv_heads=case["num_kv_heads"],
        head_dim=case["head_dim"],
        window=case["window"],
        qk_norm=case["qk_norm"],
        eps=1e-6,
    )
    got = cuda_math.block_attention(*inputs, **attrs, keys_per_split=case["keys_per_split"])
    want = dflash_block_attention(*inputs, **attrs)
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCE[case["dtype"]])


@pytest.mark.gpu
def test_cuda_paged_equals_contiguous(cuda_math):
    """On the device too, the paged layout reads exactly the contiguous layout's keys (same kernel math)."""
    inputs = make_inputs(torch.float16, 3, 8, 8, 2, 128, 700, [0, 699, 300], seed=31)
    attrs = dict(num_heads=8, num_kv_heads=2, head_dim=128, window=0, qk_norm=1, eps=1e-6)
    pool, table = to_paged(inputs[5], inputs[6], 64, seed=3)
    got = cuda_math.paged_block_attention(*inputs[:5], pool, table, inputs[7], **attrs)
    assert torch.equal(got, cuda_math.block_attention(*inputs, **attrs))


# Device vs host math, fp32. Both run the same code; they differ in (a) FMA contraction: nvcc fuses a*b + c
# (one rounding instead of two) in the 64-128-term dot products and in RoPE, ~2^-24 relative per term, and
# (b) expf/sqrtf: the device's full-precision expf is within 2 ulp, glibc's within 1. Through the softmax the
# outputs (|out| <~ 3) then differ by a few 1e-6 absolute at most; 2e-6 was at that edge. 2e-5 absolute /
# 1e-5 relative still sits 5x inside the reference tolerance (2e-5 / 1e-4) and far below a real bug (>1e-3).
DEVICE_VS_HOST = dict(atol=2e-5, rtol=1e-5)


@pytest.mark.gpu
def test_cuda_kernels_equal_host_math(cuda_math, host_build):
    """The kernels and the host build run the same math: they agree far below the dtype tolerances."""
    host = MathLib(host_build.math_host)
    g = torch.Generator().manual_seed(12)
    inputs = make_inputs(torch.float32, 3, 16, 16, 2, 128, 1500, [0, 1500, 777], seed=12)
    attrs = dict(num_heads=16, num_kv_heads=2, head_dim=128, window=0, qk_norm=1, eps=1e-6)
    torch.testing.assert_close(
        cuda_math.block_attention(*inputs, **attrs), host.block_attention(*inputs, **attrs), **DEVICE_VS_HOST
    )
    kv = torch.randn(3, 5, 2 * 2 * 128, generator=g)
    caches = [torch.randn(3, 2, 40, 128, generator=g) for _ in range(2)]
    ctx, new_lens = torch.tensor([0, 37, 12], dtype=torch.int32), torch.tensor([5, 5, 2], dtype=torch.int32)
    append = dict(num_kv_heads=2, head_dim=128, qk_norm=1, eps=1e-6)
    got = cuda_math.context_kv_append(
        kv, inputs[2], inputs[3], inputs[4], *[c.clone() for c in caches], ctx, new_lens, **append
    )
    want = host.context_kv_append(
        kv, inputs[2], inputs[3], inputs[4], *[c.clone() for c in caches], ctx, new_lens, **append
    )
    torch.testing.assert_close(got, want, **DEVICE_VS_HOST)
    target = torch.randint(0, 2, (300, 8), generator=g, dtype=torch.int32)
    draft = target[:, :-1].clone()
    draft[::3, 2] = 5
    assert all(
        torch.equal(a, b) for a, b in zip(cuda_math.accept_tokens(draft, target), host.accept_tokens(draft, target))
    )
