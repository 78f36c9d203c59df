"""Narrow, self-checking fixes for Triton's CPU interpreter (TRITON_INTERPRET=1) in bf16.

Triton 3.9's interpreter keeps bf16 tensors as their raw uint16 storage: `tl.dot` hands that storage
to `np.matmul` (it multiplies bit patterns, not numbers), fp32 -> bf16 casts truncate instead of
rounding to nearest even as a GPU does, and `tl.atomic_add` refuses bf16. Each fix below first runs
a tiny kernel under the interpreter and patches only when the answer is wrong, then checks again:
once upstream is right, nothing is patched. None of this runs unless the interpreter is in use.

This is a copy adapted from the judge's evaluators/interp_fix.py (the same fixes the kernel was
judged under), not an import of it: an exported winner must run where this package is not
installed, so the runtime depends on torch and triton only. The Triton internals the judge reaches
through evaluators/compat.py are reached here directly (Triton 3.6 - 3.9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used: only the interpreter needs it
    import numpy as np

_FIX_STATE: dict = {}


def _interp_internals():
    """(InterpretedFunction, InterpreterBuilder, TensorHandle) of Triton's interpreter."""
    from triton.runtime import interpreter

    return interpreter.InterpretedFunction, interpreter.InterpreterBuilder, interpreter.TensorHandle


def _bf16_storage_to_fp32(data: np.ndarray) -> np.ndarray:
    import numpy as np

    return (np.asarray(data).astype(np.uint32) << 16).view(np.float32)


