"""Inputs are read-only inside the kernels too: a write into an input's storage is rejected, even
when the input is restored before the call returns (evaluators/write_guard.py)."""

from pathlib import Path

from evaluators import evaluate, load_task

ROOT = Path(__file__).resolve().parents[1]
DEMO = load_task(str(ROOT / "runs" / "demo_cpu.toml"))


def test_an_input_written_and_restored_is_rejected():
    source = (ROOT / "tests" / "adversarial" / "kernels" / "input_written_and_restored.py").read_text()
    ev = evaluate(source, DEMO, device="cpu", memo=False)
    assert ev.status == "rejected", ev.feedback
    assert "kernel negate_kernel wrote into A's storage" in ev.feedback and "read-only" in ev.feedback


def test_writes_into_c_and_a_workspace_are_fine():
    # split-K into a zeroed fp32 workspace with atomics, then C: no input storage is touched
    ev = evaluate(
        (ROOT / "tests" / "honest" / "autotune_full.py").read_text(), DEMO, device="cpu", memo=False
    )
    assert ev.status == "ok", ev.feedback
