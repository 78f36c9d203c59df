"""The leaderboard table: a run's status counts, then one backend's rows (board.py selects them) with
rank, candidate, proposer, status, fitness (± the model's error), held-out figure, max error, niche
and per-shape figures, then what the figures mean. Rendered by rich: coloured on a terminal, plain
words per cell when piped (the end of `evolve run` prints it too, evolve/runner.py)."""

from __future__ import annotations

import dataclasses

from rich.console import RenderableType
from rich.text import Text

from evaluators.fingerprint import judge_fingerprint

from ..model_error import Ranked, format_error, head_group, tie_flags
from ..store import Store
from .board import Board, BoardFilter, select, shape_text
from .console import plain_table, to_text
from .statuses import status_summary

# Training shapes whose figures a row shows (the rest are counted: "+2").
FIGURES_SHOWN = 3


def render_leaderboard(
    store: Store, top: int | None, judge: str | None = None, flt: BoardFilter | None = None
) -> str:
    """The run's status counts and its top rows on one backend: fitness, and beside it the
    held-out figure (same unit and kind, never ranked); unranked rows (not ok) have no rank.
    Only verdicts of `judge` (default: today's, evaluators/fingerprint.py) are ranked; an ok
    verdict of another judge is listed after them as "ok, stale", and one that passed the cheap
    checks only as "ok, provisional" (not verified), without a rank. On a modelled backend whose
    verdicts carry the model's calibration error, a column shows it (±12%; ±? unknown) and marks
    with ≈ a ranked row the model cannot tell from the row above (evolve/model_error.py). `flt`
    (board.py) narrows the rows or ranks by one shape's figure; its `top` gives way to `top`."""
    return to_text(*leaderboard_view(store, dataclasses.replace(flt or BoardFilter(), top=top), judge))


def leaderboard_view(store: Store, flt: BoardFilter, judge: str | None = None) -> list[RenderableType]:
    """What render_leaderboard prints, as rich renderables (lines and the table) for a console;
    `judge`: today's by default (evaluators/fingerprint.py)."""
    judge = judge if judge is not None else judge_fingerprint()
    info = store.run_info()
    provisional = store.provisional_count()
    lines = [
        f"run {info['name']} ({info['status']}), {store.evaluated_count()} evaluated, "
        + status_summary(store.counts_by_status())
        + (f"; of the ok, {provisional} provisional (not verified, never ranked)" if provisional else "")
    ]
    board = select(store, flt, judge)
    if board.backend is None:
        return [Text("\n".join(lines + ["no evaluations yet"]))]
    lines.append(
        f"ranking on {board.backend} (fitness {board.kind}; held-out {board.kind}, shown beside it, never "
        "ranked; other backends are never mixed in)"
    )
    if flt.shape is not None:
        lines.append(
            f"ranked by the {_unit(board)} on {shape_text(flt.shape)} (a training shape's, else a held-out "
            "one's), not by the fitness; rows without a figure there are not ranked"
        )
    if flt.status or flt.proposer:
        lines.append(
            f"filtered: {flt.describe()}; {len(board.rows)} of {board.fetched} rows shown; ranks are over the whole "
            "backend"
        )
    out: list[RenderableType] = [Text("\n".join(lines))]
    out.append(_table(board) if board.rows else Text(f"no row on {board.backend} matches {flt.describe()}"))
    notes = _notes(board, judge)
    if notes:
        out.append(Text("\n".join(notes)))
    return out


def _unit(board: Board) -> str:
    """What a per-shape figure is on the board's backend."""
    return "speedup over torch.matmul" if board.kind == "measured" else f"TFLOP/s ({board.kind.lower()})"


def _with_error(board: Board) -> bool:
    """Whether the ±model column is shown: a fitness ranking on a modelled backend with known errors."""
    return (
        board.kind == "MODELLED"
        and board.filter.shape is None
        and any(r.get("model_error") is not None for r in board.rows)
    )


def _table(board: Board):
    """The rows as a plain_table; positional cells first (rank, id, gen, isl, proposer, status,
    fitness), so that `line.split()` finds them where scripts and tests look."""
    with_error = _with_error(board)
    unit = "speedup" if board.kind == "measured" else "TFLOP/s"
    figures = f"{shape_text(board.filter.shape)} {unit}" if board.filter.shape else f"{unit} per shape"
    columns = [("#", "right"), ("id", "right"), ("gen", "right"), ("isl", "right"), ("proposer", "left"),
               ("status", "left"), ("fitness", "right")]  # fmt: skip
    columns += [("±model", "left")] if with_error else []
    columns += [("held-out", "right"), ("max err", "right"), ("niche", "left"), (figures, "left")]
    table = plain_table(*columns, wrap=("niche", figures))
    ties = tie_flags(board.ranking)
    for row in board.rows:
        tied = (row["rank"] or 0) > 1 and row["id"] in ties and ties[row["id"]].within_model_error is True
        cells = [str(row["rank"] or "-"), str(row["id"]), str(row["generation"]), str(row["island"]),
                 _proposer(row), _status(row), f"{row['fitness']:.4f}"]  # fmt: skip
        cells += [_error_cell(row, tied)] if with_error else []
        held_out = "-" if row.get("held_out") is None else f"{row['held_out']:.4f}"
        niche = "/".join(str(x) for x in row["niche"]) if row["niche"] else "-"
        cells += [held_out, _max_error(row), niche, _figures(row, board)]
        table.add_row(*cells, style=_style(row))
    return table


