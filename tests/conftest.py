"""Shared fixtures: tiny random Hugging Face checkpoints written to temporary directories."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    from dflash_trt.hardware import has_gpu

    if has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU; none is present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture()
def steady_machine(monkeypatch):
    """Calibration's speed-drift check off: a tiny pair decodes in about a millisecond, where two runs can differ
    by more than `calibration.DRIFT` by chance; tests that hand-write or reuse a cached entry take it as is."""
    from dflash_trt.bench import calibration

    monkeypatch.setattr(calibration, "DRIFT", float("inf"))
