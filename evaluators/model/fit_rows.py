"""Compile facts of the calibration rows, cached, and one predictor per row for the fit.

Each row's kernel file is rendered with its settings (module-level `NAME = value` lines rewritten;
an `autotune` row once per index of the module's CONFIGS), grouped with the other rows of the same
rendered source, dtype and layout, and compiled offline for sm_90 by the judge's compile child
(evaluators/measure.py CompileChild) on all their shapes at once. The reply (facts without the
TTIR text, launch grids) is cached in .cache/model-fit/<key>.json, the key hashing the source, the
task, the Triton version and the judge code that finds the facts, so a rerun compiles nothing.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .constants import GPUS, Constants
from .figures import ROOT, Row
from .launch import launch_from_facts
from .perf_model import estimate_shape

CACHE_DIR = ROOT / ".cache" / "model-fit"
COMPILE_TIMEOUT_S = 600.0


class CompileFailed(RuntimeError):
    """A row's kernel did not compile or capture; the message names the row and the fix."""


def triton_version() -> str:
    """The installed Triton's version (part of the cache key: facts change with the compiler)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("triton")
    except PackageNotFoundError:  # pragma: no cover - the venv always has it
        return "unknown"


def render(source: str, settings: dict, where: str = "kernel") -> str:
    """`source` with each `NAME = ...` module-level line replaced by `NAME = repr(value)`.

    Raises ValueError naming `where` and the setting when the source has not exactly one such line
    or the value is not a str, int, float or bool."""
    for name, value in settings.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"{where}: setting {name} = {value!r} must be a string, number or boolean")
        pattern = re.compile(rf"^{re.escape(name)} = .*$", re.MULTILINE)
        found = pattern.findall(source)
        if len(found) != 1:
            raise ValueError(f"{where}: needs exactly one '{name} = ...' line to set it, found {len(found)}")
        line = f"{name} = {value!r}"
        source = pattern.sub(lambda _, line=line: line, source)
    return source


def config_count(source: str, where: str = "kernel") -> int:
    """len(CONFIGS) of a kernel module (a literal list), for autotune rows; ValueError without one."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CONFIGS" for t in node.targets):
            return len(ast.literal_eval(node.value))
    raise ValueError(f"{where}: an autotune row needs a literal CONFIGS list in the kernel module")


def variants(row: Row, source: str) -> list[str]:
    """The rendered sources of a row: one, or one per config index for an autotune row."""
    if row.autotune is None:
        return [render(source, row.settings, row.kernel)]
    n = config_count(source, row.kernel)
    return [render(source, {**row.settings, row.autotune: i}, row.kernel) for i in range(n)]


def _task(dtype: str, layout: str, shapes: Sequence[tuple[int, int, int]]) -> dict:
    # fp8 rows: the kernel module casts its fp16 inputs (tasks have no fp8 dtype).
    return {"name": "calibration", "op": "matmul", "dtype": "fp16" if dtype == "fp8" else dtype,
            "allow_tf32": False, "layouts": [layout], "target": "sm_90", "train": [list(s) for s in shapes],
            "held_out": [], "check": [], "trials": 1, "source": "evaluators/model/figures.toml",
            "stage": "provisional"}  # fmt: skip


