"""The GPU timing protocol, checked on CPU through a fake device with a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.cuda_device import CudaDevice, load_cudart
from evaluators.timing import (
    HOLD_MARGIN,
    HOLD_MAX_S,
    HOLD_MIN_S,
    TimingError,
    TimingProtocol,
    batch_size,
    check_speed_of_light,
    flush_size,
    hold_seconds,
    summarize,
    time_pair,
)


class FakeEvent:
    def __init__(self, dev: FakeDevice) -> None:
        self.dev, self.t = dev, None

    def record(self) -> None:
        self.dev.log.append("rec")
        self.t = self.dev.gpu_clock  # sees main-stream time only; side-stream work lands at sync

    def elapsed_s(self, end: FakeEvent) -> float:
        return (end.t - self.t) * self.dev.elapsed_scale


class FakeDevice:
    """Fake GPU: `gpu_clock` advances when main-stream work runs; side-stream work is pending
    until a device-wide synchronize; host-only time advances the wall clock alone; every
    synchronize costs `wake_s` of host wake-up latency, during which the GPU timeline idles on."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gpu_clock = 0.0
        self.host_extra = 0.0  # wall-clock time invisible to the events
        self.side_pending = 0.0
        self.elapsed_scale = 1.0
        self.wake_s = 0.0
        self.holds: list[float] = []

    def synchronize(self) -> None:
        self.log.append("sync")
        self.gpu_clock += self.side_pending + self.wake_s
        self.side_pending = 0.0

    def new_event(self) -> FakeEvent:
        return FakeEvent(self)

    def flush_l2(self) -> None:
        self.log.append("flush")
        self.gpu_clock += 0.5e-3  # the flush itself must stay outside the events

    def reset_persisting_l2(self) -> None:
        self.log.append("reset")

    def hold(self, seconds: float) -> None:
        self.log.append("hold")
        self.holds.append(seconds)
        self.gpu_clock += seconds

    def wall_clock(self) -> float:
        return self.gpu_clock + self.host_extra


def fake_fn(dev: FakeDevice, name: str, main_s=1e-3, side_s=0.0, host_s=0.0):
    """A callable that logs `name(a)` and 'runs' for main_s (+ side_s on a side stream)."""
    calls = []

    def fn(a, b):
        dev.log.append(f"{name}({a})")
        t = main_s(len(calls)) if callable(main_s) else main_s
        dev.gpu_clock += t
        dev.side_pending += side_s
        dev.host_extra += host_s
        out = ("out", name, a, len(calls))
        calls.append(out)
        return out

    fn.calls = calls
    return fn


def make_inputs(n: int) -> list[tuple]:
    return [(f"a{i}", f"b{i}") for i in range(n)]


# One framed guard call per function and trial; calls of 1 ms are timed one per sample.
SMALL = TimingProtocol(warmup_reps=1, reps=2, trials=3, rotating_buffers=2, guard_reps=1, batch_target_s=1e-4)
FRAMED = ["flush", "rec", None, "sync", "rec", "sync"]
BATCHED = ["flush", "hold", "rec", None, "rec", "sync"]


def _region(kind: list, call: str) -> list:
    return [call if e is None else e for e in kind]


def test_exact_call_order_for_one_trial():
    dev = FakeDevice()
    cand, base = fake_fn(dev, "cand"), fake_fn(dev, "base")
    time_pair(cand, base, make_inputs(3), dev, SMALL)
    trial0 = ["reset", "cand(a0)", "base(a0)", "sync"]
    trial0 += _region(FRAMED, "cand(a1)") + _region(FRAMED, "base(a2)")  # guard calls, all streams
    trial0 += _region(BATCHED, "cand(a1)") + _region(BATCHED, "base(a2)")  # pair 0: candidate first
    trial0 += _region(BATCHED, "base(a1)") + _region(BATCHED, "cand(a2)")  # pair 1: baseline first
    assert dev.log[: len(trial0)] == trial0
    assert dev.log.count("reset") == 3 and dev.log.count("hold") == 3 * 4


