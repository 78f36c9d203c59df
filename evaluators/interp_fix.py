"""Narrow fixes for gaps of Triton's CPU interpreter: `tl.dot` on bf16 computed wrongly, and
`tl.atomic_add` on bf16 refused ("Unsupported data type").

Triton 3.9's interpreter keeps bf16 tensors as their raw uint16 storage, and
`InterpreterBuilder.create_dot` hands that storage straight to `np.matmul`, so it
multiplies bit patterns instead of numbers. We never trust a version number for
this: `ensure_bf16_dot()` runs a tiny bf16 dot under the interpreter, and only when
the answer is wrong does it wrap `create_dot` to widen bf16 operands to float32
(exact: bf16 is the top half of an fp32). Once upstream is right the self-check
passes and nothing is patched. Only ever used with TRITON_INTERPRET=1.

The bf16 atomic add is the same kind of fix: `ensure_bf16_atomic_add()` tries a tiny
bf16 atomic add, and only when it raises or answers wrongly does it wrap
`create_atomic_rmw` to do a bf16 add as the GPU's `atom.add.bf16` does it: both
operands widened to fp32 (exact), added, rounded back to bf16 to nearest-even. The
interpreter runs one program at a time, so the read-modify-write is atomic by
construction; lanes of one call that hit the same address are applied in lane order.
"""

from __future__ import annotations

import numpy as np

from . import compat

_state: dict = {}


def _bf16_storage_to_fp32(data: np.ndarray) -> np.ndarray:
    return (data.astype(np.uint32) << 16).view(np.float32)


def _selfcheck() -> float:
    """Max abs error of a 16x16x16 bf16 tl.dot under the interpreter (0 when right)."""
    import torch
    import triton.language as tl

    def dot_kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
        b = tl.load(b_ptr + offs[:, None] * BLOCK + offs[None, :])
        tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b))

    kernel = compat.interpreted(dot_kernel)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=gen).to(torch.bfloat16)
    b = torch.randn(16, 16, generator=gen).to(torch.bfloat16)
    c = torch.empty(16, 16, dtype=torch.float32)
    kernel[(1,)](a, b, c, BLOCK=16)
    ref = a.double() @ b.double()
    return float((c.double() - ref).abs().max())


def ensure_bf16_dot() -> str:
    """Make the interpreter's bf16 dot right; returns 'ok', 'patched' (said in provenance)."""
    if "status" in _state:
        return _state["status"]
    if _selfcheck() < 1e-3:
        _state["status"] = "ok"
        return "ok"
    import triton.language as tl

    builder, handle = compat.interpreter_dot()
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype == tl.bfloat16 or b.dtype == tl.bfloat16:
            a = handle(
                _bf16_storage_to_fp32(a.data) if a.dtype == tl.bfloat16 else a.data.astype(np.float32),
                tl.float32,
            )
            b = handle(
                _bf16_storage_to_fp32(b.data) if b.dtype == tl.bfloat16 else b.data.astype(np.float32),
                tl.float32,
            )
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot
    err = _selfcheck()
    if err >= 1e-3:
        builder.create_dot = original
        raise RuntimeError(f"interpreter bf16 dot still wrong after the fix (max error {err:.3g})")
    _state["status"] = "patched"
    return "patched"


