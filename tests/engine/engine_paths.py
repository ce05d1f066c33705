"""Paths and recipes the `build` tests share (a plain module: `conftest` names clash across test directories)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
RECIPES = ROOT / "build_configs"
SMOLLM2_RECIPE = RECIPES / "build_smollm2_135m_cpu.yaml"
TINY_PAIR_SHAPES = {"block_size": "4", "max_seq_len": "256", "max_input_len": "128"}


def write_recipe(path: Path, **fields: str) -> Path:
    """The embedded recipe with top-level `fields` set (e.g. dtype="bf16", tp_size="2"), written to `path`."""
    text = SMOLLM2_RECIPE.read_text()
    for key, value in fields.items():
        text, found = re.subn(rf"^{key}: \S+", f"{key}: {value}", text, flags=re.M)
        assert found == 1, f"{SMOLLM2_RECIPE} has no top-level '{key}'"
    path.write_text(text)
    return path
