"""The report page: one self-contained HTML file (figures inlined as PNG data URIs, styles inline, no
external asset of any kind), from the ReportData of evolve/report/data.py and the figures of plots.py.

Every text that comes from the run is escaped (`escape`): candidate sources, notes, feedback and LLM
answers are untrusted. A Content-Security-Policy meta tag also forbids anything to load from outside
the file and lets only the page's own script run (by its hash), should anything slip through. That one
script only records, once the page has loaded, how many images decoded (body data-images="decoded/total"),
which the browser test reads back.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Collection
from html import escape

from .data import ReportData
from .plots import fitness_progress, lineage_tree, proposer_chart, shape_heatmap, status_timeline

SCRIPT = (
    "window.addEventListener('load', function () {"
    " var imgs = Array.prototype.slice.call(document.images);"
    " var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;"
    " document.body.dataset.images = ok + '/' + imgs.length; });"
)
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.badge { display: inline-block; padding: 0.1em 0.5em; border-radius: 0.3em; color: white; font-weight: bold; }
.measured { background: #2a7; } .modelled { background: #c60; } .none { background: #888; }
.muted { color: #666; font-size: 0.9em; }
"""


def render(data: ReportData, generated: float | None = None) -> str:
    """The whole page as one string (`generated`: Unix seconds to stamp, default now)."""
    generated = generated if generated is not None else dt.datetime.now(dt.timezone.utc).timestamp()
    name = str(data.run.get("name", "?"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">',
        f"<title>triton-evolve report: {escape(name)}</title>",
        f"<style>{STYLE}</style>",
        f"<script>{SCRIPT}</script>",
        "</head><body>",
        f"<h1>Run {escape(name)}</h1>",
        _overview(data, generated),
        _winner(data),
        "<h2>Fitness over the run</h2>",
        _figure(fitness_progress(data), "best and median fitness against evaluations and wall time"),
        "<h2>Verdicts over time</h2>",
        _figure(status_timeline(data), "cumulative verdicts per status against wall time"),
        _counts(data),
        "<h2>Per-shape figures of the top kernels</h2>",
        _figure(shape_heatmap(data), "per-shape heatmap of the top kernels"),
        "<h2>Leaderboard</h2>",
        _leaderboard(data),
        "<h2>Lineage of the winner</h2>",
        _figure(lineage_tree(data), "the winner's lineage tree"),
        _lineage_table(data),
        "<h2>Proposers</h2>",
        _figure(proposer_chart(data), "proposer statistics and bandit arms"),
        _proposers(data),
        "<h2>Winner's source</h2>",
        _source(data),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _figure(png_bytes: bytes | None, alt: str) -> str:
    if png_bytes is None:
        return f'<p class="muted">Nothing to draw yet ({escape(alt)}).</p>'
    data = base64.b64encode(png_bytes).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _time(t: float | None) -> str:
    if not t:
        return "?"
    return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt(v: object, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return "" if v is None else str(v)


def _table(header: list[str], rows: list[list[object]], numeric: Collection[int] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if j in numeric else ''}>{escape(_fmt(v))}</td>" for j, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _overview(data: ReportData, generated: float) -> str:
    info = data.run
    status = str(info.get("status", "?"))
    if status in ("running", "created"):
        status += " (still running, or stopped without a clean end: this report is a snapshot of the store)"
    badge = f'<span class="badge {escape(data.kind)}">{escape(data.kind.upper())}</span>'
    others = {b: n for b, n in data.backends.items() if b != data.backend}
    rows = [
        ["status", status],
        ["created", _time(info.get("created"))],
        ["evaluations on this backend", sum(v for k, v in data.counts.items() if k != "pending")],
        ["pending (queued, not judged yet)", data.counts.get("pending", 0)],
        ["other backends (never mixed in)", ", ".join(f"{b}: {n}" for b, n in others.items()) or "none"],
        ["judge ranked", data.judge or "any"],
        ["report written", _time(generated)],
        ["store", info.get("path", "")],
    ]
    config = json.dumps(info.get("config", {}), indent=1, sort_keys=True, default=str)
    return (
        f"<p>Backend <b>{escape(str(data.backend))}</b> {badge} — fitness is the {escape(data.unit)}.</p>"
        + _table(["", ""], rows)
        + f"<details><summary>run configuration</summary><pre>{escape(config)}</pre></details>"
    )


def _winner(data: ReportData) -> str:
    w = data.winner
    if w is None:
        return "<h2>Winner</h2><p>No ranked kernel yet (no verified ok verdict on this backend).</p>"
    held = f"; held-out {_fmt(w['held_out'])} (not in the fitness)" if w.get("held_out") is not None else ""
    err = (
        f"; model error ±{w['model_error']:.0%} on ratios" if isinstance(w.get("model_error"), float) else ""
    )
    warn = (
        "<p class=muted>Modelled, not measured: the model can be several times too optimistic on small "
        "shapes; `evolve remeasure` measures the top kernels on a GPU.</p>"
        if data.kind == "modelled"
        else ""
    )
    return (
        f"<h2>Winner: #{w['id']}</h2><p>fitness <b>{escape(_fmt(w['fitness']))}</b> ({escape(data.unit)})"
        f"{escape(held)}{escape(err)}; island {w['island']}, generation {w['generation']}, "
        f"proposer {escape(w['proposer'])}{escape(' / ' + w['model'] if w['model'] else '')}.</p>"
        f"<p>{escape(w['note'])}</p>{warn}"
    )


def _counts(data: ReportData) -> str:
    rows = [[k, v] for k, v in sorted(data.counts.items(), key=lambda kv: (kv[0] != "ok", kv[0]))]
    return _table(["status", "count"], rows, numeric={1})


def _leaderboard(data: ReportData) -> str:
    if not data.top:
        return "<p class=muted>No evaluations yet.</p>"
    rows, rank = [], 0
    for r in data.top:
        if r["rankable"]:
            rank += 1
        state = r["status"] + (
            ""
            if r["rankable"] or r["status"] != "ok"
            else (", stale" if r["stale"] else f", {r['stage'] or 'unverified'}")
        )
        rows.append(
            [
                rank if r["rankable"] else "",
                r["id"],
                r["island"],
                r["generation"],
                r["proposer"],
                r["model"],
                r["fitness"],
                r["held_out"],
                state,
                r["note"],
            ]
        )
    return (
        _table(
            [
                "rank",
                "id",
                "island",
                "gen",
                "proposer",
                "model",
                f"fitness ({data.kind})",
                "held-out",
                "status",
                "note",
            ],
            rows,
            numeric={0, 1, 2, 3, 6, 7},
        )
        + "<p class=muted>Unranked rows (no rank) are failures, or ok verdicts that are provisional or "
        "of another judge.</p>"
    )


def _lineage_table(data: ReportData) -> str:
    if not data.lineage:
        return ""
    rows = [
        [n.id, n.generation, ", ".join(map(str, n.parent_ids)), n.proposer, n.status, n.fitness, n.note]
        for n in sorted(data.lineage, key=lambda n: (n.generation, n.id))
    ]
    return _table(
        ["id", "gen", "parents", "proposer", "status", "fitness", "change"], rows, numeric={0, 1, 5}
    )


def _proposers(data: ReportData) -> str:
    out = []
    if data.proposer_stats:
        rows = [
            [
                r["proposer"],
                r["island"],
                r["proposals"],
                r["accepted"],
                r["improved"],
                ", ".join(f"{k} {v}" for k, v in sorted(r["failures"].items())),
            ]
            for r in data.proposer_stats
        ]
        out.append(
            _table(
                ["proposer", "island", "proposals", "accepted", "improved", "failures"], rows, {1, 2, 3, 4}
            )
        )
    for key, state in sorted(data.bandits.items()):
        rows = [
            [a.get("arm"), a.get("pulls"), a.get("mean"), a.get("cost"), a.get("weight")]
            for a in state.get("arms", [])
        ]
        out.append(
            f"<p>Bandit <b>{escape(key)}</b></p>"
            + _table(["arm", "pulls", "mean reward", "cost", "weight"], rows, {1, 2, 3, 4})
        )
    llm = data.llm
    if llm["calls"]:
        by = ", ".join(f"{k} {v}" for k, v in sorted(llm["by_status"].items()))
        out.append(
            "<p>LLM calls</p>"
            + _table(
                ["calls", "errors", "prompt tokens", "completion tokens", "cost (USD)", "by status"],
                [
                    [
                        llm["calls"],
                        llm["errors"],
                        llm["prompt_tokens"],
                        llm["completion_tokens"],
                        llm["cost"],
                        by,
                    ]
                ],
                {0, 1, 2, 3, 4},
            )
        )
    if data.lessons:
        out.append(
            f"<details><summary>lessons (version {data.lessons['version']}, from "
            f"{data.lessons['evaluations']} evaluations)</summary>"
            f"<pre>{escape(data.lessons['text'])}</pre></details>"
        )
    return "\n".join(out) or "<p class=muted>No proposer statistics recorded yet.</p>"


def _source(data: ReportData) -> str:
    if data.winner is None:
        return "<p class=muted>No winner yet.</p>"
    out = f"<pre>{escape(data.winner_source)}</pre>"
    if data.winner_llm_answer:
        out += (
            "<details><summary>the LLM answer that wrote it</summary>"
            f"<pre>{escape(data.winner_llm_answer)}</pre></details>"
        )
    return out