def _fp32_to_bf16_storage(data: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 storage (uint16), to nearest, ties to even; NaN stays NaN."""
    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(data), np.uint16(0x7FC0), rounded)


def _atomic_selfcheck() -> str | None:
    """None when a 2-lane bf16 atomic add (both lanes on one address, then one more add) is
    right under the interpreter; else what went wrong."""
    import torch
    import triton.language as tl

    def add_kernel(x_ptr, v_ptr):
        offs = tl.arange(0, 2)
        tl.atomic_add(x_ptr + offs * 0, tl.load(v_ptr + offs))
        tl.atomic_add(x_ptr + 1 + offs * 0, tl.load(v_ptr + offs))

    kernel = compat.interpreted(add_kernel)
    x = torch.tensor([1.0, 0.5], dtype=torch.bfloat16)
    v = torch.tensor([0.25, 2.0], dtype=torch.bfloat16)
    try:
        kernel[(1,)](x, v)
    except Exception as e:  # noqa: BLE001 - the gap shows itself as an error
        return f"{type(e).__name__}: {e}"
    expected = [3.25, 2.75]
    return None if x.float().tolist() == expected else f"got {x.float().tolist()}, expected {expected}"


def ensure_bf16_atomic_add() -> str:
    """Make the interpreter's bf16 atomic add work; returns 'ok', 'patched' or 'unavailable: why'
    (said in provenance). Never raises: without it only bf16 atomics are out of the CPU's reach."""
    if "atomic" in _state:
        return _state["atomic"]
    if _atomic_selfcheck() is None:
        _state["atomic"] = "ok"
        return "ok"
    import triton.language as tl

    builder, handle, load, store, fadd = compat.interpreter_atomics()
    original = builder.create_atomic_rmw

    def create_atomic_rmw(self, rmwOp, ptr, val, mask, sem, scope):
        if rmwOp != fadd or val.dtype.scalar != tl.bfloat16:
            return original(self, rmwOp, ptr, val, mask, sem, scope)
        ptrs = np.asarray(ptr.data)
        mask_data = np.broadcast_to(np.asarray(mask.data, dtype=bool), ptrs.shape)
        values = np.broadcast_to(np.asarray(val.data, dtype=np.uint16), ptrs.shape)
        old = load(ptrs, mask_data, np.zeros(ptrs.shape, np.uint16), np.dtype(np.uint16))
        if np.unique(ptrs[mask_data]).size == int(mask_data.sum()):
            new = _fp32_to_bf16_storage(_bf16_storage_to_fp32(old) + _bf16_storage_to_fp32(values))
            store(ptrs, new, mask_data)
        else:  # lanes on the same address: one after another, each sees the one before
            old = old.copy()
            for index in np.ndindex(ptrs.shape):
                if not mask_data[index]:
                    continue
                one = (np.asarray([ptrs[index]]), np.asarray([True]))
                current = load(one[0], one[1], np.zeros(1, np.uint16), np.dtype(np.uint16))
                old[index] = current[0]
                total = _bf16_storage_to_fp32(current) + _bf16_storage_to_fp32(np.asarray([values[index]]))
                store(one[0], _fp32_to_bf16_storage(total), one[1])
        return handle(old, tl.bfloat16)

    builder.create_atomic_rmw = create_atomic_rmw
    problem = _atomic_selfcheck()
    if problem is not None:
        # Left as the interpreter has it: a kernel that needs it is then `unsupported` on CPU
        # (the interpreter raises), never judged on a wrong sum; the reason is in provenance.
        builder.create_atomic_rmw = original
        _state["atomic"] = f"unavailable: the fix did not self-check ({problem[:200]})"
        return _state["atomic"]
    _state["atomic"] = "patched"
    return "patched"


def _rounding_selfcheck() -> str | None:
    """None when fp32 -> bf16 casts round to nearest even under the interpreter (as `cvt.rn.bf16.f32`
    on a GPU and torch's `.to(torch.bfloat16)` do); else what came out."""
    import torch
    import triton.language as tl

    def cast_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))

    kernel = compat.interpreted(cast_kernel)
    # Above, at and below half an ulp, both signs, a tie to even each way, and an overflow to inf.
    x = torch.tensor(
        [
            1.0 + 2**-8 + 2**-20,
            1.0 + 3 * 2**-9,
            -1.01171875,
            -(1.0 + 2**-9),
            1.0 + 2**-9,
            3.0000002,
            3.4e38,
            0.0,
        ],
        dtype=torch.float32,
    )
    y = torch.empty(8, dtype=torch.bfloat16)
    kernel[(1,)](x, y, BLOCK=8)
    expected = x.to(torch.bfloat16)
    if torch.equal(y.view(torch.int16), expected.view(torch.int16)):
        return None
    return f"got {y.float().tolist()}, expected {expected.float().tolist()}"


def ensure_bf16_rounding() -> str:
    """Make the interpreter's fp32 -> bf16 casts round to nearest even, as a GPU does (Triton 3.9's
    truncates, a bias toward zero an honest kernel does not have on a GPU, and which the judge's bias
    check would blame on it); 'ok', 'patched' or 'unavailable: why'. Never raises."""
    if "rounding" in _state:
        return _state["rounding"]
    if _rounding_selfcheck() is None:
        _state["rounding"] = "ok"
        return "ok"
    import triton.language as tl

    builder, handle = compat.interpreter_dot()
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
        _state["rounding"] = f"unavailable: the fix did not self-check ({problem[:200]})"
        return _state["rounding"]
    _state["rounding"] = "patched"
    return "patched"


def ensure_interpreter_fixes() -> dict:
    """Every fix above, self-checked; {'bf16_dot': 'ok'|'patched', 'bf16_atomic_add': ..., 'bf16_rounding': ...}."""
    return {
        "bf16_dot": ensure_bf16_dot(),
        "bf16_atomic_add": ensure_bf16_atomic_add(),
        "bf16_rounding": ensure_bf16_rounding(),
    }
