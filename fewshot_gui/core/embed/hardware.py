"""What the machine offers for inference: the default torch device and the CPU count to use."""

from __future__ import annotations

import os


def default_device() -> str:
    """``"cuda"`` when a CUDA device is present, else ``"cpu"``."""
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except Exception:  # pragma: no cover - torch import problems surface elsewhere
        pass
    return "cpu"


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    n = os.cpu_count() or 1
    try:
        n = len(os.sched_getaffinity(0)) or n
    except (AttributeError, OSError):
        pass
    return max(1, n)


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads not counted), at least 1."""
    try:
        pairs = set()
        phys = core = None
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                elif not line.strip():
                    if core is not None:
                        pairs.add((phys, core))
                    phys = core = None
        if core is not None:
            pairs.add((phys, core))
        n = len(pairs)
    except OSError:
        n = 0
    cpu = usable_cpus()
    return max(1, min(n, cpu) if n else cpu)
