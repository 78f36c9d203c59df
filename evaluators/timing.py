"""GPU timing protocol: time an untrusted candidate matmul against torch.matmul.

Runs inside the evaluator's child process. One timed *sample* is a batch of back-to-back
calls with the end event recorded before any host synchronisation:

    flush L2 -> hold the stream (a GPU sleep) -> start event -> `batch` calls -> end event -> sync

The hold keeps the GPU busy while the host enqueues the whole batch, so the events see
the calls run back to back: no host wake-up latency (a device-wide sync before the end
event used to add ~5-20 us per sample) and no launch gaps (Python launches of Triton
kernels take longer than a decode-sized kernel runs). ``batch`` is sized per function
from the framed guard calls so one sample lasts about ``batch_target_s``; a call of 1 ms
or more is timed alone. Each answer to the cheating table of /work/shared/REFERENCES.md:

- fixed warm-up/rep counts (never time-based): a candidate cannot detect warm-up by timing;
- ``inputs[0]`` is the warm-up set and is never timed; every timed call takes the next of
  ``inputs[1 : 1 + rotating_buffers]`` from one rotation shared by both functions, so no two
  consecutive calls (within a batch or across) share input addresses and results cached
  during warm-up cannot be replayed;
- L2: flushed (>= 2x L2, at least ``flush_bytes_min``) before every sample and persisting L2
  reset at the start of every trial. Within a batch the L2 is NOT flushed between calls
  (a flush would land inside the events): a call may find the previous calls' data in L2
  when the rotating sets together are smaller than 2x L2. ``PairTiming.notes`` says so for
  such shapes (decode shapes of real layers, with weights of tens of MiB per set, are not);
- side streams: the static rules forbid streams, events and graphs in a candidate. At run
  time, every trial also makes ``guard_reps`` *framed* calls per function: start event,
  call, device-wide sync (every stream), end event, so work on any stream counts. The
  candidate's framed median must not exceed ``GUARD_RATIO`` x its batched median plus
  ``guard_slack_s`` (a Python Triton launch costs more than cuBLAS's) plus the baseline's
  own framed-minus-batched gap (this host's launch and wake-up latency, measured on the
  trusted torch.matmul), else TimingError. Residual risk, stated: side-stream work shorter
  than about that allowance per call, or overlapping the hold, escapes this runtime guard
  (the static ban is the first line);
- wall clock around every framed call cross-checks its events (hidden host-side work, a
  patched timer), and every batched sample's events must lie inside its wall-clock span;
- candidate and baseline interleaved per sample pair, alternating which goes first, same
  protocol; outputs of timed candidate calls returned for re-verification (``rechecks``).

All device access goes through the ``Device`` protocol so that the order of operations is
tested on CPU with a fake device; ``evaluators/cuda_device.py: CudaDevice`` is the small real
implementation (the only GPU-only code of the timing).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

WALL_GUARD_RATIO = 0.25  # framed event median below this fraction of its wall median => hidden work
WALL_GUARD_MIN_S = 1e-3  # ...only when the wall median is above this (below it, launch overhead dominates)
GUARD_RATIO = 1.5  # framed (all streams) vs batched (timed stream) per-call time, see the module docstring
HOLD_MIN_S = 100e-6  # the stream hold covers at least this, plus...
HOLD_MARGIN = 3.0  # ...this many times the measured host time to enqueue the batch
HOLD_MAX_S = 20e-3  # beyond this the host cannot keep ahead anyway; the notes say so


class TimingError(Exception):
    """The protocol detected tampering or an inconsistency; the candidate's timing is not trusted."""


