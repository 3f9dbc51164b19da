"""What the benchmark scripts share: the machine they ran on, as every results/*.json records it."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(gpu: bool = False, **extra) -> dict:
    """The "machine" of a results JSON: {"cpu", "cores", "gpu", **extra} (DESIGN.md, "Benchmark results").

    Args:
        gpu: name the CUDA device when one is present (a benchmark that uses it); otherwise "gpu" is None.
        extra: more keys after those three (a note on a shared machine, the torch threads, the load).
    """
    device = None
    if gpu:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": device, **extra}
