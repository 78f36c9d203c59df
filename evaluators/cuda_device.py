"""The timing protocol's ``Device`` on a real CUDA GPU, and the settings a CUDA child makes.

The only GPU-only code of the timing (evaluators/timing.py runs against the ``Device``
protocol and is tested on the CPU with a fake): events, the device-wide sync, the L2
flush buffer, the stream hold (``torch.cuda._sleep``), the persisting-L2 reset through
libcudart, and the baseline's TF32 rule. Everything is bound when constructed, before
any candidate code runs, so later monkeypatching of torch.cuda or time does not reach it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import math
import os
import time
from collections.abc import Iterable
from typing import Any

from .timing import TimingProtocol, flush_size

# Bound at import, before any candidate code runs: patching time.perf_counter later does not reach us.
_perf_counter = time.perf_counter


def set_baseline_precision(dtype: str, allow_tf32: bool) -> str:
    """Give torch.matmul (the baseline) the precision the task allows; returns what is now set.

    An fp32 task that allows TF32 lets candidates round products to TF32, so cuBLAS must be
    allowed to as well, or speedups come out up to ~7x too high against a strict-fp32 baseline.
    Uses ``torch.backends.cuda.matmul.fp32_precision`` ("tf32" / "ieee"; torch >= 2.9, the API
    that replaced ``allow_tf32``, whose mixing with the new one raises in torch 2.9+). fp16/bf16
    tasks leave torch's defaults alone. Called in the child, which serves one candidate, before
    any candidate code runs; the value is reported to the parent, which records it.
    """
    import torch

    matmul = torch.backends.cuda.matmul
    if dtype == "fp32":
        matmul.fp32_precision = "tf32" if allow_tf32 else "ieee"
    return f"{dtype}: cuda.matmul.fp32_precision={matmul.fp32_precision}"


def _cudart_names() -> list[str]:
    """Where libcudart may be: the nvidia-cuda-runtime wheel (torch's own), then the system."""
    names: list[str] = []
    try:
        import nvidia  # namespace package of the nvidia-* wheels torch depends on

        for base in getattr(nvidia, "__path__", []):
            names += sorted(glob.glob(os.path.join(base, "*", "lib", "libcudart.so*")))
    except ImportError:
        pass
    found = ctypes.util.find_library("cudart")
    if found:
        names.append(found)
    return names + ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]


def load_cudart(notes: list[str], names: Iterable[str] | None = None) -> ctypes.CDLL | None:
    tried = list(_cudart_names() if names is None else names)
    for name in tried:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    notes.append(
        f"libcudart not found (tried {tried}); persisting-L2 reset skipped, a persisting-L2 "
        "carve-out could survive the flush"
    )
    return None


class _CudaEvent:
    def __init__(self, event: Any) -> None:
        self._event = event

    def record(self) -> None:
        self._event.record()

    def elapsed_s(self, end: _CudaEvent) -> float:
        return self._event.elapsed_time(end._event) / 1e3  # torch reports milliseconds


class CudaDevice:
    """``Device`` on one CUDA GPU via torch. ``notes`` lists caveats instead of failing silently."""

    def __init__(
        self, device: int | None = None, flush_bytes_min: int = TimingProtocol.flush_bytes_min
    ) -> None:
        import torch

        self.notes: list[str] = []
        self.index = torch.cuda.current_device() if device is None else int(device)
        # Bound now, before candidate code runs, so later monkeypatching of torch.cuda misses us.
        self._sync = torch.cuda.synchronize
        self._event_cls = torch.cuda.Event
        props = torch.cuda.get_device_properties(self.index)
        l2 = int(getattr(props, "L2_cache_size", 0) or 0)
        if l2 <= 0:
            l2 = 50 << 20  # H100's 50 MiB: the largest common L2, so the flush stays big enough
            self.notes.append("L2 size not reported by torch; assumed 50 MiB for the flush buffer")
        self.l2_bytes = l2
        self.flush_bytes = flush_size(l2, flush_bytes_min)
        self._flush_buf = torch.empty(self.flush_bytes, dtype=torch.uint8, device=f"cuda:{self.index}")
        self._cudart = load_cudart(self.notes)
        self._reset_failed = False
        # torch.cuda._sleep(cycles) spins one GPU thread on clock64(): the stream hold. Its rate
        # (cycles per second, the SM clock) is measured once here rather than read from a table.
        self._sleep = torch.cuda._sleep
        self.cycles_per_s = self._calibrate_hold()

    def _calibrate_hold(self, cycles: int = 2_000_000) -> float:
        self._sleep(1000)  # loads the sleep kernel's module outside the measurement
        start, end = self.new_event(), self.new_event()
        self.synchronize()
        start.record()
        self._sleep(cycles)
        end.record()
        self.synchronize()
        seconds = start.elapsed_s(end)
        if not (seconds > 0 and math.isfinite(seconds)):
            self.notes.append(f"GPU sleep calibration gave {seconds!r} s; assumed a 1.5 GHz clock")
            return 1.5e9
        return cycles / seconds

    def synchronize(self) -> None:
        self._sync(self.index)  # cudaDeviceSynchronize semantics: waits for every stream

    def new_event(self) -> _CudaEvent:
        return _CudaEvent(self._event_cls(enable_timing=True))

    def flush_l2(self) -> None:
        self._flush_buf.zero_()

    def hold(self, seconds: float) -> None:
        self._sleep(max(1, int(seconds * self.cycles_per_s)))

    def reset_persisting_l2(self) -> None:
        if self._cudart is None or self._reset_failed:
            return
        rt = self._cudart
        # Our libcudart copy has its own per-thread current device; point it at ours first.
        codes = (
            rt.cudaSetDevice(ctypes.c_int(self.index)),
            rt.cudaDeviceSetLimit(ctypes.c_int(0x06), ctypes.c_size_t(0)),  # cudaLimitPersistingL2CacheSize
            rt.cudaCtxResetPersistingL2Cache(),
        )
        if any(codes):
            self._reset_failed = True
            self.notes.append(f"persisting-L2 reset failed (cudaError codes {codes}); skipped from now on")

    def wall_clock(self) -> float:
        return _perf_counter()
