"""One candidate up close: `evolve show` (source, verdicts with per-shape metrics, feedback, parents, the
LLM answer that wrote it), `evolve diff` (its source against its first parent's or another's) and
`evolve lineage` (its first-parent ancestry up to the seed, with fitness and change note per step).

All read a store opened read-only (paths.open_run); unknown ids raise UsageError listing those that
exist (paths.require_candidate)."""

from __future__ import annotations

import difflib
import time

from rich.console import RenderableType
from rich.text import Text

from evaluators.fingerprint import judge_fingerprint

from ..config import UsageError
from ..model_error import format_error
from ..store import Store
from .board import EVERY_ROW, backend_kind, shape_text
from .console import plain_table
from .paths import require_candidate

# Per-shape columns of `evolve show`: (header, the ShapeResult field, how it is written); a column
# shows only when a row of the verdict has a value in it.
SHAPE_COLUMNS = (
    ("time ms", "time_s", lambda v: f"{v * 1e3:.3f}"),
    ("torch ms", "torch_time_s", lambda v: f"{v * 1e3:.3f}"),
    ("TFLOP/s", "tflops", lambda v: f"{v:.1f}"),
    ("speedup", "speedup", lambda v: f"{v:.2f}x"),
    ("of peak", "fraction_of_peak", lambda v: f"{v:.1%}"),
    ("bound", "bound", str),
    ("±model", "model_error", format_error),
    ("max err", "max_scaled_err", lambda v: f"{v:.1e}"),
    ("tolerance", "tolerance", lambda v: f"{v:.1e}"),
)


def _when(created: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created)) if created else "-"


def _verdict_on(candidate: dict, backend: str | None) -> dict | None:
    """The candidate's verdict summary (Store.candidates' `evaluations`) on `backend`; None without one."""
    return next((e for e in candidate["evaluations"] if e["backend"] == backend), None)


def _verdict_text(verdict: dict | None, pending: bool) -> str:
    """ "ok 0.3123", "incorrect", "pending" (handed to the pool, not judged) or "-" (no verdict)."""
    if verdict is None:
        return "pending" if pending else "-"
    if verdict["status"] != "ok":
        return verdict["status"]
    stage = "" if verdict["stage"] == "verified" else f" ({verdict['stage'] or 'unverified'})"
    return f"ok {verdict['fitness']:.4f}{stage}"


def _provenance(candidate: dict) -> str:
    """Who wrote it: "llm:gpt-4o (template default)", "mutator", "seed"."""
    extra = (
        [f"model {candidate['model']}"]
        if candidate["model"] and candidate["model"] not in candidate["proposer"]
        else []
    )
    extra += [f"template {candidate['template']}"] if candidate["template"] else []
    return candidate["proposer"] + (f" ({', '.join(extra)})" if extra else "")


def show(store: Store, candidate_id: int, judge: str | None = None) -> list[RenderableType]:
    """`evolve show RUN ID`: the candidate's provenance, parents and change note, each verdict (status,
    stage, judge, fitness with its label, held-out, rank on that backend, feedback, per-shape metrics),
    the LLM call that wrote it (its answer) when one did, and its source."""
    judge = judge if judge is not None else judge_fingerprint()
    c = require_candidate(store, candidate_id)
    pending = c["id"] in set(store.pending_ids())
    niche = "/".join(str(x) for x in c["niche"]) or "-"
    head = [
        f"candidate #{c['id']} of run {c['run']}: generation {c['generation']}, island {c['island']}, niche {niche}",
        f"proposer: {_provenance(c)}; created {_when(c['created'])}",
        f"note: {c['note'] or '-'}",
    ]
    parents = store.candidates(c["parent_ids"])
    backend = store.default_backend()
    head.append(
        "parents: "
        + (
            ", ".join(f"#{p['id']} ({_verdict_text(_verdict_on(p, backend), False)})" for p in parents)
            or "none (a seed)"
        )
        + (f" on {backend}" if parents and backend else "")
    )
    out: list[RenderableType] = [Text("\n".join(head))]
    if not c["evaluations"]:
        out.append(
            Text(
                "verdict: none yet"
                + (" (pending: handed to the pool; `evolve run --resume` judges it)" if pending else "")
            )
        )
    for verdict in c["evaluations"]:
        out += _verdict(store, c["id"], verdict, judge)
    out += _llm_answer(store, c["id"])
    source = c["source"]
    out.append(Text(f"source ({len(source.splitlines())} lines):", style="bold"))
    out.append(Text(source.rstrip("\n")))
    return out


def _verdict(store: Store, candidate_id: int, verdict: dict, judge: str) -> list[RenderableType]:
    """One backend's verdict: a line of status and figures, its feedback, and its per-shape table."""
    backend = verdict["backend"]
    full = store.evaluation_dict(candidate_id, backend) or {}
    kind = backend_kind(backend)
    stale = (
        "" if verdict["judge"] == judge else f", stale (judge {verdict['judge'] or 'unknown'}, today {judge})"
    )
    line = f"verdict on {backend}: {verdict['status']}, {verdict['stage'] or 'no stage'}{stale}"
    if verdict["status"] == "ok":
        error = f" {format_error(full.get('model_error'))}" if kind == "MODELLED" else ""
        held = full.get("held_out")
        line += f"; fitness {verdict['fitness']:.4f} {kind}{error}"
        line += f", held-out {held:.4f}" if held is not None else ", held-out -"
        ranked = [r["id"] for r in store.top(EVERY_ROW, backend, judge) if r["rankable"]]
        line += (
            f", rank {ranked.index(candidate_id) + 1} of {len(ranked)}"
            if candidate_id in ranked
            else ", not ranked"
        )
    out: list[RenderableType] = [Text(line, style="bold")]
    if verdict["feedback"]:
        out.append(Text("feedback: " + verdict["feedback"]))
    shapes = full.get("shapes") or []
    if shapes:
        used = [col for col in SHAPE_COLUMNS if any(s.get(col[1]) is not None for s in shapes)]
        table = plain_table(
            ("kind", "left"), ("shape", "left"), ("layout", "left"), *((h, "right") for h, _, _ in used)
        )
        for s in shapes:
            cells = [fmt(s[key]) if s.get(key) is not None else "-" for _, key, fmt in used]
            table.add_row(s.get("kind", "-"), shape_text(s["shape"]), s.get("layout", "-"), *cells)
        out.append(table)
    return out


