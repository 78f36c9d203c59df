"""Which path a matmul takes: the exported kernel where it was judged, `torch.matmul` elsewhere.

`configure(entry, judged, namespace)` installs a kernel's entry point (`matmul(a, b)` of a candidate
module) with `judged`, the facts of its verdict (see JUDGED_KEYS), and defines its custom op. Then:

- `matmul(a, b)`: a of shape (..., K) (leading dims flattened, as nn.Linear passes them), b (K, N),
  any strides; differentiable (dA = dC·Bᵀ, dB = Aᵀ·dC through the same op);
- `explain(a, b, backward=False) -> str`: "triton: config ..." or "fallback: <reason>" (and, with
  backward=True, the same for both backward products);
- `recent_calls()`: what the last calls actually ran (path, reason, shape, layout, bucket).

`configure_portfolio(kernels, namespace)` installs several kernels, one per shape bucket (bounds on M,
N, K): a product takes the first bucket whose bounds hold, and that bucket's kernel under the rules
below, or torch.matmul where the bucket has none.

The Triton path is taken only for what the kernel was judged on: CUDA tensors (CPU tensors under
TRITON_INTERPRET=1), the judged dtypes, the judged layouts (a and b row- or column-major, as the
judge's inputs were, with any leading stride at least the row length), and shapes no smaller than the
smallest one judged. Everything else runs `torch.matmul` and says why: never silently wrong.

Autograd's products (the op called with backward=True) are held to judged["backward"]: the facts of
the verdict on the backward products of the training shapes (dA = dC·Bᵀ is (M, K, N), dB = Aᵀ·dC is
(K, N, M): the token count becomes the inner dimension), or {"reason": ...} when the export judged
them and refused (or could not time) them: then every backward product falls back and says why.
"""

from __future__ import annotations

import collections
import math
import os
from typing import NamedTuple

import torch
import triton

from .cpu_device import device_answers
from .interp_fix import ensure_interpreter_fixes
from .op import define_op

# Every key a `judged` dict carries (the export writes them; see evolve/export/).
JUDGED_KEYS = ("label", "kind", "gpu", "dtypes", "layouts", "min_shape", "max_elements", "backward")
# What judged["backward"] holds when the backward products may run the kernel (else {"reason": str}).
BACKWARD_KEYS = ("label", "kind", "gpu", "dtypes", "layouts", "min_shape", "max_elements")
LAYOUT_WORDS = {"n": "row-major", "t": "column-major"}
INT32_MAX = 2**31 - 1

_RUNTIME: dict = {}
_RECENT: collections.deque = collections.deque(maxlen=256)


class Operand(NamedTuple):
    """What the dispatch rules read of a 2-D operand (no data): explain() builds these for the
    backward products without allocating them."""

    device: torch.device
    dtype: torch.dtype
    shape: tuple[int, int]
    stride: tuple[int, int]


def configure(entry, judged: dict, namespace: str, pick_config=None, autotuned: tuple[str, ...] = ()) -> None:
    """Install `entry(a, b)` (2-D, the candidate's entry point) as the kernel behind `matmul`, with
    the facts it was judged on, and register its op `<namespace>::matmul`. `autotuned`: the names of
    the module's @triton.autotune kernels (they need a GPU: on CPU tensors the call falls back).
    judged["cpu_device"] (optional): the device properties a kernel module's CUDA queries get under
    the interpreter on CPU, as the judge answered them."""
    kernel = {"name": "", "when": {}, "entry": entry, "judged": judged, "pick_config": pick_config}
    configure_portfolio([{**kernel, "autotuned": tuple(autotuned)}], namespace)


def configure_portfolio(kernels: list[dict], namespace: str) -> None:
    """Install a portfolio: a list of buckets, each {name, when (bounds on M, N, K: M_min, M_max, N_min,
    N_max, K_min, K_max, inclusive), entry, judged, pick_config, autotuned, label} or, for a bucket
    where no kernel won, {name, when, entry: None, reason}. A product takes the first bucket whose
    bounds hold; the kernel runs there as `configure`'s does, a bucket without one falls back."""
    for kernel in kernels:
        if kernel.get("entry") is None:
            if not kernel.get("reason"):
                raise ValueError(f"bucket {kernel.get('name')!r} has no kernel and no reason for it")
            continue
        missing = [k for k in JUDGED_KEYS if k not in kernel["judged"]]
        if missing:
            raise ValueError(f"judged facts lack {missing}; an export writes all of {list(JUDGED_KEYS)}")
        backward = kernel["judged"]["backward"]
        if not (
            isinstance(backward, dict) and (backward.get("reason") or set(BACKWARD_KEYS) <= set(backward))
        ):
            raise ValueError(
                f"judged['backward'] must hold {list(BACKWARD_KEYS)} or a reason the backward products "
                f"fall back; got {backward!r}"
            )
    _RUNTIME.update(
        kernels=[{"pick_config": None, "autotuned": (), "label": "", **k} for k in kernels],
        namespace=namespace,
        op=define_op(namespace, run_2d),
    )


