"""Model-vs-measured table: the data the performance model is calibrated and judged on.

`evaluators/gpu_check.py` fills it on a GPU: every (kernel, config, shape, layout) gets a
measured time (the judge's protocol or `triton.testing.do_bench`) next to the time the
offline model (evaluators/model/perf_model.py) predicts from the offline compile facts and the
launch grids. Nothing here needs torch or a GPU.

JSON format (`write_table` -> calibration.json; SCHEMA names the version):

    schema            "triton-evolve/calibration/1"
    created           UTC time, ISO 8601
    gpu               {"device_name": torch.cuda.get_device_name() or null (dry run),
                       "model_gpu": key of constants.GPUS the model ran for, "model_note": caveat or ""}
    task              {"name", "dtype", "allow_tf32", "source"} of the task the shapes come from
    mode              "full" | "quick" | "dry-run"
    provenance        evaluators.provenance (torch, triton, python, triton_evolve, device; gpu, cuda, driver
                      on a GPU) and numpy
    steps             [{"name", "status": ok|failed|skipped (time)|not run (dry run), "seconds", "detail"}]
    seed_evaluation   the judge's verdict on the seed: {"status", "fitness", "fitness_kind", "backend",
                      "feedback"} (fitness = geometric-mean speedup over torch.matmul when measured)
    rows              one per (kernel, config, shape, layout, protocol):
      kernel            "seed" | "tutorial03" | "torch.matmul"
      config            short config label ("128x256x64 g8 w8 s3"), null for the seed / torch
      config_index      index into kernels/baselines/tutorial_matmul.py CONFIGS, else null
      shape, layout     [M, N, K]; "nn" | "nt" | "tn"
      flops             2*M*N*K
      protocol          "judge" (evaluators.evaluate on cuda: its timing protocol, evaluators/timing.py),
                        "do_bench" (triton.testing.do_bench: median of single calls between CUDA events,
                        L2 cleared before each; a call includes its launch, so tiny decode shapes carry
                        launch overhead) or null (not measured)
      measured_time_s   median seconds; measured_p20_s / measured_p80_s (do_bench) or measured_iqr_s (judge)
      measured_tflops   flops / measured_time_s / 1e12
      speedup_vs_torch  torch.matmul time / this time, same protocol and shape (null for torch itself)
      modelled_time_s, modelled_tflops, modelled_fraction_of_peak, modelled_bound ("compute" | "memory" |
                        "latency" | "invalid"), modelled_limiter (the largest model term)
      ratio             measured_tflops / modelled_tflops (>1: the model is pessimistic); null if either is
      status            "ok", or why a figure is missing ("not measured: time budget", "incorrect: ...")
      facts             the compile facts the model used (tile, num_warps, num_stages, shared, regs,
                        spill_bytes, uses_wgmma, uses_tma) for the first launch, or null
    correlations      rank agreement of modelled and measured TFLOP/s over rows with protocol "do_bench"
                      (one protocol, so rows are comparable) and both figures:
      overall           {"pairs", "spearman", "kendall_tau"} across all shapes and kernels
      by_shape          [{"shape", "layout", "pairs", "spearman", "kendall_tau"}]: within one problem,
                        how well the model orders kernels/configs (what the search relies on)
      within_shape_mean {"spearman", "kendall_tau"}: means of the defined by_shape values
    A correlation is null with fewer than 3 pairs or a constant side.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

SCHEMA = "triton-evolve/calibration/1"


# ---------------------------------------------------------------- rank correlations


def ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the average of the ranks they span."""
    first: dict[float, int] = {}
    last: dict[float, int] = {}
    for i, v in enumerate(sorted(xs)):
        first.setdefault(v, i)
        last[v] = i
    return [(first[v] + last[v]) / 2 + 1 for v in xs]


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None with < 3 pairs or a constant side.

    Raises ValueError when the two sequences differ in length."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs equal lengths, got {len(xs)} and {len(ys)}")
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if vx == 0 or vy == 0 else cov / (vx * vy) ** 0.5


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Kendall's tau-b (tie-corrected); None with < 3 pairs or a constant side.

    Raises ValueError when the two sequences differ in length."""
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"kendall_tau needs equal lengths, got {n} and {len(ys)}")
    if n < 3:
        return None
    pairs = [(xs[i] - xs[j], ys[i] - ys[j]) for i in range(n) for j in range(i + 1, n)]
    score = sum(((dx > 0) - (dx < 0)) * ((dy > 0) - (dy < 0)) for dx, dy in pairs)  # concordant - discordant
    untied = sum(dx != 0 for dx, _ in pairs) * sum(dy != 0 for _, dy in pairs)
    return None if untied == 0 else score / untied**0.5


# ---------------------------------------------------------------- which model table for this GPU


@dataclasses.dataclass(frozen=True)
class ModelGpu:
    """The perf-model table chosen for a device name, and what differs from that table."""

    key: str  # a key of evaluators.model.constants.GPUS
    note: str  # "" when the table describes this part; else the known difference


# (pattern on the upper-cased device name, model key, note). Word boundaries keep "GH200" (a
# Grace Hopper superchip, other memory) from matching H200. Parts: NVIDIA datasheets.
_GPU_RULES: tuple[tuple[str, str, str], ...] = (
    (r"\bH200\b.*\bNVL\b", "h200", "H200 NVL: lower power limit (600 W) than the SXM part the table models"),
    (r"\bH200\b", "h200", ""),
    (
        r"\bH100\b.*\bPCIE\b",
        "h100",
        "H100 PCIe: 114 SMs and lower clocks than the SXM5 part the table models",
    ),
    (r"\bH100\b.*\bNVL\b", "h100_nvl", ""),
    (r"\bH100\b", "h100", ""),
    (r"\bA100\b.*\bPCIE\b", "a100", "A100 PCIe: lower power limit than the SXM4 part the table models"),
    (r"\bA100\b", "a100", ""),
)


def model_gpu_for(device_name: str) -> ModelGpu:
    """The constants.GPUS entry for `torch.cuda.get_device_name()`, e.g. "NVIDIA H200" -> h200.

    Raises ValueError naming the device and the known tables when none fits (pass the key
    explicitly then, e.g. `--model-gpu h100`)."""
    upper = device_name.upper()
    for pattern, key, note in _GPU_RULES:
        if re.search(pattern, upper):
            return ModelGpu(key, note)
    known = sorted({key for _, key, _ in _GPU_RULES})
    raise ValueError(
        f"GPU {device_name!r} has no performance-model table (known: {', '.join(known)}); "
        "pass --model-gpu NAME to model it as one of them"
    )


# ---------------------------------------------------------------- modelling from compile facts


@dataclasses.dataclass(frozen=True)
class Modelled:
    """The model's figures for one entry-point call on one (shape, layout)."""

    time_s: float
    tflops: float
    fraction_of_peak: float
    bound: str
    limiter: str | None
    facts: dict | None  # compile facts of the first launch (what the model saw)


