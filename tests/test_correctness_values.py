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
    assert bool(torch.isinf(torch.matmul(a, b)).any())
    assert ref.torch_scaled_err < 1.0  # measured on the finite elements only
    honest = torch.matmul(a, b)
    assert compare(honest, ref, "bf16", 80).ok
    wrong = honest.clone()
    finite = torch.isfinite(honest)
    wrong[finite] = wrong[finite] * 0.5  # wrong wherever torch's is finite
    verdict = compare(wrong, ref, "bf16", 80)
    assert not verdict.ok and "tolerance" in verdict.message


def test_nan_and_inf_must_match_the_exact_products():
    a, b = _inputs()
    ref = reference(a, b)
    out = torch.matmul(a, b)
    clamped = out.clone()
    clamped[3, 4] = float("inf")
    verdict = compare(clamped, ref, "bf16", 80)
    assert not verdict.ok and "C[3,4]" in verdict.message and "expected finite" in verdict.message
    a[5, 7] = float("nan")  # a NaN in A poisons row 5 of the product
    ref = reference(a, b)
    nan_out = (a.double() @ b.double()).bfloat16()
    assert compare(nan_out, ref, "bf16", 80).ok
    hidden = torch.nan_to_num(nan_out, nan=0.0)  # an epilogue that clamps NaN away
    verdict = compare(hidden, ref, "bf16", 80)
    assert not verdict.ok and "NaN/Inf where the exact product's differ" in verdict.message


def test_a_spurious_nan_of_torchs_is_not_demanded(monkeypatch):
    """torch 2.11's CPU bf16 matmul puts a NaN in the row next to a NaN input's; the exact product
    decides the pattern, and torch's spurious NaN never widens the tolerance."""
    a, b = _inputs()
    a[5, 7] = float("nan")
    honest = (a.double() @ b.double()).bfloat16()
    real_matmul = torch.matmul

    def buggy(x, y):
        out = real_matmul(x, y)
        out[4] = float("nan")  # the row above the NaN input's
        return out

    monkeypatch.setattr(torch, "matmul", buggy)
    ref = reference(a, b)
    monkeypatch.undo()
    assert ref.torch_scaled_err < 1.0
    assert compare(honest, ref, "bf16", 80).ok
    verdict = compare(torch.where(torch.isnan(honest), torch.zeros_like(honest), honest), ref, "bf16", 80)
    assert not verdict.ok and "C[5,0]" in verdict.message and "expected nan" in verdict.message


def test_overflow_past_the_threshold_is_the_signed_inf():
    g = torch.Generator().manual_seed(1)
    a = (torch.randn(96, 80, generator=g) * 60).half()  # |C| ~ 3e4, fp16's range ends at 65520
    b = (torch.randn(80, 72, generator=g) * 60).half()
    ref = reference(a, b)
    honest = (a.double() @ b.double()).half()  # rounds to +-Inf past the threshold
    assert bool(torch.isinf(honest).any()) and compare(honest, ref, "fp16", 80).ok
    saturated = torch.where(torch.isinf(honest), torch.sign(honest) * 65504.0, honest).half()
    verdict = compare(saturated, ref, "fp16", 80)  # a clamp where the product is past the range
    assert not verdict.ok and "NaN/Inf where the exact product's differ" in verdict.message
    assert "expected inf" in verdict.message or "expected -inf" in verdict.message


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


def test_input_kinds_are_reproducible_and_what_they_say():
    from evaluators.correctness import input_generator, make_inputs
    from evaluators.task import INPUT_KINDS

    for kind in INPUT_KINDS:
        for layout in ("nn", "nt", "tn"):
            a, b = make_inputs((37, 29, 53), layout, "bf16", input_generator(3), kind)
            a2, b2 = make_inputs((37, 29, 53), layout, "bf16", input_generator(3), kind)
            assert a.shape == (37, 53) and b.shape == (53, 29) and a.stride() == a2.stride()
            assert torch.equal(a.view(torch.int16), a2.view(torch.int16))  # bit for bit, NaN included
    a, b = make_inputs((37, 29, 53), "nn", "bf16", input_generator(1), "sliced")
    assert a.storage_offset() > 0 and a.stride(0) > 53 and torch.isfinite(a).all()
    assert torch.isnan(torch.as_strided(a, (37, 1), (a.stride(0), 1), a.storage_offset() - 1)).all()
    a, _ = make_inputs((64, 64, 64), "nn", "bf16", input_generator(1), "relu")
    assert 0.3 < float((a == 0).float().mean()) < 0.7
    a, b = make_inputs((64, 64, 64), "nn", "fp16", input_generator(1), "large")
    assert float(torch.matmul(a.float(), b.float()).abs().max()) > 65504 / 256
    a, b = make_inputs((64, 64, 64), "nn", "bf16", input_generator(1), "nonfinite")
    assert torch.isnan(a).sum() == 1 and torch.isinf(a).sum() == 1 and torch.isinf(b).sum() == 1


def test_task_inputs_field_is_validated(tmp_path):
    import pytest

    from evaluators.task import INPUT_KINDS, TaskError

    text = (ROOT / "runs" / "demo_cpu.toml").read_text()
    assert load_task(str(ROOT / "runs" / "demo_cpu.toml")).inputs == INPUT_KINDS  # on by default
    path = tmp_path / "t.toml"
    path.write_text(text.replace("trials = 2", 'trials = 2\ninputs = ["normal", "sliced"]'))
    assert load_task(str(path)).inputs == ("normal", "sliced")
    path.write_text(text.replace("trials = 2", 'trials = 2\ninputs = ["gaussian"]'))
    with pytest.raises(TaskError, match="inputs"):
        load_task(str(path))
