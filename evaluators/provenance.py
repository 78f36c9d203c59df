"""Provenance of a verdict: which torch, triton, Python, package, GPU and driver judged it."""

from __future__ import annotations

import torch


def provenance(device: str) -> dict:
    """Versions of what judged (torch, triton, python, this package) and, on CUDA, the GPU and driver."""
    import platform

    import triton

    from .version import __version__

    info = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "triton_evolve": __version__,
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["driver"] = driver_version()
    return info


def driver_version() -> str | None:  # pragma: no cover - needs a GPU
    """The CUDA driver's version (cuDriverGetVersion through libcuda), None where there is none."""
    try:
        import ctypes

        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        lib.cuDriverGetVersion(ctypes.byref(v))
        return f"{v.value // 1000}.{(v.value % 1000) // 10}"
    except OSError:
        return None
