"""Fit the performance model's constants to the calibration table: `python -m evaluators.model.fit`
(`make calibrate`).

1. Rows: evaluators/model/figures.toml (published figures, each with its source) and, when
   `make gpu-check` has written them, benchmarks/results/*/calibration.json (measured, weighted most).
2. Facts: each row's kernel file, with its settings rewritten, is compiled offline for sm_90 by the
   judge's compile child (evaluators/measure.py CompileChild) on the row's shapes; the facts and
   launch grids are cached under .cache/model-fit/ (keyed by source, task and Triton version).
3. Fit: a few Constants (FREE, in log space, inside BOUNDS) minimise the weighted mean squared log
   error of modelled vs published TFLOP/s (Nelder-Mead, numpy only), starting from the defaults,
   each published source's figures scaled by its speed factor (evaluators/model/sources.py: its
   machine and harness; measured rows carry none), so the constants fit how shapes and kernels
   compare, not how fast each source's machine ran (`--no-source-factors` fits the figures as they are).
4. Judged out of sample: every fitted row is predicted by a fit on the other rows (leave-one-out),
   constants and its source's factor alike. Two errors per row: `error` (the model's figure against
   the published one: what the judge quotes per class) and `error_adjusted` (times its source's
   factor from the other rows: how well the model predicts a row once its source's level is known).
   fitted.json gets the constants, per-row results, per-class errors (the contract in
   evaluators/model/classes.py), the sources' factors and the overall figures; fit.md the same as tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import fit_rows
from .calibration import spearman
from .classes import CLASSES, shape_class
from .constants import FITTED_PATH, Constants
from .figures import FIGURES_PATH, RESULTS_DIR, ROOT, load_figures, measured_rows
from .sources import factor_of, row_sources, source_factors

SCHEMA = "triton-evolve/model-fit/1"
# Free constants by default: few against the rows (7 fitted rows in figures.toml today), and the
# ones the table's misses point at: the per-tile ramp (a tile's epilogue drain and a CTA's start),
# which small-K shapes pay once per k-loop of a few steps. wgmma_efficiency stays at its sourced
# default: freed, it absorbs the small-K rows' misses (no bounded ramp reaches them) and turns the
# large, compute-bound rows 22-35% pessimistic out of sample where they are otherwise within 15%
# (`--free wgmma_efficiency epilogue_latency` reproduces that fit).
FREE = ("epilogue_latency", "cta_start")
# Physically sensible ranges (log-space search stays inside them).
BOUNDS = {
    "wgmma_efficiency": (0.5, 1.0),  # fraction of the tensor-core clock peak one wgmma sustains
    "epilogue_latency": (100.0, 4000.0),  # cycles for a tile's last store to drain
    "cta_start": (200.0, 4000.0),  # cycles: CTA launch and set-up
    "issue_cycles": (4.0, 96.0),
    "issue_cycles_tma": (2.0, 48.0),
    "dram_latency": (400.0, 2000.0),  # ~250 ns - 1.1 us at 1.75 GHz
    "l2_latency": (150.0, 800.0),
    "launch_s": (1e-6, 2e-5),
    "hbm_efficiency": (0.7, 0.95),
    "l2_fit": (0.3, 0.95),
    "cuda_core_efficiency": (0.3, 1.0),
    "sm_port_bytes_per_clk": (16.0, 256.0),  # bytes per clock per SM from L2 / HBM
}
TARGET_ERROR, TARGET_SPEARMAN, TARGET_WITHIN_SHAPE = 0.35, 0.85, 0.8
QUANTILE = 80  # the class error quoted: 80th percentile of the out-of-sample relative errors


# ---------------------------------------------------------------- the fit (pure: no compile)

Predict = Callable[[Constants], float]  # modelled TFLOP/s of one row under constants


def _to_constants(u: np.ndarray, free: Sequence[str], base: Constants) -> Constants:
    values = {}
    for x, name in zip(np.clip(u, 0.0, 1.0), free, strict=True):
        lo, hi = BOUNDS[name]
        value = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo)))
        values[name] = float(f"{min(max(value, lo), hi):.6g}")  # 6 digits: a readable fitted.json
    return dataclasses.replace(base, **values)


def _to_unit(c: Constants, free: Sequence[str]) -> np.ndarray:
    out = []
    for name in free:
        lo, hi = BOUNDS[name]
        v = min(max(getattr(c, name), lo), hi)
        out.append((math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)))
    return np.array(out)


def _row_sources(sources: Sequence[str | None] | None, n: int) -> Sequence[str | None]:
    return [None] * n if sources is None else sources


def loss(
    predicts: Sequence[Predict], published: Sequence[float], weights: Sequence[float], c: Constants,
    sources: Sequence[str | None] | None = None,
) -> float:  # fmt: skip
    """Weighted mean squared log error; an unmodelled row (0 TFLOP/s) costs as a 100x miss. With
    `sources` (per row: its source, or None for a measured row), each source's figures are first
    scaled by its factor (evaluators/model/sources.py), so only how rows compare within a source
    is fitted."""
    modelled = [predict(c) for predict in predicts]
    srcs = _row_sources(sources, len(predicts))
    factors = source_factors(modelled, published, weights, srcs)
    total = 0.0
    for m, p, w, s in zip(modelled, published, weights, srcs, strict=True):
        ok = m > 0 and math.isfinite(m)
        total += w * (math.log(factor_of(s, factors) * m / p) if ok else math.log(100.0)) ** 2
    return total / max(sum(weights), 1e-30)


def nelder_mead(
    f: Callable[[np.ndarray], float], x0: np.ndarray, iters: int = 300, tol: float = 1e-7
) -> np.ndarray:
    """Minimise f over the unit box (points clipped into it) by Nelder-Mead from x0."""
    n = len(x0)
    simplex = [np.clip(x0, 0, 1)] + [np.clip(x0 + 0.15 * np.eye(n)[i], 0, 1) for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if abs(values[-1] - values[0]) < tol:
            break
        centre = np.mean(simplex[:-1], axis=0)
        reflected = np.clip(centre + (centre - simplex[-1]), 0, 1)
        fr = f(reflected)
        if fr < values[0]:
            expanded = np.clip(centre + 2 * (centre - simplex[-1]), 0, 1)
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = np.clip(centre + 0.5 * (simplex[-1] - centre), 0, 1)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best point
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[int(np.argmin(values))]


def fit_constants(
    predicts: Sequence[Predict], published: Sequence[float], weights: Sequence[float],
    free: Sequence[str] = FREE, base: Constants | None = None, sources: Sequence[str | None] | None = None,
) -> Constants:  # fmt: skip
    """The constants minimising `loss` over the rows (with per-source factors when `sources` is
    given), only `free` ones moving (inside BOUNDS), from `base` (default: Constants(), the unfitted
    defaults: a fit never starts from a previous one). Raises ValueError for a free name without
    bounds."""
    base = base or Constants()
    unknown = [name for name in free if name not in BOUNDS]
    if unknown:
        raise ValueError(f"no bounds for free constant(s) {unknown}; known: {sorted(BOUNDS)}")
    if not predicts or not free:
        return base
    best = nelder_mead(
        lambda u: loss(predicts, published, weights, _to_constants(u, free, base), sources),
        _to_unit(base, free),
    )
    return _to_constants(best, free, base)


def leave_one_out(
    predicts: Sequence[Predict], published: Sequence[float], weights: Sequence[float],
    free: Sequence[str] = FREE, sources: Sequence[str | None] | None = None,
) -> list[tuple[float, float] | None]:  # fmt: skip
    """Per row, (modelled TFLOP/s, its source's factor) under a fit on every other row (None with < 2
    rows): the held-out row enters neither the constants nor its source's factor (a source with no
    other row has factor 1: the figure is the model's alone)."""
    n = len(predicts)
    if n < 2:
        return [None] * n
    srcs = _row_sources(sources, n)
    out: list[tuple[float, float] | None] = []
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        kept = ([predicts[j] for j in keep], [published[j] for j in keep], [weights[j] for j in keep])
        kept_sources = [srcs[j] for j in keep]
        c = fit_constants(*kept, free, sources=kept_sources)  # all None without sources: no factors
        factors = source_factors([p(c) for p in kept[0]], kept[1], kept[2], kept_sources)
        out.append((predicts[i](c), factor_of(srcs[i], factors)))
    return out


