"""Correctness against a float64 reference, with a tolerance tied to torch's own error.

Error measure. For C = A @ B with R = A @ B in float64 and S = |A| @ |B| (float64),
a result X has scaled error

    e(X) = max_ij |X_ij - R_ij| / S_ij

S is the classic componentwise bound scale: |fl(AB) - AB| <= gamma_K |A||B|, so e()
is comparable across shapes and insensitive to the inputs' magnitude.

Tolerance. With u_out the unit roundoff of the output dtype (fp16 2^-11, bf16 2^-8,
fp32 2^-24), u_acc = 2^-24 (fp32 accumulation), and e_torch the scaled error of
torch.matmul in the task dtype on the same inputs:

    model = u_out + 2 * sqrt(K) * u_acc   (+ 2 * 2^-11 when an fp32 task allows TF32)
    tol   = 2 * max(model, e_torch)

One output rounding (u_out |C| <= u_out S) plus fp32 accumulation growing like
sqrt(K) for random-signed terms; the factor 2 leaves room for a different but
honest summation order. Dropping one product term of randn inputs costs about
1/(0.64 K) in these units, and rounding fp32 inputs to fp16 about 2^-11 / sqrt(K):
both far above tol for fp32 tasks (tests/test_correctness.py checks these cases).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .wire import torch_dtype

UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8, "fp32": 2.0**-24}
FP32_ACC = 2.0**-24
TF32_INPUT = 2.0**-11


def model_tolerance(dtype: str, K: int, allow_tf32: bool = False) -> float:
    """The analytic part of the bound, in scaled-error units."""
    model = UNIT_ROUNDOFF[dtype] + 2.0 * math.sqrt(K) * FP32_ACC
    if dtype == "fp32" and allow_tf32:
        model += 2.0 * TF32_INPUT
    return model


def tolerance(dtype: str, K: int, torch_scaled_err: float, allow_tf32: bool = False) -> float:
    return 2.0 * max(model_tolerance(dtype, K, allow_tf32), torch_scaled_err)


def input_generator(seed: int, device: str = "cpu") -> torch.Generator:
    """A generator seeded for one trial, on the device the inputs are drawn on.

    Parent and child draw the same inputs from the same (seed, device); a CUDA generator
    (Philox) gives other values than a CPU one for the same seed, so both sides must agree
    on the device. Drawing on the GPU keeps multi-GiB inputs off the CPU (the child runs
    single-threaded).
    """
    return torch.Generator(device=device).manual_seed(int(seed))


def make_inputs(
    shape: tuple[int, int, int], layout: str, dtype: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh normal inputs with the layout's strides, on ``generator.device``; never an exact zero."""
    M, N, K = shape
    dt = torch_dtype(dtype)
    device = generator.device

    def randn(rows: int, cols: int) -> torch.Tensor:
        x = torch.randn(rows, cols, generator=generator, dtype=torch.float32, device=device)
        x = torch.where(x == 0, torch.ones_like(x), x).to(dt)
        return torch.where(x == 0, torch.ones_like(x), x)  # values that underflowed the dtype

    a = randn(K, M).t() if layout == "tn" else randn(M, K)
    b = randn(N, K).t() if layout == "nt" else randn(K, N)
    return a, b


@dataclasses.dataclass(frozen=True)
class Reference:
    exact: torch.Tensor  # float64 A @ B
    scale: torch.Tensor  # float64 |A| @ |B|
    torch_scaled_err: float  # e(torch.matmul in the task dtype)


def reference(a: torch.Tensor, b: torch.Tensor) -> Reference:
    """Computed in the trusted process, on the inputs' device (float64 there), from its own copy."""
    a64, b64 = a.double(), b.double()
    exact = a64 @ b64
    scale = a64.abs() @ b64.abs()
    torch_out = torch.matmul(a, b)
    return Reference(exact, scale, scaled_error(torch_out, exact, scale))


def scaled_error(x: torch.Tensor, exact: torch.Tensor, scale: torch.Tensor) -> float:
    diff = (x.double() - exact).abs()
    if not torch.isfinite(diff).all():
        return math.inf
    return float((diff / scale.clamp_min(1e-300)).max()) if diff.numel() else 0.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    ok: bool
    max_abs_err: float
    max_scaled_err: float
    tolerance: float
    message: str  # empty when ok


def compare(out: torch.Tensor, ref: Reference, dtype: str, K: int, allow_tf32: bool = False) -> Verdict:
    tol = tolerance(dtype, K, ref.torch_scaled_err, allow_tf32)
    err = scaled_error(out, ref.exact, ref.scale)
    diff = (out.double() - ref.exact).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    if err <= tol:
        return Verdict(True, max_abs, err, tol, "")
    if not math.isfinite(err):
        return Verdict(False, math.inf, math.inf, tol, "output has NaN or Inf")
    flat = int((diff / ref.scale.clamp_min(1e-300)).argmax())
    i, j = divmod(flat, out.shape[1])
    message = (
        f"max scaled error {err:.3g} > tolerance {tol:.3g} (first worst element C[{i},{j}] = "
        f"{float(out[i, j]):.6g}, expected {float(ref.exact[i, j]):.6g})"
    )
    return Verdict(False, max_abs, err, tol, message)


def layout_views(shape: tuple[int, int, int], layout: str, dtype: torch.dtype, device: str = "meta"):
    """Uninitialised A, B with the layout's strides (for launch capture on `meta`)."""
    M, N, K = shape
    a = (
        torch.empty(K, M, dtype=dtype, device=device).t()
        if layout == "tn"
        else torch.empty(M, K, dtype=dtype, device=device)
    )
    b = (
        torch.empty(N, K, dtype=dtype, device=device).t()
        if layout == "nt"
        else torch.empty(K, N, dtype=dtype, device=device)
    )
    return a, b
