"""The embedded pair's cached engine directory is named by a digest of what it is made from: the digest moves with
the drafter's files and with the source that models, exports and builds the graphs, and that source list covers
every module a build imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from dflash_trt.engine import default
from tiny import hf_config, save_hf_target, save_zlab_drafter

# imported by a build but changing nothing in what it writes: docstring-only package files, exceptions, the atomic
# rename, a file name constant
BESIDE_THE_GRAPHS = {
    "dflash_trt",
    "dflash_trt.runtime",
    "dflash_trt.decoding",
    "dflash_trt.errors",
    "dflash_trt.atomic",
    "dflash_trt.decoding.choice",
}
BUILD_MODULES = ("engine.build", "export.onnx", "export.plugin_ops", "runtime.loading")


def test_every_source_exists():
    for source in default.SOURCES:
        assert (default.PACKAGE / source).exists(), source


def test_the_sources_cover_what_a_build_imports():
    code = (
        "import importlib, json, sys\n"
        f"for m in {BUILD_MODULES!r}: importlib.import_module('dflash_trt.' + m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('dflash_trt'))))"
    )
    modules = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    covered = {s.removesuffix(".py").replace("/", ".") for s in default.SOURCES}
    outside = [
        m
        for m in modules
        if m not in BESIDE_THE_GRAPHS
        and not any(m == f"dflash_trt.{c}" or m.startswith(f"dflash_trt.{c}.") for c in covered)
    ]
    assert not outside, f"add them to engine.default.SOURCES: {outside}"


def test_digest_follows_the_drafter_files(tmp_path):
    target = save_hf_target(tmp_path / "t", "qwen3")
    (target / default.MANIFEST).write_text("{}")
    drafter = save_zlab_drafter(tmp_path / "d", hf_config("qwen3"), block_size=4)
    first = default._digest(target, drafter)
    assert default._digest(target, drafter) == first and len(first) == 12
    copy = shutil.copytree(drafter, tmp_path / "copy")
    assert default._digest(target, copy) == first  # the files' contents decide, not where they are
    (copy / "README.md").write_text("how it was trained")
    assert default._digest(target, copy) == first  # its documentation changes nothing in the graphs
    (copy / "acceptance.json").write_text(json.dumps({"position_acceptance": [0.5]}))
    assert default._digest(target, copy) != first
