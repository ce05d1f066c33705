"""Paths the `build` tests share (a plain module: `conftest` names clash across test directories)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
RECIPES = ROOT / "build_configs"
SMOLLM2_RECIPE = RECIPES / "build_smollm2_135m_cpu.yaml"
