"""A narrow fix for Triton's CPU interpreter computing `tl.dot` on bf16 wrongly.

Triton 3.9's interpreter keeps bf16 tensors as their raw uint16 storage, and
`InterpreterBuilder.create_dot` hands that storage straight to `np.matmul`, so it
multiplies bit patterns instead of numbers. We never trust a version number for
this: `ensure_bf16_dot()` runs a tiny bf16 dot under the interpreter, and only when
the answer is wrong does it wrap `create_dot` to widen bf16 operands to float32
(exact: bf16 is the top half of an fp32). Once upstream is right the self-check
passes and nothing is patched. Only ever used with TRITON_INTERPRET=1.
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
