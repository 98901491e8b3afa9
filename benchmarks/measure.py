"""What only the benchmark needs: the device's name and peak memory (moved out of nst_utils)."""

from __future__ import annotations

import os
import platform

import torch


def device_name(device: torch.device | str) -> str:
    """A readable name of the device: ``NVIDIA H100 80GB HBM3``, or the CPU model and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            models = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            name = next(models, name)
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def rss_to_mb(ru_maxrss: int) -> float:
    """``ru_maxrss`` as reported by getrusage/wait4 (KiB on Linux, bytes on macOS) in MiB."""
    return ru_maxrss / 2**20 if platform.system() == "Darwin" else ru_maxrss / 2**10


def peak_memory_mb(device: torch.device | str) -> float | None:
    """Peak memory of this process so far in MiB.

    ``torch.cuda.max_memory_allocated`` on CUDA, else the peak resident memory (None on Windows).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return None
    if os.name != "posix":
        return None
    return rss_to_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
