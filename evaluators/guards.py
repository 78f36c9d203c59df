"""Run-time guards inside the child: which torch ops the entry point calls, and
whether it launched a Triton kernel at all.

The static rules already reject named matrix products; these catch what a name
check cannot: a product reached through some other torch function (tensordot,
broadcasting plus a sum, a conv), or an entry point that returns without launching
anything. Ops made while a launch is in progress are recorded apart: the
interpreter's own argument copies are expected there, anything else would be the
kernel body (plain Python under the interpreter) calling torch.
"""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode

# What an honest entry point needs from torch: allocate, view, cast, copy, and the
# sum / add that finish a split-K reduction. Arithmetic that could compute a product
# (mul, exp, ...) belongs in the Triton kernel.
ALLOWED_OPS = frozenset(
    """
    empty empty_strided empty_like new_empty new_empty_strided zeros zeros_like new_zeros
    full full_like new_full ones ones_like fill_ zero_ t transpose permute view reshape
    _unsafe_view expand as_strided contiguous clone copy_ _to_copy to detach alias
    select slice unsqueeze squeeze sum add add_ resolve_conj resolve_neg lift_fresh
    """.split()
)
# What Triton's interpreter itself does with the arguments of a launch.
LAUNCH_OPS = frozenset("set_ empty new_empty empty_like copy_ _to_copy detach alias view".split())
PRODUCT_WORDS = (
    "mm",
    "matmul",
    "dot",
    "linear",
    "einsum",
    "tensordot",
    "conv",
    "mv",
    "ger",
    "outer",
    "bilinear",
)


def op_name(func) -> str:
    packet = getattr(func, "overloadpacket", None)
    return getattr(packet, "__name__", str(func)).split(".")[-1]


class LaunchDepth:
    """Counts Triton launches; ops seen while a launch is in progress are Triton's own."""

    def __init__(self) -> None:
        self.launches = 0
        self.depth = 0


class OpRecorder(TorchDispatchMode):
    def __init__(self, launch: LaunchDepth) -> None:
        super().__init__()
        self.launch = launch
        self.ops: list[str] = []  # called by the entry point itself
        self.launch_ops: list[str] = []  # called while a Triton launch was in progress

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        (self.launch_ops if self.launch.depth else self.ops).append(op_name(func))
        return func(*args, **(kwargs or {}))


def _is_product(op: str) -> bool:
    return op.lstrip("_") in PRODUCT_WORDS or any(w in op for w in ("mm", "matmul", "conv"))


def classify_ops(ops: list[str]) -> tuple[list[str], list[str]]:
    """(matrix products, other forbidden ops) among the recorded ops, each named once."""
    seen = list(dict.fromkeys(ops))
    products = [o for o in seen if _is_product(o)]
    others = [o for o in seen if o not in ALLOWED_OPS and o not in products]
    return products, others


def describe_forbidden(ops: list[str], launch_ops: list[str] = ()) -> str:
    """Feedback for the first guard that fired; empty when every op was allowed."""
    inside = [o for o in dict.fromkeys(launch_ops) if o not in LAUNCH_OPS]
    if inside:
        return (
            f"torch op(s) {', '.join('aten.' + o for o in inside)} ran inside a Triton launch: the kernel "
            "body must compute with triton.language only"
        )
    products, others = classify_ops(ops)
    if products:
        return (
            f"the entry point called torch op(s) {', '.join('aten.' + o for o in products)}: a library matrix "
            "product; compute C in your own Triton kernel"
        )
    if others:
        return (
            f"the entry point called torch op(s) {', '.join('aten.' + o for o in others)}; outside Triton kernels "
            "the entry point may only allocate, view, cast, copy and sum split-K partials"
        )
    return ""


def launch_signature(name: str, arg_names: list[str], args: tuple, kwargs: dict) -> list:
    """What one launch looks like, comparable between a `meta` run and a real one:
    kernel, grid, and every argument (tensors by dtype, shape and strides; scalars by value)."""
    options = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
    grid = kwargs.get("grid")
    if callable(grid):
        grid = grid({**dict(zip(arg_names, args, strict=False)), **options})
    grid = [int(g) for g in (grid if isinstance(grid, tuple | list) else (grid,))]
    return [
        name,
        grid,
        [_arg_signature(a) for a in args],
        sorted([k, _arg_signature(v)] for k, v in options.items()),
    ]


def _arg_signature(x):
    if hasattr(x, "dtype") and hasattr(x, "stride") and hasattr(x, "shape"):
        return ["tensor", str(x.dtype), list(x.shape), list(x.stride())]
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return type(x).__name__