def _samples(log: list[str]) -> list[list[str]]:
    """The calls between each start and end event of a batched sample."""
    out = []
    for i, e in enumerate(log):
        if e == "hold":
            assert log[i - 1] == "flush" and log[i + 1] == "rec"
            j = log.index("rec", i + 2)
            assert log[j + 1] == "sync", "the end event must be recorded before any host sync"
            out.append(log[i + 2 : j])
    return out


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("main_s", [1e-3, 40e-6])
def test_batches_rotation_warmup_and_interleaving(n, main_s):
    dev = FakeDevice()
    proto = TimingProtocol(warmup_reps=2, reps=3, trials=3, rotating_buffers=n)
    res = time_pair(
        fake_fn(dev, "cand", main_s), fake_fn(dev, "base", main_s), make_inputs(n + 1), dev, proto
    )
    log = dev.log
    samples = _samples(log)
    assert len(samples) == 2 * proto.reps * proto.trials
    expected_batch = 1 if main_s >= 1e-3 else 25  # 1 ms target / 40 us
    assert res.batch == (expected_batch, expected_batch)
    assert all(len(s) == expected_batch and "sync" not in s for s in samples)
    for s in samples:
        assert len({c.split("(")[0] for c in s}) == 1  # one function per sample
    # Interleaved samples, alternating which function goes first.
    names = [s[0].split("(")[0] for s in samples]
    for p in range(len(names) // 2):
        first = "cand" if p % 2 == 0 else "base"
        assert names[2 * p] == first and {names[2 * p], names[2 * p + 1]} == {"cand", "base"}
    # Warm-up uses inputs[0] only; timed calls (framed and batched) never do.
    calls = [(i, e) for i, e in enumerate(log) if "(" in e]
    timed = [e for i, e in calls if not e.endswith("(a0)")]
    warm = [e for _, e in calls if e.endswith("(a0)")]
    assert len(warm) == 2 * proto.warmup_reps * proto.trials
    assert len(timed) == sum(len(s) for s in samples) + 2 * proto.guard_reps * proto.trials
    idx = [int(e.split("(a")[1][:-1]) for e in timed]
    assert all(x != y for x, y in zip(idx, idx[1:], strict=False))  # never the same set twice in a row
    assert set(idx) == set(range(1, n + 1))
    assert res.candidate.median_s == pytest.approx(main_s) and res.candidate.samples == 9


def test_host_wake_up_latency_stays_outside_the_samples():
    dev = FakeDevice()
    dev.wake_s = 20e-6  # each host sync lets 20 us pass on the GPU timeline
    cand, base = fake_fn(dev, "cand", main_s=7e-6), fake_fn(dev, "base", main_s=14e-6)
    res = time_pair(cand, base, make_inputs(5), dev, TimingProtocol(reps=5))
    assert res.candidate.median_s == pytest.approx(7e-6)
    assert res.baseline.median_s == pytest.approx(14e-6)
    assert res.speedup == pytest.approx(2.0)  # a device-wide sync before the end event gave ~1.3
    assert res.guard_median_s[0] == pytest.approx(27e-6)  # the framed calls do carry the latency


def test_a_slow_host_does_not_fake_hidden_work():
    dev = FakeDevice()
    dev.wake_s = 300e-6  # a loaded host: every sync returns 0.3 ms late, for both functions alike
    cand, base = fake_fn(dev, "cand", main_s=7e-6), fake_fn(dev, "base", main_s=14e-6)
    res = time_pair(cand, base, make_inputs(5), dev, TimingProtocol(reps=3))
    assert res.guard_median_s[0] > 1.5 * res.candidate.median_s + TimingProtocol.guard_slack_s
    assert res.candidate.median_s == pytest.approx(7e-6)  # accepted: the baseline shows the same latency


def test_hold_covers_the_measured_enqueue_time():
    dev = FakeDevice()
    cand = fake_fn(dev, "cand", main_s=10e-6, host_s=30e-6)  # slow to enqueue, fast to run
    res = time_pair(cand, fake_fn(dev, "base", main_s=10e-6), make_inputs(5), dev, TimingProtocol(reps=2))
    assert res.batch[0] == 100
    # enqueue measured in warm-up: 10 us of (fake, synchronous) GPU work + 30 us of host work
    assert dev.holds[0] == pytest.approx(min(HOLD_MAX_S, HOLD_MIN_S + HOLD_MARGIN * 100 * 40e-6))
    assert dev.holds[1] == pytest.approx(HOLD_MIN_S + HOLD_MARGIN * 100 * 10e-6)  # the baseline's own
    assert not any("launch gaps" in n for n in res.notes)


def test_late_host_is_noted():
    dev = FakeDevice()
    slow = fake_fn(dev, "cand", main_s=10e-6)
    calls = []

    def cand(a, b):  # fast in warm-up and guard calls (13 in trial 0), slow to enqueue later
        calls.append(a)
        dev.host_extra += 500e-6 if len(calls) > 13 else 0.0
        return slow(a, b)

    res = time_pair(cand, fake_fn(dev, "base", 10e-6), make_inputs(5), dev, TimingProtocol(reps=2))
    assert any(n.startswith("candidate: in ") and "launch gaps" in n for n in res.notes)


class Blob:
    def __init__(self, name: str, nbytes: int) -> None:
        self.name, self.nbytes = name, nbytes

    def __str__(self) -> str:
        return self.name


def test_warm_l2_within_a_batch_is_said():
    dev = FakeDevice()
    inputs = [(Blob(f"a{i}", 1 << 20), Blob(f"b{i}", 1 << 20)) for i in range(5)]
    dev.l2_bytes = 50 << 20  # 8 MiB of rotating inputs: under 2x L2
    res = time_pair(fake_fn(dev, "c", 10e-6), fake_fn(dev, "b", 10e-6), inputs, dev, TimingProtocol(reps=2))
    assert any("may hit in L2" in n and "8.0 MiB" in n for n in res.notes)
    dev.l2_bytes = 2 << 20  # 8 MiB is over 2x a 2 MiB L2
    res = time_pair(fake_fn(dev, "c", 10e-6), fake_fn(dev, "b", 10e-6), inputs, dev, TimingProtocol(reps=2))
    assert not any("L2" in n for n in res.notes)


def test_batch_size_and_hold_and_flush_size():
    proto = TimingProtocol()
    assert batch_size(5e-3, proto) == 1 and batch_size(1e-3, proto) == 1
    assert batch_size(0.1e-3, proto) == 10 and batch_size(1e-6, proto) == proto.max_batch
    assert batch_size(0.0, proto) == 1 and batch_size(float("nan"), proto) == 1
    assert hold_seconds(10, 20e-6) == pytest.approx(HOLD_MIN_S + HOLD_MARGIN * 10 * 20e-6)
    assert hold_seconds(100, 1e-3) == HOLD_MAX_S
    assert flush_size(50 << 20, 256 << 20) == 256 << 20
    assert flush_size(200 << 20, 256 << 20) == 400 << 20
    assert flush_size(60 << 20, 1 << 30) == 1 << 30  # protocol.flush_bytes_min is honoured


def test_side_stream_work_is_caught():
    dev = FakeDevice()
    cand = fake_fn(dev, "cand", main_s=0.1e-3, side_s=2e-3)  # most of its work on a side stream
    base = fake_fn(dev, "base", main_s=1e-3)
    with pytest.raises(TimingError, match="hidden from the CUDA events"):
        time_pair(cand, base, make_inputs(5), dev, TimingProtocol(warmup_reps=1, reps=4))


def test_small_side_stream_work_below_the_slack_is_a_stated_limit():
    dev = FakeDevice()
    cand = fake_fn(dev, "cand", main_s=1e-3, side_s=0.4e-3)  # 1.4 ms framed <= 1.5 x 1 ms + 0.1 ms
    res = time_pair(cand, fake_fn(dev, "base"), make_inputs(5), dev, TimingProtocol(reps=2))
    assert res.guard_median_s[0] == pytest.approx(1.4e-3) and res.candidate.median_s == pytest.approx(1e-3)


def test_summarize_matches_numpy():
    rng = np.random.default_rng(0)
    trials = [list(rng.random(7)) for _ in range(3)]
    st = summarize(trials)
    flat = np.concatenate(trials)
    assert st.median_s == pytest.approx(np.median(flat))
    assert st.iqr_s == pytest.approx(np.percentile(flat, 75) - np.percentile(flat, 25))
    assert st.trial_medians_s == pytest.approx(tuple(np.median(t) for t in trials))


def test_rechecks_hold_last_timed_output_per_index():
    dev = FakeDevice()
    cand = fake_fn(dev, "cand")
    proto = TimingProtocol(warmup_reps=3, reps=5, rotating_buffers=3)
    res = time_pair(cand, fake_fn(dev, "base"), make_inputs(4), dev, proto)
    assert [i for i, _ in res.rechecks] == [1, 2, 3]
    for i, out in res.rechecks:
        assert out[:3] == ("out", "cand", f"a{i}")
        assert out == [c for c in cand.calls if c[2] == f"a{i}"][-1]  # last occurrence, a timed call


def test_rechecks_every_k():
    dev = FakeDevice()
    cand = fake_fn(dev, "cand")
    proto = TimingProtocol(warmup_reps=1, reps=5, rotating_buffers=4)
    res = time_pair(cand, fake_fn(dev, "base"), make_inputs(5), dev, proto, recheck_every=4)
    timed = [c for c in cand.calls if c[2] != "a0"]
    eligible = timed[3::4]
    assert res.rechecks and all(out in eligible for _, out in res.rechecks)
    assert len({i for i, _ in res.rechecks}) == len(res.rechecks)


def test_wall_guard_raises_on_hidden_work():
    dev = FakeDevice()
    cand = fake_fn(dev, "cand", main_s=0.1e-3, host_s=5e-3)  # 5 ms the events never see
    with pytest.raises(TimingError, match="hidden from the CUDA events"):
        time_pair(cand, fake_fn(dev, "base"), make_inputs(5), dev, TimingProtocol(warmup_reps=0, reps=3))


def test_wall_guard_quiet_below_1ms():
    dev = FakeDevice()
    cand = fake_fn(dev, "cand", main_s=0.05e-3, host_s=0.4e-3)  # ratio < 0.25 but wall < 1 ms
    res = time_pair(cand, fake_fn(dev, "base"), make_inputs(5), dev, TimingProtocol(warmup_reps=0, reps=3))
    assert res.wall_median_s < 1e-3


def test_events_longer_than_wall_raise():
    dev = FakeDevice()
    dev.elapsed_scale = 10.0  # a patched timer
    with pytest.raises(TimingError, match="inconsistent"):
        time_pair(fake_fn(dev, "cand"), fake_fn(dev, "base"), make_inputs(5), dev, TimingProtocol(reps=3))


def test_nonpositive_elapsed_raises():
    dev = FakeDevice()
    with pytest.raises(TimingError, match="not trustworthy"):
        time_pair(fake_fn(dev, "cand", main_s=0.0), fake_fn(dev, "base"), make_inputs(5), dev)


def test_speed_of_light():
    flops = 2 * 8192**3
    msg = check_speed_of_light(flops, 1e-3, 989.4)  # 1100 TFLOP/s on an H100 SXM
    assert msg and msg.startswith("impossible") and "above the 989.4 TFLOP/s dense peak" in msg
    assert check_speed_of_light(flops, 1.25e-3, 989.4) is None  # 880 TFLOP/s: plausible
    assert check_speed_of_light(flops, 1e-3, None) is None  # unknown GPU: caller records the skip
    assert check_speed_of_light(flops, 0.0, 989.4).startswith("impossible")


def test_protocol_validation():
    with pytest.raises(ValueError, match="trials must be >= 3"):
        TimingProtocol(trials=2)
    with pytest.raises(ValueError, match="rotating_buffers must be >= 2"):
        TimingProtocol(rotating_buffers=1)
    with pytest.raises(ValueError, match="reps must be >= 1"):
        TimingProtocol(reps=0)
    dev = FakeDevice()
    with pytest.raises(ValueError, match=r"need 5 input sets \(inputs\[0\] for warm-up"):
        time_pair(fake_fn(dev, "c"), fake_fn(dev, "b"), make_inputs(4), dev)
    assert dev.log == []  # nothing ran
    with pytest.raises(ValueError, match="recheck_every"):
        time_pair(fake_fn(dev, "c"), fake_fn(dev, "b"), make_inputs(5), dev, recheck_every=-1)


def test_missing_cudart_is_noted():
    notes: list[str] = []
    assert load_cudart(notes, names=["/nonexistent/libcudart.so.99"]) is None
    assert len(notes) == 1 and "libcudart not found" in notes[0]


@pytest.mark.gpu
def test_torch_matmul_against_itself_on_gpu():
    import torch

    from evaluators.targets import peak_tflops

    dev = CudaDevice()
    n, proto = 4096, TimingProtocol()
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn():
        return torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=gen)

    inputs = [(randn(), randn()) for _ in range(proto.rotating_buffers + 1)]
    res = time_pair(torch.matmul, torch.matmul, inputs, dev, proto)
    assert 0.8 <= res.speedup <= 1.25, res
    peak = peak_tflops(torch.cuda.get_device_name(), "bf16")
    assert check_speed_of_light(2 * n**3, res.candidate.median_s, peak) is None
    for i, out in res.rechecks:
        torch.testing.assert_close(out, inputs[i][0] @ inputs[i][1])


