"""The judge: static rules, compile-for-target, correctness, guards and GPU timing.

Imports nothing from `evolve`. Public API: `evaluate`, `EvalOptions`, `Evaluation`,
`Task`, `load_task`.
"""

from .version import __version__  # noqa: E402

from .evaluate import EvalOptions, backend_label, evaluate  # noqa: E402
from .evaluation import Evaluation, ShapeResult  # noqa: E402
from .task import Task, TaskError, load_task, parse_shapes  # noqa: E402

__all__ = [
    "backend_label",
    "EvalOptions",
    "Evaluation",
    "ShapeResult",
    "Task",
    "TaskError",
    "evaluate",
    "load_task",
    "parse_shapes",
]
