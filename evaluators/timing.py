"""GPU timing protocol: time an untrusted candidate matmul against torch.matmul.

Runs inside the evaluator's child process. Each measure answers an exploit in the
cheating table of /work/shared/REFERENCES.md:

- fixed warm-up/rep counts (never time-based): a candidate cannot detect warm-up by timing;
- input convention: ``inputs[0]`` is the warm-up set and is never timed; timed calls cycle
  over ``inputs[1 : 1 + rotating_buffers]`` so that no two consecutive calls share input
  addresses and results cached during warm-up cannot be replayed in timed reps;
- L2 flushed before every timed call and persisting L2 reset at the start of every trial;
- ``device.synchronize()`` (device-wide) before the end event, so side-stream work counts;
- wall clock measured around the same region as a cross-check on the events;
- candidate and baseline interleaved, alternating which goes first, same protocol;
- outputs of timed candidate calls returned for re-verification (``PairTiming.rechecks``).

All device access goes through the ``Device`` protocol so that the order of operations is
tested on CPU with a fake device; ``CudaDevice`` is the small real implementation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import glob
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

# Bound at import, before any candidate code runs: patching time.perf_counter later does not reach us.
_perf_counter = time.perf_counter

WALL_GUARD_RATIO = 0.25  # event median below this fraction of the wall median => hidden work
WALL_GUARD_MIN_S = 1e-3  # ...only when the wall median is above this (below it, launch overhead dominates)


class TimingError(Exception):
    """The protocol detected tampering or an inconsistency; the candidate's timing is not trusted."""


@dataclasses.dataclass(frozen=True)
class TimingProtocol:
    """How one (candidate, baseline) pair is timed.

    warmup_reps: untimed calls per function per trial, on ``inputs[0]`` only (a fixed count,
        never time-based: a candidate may detect warm-up by timing).
    reps: timed calls per function per trial.
    trials: independent trials (>= 3), each starting with a persisting-L2 reset and warm-up.
    rotating_buffers: distinct timed input sets (>= 2), cycled so no two consecutive calls
        share addresses; ``inputs`` must hold ``rotating_buffers + 1`` sets (one for warm-up).
    flush_bytes_min: the L2 flush buffer is max(2 * L2 size, flush_bytes_min) bytes.
    """

    warmup_reps: int = 10
    reps: int = 30
    trials: int = 3
    rotating_buffers: int = 4
    flush_bytes_min: int = 256 << 20

    def __post_init__(self) -> None:
        if self.trials < 3:
            raise ValueError(
                f"TimingProtocol.trials must be >= 3 (spread across trials is measured), got {self.trials}"
            )
        if self.reps < 1:
            raise ValueError(f"TimingProtocol.reps must be >= 1, got {self.reps}")
        if self.warmup_reps < 0:
            raise ValueError(f"TimingProtocol.warmup_reps must be >= 0, got {self.warmup_reps}")
        if self.rotating_buffers < 2:
            raise ValueError(
                f"TimingProtocol.rotating_buffers must be >= 2 so consecutive calls never share input "
                f"addresses, got {self.rotating_buffers}"
            )
        if self.flush_bytes_min < 0:
            raise ValueError(f"TimingProtocol.flush_bytes_min must be >= 0, got {self.flush_bytes_min}")


@dataclasses.dataclass(frozen=True)
class Stats:
    """Event-timed seconds over all timed reps of all trials (numpy percentiles, linear)."""

    median_s: float
    q25_s: float
    q75_s: float
    iqr_s: float
    samples: int
    trial_medians_s: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class PairTiming:
    candidate: Stats
    baseline: Stats
    wall_median_s: float  # candidate's wall-clock median over the same region as its events
    rechecks: list  # [(input index, output)] of timed candidate calls, for the caller to verify
    baseline_wall_median_s: float = 0.0
    notes: tuple[str, ...] = ()  # device caveats (e.g. persisting-L2 reset unavailable)

    @property
    def speedup(self) -> float:
        """time(baseline) / time(candidate), by event medians."""
        return self.baseline.median_s / self.candidate.median_s


class Event(Protocol):
    def record(self) -> None: ...
    def elapsed_s(self, end: Event) -> float: ...


class Device(Protocol):
    """The seam between the protocol and the GPU (faked in tests)."""

    def synchronize(self) -> None: ...  # device-wide: all streams
    def new_event(self) -> Event: ...
    def flush_l2(self) -> None: ...  # overwrite a buffer >= 2x L2
    def reset_persisting_l2(self) -> None: ...
    def wall_clock(self) -> float: ...


def summarize(per_trial: Sequence[Sequence[float]]) -> Stats:
    """Median and IQR over all samples, plus each trial's median."""
    flat = np.asarray([s for trial in per_trial for s in trial], dtype=np.float64)
    if flat.size == 0:
        raise ValueError("no samples to summarize")
    q25, med, q75 = np.percentile(flat, [25, 50, 75], method="linear")
    return Stats(
        median_s=float(med),
        q25_s=float(q25),
        q75_s=float(q75),
        iqr_s=float(q75 - q25),
        samples=int(flat.size),
        trial_medians_s=tuple(float(np.median(t)) for t in per_trial),
    )