def _gpu_inputs(shape, sets):
    import torch

    m, n, k = shape
    gen = torch.Generator(device="cuda").manual_seed(1)

    def randn(rows, cols):
        return torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16, generator=gen)

    return [(randn(m, k), randn(k, n)) for _ in range(sets)]


@pytest.mark.gpu
def test_decode_shape_is_batched_and_not_flattened_on_gpu():
    import torch

    dev, proto = CudaDevice(), TimingProtocol()
    inputs = _gpu_inputs((1, 4096, 4096), proto.rotating_buffers + 1)
    res = time_pair(torch.matmul, torch.matmul, inputs, dev, proto)
    assert res.batch[0] > 1 and 0.8 <= res.speedup <= 1.25, res
    assert res.candidate.median_s < res.guard_median_s[0]  # no wake-up latency in the samples

    def twice(a, b):  # twice the work: the batched times must see it (host latency would hide it)
        torch.matmul(a, b)
        return torch.matmul(a, b)

    slow = time_pair(twice, torch.matmul, inputs, dev, proto)
    assert slow.speedup < 0.7, slow


@pytest.mark.gpu
def test_side_stream_work_is_caught_on_gpu():
    import torch

    dev, proto = CudaDevice(), TimingProtocol(reps=5)
    inputs = _gpu_inputs((4096, 4096, 4096), proto.rotating_buffers + 1)
    side = torch.cuda.Stream()

    def hidden(a, b):  # the work on a stream the events do not watch
        with torch.cuda.stream(side):
            out = torch.matmul(a, b)
        return out

    # the guard fires, or the events around an empty timed stream are not even positive
    with pytest.raises(TimingError, match="hidden from the CUDA events|not trustworthy"):
        time_pair(hidden, torch.matmul, inputs, dev, proto)


def test_cuda_device_reset_calls_cudart_and_notes_failure():
    calls = []

    class FakeRt:
        def __init__(self, code: int) -> None:
            self.code = code

        def cudaSetDevice(self, i):
            calls.append(("set_device", i.value))
            return 0

        def cudaDeviceSetLimit(self, limit, value):
            calls.append(("limit", limit.value, value.value))
            return 0

        def cudaCtxResetPersistingL2Cache(self):
            calls.append(("reset",))
            return self.code

    dev = object.__new__(CudaDevice)  # no GPU here: exercise only the ctypes call sequence
    dev.index, dev.notes, dev._reset_failed, dev._cudart = 1, [], False, FakeRt(0)
    dev.reset_persisting_l2()
    assert calls == [("set_device", 1), ("limit", 0x06, 0), ("reset",)] and dev.notes == []
    dev._cudart = FakeRt(700)
    dev.reset_persisting_l2()
    dev.reset_persisting_l2()
    assert len(dev.notes) == 1 and "persisting-L2 reset failed" in dev.notes[0]
