"""The GPU timing protocol, checked on CPU through a fake device with a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.timing import (
    CudaDevice,
    TimingError,
    TimingProtocol,
    _load_cudart,
    buffer_index,
    check_speed_of_light,
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
    until a device-wide synchronize; host-only time advances the wall clock alone."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gpu_clock = 0.0
        self.host_extra = 0.0  # wall-clock time invisible to the events
        self.side_pending = 0.0
        self.elapsed_scale = 1.0

    def synchronize(self) -> None:
        self.log.append("sync")
        self.gpu_clock += self.side_pending
        self.side_pending = 0.0

    def new_event(self) -> FakeEvent:
        return FakeEvent(self)

    def flush_l2(self) -> None:
        self.log.append("flush")
        self.gpu_clock += 0.5e-3  # the flush itself must stay outside the events

    def reset_persisting_l2(self) -> None:
        self.log.append("reset")

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


SMALL = TimingProtocol(warmup_reps=1, reps=2, trials=3, rotating_buffers=2)


def test_exact_call_order_for_one_trial():
    dev = FakeDevice()
    cand, base = fake_fn(dev, "cand"), fake_fn(dev, "base")
    time_pair(cand, base, make_inputs(3), dev, SMALL)
    region = ["flush", "rec", None, "sync", "rec", "sync"]

    def timed(call):
        return [call if e is None else e for e in region]

    trial0 = ["reset", "cand(a0)", "base(a0)", "sync"]
    trial0 += timed("cand(a1)") + timed("base(a2)")  # pair 0: candidate first
    trial0 += timed("base(a1)") + timed("cand(a2)")  # pair 1: baseline first
    assert dev.log[: len(trial0)] == trial0
    assert len(dev.log) == 3 * len(trial0)
    assert dev.log.count("reset") == 3
    assert [i for i, e in enumerate(dev.log) if e == "reset"] == [0, len(trial0), 2 * len(trial0)]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7])
@pytest.mark.parametrize("reps", [1, 3, 30])
def test_flush_interleave_alternate_and_rotation(n, reps):
    dev = FakeDevice()
    proto = TimingProtocol(warmup_reps=2, reps=reps, trials=3, rotating_buffers=n)
    time_pair(fake_fn(dev, "cand"), fake_fn(dev, "base"), make_inputs(n + 1), dev, proto)
    log = dev.log
    calls = [(i, e) for i, e in enumerate(log) if "(" in e]
    timed = [(i, e) for i, e in calls if log[i - 1] == "rec"]
    warm = [e for i, e in calls if log[i - 1] != "rec"]
    # Every timed call: flush, start event, call, device-wide sync, end event, sync.
    for i, _ in timed:
        assert log[i - 2 : i + 4] == ["flush", "rec", log[i], "sync", "rec", "sync"]
    # Warm-up uses inputs[0] only; timed calls never do.
    assert warm and all(e.endswith("(a0)") for e in warm)
    assert len(warm) == 2 * proto.warmup_reps * proto.trials
    assert not any(e.endswith("(a0)") for _, e in timed)
    names = [e.split("(")[0] for _, e in timed]
    idx = [int(e.split("(a")[1][:-1]) for _, e in timed]
    assert len(names) == 2 * reps * 3
    # Interleaved pairs, alternating which goes first.
    for p in range(len(names) // 2):
        first = "cand" if p % 2 == 0 else "base"
        assert names[2 * p] == first and {names[2 * p], names[2 * p + 1]} == {"cand", "base"}
    # Consecutive timed calls (any function) and consecutive calls of one function never share a set.
    assert all(x != y for x, y in zip(idx, idx[1:], strict=False))
    for fn in ("cand", "base"):
        mine = [k for k, nm in zip(idx, names, strict=True) if nm == fn]
        assert all(x != y for x, y in zip(mine, mine[1:], strict=False))
        assert set(mine) == set(range(1, n + 1)) or len(mine) < n


def test_buffer_index_range():
    for n in range(2, 9):
        for p in range(50):
            assert 1 <= buffer_index(0, p, n) <= n and 1 <= buffer_index(1, p, n) <= n
            assert buffer_index(0, p, n) != buffer_index(1, p, n)


def test_side_stream_work_is_counted():
    dev = FakeDevice()
    cand = fake_fn(dev, "cand", main_s=0.0, side_s=2e-3)  # all its work on a side stream
    base = fake_fn(dev, "base", main_s=1e-3)
    res = time_pair(cand, base, make_inputs(5), dev, TimingProtocol(warmup_reps=1, reps=4))
    assert res.candidate.median_s == pytest.approx(2e-3)
    assert res.baseline.median_s == pytest.approx(1e-3)
    assert res.speedup == pytest.approx(0.5)


def test_median_and_iqr_on_known_samples():
    dev = FakeDevice()
    # Per trial 2 warm-up calls (0.1 ms) then 4 timed ones: timed calls take 1..4, 5..8, 9..12 ms.
    cand = fake_fn(dev, "cand", main_s=_schedule([2, 4], 3))
    base = fake_fn(dev, "base", main_s=2e-3)
    res = time_pair(cand, base, make_inputs(5), dev, TimingProtocol(warmup_reps=2, reps=4))
    c = res.candidate
    assert c.samples == 12
    assert c.median_s == pytest.approx(6.5e-3)
    assert c.q25_s == pytest.approx(3.75e-3)  # linear: position 0.25 * 11 = 2.75 -> 3.75
    assert c.q75_s == pytest.approx(9.25e-3)
    assert c.iqr_s == pytest.approx(5.5e-3)
    assert c.trial_medians_s == pytest.approx((2.5e-3, 6.5e-3, 10.5e-3))
    assert res.baseline.median_s == pytest.approx(2e-3) and res.baseline.iqr_s == pytest.approx(0)


def _schedule(phases: list[int], trials: int):
    """Durations: warm-up calls 0.1 ms, then timed calls 1, 2, 3 ... ms in call order."""
    warm, reps = phases
    per_trial = warm + reps
    kinds = []
    for _ in range(trials):
        kinds += ["w"] * warm + ["t"] * reps
    timed_no = np.cumsum([k == "t" for k in kinds])

    def main_s(k: int) -> float:
        assert k < per_trial * trials
        return timed_no[k] * 1e-3 if kinds[k] == "t" else 0.1e-3

    return main_s


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
    assert _load_cudart(notes, names=["/nonexistent/libcudart.so.99"]) is None
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
