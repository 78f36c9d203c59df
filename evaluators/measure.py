"""How the calibration figures are produced: the baseline's configs, the offline compile and
model of each kernel, and a device-agnostic timing loop (evaluators/gpu_check.py drives them).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .model import calibration as cal

# ---------------------------------------------------------------- the baseline module


def load_module(path: Path, name: str):
    """Import a kernel module from its file (our own seed or baseline: trusted code)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_INDEX_LINE = re.compile(r"^CONFIG_INDEX = \d+(?=\s*(#|$))", re.MULTILINE)


def render_config(source: str, index: int, n_configs: int) -> str:
    """The baseline module with `CONFIG_INDEX = index`: a candidate whose matmul runs that config.

    Raises ValueError for an index outside [0, n_configs) or a source without exactly one
    `CONFIG_INDEX = <int>` line."""
    if not 0 <= index < n_configs:
        raise ValueError(f"config index {index} is outside 0..{n_configs - 1}")
    found = _INDEX_LINE.findall(source)
    if len(found) != 1:
        raise ValueError(
            f"the baseline source needs exactly one 'CONFIG_INDEX = <int>' line, found {len(found)}"
        )
    return _INDEX_LINE.sub(f"CONFIG_INDEX = {index}", source)


def config_label(config: dict) -> str:
    """'128x256x64 g8 w8 s3': BLOCK_M x BLOCK_N x BLOCK_K, GROUP_M, num_warps, num_stages."""
    c = config
    return (
        f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} g{c['GROUP_M']} w{c['num_warps']} s{c['num_stages']}"
    )


# ---------------------------------------------------------------- offline compile + model


class CompileChild:
    """The judge's offline compile of one source in a sandboxed compile child (evaluators/child.py
    `compile_offline`); the child starts on `send` and compiles while the next ones are started.

    No memory limit: only our own seed and baseline come here."""

    def __init__(self, source: str, task: dict) -> None:
        from . import sandbox

        self.source, self.task = source, {**task, "device": "cpu", "known_kernels": {}}
        self.box = sandbox.Sandbox("compile", None)

    def send(self, deadline: float) -> None:
        """Hand over the job once the child is ready (it compiles while the others do)."""
        self.box.wait_ready(deadline)
        self.box.send({"cmd": "job", "mode": "compile", "source": self.source, "task": self.task})

    def result(self, deadline: float) -> dict:
        """{"kernels": key -> facts, "launches": [{shape, layout, calls}]}; RuntimeError with the
        child's message when the compile failed, sandbox.ChildTimeout past `deadline`."""
        header, _ = self.box.read(deadline)
        while header.get("event") in ("captured", "compiled"):  # progress (evaluators/compile_watch.py)
            header, _ = self.box.read(deadline)
        if header.get("event") != "loaded":
            raise RuntimeError(f"offline compile failed in {header.get('stage')}: {header.get('message')}")
        # Training shapes only: held-out and check shapes are captured too, check ones not compiled.
        return {**header, "launches": [e for e in header["launches"] if e.get("kind", "train") == "train"]}

    def close(self) -> None:
        self.box.close()


def share_compile_cache(environ=os.environ) -> str:
    """Point this process's Triton at the compile children's cache (sandbox.worker_triton_cache),
    with the children's TRITON_* environment (some of it is in Triton's cache key), so the
    in-process JIT loads what the model step compiled offline for this GPU's target instead of
    compiling it again: same binder, options, target and environment give the same key.
    Returns the cache directory."""
    from . import sandbox

    for key, value in sandbox.scrubbed_env().items():
        if key.startswith("TRITON_"):
            environ[key] = value
    environ["TRITON_CACHE_DIR"] = sandbox.worker_triton_cache()
    return environ["TRITON_CACHE_DIR"]


@dataclasses.dataclass(frozen=True)
class CompileJob:
    kernel: str  # "seed" | "tutorial03"
    config_index: int | None
    source: str
    task: dict  # Task.to_dict() with the shapes/layouts to capture


def model_jobs(
    jobs: Sequence[CompileJob],
    gpu_key: str,
    deadline: float,
    workers: int,
    child: Callable[[str, dict], CompileChild] = CompileChild,
) -> tuple[dict, list[str]]:
    """Compile every job, `workers` children at a time, and model its launches on `gpu_key`.

    Children are separate processes, so one thread drives them all (no fork from a threaded
    process). Returns ({(kernel, config_index, shape, layout): calibration.Modelled},
    [one error line per failed job])."""
    modelled, errors = {}, []
    workers = max(1, workers)
    for start in range(0, len(jobs), workers):
        batch = []
        for job in jobs[start : start + workers]:
            try:
                batch.append((job, child(job.source, job.task)))
            except Exception as e:  # noqa: BLE001 - one bad job leaves the others' figures
                errors.append(_job_error(job, e))
        live = []
        for job, c in batch:
            try:
                c.send(deadline)
                live.append((job, c))
            except Exception as e:  # noqa: BLE001
                errors.append(_job_error(job, e))
                c.close()
        for job, c in live:
            try:
                reply = c.result(deadline)
                t = job.task
                found = cal.model_launches(
                    reply["kernels"], reply["launches"], t["dtype"], t["allow_tf32"], gpu_key
                )
                for (shape, layout), m in found.items():
                    modelled[(job.kernel, job.config_index, shape, layout)] = m
            except Exception as e:  # noqa: BLE001
                errors.append(_job_error(job, e))
            finally:
                c.close()
    return modelled, errors


