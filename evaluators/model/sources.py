"""Per-source speed factors of the calibration fit (evaluators/model/fit.py).

Published figures were taken on different machines with different harnesses: a GPU held below its
boost clock by its power limit, a profiler, Python's launch path, CUDA graphs, a hot or flushed L2.
Those move every figure of a source by about the same factor; they say nothing about how one kernel
or shape compares with another. So the fit gives each published source a factor f (its figures are
f x the model's) and fits the constants to what is left: how shapes and kernels compare within a
source. The sources of the table disagree by about 2x on one GPU (fit.md lists each factor), which no
physical constant can absorb without distorting the others.

For given constants the factor is closed-form: the weighted mean of log(published / modelled) over the
source's rows (what minimises the fit's squared log error), clipped to FACTOR_BOUNDS. Only a source
with at least MIN_ROWS priced rows has one: with a single row its level cannot be told from the
model's, so that row is fitted as published and, with rows measured by `make gpu-check` (the judge's
own timing protocol, which never carry a factor), anchors the model's level. A factor is a property
of a source, never of a kernel: every row of a source shares it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

FACTOR_BOUNDS = (0.25, 1.25)  # a harness may be up to 4x slower than the model, or 25% faster (hot L2)
MIN_ROWS = 2  # rows a source needs before its level is told apart from the model's


def source_factors(
    modelled: Sequence[float], published: Sequence[float], weights: Sequence[float],
    sources: Sequence[str | None],
) -> dict[str, float]:  # fmt: skip
    """{source: factor} from rows' modelled and published TFLOP/s (same order), for each source with
    at least MIN_ROWS rows the model prices (a source of None, a measured row, has no factor; a row
    priced at 0 or not finite does not count)."""
    sums: dict[str, list[float]] = {}
    for m, p, w, s in zip(modelled, published, weights, sources, strict=True):
        if s is not None and m > 0 and math.isfinite(m) and p > 0:
            acc = sums.setdefault(s, [0.0, 0.0, 0])
            acc[0] += w * math.log(p / m)
            acc[1] += w
            acc[2] += 1
    lo, hi = (math.log(b) for b in FACTOR_BOUNDS)
    return {
        s: math.exp(min(max(total / weight, lo), hi))
        for s, (total, weight, n) in sums.items()
        if n >= MIN_ROWS
    }


def row_sources(rows: Sequence) -> list[str | None]:
    """Per calibration row (evaluators/model/figures.py Row), the source whose factor it shares: its
    `source` when published, None when measured by `make gpu-check` (no factor: the model's anchor)."""
    return [None if row.kind == "measured" else row.source for row in rows]


def factor_of(source: str | None, factors: dict[str, float]) -> float:
    """The factor of `source` in `factors`: 1 for a measured row (None) or a source without a factor."""
    return 1.0 if source is None else factors.get(source, 1.0)
