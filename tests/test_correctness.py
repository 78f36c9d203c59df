import math

import pytest
import torch

from evaluators.correctness import compare, make_inputs, model_tolerance, reference, tolerance


def test_tolerance_formula_values():
    # tol = 2 * max(u_out + 2 sqrt(K) 2^-24 (+ 2 * 2^-11 with TF32), e_torch)
    assert model_tolerance("bf16", 64) == pytest.approx(2**-8 + 16 * 2**-24)
    assert model_tolerance("fp16", 4096) == pytest.approx(2**-11 + 128 * 2**-24)
    assert model_tolerance("fp32", 100, allow_tf32=True) == pytest.approx(2**-24 + 20 * 2**-24 + 2 * 2**-11)
    assert tolerance("fp32", 100, torch_scaled_err=1e-3) == pytest.approx(2e-3)
    assert tolerance("fp32", 100, torch_scaled_err=0.0) == pytest.approx(2 * 21 * 2**-24)


@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
def test_inputs_follow_layout_and_are_never_zero(layout):
    a, b = make_inputs((33, 17, 20), layout, "bf16", torch.Generator().manual_seed(1))
    assert a.shape == (33, 20) and b.shape == (20, 17)
    assert a.is_contiguous() == (layout != "tn") and b.is_contiguous() == (layout != "nt")
    assert bool((a != 0).all()) and bool((b != 0).all())
    a2, _ = make_inputs((33, 17, 20), layout, "bf16", torch.Generator().manual_seed(2))
    assert not torch.equal(a, a2)


def _case(dtype, K=256, M=48, N=40):
    a, b = make_inputs((M, N, K), "nn", dtype, torch.Generator().manual_seed(K))
    return a, b, reference(a, b)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_honest_results_pass(dtype):
    a, b, ref = _case(dtype)
    # torch's own result, and an fp32-accumulated result rounded once (what a Triton kernel does)
    assert compare(torch.matmul(a, b), ref, dtype, 256).ok
    assert compare((a.float() @ b.float()).to(a.dtype), ref, dtype, 256).ok


@pytest.mark.parametrize("K", [64, 4096])
def test_fp16_products_fail_a_strict_fp32_task(K):
    a, b, ref = _case("fp32", K=K)
    lowered = a.half().float() @ b.half().float()
    verdict = compare(lowered, ref, "fp32", K)
    assert not verdict.ok and "tolerance" in verdict.message
    # ... but pass when the task allows TF32-like input rounding
    assert compare(lowered, ref, "fp32", K, allow_tf32=True).ok


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_skipped_work_fails(dtype):
    a, b, ref = _case(dtype, K=512)
    skipped = (a.float()[:, ::2] @ b.float()[::2, :]).to(a.dtype)  # every other k
    assert not compare(skipped, ref, dtype, 512).ok
    one_term_short = (a.float()[:, 1:] @ b.float()[1:, :]).to(a.dtype)  # one k dropped
    assert not compare(one_term_short, ref, dtype, 512).ok
    assert not compare(torch.zeros_like(ref.exact).to(a.dtype), ref, dtype, 512).ok


def test_nan_and_message():
    a, b, ref = _case("fp16", K=64)
    out = torch.matmul(a, b)
    out[3, 4] = math.nan
    verdict = compare(out, ref, "fp16", 64)
    assert not verdict.ok and "NaN" in verdict.message
    out = torch.matmul(a, b)
    out[5, 6] += 100
    verdict = compare(out, ref, "fp16", 64)
    assert "C[5,6]" in verdict.message