def _fp32_to_bf16_storage(data: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 storage (uint16), to nearest, ties to even; NaN stays NaN."""
    import numpy as np

    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(data), np.uint16(0x7FC0), rounded)


def _dot_selfcheck() -> float:
    """Max abs error of a 16x16x16 bf16 tl.dot under the interpreter (0 when right)."""
    import torch
    import triton.language as tl

    def dot_kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
        b = tl.load(b_ptr + offs[:, None] * BLOCK + offs[None, :])
        tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b))

    kernel = _interp_internals()[0](dot_kernel)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=gen).to(torch.bfloat16)
    b = torch.randn(16, 16, generator=gen).to(torch.bfloat16)
    c = torch.empty(16, 16, dtype=torch.float32)
    kernel[(1,)](a, b, c, BLOCK=16)
    return float((c.double() - a.double() @ b.double()).abs().max())


def ensure_bf16_dot() -> str:
    """Make the interpreter's bf16 tl.dot right: 'ok' (nothing to fix) or 'patched'; raises when the
    fix does not self-check (a wrong product is never computed silently)."""
    import numpy as np

    if "dot" in _FIX_STATE:
        return _FIX_STATE["dot"]
    if _dot_selfcheck() < 1e-3:
        _FIX_STATE["dot"] = "ok"
        return "ok"
    import triton.language as tl

    _, builder, handle = _interp_internals()
    original = builder.create_dot

    def widen(x):
        data = _bf16_storage_to_fp32(x.data) if x.dtype == tl.bfloat16 else x.data.astype(np.float32)
        return handle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype == tl.bfloat16 or b.dtype == tl.bfloat16:
            a, b = widen(a), widen(b)  # exact: a bf16 is the top half of an fp32
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot
    err = _dot_selfcheck()
    if err >= 1e-3:
        builder.create_dot = original
        raise RuntimeError(f"Triton interpreter: bf16 tl.dot still wrong after the fix (max error {err:.3g})")
    _FIX_STATE["dot"] = "patched"
    return "patched"


def _rounding_selfcheck() -> str | None:
    """None when fp32 -> bf16 casts round to nearest even under the interpreter; else what came out."""
    import torch
    import triton.language as tl

    def cast_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))

    kernel = _interp_internals()[0](cast_kernel)
    # Above, at and below half an ulp, both signs, a tie to even each way, and an overflow to inf.
    values = [1.0 + 2**-8 + 2**-20, 1.0 + 3 * 2**-9, -1.01171875, -(1.0 + 2**-9), 1.0 + 2**-9, 3.0000002]
    x = torch.tensor(values + [3.4e38, 0.0], dtype=torch.float32)
    y = torch.empty(8, dtype=torch.bfloat16)
    kernel[(1,)](x, y, BLOCK=8)
    expected = x.to(torch.bfloat16)
    if torch.equal(y.view(torch.int16), expected.view(torch.int16)):
        return None
    return f"got {y.float().tolist()}, expected {expected.float().tolist()}"


def ensure_bf16_rounding() -> str:
    """Make the interpreter's fp32 -> bf16 casts round to nearest even, as a GPU's cvt.rn.bf16.f32 and
    torch do: 'ok', 'patched' or 'unavailable: why' (then casts truncate: at most one bf16 ulp off)."""
    import numpy as np

    if "rounding" in _FIX_STATE:
        return _FIX_STATE["rounding"]
    if _rounding_selfcheck() is None:
        _FIX_STATE["rounding"] = "ok"
        return "ok"
    import triton.language as tl

    _, builder, handle = _interp_internals()
    original = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            data = np.asarray(src.data, dtype=np.float32)
            return handle(_fp32_to_bf16_storage(data).reshape(data.shape), dst_type.scalar)
        return original(self, src, dst_type)

    builder.cast_impl = cast_impl
    problem = _rounding_selfcheck()
    if problem is not None:
        builder.cast_impl = original
        _FIX_STATE["rounding"] = f"unavailable: the fix did not self-check ({problem[:200]})"
    else:
        _FIX_STATE["rounding"] = "patched"
    return _FIX_STATE["rounding"]


def _atomic_selfcheck() -> str | None:
    """None when a 2-lane bf16 atomic add (both lanes on one address, then one more) is right."""
    import torch
    import triton.language as tl

    def add_kernel(x_ptr, v_ptr):
        offs = tl.arange(0, 2)
        tl.atomic_add(x_ptr + offs * 0, tl.load(v_ptr + offs))
        tl.atomic_add(x_ptr + 1 + offs * 0, tl.load(v_ptr + offs))

    kernel = _interp_internals()[0](add_kernel)
    x = torch.tensor([1.0, 0.5], dtype=torch.bfloat16)
    v = torch.tensor([0.25, 2.0], dtype=torch.bfloat16)
    try:
        kernel[(1,)](x, v)
    except Exception as e:  # noqa: BLE001 - the gap shows itself as an error
        return f"{type(e).__name__}: {e}"
    expected = [3.25, 2.75]
    return None if x.float().tolist() == expected else f"got {x.float().tolist()}, expected {expected}"


def ensure_bf16_atomic_add() -> str:
    """Make the interpreter's bf16 atomic add work (split-K kernels use it): 'ok', 'patched' or
    'unavailable: why' (then such a kernel raises under the interpreter; it never sums wrongly)."""
    import numpy as np

    if "atomic" in _FIX_STATE:
        return _FIX_STATE["atomic"]
    if _atomic_selfcheck() is None:
        _FIX_STATE["atomic"] = "ok"
        return "ok"
    import triton.language as tl
    from triton._C.libtriton import interpreter as native
    from triton._C.libtriton import ir

    _, builder, handle = _interp_internals()
    load, store, fadd = native.load, native.store, ir.ATOMIC_OP.FADD
    original = builder.create_atomic_rmw

    def create_atomic_rmw(self, rmwOp, ptr, val, mask, sem, scope):
        if rmwOp != fadd or val.dtype.scalar != tl.bfloat16:
            return original(self, rmwOp, ptr, val, mask, sem, scope)
        ptrs = np.asarray(ptr.data)
        on = np.broadcast_to(np.asarray(mask.data, dtype=bool), ptrs.shape)
        values = np.broadcast_to(np.asarray(val.data, dtype=np.uint16), ptrs.shape)
        old = load(ptrs, on, np.zeros(ptrs.shape, np.uint16), np.dtype(np.uint16))
        if np.unique(ptrs[on]).size == int(on.sum()):
            store(ptrs, _fp32_to_bf16_storage(_bf16_storage_to_fp32(old) + _bf16_storage_to_fp32(values)), on)
        else:  # lanes on one address: one after another (the interpreter runs one program at a time)
            old = old.copy()
            for index in np.ndindex(ptrs.shape):
                if not on[index]:
                    continue
                where, yes = np.asarray([ptrs[index]]), np.asarray([True])
                current = load(where, yes, np.zeros(1, np.uint16), np.dtype(np.uint16))
                old[index] = current[0]
                total = _bf16_storage_to_fp32(current) + _bf16_storage_to_fp32(np.asarray([values[index]]))
                store(where, _fp32_to_bf16_storage(total), yes)
        return handle(old, tl.bfloat16)

    builder.create_atomic_rmw = create_atomic_rmw
    problem = _atomic_selfcheck()
    if problem is not None:
        builder.create_atomic_rmw = original
        _FIX_STATE["atomic"] = f"unavailable: the fix did not self-check ({problem[:200]})"
    else:
        _FIX_STATE["atomic"] = "patched"
    return _FIX_STATE["atomic"]


def ensure_interpreter_fixes() -> dict:
    """Every fix above, self-checked (call only under TRITON_INTERPRET=1):
    {'bf16_dot': ..., 'bf16_rounding': ..., 'bf16_atomic_add': ...}."""
    return {
        "bf16_dot": ensure_bf16_dot(),
        "bf16_rounding": ensure_bf16_rounding(),
        "bf16_atomic_add": ensure_bf16_atomic_add(),
    }
