"""What accelerators this machine has (the project must run and test without any)."""

from __future__ import annotations

import shutil
import subprocess


def has_gpu() -> bool:
    """True when an NVIDIA GPU is usable: torch sees CUDA, or `nvidia-smi -L` lists a device."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    return result.returncode == 0 and "GPU" in result.stdout