def buffer_index(fn_pos: int, pair: int, n: int) -> int:
    """Input index for function ``fn_pos`` (0 candidate, 1 baseline) in rep pair ``pair``.

    Each function steps through 1..n; the baseline is offset by n // 2 so that, with the
    first-mover alternating every pair, no two consecutive calls use the same set (n >= 2).
    """
    return 1 + (pair + fn_pos * (n // 2)) % n


def _timed_call(fn: Callable, args: tuple, device: Device) -> tuple[Any, float, float]:
    start, end = device.new_event(), device.new_event()
    device.flush_l2()
    w0 = device.wall_clock()
    start.record()
    out = fn(*args)
    device.synchronize()  # device-wide, before the end event: work put on other streams counts
    end.record()
    device.synchronize()
    w1 = device.wall_clock()
    elapsed = start.elapsed_s(end)
    if not (math.isfinite(elapsed) and elapsed > 0):
        raise TimingError(f"event timer returned {elapsed!r} s for one call; the timer is not trustworthy")
    return out, elapsed, w1 - w0


def time_pair(
    candidate: Callable,
    baseline: Callable,
    inputs: list[tuple],
    device: Device,
    protocol: TimingProtocol = TimingProtocol(),
    recheck_every: int = 0,
) -> PairTiming:
    """Time ``candidate`` against ``baseline`` under ``protocol``; see the module docstring.

    ``inputs[0]`` is used for warm-up only; ``inputs[1 : 1 + protocol.rotating_buffers]`` are
    timed (extra sets are ignored). ``recheck_every``: 0 keeps the output of the last timed
    candidate call on each rotating index; k > 0 considers only every k-th timed candidate call
    (1-based), again the last per index. Verify ``rechecks`` against ``inputs[index]``.
    Raises TimingError when the events disagree with the wall clock.
    """
    n = protocol.rotating_buffers
    if len(inputs) < n + 1:
        raise ValueError(
            f"need {n + 1} input sets (inputs[0] for warm-up + rotating_buffers={n} timed), got {len(inputs)}"
        )
    if recheck_every < 0:
        raise ValueError(f"recheck_every must be >= 0, got {recheck_every}")
    fns = (candidate, baseline)
    events: tuple[list[list[float]], list[list[float]]] = ([], [])
    walls: tuple[list[float], list[float]] = ([], [])
    rechecks: dict[int, Any] = {}
    candidate_calls = 0
    for trial in range(protocol.trials):
        device.reset_persisting_l2()  # a persisting-L2 carve-out would survive the flush
        for _ in range(protocol.warmup_reps):
            candidate(*inputs[0])
            baseline(*inputs[0])
        device.synchronize()  # warm-up work (on any stream) must not spill into the first timed call
        events[0].append([])
        events[1].append([])
        for rep in range(protocol.reps):
            pair = trial * protocol.reps + rep  # global, so odd `reps` still balances across trials
            for f in (0, 1) if pair % 2 == 0 else (1, 0):
                idx = buffer_index(f, pair, n)
                out, elapsed, wall = _timed_call(fns[f], inputs[idx], device)
                events[f][-1].append(elapsed)
                walls[f].append(wall)
                if f == 0:
                    candidate_calls += 1
                    if recheck_every == 0 or candidate_calls % recheck_every == 0:
                        rechecks[idx] = out  # replaces (frees) the older output for this index
                del out
    stats = (summarize(events[0]), summarize(events[1]))
    wall_medians = (float(np.median(walls[0])), float(np.median(walls[1])))
    for name, st, wall in zip(("candidate", "baseline"), stats, wall_medians, strict=True):
        _check_wall(name, st.median_s, wall)
    return PairTiming(
        candidate=stats[0],
        baseline=stats[1],
        wall_median_s=wall_medians[0],
        rechecks=sorted(rechecks.items()),
        baseline_wall_median_s=wall_medians[1],
        notes=tuple(getattr(device, "notes", ())),
    )


def _check_wall(name: str, event_median: float, wall_median: float) -> None:
    if wall_median > WALL_GUARD_MIN_S and event_median < WALL_GUARD_RATIO * wall_median:
        raise TimingError(
            f"{name}: event-timed median {event_median * 1e3:.3f} ms is below {WALL_GUARD_RATIO}x its "
            f"wall-clock median {wall_median * 1e3:.3f} ms: work is hidden from the CUDA events"
        )
    # The events lie strictly inside the wall-clock region, so they cannot be (much) longer.
    if event_median > 1.01 * wall_median + 20e-6:
        raise TimingError(
            f"{name}: event-timed median {event_median * 1e3:.3f} ms exceeds its wall-clock median "
            f"{wall_median * 1e3:.3f} ms: the timers are inconsistent"
        )


def check_speed_of_light(flops: float, time_s: float, peak_tflops: float | None) -> str | None:
    """A rejection message when flops/time_s exceeds the GPU's dense peak, else None.

    Returns None when ``peak_tflops`` is None (GPU not in the peak table): the guard cannot
    judge, and the CALLER must record that the check was skipped (e.g. in feedback/provenance).
    """
    if peak_tflops is None:
        return None
    if not (time_s > 0 and math.isfinite(time_s)):
        return f"impossible: measured time {time_s!r} s is not a positive duration"
    achieved = flops / time_s / 1e12
    if achieved > peak_tflops:
        return (
            f"impossible: {achieved:.1f} TFLOP/s measured, above the {peak_tflops:.1f} TFLOP/s "
            "dense peak of this GPU; the kernel must skip work or the timing was tampered with"
        )
    return None


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


def _load_cudart(notes: list[str], names: Iterable[str] | None = None) -> ctypes.CDLL | None:
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
        self.flush_bytes = max(2 * l2, flush_bytes_min)
        self._flush_buf = torch.empty(self.flush_bytes, dtype=torch.uint8, device=f"cuda:{self.index}")
        self._cudart = _load_cudart(self.notes)
        self._reset_failed = False

    def synchronize(self) -> None:
        self._sync(self.index)  # cudaDeviceSynchronize semantics: waits for every stream

    def new_event(self) -> _CudaEvent:
        return _CudaEvent(self._event_cls(enable_timing=True))

    def flush_l2(self) -> None:
        self._flush_buf.zero_()

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
