"""The leaderboard for scripts: `evolve leaderboard --json` and `--csv`, every verdict of a run (on
every backend unless one is named), with the same filters as the table (board.py)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

from evaluators.fingerprint import judge_fingerprint

from ..config import UsageError
from ..model_error import leaderboard_flags
from ..store import Store
from ..verification import stands
from .board import BoardFilter, backend_kind, judged_shapes, shape_figure, shape_text
from .paths import require_backend

JSON_KEYS = ("id", "generation", "island", "niche", "proposer", "model", "status", "fitness", "held_out",
             "fitness_kind", "backend", "feedback", "shapes", "judge", "stage", "model_error")  # fmt: skip
# The CSV's columns before the per-shape figures (one column per training shape, "4096x4096x4096nn").
CSV_KEYS = ("rank", "id", "backend", "fitness_kind", "status", "stage", "stale", "rankable", "fitness",
            "held_out", "model_error", "within_model_error", "within_model_error_of_best", "max_scaled_err",
            "generation", "island", "niche", "proposer", "model", "judge")  # fmt: skip


def leaderboard_json(rows: list[dict], judge: str | None = None) -> list[dict]:
    """Store.all_evaluated() rows as `evolve leaderboard --json` prints them, judged against `judge`
    (default: today's, evaluators/fingerprint.py).

    held_out: the held-out shapes' figure in the fitness's unit and kind (fitness_kind), beside the
    fitness and never in it; None when not judged (or not ok). judge: the fingerprint of the judge that
    gave the verdict; stale: not today's judge (never ranked); stage: "provisional" (the cheap checks
    only) or "verified" ("" before stages); rankable: ok, verified and today's judge's (only these are
    ranked, evolve/verification.py); rank: its place among the rankable rows of its backend by fitness
    (ties: lower id), None when not rankable. model_error: the relative error of a modelled fitness RATIO
    of two candidates (the model's calibration error, out of sample, evaluators/model/classes.py); None
    when measured, uncalibrated or an older record. within_model_error: true when the model cannot tell
    this row from the next better-ranked row on its backend (the best: from the runner-up), i.e. the
    worse fitness >= the better * (1 - e), e the larger of the two rows' model_error (evolve/
    model_error.py); within_model_error_of_best: the same test against the best (the best: against every
    ranked row). Both are null when unknown (a model_error missing) or not ranked, and false on measured
    rows (no model error applies). max_scaled_err: the largest max |C - R| / (|A||B|) over its checked
    shapes (None when none was checked). node: where it was judged, {"id": Ray node id, "address",
    "hostname"} (evolve/pool.py); None for the engine's own verdicts and older records."""
    judge = judge if judge is not None else judge_fingerprint()
    flags = leaderboard_flags(rows, lambda r: stands(r, judge))
    ranked = sorted(
        (r for r in rows if stands(r, judge)), key=lambda r: (r["backend"], -r["fitness"], r["id"])
    )
    ranks: dict[tuple[int, str], int] = {}
    places: dict[str, int] = {}
    for r in ranked:
        places[r["backend"]] = ranks[r["id"], r["backend"]] = places.get(r["backend"], 0) + 1
    return [
        {**{k: r.get(k) for k in JSON_KEYS}, "stale": r["judge"] != judge, "rankable": stands(r, judge),
         "rank": ranks.get((r["id"], r["backend"])), "max_scaled_err": _max_scaled_err(r),
         "node": ((r.get("metrics") or {}).get("provenance") or {}).get("node"),
         **dataclasses.asdict(flags[r["id"], r["backend"]])}
        for r in rows
    ]  # fmt: skip


def _max_scaled_err(row: dict) -> float | None:
    errors = [s["max_scaled_err"] for s in row.get("shapes") or [] if s.get("max_scaled_err") is not None]
    return max(errors) if errors else None


def board_records(store: Store, flt: BoardFilter, judge: str | None = None) -> list[dict]:
    """The leaderboard_json rows the filters keep: `flt.backend` only when named; `status`, `proposer`;
    `shape`: each row gains shape_figure (its speedup when measured, TFLOP/s when modelled, on that shape;
    None without one) and shape_rank (the rankable rows with a figure, by it, per backend); `top`: the
    best `top` of each backend (ranked first, by shape_rank with a shape, then the rest by fitness).
    UsageError when the backend or the shape has no verdict (naming those the run has)."""
    if flt.backend is not None:
        require_backend(store, flt.backend)
    records = leaderboard_json(store.all_evaluated(), judge)
    records = [r for r in records if (flt.backend is None or r["backend"] == flt.backend) and flt.keeps(r)]
    key = "rank"
    if flt.shape is not None:
        _add_shape_figures(records, flt.shape)
        if all(r["shape_figure"] is None for r in records):
            shapes = ", ".join(judged_shapes(records)) or "none yet"
            raise UsageError(
                f"no figure on shape {shape_text(flt.shape)} in the rows asked for; shapes: {shapes}"
            )
        key = "shape_rank"
    if flt.top is None:
        return records
    kept = []
    for backend in dict.fromkeys(r["backend"] for r in records):
        mine = [r for r in records if r["backend"] == backend]
        mine.sort(key=lambda r: (r[key] is None, r[key] or 0, -r["fitness"], r["status"] != "ok", r["id"]))
        kept += mine[: flt.top]
    return kept


def _add_shape_figures(records: list[dict], shape: tuple[int, int, int]) -> None:
    """Set each record's shape_figure and shape_rank (see board_records)."""
    for r in records:
        found = shape_figure(r, shape, backend_kind(r["backend"]) == "measured")
        r["shape_figure"] = found[0] if found else None
        r["shape_rank"] = None
    for backend in dict.fromkeys(r["backend"] for r in records):
        ranked = [
            r for r in records if r["backend"] == backend and r["rankable"] and r["shape_figure"] is not None
        ]
        for i, r in enumerate(sorted(ranked, key=lambda r: (-r["shape_figure"], r["id"])), 1):
            r["shape_rank"] = i


def board_json(records: list[dict]) -> str:
    """The records as one JSON list."""
    return json.dumps(records)


def board_csv(records: list[dict]) -> str:
    """The records as CSV: CSV_KEYS (shape_figure and shape_rank after them when present), then one
    column per training shape and layout ("4096x4096x4096nn") holding its speedup when measured, its
    TFLOP/s when modelled (fitness_kind says which), then feedback. Niche cells join by "/"."""
    shapes: dict[str, None] = {}
    for r in records:
        for s in r.get("shapes") or []:
            if s.get("kind") == "train":
                shapes[shape_text(s["shape"]) + s.get("layout", "")] = None
    extra = ["shape_figure", "shape_rank"] if records and "shape_figure" in records[0] else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_KEYS, *extra, *shapes, "feedback"])
    for r in records:
        unit = "speedup" if r["fitness_kind"] == "measured" else "tflops"
        figures = {
            shape_text(s["shape"]) + s.get("layout", ""): s.get(unit)
            for s in r.get("shapes") or []
            if s.get("kind") == "train"
        }
        cells = [_csv_cell(r.get(k)) for k in (*CSV_KEYS, *extra)]
        writer.writerow([*cells, *(_csv_cell(figures.get(s)) for s in shapes), r.get("feedback") or ""])
    return out.getvalue()


def _csv_cell(value) -> str:
    """None -> "", a niche list -> "a/b", bools -> true/false, the rest as str."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "/".join(str(x) for x in value)
    return str(value)