def _job_error(job: CompileJob, e: Exception) -> str:
    what = job.kernel if job.config_index is None else f"{job.kernel}[{job.config_index}]"
    return f"{what}: {type(e).__name__}: {str(e)[:300] or 'no reply before the deadline'}"


# ---------------------------------------------------------------- timing loop (device-agnostic)


@dataclasses.dataclass(frozen=True)
class TimedKernel:
    kernel: str
    config: str | None
    config_index: int | None
    fn: Callable  # (a, b) -> c


BUDGET_SPENT = "not measured: time budget"


def time_problems(
    problems: Sequence[tuple[tuple[int, int, int], str]],
    kernels: Sequence[TimedKernel],
    make_inputs: Callable,
    reference: Callable,
    rel_error: Callable,
    bench: Callable,
    tolerance: float,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    release: Callable[[], None] = lambda: None,
) -> list[cal.Measurement]:
    """Time every kernel on every (shape, layout), checking each one's output first.

    kernels[0] must be torch.matmul (kernel "torch.matmul"): the others' speedups are against it.
    make_inputs(shape, layout) -> (a, b); reference(a, b) -> C accumulated in fp32 or better;
    rel_error(out, ref) -> float; bench(fn) -> (median_s, p20_s, p80_s). A kernel that raises
    or misses `tolerance` gets a row with its status and no time. Past `deadline` (checked
    before each kernel: each may compile first) the rest get BUDGET_SPENT rows.
    `release()` runs after each problem. Raises ValueError when kernels[0] is not torch.matmul."""
    if not kernels or kernels[0].kernel != "torch.matmul":
        raise ValueError("time_problems needs torch.matmul as kernels[0], the reference for speedups")
    out: list[cal.Measurement] = []
    for shape, layout in problems:
        a = b = ref = None
        torch_s = None
        for i, k in enumerate(kernels):
            times: tuple = (None, None, None)
            if clock() >= deadline:
                status = BUDGET_SPENT
            else:
                if a is None:
                    a, b = make_inputs(shape, layout)
                    ref = reference(a, b)
                status, times = _check_and_time(k.fn, a, b, ref, rel_error, bench, tolerance)
            if i == 0:
                torch_s = times[0]
            out.append(
                cal.Measurement(
                    k.kernel, shape, layout, "do_bench", times[0], k.config, k.config_index,
                    p20_s=times[1], p80_s=times[2], torch_time_s=torch_s, status=status,
                )
            )  # fmt: skip
        a = b = ref = None  # drop this problem's tensors before the next is drawn
        release()
    return out


def _check_and_time(fn, a, b, ref, rel_error, bench, tolerance: float) -> tuple[str, tuple]:
    """(status, (median_s, p20_s, p80_s)): timed only when the output is within tolerance."""
    try:
        err = rel_error(fn(a, b), ref)
        if not err <= tolerance:  # NaN fails too
            return f"incorrect: relative error {err:.3g} > {tolerance:g}", (None, None, None)
        return "ok", tuple(bench(functools.partial(fn, a, b)))
    except Exception as e:  # noqa: BLE001 - a failing config is a row, not the end of the step
        return f"error: {type(e).__name__}: {str(e)[:200]}", (None, None, None)


def timing_summary(rows: Sequence[cal.Measurement]) -> tuple[str, str | None]:
    """(one line on how many rows were timed, what went wrong or None): rows cut by the time
    budget and rows wrong or failed both make the step fail."""
    cut = [r for r in rows if r.status == BUDGET_SPENT]
    bad = [r for r in rows if r.status not in ("ok", BUDGET_SPENT)]
    summary = f"{len(rows) - len(cut) - len(bad)} of {len(rows)} (kernel, shape) timed with do_bench"
    problems = [f"{len(cut)} cut by the time budget"] if cut else []
    if bad:
        problems.append(f"{len(bad)} wrong or failed, first: {bad[0].kernel} {bad[0].shape} {bad[0].status}")
    return summary, "; ".join(problems) or None


def judge_measurements(shapes: Sequence) -> list[cal.Measurement]:
    """Rows for the seed and torch.matmul from the judge's per-shape results on a GPU
    (evaluation.ShapeResult with kind "train" and a measured time); others are ignored."""
    out = []
    for s in shapes:
        if s.kind != "train" or not s.time_s:
            continue
        shape = tuple(int(x) for x in s.shape)
        out.append(
            cal.Measurement(
                "seed", shape, s.layout, "judge", s.time_s, iqr_s=s.time_iqr_s, torch_time_s=s.torch_time_s
            )
        )
        out.append(cal.Measurement("torch.matmul", shape, s.layout, "judge", s.torch_time_s))
    return out