# ---------------------------------------------------------------- figures over the results


def rel_error(modelled: float | None, published: float) -> float | None:
    """modelled / published - 1 (None when not modelled)."""
    return None if modelled is None or not modelled > 0 else modelled / published - 1


def _quantile(values: list[float]) -> float | None:
    return float(np.percentile(values, QUANTILE)) if values else None


def summarise(results: list[dict]) -> dict:
    """Per-class, within-shape and overall figures from per-row results (fields `class`, `group`,
    `published`, `out_of_sample`, `in_sample`, `fitted`)."""
    fitted = [r for r in results if r["fitted"] and r["out_of_sample"] is not None]

    def pairs_error(rows: list[dict]) -> float | None:
        errs = []
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r["group"], []).append(r)
        for g in groups.values():
            for i in range(len(g)):
                for j in range(i + 1, len(g)):
                    a, b = g[i], g[j]
                    modelled = a["out_of_sample"] / b["out_of_sample"]
                    errs.append(abs(modelled / (a["published"] / b["published"]) - 1))
        return _quantile(errs)

    def figures(rows: list[dict]) -> dict:
        errs = [abs(r["error"]) for r in rows]
        # the same figures once each row's source factor (fitted on the other rows) is applied
        adjusted = [r for r in rows if r.get("error_adjusted") is not None]
        errs_adj = [abs(r["error_adjusted"]) for r in adjusted]
        pub = [r["published"] for r in rows]
        return {
            "rows": len(rows),
            "error": _quantile(errs),
            "ratio_error": pairs_error(rows),
            "max_error": max(errs) if errs else None,
            "within_35": sum(e <= TARGET_ERROR for e in errs),
            "spearman": spearman([r["out_of_sample"] for r in rows], pub) if rows else None,
            "error_adjusted": _quantile(errs_adj),
            "max_error_adjusted": max(errs_adj) if errs_adj else None,
            "within_35_adjusted": sum(e <= TARGET_ERROR for e in errs_adj),
            "spearman_adjusted": spearman(
                [r["out_of_sample"] * r["source_factor"] for r in adjusted], [r["published"] for r in adjusted]
            ) if adjusted else None,
        }  # fmt: skip

    classes = {c: figures([r for r in fitted if r["class"] == c]) for c in CLASSES}
    groups: dict[str, list[dict]] = {}
    for r in fitted:
        groups.setdefault(r["group"], []).append(r)
    within = [
        {
            "group": g,
            "rows": len(rs),
            "spearman": spearman([r["out_of_sample"] for r in rs], [r["published"] for r in rs]),
        }
        for g, rs in groups.items()
        if len(rs) >= 3
    ]
    overall = figures(fitted)
    overall["spearman_in_sample"] = (
        spearman([r["in_sample"] for r in fitted], [r["published"] for r in fitted]) if fitted else None
    )
    targets = {
        "each_within_35": bool(fitted) and overall["within_35"] == len(fitted),
        "each_within_35_adjusted": bool(fitted) and overall["within_35_adjusted"] == len(fitted),
        "spearman_all_0.85": overall["spearman"] is not None and overall["spearman"] >= TARGET_SPEARMAN,
        "spearman_within_shape_0.8": bool(within)
        and all(w["spearman"] is not None and w["spearman"] >= TARGET_WITHIN_SHAPE for w in within),
    }
    return {"classes": classes, "within_shape": within, "overall": overall, "targets": targets}


