"""The CUDA build of plugins/: nvcc compiles every kernel for sm_90a, sm_100a and sm_103a with
warnings as errors, and the resulting plugin library works through TensorRT's entry points.

Without a GPU the kernels are compiled, not executed: the harness then checks that enqueue fails
cleanly (a logged error, no crash). The `gpu` tests run the kernels against the PyTorch reference
through libdflash_trt_math_cuda.so; they are skipped on machines without an NVIDIA GPU.
"""

from __future__ import annotations

import ctypes
import json

import pytest
import torch

from dflash_trt.hardware import has_gpu
from dflash_trt.plugins.reference import dflash_block_attention
from test_host_math import GRID, TOLERANCE, MathLib, case_id, make_inputs
from test_host_plugins import HOST_CASES, run_harness

ARCH_FLAGS = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ("90a", "100a", "103a")]
WERROR_FLAGS = ["-Werror=all-warnings", "-Xcompiler=-Wall,-Wextra,-Werror"]


def test_every_kernel_compiles_for_sm90a_sm100a_sm103a_with_warnings_as_errors(cuda_build):
    commands = json.loads((cuda_build.dir / "compile_commands.json").read_text())
    compiled = {c["file"]: c["command"] for c in commands if c["file"].endswith(".cu")}
    sources = {str(p) for p in (cuda_build.dir.parents[1] / "src").rglob("*.cu")}
    assert sources and set(compiled) == sources, "every .cu under plugins/src is built"
    for source, command in compiled.items():
        for flag in ARCH_FLAGS + WERROR_FLAGS:
            assert flag in command.split(), f"{source} is compiled without {flag}"
    for artifact in (cuda_build.plugin_library, cuda_build.math_cuda, cuda_build.harness):
        assert artifact.is_file()


def test_cuda_plugin_library_through_tensorrt_entry_points(cuda_build):
    gpu = has_gpu()
    result, outcomes = run_harness(cuda_build.harness, cuda_build.plugin_library,
                                   *([] if gpu else ["--expect-enqueue-error"]))
    failed = [line for line in outcomes.values() if line.startswith("FAIL")]
    assert not failed, "\n".join(failed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend cuda" in result.stdout
    interface_cases = {c for c in HOST_CASES if "enqueue_host" not in c}
    error_cases = set() if gpu else {"block_attention_enqueue_reports_cuda_error",
                                     "accept_tokens_enqueue_reports_cuda_error"}
    missing = (interface_cases | error_cases) - outcomes.keys()
    assert not missing, f"harness cases that did not run: {sorted(missing)}"


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
    inputs = make_inputs(case["dtype"], case["batch"], case["block"], case["num_heads"], case["num_kv_heads"],
                         case["head_dim"], case["cache"], case["ctx_lens"], case["seed"])
    attrs = dict(num_heads=case["num_heads"], num_kv_heads=case["num_kv_heads"], head_dim=case["head_dim"],
                 window=case["window"], qk_norm=case["qk_norm"], eps=1e-6)
    got = cuda_math.block_attention(*inputs, **attrs, keys_per_split=case["keys_per_split"])
    want = dflash_block_attention(*inputs, **attrs)
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCE[case["dtype"]])


@pytest.mark.gpu
def test_cuda_kernels_equal_host_math(cuda_math, host_build):
    """The kernels and the host build run the same math: they agree far below the dtype tolerances
    (only expf/sqrtf implementations and FMA contraction differ)."""
    host = MathLib(host_build.math_host)
    g = torch.Generator().manual_seed(12)
    inputs = make_inputs(torch.float32, 3, 16, 16, 2, 128, 1500, [0, 1500, 777], seed=12)
    attrs = dict(num_heads=16, num_kv_heads=2, head_dim=128, window=0, qk_norm=1, eps=1e-6)
    torch.testing.assert_close(cuda_math.block_attention(*inputs, **attrs), host.block_attention(*inputs, **attrs),
                               atol=2e-6, rtol=2e-6)
    kv = torch.randn(3, 5, 2 * 2 * 128, generator=g)
    caches = [torch.randn(3, 2, 40, 128, generator=g) for _ in range(2)]
    ctx, new_lens = torch.tensor([0, 37, 12], dtype=torch.int32), torch.tensor([5, 5, 2], dtype=torch.int32)
    append = dict(num_kv_heads=2, head_dim=128, qk_norm=1, eps=1e-6, in_place=False)
    got = cuda_math.context_kv_append(kv, inputs[2], inputs[3], inputs[4], *caches, ctx, new_lens, **append)
    want = host.context_kv_append(kv, inputs[2], inputs[3], inputs[4], *caches, ctx, new_lens, **append)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)
    target = torch.randint(0, 2, (300, 8), generator=g, dtype=torch.int32)
    draft = target[:, :-1].clone()
    draft[::3, 2] = 5
    assert all(torch.equal(a, b) for a, b in zip(cuda_math.accept_tokens(draft, target),
                                                  host.accept_tokens(draft, target)))
