"""evolve/export/backward.py: the backward products of a task's training shapes, and their layouts."""

from evaluators.task import Task
from evolve.export.backward import backward_layouts, backward_shapes, backward_task


def test_backward_shapes_put_the_token_count_inside():
    """dA = dC·Bᵀ is (M, K, N), dB = Aᵀ·dC is (K, N, M): the issue's example, and repeats kept once."""
    assert backward_shapes([(16384, 14336, 4096)]) == [(16384, 4096, 14336), (4096, 14336, 16384)]
    assert backward_shapes([(64, 64, 64), (8, 64, 64)]) == [(64, 64, 64), (8, 64, 64), (64, 64, 8)]


def test_backward_layouts_flip_the_transposed_operand():
    """nn.Linear's forward is nt (b = Wᵀ): dA = dC·W on nn, dB = Xᵀ·dC on tn."""
    assert backward_layouts(["nt"]) == ["nn", "tn"]
    assert backward_layouts(["nn"]) == ["nt", "tn"]
    assert backward_layouts(["tn"]) == ["nn", "nt"]
    assert backward_layouts(["nn", "nt", "tn"]) == ["nn", "nt", "tn"]


def test_backward_task_keeps_checks_and_drops_held_out():
    task = Task(
        name="t", op="matmul", dtype="bf16", target="sm_90", layouts=("nt",),
        train=((512, 256, 128),), held_out=((96, 64, 64),), check=((32, 32, 32),), source="t.toml",
    )  # fmt: skip
    bwd = backward_task(task)
    assert bwd.name == "t:backward" and bwd.layouts == ("nn", "tn") and bwd.held_out == ()
    assert bwd.train == ((512, 128, 256), (128, 256, 512)) and bwd.check == task.check
    assert bwd.dtype == "bf16" and bwd.trials == task.trials
