"""Measured fitness on a GPU: time every training shape, verify the timed outputs.

Runs in the parent; the child does the timing (evaluators/timing.py) and sends back
summary statistics plus outputs of timed calls and of a cache probe. Nothing the
child says is taken on trust where it can be checked: outputs are compared against
the parent's own float64 reference, and any rate above the GPU's dense peak is
rejected as impossible.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import torch

from .correctness import compare, make_inputs, reference
from .targets import peak_tflops
from .timing import TimingProtocol, check_speed_of_light

if TYPE_CHECKING:  # pragma: no cover
    from .evaluate import _Run
    from .evaluation import Evaluation
    from .sandbox import Sandbox


def time_task(run: _Run, box: Sandbox, deadline: float, protocol: TimingProtocol | None = None) -> Evaluation:
    """Fitness = geometric mean over training shapes and layouts of torch time / candidate time."""
    from .evaluate import _Stop, geometric_mean
    from .evaluation import ShapeResult

    protocol = protocol or TimingProtocol()
    task = run.task
    gpu = run.provenance.get("gpu", "")
    peak = peak_tflops(gpu, task.dtype, task.allow_tf32)
    if peak is None:
        run.provenance["speed_of_light_guard"] = f"skipped: no peak known for {gpu!r}"
    speedups = []
    for shape, layout in [(shape, layout) for shape in task.train for layout in task.layouts]:
        seeds = [secrets.randbits(63) for _ in range(protocol.rotating_buffers + 1)]
        probe_seeds = [secrets.randbits(63) for _ in range(protocol.rotating_buffers)]
        header, tensors = box.request(
            {
                "cmd": "time",
                "shape": list(shape),
                "layout": layout,
                "seeds": seeds,
                "probe_seeds": probe_seeds,
                "protocol": protocol.__dict__,
            },
            deadline,
        )
        where = f"shape {tuple(shape)} layout {layout}"
        if header.get("event") == "error":
            status = "rejected" if header.get("timing_guard") else "crashed"
            raise _Stop(status, f"{where}: timing failed: {header.get('message')}")
        _verify(run, tensors, "timed", seeds, shape, layout, where, _Stop)
        _verify(run, tensors, "probe", [None, *probe_seeds], shape, layout, where, _Stop)
        missing = [j for j in range(1, protocol.rotating_buffers + 1) if f"probe{j}" not in tensors]
        if missing:
            raise _Stop("incorrect", f"{where}: the cache probe returned no tensor for buffers {missing}")
        cand, base = header["stats"]["candidate"], header["stats"]["baseline"]
        M, N, K = shape
        flops = 2.0 * M * N * K
        impossible = check_speed_of_light(flops, cand["median_s"], peak)
        if impossible:
            raise _Stop("rejected", f"{where}: {impossible}")
        speedup = base["median_s"] / cand["median_s"]
        speedups.append(speedup)
        run.shapes.append(
            ShapeResult(
                shape=tuple(shape),
                layout=layout,
                kind="train",
                time_s=cand["median_s"],
                time_iqr_s=cand["iqr_s"],
                torch_time_s=base["median_s"],
                tflops=flops / cand["median_s"] / 1e12,
                speedup=speedup,
                fraction_of_peak=flops / cand["median_s"] / 1e12 / peak if peak else None,
            )
        )
        for note in header.get("notes", []):
            run.provenance.setdefault("timing_notes", []).append(note)
    fitness = geometric_mean(speedups)
    return run.result(
        "ok",
        f"measured on {gpu}: geometric-mean speedup over torch.matmul {fitness:.3f}",
        fitness=fitness,
        kind="measured",
    )


def _verify(run, tensors: dict, prefix: str, seeds: list, shape, layout: str, where: str, stop) -> None:
    for key, out in tensors.items():
        if not key.startswith(prefix):
            continue
        index = int(key[len(prefix) :])
        if not 0 < index < len(seeds) or seeds[index] is None:
            raise stop("crashed", f"{where}: the child returned an output for an unknown buffer {key}")
        a, b = make_inputs(tuple(shape), layout, run.task.dtype, torch.Generator().manual_seed(seeds[index]))
        ref = reference(a.cuda(), b.cuda())
        verdict = compare(out.cuda(), ref, run.task.dtype, shape[2], run.task.allow_tf32)
        if not verdict.ok:
            what = "a timed call" if prefix == "timed" else "a call on refreshed inputs (results cached?)"
            raise stop("incorrect", f"{where}: {what} returned a wrong result: {verdict.message}")