@dataclasses.dataclass(frozen=True)
class TimingProtocol:
    """How one (candidate, baseline) pair is timed.

    warmup_reps: untimed calls per function per trial, on ``inputs[0]`` only (a fixed count,
        never time-based: a candidate may detect warm-up by timing).
    reps: timed samples per function per trial (each a batch of back-to-back calls).
    trials: independent trials (>= 3), each starting with a persisting-L2 reset and warm-up.
    rotating_buffers: distinct timed input sets (>= 2), cycled so no two consecutive calls
        share addresses; ``inputs`` must hold ``rotating_buffers + 1`` sets (one for warm-up).
    flush_bytes_min: the L2 flush buffer is max(2 * L2 size, flush_bytes_min) bytes
        (256 MiB by default, as triton.testing.do_bench and KernelBench flush).
    batch_target_s: GPU seconds one sample aims at; calls shorter than this are batched
        (1 ms keeps event resolution, ~0.5 us, below 0.1% of a sample).
    max_batch: most calls in one sample (bounds the launch queue and the hold).
    guard_reps: framed calls per function per trial for the side-stream and wall guards (>= 1);
        their medians also size the batches.
    guard_slack_s: per-call allowance in the side-stream guard for the candidate's launch costing
        more than the baseline's (Triton launches from Python, ~20-50 us, plus the child's
        launch recording); the host's wake-up latency is measured on the baseline and added.
    """

    warmup_reps: int = 10
    reps: int = 30
    trials: int = 3
    rotating_buffers: int = 4
    flush_bytes_min: int = 256 << 20
    batch_target_s: float = 1e-3
    max_batch: int = 100
    guard_reps: int = 3
    guard_slack_s: float = 100e-6

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
        if self.max_batch < 1 or self.guard_reps < 1:
            raise ValueError(
                f"TimingProtocol.max_batch and guard_reps must be >= 1, got {self.max_batch}, {self.guard_reps}"
            )
        if not (self.batch_target_s > 0 and self.guard_slack_s >= 0):
            raise ValueError("TimingProtocol.batch_target_s must be > 0 and guard_slack_s >= 0")


@dataclasses.dataclass(frozen=True)
class Stats:
    """Event-timed seconds per call over all timed samples of all trials (numpy percentiles, linear)."""

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
    wall_median_s: float  # candidate's wall-clock median over its framed guard calls
    rechecks: list  # [(input index, output)] of timed candidate calls, for the caller to verify
    baseline_wall_median_s: float = 0.0
    notes: tuple[str, ...] = ()  # device caveats (e.g. persisting-L2 reset unavailable, warm L2)
    batch: tuple[int, int] = (1, 1)  # calls per sample: candidate, baseline
    guard_median_s: tuple[float, float] = (0.0, 0.0)  # framed per-call medians: candidate, baseline

    @property
    def speedup(self) -> float:
        """time(baseline) / time(candidate), by event medians."""
        return self.baseline.median_s / self.candidate.median_s


class Event(Protocol):
    def record(self) -> None: ...
    def elapsed_s(self, end: Event) -> float: ...


class Device(Protocol):
    """The seam between the protocol and the GPU (faked in tests).

    An optional ``l2_bytes`` attribute (int) lets ``time_pair`` say when a batch's rotating
    inputs fit in L2; an optional ``notes`` list carries device caveats.
    """

    def synchronize(self) -> None: ...  # device-wide: all streams
    def new_event(self) -> Event: ...
    def flush_l2(self) -> None: ...  # overwrite a buffer >= 2x L2
    def reset_persisting_l2(self) -> None: ...
    def hold(self, seconds: float) -> None: ...  # keep the current stream busy ~seconds (GPU sleep)
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


def batch_size(call_s: float, protocol: TimingProtocol) -> int:
    """Calls per sample so that one sample lasts about ``batch_target_s`` (1 for long calls)."""
    if not (call_s > 0 and math.isfinite(call_s)):
        return 1
    return max(1, min(protocol.max_batch, math.ceil(protocol.batch_target_s / call_s)))


def hold_seconds(calls: int, enqueue_s: float) -> float:
    """How long to hold the stream so the host can enqueue ``calls`` calls (of ``enqueue_s`` each)."""
    return min(HOLD_MAX_S, HOLD_MIN_S + HOLD_MARGIN * calls * max(enqueue_s, 0.0))


