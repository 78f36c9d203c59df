"""Measured fitness on a GPU: time every training shape, verify the timed outputs; the GPU budget.

Runs in the parent; the child does the timing (evaluators/timing.py) and sends back
summary statistics plus outputs of timed calls and of a cache probe. Nothing the
child says is taken on trust where it can be checked: outputs are compared against
the parent's own float64 reference (drawn and computed on the GPU from the same seeds),
and any rate above the GPU's dense peak is rejected as impossible.

``gpu_budget`` sizes the deadline of a GPU evaluation from the task's work, so a task of
large shapes is not cut off by a limit chosen for small ones, and a hang on a small shape
is still caught early (each request gets its own share).
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING

import torch

from .correctness import compare, input_generator, make_inputs, reference
from .evaluation import ShapeResult
from .targets import peak_tflops
from .task import Task
from .timing import TimingProtocol, check_speed_of_light
from .verdict import Stop, geometric_mean

if TYPE_CHECKING:  # pragma: no cover
    from .sandbox import Sandbox

ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


@dataclasses.dataclass(frozen=True)
class WorkRates:
    """The rates a GPU deadline assumes. Deliberately slow: the deadline is a ceiling for an
    honest but slow kernel on a slow GPU, not a forecast.

    candidate_tflops: the slowest candidate (and baseline) still waited for. 5 TFLOP/s is a
        fifth of Triton's tutorial kernel at 1024^3 on an H100 (26 TFLOP/s, triton#3672) and
        about 1/200 of an H100's dense bf16 peak.
    reference_tflops: the parent's float64 products (A @ B and |A| @ |B|, plus torch.matmul
        in the task dtype). 1 TFLOP/s: below every datacenter GPU's FP64 rate (A100 9.7,
        H100 ~67) and near a consumer GPU's (RTX 4090 ~1.3).
    wire_bytes_per_s: outputs piped from the child to the parent and copied to the GPU (1 GB/s).
    call_overhead_s: per call or sample: launch, L2 flush, stream hold, sync, Python (2 ms).
    """

    candidate_tflops: float = 5.0
    reference_tflops: float = 1.0
    wire_bytes_per_s: float = 1e9
    call_overhead_s: float = 2e-3


@dataclasses.dataclass(frozen=True)
class Budget:
    """Seconds of GPU work per request kind, per (shape, layout), and in all; ``how`` says why."""

    compile_s: float  # the JIT stage: one call per training shape and layout
    check_s: dict  # (shape, layout) -> seconds for one check trial (candidate call + reference + wire)
    time_s: dict  # (shape, layout) -> seconds for one `time` request (all trials, rechecks, probes)
    total_s: float
    how: str


def gpu_budget(task: Task, protocol: TimingProtocol | None = None, rates: WorkRates | None = None) -> Budget:
    """The GPU work of judging ``task``: FLOPs and bytes of every training and held-out shape x
    layout x trial (held-out shapes are checked and timed like training ones, reported apart).

    Per (M, N, K), F = 2MNK and O = MN x element bytes. A candidate call costs
    F / candidate_tflops + call_overhead_s; a verified output 3F / reference_tflops (two
    float64 products and torch's) + O / wire_bytes_per_s. A check trial is one call and
    one verification; a `time` request is trials x (warmup + guard) x 2 calls, trials x
    reps x 2 samples of max(call, batch_target_s), rotating_buffers probe calls and
    2 x rotating_buffers verifications.
    """
    p, rates = protocol or TimingProtocol(), rates or WorkRates()
    compile_s, check_s, time_s = 0.0, {}, {}
    elem = ELEMENT_BYTES[task.dtype]
    for shape in (*task.train, *task.held_out):
        M, N, K = shape
        flops, out_bytes = 2.0 * M * N * K, float(M * N * elem)
        call = flops / (rates.candidate_tflops * 1e12) + rates.call_overhead_s
        verify = 3 * flops / (rates.reference_tflops * 1e12) + out_bytes / rates.wire_bytes_per_s
        sample = max(call, p.batch_target_s + rates.call_overhead_s)
        timing = (
            p.trials * (p.warmup_reps + p.guard_reps) * 2 * call
            + p.trials * p.reps * 2 * sample
            + p.rotating_buffers * (call + 2 * verify)
        )
        for layout in task.layouts:
            compile_s += call
            check_s[(tuple(shape), layout)] = call + verify
            time_s[(tuple(shape), layout)] = timing
    total = compile_s + task.trials * sum(check_s.values()) + sum(time_s.values())
    how = (
        f"{len(check_s)} training and held-out shape/layouts x ({task.trials} checks + timing: {p.trials} trials x "
        f"({p.warmup_reps} warm-up + {p.guard_reps} guard + {p.reps} samples)), assuming a candidate at "
        f"{rates.candidate_tflops:g} TFLOP/s, float64 references at {rates.reference_tflops:g} TFLOP/s, "
        f"outputs piped at {rates.wire_bytes_per_s / 1e9:g} GB/s, {rates.call_overhead_s * 1e3:g} ms per call"
    )
    return Budget(compile_s, check_s, time_s, total, how)


@dataclasses.dataclass
class TimedTask:
    """What timing every training and held-out shape produced: per-shape rows, the fitness (training
    shapes), the held-out figure (same unit, never in the fitness; None without held-out shapes), notes."""

    shapes: list[ShapeResult]
    fitness: float
    held_out: float | None
    notes: list[str]
    batch: dict  # "MxNxK layout" -> [candidate, baseline] calls per sample


def time_task(
    task: Task,
    box: Sandbox,
    deadline_for,
    gpu: str,
    protocol: TimingProtocol | None = None,
    device: str = "cuda",
) -> TimedTask:
    """Fitness = geometric mean over training shapes and layouts of torch time / candidate time;
    the held-out shapes' geometric mean is computed the same way and kept apart.

    ``deadline_for(seconds)`` turns one request's budget into a monotonic deadline (the
    caller bounds it by the evaluation's). Raises ``Stop`` for every verdict but ok; a
    verdict that rests on a measurement (timing guard, speed of light) is not memoised.
    ``device``: where the parent draws inputs and computes references (the child's GPU; "cpu"
    only for tests with a fake child).
    """
    protocol = protocol or TimingProtocol()
    budget = gpu_budget(task, protocol)
    peak = peak_tflops(gpu, task.dtype, task.allow_tf32)
    speedups: dict[str, list[float]] = {"train": [], "held_out": []}
    shapes, notes, batches = [], [], {}
    work = [
        (kind, shape, layout)
        for kind, kind_shapes in (("train", task.train), ("held_out", task.held_out))
        for shape in kind_shapes
        for layout in task.layouts
    ]
    for kind, shape, layout in work:
        seeds = [secrets.randbits(63) for _ in range(protocol.rotating_buffers + 1)]
        probe_seeds = [secrets.randbits(63) for _ in range(protocol.rotating_buffers)]
        header, tensors = box.request(
            {
                "cmd": "time",
                "shape": list(shape),
                "layout": layout,
                "seeds": seeds,
                "probe_seeds": probe_seeds,
                "protocol": dataclasses.asdict(protocol),
            },
            deadline_for(budget.time_s[(tuple(shape), layout)]),
        )
        where = f"shape {tuple(shape)} layout {layout}"
        if header.get("event") == "error":
            if header.get("timing_guard"):
                raise Stop("rejected", f"{where}: timing guard: {header.get('message')}", memo=False)
            hint = " (out of GPU memory)" if header.get("memory") else ""
            raise Stop("crashed", f"{where}: timing failed{hint}: {header.get('message')}")
        if header.get("event") != "timed":
            raise Stop("crashed", f"{where}: the child sent an unexpected reply to the timing request")
        verify_outputs(task, tensors, "timed", seeds, shape, layout, where, device)
        verify_outputs(task, tensors, "probe", [None, *probe_seeds], shape, layout, where, device)
        missing = [j for j in range(1, protocol.rotating_buffers + 1) if f"probe{j}" not in tensors]
        if missing:
            raise Stop("incorrect", f"{where}: the cache probe returned no tensor for buffers {missing}")
        del tensors
        _release_gpu_memory()
        cand, base = header["stats"]["candidate"], header["stats"]["baseline"]
        M, N, K = shape
        flops = 2.0 * M * N * K
        impossible = check_speed_of_light(flops, cand["median_s"], peak)
        if impossible:
            raise Stop("rejected", f"{where}: {impossible}", memo=False)
        speedup = base["median_s"] / cand["median_s"]
        speedups[kind].append(speedup)
        shapes.append(
            ShapeResult(
                shape=tuple(shape),
                layout=layout,
                kind=kind,
                time_s=cand["median_s"],
                time_iqr_s=cand["iqr_s"],
                torch_time_s=base["median_s"],
                tflops=flops / cand["median_s"] / 1e12,
                speedup=speedup,
                fraction_of_peak=flops / cand["median_s"] / 1e12 / peak if peak else None,
            )
        )
        batches[f"{M}x{N}x{K} {layout}"] = list(header.get("batch", []))
        notes += [n for n in header.get("notes", []) if n not in notes]
    held_out = geometric_mean(speedups["held_out"]) if speedups["held_out"] else None
    return TimedTask(
        shapes=shapes,
        fitness=geometric_mean(speedups["train"]),
        held_out=held_out,
        notes=notes,
        batch=batches,
    )


def verify_outputs(
    task: Task, tensors: dict, prefix: str, seeds: list, shape, layout: str, where: str, device: str = "cuda"
) -> None:
    """Every output named ``prefix<i>`` must match the float64 reference of seed ``seeds[i]``,
    drawn and computed on the GPU (the child drew its inputs there from the same seeds)."""
    for key, out in tensors.items():
        if not key.startswith(prefix):
            continue
        index = int(key[len(prefix) :]) if key[len(prefix) :].isdigit() else -1
        if not 0 < index < len(seeds) or seeds[index] is None:
            raise Stop("crashed", f"{where}: the child returned an output for an unknown buffer {key}")
        a, b = make_inputs(tuple(shape), layout, task.dtype, input_generator(seeds[index], device))
        ref = reference(a, b)
        del a, b
        verdict = compare(out.to(ref.exact.device), ref, task.dtype, shape[2], task.allow_tf32)
        del ref
        if not verdict.ok:
            what = "a timed call" if prefix == "timed" else "a call on refreshed inputs (results cached?)"
            raise Stop("incorrect", f"{where}: {what} returned a wrong result: {verdict.message}")


def _release_gpu_memory() -> None:
    """Hand the parent's cached blocks back to the driver between shapes: the child shares the GPU."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
