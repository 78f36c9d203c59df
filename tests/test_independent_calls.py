"""Calls are independent, at run time (issue 10 item 6): some dozens of calls on the smallest check
shape in one child before its checked ones, every output kept there and re-checked at the end; a
new output may not share storage with one the caller still holds. The static rules reject the usual
ways to keep state, so these tests switch them off (the run-time net must hold by itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluators import EvalOptions, Task, evaluate, static_rules
from evaluators.check_stage import MANY_CALLS

ROOT = Path(__file__).resolve().parents[1]
SEED = (ROOT / "kernels" / "seeds" / "tiled_matmul.py").read_text()
TASK = Task(name="calls", dtype="bf16", layouts=("nn",), train=((256, 256, 256),), held_out=(),
            check=((64, 64, 64),), trials=2)  # fmt: skip
ALLOC = "    c = torch.empty((M, N), device=a.device, dtype=a.dtype)\n"


def judge(source: str, monkeypatch) -> object:
    monkeypatch.setattr(static_rules, "check_source", lambda *args, **kwargs: [])
    return evaluate(source, TASK, EvalOptions(device="cpu", model_gpu=None, prestart=False, memo=False))


def test_a_reused_output_buffer_is_rejected(monkeypatch):
    source = SEED.replace(
        ALLOC, "    c = BUFFERS.setdefault((M, N), torch.empty((M, N), device=a.device, dtype=a.dtype))\n"
    )
    source = source.replace("@triton.jit", "BUFFERS = {}\n\n\n@triton.jit", 1)
    ev = judge(source, monkeypatch)
    assert ev.status == "rejected", ev.feedback
    assert (
        "shares storage with the output of call 1" in ev.feedback
        and "calls must be independent" in ev.feedback
    )


def test_a_result_overwritten_in_place_by_later_calls_is_incorrect(monkeypatch):
    # Each call returns a fresh tensor, but also writes its result into every earlier output it kept.
    source = SEED.replace(ALLOC, ALLOC + "    for old in HELD:\n        old.zero_()\n    HELD.append(c)\n")
    source = source.replace("@triton.jit", "HELD = []\n\n\n@triton.jit", 1)
    ev = judge(source, monkeypatch)
    assert ev.status == "incorrect", ev.feedback
    assert "right when returned, wrong after" in ev.feedback


def test_a_switch_after_some_calls_is_caught(monkeypatch):
    # Any switch before MANY_CALLS calls is met (how many calls run is drawn, between MANY_CALLS and
    # twice that); later thresholds are the static rules' to catch.
    source = (ROOT / "tests" / "adversarial" / "kernels" / "module_call_counter.py").read_text()
    assert 'if CALLS["n"] > 32:' in source
    source = source.replace('if CALLS["n"] > 32:', f'if CALLS["n"] > {MANY_CALLS - 2}:')
    ev = judge(source, monkeypatch)
    # Which check meets the switch first depends on the drawn order of the calls' input kinds: the
    # half-K launch differs from an earlier call's on the same inputs (rejected), or its values are
    # wrong (incorrect). Either way the switch is caught.
    caught = {
        "incorrect": ("max scaled error", "NaN/Inf where the exact product's differ", "results are biased"),
        "rejected": ("launched different kernels on two calls with the same shape",),
    }
    assert ev.status in caught, ev.feedback
    assert any(phrase in ev.feedback for phrase in caught[ev.status]), ev.feedback


@pytest.mark.parametrize("name", ["tiled_matmul"])
def test_the_seed_passes_and_says_how_many_calls(name, monkeypatch):
    ev = evaluate(SEED, TASK, EvalOptions(device="cpu", model_gpu=None, prestart=False, memo=False))
    assert ev.status == "ok", ev.feedback
    assert MANY_CALLS <= ev.provenance["independent_calls"] <= 2 * MANY_CALLS