def flush_size(l2_bytes: int, flush_bytes_min: int) -> int:
    """Bytes of the L2 flush buffer: max(2 x L2, flush_bytes_min)."""
    return max(2 * int(l2_bytes), int(flush_bytes_min))


class _Pair:
    """The state of one ``time_pair`` run: the rotation, the rechecks and the per-function samples."""

    def __init__(self, fns: tuple[Callable, Callable], inputs: list[tuple], device: Device, every: int):
        self.fns, self.inputs, self.device, self.every = fns, inputs, device, every
        self.rotation = itertools.count()
        self.n = 0
        self.rechecks: dict[int, Any] = {}
        self.candidate_calls = 0
        self.late = [0, 0]  # samples where the host's enqueue outran the hold

    def next_index(self) -> int:
        return 1 + next(self.rotation) % self.n

    def call(self, f: int, idx: int) -> None:
        out = self.fns[f](*self.inputs[idx])
        if f == 0:
            self.candidate_calls += 1
            if self.every == 0 or self.candidate_calls % self.every == 0:
                self.rechecks[idx] = out  # replaces (frees) the older output for this index

    def framed(self, f: int) -> tuple[float, float]:
        """One call with a device-wide sync before the end event: every stream's work counts."""
        dev = self.device
        idx = self.next_index()
        start, end = dev.new_event(), dev.new_event()
        dev.flush_l2()
        w0 = dev.wall_clock()
        start.record()
        self.call(f, idx)
        dev.synchronize()
        end.record()
        dev.synchronize()
        w1 = dev.wall_clock()
        return _checked(start.elapsed_s(end), "one framed call"), w1 - w0

    def batched(self, f: int, calls: int, hold_s: float) -> float:
        """One sample: flush, hold, start, ``calls`` back-to-back calls, end, then sync. Per call."""
        dev = self.device
        start, end = dev.new_event(), dev.new_event()
        dev.flush_l2()
        w0 = dev.wall_clock()
        dev.hold(hold_s)
        h0 = dev.wall_clock()
        start.record()
        for _ in range(calls):
            self.call(f, self.next_index())
        end.record()  # before any host sync: the host's wake-up latency stays outside
        h1 = dev.wall_clock()
        dev.synchronize()
        w1 = dev.wall_clock()
        elapsed = _checked(start.elapsed_s(end), f"a batch of {calls} calls")
        if elapsed > 1.01 * (w1 - w0) + 20e-6:
            raise TimingError(
                f"events report {elapsed * 1e3:.3f} ms for a batch that took {(w1 - w0) * 1e3:.3f} ms of "
                "wall-clock time: the timers are inconsistent"
            )
        if h1 - h0 > hold_s:
            self.late[f] += 1
        return elapsed / calls