# ---------------------------------------------------------------- command


def run(args: argparse.Namespace) -> dict:
    """Load rows, compile (cached), fit, leave-one-out; return the fitted.json document."""
    rows, ceilings = load_figures(Path(args.figures))
    extra_rows, extra_ceilings = measured_rows(Path(args.results))
    rows, ceilings = rows + extra_rows, ceilings + extra_ceilings
    t0 = time.monotonic()
    predictors = fit_rows.prepare(rows, jobs=args.jobs, use_cache=not args.no_cache, log=print)
    compile_s = time.monotonic() - t0
    free = tuple(args.free)
    use = [i for i, r in enumerate(rows) if not r.exclude]
    preds = [predictors[i] for i in use]
    pub = [rows[i].tflops for i in use]
    w = [rows[i].weight for i in use]
    defaults = Constants()
    # Per-source factors (evaluators/model/sources.py): published rows by their source; measured rows
    # (the judge's own protocol) carry none and anchor the model's level.
    sources = None if args.no_source_factors else row_sources([rows[i] for i in use])
    fitted = fit_constants(preds, pub, w, free, sources=sources)
    loo = leave_one_out(preds, pub, w, free, sources=sources)
    oos = dict(zip(use, loo, strict=True))
    in_sample = [predict(fitted) for predict in predictors]
    factors = source_factors([in_sample[i] for i in use], pub, w, sources or [None] * len(use))
    results = []
    for i, r in enumerate(rows):
        default = predictors[i](defaults)
        out, factor = oos.get(i) or (None, None)
        adjusted = None if sources is None or out is None else out * factor
        results.append({
            "id": r.id, "class": shape_class(r.shape), "group": f"{r.gpu} {r.dtype} {'x'.join(map(str, r.shape))} {r.layout}",
            "gpu": r.gpu, "dtype": r.dtype, "shape": list(r.shape), "layout": r.layout, "kernel": r.kernel,
            "settings": r.settings, "config": r.config, "kind": r.kind, "weight": r.weight, "source": r.source,
            "published": r.tflops, "modelled_default": default, "in_sample": in_sample[i], "out_of_sample": out,
            "error": rel_error(out, r.tflops), "error_in_sample": rel_error(in_sample[i], r.tflops),
            "error_default": rel_error(default, r.tflops), "fitted": not r.exclude, "excluded": r.exclude,
            "source_factor": None if sources is None else factor, "out_of_sample_adjusted": adjusted,
            "error_adjusted": rel_error(adjusted, r.tflops),
        })  # fmt: skip
    summary = summarise(results)
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m evaluators.model.fit", *args.argv]),
        "figures": str(Path(args.figures).resolve().relative_to(ROOT)) if Path(args.figures).resolve().is_relative_to(ROOT) else str(args.figures),
        "triton": fit_rows.triton_version(),
        "free": {name: list(BOUNDS[name]) for name in free},
        "constants": {name: getattr(fitted, name) for name in free},
        "defaults": {name: getattr(defaults, name) for name in free},
        "source_factors": sources is not None,
        "loss": {"default": loss(preds, pub, w, defaults, sources) if preds else None, "fitted": loss(preds, pub, w, fitted, sources) if preds else None},
        "sources": [{"source": x, "rows": (sources or []).count(x), "factor": factors.get(x)} for x in dict.fromkeys(sources or [])],
        "compile_s": round(compile_s, 1),
        "rows": results,
        "ceilings": [dataclasses.asdict(c) | {"shape": list(c.shape)} for c in ceilings],
        **summary,
    }  # fmt: skip


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluators.model.fit", description=__doc__.splitlines()[0])
    p.add_argument("--figures", default=str(FIGURES_PATH), help="calibration table (TOML)")
    p.add_argument("--results", default=str(RESULTS_DIR), help="folder of <run>/calibration.json tables")
    p.add_argument("--out", default=str(FITTED_PATH), help="fitted.json to write (fit.md beside it)")
    p.add_argument("--free", nargs="+", default=list(FREE), choices=sorted(BOUNDS), help="constants to fit")
    p.add_argument("--jobs", type=int, default=1, help="compile children at once (default 1: shared cores)")
    p.add_argument("--no-cache", action="store_true", help="recompile every row (ignore .cache/model-fit)")
    p.add_argument("--no-source-factors", action="store_true",
                   help="fit the published figures as they are, without a speed factor per source")  # fmt: skip
    args = p.parse_args(argv)
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fit and write fitted.json and fit.md; exit 1 with the message on a table error."""
    from .figures import FiguresError
    from .fit_report import markdown

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        doc = run(args)
    except (FiguresError, fit_rows.CompileFailed) as e:
        print(f"fit: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.write_text(json.dumps(doc, indent=1, allow_nan=False, default=str) + "\n")
    text = markdown(doc)
    out.with_name("fit.md").write_text(text)
    print(text)
    print(f"wrote {out} and {out.with_name('fit.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