FACT_KEYS = ("tile", "num_warps", "num_stages", "shared", "regs", "spill_bytes", "uses_wgmma", "uses_tma")


def model_launches(
    kernels: dict, launches: list[dict], dtype: str, allow_tf32: bool, gpu_key: str
) -> dict[tuple[tuple[int, int, int], str], Modelled]:
    """Model every (shape, layout) the offline compile captured, as the judge's `model()` does.

    kernels: spec key -> compile facts; launches: [{"shape", "layout", "calls": [{"key", "grid"}]}]
    (the compile child's reply, evaluators/child.py `compile_offline`). Raises KeyError for a
    call whose key has no facts and for an unknown gpu_key."""
    from .constants import GPUS
    from .launch import launch_from_facts
    from .perf_model import estimate_shape

    gpu = GPUS[gpu_key]
    out = {}
    for entry in launches:
        shape = tuple(int(x) for x in entry["shape"])
        calls = [launch_from_facts(kernels[c["key"]], c["grid"]) for c in entry["calls"]]
        est = estimate_shape(calls, shape, dtype, gpu, allow_tf32)
        first = kernels[entry["calls"][0]["key"]] if entry["calls"] else None
        facts = None
        if first is not None:
            facts = {k: first.get(k) for k in FACT_KEYS if k != "tile"}
            facts["tile"] = list(calls[0].tile) if calls[0].tile else None
        out[(shape, entry["layout"])] = Modelled(
            est.time_s,
            est.tflops,
            est.fraction_of_peak,
            est.bound,
            est.breakdown.get("limiter"),
            facts,
        )
    return out


