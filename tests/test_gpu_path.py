"""The CUDA path of the judge, driven on the CPU through its seams (issue 8, item 3).

A fake child answers the parent's protocol the way an honest (or a broken) CUDA child
would, with inputs drawn from the seeds it is sent; `_Run.input_device = "cpu"` lets the
parent draw and verify on the CPU. What needs a GPU is marked `gpu`.
"""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluators import Task, evaluate, wire
from evaluators import sandbox as sandbox_mod
from evaluators.check_stage import MANY_CALLS
from evaluators.child import POISON, Child
from evaluators.compile import CompileCache
from evaluators.correctness import input_generator, make_inputs
from evaluators.cuda_device import set_baseline_precision
from evaluators.gpu_timing import WorkRates, gpu_budget
from evaluators.timing import TimingProtocol
from evolve.pool import gpu_workers
from evolve.raytools import RayMissing

ev_mod = importlib.import_module("evaluators.evaluate")  # the module (the package exports the function)
ROOT = Path(__file__).resolve().parents[1]
SEED = (ROOT / "kernels" / "seeds" / "tiled_matmul.py").read_text()
TINY = Task(
    name="tiny-gpu",
    dtype="bf16",
    layouts=("nn", "nt"),
    train=((32, 24, 40), (1, 48, 64)),
    held_out=(),
    check=((16, 16, 16),),
    trials=2,
)


def honest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() @ b.float()).to(a.dtype)  # fp32 accumulation, one rounding: what a kernel does


class FakeCudaChild:
    """Answers like evaluators/child.py in cuda mode. `behaviour` picks a failure to play."""

    def __init__(self, behaviour: str = "honest", speedup: float = 1.25) -> None:
        self.behaviour, self.speedup = behaviour, speedup
        self.sent: list[dict] = []
        self.deadlines: list[tuple[str, float]] = []
        self.job: dict = {}
        self.cpu_s = None
        self.replies: list = []
        self.kept: list = []  # outputs of "keep" runs (evaluators/check_stage.py independent calls)

    # -- the Sandbox surface evaluate.py uses
    def wait_ready(self, deadline: float) -> float:
        return 0.0

    def send(self, header: dict) -> None:
        self.sent.append(header)
        if header["cmd"] == "job":
            self.job = header["task"]
            self.replies.append(({"event": "loaded", "seconds": 0.01, "kernels": {}, "launches": []}, {}))
        elif header["cmd"] in ("run", "time", "recheck"):
            self.replies.append(header)  # answered when read, as the real child would

    def read(self, deadline: float):
        reply = self.replies.pop(0)
        if isinstance(reply, tuple):
            self.deadlines.append(("read", deadline))
            return reply
        self.deadlines.append((reply["cmd"], deadline))
        if self.behaviour == "malformed":
            raise wire.WireError("blob 'out' claims 7 bytes for shape [4, 4] bfloat16")
        if reply["cmd"] == "recheck":  # the independent calls' outputs, kept since they returned
            return {"event": "result"}, {f"out{n}": out for n, out in enumerate(self.kept)}
        return self.run(reply) if reply["cmd"] == "run" else self.time(reply)

    def request(self, header: dict, deadline: float):
        self.send(header)
        return self.read(deadline)

    def close(self) -> None:
        pass

    # -- answers
    def inputs(self, header: dict, seed: int):
        shape, kind = tuple(header["shape"]), header.get("inputs", "normal")  # the check trials' kinds
        return make_inputs(shape, header["layout"], self.job["dtype"], input_generator(seed), kind)

    def run(self, header: dict):
        a, b = self.inputs(header, header["seed"])
        out = honest(a, b)
        facts = {
            "event": "result",
            "ops": [],
            "launch_ops": [],
            "launch_signatures": [["kernel", [1, 1, 1]]],
            "launches": 1,
            "output_type": "torch.Tensor",
            "inputs_changed": False,
            "dtype": "bfloat16",
            "shape": list(out.shape),
            "device": "cuda",
            "aliases_input": False,
        }
        if header.get("keep"):
            self.kept.append(out)
        return facts, {"out": out}

    def time(self, header: dict):
        if self.behaviour == "hang":
            raise sandbox_mod.ChildTimeout()
        if self.behaviour == "guard":
            message = (
                "candidate: 300.0 us per call when every stream is waited for ... hidden from the CUDA events"
            )
            return {"event": "error", "stage": "time", "message": message, "timing_guard": True}, {}
        seeds, probes = header["seeds"], header["probe_seeds"]
        tensors = {f"timed{i}": honest(*self.inputs(header, seeds[i])) for i in range(1, len(seeds))}
        for j, seed in enumerate(probes, start=1):
            fresh = honest(*self.inputs(header, seed))
            tensors[f"probe{j}"] = tensors[f"timed{j}"] if self.behaviour == "cached" else fresh
        base = 1e-3
        cand = 1e-12 if self.behaviour == "impossible" else base / self.speedup
        stats = {
            "candidate": {"median_s": cand, "iqr_s": cand / 50},
            "baseline": {"median_s": base, "iqr_s": base / 50},
        }
        return {"event": "timed", "stats": stats, "notes": ["a note"], "batch": [3, 2]}, tensors