def _llm_answer(store: Store, candidate_id: int) -> list[RenderableType]:
    """The LLM call whose answer became the candidate, with the answer's text; [] when none did."""
    calls = [call for call in store.llm_calls() if call["candidate_id"] == candidate_id]
    out: list[RenderableType] = []
    for call in calls:
        tokens = f"{call['prompt_tokens'] or 0}+{call['completion_tokens'] or 0} tokens"
        cost = f"${call['cost']:.4f}" if call["cost"] is not None else "cost unknown"
        latency = f"{call['latency_s']:.1f} s" if call["latency_s"] is not None else "- s"
        out.append(Text(
            f"LLM answer (call #{call['id']}: {call['proposer'] or call['model']}, template {call['template'] or '-'}, "
            f"call {call['status'] or '-'}, edit {call['edit_status'] or '-'}, {tokens}, {cost}, {latency}):",
            style="bold",
        ))  # fmt: skip
        out.append(Text(call["answer"].rstrip("\n") or "(no answer text stored)"))
    return out


def diff(store: Store, candidate_id: int, other_id: int | None = None) -> str:
    """`evolve diff RUN ID [OTHER]`: a unified diff from OTHER's source (default: ID's first parent) to
    ID's; each side named with its proposer and verdict on the run's default backend. UsageError when
    an id is unknown, or ID is a seed and no OTHER is given."""
    c = require_candidate(store, candidate_id)
    if other_id is None:
        if not c["parent_ids"]:
            raise UsageError(
                f"candidate {candidate_id} is a seed (no parent); name one to compare with: "
                f"evolve diff {c['run']} {candidate_id} OTHER"
            )
        other_id = c["parent_ids"][0]
    o = require_candidate(store, other_id)
    backend = store.default_backend()
    relation = "first parent" if c["parent_ids"][:1] == [other_id] else "other"

    def label(x: dict, role: str) -> str:
        return f"#{x['id']} ({role}; {x['proposer']}; {_verdict_text(_verdict_on(x, backend), False)} on {backend or '-'})"

    lines = difflib.unified_diff(
        o["source"].splitlines(), c["source"].splitlines(), label(o, relation), label(c, c["note"] or "candidate"),
        lineterm="",
    )  # fmt: skip
    text = "\n".join(lines)
    return text or f"#{other_id} and #{candidate_id} have the same source"


def diff_text(text: str) -> Text:
    """A unified diff coloured for a terminal: removed lines red, added green, hunk headers cyan."""
    out = Text()
    for line in text.splitlines(keepends=True):
        style = "bold" if line.startswith(("---", "+++")) else ""
        style = style or {"-": "red", "+": "green", "@": "cyan"}.get(line[:1], "")
        out.append(line, style=style)
    return out


def lineage(store: Store, candidate_id: int, backend: str | None = None) -> list[RenderableType]:
    """`evolve lineage RUN ID`: the first-parent chain from the seed down to ID, one row per step: id,
    generation, proposer, verdict and fitness on `backend` (default: the run's), the change in fitness
    from the nearest step above with one, and the change note (other parents named in it)."""
    backend = backend if backend is not None else store.default_backend()
    chain = [require_candidate(store, candidate_id)]
    seen = {candidate_id}
    while chain[-1]["parent_ids"] and chain[-1]["parent_ids"][0] not in seen:
        found = store.candidates(chain[-1]["parent_ids"][:1])
        if not found:  # a parent id the store does not hold (never expected): say where the chain ends
            break
        chain.append(found[0])
        seen.add(found[0]["id"])
    chain.reverse()
    pending = set(store.pending_ids())
    table = plain_table(("step", "right"), ("id", "right"), ("gen", "right"), ("proposer", "left"),
                        ("verdict", "left"), ("Δ fitness", "right"), ("note", "left"), wrap=("note",))  # fmt: skip
    previous = None
    for step, c in enumerate(chain):
        verdict = _verdict_on(c, backend)
        fitness = verdict["fitness"] if verdict and verdict["status"] == "ok" else None
        delta = f"{fitness - previous:+.4f}" if fitness is not None and previous is not None else "-"
        note = c["note"] or "-"
        if len(c["parent_ids"]) > 1:
            note += " (also from " + ", ".join(f"#{p}" for p in c["parent_ids"][1:]) + ")"
        table.add_row(str(step), str(c["id"]), str(c["generation"]), c["proposer"],
                      _verdict_text(verdict, c["id"] in pending), delta, note)  # fmt: skip
        previous = fitness if fitness is not None else previous
    root = chain[0]
    ends = "a seed" if not root["parent_ids"] else f"its parent #{root['parent_ids'][0]} is not in the store"
    head = Text(
        f"lineage of #{candidate_id} in run {chain[-1]['run']}: {len(chain)} steps from #{root['id']} ({ends}); "
        f"verdicts on {backend or 'no backend yet'}"
    )
    return [head, table]
