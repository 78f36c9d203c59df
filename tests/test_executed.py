"""Executed work scaled to the whole grid at full K (evaluators/model/executed.py): pure functions."""

from __future__ import annotations

import pytest

from evaluators.model.executed import call_work, launch_work

TILE = "bf16:128x128x64"
STEP = 2 * 128 * 128 * 64  # FLOPs of one k-step


def _program(steps: int, cuda: int = 0) -> dict:
    return {"dot": {TILE: steps * STEP} if steps else {}, "cuda": cuda}


def test_the_whole_grid_scales_by_k_without_a_sample():
    # 4 programs at K_r = 128 (2 k-steps each); at K = 1024 each does 16
    work = launch_work([4, 1, 1], 1024, (128, {p: _program(2) for p in range(4)}), None)
    assert work.programs == work.working == 4
    assert work.dot_flops == (("bf16", (128, 128, 64), pytest.approx(16 * STEP)),)
    assert "K = 128" in work.source


def test_the_sample_sets_the_scale_and_idle_programs_stay_idle():
    # three of four programs idle at the reduced K; the sampled working program did 64 steps at full K
    reduced = {0: _program(2), 4: _program(2)}  # programs 0 and 4 of 8 work; the rest exit at once
    sampled = {0: _program(64), 7: _program(0)}
    work = launch_work([8, 1, 1], 4096, (128, reduced), sampled)
    assert work.working == 2 and work.programs == 8
    assert work.dot_flops[0][2] == pytest.approx(64 * STEP)  # scale 32 from the sample, not K/K_r
    # a program idle at K_r but working at full K is not idle
    late = launch_work([8, 1, 1], 4096, (128, reduced), {0: _program(64), 5: _program(64)})
    assert late.working == 3


def test_cuda_core_work_scales_on_its_own():
    reduced = {p: _program(1, cuda=1000) for p in range(2)}
    work = launch_work([2, 1, 1], 2048, (64, reduced), {1: _program(1, cuda=32000)})
    assert work.cuda_flops == pytest.approx(32000)
    assert work.dot_flops[0][2] == pytest.approx(STEP)  # the one dot did not grow with K


def test_a_sample_alone_gives_the_working_fraction():
    work = launch_work([100, 1, 1], 4096, None, {0: _program(64), 50: _program(0), 99: _program(64)})
    assert work.working == 67 and "did not run" in work.source
    assert launch_work([4, 1, 1], 64, None, None) is None


def test_calls_match_counted_launches_by_grid():
    calls = [{"grid": [4]}, {"grid": [0, 1]}, {"grid": [2, 2]}]
    summary = [{"grid": [4, 1, 1], "programs": {"0": _program(1)}},
               {"grid": [2, 2, 1], "programs": {"3": _program(1)}}]  # fmt: skip
    works = call_work(calls, 64, (64, summary), None)
    assert works[0] is not None and works[1] is None and works[2] is not None
    assert works[2].working == 1
    # a launch whose grid differs from the capture's is not matched: its compile facts stand
    assert call_work([{"grid": [8]}], 64, (64, summary), None) == [None]


def test_a_sample_that_did_no_dot_work_at_full_k_scales_to_zero_without_failing():
    # dots at the reduced K only (a K-keyed path); at full K the sampled program 0 did nothing and
    # program 3, idle at K_r, did CUDA-core work only: the dot scale is 0 and nothing divides by it
    reduced = (64, {0: _program(1), 1: _program(1)})
    work = launch_work([4, 1, 1], 4096, reduced, {0: _program(0), 3: _program(0, cuda=5)})
    assert work.dot_flops == () and work.cuda_flops == 5
    assert work.working == 1  # program 3; programs 0 and 1 scaled to no work are not working
