"""Command line: `python -m evaluators check KERNEL.py --task TASK.toml [...]`.

With --json the last line printed is the Evaluation as one JSON object, whatever the
kernel does. Problems with the command itself (a missing file, a bad task) are not
kernel verdicts: they print one clear line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .compat import UnsupportedEnvironment, require_tested_environment
from .evaluate import EvalOptions, evaluate
from .evaluation import Evaluation
from .task import TaskError, load_task, parse_shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluators", description="Judge Triton matmul kernel modules."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="run the evaluator cascade on one kernel module")
    check.add_argument("kernel", help="path to a kernel module (.py) following the candidate contract")
    check.add_argument("--task", required=True, help="task TOML file, e.g. runs/demo_cpu.toml")
    check.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="override the task's dtype")
    check.add_argument(
        "--shapes",
        help='override the shapes: "M,N,K;M,N,K"; on the CPU the interpreter\'s check shapes, '
        "on a GPU the shapes checked and timed (in place of the task's training shapes)",
    )
    check.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    check.add_argument("--timeout", type=float, default=EvalOptions.timeout_s, help="hard limit in seconds")
    check.add_argument(
        "--model-gpu",
        default="auto",
        help="without a GPU: the GPU the performance model ranks for (h100, h200, a100, none); "
        "auto: by the task's target",
    )
    check.add_argument("--json", action="store_true", help="print the Evaluation as JSON (last line)")
    args = parser.parse_args(argv)

    try:
        task = load_task(args.task)
        if args.dtype:
            task = task.with_dtype(args.dtype)
        if args.shapes:
            task = task.with_check_shapes(parse_shapes(args.shapes))
        source = _read_kernel(args.kernel)
    except (TaskError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = args.device or _default_device()
    if device == "cuda" and not _cuda_available():
        print("error: --device cuda: no CUDA GPU is visible; use --device cpu", file=sys.stderr)
        return 2
    try:
        require_tested_environment(device)
    except UnsupportedEnvironment as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.shapes and device == "cuda":
        # On a GPU the training shapes are the ones checked and timed: --shapes replaces them.
        task = dataclasses.replace(task, train=task.check)
        print(f"--shapes: checking and timing {len(task.train)} shape(s) on the GPU", file=sys.stderr)
    model_gpu = None if args.model_gpu == "none" else args.model_gpu
    options = EvalOptions(device=device, timeout_s=args.timeout, prestart=False, model_gpu=model_gpu)
    try:
        evaluation = evaluate(source, task, options)
    except ValueError as e:  # an unknown --model-gpu
        print(f"error: --model-gpu: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(evaluation.to_json())
    else:
        print(render(evaluation, args.kernel, task.name))
    return 0 if evaluation.ok else 1


class UsageError(Exception):
    pass


def _read_kernel(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UsageError(
            f"{path}: no such kernel file; pass a .py kernel module such as kernels/seeds/tiled_matmul.py"
        )
    try:
        return p.read_text()
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text; a kernel module is a Python source file") from None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _default_device() -> str:
    return "cuda" if _cuda_available() else "cpu"


def render(ev: Evaluation, kernel: str, task: str) -> str:
    lines = [f"{kernel} on task {task}: {ev.status.upper()}  [{ev.backend}]"]
    if ev.fitness_kind != "none":
        lines.append(f"fitness ({ev.fitness_kind}, {ev.backend}): {ev.fitness:.4f}")
    else:
        lines.append("fitness: none on this backend")
    if ev.feedback:
        lines.append(f"feedback: {ev.feedback}")
    if ev.shapes:
        lines.append(
            f"{'shape (M, N, K)':>22} {'layout':>6} {'kind':>5} {'scaled err':>11} {'tolerance':>10} "
            f"{'TFLOP/s':>8} {'of peak':>8} {'speedup':>8} {'bound':>8}"
        )
        for s in ev.shapes:
            lines.append(
                f"{str(tuple(s.shape)):>22} {s.layout:>6} {s.kind:>5} {_num(s.max_scaled_err, '.2e'):>11} "
                f"{_num(s.tolerance, '.2e'):>10} {_num(s.tflops, '.1f'):>8} {_num(s.fraction_of_peak, '.3f'):>8} "
                f"{_num(s.speedup, '.3f'):>8} {s.bound or '-':>8}"
            )
        if ev.fitness_kind == "modelled":
            lines.append("TFLOP/s on train rows are MODELLED, not measured; speed claims need --device cuda")
    for k in ev.compile:
        lines.append(
            f"kernel {k.get('kernel')} [{k['key'][:8]}]: shared {k.get('shared')} B, regs {k.get('regs')}, "
            f"spills {k.get('spill_bytes')} B, warps {k.get('num_warps')}, stages {k.get('num_stages')}, "
            f"wgmma {k.get('uses_wgmma')}, tma {k.get('uses_tma')}"
        )
    lines.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in ev.seconds.items()))
    return "\n".join(lines)


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


if __name__ == "__main__":
    sys.exit(main())
