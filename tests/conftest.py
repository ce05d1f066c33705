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