def _state() -> dict:
    if "kernels" not in _RUNTIME:
        raise RuntimeError("no kernel configured: call configure(entry, judged, namespace) first")
    return _RUNTIME


BOUNDS = {"M_min": ">=", "M_max": "<=", "N_min": ">=", "N_max": "<=", "K_min": ">=", "K_max": "<="}


def bounds_hold(when: dict, m: int, n: int, k: int) -> bool:
    """Whether M, N, K lie within a bucket's bounds ({"M_max": 16, "K_min": 1024, ...}; {}: any)."""
    dims = {"M": m, "N": n, "K": k}
    return all(dims[key[0]] >= v if key.endswith("_min") else dims[key[0]] <= v for key, v in when.items())


def bucket_text(kernel: dict) -> str:
    """'decode (M <= 16)': a bucket's name and bounds."""
    bounds = ", ".join(f"{key[0]} {BOUNDS[key]} {value}" for key, value in kernel["when"].items())
    return f"{kernel['name']} ({bounds or 'any shape'})"


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4; the variable before
    runtime = getattr(knobs, "runtime", None)
    if runtime is not None and hasattr(runtime, "interpret"):
        return bool(runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def operand(t: torch.Tensor) -> Operand:
    return Operand(
        t.device, t.dtype, (int(t.shape[0]), int(t.shape[1])), (int(t.stride(0)), int(t.stride(1)))
    )


def _majors(x: Operand) -> list[str]:
    """'n' if x is row-major, 't' if column-major (both for a vector-like x), each with a leading
    stride of at least the row (column) length, as the judge's inputs had: sliced, never overlapping."""
    (rows, cols), (s0, s1) = x.shape, x.stride
    out = []
    if (cols <= 1 or s1 == 1) and (rows <= 1 or s0 >= cols):
        out.append("n")
    if (rows <= 1 or s0 == 1) and (cols <= 1 or s1 >= rows):
        out.append("t")
    return out


def _layout(a: Operand, b: Operand, judged: dict) -> tuple[str | None, str]:
    """(layout, '') when a judged layout fits both operands' strides, else (None, why not)."""
    for name, x in (("a", a), ("b", b)):
        if not _majors(x):
            return None, (
                f"{name}'s strides {x.stride} for shape {x.shape} are neither row- nor column-major "
                "(a stepped slice or a broadcast): not judged"
            )
    fits = [x + y for x in _majors(a) for y in _majors(b)]
    for layout in fits:
        if layout in judged["layouts"]:
            return layout, ""
    words = f"a {LAYOUT_WORDS[fits[0][0]]}, b {LAYOUT_WORDS[fits[0][1]]}"
    return None, f"layout {fits[0]} ({words}) not judged (judged: {', '.join(judged['layouts'])})"


def decide(a: Operand, b: Operand, backward: bool = False) -> tuple[str | None, str]:
    """(layout, '') when the Triton kernel runs on these operands, else (None, the reason);
    backward: the product is one of autograd's (held to what the backward products were judged on)."""
    layout, why, _ = _decide(a, b, backward)
    return layout, why


def _decide(a: Operand, b: Operand, backward: bool = False) -> tuple[str | None, str, dict | None]:
    """(layout, '', kernel) when a kernel runs on these operands, else (None, the reason, None)."""
    layout, why, kernel = _decide_kernel(a, b, backward)
    return (layout, "", kernel) if layout is not None else (None, why, None)


def judged_for(kernel: dict, backward: bool) -> dict:
    """The facts a product is held to: the forward verdict's, or the backward products' verdict's."""
    return kernel["judged"]["backward"] if backward else kernel["judged"]


def _decide_kernel(a: Operand, b: Operand, backward: bool) -> tuple[str | None, str, dict | None]:
    kernels = _state()["kernels"]
    if a.device != b.device:
        return None, f"a on {a.device}, b on {b.device}", None
    kind = a.device.type
    if kind == "cpu" and not interpreting():
        return (
            None,
            "CPU tensors run the Triton kernel only under TRITON_INTERPRET=1 (Triton's interpreter)",
            None,
        )
    if kind not in ("cuda", "cpu"):
        return None, f"device {kind}: the kernel was judged on CUDA GPUs", None
    (m, k), n = a.shape, b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return None, f"empty product ({m}x{n}x{k})", None
    kernel = next((x for x in kernels if bounds_hold(x["when"], m, n, k)), None)
    if kernel is None:
        return None, f"no bucket of the portfolio holds {m}x{n}x{k}", None
    if kernel["entry"] is None:
        return None, f"bucket {bucket_text(kernel)}: {kernel['reason']}", None
    layout, why = _fits(kernel, a, b, backward)
    if layout is None and kernel["name"]:
        why = f"bucket {bucket_text(kernel)}: {why}"
    return layout, why, kernel


def _fits(kernel: dict, a: Operand, b: Operand, backward: bool) -> tuple[str | None, str]:
    """(layout, '') when `kernel` was judged on what a and b are, else (None, why not)."""
    judged = judged_for(kernel, backward)
    if judged.get("reason"):
        return None, f"backward products not run on the kernel: {judged['reason']}"
    what = "the backward products of the training shapes" if backward else "the kernel"
    if a.device.type == "cpu" and kernel["autotuned"]:
        names = ", ".join(kernel["autotuned"])
        return (
            None,
            f"autotuned kernel ({names}): Triton's autotuner times its configs on a GPU, never on a CPU",
        )
    dtypes = judged["dtypes"]
    if a.dtype != b.dtype or str(a.dtype).removeprefix("torch.") not in dtypes:
        got = str(a.dtype).removeprefix("torch.")
        if a.dtype != b.dtype:
            got += f" x {str(b.dtype).removeprefix('torch.')}"
        return None, f"dtype {got} not judged (judged: {', '.join(dtypes)})"
    (m, k), n = a.shape, b.shape[1]
    layout, why = _layout(a, b, judged)
    if layout is None:
        return None, why
    small = judged["min_shape"]
    if m * n * k < small[0] * small[1] * small[2]:
        return None, (
            f"too small: {m}x{n}x{k} is below the smallest shape {what} was judged on "
            f"({'x'.join(map(str, small))}, by M*N*K)"
        )
    elements = max(m * k, k * n, m * n)
    if elements > INT32_MAX and elements > judged["max_elements"]:
        return None, (
            f"too large: a {elements}-element operand needs 64-bit offsets; {what} was judged on at "
            f"most {judged['max_elements']} elements"
        )
    return layout, ""


def _config_text(kernel: dict, m: int, n: int, k: int) -> str:
    pick = kernel["pick_config"]
    if pick is None:
        return "chosen inside the kernel's entry point"
    try:
        config = pick(m, n, k)
    except Exception as e:  # noqa: BLE001 - only for the text: the entry point picks its own config
        return f"chosen inside the entry point (pick_config({m}, {n}, {k}) raised {type(e).__name__})"
    if isinstance(config, dict):
        return ", ".join(f"{key}={value}" for key, value in config.items())
    return repr(config)


def _gpu_note(device: torch.device, judged: dict) -> str:
    if device.type != "cuda" or judged["kind"] != "measured":
        return ""
    here = torch.cuda.get_device_name(device)
    if here == judged["gpu"]:
        return ""
    return f"; measured on {judged['gpu']}, this GPU is {here}: judged correct there, its speed here is unmeasured"


def _describe(a: Operand, b: Operand, backward: bool = False) -> str:
    layout, why, kernel = _decide(a, b, backward)
    if layout is None:
        return f"fallback: {why}"
    judged = judged_for(kernel, backward)
    (m, k), n = a.shape, b.shape[1]
    bucket = f"bucket {bucket_text(kernel)}, {kernel['label']}, " if kernel["name"] else ""
    text = f"triton: {bucket}config {_config_text(kernel, m, n, k)} (layout {layout}, {str(a.dtype).removeprefix('torch.')}, "
    on = " on the backward products" if backward else ""
    text += f"M={m} N={n} K={k}; fitness{on} {judged['label']}{_gpu_note(a.device, judged)})"
    if judged["kind"] != "measured":
        text += (
            " [MODELLED, not measured: exported with allow_modelled; the performance model can be several "
            "times too optimistic on small shapes]"
        )
    return text


def _flat(a: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (M, K), M the product of the leading dims (explicit: -1 is ambiguous when K = 0)."""
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def _not_2d_reason(a: torch.Tensor, b: torch.Tensor) -> str:
    if b.dim() != 2:
        return f"b has {b.dim()} dimensions; the kernel takes b of shape (K, N)"
    if a.dim() == 0:
        return "a is a scalar"
    return ""


def explain(a: torch.Tensor, b: torch.Tensor, backward: bool = False) -> str:
    """Which path `matmul(a, b)` takes and why: "triton: config ..." or "fallback: <reason>". With
    backward=True, three lines: forward, then the backward products dA = dC·Bᵀ and dB = Aᵀ·dC."""
    reason = _not_2d_reason(a, b)
    if reason:
        return f"fallback: {reason}"
    if a.shape[-1] != b.shape[0]:
        return f"error: inner dimensions differ (a {tuple(a.shape)}, b {tuple(b.shape)}); matmul raises"
    a, b = _autocast(a, b)
    a2 = _flat(a)
    fa, fb = operand(a2), operand(b)
    forward = _describe(fa, fb)
    if not backward:
        return forward
    (m, k), n = fa.shape, fb.shape[1]
    dc = Operand(fa.device, fa.dtype, (m, n), (n, 1))  # autograd's gradient: a fresh row-major tensor
    grad_a = _describe(dc, Operand(fb.device, fb.dtype, (n, k), (fb.stride[1], fb.stride[0])), True)
    grad_b = _describe(Operand(fa.device, fa.dtype, (k, m), (fa.stride[1], fa.stride[0])), dc, True)
    return f"forward: {forward}\nbackward dA = dC·Bᵀ: {grad_a}\nbackward dB = Aᵀ·dC: {grad_b}"


def run_2d(a: torch.Tensor, b: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """The op's real work on 2-D a, b: the kernel where `decide` allows it, else torch.matmul;
    backward: one of autograd's products."""
    fa, fb = operand(a), operand(b)
    layout, why, kernel = _decide(fa, fb, backward)
    record = {
        "role": "backward" if backward else "forward",
        "shape": (fa.shape[0], fb.shape[1], fa.shape[1]),
        "layout": layout,
        "dtype": str(a.dtype).removeprefix("torch."),
        "device": str(a.device),
    }
    if layout is None:
        _RECENT.append({**record, "path": "fallback", "reason": why})
        return torch.matmul(a, b)
    if a.device.type == "cpu":  # under the interpreter (decide said so)
        ensure_interpreter_fixes()  # raises rather than let a wrong bf16 dot through
        with device_answers(kernel["judged"].get("cpu_device")):
            out = kernel["entry"](a, b)
    else:
        with torch.cuda.device(a.device):  # Triton launches on the current device: make it a's
            out = kernel["entry"](a, b)
    m, n = fa.shape[0], fb.shape[1]
    if not isinstance(out, torch.Tensor) or out.shape != (m, n) or out.dtype != a.dtype:
        got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise RuntimeError(f"the kernel's entry point returned {got} for a ({m}, {n}) {a.dtype} product")
    _RECENT.append({**record, "path": "triton", "reason": "", "bucket": kernel["name"]})
    # The op's fake implementation promises a row-major output; compiled code relies on its strides.
    return out if out.is_contiguous() else out.contiguous()


def _autocast(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast as autocast casts torch.matmul (to its lower precision), so the kernel sees what a
    torch.matmul under the same autocast would compute with."""
    kind = a.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        if a.is_floating_point() and b.is_floating_point():
            return a.to(dtype), b.to(dtype)
    return a, b


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., K) @ b (K, N) -> (..., N), differentiable; the Triton kernel where it was judged,
    torch.matmul elsewhere (see explain)."""
    state = _state()
    if _not_2d_reason(a, b):
        return torch.matmul(a, b)
    lead = a.shape[:-1]
    kind = a.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        a, b = _autocast(a, b)
        # Cast already: inside, autocast would cast the fallback's torch.matmul again, not the kernel.
        with torch.autocast(kind, enabled=False):
            out = state["op"](_flat(a), b)
    else:
        out = state["op"](_flat(a), b)
    return out.reshape(*lead, b.shape[1])


def recent_calls() -> list[dict]:
    """The last calls the op ran (oldest first): {path: 'triton'|'fallback', reason, role:
    'forward'|'backward', shape (M, N, K), layout, dtype, device}. Calls traced by torch.compile's fake
    tensors are not here, their runs are."""
    return list(_RECENT)


def clear_recent_calls() -> None:
    _RECENT.clear()
