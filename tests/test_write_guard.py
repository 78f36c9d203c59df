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
        (ROOT / "tests" / "honest" / "autotune_full.py").read_text(),
        DEMO,
        device="cpu",
        memo=False,
        stage="provisional",  # the guard during the check shapes' calls; the expensive stage adds nothing here
    )
    assert ev.status == "ok", ev.feedback


class _Descriptor:
    """Stands for a TensorDescriptor: what check_launch reads of one is its `base` tensor."""

    def __init__(self, base) -> None:
        self.base = base


def test_a_gpu_launch_writing_through_an_inputs_storage_is_recorded():
    """On a GPU nothing watches the stores: the kernel's written parameters (from its TTIR) must not
    be given an input's storage, whatever view of it (a slice, a descriptor)."""
    import torch

    from evaluators.write_guard import InputWriteGuard

    a, b, c = torch.zeros(8, 8), torch.zeros(8, 8), torch.zeros(8, 8)
    guard = InputWriteGuard()
    guard.protect({"A": a, "B": b})
    names = ("a_ptr", "b_ptr", "c_ptr")
    guard.check_launch("k", names, (a, b, c), {}, ["c_ptr"])
    assert guard.hits == []  # C is the candidate's own; A and B only read
    guard.check_launch("k", names, (a, c, b[2:, 1:]), {}, ["c_ptr"])
    assert guard.hits == ["kernel k writes through its argument c_ptr, which is B's storage"]
    guard.check_launch("k2", names, (a, b, c), {"c_ptr": _Descriptor(a.t())}, ["c_ptr"])
    assert "kernel k2 writes through its argument c_ptr, which is A's storage" in guard.hits
    guard.protect({})
    guard.check_launch("k3", names, (a, b, a), {}, ["c_ptr"])  # outside a call: nothing guarded
    assert not any("k3" in hit for hit in guard.hits)
