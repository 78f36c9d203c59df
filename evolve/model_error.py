"""What the performance model cannot tell apart: ties inside its calibration error.

A modelled Evaluation carries `model_error` (evaluators/evaluation.py): the out-of-sample relative
error of the modelled fitness RATIO of two candidates on the task (errors move together across
candidates, so a ratio is known better than each figure). Two ranked candidates whose modelled
fitness lies within that error of each other are not called better than each other: the model cannot
order them, and only a measurement (`evolve remeasure` on a GPU) can.

The rule (`within_error`): with `better` >= `worse` and e the larger of the two candidates'
model_error, the true ratio better/worse may be as low as (better/worse) * (1 - e); when that is at
most 1 the model cannot say `better` is better, i.e. when worse >= better * (1 - e). An unknown error
(either candidate uncalibrated, or a record older than model errors) gives None: unknown, never False.
Measured fitness carries no model error: measured rows are never within it (False).

Used by the leaderboard (`evolve leaderboard --json`: `model_error`, `within_model_error`,
`within_model_error_of_best`; the human table's ±error and tie mark, evolve/ui/) and by
`evolve remeasure`, which measures first the candidates the model cannot tell from the best
(`remeasure_order`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable


@dataclasses.dataclass(frozen=True)
class Ranked:
    """One ranked candidate on one backend: its id, fitness and model_error (None: unknown)."""

    id: int
    fitness: float
    model_error: float | None


@dataclasses.dataclass(frozen=True)
class Ties:
    """A ranked row's flags. `within_model_error`: the model cannot tell this row from the next
    better-ranked one (the best: from the runner-up, so both carry it when the model cannot order
    them). `within_model_error_of_best`: it cannot tell this row from the best (the best: true when
    any other ranked row is within its error). None where an error is unknown."""

    within_model_error: bool | None
    within_model_error_of_best: bool | None


def within_error(better: Ranked, worse: Ranked) -> bool | None:
    """Whether the model cannot call `better` (the higher fitness) better than `worse`: worse's
    fitness >= better's * (1 - e), e the larger of their model_error; None when either is unknown."""
    if better.model_error is None or worse.model_error is None:
        return None
    hi, lo = max(better.fitness, worse.fitness), min(better.fitness, worse.fitness)
    error = max(better.model_error, worse.model_error)
    return lo >= hi * (1.0 - error)


def _any_true(flags: Iterable[bool | None]) -> bool | None:
    """True if any flag is True; else None if any is unknown; else False (also for no flags)."""
    flags = list(flags)
    if any(f is True for f in flags):
        return True
    return None if any(f is None for f in flags) else False


def tie_flags(ranked: list[Ranked]) -> dict[int, Ties]:
    """{id: Ties} for a ranking, best first (as Store.top orders it). A row with no model_error gets
    None in both flags; a lone best with an error gets False (there is nothing to confuse it with)."""
    out: dict[int, Ties] = {}
    if not ranked:
        return out
    best = ranked[0]
    for i, row in enumerate(ranked):
        if row.model_error is None:
            out[row.id] = Ties(None, None)
        elif i == 0:
            runner_up = within_error(best, ranked[1]) if len(ranked) > 1 else False
            out[row.id] = Ties(runner_up, _any_true(within_error(best, r) for r in ranked[1:]))
        else:
            out[row.id] = Ties(within_error(ranked[i - 1], row), within_error(best, row))
    return out


def leaderboard_flags(rows: list[dict], rankable: Callable[[dict], bool]) -> dict[tuple[int, str], Ties]:
    """{(id, backend): Ties} for `evolve leaderboard --json`'s rows (Store.all_evaluated: every backend,
    every status). Each backend is ranked on its own (never mixed), as Store.top ranks it: the rows
    `rankable` admits, by fitness (ties: lower id). Measured rows (cuda:*) are never within a model's
    error: False. Unranked rows (a failure, a provisional or stale verdict) and rows of a backend that
    is neither modelled nor measured: None (nothing is compared)."""
    out: dict[tuple[int, str], Ties] = {}
    for backend in sorted({r["backend"] for r in rows}):
        mine = [r for r in rows if r["backend"] == backend]
        if backend.startswith("cuda:"):
            out.update({(r["id"], backend): Ties(False, False) for r in mine})
            continue
        out.update({(r["id"], backend): Ties(None, None) for r in mine})
        if backend.startswith("model:"):
            ranked = sorted((r for r in mine if rankable(r)), key=lambda r: (-r["fitness"], r["id"]))
            flags = tie_flags([Ranked(r["id"], r["fitness"], r.get("model_error")) for r in ranked])
            out.update({(cid, backend): t for cid, t in flags.items()})
    return out


def head_group(ranked: list[Ranked]) -> list[int]:
    """The ids the model cannot tell apart from the best, best first in rank order: the best, every
    ranked row within the model's error of it, and every row within the error of one of those (ties
    chain: a candidate the model cannot tell from one it cannot tell from the best may be the best
    too). Rows whose error is unknown join only through a known tie, never by default. Only the best
    when it has no tie (or no error); [] for an empty ranking."""
    if not ranked:
        return []
    widest = max((r.model_error for r in ranked if r.model_error is not None), default=None)
    group = [ranked[0]]
    for row in ranked[1:]:
        if widest is None or row.fitness < group[-1].fitness * (1.0 - widest):
            break  # fitness only falls from here: no later row is within any error of the group
        # the group's lowest members first: the likeliest ties, so a long run of ties stays linear
        if any(within_error(member, row) for member in reversed(group)):
            group.append(row)
    return [r.id for r in group]


def remeasure_order(ranked: list[Ranked]) -> tuple[list[int], list[int]]:
    """(head, order): `head` as head_group() returns it; `order`: the head, then every other ranked
    id in rank order. `evolve remeasure` measures in this order (evolve/remeasure.py)."""
    head = head_group(ranked)
    chosen = set(head)
    return head, head + [r.id for r in ranked if r.id not in chosen]


def format_error(model_error: float | None) -> str:
    """A model error as the leaderboard shows it: "±12%"; "±?" when unknown."""
    return "±?" if model_error is None else f"±{model_error:.0%}"
