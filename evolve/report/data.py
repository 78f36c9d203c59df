"""What the report shows, read from a run store opened read-only (works while the run is going, and on a
stopped or killed run: the store commits after every evaluation).

Everything is taken on ONE backend (default: the run's, `Store.default_backend()`): a measured
(`cuda:*`) and a modelled (`model:*`) fitness are different quantities and never share a series, a
ranking or a colour scale. The other backends of the run are only named, with their counts.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from evolve.store import Store
from evolve.ui.board import backend_kind
from evolve.verification import stands

# How many ancestors the lineage tree draws at most (a long run's winner can have hundreds; crossovers
# widen the tree): the nearest generations are kept, and the report says when it cut.
LINEAGE_LIMIT = 120


@dataclasses.dataclass
class Point:
    """One evaluation on the report's backend, in the order the run recorded it."""

    id: int
    status: str
    fitness: float
    rankable: bool  # ok, verified and of today's judge: the only fitness that can be the best
    evaluated: float  # Unix seconds the verdict was stored


@dataclasses.dataclass
class LineageNode:
    """One ancestor of the winner (or the winner itself)."""

    id: int
    parent_ids: list[int]
    generation: int
    proposer: str
    note: str
    status: str  # on the report's backend; "" when it has no verdict there
    fitness: float


@dataclasses.dataclass
class ReportData:
    """Everything the plots and the page need, as plain values (no open store)."""

    run: dict  # Store.run_info()
    backend: str | None  # the backend reported on; None when nothing is evaluated yet
    kind: str  # "measured", "modelled" or "none" (what the backend's fitness is)
    backends: dict[str, int]  # every backend of the run -> its evaluations (the others are not plotted)
    counts: dict[str, int]  # statuses on the report's backend, plus "pending" (queued, not yet judged)
    points: list[Point]  # the backend's evaluations by time
    top: list[dict]  # Store.top rows (with per-shape figures), best first
    winner: dict | None  # the best rankable row, or None
    winner_source: str
    winner_llm_answer: str  # the LLM answer that wrote the winner ("" when none did)
    lineage: list[LineageNode]  # winner first, then its ancestors, nearest first
    lineage_cut: bool  # True when LINEAGE_LIMIT stopped the walk
    proposer_stats: list[dict]
    bandits: dict[str, dict]
    llm: dict  # {calls, prompt_tokens, completion_tokens, cost, errors, by_status}
    lessons: dict | None
    judge: str | None  # the judge fingerprint rankable verdicts were held to (None: any judge)

    @property
    def unit(self) -> str:
        """The fitness's unit, said with its kind, for axis labels and table headers."""
        if self.kind == "measured":
            return f"speedup over torch.matmul (MEASURED on {self.backend})"
        if self.kind == "modelled":
            return f"fraction of dense peak (MODELLED for {self.backend}, not measured)"
        return "fitness"


def fitness_kind(backend: str | None) -> str:
    """ "measured" for cuda:* backends, "modelled" for model:*, "none" otherwise (the leaderboard's
    classification, `backend_kind`, in lower case: the report's plots say it, they do not shout it)."""
    return backend_kind(backend).lower() if backend else "none"


def load(store: Store, backend: str | None = None, judge: str | None = None, top_k: int = 10) -> ReportData:
    """Read the report's data from `store` on `backend` (default: the run's default backend).

    `judge` is today's judge fingerprint: an ok verdict of another judge is stale and never the best
    (as in `evolve leaderboard`); None ranks any judge's verified verdicts."""
    backend = backend if backend is not None else store.default_backend()
    rows = store.all_evaluated()
    backends: dict[str, int] = {}
    for row in rows:
        backends[row["backend"]] = backends.get(row["backend"], 0) + 1
    if backend is not None and backend not in backends and rows:
        from evolve.config import UsageError

        known = ", ".join(sorted(backends))
        raise UsageError(f"backend {backend!r} has no evaluations in this run; it has: {known}")
    points = sorted(
        (
            Point(
                id=row["id"],
                status=row["status"],
                fitness=float(row["fitness"] or 0.0),
                rankable=_rankable(row, judge),
                evaluated=float(row["evaluated"]),
            )
            for row in rows
            if row["backend"] == backend
        ),
        key=lambda p: (p.evaluated, p.id),
    )
    del rows  # the full metrics of every evaluation: not kept past this point
    counts: dict[str, int] = {}
    for p in points:
        counts[p.status] = counts.get(p.status, 0) + 1
    counts["pending"] = store.counts_by_status().get("pending", 0)
    top = store.top(top_k, backend, judge) if backend is not None else []
    winner = next((r for r in top if r["rankable"]), None)
    calls = store.llm_calls()
    source, answer, lineage, cut = "", "", [], False
    if winner is not None:
        source = store.candidate(winner["id"])["source"]
        answer = _llm_answer(calls, winner["id"])
        lineage, cut = _lineage(store, winner["id"], backend)
    return ReportData(
        run=store.run_info(),
        backend=backend,
        kind=fitness_kind(backend),
        backends=backends,
        counts=counts,
        points=points,
        top=top,
        winner=winner,
        winner_source=source,
        winner_llm_answer=answer,
        lineage=lineage,
        lineage_cut=cut,
        proposer_stats=store.proposer_stats(),
        bandits=store.bandits(),
        llm=_llm_summary(calls),
        lessons=store.latest_lessons(),
        judge=judge,
    )


