"""fitted.json (evaluators/model/fit.py) as markdown: constants, per-class and overall figures, the
per-row table (published, modelled with the defaults, in sample and out of sample), ceilings."""

from __future__ import annotations


def _f(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:+.0f}%"


def _abs_pct(x) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def markdown(doc: dict) -> str:
    """The fit's document as markdown (written to fit.md beside fitted.json)."""
    lines = [
        "# Model calibration (out of sample: leave-one-out over the fitted rows)",
        "",
        f"{doc['created']} · `{doc['command']}` · triton {doc['triton']} · facts compiled for sm_90",
        "",
        "## Constants",
        "",
        "| constant | default | fitted | bounds |",
        "|---|---|---|---|",
    ]
    for name, value in doc["constants"].items():
        lo, hi = doc["free"][name]
        at = " (at its bound)" if value in (lo, hi) else ""
        lines.append(f"| {name} | {doc['defaults'][name]:.4g} | {value:.4g}{at} | {lo:g} .. {hi:g} |")
    loss = doc["loss"]
    lines += [
        "",
        f"Weighted mean squared log error: {_f(loss['default'], 4)} (defaults) -> {_f(loss['fitted'], 4)} (fitted).",
    ]
    o, t = doc["overall"], doc["targets"]
    lines += [
        "",
        "## Figures per class",
        "",
        "| class | rows | error (p80, out of sample) | ratio error (same-shape pairs, p80) | max error | within ±35% | Spearman "
        "| source-adjusted: error (p80) | max | within ±35% | Spearman |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in [*doc["classes"].items(), ("all", o)]:
        adjusted = (
            f"{_abs_pct(c.get('error_adjusted'))} | {_abs_pct(c.get('max_error_adjusted'))} | "
            f"{c.get('within_35_adjusted', 0)}/{c['rows']} | {_f(c.get('spearman_adjusted'), 2)}"
            if doc.get("source_factors") else "- | - | - | -"
        )  # fmt: skip
        lines.append(
            f"| {name} | {c['rows']} | {_abs_pct(c['error'])} | {_abs_pct(c['ratio_error'])} | {_abs_pct(c['max_error'])} | "
            f"{c['within_35']}/{c['rows']} | {_f(c['spearman'], 2)} | {adjusted} |"
        )
    lines += ["", "Error: the model's figure against the published one (what the judge quotes per class). Source-adjusted: "
              "the same figure times its source's factor, fitted on the other rows (evaluators/model/sources.py): how "
              "well the model predicts a row once the speed of its source's machine and harness is known."]  # fmt: skip
    if doc.get("sources"):
        lines += ["", "## Sources (factor: published / modelled over a source's rows, in sample; 1 = on the model)", "",
                  "| source | fitted rows | factor |", "|---|---|---|"]  # fmt: skip
        lines += [
            f"| {x['source']} | {x['rows']} | {_f(x['factor'], 2)} |" for x in doc["sources"] if x["source"]
        ]
        lines += [
            "",
            "A source without a factor has fewer than two fitted rows: its rows are fitted as published.",
        ]
    lines += ["", "Within one shape (sources that give several kernels or configs for one shape):", ""]
    lines += [
        f"- {w['group']}: {w['rows']} rows, Spearman {_f(w['spearman'], 2)}" for w in doc["within_shape"]
    ] or ["- none"]
    lines += [
        "",
        "Targets (out of sample): each figure within ±35%: "
        f"{'met' if t['each_within_35'] else 'not met'} ({o['within_35']}/{o['rows']}; source-adjusted: "
        f"{o.get('within_35_adjusted', 0) if doc.get('source_factors') else '-'}/{o['rows']}); Spearman >= 0.85 over all rows: "
        f"{'met' if t['spearman_all_0.85'] else 'not met'} ({_f(o['spearman'], 2)}; in sample {_f(o.get('spearman_in_sample'), 2)}); "
        f"Spearman >= 0.8 within a shape: {'met' if t['spearman_within_shape_0.8'] else 'not met'}.",
        "",
        "## Rows (TFLOP/s; error = modelled / published - 1)",
        "",
        "| id | class | published | default | in sample | out of sample | error | source factor | adjusted error | source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        out = _f(r["out_of_sample"]) if r["fitted"] else f"excluded: {r['excluded']}"
        err = _pct(r["error"]) if r["fitted"] else _pct(r["error_in_sample"]) + " (in sample)"
        lines.append(
            f"| {r['id']} | {r['class']} | {_f(r['published'])} | {_f(r['modelled_default'])} | {_f(r['in_sample'])} | "
            f"{out} | {err} | {_f(r.get('source_factor'), 2)} | {_pct(r.get('error_adjusted'))} | {r['source']} |"
        )
    if doc.get("ceilings"):
        lines += ["", "## Ceilings (vendor libraries in the same sources: cuBLAS, CUTLASS; never fitted)", "", "| gpu | dtype | shape | library | TFLOP/s | source |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for c in doc["ceilings"]:
            lines.append(
                f"| {c['gpu']} | {c['dtype']} | {'x'.join(map(str, c['shape']))} | {c['library']} | {_f(c['tflops'])} | {c['source']} |"
            )
    return "\n".join(lines) + "\n"
