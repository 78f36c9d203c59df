"""The judge: static rules, compile-for-target, correctness, guards and GPU timing.

Imports nothing from `evolve`. Public API: `evaluate`, `EvalOptions`, `Evaluation`,
`Task`, `load_task`.
"""

from .evaluate import EvalOptions, backend_label, evaluate
from .evaluation import Evaluation, ShapeResult
from .task import Task, TaskError, load_task, parse_shapes
from .version import __version__

__all__ = [
    "__version__",
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