def _rankable(row: dict, judge: str | None) -> bool:
    if judge is None:  # any judge's verified ok verdict
        return row["status"] == "ok" and row["stage"] == "verified"
    return stands(row, judge)  # the rule the engine and the leaderboard rank by


def _llm_answer(calls: list[dict], candidate_id: int) -> str:
    mine = [c for c in calls if c["candidate_id"] == candidate_id and c["answer"]]
    return mine[-1]["answer"] if mine else ""


def _llm_summary(calls: list[dict]) -> dict:
    by_status: dict[str, int] = {}
    for c in calls:
        key = c["status"] or ("error" if c["error"] else "unknown")
        by_status[key] = by_status.get(key, 0) + 1
    return {
        "calls": len(calls),
        "prompt_tokens": sum(c["prompt_tokens"] or 0 for c in calls),
        "completion_tokens": sum(c["completion_tokens"] or 0 for c in calls),
        "cost": sum(c["cost"] or 0.0 for c in calls),
        "errors": sum(1 for c in calls if c["error"]),
        "by_status": by_status,
    }


def _lineage(store: Store, winner_id: int, backend: str | None) -> tuple[list[LineageNode], bool]:
    """The winner and its ancestors (breadth first: nearest first), each once, at most LINEAGE_LIMIT."""
    seen: dict[int, LineageNode] = {}
    frontier = [winner_id]
    while frontier and len(seen) < LINEAGE_LIMIT:
        room = LINEAGE_LIMIT - len(seen)
        batch = [i for i in dict.fromkeys(frontier) if i not in seen][:room]
        frontier = []
        for c in store.candidates(batch):
            verdict = next((e for e in c["evaluations"] if e["backend"] == backend), None)
            seen[c["id"]] = LineageNode(
                id=c["id"],
                parent_ids=[int(p) for p in c["parent_ids"]],
                generation=int(c["generation"]),
                proposer=c["proposer"],
                note=c["note"],
                status=verdict["status"] if verdict else "",
                fitness=float(verdict["fitness"]) if verdict else 0.0,
            )
            frontier += [p for p in seen[c["id"]].parent_ids if p not in seen]
    cut = any(p not in seen for n in seen.values() for p in n.parent_ids)
    return list(seen.values()), cut


def running_best_and_median(points: list[Point]) -> tuple[list[float | None], list[float | None]]:
    """After each evaluation: the best rankable fitness so far, and the median fitness of the ok
    evaluations so far (None until there is one)."""
    best: list[float | None] = []
    median: list[float | None] = []
    top: float | None = None
    ok: list[float] = []
    for p in points:
        if p.rankable:
            top = p.fitness if top is None else max(top, p.fitness)
        if p.status == "ok":
            ok.append(p.fitness)
        best.append(top)
        median.append(statistics.median(ok) if ok else None)
    return best, median


def shape_value(shape: dict, kind: str) -> float | None:
    """One training or held-out shape's figure in the fitness's unit: measured speedup over torch.matmul,
    or modelled fraction of peak; None when the shape has none."""
    value: Any = shape.get("speedup") if kind == "measured" else shape.get("fraction_of_peak")
    return float(value) if isinstance(value, int | float) else None


def shape_columns(rows: list[dict]) -> list[tuple[str, tuple[int, ...], str]]:
    """The (kind, shape, layout) columns of the heatmap: training shapes, then held-out ones, in the
    order the first row that has them lists them."""
    cols: dict[tuple[str, tuple[int, ...], str], None] = {}
    for kind in ("train", "held_out"):
        for row in rows:
            for s in row.get("shapes") or []:
                if s.get("kind") == kind and s.get("shape"):
                    cols[(kind, tuple(s["shape"]), s.get("layout") or "nn")] = None
    return list(cols)