# ---------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One measured (kernel, config, shape, layout) under one protocol; times in seconds."""

    kernel: str
    shape: tuple[int, int, int]
    layout: str
    protocol: str  # "judge" or "do_bench"
    time_s: float | None  # None when not measured (status says why)
    config: str | None = None
    config_index: int | None = None
    p20_s: float | None = None
    p80_s: float | None = None
    iqr_s: float | None = None
    torch_time_s: float | None = None  # torch.matmul on the same shape, same protocol
    status: str = "ok"


def flops(shape: Sequence[int]) -> float:
    """2*M*N*K: the multiply-adds of one (M, K) @ (K, N) product, counted as two operations."""
    m, n, k = shape
    return 2.0 * m * n * k


def _tflops(shape, time_s: float | None) -> float | None:
    return flops(shape) / time_s / 1e12 if time_s and time_s > 0 and math.isfinite(time_s) else None


def build_rows(
    measurements: Sequence[Measurement],
    modelled: dict[tuple[str, int | None, tuple[int, int, int], str], Modelled],
) -> list[dict]:
    """Join measurements with the model's figures (JSON rows, fields in the module docstring).

    modelled is keyed by (kernel, config_index, shape, layout). A modelled key with no
    measurement still gets a row (protocol null, status "not measured")."""
    rows, seen = [], set()
    for m in measurements:
        key = (m.kernel, m.config_index, tuple(m.shape), m.layout)
        seen.add(key)
        rows.append(_row(m.kernel, m.config, m.config_index, m.shape, m.layout, m, modelled.get(key)))
    for key, mod in modelled.items():
        if key not in seen:
            kernel, index, shape, layout = key
            rows.append(_row(kernel, None, index, shape, layout, None, mod, "not measured"))
    return rows


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None  # an invalid kernel models as inf seconds


def _row(kernel, config, index, shape, layout, m: Measurement | None, mod: Modelled | None, status=None):
    measured = _tflops(shape, m.time_s) if m else None
    ratio = measured / mod.tflops if measured and mod and mod.tflops > 0 else None
    speedup = None
    if m and m.time_s and m.torch_time_s and kernel != "torch.matmul":
        speedup = m.torch_time_s / m.time_s
    return {
        "kernel": kernel,
        "config": config,
        "config_index": index,
        "shape": [int(x) for x in shape],
        "layout": layout,
        "flops": flops(shape),
        "protocol": m.protocol if m else None,
        "measured_time_s": m.time_s if m else None,
        "measured_p20_s": m.p20_s if m else None,
        "measured_p80_s": m.p80_s if m else None,
        "measured_iqr_s": m.iqr_s if m else None,
        "measured_tflops": measured,
        "speedup_vs_torch": speedup,
        "modelled_time_s": _finite(mod.time_s) if mod else None,
        "modelled_tflops": mod.tflops if mod else None,
        "modelled_fraction_of_peak": mod.fraction_of_peak if mod else None,
        "modelled_bound": mod.bound if mod else None,
        "modelled_limiter": mod.limiter if mod else None,
        "ratio": ratio,
        "status": status or (m.status if m else "not measured"),
        "facts": mod.facts if mod else None,
    }


def correlations(rows: Sequence[dict], protocol: str = "do_bench") -> dict:
    """Spearman and Kendall tau of modelled vs measured TFLOP/s, overall and within each (shape, layout).

    Only rows of one `protocol` with both figures (and a finite, positive model) count."""
    usable = [
        r
        for r in rows
        if r["protocol"] == protocol
        and r["measured_tflops"] is not None
        and r["modelled_tflops"] is not None
        and r["modelled_tflops"] > 0
    ]

    def corr(group: list[dict]) -> dict:
        xs = [r["modelled_tflops"] for r in group]
        ys = [r["measured_tflops"] for r in group]
        return {"pairs": len(group), "spearman": spearman(xs, ys), "kendall_tau": kendall_tau(xs, ys)}

    groups: dict[tuple, list[dict]] = {}
    for r in usable:
        groups.setdefault((tuple(r["shape"]), r["layout"]), []).append(r)
    by_shape = [{"shape": list(s), "layout": lay, **corr(g)} for (s, lay), g in groups.items()]

    def mean(name: str) -> float | None:
        values = [g[name] for g in by_shape if g[name] is not None]
        return sum(values) / len(values) if values else None

    return {
        "protocol": protocol,
        "overall": corr(usable),
        "by_shape": by_shape,
        "within_shape_mean": {"spearman": mean("spearman"), "kendall_tau": mean("kendall_tau")},
    }


