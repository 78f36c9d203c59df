"""Which rows a leaderboard shows and in what order: one backend, ranked by fitness or by one shape's
figure, narrowed by status and proposer. The table (leaderboard.py) and the JSON and CSV (board_data.py)
show what this selects.

Ranks are over the whole backend (only verdicts that stand rank: ok, verified, today's judge, evolve/
verification.py); the filters hide rows and never renumber them, so "#3" means the same in every view.
"""

from __future__ import annotations

import dataclasses
import re

from evaluators.evaluation import STATUSES

from ..config import UsageError
from ..model_error import Ranked
from ..store import Store
from .paths import require_backend

# Store.top's LIMIT when every row of a backend is wanted (SQLite takes any 64-bit integer).
EVERY_ROW = 2**62
# Kinds of per-shape rows that carry performance figures (evaluators/evaluation.py ShapeResult.kind).
FIGURE_KINDS = ("train", "held_out")


@dataclasses.dataclass(frozen=True)
class BoardFilter:
    """What a leaderboard shows. `top`: how many rows (None: all); `status`: only rows with one of these
    statuses; `shape`: (M, N, K) whose figure is shown and ranked by, instead of the fitness; `backend`:
    the backend ranked (None: the run's default, the one with most ok verdicts); `proposer`: only rows
    whose proposer starts with this (e.g. "llm" or "mutator")."""

    top: int | None = 10
    status: tuple[str, ...] = ()
    shape: tuple[int, int, int] | None = None
    backend: str | None = None
    proposer: str | None = None

    @property
    def narrows(self) -> bool:
        """Whether rows beyond the first `top` of the backend may be needed (a filter hides some)."""
        return bool(self.status or self.shape or self.proposer)

    def keeps(self, row: dict) -> bool:
        """Whether the status and proposer filters let `row` through (any backend)."""
        return (not self.status or row["status"] in self.status) and (
            not self.proposer or (row.get("proposer") or "").startswith(self.proposer)
        )

    def describe(self) -> str:
        """The filters as a phrase, e.g. "status ok, proposer llm*"; "" when none."""
        parts = [f"status {'|'.join(self.status)}"] if self.status else []
        parts += [f"proposer {self.proposer}*"] if self.proposer else []
        parts += [f"shape {shape_text(self.shape)}"] if self.shape else []
        return ", ".join(parts)


@dataclasses.dataclass
class Board:
    """The rows a leaderboard shows on `backend` (None: nothing judged yet), in order. Each row is a
    Store.top row plus `rank` (None: not ranked) and `figure` (its figure on the filter's shape; None
    without one). `ranking`: the ranked rows fetched (all of them when a filter narrows), for the
    model-error ties of the fitness ranking (empty when ranked by a shape); `fetched`: rows fetched."""

    backend: str | None
    kind: str  # "measured", "MODELLED" or "none" (a backend that yields no fitness)
    rows: list[dict]
    ranking: list[Ranked]
    fetched: int
    filter: BoardFilter


def shape_text(shape: tuple[int, ...]) -> str:
    """(4096, 4096, 1024) -> "4096x4096x1024"."""
    return "x".join(str(d) for d in shape)


def parse_shape(text: str) -> tuple[int, int, int]:
    """ "4096x4096x4096" (or with commas, spaces, ×, parentheses) -> (4096, 4096, 4096); UsageError else."""
    parts = [p for p in re.split(r"[x×X,\s]+", text.strip().strip("()")) if p]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise UsageError(f"--shape {text}: give the shape as MxNxK, e.g. --shape 4096x4096x4096")
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_statuses(text: str) -> tuple[str, ...]:
    """ "ok" or "incorrect,timeout" -> the statuses; UsageError naming the known ones otherwise."""
    statuses = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown or not statuses:
        raise UsageError(
            f"--status {text}: not a status; use one or more of {', '.join(STATUSES)}, comma-separated"
        )
    return statuses


def backend_kind(backend: str) -> str:
    """How a backend's fitness is known: "measured" (cuda:...), "MODELLED" (model:...), else "none"."""
    return (
        "MODELLED" if backend.startswith("model:") else "measured" if backend.startswith("cuda:") else "none"
    )


def shape_figure(row: dict, shape: tuple[int, int, int], measured: bool) -> tuple[float, dict] | None:
    """The row's figure on `shape` (a training shape, else a held-out one), in the fitness's unit: the
    speedup over torch.matmul when measured, the TFLOP/s when modelled; with its per-shape row. None
    when the row has none there (not judged that far, or not ok)."""
    found = [s for s in row.get("shapes", []) if tuple(s["shape"]) == shape and s.get("kind") in FIGURE_KINDS]
    for s in sorted(found, key=lambda s: FIGURE_KINDS.index(s["kind"])):
        value = s.get("speedup") if measured else s.get("tflops")
        if value is not None:
            return float(value), s
    return None


def judged_shapes(rows: list[dict]) -> list[str]:
    """The shapes with figures in `rows`, as MxNxK, in first-seen order (for errors)."""
    seen: dict[str, None] = {}
    for row in rows:
        for s in row.get("shapes", []):
            if s.get("kind") in FIGURE_KINDS:
                seen[shape_text(s["shape"])] = None
    return list(seen)


def select(store: Store, flt: BoardFilter, judge: str) -> Board:
    """The rows of `flt.backend` (default: the run's) to show: ranked by fitness, or by the figure on
    `flt.shape` when given; then filtered by status and proposer, cut to `flt.top`. UsageError when the
    backend or the shape has no verdict in the run (naming those it has)."""
    backend = require_backend(store, flt.backend)
    if backend is None:
        return Board(None, "none", [], [], 0, flt)
    kind = backend_kind(backend)
    limit = EVERY_ROW if flt.narrows or flt.top is None else flt.top
    rows = store.top(limit, backend, judge)
    if flt.shape is not None:
        for row in rows:
            found = shape_figure(row, flt.shape, kind == "measured")
            row["figure"], row["figure_row"] = (found[0], found[1]) if found else (None, None)
        if all(row["figure"] is None for row in rows):
            shapes = ", ".join(judged_shapes(rows)) or "none yet"
            raise UsageError(
                f"no figure on shape {shape_text(flt.shape)} on {backend} in run {store.run_info()['name']}; "
                f"shapes with figures: {shapes}"
            )
        ranked = sorted(
            (r for r in rows if r["rankable"] and r["figure"] is not None),
            key=lambda r: (-r["figure"], r["id"]),
        )
        chosen = {r["id"] for r in ranked}
        rows = ranked + [r for r in rows if r["id"] not in chosen]
        ranking: list[Ranked] = []
    else:
        ranked = [r for r in rows if r["rankable"]]
        ranking = [Ranked(r["id"], r["fitness"], r.get("model_error")) for r in ranked]
    ranks = {r["id"]: i for i, r in enumerate(ranked, 1)}
    for row in rows:
        row["rank"] = ranks.get(row["id"])
        row.setdefault("figure", None)
    kept = [r for r in rows if flt.keeps(r)]
    return Board(backend, kind, kept[: flt.top] if flt.top is not None else kept, ranking, len(rows), flt)
