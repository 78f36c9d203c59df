"""What the comparison sees beyond a max error: non-finite patterns, an overflowing reference, bias."""

from pathlib import Path

import torch

from evaluators import evaluate, load_task
from evaluators.correctness import compare, reference

ROOT = Path(__file__).resolve().parents[1]


def _inputs(seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(96, 80, generator=g) * scale).bfloat16()
    b = (torch.randn(80, 72, generator=g) * scale).bfloat16()
    return a, b


def test_an_overflowing_reference_never_widens_the_tolerance():
    a, b = _inputs(scale=1e19)  # products ~1e38 x 80 terms: some of torch's bf16 outputs overflow
    ref = reference(a, b)
    assert ref.special is not None and bool(torch.isinf(ref.special).any())
    assert ref.torch_scaled_err < 1.0  # measured on the finite elements only
    honest = torch.matmul(a, b)
    assert compare(honest, ref, "bf16", 80).ok
    wrong = honest.clone()
    finite = torch.isfinite(honest)
    wrong[finite] = wrong[finite] * 0.5  # wrong wherever torch's is finite
    verdict = compare(wrong, ref, "bf16", 80)
    assert not verdict.ok and "tolerance" in verdict.message


def test_nan_and_inf_must_match_torchs():
    a, b = _inputs()
    ref = reference(a, b)
    out = torch.matmul(a, b)
    clamped = out.clone()
    clamped[3, 4] = float("inf")
    verdict = compare(clamped, ref, "bf16", 80)
    assert not verdict.ok and "C[3,4]" in verdict.message and "torch.matmul gives finite" in verdict.message
    a[5, 7] = float("nan")  # a NaN in A poisons row 5 of torch's output
    ref = reference(a, b)
    nan_out = torch.matmul(a, b)
    assert compare(nan_out, ref, "bf16", 80).ok
    hidden = torch.nan_to_num(nan_out, nan=0.0)  # an epilogue that clamps NaN away
    verdict = compare(hidden, ref, "bf16", 80)
    assert not verdict.ok and "NaN/Inf where torch.matmul's differ" in verdict.message


def test_rounding_toward_zero_is_a_bias_nearest_is_not():
    a, b = _inputs()
    ref = reference(a, b)
    exact32 = (a.double() @ b.double()).float()
    nearest = exact32.bfloat16()
    toward_zero = (exact32.view(torch.int32) & ~0xFFFF).view(torch.float32).bfloat16()  # truncate
    assert compare(nearest, ref, "bf16", 80).ok
    verdict = compare(toward_zero, ref, "bf16", 80)
    assert verdict.max_scaled_err <= verdict.tolerance  # inside the tolerance everywhere...
    assert (
        not verdict.ok and "biased" in verdict.message and "toward zero" in verdict.message
    )  # ...yet caught


def test_a_kernel_rounding_toward_zero_is_incorrect():
    source = (ROOT / "tests" / "adversarial" / "kernels" / "round_toward_zero.py").read_text()
    ev = evaluate(source, load_task(str(ROOT / "runs" / "demo_cpu.toml")), device="cpu", memo=False)
    assert ev.status == "incorrect" and "biased" in ev.feedback, ev.feedback