@pytest.fixture
def fake_cuda(monkeypatch, tmp_path):
    """evaluate(..., device="cuda") against a FakeCudaChild, inputs and references on the CPU."""
    children: list[FakeCudaChild] = []
    behaviour = {"value": "honest"}

    def take(mode, memory_bytes=None, prestart=True):
        assert mode == "cuda"
        child = FakeCudaChild(behaviour["value"])
        children.append(child)
        return child

    monkeypatch.setattr(sandbox_mod, "take", take)
    original_init = ev_mod._Run.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.input_device = "cpu"

    monkeypatch.setattr(ev_mod._Run, "__init__", init)
    monkeypatch.setattr(ev_mod.compat, "require_tested_environment", lambda device: None)
    cache = CompileCache(tmp_path / "cache")

    def judge(kind: str = "honest", **options):
        behaviour["value"] = kind
        return evaluate(SEED, TINY, cache=cache, device="cuda", prestart=False, **options), children[-1]

    return judge


def test_cuda_cascade_measures_and_verifies_on_fresh_seeds(fake_cuda):
    result, child = fake_cuda("honest")
    assert result.status == "ok", result.feedback
    assert result.fitness_kind == "measured" and result.fitness == pytest.approx(1.25)
    train = [s for s in result.shapes if s.kind == "train"]
    assert len(train) == 4 and all(s.speedup == pytest.approx(1.25) for s in train)
    assert result.provenance["timing_notes"] == ["a note"]
    assert result.provenance["timing_batch"]["32x24x40 nn"] == [3, 2]
    job = child.sent[0]["task"]
    assert job["gpu_memory_fraction"] == 0.5 and job["protocol"]["flush_bytes_min"] == 256 << 20
    seeds = [h["seed"] for h in child.sent if h["cmd"] == "run" and not h.get("keep")]
    assert len(seeds) == 4 * TINY.trials and len(set(seeds)) == len(seeds)  # a fresh seed per trial
    kept = [h for h in child.sent if h["cmd"] == "run" and h.get("keep")]  # the independent calls
    assert MANY_CALLS <= len(kept) <= 2 * MANY_CALLS and result.provenance["independent_calls"] == len(kept)
    assert child.sent[-1]["cmd"] != "recheck" and any(h["cmd"] == "recheck" for h in child.sent)
    # A measured verdict is not memoised: the next evaluation measures afresh.
    again, _ = fake_cuda("honest")
    assert "memo_hit" not in again.provenance


def test_deadlines_per_request_follow_the_work_budget(fake_cuda):
    result, child = fake_cuda("honest", timeout_s=30)
    budget = gpu_budget(TINY)
    assert result.seconds and budget.total_s > 0
    whole = max(d for _, d in child.deadlines)
    checks = [d for kind, d in child.deadlines if kind == "run"]
    times = [d for kind, d in child.deadlines if kind == "time"]
    assert len(times) == 4 and all(d <= whole for d in checks + times)
    # each check request is bounded by its share (tiny here) + the slack, not by the whole budget
    assert max(checks) - min(checks) < 5.0


def test_timeout_names_the_budget(fake_cuda):
    result, _ = fake_cuda("hang")
    assert result.status == "timeout"
    assert "a timing request" in result.feedback and "s of GPU work" in result.feedback
    assert f"{WorkRates().candidate_tflops:g} TFLOP/s" in result.feedback


def test_timing_guard_rejection_is_not_memoised(fake_cuda):
    first, _ = fake_cuda("guard")
    assert first.status == "rejected" and "hidden from the CUDA events" in first.feedback
    second, _ = fake_cuda("guard")
    assert second.status == "rejected" and "memo_hit" not in second.provenance


def test_speed_of_light_and_cache_probe(fake_cuda, monkeypatch):
    monkeypatch.setattr(ev_mod, "provenance", lambda device: {"device": device, "gpu": "NVIDIA H200"})
    fast, _ = fake_cuda("impossible")
    assert fast.status == "rejected" and "impossible" in fast.feedback
    cached, _ = fake_cuda("cached")
    assert cached.status == "incorrect" and "results cached?" in cached.feedback


def test_a_malformed_frame_is_a_crash_not_an_exception(fake_cuda):
    result, _ = fake_cuda("malformed")
    assert result.status == "crashed" and "malformed reply" in result.feedback


