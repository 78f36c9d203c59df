"""Calibration of the offline performance model against published orderings.

Published H100 figures (shared/REFERENCES.md) the model is checked against:
- triton issue #3672: H100 fp16 3072^3 cuBLAS 585 / Triton tutorial 525 TFLOP/s;
  1024^3 cuBLAS 121 / Triton 26 TFLOP/s (small shapes are far from peak).
- triton PR #5726: H100 fp16 8192x8192x512: 218 TFLOP/s plain vs 262 TMA persistent.
- NVIDIA: H100 SXM bf16 dense peak 989 TFLOP/s; ~800 measured at 8192^3.
- triton issue #3104: at M=1..4, N=K=4096 the tutorial kernel (big tiles) is far behind.
KernelLaunch facts are built by hand, except in the one test that compiles the seed.
"""

from __future__ import annotations

import dataclasses

import pytest

from evaluators.model.constants import GPUS
from evaluators.model.launch import ExecutedWork, KernelLaunch, launch_from_facts
from evaluators.model.perf_model import ShapeEstimate, estimate_shape, modelled_fitness

H100, A100 = GPUS["h100"], GPUS["a100"]
BIG = (8192, 8192, 8192)


def launch(
    tile,
    warps=4,
    stages=3,
    *,
    shape,
    grid=None,
    regs=None,
    spill=0,
    wgmma=True,
    tma=False,
    atomics=False,
    shared=None,
) -> KernelLaunch:
    bm, bn, bk = tile
    m, n, _ = shape
    if shared is None:  # what Triton allocates: (stages - 1) buffers of the A and B slabs
        shared = (bm * bk + bk * bn) * 2 * max(1, stages - 1)
    if grid is None:
        grid = (-(-m // bm) * -(-n // bn),)
    return KernelLaunch(tuple(tile), tuple(grid), warps, stages, shared, regs, spill, wgmma, tma, atomics)


def est(launches, shape, dtype="bf16", gpu=H100) -> ShapeEstimate:
    if isinstance(launches, KernelLaunch):
        launches = [launches]
    return estimate_shape(launches, shape, dtype, gpu)


def test_big_tile_beats_tiny_tile_at_8192():
    """8192^3 bf16 on H100: tutorial-03 config 128x256x64/8 warps/3 stages vs 32x32x32.
    Published: ~800 TFLOP/s (81% of 989) measured at 8192^3, so the big tile must land
    within 55-95% of peak, far ahead of a 32x32 tile."""
    big = est(launch((128, 256, 64), 8, 3, shape=BIG, regs=232), BIG)
    tiny = est(launch((32, 32, 32), 4, 3, shape=BIG, regs=64, wgmma=False), BIG)
    assert 0.55 <= big.fraction_of_peak <= 0.95
    assert big.bound == "compute"
    assert big.tflops > 3 * tiny.tflops
    for key in (
        "occupancy",
        "waves",
        "compute_s",
        "dram_s",
        "l2_hit",
        "pipeline",
        "spill_s",
        "store_s",
        "splitk_s",
        "launch_s",
    ):
        assert key in big.breakdown


def test_spills_rank_below_and_over_shared_is_invalid():
    clean = est(launch((128, 128, 64), 8, 3, shape=BIG, regs=128), BIG)
    spilling = est(launch((128, 128, 64), 8, 3, shape=BIG, regs=255, spill=64), BIG)
    too_big = est(launch((256, 256, 64), 8, 5, shape=BIG, regs=200), BIG)  # 256 KiB of shared memory
    at_limit = est(launch((128, 256, 64), 8, 3, shape=BIG, regs=255), BIG)  # 255 x 256 fits 65536
    assert spilling.time_s > clean.time_s and spilling.breakdown["spill_s"] > 0
    assert too_big.bound == "invalid" and too_big.fraction_of_peak == 0.0
    assert "shared" in too_big.breakdown["reason"]
    assert at_limit.bound != "invalid" and at_limit.fraction_of_peak > 0
    over_regs = est(launch((128, 256, 64), 16, 3, shape=BIG, regs=255), BIG)  # 255 x 512 threads
    assert over_regs.bound == "invalid"
    ranked = sorted([clean, spilling, too_big], key=lambda e: -e.fraction_of_peak)
    assert ranked == [clean, spilling, too_big]


def test_decode_m1_prefers_small_rows_or_split_k():
    """M=1, N=K=4096 bf16 (issue #3104: the big-tile tutorial kernel is far behind): a
    128x256 tile wastes 127/128 of each MMA and launches 16 CTAs on 132 SMs."""
    shape = (1, 4096, 4096)
    big = est(launch((128, 256, 64), 8, 3, shape=shape, regs=232), shape)
    small = est(launch((16, 64, 64), 4, 4, shape=shape, regs=64, wgmma=False), shape)
    split = est(
        launch((16, 64, 128), 4, 4, shape=shape, grid=(64, 8), regs=64, wgmma=False, atomics=True), shape
    )
    assert small.time_s < big.time_s and split.time_s < big.time_s
    assert split.breakdown["split"] == 8 and split.breakdown["splitk_s"] > 0
    assert big.breakdown["waves"] == 1


def test_memory_vs_compute_at_4096():
    square = (4096, 4096, 4096)
    decode = (16, 4096, 4096)
    sq = est(launch((128, 128, 64), 8, 3, shape=square, regs=116), square)
    dec = est(launch((16, 64, 64), 4, 4, shape=decode, regs=64, wgmma=False), decode)
    assert sq.bound == "compute" and sq.breakdown["compute_s"] > sq.breakdown["dram_s"]
    assert dec.bound == "memory" and dec.breakdown["dram_s"] > dec.breakdown["compute_s"]
    assert dec.fraction_of_peak < 0.1 < sq.fraction_of_peak


def test_wgmma_beats_mma_sync_on_hopper_and_a100_has_none():
    with_wgmma = est(launch((128, 128, 64), 8, 3, shape=BIG, regs=128, wgmma=True), BIG)
    without = est(launch((128, 128, 64), 8, 3, shape=BIG, regs=128, wgmma=False), BIG)
    assert with_wgmma.time_s < 0.85 * without.time_s
    assert not A100.has_wgmma and H100.has_wgmma
    on_a100 = est(launch((128, 128, 64), 8, 3, shape=BIG, regs=128, wgmma=True), BIG, gpu=A100)
    assert on_a100.breakdown["wgmma"] is False


def test_a100_slower_than_h100_and_h200_not_slower():
    shape = (4096, 4096, 4096)
    lc = launch((128, 128, 64), 8, 3, shape=shape, regs=116)
    h100, a100, h200 = est(lc, shape), est(lc, shape, gpu=A100), est(lc, shape, gpu=GPUS["h200"])
    assert a100.time_s > 2 * h100.time_s
    assert h200.time_s <= h100.time_s
    assert 0.5 < a100.fraction_of_peak < 0.95  # A100 mma.sync runs near its own (lower) peak


def test_published_orderings_3072_1024_and_persistent():
    """Issue #3672: 3072^3 fp16 Triton 525 TFLOP/s (53% of peak), 1024^3 far lower.
    PR #5726: 8192x8192x512, the TMA persistent kernel beats the plain one (262 vs 218)."""

    def seed(shape):
        return est(launch((128, 128, 64), 8, 3, shape=shape, regs=116), shape, dtype="fp16")

    mid, small = seed((3072, 3072, 3072)), seed((1024, 1024, 1024))
    assert 0.4 < mid.fraction_of_peak < 0.75
    assert small.fraction_of_peak < 0.5 * mid.fraction_of_peak
    shape = (8192, 8192, 512)
    plain = est(launch((128, 128, 64), 8, 3, shape=shape, regs=128), shape, dtype="fp16")
    persistent = est(
        launch((128, 128, 64), 8, 3, shape=shape, grid=(132,), regs=128, tma=True), shape, dtype="fp16"
    )
    assert persistent.breakdown["tiles_per_program"] > 1
    assert persistent.time_s < plain.time_s
    tiny = est(launch((64, 64, 64), 4, 3, shape=(64, 64, 64), regs=64), (64, 64, 64))
    assert tiny.bound == "latency" and tiny.time_s >= 4e-6


def test_stages_one_means_no_overlap():
    one = est(launch((128, 128, 64), 8, 1, shape=BIG, regs=128, shared=32768), BIG)
    three = est(launch((128, 128, 64), 8, 3, shape=BIG, regs=128), BIG)
    assert one.time_s > three.time_s and one.breakdown["pipeline"] > three.breakdown["pipeline"]


def test_modelled_fitness_is_geometric_mean():
    def fake(frac: float, bound: str = "compute") -> ShapeEstimate:
        return ShapeEstimate((1, 1, 1), 1.0, 1.0, frac, bound, {})

    assert modelled_fitness([fake(0.25), fake(1.0)]) == pytest.approx(0.5)
    assert modelled_fitness([fake(0.5), fake(0.0, "invalid")]) == 0.0
    assert modelled_fitness([]) == 0.0


def test_launch_from_facts_and_missing_dot():
    facts = {
        "kernel": "matmul_kernel",
        "shared": 98304,
        "num_warps": 8,
        "num_stages": 3,
        "uses_wgmma": True,
        "uses_tma": False,
        "atomics": False,
        "dots": [{"precision": "tf32", "a": "bf16", "b": "bf16", "tile": [128, 128, 64]}],
        "regs": 116,
        "spill_bytes": 0,
        "compile_s": 1.8,
    }
    lc = launch_from_facts(facts, [1024])
    assert lc.tile == (128, 128, 64) and lc.grid == (1024,) and lc.regs == 116 and lc.uses_wgmma
    no_dot = launch_from_facts({**facts, "dots": []}, [1024])
    assert no_dot.tile is None
    assert est(no_dot, (4096, 4096, 4096)).bound == "invalid"
    # a dot-less reduce pass after a split-K kernel is costed, not invalid
    shape = (64, 4096, 4096)
    two = est([launch((64, 64, 128), 4, 3, shape=shape, grid=(64, 4)), no_dot], shape)
    assert two.bound != "invalid" and two.breakdown["launches"] == 2


def test_published_orderings_persistent_split_k_and_tiles():
    """Orderings of the calibration table (evaluators/model/figures.toml, shared/REFERENCES.md):
    PR #5726 (H100 fp16 8192x8192x512): persistent (no TMA) 245 >= plain 218 TFLOP/s, one CTA start
    per SM instead of per tile; at M = 16 with 64 tiles of 16x64 on 132 SMs, split-K 2 (atomics)
    fills the idle SMs and beats the plain launch (vllm #27433, triton #3104: decode wants more
    programs); 128x256x64 far above 32x32x32 at 8192^3 (tutorial 03's first config)."""
    shape = (8192, 8192, 512)
    plain = est(launch((128, 256, 64), 8, 3, shape=shape, regs=232), shape, dtype="fp16")
    persistent = est(launch((128, 256, 64), 8, 3, shape=shape, grid=(132,), regs=232), shape, dtype="fp16")
    assert persistent.breakdown["tiles_per_program"] > 1
    assert persistent.time_s <= plain.time_s
    skinny = (16, 4096, 4096)
    one = est(launch((16, 64, 64), 4, 3, shape=skinny, wgmma=False), skinny)
    split = est(launch((16, 64, 64), 4, 3, shape=skinny, grid=(128,), wgmma=False, atomics=True), skinny)
    assert one.breakdown["split"] == 1 and split.breakdown["split"] == 2
    assert split.time_s < one.time_s
    big = est(launch((128, 256, 64), 8, 3, shape=BIG, regs=232), BIG)
    tiny = est(launch((32, 32, 32), 4, 3, shape=BIG, regs=64, wgmma=False), BIG)
    assert big.tflops > 3 * tiny.tflops


def test_seed_compiled_offline_is_compute_bound():
    """Compile kernels/seeds/tiled_matmul.py for sm_90 at 4096^3 bf16 (capturing the launch
    on meta tensors, as the evaluator's child does) and model it on H100."""
    torch = pytest.importorskip("torch")
    from triton.runtime import jit as tjit

    from evaluators.compile import child_backend, child_compile, child_specialise
    from kernels.seeds import tiled_matmul

    target, backend = child_backend(90)
    calls = []

    def capture(fn_self, *args, **kwargs):
        grid = kwargs.pop("grid")
        kwargs.pop("warmup", None)
        calls.append((fn_self, child_specialise(fn_self, backend, args, kwargs), tuple(grid)))

    mp = pytest.MonkeyPatch()
    mp.setattr(tjit.JITFunction, "run", capture)
    try:
        a = torch.empty((4096, 4096), dtype=torch.bfloat16, device="meta")
        tiled_matmul.matmul(a, torch.empty((4096, 4096), dtype=torch.bfloat16, device="meta"))
    finally:
        mp.undo()
    assert len(calls) == 1
    fn, spec, grid = calls[0]
    facts = {"kernel": fn.__name__, **child_compile(fn, spec, target)}
    lc = launch_from_facts(facts, list(grid))
    assert lc.tile == (128, 128, 64) and lc.grid == (1024,)
    e = estimate_shape([lc], (4096, 4096, 4096), "bf16", GPUS["h100"])
    assert e.bound == "compute", e.breakdown
    assert 0.40 <= e.fraction_of_peak <= 0.95, e


def test_fitted_constants_load_with_errors_that_name_file_and_field(tmp_path):
    from evaluators.model.constants import Constants, load_constants

    assert load_constants(tmp_path / "absent.json") == Constants()
    good = tmp_path / "fitted.json"
    good.write_text('{"constants": {"cta_start": 1234}}')
    assert load_constants(good).cta_start == 1234.0 and load_constants(good).l2_fit == Constants().l2_fit
    for text, phrase in (
        ('{"constants": {"bogus": 1}}', "constants.bogus is not a model constant"),
        ('{"constants": {"cta_start": -1}}', "constants.cta_start = -1 must be a positive number"),
        ('{"constants": [1]}', "field 'constants' must be an object"),
        ("{not json", "not readable JSON"),
    ):
        good.write_text(text)
        with pytest.raises(ValueError, match=phrase) as err:
            load_constants(good)
        assert str(good) in str(err.value)


def test_the_compiled_dot_sets_the_rate_and_the_k_loop_arithmetic_is_priced():
    """An fp8 dot that the compiler lowered to 16-bit mma.sync (a 16-row tile on Hopper) runs at fp16's
    rate, not fp8's; the K loop's other float work in the compile facts (a scale multiply per step)
    costs CUDA-core time until the executed count replaces it."""
    facts = {"num_warps": 4, "num_stages": 3, "shared": 40960, "uses_wgmma": False,
             "dots": [{"precision": "f8E4M3FN", "tile": [16, 64, 128]}]}  # fmt: skip
    assert launch_from_facts({**facts, "mma_operand_types": ["f16"]}, [132]).dot_rate == "fp16"
    assert launch_from_facts({**facts, "mma_operand_types": ["f8E4M3FN"]}, [132]).dot_rate == "fp8"
    assert launch_from_facts(facts, [132]).dot_rate == "fp8"  # no TTGIR facts: the TTIR's type
    shape = (4096, 4096, 4096)
    plain = launch((128, 128, 64), 8, 4, shape=shape)
    scaled = dataclasses.replace(plain, loop_flops=3 * 128 * 128)  # acc += dot * a_s * b_s
    assert est(scaled, shape).time_s > 1.1 * est(plain, shape).time_s
    work = ExecutedWork(programs=1024, working=1024, dot_flops=(("bf16", (128, 128, 64), 2 * 128 * 128 * 4096),),
                        cuda_flops=0.0)  # fmt: skip
    counted = dataclasses.replace(scaled, work=work)  # what ran supersedes the static count
    assert est(counted, shape).time_s == pytest.approx(
        est(dataclasses.replace(plain, work=work), shape).time_s
    )