def table(meta: dict, rows: list[dict]) -> dict:
    """The whole JSON document: `meta` (gpu, task, mode, provenance, steps, seed_evaluation) + rows."""
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {"schema": SCHEMA, "created": created, **meta, "rows": rows, "correlations": correlations(rows)}


# ---------------------------------------------------------------- markdown and files


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def markdown(doc: dict) -> str:
    """The table as markdown: header, steps, seed verdict, correlations, then rows by shape."""
    gpu = doc.get("gpu") or {}
    name = gpu.get("device_name") or "no GPU (dry run: nothing measured)"
    lines = [
        f"# gpu-check: {name}, modelled as `{gpu.get('model_gpu')}`",
        "",
        f"{doc['created']} · mode `{doc.get('mode')}` · task `{(doc.get('task') or {}).get('name')}` · "
        + " · ".join(f"{k} {v}" for k, v in (doc.get("provenance") or {}).items() if v is not None),
    ]
    if gpu.get("model_note"):
        lines += ["", f"Model caveat: {gpu['model_note']}"]
    lines += ["", "## Steps", "", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for s in doc.get("steps", []):
        detail = str(s.get("detail", "")).replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {detail} |")
    ev = doc.get("seed_evaluation")
    if ev:
        lines += [
            "",
            "## Seed, judged on the GPU",
            "",
            f"status `{ev.get('status')}`, backend `{ev.get('backend')}`, fitness {ev.get('fitness', 0):.4f} "
            f"({ev.get('fitness_kind')}: geometric-mean speedup over torch.matmul when measured)",
        ]
        if ev.get("feedback"):
            lines.append(f"> {str(ev['feedback'])[:500]}")
    corr = doc["correlations"]
    lines += [
        "",
        f"## Rank correlation, modelled vs measured TFLOP/s ({corr['protocol']} rows)",
        "",
        "| scope | pairs | Spearman | Kendall tau |",
        "|---|---|---|---|",
        f"| overall | {corr['overall']['pairs']} | {_signed(corr['overall']['spearman'])} | "
        f"{_signed(corr['overall']['kendall_tau'])} |",
        f"| mean within a shape | - | {_signed(corr['within_shape_mean']['spearman'])} | "
        f"{_signed(corr['within_shape_mean']['kendall_tau'])} |",
    ]
    for g in corr["by_shape"]:
        shape = "x".join(map(str, g["shape"]))
        sp, kt = _signed(g["spearman"]), _signed(g["kendall_tau"])
        lines.append(f"| {shape} {g['layout']} | {g['pairs']} | {sp} | {kt} |")
    lines += [
        "",
        "## Model vs measured (TFLOP/s; ratio = measured / modelled)",
        "",
        "| shape | layout | kernel | config | protocol | measured | modelled | ratio | bound | "
        "speedup vs torch | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        doc["rows"], key=lambda r: (r["shape"], r["layout"], r["kernel"], r["config_index"] or 0)
    ):
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {r['layout']} | {r['kernel']} | {r['config'] or '-'} | "
            f"{r['protocol'] or '-'} | {_f(r['measured_tflops'])} | {_f(r['modelled_tflops'])} | "
            f"{_f(r['ratio'], 2)} | {r['modelled_bound'] or '-'} | {_f(r['speedup_vs_torch'], 2)} | "
            f"{str(r['status']).replace('|', '/')[:120]} |"
        )
    return "\n".join(lines) + "\n"


def write_table(doc: dict, folder: Path) -> tuple[Path, Path]:
    """Write calibration.json (non-finite figures as null) and calibration.md into `folder`
    (created); return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "calibration.json", folder / "calibration.md"
    json_path.write_text(json.dumps(_json_safe(doc), indent=1, sort_keys=True, allow_nan=False) + "\n")
    md_path.write_text(markdown(doc))
    return json_path, md_path


def _json_safe(value):
    """Non-finite floats become null (JSON has no inf/NaN); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def read_table(path: Path) -> dict:
    """A calibration.json written by `write_table`; ValueError if its schema is not SCHEMA."""
    doc = json.loads(Path(path).read_text())
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {doc.get('schema')!r}, expected {SCHEMA!r}")
    return doc
