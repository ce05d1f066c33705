"""The IPluginV3 interfaces of libdflash_trt_plugins.so (host build), exercised by the C++ harness.

The harness (plugins/tests/harness) loads the library with dlopen, reaches the plugins only
through the exported getCreators/setLoggerFinder, and prints one PASS/FAIL line per case.
"""

from __future__ import annotations

import subprocess

# Every case the harness must run against a host build; a case that silently stops running fails here.
HOST_CASES = {
    "creators_exported",
    "block_attention_field_names",
    "block_attention_capabilities",
    "block_attention_output_types",
    "block_attention_output_shapes",
    "block_attention_shape_mismatch_refused",
    "block_attention_formats",
    "block_attention_serialize_roundtrip",
    "block_attention_defaults",
    "block_attention_64bit_fields",
    "block_attention_invalid_attributes",
    "block_attention_configure_and_workspace",
    "block_attention_enqueue_host",
    "block_attention_enqueue_host_key_splits",
    "block_attention_enqueue_host_invalid_ctx_is_nan",
    "kv_append_field_names",
    "kv_append_aliasing",
    "kv_append_output_shapes_and_types",
    "kv_append_formats",
    "kv_append_serialize_and_invalid_attributes",
    "kv_append_enqueue_host_in_place",
    "kv_append_enqueue_host_separate_outputs_refused",
    "paged_kv_append_enqueue_host",
    "paged_kv_append_aliasing_and_shapes",
    "paged_block_attention_shapes",
    "paged_block_attention_enqueue_host",
    "paged_block_attention_missing_page_is_nan",
    "accept_tokens_fields",
    "accept_tokens_shapes_types_formats",
    "accept_tokens_enqueue_host",
    "all_reduce_fields",
    "all_reduce_shapes_types_formats",
    "all_gather_fields_and_serialize",
    "all_gather_output_shapes",
    "all_gather_types_formats_workspace",
    "collectives_enqueue_host_needs_cuda_build",
    "null_logger_finder",
}


def run_harness(harness, library, *args) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    result = subprocess.run([str(harness), str(library), *args], capture_output=True, text=True, timeout=120)
    outcomes = {}
    for line in result.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("PASS", "FAIL"):
            outcomes[rest.split(":")[0]] = line
    return result, outcomes


def test_harness_passes_on_host_build(host_build):
    result, outcomes = run_harness(host_build.harness, host_build.plugin_library)
    failed = [line for line in outcomes.values() if line.startswith("FAIL")]
    assert not failed, "\n".join(failed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend host" in result.stdout
    missing = HOST_CASES - outcomes.keys()
    assert not missing, f"harness cases that did not run: {sorted(missing)}"


def test_null_logger_finder_reports_on_stderr(host_build):
    """With no logger (TensorRT-RTX passes a null finder) a refused plugin is explained on stderr."""
    result, outcomes = run_harness(host_build.harness, host_build.plugin_library)
    assert outcomes["null_logger_finder"].startswith("PASS")
    assert "[dflash_trt] DFlashBlockAttention 'null_finder': num_heads (0)" in result.stderr


def test_library_exports_only_the_entry_points(host_build):
    """TensorRT finds the plugins through getCreators/setLoggerFinder, the runtime the backend and the NCCL
    communicator entry points; nothing else leaks out."""
    nm = subprocess.run(
        ["nm", "-D", "--defined-only", str(host_build.plugin_library)], capture_output=True, text=True, check=True
    )
    exported = {line.split()[-1] for line in nm.stdout.splitlines() if " T " in line}
    assert exported == {
        "getCreators",
        "setLoggerFinder",
        "dflashTrtPluginsBackend",
        "dflash_trt_nccl_unique_id",
        "dflash_trt_nccl_init",
    }
