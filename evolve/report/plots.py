"""The report's figures: matplotlib `Figure` objects rendered by the Agg canvas to PNG bytes (no pyplot,
no display, no global figure state), which evolve/report/html.py inlines as data URIs.

Each function takes the ReportData of evolve/report/data.py and returns PNG bytes, or None when the run
has nothing to draw yet (e.g. a run that has evaluated nothing). Every fitness axis says what the
fitness is (measured speedup or modelled fraction of peak) and on which backend: one backend per figure.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .data import ReportData, running_best_and_median, shape_columns, shape_value

DPI = 100
# One colour per verdict, the same in every figure (unknown statuses get grey).
STATUS_COLOURS = {
    "ok": "#2ca02c",
    "incorrect": "#d62728",
    "rejected": "#ff7f0e",
    "compile_error": "#9467bd",
    "timeout": "#8c564b",
    "crashed": "#e377c2",
    "unsupported": "#7f7f7f",
    "judge_error": "#17becf",
}


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg canvas, tight bounding box)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _minutes(data: ReportData) -> list[float]:
    start = min([float(data.run.get("created") or 0.0)] + [p.evaluated for p in data.points[:1]])
    return [(p.evaluated - start) / 60.0 for p in data.points]


def fitness_progress(data: ReportData) -> bytes | None:
    """Best (rankable) and median (ok) fitness so far, against evaluations and against wall time."""
    if not any(p.status == "ok" for p in data.points):
        return None  # no fitness yet: only failures (the verdicts figure shows them)
    best, median = running_best_and_median(data.points)
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, xs, xlabel in (
        (axes[0], list(range(1, len(data.points) + 1)), "evaluations (in the order they were stored)"),
        (axes[1], _minutes(data), "wall time since the run started (minutes)"),
    ):
        ranked = [(x, p.fitness) for x, p in zip(xs, data.points, strict=True) if p.rankable]
        unranked = [
            (x, p.fitness)
            for x, p in zip(xs, data.points, strict=True)
            if p.status == "ok" and not p.rankable
        ]
        if ranked:
            ax.scatter(*zip(*ranked, strict=True), s=12, color="#1f77b4", alpha=0.35, label="ok (ranked)")
        if unranked:
            ax.scatter(
                *zip(*unranked, strict=True),
                s=14,
                facecolors="none",
                edgecolors="#7f7f7f",
                label="ok, provisional or stale (not ranked)",
            )
        _step(ax, xs, best, color="#d62728", label="best so far")
        _step(ax, xs, median, color="#1f77b4", label="median of ok so far", linestyle="--")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(_wrap(data.unit, 40))
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Fitness on {data.backend} ({data.kind})")
    return png(fig)


def _step(ax, xs: list[float], ys: list[float | None], **kw) -> None:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if pairs:
        ax.step(*zip(*pairs, strict=True), where="post", linewidth=2, **kw)


def shape_heatmap(data: ReportData) -> bytes | None:
    """Top kernels x training (then held-out) shapes: measured speedup over torch.matmul on cuda:*
    backends (diverging around 1x), modelled fraction of peak with its TFLOP/s on model:* backends."""
    rows = [r for r in data.top if r["status"] == "ok"]
    cols = shape_columns(rows)
    if not rows or not cols or data.kind == "none":
        return None
    grid: list[list[float]] = []
    text: list[list[str]] = []
    for row in rows:
        by_col = {
            (s.get("kind"), tuple(s.get("shape") or ()), s.get("layout") or "nn"): s for s in row["shapes"]
        }
        values, labels = [], []
        for col in cols:
            s = by_col.get(col)
            v = shape_value(s, data.kind) if s else None
            values.append(math.nan if v is None else v)
            if v is None:
                labels.append("")
            elif data.kind == "measured":
                labels.append(f"{v:.2f}x")
            else:
                tf = s.get("tflops")
                labels.append(f"{v:.2f}" + (f"\n{tf:.0f} TF/s" if isinstance(tf, int | float) else ""))
        grid.append(values)
        text.append(labels)
    finite = [v for r in grid for v in r if not math.isnan(v)]
    if not finite:
        return None
    fig = Figure(figsize=(max(6.0, 1.1 * len(cols) + 2.5), max(2.5, 0.5 * len(rows) + 1.8)))
    ax = fig.subplots()
    lo, hi = min(finite), max(finite)
    if data.kind == "measured" and lo < 1.0 < hi:
        image = ax.imshow(grid, aspect="auto", cmap="RdYlGn", norm=TwoSlopeNorm(1.0, lo, hi))
    else:
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
    for i, labels in enumerate(text):
        for j, label in enumerate(labels):
            if label:
                ax.text(
                    j,
                    i,
                    label,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black",
                    bbox={"facecolor": "white", "alpha": 0.6, "pad": 1, "linewidth": 0},
                )
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(
        [
            ("held-out\n" if k == "held_out" else "") + "x".join(map(str, shape)) + f"\n{layout}"
            for k, shape, layout in cols
        ],
        fontsize=7,
    )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(
        [f"#{r['id']} ({r['fitness']:.3g}{'' if r['rankable'] else ', not ranked'})" for r in rows],
        fontsize=8,
    )
    held = [j for j, (k, _, _) in enumerate(cols) if k == "held_out"]
    if held and held[0] > 0:
        ax.axvline(held[0] - 0.5, color="black", linewidth=2)
    what = (
        "measured speedup over torch.matmul"
        if data.kind == "measured"
        else "MODELLED fraction of dense peak (cell: modelled TFLOP/s); not measured"
    )
    ax.set_title(
        f"Per-shape {what}\non {data.backend}; rows: top kernels (fitness); held-out shapes right of the bar",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label="speedup (x)" if data.kind == "measured" else "fraction of peak")
    return png(fig)


def status_timeline(data: ReportData) -> bytes | None:
    """Cumulative verdicts per status against wall time (stacked)."""
    if not data.points:
        return None
    xs = _minutes(data)
    statuses = sorted({p.status for p in data.points}, key=lambda s: (s != "ok", s))
    running = dict.fromkeys(statuses, 0)
    series: dict[str, list[int]] = {s: [] for s in statuses}
    for p in data.points:
        running[p.status] += 1
        for s in statuses:
            series[s].append(running[s])
    fig = Figure(figsize=(11, 3.2))
    ax = fig.subplots()
    ax.stackplot(
        xs,
        *[series[s] for s in statuses],
        labels=[f"{s} ({running[s]})" for s in statuses],
        colors=[STATUS_COLOURS.get(s, "#bbbbbb") for s in statuses],
        step="post",
    )
    ax.set_xlabel("wall time since the run started (minutes)")
    ax.set_ylabel("evaluations (cumulative)")
    ax.set_title(f"Verdicts over time on {data.backend}")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return png(fig)


def lineage_tree(data: ReportData) -> bytes | None:
    """The winner's ancestry: one row per generation (seeds at the top), edges from parent to child,
    nodes coloured by fitness on the report's backend; the winner is outlined in red."""
    if not data.lineage:
        return None
    by_gen: dict[int, list] = defaultdict(list)
    for node in data.lineage:
        by_gen[node.generation].append(node)
    pos: dict[int, tuple[float, float]] = {}
    width = max(len(v) for v in by_gen.values())
    gens = sorted(by_gen)
    row = {g: r for r, g in enumerate(gens)}  # one row per generation present: no empty rows for skipped ones
    for gen, nodes in by_gen.items():
        nodes.sort(key=lambda n: n.id)
        for i, node in enumerate(nodes):
            pos[node.id] = ((i + 1) * (width + 1) / (len(nodes) + 1), -row[gen])
    fig = Figure(figsize=(min(16.0, max(6.0, 1.3 * width + 2)), min(30.0, max(3.0, 0.9 * len(gens) + 1.5))))
    ax = fig.subplots()
    for node in data.lineage:
        for parent in node.parent_ids:
            if parent in pos:
                (x0, y0), (x1, y1) = pos[parent], pos[node.id]
                ax.annotate(
                    "",
                    xy=(x1, y1),
                    xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "color": "#555555", "shrinkA": 12, "shrinkB": 12},
                )
    fits = [n.fitness for n in data.lineage]
    winner = data.lineage[0].id
    xs = [pos[n.id][0] for n in data.lineage]
    ys = [pos[n.id][1] for n in data.lineage]
    points = ax.scatter(
        xs,
        ys,
        c=fits,
        cmap="viridis",
        s=420,
        zorder=3,
        edgecolors=["#d62728" if n.id == winner else "black" for n in data.lineage],
        linewidths=[3 if n.id == winner else 0.8 for n in data.lineage],
    )
    small = len(data.lineage) > 40
    for n in data.lineage:
        label = f"#{n.id}" if small else f"#{n.id}\n{n.fitness:.3g}"
        ax.annotate(
            label,
            pos[n.id],
            xytext=(13, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=6 if small else 8,
        )
    ax.set_yticks([-row[g] for g in gens])
    ax.set_yticklabels([f"gen {g}" for g in gens], fontsize=8)
    ax.set_xticks([])
    ax.set_xlim(0, width + 1)
    ax.set_ylim(-len(gens) + 0.3, 0.7)
    fig.colorbar(points, ax=ax, label=_wrap(data.unit, 40))
    cut = " (cut: older ancestors not drawn)" if data.lineage_cut else ""
    ax.set_title(f"Lineage of the winner #{winner} ({len(data.lineage)} candidates){cut}")
    return png(fig)


def proposer_chart(data: ReportData) -> bytes | None:
    """Proposals, accepted and improved per proposer (summed over islands); beside it each bandit's arms
    (mean reward, pulls) when the run kept bandit state."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in data.proposer_stats:
        t = totals[row["proposer"]]
        t[0] += row["proposals"]
        t[1] += row["accepted"]
        t[2] += row["improved"]
    arms = [(key, a) for key, state in sorted(data.bandits.items()) for a in state.get("arms", [])]
    if not totals and not arms:
        return None
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2 if totals and arms else 1, squeeze=False)[0]
    if totals:
        ax = axes[0]
        names = sorted(totals)
        for k, (label, colour) in enumerate(
            (("proposals", "#aec7e8"), ("accepted", "#1f77b4"), ("improved", "#2ca02c"))
        ):
            ax.bar(
                [i + (k - 1) * 0.27 for i in range(len(names))],
                [totals[n][k] for n in names],
                width=0.27,
                label=label,
                color=colour,
            )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([_wrap(n, 18) for n in names], fontsize=8)
        ax.set_title("Proposers (all islands)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    if arms:
        ax = axes[-1]
        labels = [_wrap(f"{a['arm']} [{key}]", 22) for key, a in arms]
        means = [float(a.get("mean") or 0.0) for _, a in arms]
        bars = ax.barh(range(len(arms)), means, height=0.6, color="#ff7f0e")
        for bar, (_, a) in zip(bars, arms, strict=True):
            ax.annotate(
                f" {a.get('pulls', 0)} pulls",
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                va="center",
                fontsize=7,
            )
        ax.set_yticks(range(len(arms)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel("mean reward")
        ax.set_title("Bandit arms")
        ax.grid(alpha=0.3, axis="x")
    return png(fig)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(lines + [line])
