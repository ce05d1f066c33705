"""What accelerators this machine has (the project must run and test without any)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


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


def cpu_has_bf16_matmul() -> bool:
    """True when the CPU multiplies bf16 natively (AMX-BF16 or AVX512-BF16 in Linux's /proc/cpuinfo flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
