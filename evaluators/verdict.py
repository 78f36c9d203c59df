"""What the cascade's stages share: the exception that ends an evaluation with a verdict.

evaluate.py runs the stages and turns a ``Stop`` into an Evaluation; gpu_timing.py (and
any later stage module) raises it. Both import this module, so the imports point one way.
"""

from __future__ import annotations

import math


class Stop(Exception):
    """Ends the cascade with ``status`` and ``feedback`` for the proposer.

    ``memo``: False when the verdict comes from a measurement (a timing guard, the
    speed-of-light guard) rather than from the source and the task alone: such a
    verdict is not remembered, the next evaluation judges afresh.
    """

    def __init__(self, status: str, feedback: str, memo: bool = True) -> None:
        super().__init__(feedback)
        self.status, self.feedback, self.memo = status, feedback, memo


def geometric_mean(values: list[float]) -> float:
    """exp(mean(log v)); 0.0 for an empty list or any value <= 0 (a fitness of 0 means not ok)."""
    if not values or any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))
