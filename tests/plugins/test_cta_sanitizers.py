"""The kernels' CTA functions under the sanitizers, through ctest (plugins/tests/cta, DFLASH_TRT_SANITIZE=ON).

The plugins' host build runs a CTA's items in order on one thread, where sync() does nothing: it cannot
see a missing barrier. These ctest tests run the same CTA functions
  - with one std::thread per GPU thread and std::barrier as sync(), under ThreadSanitizer;
  - in reverse and strided item and CTA order over NaN-filled shared memory and workspace, under
    ASan + UBSan;
each bit for bit against the in-order run, which is checked against a naive reference; and
  - delete each `group.sync();` of the math headers in turn, requiring ThreadSanitizer to fail the
    threaded harness (the mutation check).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

CTEST_TESTS = {  # ctest name: the CMakeCache flag saying the compiler supports its sanitizers
    "cta_threaded_tsan": "DFLASH_TRT_HAS_TSAN",
    "cta_sync_mutants_tsan": "DFLASH_TRT_HAS_TSAN",
    "cta_reordered_asan_ubsan": "DFLASH_TRT_HAS_ASAN_UBSAN",
}


def _supported(build, flag: str) -> bool:
    return f"{flag}:INTERNAL=1" in (build.dir / "CMakeCache.txt").read_text()


def _ctest(build, name: str) -> str:
    ctest = shutil.which("ctest")
    if ctest is None:
        pytest.skip("ctest is not installed")
    if not _supported(build, CTEST_TESTS[name]):
        pytest.skip(f"the C++ compiler lacks the sanitizer for {name} ({CTEST_TESTS[name]} is off in CMakeCache.txt)")
    result = subprocess.run(
        [ctest, "--test-dir", str(build.dir), "-R", f"^{name}$", "--output-on-failure", "-V"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert re.search(rf"{name} \.+\s+Passed", result.stdout), result.stdout[-4000:]
    return result.stdout


def test_ctest_lists_every_sanitizer_test(sanitize_build):
    ctest = shutil.which("ctest") or pytest.skip("ctest is not installed")
    listed = subprocess.run(
        [ctest, "--test-dir", str(sanitize_build.dir), "-N"], capture_output=True, text=True, check=True
    ).stdout
    expected = {name for name, flag in CTEST_TESTS.items() if _supported(sanitize_build, flag)}
    assert expected == {name for name in CTEST_TESTS if f": {name}" in listed}


def test_threaded_ctas_have_no_data_race(sanitize_build):
    out = _ctest(sanitize_build, "cta_threaded_tsan")
    assert "ThreadSanitizer" not in out
    passed = re.findall(r"PASS (\S+)", out)
    assert {
        "attention_splits_threaded_bitwise",
        "attention_window_rowtiles_threaded_bitwise",
        "attention_paged_threaded_bitwise",
        "append_paged_d64_threaded_bitwise",
        "accept_threaded_equal",
    } <= set(passed)
    assert "SUMMARY failures=0" in out


def test_reordered_ctas_over_nan_memory_are_clean_under_asan_ubsan(sanitize_build):
    out = _ctest(sanitize_build, "cta_reordered_asan_ubsan")
    passed = set(re.findall(r"PASS (\S+)", out))
    for case in ("attention_splits", "attention_window_rowtiles", "attention_paged", "append_contiguous_d128"):
        assert {f"{case}_reverse_bitwise", f"{case}_strided_bitwise"} <= passed, case
    assert "runtime error" not in out and "AddressSanitizer" not in out


def test_deleting_any_sync_makes_thread_sanitizer_fail(sanitize_build):
    out = _ctest(sanitize_build, "cta_sync_mutants_tsan")
    m = re.search(r"SUMMARY caught=(\d+) mutants=(\d+)", out)
    assert m and m.group(1) == m.group(2), out[-3000:]
    assert int(m.group(2)) >= 6  # 4 barriers in the attention CTA, 2 in the append CTA
    assert "SURVIVED" not in out