@functools.cache
def facts_code() -> str:
    """A hash of the judge code that produces compile facts (evaluators/*.py, the model's package
    apart): a cache entry made by other fact-finding code (a fixed regex, a new fact) is not reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parents[1].glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _key(source: str, task: dict) -> str:
    text = json.dumps({"source": source, "task": task, "triton": triton_version(), "facts_code": facts_code()},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _slim(reply: dict) -> dict:
    """What the model needs of a compile reply: facts without the TTIR text, and the grids."""
    kernels = {
        k: {f: v for f, v in facts.items() if f not in ("ttir", "asm")}
        for k, facts in reply["kernels"].items()
    }
    launches = [{"shape": e["shape"], "layout": e["layout"], "calls": e["calls"]} for e in reply["launches"]]
    return {"kernels": kernels, "launches": launches}


def compile_groups(
    jobs: dict[str, tuple[str, dict]], workers: int, use_cache: bool, log: Callable[[str], None]
) -> dict[str, dict]:
    """{key: slim reply} for {key: (source, task)}: from the cache, or compiled `workers` at a time."""
    from ..measure import CompileChild

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    out, todo = {}, []
    for key, job in jobs.items():
        path = CACHE_DIR / f"{key}.json"
        if use_cache and path.is_file():
            out[key] = json.loads(path.read_text())
        else:
            todo.append((key, job))
    if todo:
        log(f"compiling {len(todo)} kernel source(s) for sm_90 ({len(jobs) - len(todo)} cached)")
    for start in range(0, len(todo), max(1, workers)):
        batch = todo[start : start + max(1, workers)]
        children = [(key, CompileChild(src, task)) for key, (src, task) in batch]
        try:
            deadline = time.monotonic() + COMPILE_TIMEOUT_S
            for _, child in children:
                child.send(deadline)
            for key, child in children:
                try:
                    reply = _slim(child.result(deadline))
                except Exception as e:  # noqa: BLE001 - reported with the job's rows
                    raise CompileFailed(f"{jobs[key][1]['train']} ({key}): {type(e).__name__}: {e}") from e
                (CACHE_DIR / f"{key}.json").write_text(json.dumps(reply))
                out[key] = reply
        finally:
            for _, child in children:
                child.close()
    return out


def _launches(reply: dict, shape: tuple[int, int, int], layout: str, where: str) -> list:
    for entry in reply["launches"]:
        if tuple(entry["shape"]) == tuple(shape) and entry["layout"] == layout:
            calls = []
            for call in entry["calls"]:
                if "key" not in call:
                    raise CompileFailed(f"{where}: an @triton.autotune launch; use an `autotune` row instead")
                calls.append(launch_from_facts(reply["kernels"][call["key"]], call["grid"]))
            return calls
    raise CompileFailed(f"{where}: the compile captured no launch for {shape} {layout}")


def prepare(
    rows: Sequence[Row], jobs: int = 1, use_cache: bool = True, log: Callable[[str], None] = print
) -> list[Callable[[Constants], float]]:
    """One predictor per row: constants -> modelled TFLOP/s (the best config of an autotune row).
    Raises CompileFailed naming the row when its kernel does not render, compile or capture."""
    groups: dict[str, tuple[str, dict]] = {}
    plan: list[list[str]] = []
    shapes: dict[tuple, set] = {}
    for row in rows:
        try:
            sources = variants(row, (ROOT / row.kernel).read_text())
        except (OSError, ValueError, SyntaxError) as e:
            raise CompileFailed(f"row {row.id}: {e}") from None
        plan.append(sources)
        for src in sources:
            shapes.setdefault((src, row.dtype, row.layout), set()).add(tuple(row.shape))
    keys: dict[tuple, str] = {}
    for (src, dtype, layout), found in shapes.items():
        task = _task(dtype, layout, sorted(found))
        keys[(src, dtype, layout)] = _key(src, task)
        groups[keys[(src, dtype, layout)]] = (src, task)
    replies = compile_groups(groups, jobs, use_cache, log)
    predictors = []
    for row, sources in zip(rows, plan, strict=True):
        per_variant = [
            _launches(replies[keys[(s, row.dtype, row.layout)]], row.shape, row.layout, row.id)
            for s in sources
        ]
        predictors.append(_predictor(row, per_variant))
    return predictors


def _predictor(row: Row, per_variant: list[list]) -> Callable[[Constants], float]:
    gpu = GPUS[row.gpu]

    def predict(c: Constants) -> float:
        return max(
            estimate_shape(launches, row.shape, row.dtype, gpu, constants=c).tflops
            for launches in per_variant
        )

    return predict
