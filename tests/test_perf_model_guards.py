"""The performance model never divides by zero or takes the log of zero (issue 9, item 2).

Each test feeds compile facts of the kind evaluators/compile.py produces, shaped to hit one
division or log in evaluators/model/perf_model.py; before the guards each raised ZeroDivisionError
or "math domain error" and took the judge down.
"""

from __future__ import annotations

import math

import pytest

from evaluators.model.constants import GPUS
from evaluators.model.launch import launch_from_facts
from evaluators.model.perf_model import ShapeEstimate, estimate_shape, modelled_fitness

H100 = GPUS["h100"]
FACTS = {
    "kernel": "matmul_kernel",
    "dots": [{"precision": "fp16", "a": "fp16", "b": "fp16", "tile": [128, 128, 32]}],
    "num_warps": 4,
    "num_stages": 3,
    "shared": 32768,
    "regs": 128,
    "spill_bytes": 0,
    "uses_wgmma": True,
}
SHAPE = (256, 256, 256)


def model(*launches, shape=SHAPE) -> ShapeEstimate:
    return estimate_shape(list(launches), shape, "fp16", H100)


def test_empty_leftover_launch_is_skipped():
    """The issue's kernel: a main launch over the full row blocks and a second launch over the
    leftover rows (M % BM), whose grid is 0 when M divides evenly."""
    main = launch_from_facts(FACTS, [2, 2, 1])
    leftover = launch_from_facts(FACTS, [0, 2, 1])
    both, alone = model(main, leftover), model(main)
    assert both.bound != "invalid" and math.isfinite(both.time_s)
    assert both.time_s == pytest.approx(alone.time_s)  # an empty launch costs nothing
    assert both.breakdown["launches"] == 1


def test_empty_launch_with_unlaunchable_facts_is_not_held_against_the_kernel():
    """The GPU launcher never starts an empty grid, so its kernel's facts do not matter."""
    main = launch_from_facts(FACTS, [2, 2, 1])
    huge = launch_from_facts({**FACTS, "shared": 10 * 1024 * 1024}, [0])
    assert model(main, huge).bound != "invalid"


def test_every_launch_empty_is_invalid_with_a_reason():
    e = model(launch_from_facts(FACTS, [0, 2, 1]), launch_from_facts(FACTS, [2, 0]))
    assert e.bound == "invalid" and e.fraction_of_peak == 0.0 and e.tflops == 0.0
    assert "empty grid" in e.breakdown["reason"]
    assert modelled_fitness([e]) == 0.0


def test_negative_grid_is_invalid_not_a_domain_error():
    e = model(launch_from_facts(FACTS, [-1, 2, 1]))
    assert e.bound == "invalid" and "negative" in e.breakdown["reason"]


def test_zero_registers_are_estimated_not_divided_by():
    """regs 0 (a cubin that reported none) made the occupancy divide by 0 registers."""
    zero = model(launch_from_facts({**FACTS, "regs": 0}, [2, 2, 1]))
    unknown = model(launch_from_facts({**FACTS, "regs": None}, [2, 2, 1]))
    assert zero.bound != "invalid" and zero.time_s == pytest.approx(unknown.time_s)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"num_warps": 0}, "num_warps 0"),
        ({"dots": [{"tile": [0, 128, 32]}]}, "tile"),
        ({"dots": [{"tile": [128, 128, 0]}]}, "tile"),
        ({"shared": -1024}, "shared -1024"),
    ],
)
def test_facts_that_would_divide_by_zero_are_invalid(change, words):
    e = model(launch_from_facts({**FACTS, **change}, [2, 2, 1]))
    assert e.bound == "invalid" and words in e.breakdown["reason"]
    assert e.fraction_of_peak == 0.0


@pytest.mark.parametrize("shape", [(0, 256, 256), (256, 0, 256), (256, 256, 0)])
def test_zero_sized_shape_is_a_clear_error(shape):
    """Tasks refuse such shapes (evaluators/task.py); reaching the model with one is a judge bug,
    which evaluate() turns into judge_error: a ValueError naming the shape, not a ZeroDivisionError."""
    with pytest.raises(ValueError, match="positive integers"):
        model(launch_from_facts(FACTS, [2, 2, 1]), shape=shape)


@pytest.mark.parametrize("fraction", [0.0, -0.5, math.nan, math.inf])
def test_modelled_fitness_never_logs_zero_or_negative(fraction):
    good = model(launch_from_facts(FACTS, [2, 2, 1]))
    bad = ShapeEstimate(SHAPE, 1e-5, 1.0, fraction, "compute", {})
    assert modelled_fitness([good, bad]) == 0.0
    assert modelled_fitness([]) == 0.0
    assert 0 < modelled_fitness([good]) < 1
