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

Non-finite values. The expected pattern comes from the float64 product, not from torch's output
(torch 2.11's CPU bf16 matmul puts a NaN in a row next to a NaN input's, a bug no kernel should be
blamed for): where R is NaN or +-Inf (a NaN or Inf in the inputs) the candidate's must be the same
NaN / same-signed Inf; where R is finite but rounds past the dtype's largest value, the same-signed
Inf; within the tolerance of that overflow threshold, either; where |A||B| passes fp32's range (fp32
partial sums may overflow), anything; everywhere else it must be finite.
e() and e_torch are taken over the elements that must be finite (and, for e_torch, where torch's
output is finite: a spurious NaN of torch's never widens the tolerance).

Bias. Rounding toward zero (or any one-sided rounding) stays under one ulp per element, inside
the tolerance, yet shifts every result the same way and compounds over layers. With
d_ij = sign(R_ij) (X_ij - R_ij) / ulp(R_ij) in the output dtype, honest round-to-nearest gives
mean(d) ~ 0 with a spread of ~0.29; one-sided rounding gives ~ -0.5. A result is biased when
|mean(d)| exceeds torch's own |mean(d)| by more than BIAS_ULPS and is more than BIAS_Z standard
errors from zero (so the check never fires on a few elements by chance).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .wire import torch_dtype

UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8, "fp32": 2.0**-24}
MANTISSA_BITS = {"fp16": 10, "bf16": 7, "fp32": 23}
BIAS_ULPS = 0.1  # mean signed error beyond torch's own, in ulps of the output dtype
BIAS_Z = 6.0  # standard errors from zero before a mean counts as a bias
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
    shape: tuple[int, int, int], layout: str, dtype: str, generator: torch.Generator, kind: str = "normal"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh inputs with the layout's strides, on ``generator.device``, of one of INPUT_KINDS
    (evaluators/task.py): what a real training step passes. The same (shape, layout, dtype, seed,
    kind) gives the same tensors in the parent and the child.

    normal: N(0,1), never an exact zero. sliced: normal values in column slices of wider tensors
    at a nonzero storage offset, the padding around them NaN (a kernel that reads past its view,
    or computes strides from the shape, is wrong). relu: A with about half exact zeros. positive:
    |N(0,1)| (then |A||B| = |C| and the scaled error is the relative error). small: magnitudes
    1e-5..1e-3 (gradient-like). mixed: A's rows and B's 16-row K-blocks scaled by 1e-3..1e3
    (fp16: narrower, so that outputs stay in its range).
    large: |C| around the dtype's max / 64. nonfinite: a NaN and a +Inf in A, a -Inf in B."""
    M, N, K = shape
    dt = torch_dtype(dtype)
    device = generator.device

    def uniform(*size: int) -> torch.Tensor:
        return torch.rand(*size, generator=generator, dtype=torch.float32, device=device)

    def values(rows: int, cols: int, operand: str) -> torch.Tensor:
        x = torch.randn(rows, cols, generator=generator, dtype=torch.float32, device=device)
        if kind == "relu" and operand == "a":
            return x.clamp_min(0.0)
        if kind == "positive":
            x = x.abs()
        elif kind == "small":
            x = x * 10.0 ** (-5.0 + 2.0 * uniform(rows, 1))
        elif kind == "mixed":
            block = 16 if operand == "b" else 1  # B's rows are K: scale it by K-blocks
            # 1e-3..1e3 each, narrowed so a product of the two largest scales stays in range (fp16)
            spread = min(3.0, 0.25 * math.log10(torch.finfo(dt).max / (64.0 * math.sqrt(K))))
            scales = 10.0 ** (-spread + 2.0 * spread * uniform(-(-rows // block), 1))
            x = x * scales.repeat_interleave(block, dim=0)[:rows]
        elif kind == "large":
            x = x * math.sqrt(torch.finfo(dt).max / (64.0 * math.sqrt(K)))
        return torch.where(x == 0, torch.ones_like(x), x)

    def operand(rows: int, cols: int, name: str) -> torch.Tensor:
        x = values(rows, cols, name).to(dt)
        if kind != "relu" or name != "a":
            x = torch.where(x == 0, torch.ones_like(x), x)  # values that underflowed the dtype
        if kind == "nonfinite":
            i, j = int(uniform(1) * rows) % rows, int(uniform(1) * cols) % cols
            x[i, j] = float("nan") if name == "a" else float("-inf")
            if name == "a":
                x[(i + 1) % rows, (j + 1) % cols] = float("inf")
        if kind != "sliced":
            return x
        # A view into wider storage: 1..8 columns of NaN on each side, a row of NaN above.
        left, right = 1 + int(uniform(1) * 8), 1 + int(uniform(1) * 8)
        wide = torch.full((rows + 1, cols + left + right), float("nan"), dtype=dt, device=device)
        wide[1:, left : left + cols] = x
        return wide[1:, left : left + cols]

    a = operand(K, M, "a").t() if layout == "tn" else operand(M, K, "a")
    b = operand(N, K, "b").t() if layout == "nt" else operand(K, N, "b")
    return a, b


@dataclasses.dataclass(frozen=True)
class Reference:
    exact: torch.Tensor  # float64 A @ B: NaN / +-Inf where the inputs' NaN and Inf make it so
    scale: torch.Tensor  # float64 |A| @ |B|
    torch_scaled_err: float  # e(torch.matmul in the task dtype), where it and R are finite
    torch_bias: float = 0.0  # torch.matmul's own mean signed error in ulps (see the module doc)


def overflow_threshold(dtype: str) -> float:
    """The smallest magnitude that rounds to Inf in `dtype` (round to nearest): max + ulp(max)/2,
    i.e. (2 - 2^-(p+1)) 2^emax with p the mantissa bits (IEEE 754-2008, 4.3.1)."""
    finfo = torch.finfo(torch_dtype(dtype))
    return float(finfo.max) + 2.0 ** (math.frexp(float(finfo.max))[1] - 2 - MANTISSA_BITS[dtype])


def reference(a: torch.Tensor, b: torch.Tensor) -> Reference:
    """Computed in the trusted process, on the inputs' device (float64 there), from its own copy."""
    a64, b64 = a.double(), b.double()
    exact = a64 @ b64
    scale = a64.abs() @ b64.abs()
    torch_out = torch.matmul(a, b)
    dtype = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(torch_out.dtype)
    finite = torch.isfinite(torch_out) & torch.isfinite(exact)
    if dtype:
        finite &= exact.abs() < overflow_threshold(dtype)
    bias = signed_ulp_error(torch_out, exact, dtype, finite)[0] if dtype else 0.0
    return Reference(exact, scale, scaled_error(torch_out, exact, scale, finite), bias)


def scaled_error(
    x: torch.Tensor, exact: torch.Tensor, scale: torch.Tensor, where: torch.Tensor | None = None
) -> float:
    """max |x - exact| / scale over `where` (all elements when None); inf if x is not finite there."""
    diff = (x.double() - exact).abs()
    if where is not None:
        diff, scale = diff[where], scale[where]
    if not torch.isfinite(diff).all():
        return math.inf
    return float((diff / scale.clamp_min(1e-300)).max()) if diff.numel() else 0.0


def signed_ulp_error(
    x: torch.Tensor, exact: torch.Tensor, dtype: str, where: torch.Tensor
) -> tuple[float, float]:
    """(mean, standard error) of sign(exact) (x - exact) / ulp(exact) in `dtype`, over the elements
    of `where` whose exact value is a normal number of that dtype (0 and subnormals are skipped)."""
    finfo = torch.finfo(torch_dtype(dtype))
    keep = where & (exact.abs() >= finfo.tiny) & (exact.abs() <= finfo.max)
    ref = exact[keep]
    if ref.numel() < 2:
        return 0.0, math.inf
    _, exponent = torch.frexp(ref)  # |ref| = m 2^e, m in [0.5, 1): ulp = 2^(e - 1 - mantissa bits)
    ulp = torch.ldexp(torch.ones_like(ref), exponent - 1 - MANTISSA_BITS[dtype])
    d = torch.sign(ref) * (x.double()[keep] - ref) / ulp
    return float(d.mean()), float(d.std() / math.sqrt(d.numel()))


@dataclasses.dataclass(frozen=True)
class Verdict:
    ok: bool
    max_abs_err: float
    max_scaled_err: float
    tolerance: float
    message: str  # empty when ok


def compare(out: torch.Tensor, ref: Reference, dtype: str, K: int, allow_tf32: bool = False) -> Verdict:
    """`out` [M, N] against `ref`: the NaN/Inf pattern, then the scaled error, then the bias (module doc)."""
    tol = tolerance(dtype, K, ref.torch_scaled_err, allow_tf32)
    must_be_finite, may_overflow = _finite_regions(ref, dtype, tol)
    wrong_special = _special_mismatch(out, ref.exact, must_be_finite, may_overflow)
    if wrong_special:
        return Verdict(False, math.inf, math.inf, tol, wrong_special)
    finite = must_be_finite | (may_overflow & torch.isfinite(out))
    err = scaled_error(out, ref.exact, ref.scale, finite)
    diff = torch.where(finite, (out.double() - ref.exact).abs(), torch.zeros_like(ref.exact))
    max_abs = float(diff.max()) if diff.numel() else 0.0
    if err <= tol:
        mean, stderr = signed_ulp_error(out, ref.exact, dtype, finite)
        if abs(mean) > abs(ref.torch_bias) + BIAS_ULPS and abs(mean) > BIAS_Z * stderr:
            return Verdict(
                False,
                max_abs,
                err,
                tol,
                f"results are biased: mean signed error {mean:+.3f} ulp of {dtype} toward "
                f"{'zero' if mean < 0 else 'larger magnitudes'} (torch.matmul: {ref.torch_bias:+.3f}); round to "
                "nearest (a one-sided rounding stays under 1 ulp per element but compounds over layers)",
            )
        return Verdict(True, max_abs, err, tol, "")
    flat = int((diff / ref.scale.clamp_min(1e-300)).argmax())
    i, j = divmod(flat, out.shape[1])
    message = (
        f"max scaled error {err:.3g} > tolerance {tol:.3g} (first worst element C[{i},{j}] = "
        f"{float(out[i, j]):.6g}, expected {float(ref.exact[i, j]):.6g})"
    )
    return Verdict(False, max_abs, err, tol, message)


def _finite_regions(ref: Reference, dtype: str, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(must be finite, may be non-finite). The second: within the tolerance (tol |A||B|) of the
    overflow threshold, where an honest fp32 accumulation may land either side (finite or the signed
    Inf); and where |A||B| passes fp32's own range, where fp32 partial sums may overflow (bf16's range
    is fp32's) and give any Inf or NaN, as torch.matmul's do."""
    threshold = overflow_threshold(dtype)
    exact_finite = torch.isfinite(ref.exact)
    band = exact_finite & ((ref.exact.abs() - threshold).abs() <= tol * ref.scale)
    accumulator = exact_finite & (ref.scale >= overflow_threshold("fp32"))
    return exact_finite & (ref.exact.abs() < threshold) & ~band & ~accumulator, band | accumulator


def _special_mismatch(
    out: torch.Tensor, exact: torch.Tensor, must_be_finite: torch.Tensor, may_overflow: torch.Tensor
) -> str:
    """'' when `out` is finite where it must be, and elsewhere the exact product's NaN, its signed Inf,
    or (past the overflow threshold) the signed Inf it rounds to; anything where it may overflow."""
    expected = torch.where(torch.isnan(exact), exact, torch.sign(exact) * math.inf)
    same = torch.where(torch.isnan(expected), torch.isnan(out), out == expected)
    bad = torch.where(must_be_finite, ~torch.isfinite(out), ~may_overflow & ~same)
    if not bool(bad.any()):
        return ""
    i, j = (int(x) for x in bad.nonzero()[0])
    wanted = "finite" if bool(must_be_finite[i, j]) else f"{float(expected[i, j])}"
    return (
        f"NaN/Inf where the exact product's differ: {int(bad.sum())} element(s), first C[{i},{j}] = "
        f"{float(out[i, j])}, expected {wanted} there"
    )


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