def _checked(elapsed: float, what: str) -> float:
    if not (math.isfinite(elapsed) and elapsed > 0):
        raise TimingError(f"event timer returned {elapsed!r} s for {what}; the timer is not trustworthy")
    return elapsed


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
    timed (extra sets are ignored). Per trial: warm-up, ``guard_reps`` framed calls per
    function, then ``reps`` batched samples per function, interleaved. Times are per call.
    ``recheck_every``: 0 keeps the output of the last timed candidate call (framed or batched)
    on each rotating index; k > 0 considers only every k-th timed candidate call (1-based),
    again the last per index. Verify ``rechecks`` against ``inputs[index]``.
    Raises TimingError when the guards fire (events vs wall clock, hidden work).
    """
    n = protocol.rotating_buffers
    if len(inputs) < n + 1:
        raise ValueError(
            f"need {n + 1} input sets (inputs[0] for warm-up + rotating_buffers={n} timed), got {len(inputs)}"
        )
    if recheck_every < 0:
        raise ValueError(f"recheck_every must be >= 0, got {recheck_every}")
    state = _Pair((candidate, baseline), inputs, device, recheck_every)
    state.n = n
    samples: tuple[list[list[float]], list[list[float]]] = ([], [])
    guard: tuple[list[float], list[float]] = ([], [])
    walls: tuple[list[float], list[float]] = ([], [])
    enqueue: tuple[list[float], list[float]] = ([], [])
    batch, hold = [1, 1], [HOLD_MIN_S, HOLD_MIN_S]
    for trial in range(protocol.trials):
        device.reset_persisting_l2()  # a persisting-L2 carve-out would survive the flush
        for _ in range(protocol.warmup_reps):
            for f in (0, 1):
                w0 = device.wall_clock()
                state.fns[f](*inputs[0])
                enqueue[f].append(device.wall_clock() - w0)  # host time to enqueue one call
        device.synchronize()  # warm-up work (on any stream) must not spill into what follows
        for g in range(protocol.guard_reps):
            for f in (0, 1) if (trial + g) % 2 == 0 else (1, 0):
                elapsed, wall = state.framed(f)
                guard[f].append(elapsed)
                walls[f].append(wall)
        if trial == 0:
            for f in (0, 1):
                batch[f] = batch_size(float(np.median(guard[f])), protocol)
                host = float(np.median(enqueue[f])) if enqueue[f] else float(np.median(walls[f]))
                hold[f] = hold_seconds(batch[f], host)
        samples[0].append([])
        samples[1].append([])
        for rep in range(protocol.reps):
            pair = trial * protocol.reps + rep  # global, so odd `reps` still balances across trials
            for f in (0, 1) if pair % 2 == 0 else (1, 0):
                samples[f][-1].append(state.batched(f, batch[f], hold[f]))
    stats = (summarize(samples[0]), summarize(samples[1]))
    guard_medians = (float(np.median(guard[0])), float(np.median(guard[1])))
    wall_medians = (float(np.median(walls[0])), float(np.median(walls[1])))
    for name, event_median, wall in zip(("candidate", "baseline"), guard_medians, wall_medians, strict=True):
        _check_wall(name, event_median, wall)
    # The trusted baseline's own framed-minus-batched gap is this host's launch + wake-up latency.
    host_latency = max(0.0, guard_medians[1] - stats[1].median_s)
    _check_hidden(guard_medians[0], stats[0].median_s, protocol.guard_slack_s + host_latency)
    return PairTiming(
        candidate=stats[0],
        baseline=stats[1],
        wall_median_s=wall_medians[0],
        rechecks=sorted(state.rechecks.items()),
        baseline_wall_median_s=wall_medians[1],
        notes=tuple(getattr(device, "notes", ())) + _notes(state, inputs, device, protocol, batch),
        batch=(batch[0], batch[1]),
        guard_median_s=guard_medians,
    )


def _notes(state: _Pair, inputs: list[tuple], device: Device, protocol: TimingProtocol, batch) -> tuple:
    notes = []
    samples = protocol.trials * protocol.reps
    for f, name in enumerate(("candidate", "torch.matmul")):
        if state.late[f]:
            notes.append(
                f"{name}: in {state.late[f]} of {samples} samples the host took longer to enqueue the batch "
                "than the stream was held; those samples may include launch gaps"
            )
    l2 = int(getattr(device, "l2_bytes", 0) or 0)
    rotating = sum(int(getattr(x, "nbytes", 0)) for s in inputs[1 : 1 + protocol.rotating_buffers] for x in s)
    if l2 and max(batch) > 1 and rotating < 2 * l2:
        notes.append(
            f"batches of {batch[0]}/{batch[1]} calls rotate over {rotating / 2**20:.1f} MiB of inputs, under "
            f"2x the {l2 / 2**20:.0f} MiB L2: calls after the first of a batch may hit in L2"
        )
    return tuple(notes)


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


def _check_hidden(framed_s: float, batched_s: float, slack_s: float) -> None:
    if framed_s > GUARD_RATIO * batched_s + slack_s:
        raise TimingError(
            f"candidate: {framed_s * 1e6:.1f} us per call when every stream is waited for before the end "
            f"event, but {batched_s * 1e6:.1f} us on the timed stream alone (allowed: {GUARD_RATIO}x + "
            f"{slack_s * 1e6:.0f} us): work is hidden from the CUDA events (a side stream?)"
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