def test_parent_out_of_memory_is_a_judge_error_never_memoised(fake_cuda, monkeypatch):
    def oom(a, b):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.75 GiB")

    monkeypatch.setattr(sys.modules["evaluators.check_stage"], "reference", oom)
    first, _ = fake_cuda("honest")
    assert first.status == "judge_error" and "ran out of GPU memory" in first.feedback
    assert "not held against the candidate" in first.feedback
    second, _ = fake_cuda("honest")
    assert second.status == "judge_error" and "memo_hit" not in second.provenance


def test_any_parent_exception_is_a_judge_error(monkeypatch, tmp_path):
    def boom(self, boxes, deadline):
        raise KeyError("launches")

    monkeypatch.setattr(ev_mod._Run, "cpu_stages", boom)
    result = evaluate(SEED, TINY, cache=CompileCache(tmp_path), prestart=False)
    assert (
        result.status == "judge_error"
        and "KeyError" in result.feedback
        and "test_gpu_path.py:" in result.feedback
    )


def test_stop_memo_flag_decides_what_is_remembered(monkeypatch, tmp_path):
    calls = []

    def stop(memo):
        def stages(self, boxes, deadline):
            calls.append(memo)
            raise ev_mod.Stop("rejected", "a verdict", memo=memo)

        return stages

    cache = CompileCache(tmp_path)
    monkeypatch.setattr(ev_mod._Run, "cpu_stages", stop(False))
    evaluate(SEED, TINY, cache=cache, prestart=False)
    evaluate(SEED, TINY, cache=cache, prestart=False)
    assert calls == [False, False]
    monkeypatch.setattr(ev_mod._Run, "cpu_stages", stop(True))
    evaluate(SEED, TINY, cache=cache, prestart=False)
    assert evaluate(SEED, TINY, cache=cache, prestart=False).provenance.get("memo_hit") is True
    assert calls == [False, False, True]


def test_budget_scales_with_the_work():
    small = gpu_budget(TINY)
    big = gpu_budget(dataclasses.replace(TINY, train=((4096, 4096, 4096),)))
    bigger = gpu_budget(dataclasses.replace(TINY, train=((4096, 4096, 8192),)))
    assert big.total_s > 5 * small.total_s  # 1 shape of 4096^3 vs 2 tiny ones
    assert 1.6 < bigger.total_s / big.total_s < 2.01  # compute-dominated: ~linear in K
    slow = gpu_budget(
        dataclasses.replace(TINY, train=((4096, 4096, 4096),)), rates=WorkRates(candidate_tflops=1)
    )
    assert slow.total_s > big.total_s
    llm = gpu_budget(ev_mod.Task.from_dict({**_llm(), "source": "llm"}))
    assert len(llm.time_s) == 90 and "90 training and held-out shape/layouts" in llm.how  # (24 + 6) x 3


def _llm() -> dict:
    from evaluators import load_task

    return load_task(ROOT / "runs" / "llm_bf16.toml").to_dict()


def test_inputs_are_drawn_on_the_generators_device_and_reproducible():
    a1, b1 = make_inputs((8, 6, 10), "tn", "bf16", input_generator(7, "cpu"))
    a2, b2 = make_inputs((8, 6, 10), "tn", "bf16", input_generator(7, "cpu"))
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and a1.device.type == "cpu"
    assert a1.stride() == (1, 8)  # tn: A stored [K, M]


def _bare_child() -> tuple[Child, list]:
    """A Child without its process: only what run_once and retain use."""
    from evaluators import guards
    from evaluators.standins import AutotuneStandIn

    child = object.__new__(Child)
    sent: list = []
    child.torch, child.guards, child.previous = torch, guards, ()
    child.launch, child.launch_signatures = guards.LaunchDepth(), []
    child.autotune = AutotuneStandIn()
    child.write_guard, child.race_check, child.bounds_check = None, None, None
    child.current_kernel, child.kept = "?", []
    child.send = lambda header, tensors=None: sent.append((header, tensors))
    return child, sent


def test_child_keeps_one_trial_and_poisons_what_it_releases():
    child, sent = _bare_child()

    class Module:
        @staticmethod
        def matmul(a, b):
            return honest(a, b)

    task = {"device": "cpu", "dtype": "bf16"}
    pointers = []
    for seed in range(6):
        child.run_once(Module, task, {"shape": [16, 8, 24], "layout": "nn", "seed": seed})
        pointers.append({t.data_ptr() for t in child.previous})
    assert len(child.previous) == 5  # a, b, their copies, the output: one trial, not six
    assert all(not (x & y) for x, y in zip(pointers, pointers[1:], strict=False))  # new addresses
    first_out = sent[0][1]["out"]
    assert (first_out == POISON).all()  # released: poisoned, no stale right answer to reuse
    assert not (sent[-1][1]["out"] == POISON).any()


