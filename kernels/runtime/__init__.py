"""The runtime an exported winner carries: custom op, autograd, dispatch, nn.Linear, interpreter fix.

Depends on torch and triton only (an exported module runs where this package is not installed):
`evolve export` inlines these files, in RUNTIME_FILES order, into one module after the kernel.
Used from the package (tests), a kernel is installed with `configure(entry, judged, namespace)`.
"""

from .dispatch import (
    Operand,
    clear_recent_calls,
    configure,
    configure_portfolio,
    decide,
    explain,
    interpreting,
    matmul,
    recent_calls,
)
from .interp_fix import ensure_interpreter_fixes
from .linear import Linear, patch, unpatch
from .op import define_op

# The order the export inlines them in: each file only uses names of the files before it.
RUNTIME_FILES = ("interp_fix.py", "cpu_device.py", "op.py", "dispatch.py", "linear.py")

__all__ = [
    "RUNTIME_FILES",
    "Linear",
    "Operand",
    "clear_recent_calls",
    "configure",
    "configure_portfolio",
    "decide",
    "define_op",
    "ensure_interpreter_fixes",
    "explain",
    "interpreting",
    "matmul",
    "patch",
    "recent_calls",
    "unpatch",
]