def _proposer(row: dict) -> str:
    """The proposer, with its model when the proposer's name does not say it (llm:gpt-4o does)."""
    proposer, model = row.get("proposer") or "-", row.get("model") or ""
    return f"{proposer}/{model}" if model and model not in proposer else proposer


def _status(row: dict) -> str:
    """ "ok"; "ok, stale" (another judge's); "ok, provisional" (not verified); or the failure."""
    status = f"{row['status']}, stale" if row["stale"] else row["status"]
    if row["status"] == "ok" and not row["stale"] and not row["rankable"]:
        status += f", {row['stage'] or 'unverified'}"
    return status


def _style(row: dict) -> str:
    """A terminal's colour for the row (none when piped): ranked green, the rest dim, failures red."""
    if row["rank"]:
        return "green" if row["rank"] == 1 else ""
    return "dim" if row["status"] == "ok" else "red"


def _error_cell(row: dict, tied: bool) -> str:
    """The ±model column: the verdict's model error (ok rows only) and ≈ when tied with the row above."""
    if row["status"] != "ok":
        return ""
    return format_error(row.get("model_error")) + (" ≈" if tied else "")


def _max_error(row: dict) -> str:
    """The largest scaled error |C - R| / (|A||B|) over the row's checked shapes; "-" when none."""
    errors = [s["max_scaled_err"] for s in row.get("shapes", []) if s.get("max_scaled_err") is not None]
    return f"{max(errors):.1e}" if errors else "-"


def _figures(row: dict, board: Board) -> str:
    """The filter's shape figure, or up to FIGURES_SHOWN training figures, e.g. "4096x4096x4096nn:1.12x"
    (measured speedup) or "...nn:300±12%" (modelled TFLOP/s with its shape class's error of one figure;
    ±? when the class has none)."""
    modelled = board.kind == "MODELLED"

    def figure(s: dict, value: float) -> str:
        text = f"{value:.2f}x" if board.kind == "measured" else f"{value:.0f}"
        return text + (format_error(s.get("model_error")) if modelled else "")

    if board.filter.shape is not None:
        return "-" if row["figure"] is None else figure(row["figure_row"], row["figure"])
    key = "speedup" if board.kind == "measured" else "tflops"
    train = [s for s in row.get("shapes", []) if s.get("kind") == "train" and s.get(key) is not None]
    text = " ".join(
        f"{shape_text(s['shape'])}{s['layout']}:{figure(s, s[key])}" for s in train[:FIGURES_SHOWN]
    )
    return text + (f" +{len(train) - FIGURES_SHOWN}" if len(train) > FIGURES_SHOWN else "")


def _notes(board: Board, judge: str) -> list[str]:
    """What the rows' marks mean: stale and provisional verdicts, and the model's figures."""
    notes = []
    if any(r["status"] == "ok" and r["stale"] for r in board.rows):
        notes.append(
            f"stale: judged by another judge than today's ({judge}; the judge changed since), so never "
            "ranked; `evolve run --resume` re-judges the ones that would be elites"
        )
    if any(r["status"] == "ok" and not r["stale"] and not r["rankable"] for r in board.rows):
        notes.append(
            "provisional: passed the cheap checks only, so never ranked; the run verifies the ones that "
            "would be elites or in its top few"
        )
    if board.kind == "MODELLED":
        shown = {r["id"] for r in board.rows}
        notes += _model_notes(board.ranking, _with_error(board), shown, board.filter.shape is not None)
    return notes


def _model_notes(ranking: list[Ranked], with_error: bool, shown: set[int], by_shape: bool) -> list[str]:
    """The notes under a modelled ranking: what the figures are and, with errors, what they mean and
    which rows shown the model cannot tell from the best."""
    notes = [
        "TFLOP/s figures are modelled by evaluators/model/perf_model.py, not measured; use --device cuda"
    ]
    if by_shape:
        return notes + [
            "a figure's ±: its shape class's error of one modelled figure (±?: not calibrated); two figures "
            "within it of each other are not called better than each other"
        ]
    if not with_error:
        return notes + [
            "the model's error of these fitness figures is unknown (a training shape's class has no "
            "calibrated error, ±? on its figures: evaluators/model/classes.py), so its ranking may order "
            "candidates it cannot tell apart"
        ]
    notes += [
        "±model: the model's calibration error, out of sample (leave-one-out over its calibration table, "
        "per shape class: evaluators/model/classes.py), of the RATIO of two candidates' modelled fitness "
        "on this task",
        "two rows within it of each other are not called better than each other (≈: within it of the row "
        "above; ±?: not calibrated, unknown); a figure's ±: its shape class's error of one figure",
    ]
    head = head_group(ranking)
    tied = [i for i in head[1:] if i in shown]
    if tied:
        ids = ", ".join(f"#{i}" for i in tied)
        notes.append(
            f"of the rows shown, the model cannot tell {ids} from the best #{head[0]} (within its error): "
            "`evolve remeasure` on a GPU measures these first"
        )
    return notes