def test_baseline_precision_follows_the_task():
    try:
        assert set_baseline_precision("fp32", True).endswith("fp32_precision=tf32")
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert set_baseline_precision("fp32", False).endswith("fp32_precision=ieee")
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision = "ieee"


def test_one_evaluator_per_gpu():
    assert gpu_workers(2, 1) == (1, gpu_workers(2, 1)[1]) and "one evaluator per GPU" in gpu_workers(2, 1)[1]
    assert gpu_workers(4, 4) == (4, None)
    assert gpu_workers(1, 8)[0] == 8  # every GPU gets an evaluator
    with pytest.raises(RayMissing, match="no GPU"):
        gpu_workers(1, 0)


def test_shapes_apply_on_a_gpu(monkeypatch):
    import evaluators.__main__ as cli

    seen = {}

    def fake_evaluate(source, task, options):
        seen["task"], seen["options"] = task, options
        from evaluators import Evaluation

        return Evaluation(status="ok", backend="cuda:fake")

    monkeypatch.setattr(cli, "_cuda_available", lambda: True)
    monkeypatch.setattr(cli, "evaluate", fake_evaluate)
    monkeypatch.setattr(cli, "require_tested_environment", lambda device: None)
    code = cli.main(
        ["check", "kernels/seeds/tiled_matmul.py", "--task", "runs/llm_bf16.toml", "--device", "cuda",
         "--shapes", "64,64,64;1,96,160"]
    )  # fmt: skip
    assert code == 0 and seen["options"].device == "cuda"
    assert seen["task"].train == ((64, 64, 64), (1, 96, 160))  # checked and timed on these


NO_RAY = "import sys; sys.modules['ray'] = None; sys.modules['openai'] = None; "


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_RAY + code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_evaluators_and_gpu_timing_import_without_ray_or_openai():
    out = _python(
        "import evaluators, evaluators.__main__, evaluators.gpu_timing, evaluators.timing, evaluators.child; "
        "import evolve.pool, evolve.controller; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('ray', 'openai') and sys.modules[m]]; "
        "print('ok')"
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_evolve_run_without_ray_is_one_clear_error(tmp_path):
    name = f"no-ray-{tmp_path.name}"
    out = _python(
        f"from evolve.cli import main; sys.exit(main(['run', 'runs/demo.toml', '--name', '{name}']))"
    )
    assert out.returncode == 2, out.stderr
    assert "needs ray" in out.stderr and "python -m evaluators check" in out.stderr
    assert "Traceback" not in out.stderr and not (ROOT / "runs" / name).exists()


@pytest.mark.gpu
def test_device_inputs_match_between_generators_on_gpu():
    a1, b1 = make_inputs((64, 48, 80), "nt", "bf16", input_generator(11, "cuda"))
    a2, b2 = make_inputs((64, 48, 80), "nt", "bf16", input_generator(11, "cuda"))
    assert a1.is_cuda and torch.equal(a1, a2) and torch.equal(b1, b2)


@pytest.mark.gpu
def test_cuda_device_honours_flush_min_and_holds_the_stream():
    from evaluators.cuda_device import CudaDevice

    dev = CudaDevice(flush_bytes_min=1 << 30)
    assert dev.flush_bytes >= 1 << 30 and dev.cycles_per_s > 1e8
    start, end = dev.new_event(), dev.new_event()
    start.record()
    dev.hold(2e-3)
    end.record()
    dev.synchronize()
    assert 1e-3 < start.elapsed_s(end) < 8e-3


@pytest.mark.gpu
def test_seed_on_a_small_task_is_measured(tmp_path):
    result = evaluate(SEED, TINY, cache=CompileCache(tmp_path), device="cuda", prestart=False)
    assert result.status == "ok", result.feedback
    assert result.fitness_kind == "measured" and result.fitness > 0
    assert result.provenance["gpu_memory_fraction"] == 0.5


def test_protocol_roundtrips_through_the_job():
    proto = TimingProtocol(flush_bytes_min=1 << 30, guard_reps=2)
    assert TimingProtocol(**dataclasses.asdict(proto)) == proto


def test_the_evaluator_actor_never_raises():
    from evolve.pool import EvaluatorActor, Job

    options = {**dataclasses.asdict(ev_mod.EvalOptions()), "gpu_memory_fraction": 2.0}  # invalid here
    verdict = EvaluatorActor().evaluate(Job(1, SEED, TINY.to_dict(), options))
    assert verdict["status"] == "judge_error" and "gpu_memory_fraction" in verdict["feedback"]
    assert verdict["backend"] is None  # the controller labels it with its run's backend
