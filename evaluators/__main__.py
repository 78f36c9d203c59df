"""Command line: `python -m evaluators check KERNEL.py --task TASK.toml [...]`.

With --json the last line printed is the Evaluation as one JSON object, whatever the
kernel does; without it, a human verdict. Problems with the command itself (a missing or
unreadable file, a bad task, an unknown --model-gpu) are not kernel verdicts: they print one
clear line to stderr and exit with status 2. A failure of the judge itself (any exception
out of evaluate()) is a verdict too: status judge_error, printed like any other, exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback
from pathlib import Path

from .compat import UnsupportedEnvironment, require_tested_environment
from .evaluate import EvalOptions, backend_label, evaluate
from .evaluation import Evaluation
from .model.constants import GPUS
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
    check.add_argument(
        "--timeout", type=_positive_seconds, default=EvalOptions.timeout_s, help="hard limit in seconds"
    )
    check.add_argument(
        "--model-gpu",
        default="auto",
        help="without a GPU: the GPU the performance model ranks for (h100, h200, a100, none); "
        "auto: by the task's target",
    )
    check.add_argument(
        "--stage",
        choices=("provisional", "verified"),
        default="verified",
        help="CPU: provisional = the cheap stage (check shapes); verified (default) = also the training "
        "and held-out shapes run whole at a reduced K and sampled at full size",
    )
    check.add_argument(
        "--verify-programs",
        type=_count,
        default=EvalOptions.verify_programs,
        help="CPU, verified: programs the whole grids at a reduced K may run in all (smallest grids first)",
    )
    check.add_argument(
        "--verify-sample-s",
        type=_seconds,
        default=EvalOptions.verify_sample_s,
        help="CPU, verified: seconds for the sampled programs at full size",
    )
    check.add_argument("--json", action="store_true", help="print the Evaluation as JSON (last line)")
    args = parser.parse_args(argv)
    # A feedback line holds whatever the kernel printed or raised; an ASCII-only terminal must
    # not turn printing it into a UnicodeEncodeError after the verdict was reached.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")

    if args.model_gpu not in ("auto", "none", *GPUS):
        print(
            f"error: --model-gpu {args.model_gpu!r} is unknown; use one of auto, none, {', '.join(sorted(GPUS))}",
            file=sys.stderr,
        )
        return 2
    try:
        task = _load_task(args.task)
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
    options = EvalOptions(
        device=device,
        timeout_s=args.timeout,
        prestart=False,
        model_gpu=model_gpu,
        stage=args.stage,
        verify_programs=args.verify_programs,
        verify_sample_s=args.verify_sample_s,
    )
    try:
        evaluation = evaluate(source, task, options)
    except UnsupportedEnvironment as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - evaluate() catches the cascade's errors; this is the rest
        evaluation = _judge_error(e, task, options)
    print(_verdict_text(evaluation, args.kernel, task.name, args.json))
    return 0 if evaluation.ok else 1


class UsageError(Exception):
    pass


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: the limit must be a positive number of seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a count cannot be negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: seconds cannot be negative")
    return value


def _load_task(path: str):
    """load_task, with the file's own read errors (permissions, bytes that are not text) as TaskError."""
    try:
        return load_task(path)
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"{path}: cannot read the task file ({type(e).__name__}: {e})") from None


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
    except OSError as e:
        raise UsageError(f"{path}: cannot read the kernel file ({type(e).__name__}: {e})") from None


def _judge_error(e: Exception, task, options: EvalOptions) -> Evaluation:
    """An exception that escaped evaluate() (its set-up, its verdict cache): the judge's bug, as a verdict."""
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    try:
        backend = backend_label(task, options)
    except Exception:  # noqa: BLE001 - the label is decoration here; the verdict must still print
        backend = "cuda:?" if options.device == "cuda" else "cpu:interpreter"
    feedback = f"the judge failed{at} ({type(e).__name__}: {str(e)[:500]}); not the kernel's fault"
    return Evaluation(status="judge_error", backend=backend, feedback=feedback)


def _verdict_text(ev: Evaluation, kernel: str, task: str, as_json: bool) -> str:
    """The verdict as printed; a record render() trips on still prints, as its JSON."""
    if as_json:
        return ev.to_json()
    try:
        return render(ev, kernel, task)
    except Exception as e:  # noqa: BLE001 - a display bug must not hide the verdict
        return (
            f"{kernel} on task {task}: {ev.status.upper()} (display failed: {e!r}; the record as JSON)\n"
            + ev.to_json()
        )


def _verification_text(row: dict) -> str:
    """One shape's row of provenance 'verification' (evaluators/verify_stage.py) in words."""
    whole, sampled = row.get("whole_grid") or {}, row.get("sampled") or {}
    parts = []
    if whole:
        grid = f"{whole['programs']} programs at K = {whole['K']}"
        parts.append(
            f"whole grid LEFT OUT ({grid}: {whole['left_out']})"
            if "left_out" in whole
            else f"whole grid ({grid})"
        )
    if "left_out" in sampled:
        parts.append(f"sampled LEFT OUT ({sampled['left_out']})")
    elif sampled:
        what = (
            f"{sampled['compared']} elements compared"
            if "compared" in sampled
            else sampled.get("not_compared")
        )
        parts.append(f"sampled programs at full size ({sampled['programs']}; {what})")
    return "; ".join(parts) or "-"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _default_device() -> str:
    return "cuda" if _cuda_available() else "cpu"


def render(ev: Evaluation, kernel: str, task: str) -> str:
    lines = [f"{kernel} on task {task}: {ev.status.upper()}  [{ev.backend}]  {ev.stage or 'no stage'}"]
    if ev.fitness_kind != "none":
        line = f"fitness ({ev.fitness_kind}, {ev.backend}): {ev.fitness:.4f}"
        if ev.held_out is not None:  # beside the fitness, never in it
            line += f"   held-out ({ev.fitness_kind}): {ev.held_out:.4f}"
        lines.append(line)
    else:
        lines.append("fitness: none on this backend")
    if ev.feedback:
        lines.append(f"feedback: {ev.feedback}")
    if ev.shapes:
        lines.append(
            f"{'shape (M, N, K)':>22} {'layout':>6} {'kind':>8} {'scaled err':>11} {'tolerance':>10} "
            f"{'TFLOP/s':>8} {'of peak':>8} {'speedup':>8} {'bound':>8}"
        )
        for s in ev.shapes:
            lines.append(
                f"{str(tuple(s.shape)):>22} {s.layout:>6} {s.kind:>8} {_num(s.max_scaled_err, '.2e'):>11} "
                f"{_num(s.tolerance, '.2e'):>10} {_num(s.tflops, '.1f'):>8} {_num(s.fraction_of_peak, '.3f'):>8} "
                f"{_num(s.speedup, '.3f'):>8} {s.bound or '-':>8}"
            )
        if ev.fitness_kind == "modelled":
            lines.append(
                "TFLOP/s on train and held_out rows are MODELLED, not measured; speed claims need --device cuda"
            )
    for k in ev.compile:
        key = str(k.get("key", "?"))[:8]
        lines.append(
            f"kernel {k.get('kernel')} [{key}]: shared {k.get('shared')} B, regs {k.get('regs')}, "
            f"spills {k.get('spill_bytes')} B, warps {k.get('num_warps')}, stages {k.get('num_stages')}, "
            f"wgmma {k.get('uses_wgmma')}, tma {k.get('uses_tma')}"
        )
    for row in ev.provenance.get("verification") or []:
        lines.append(f"verified {tuple(row['shape'])} {row['layout']}: " + _verification_text(row))
    lines.append("seconds: " + ", ".join(f"{k} {_num(v, '.2f')}" for k, v in ev.seconds.items()))
    return "\n".join(lines)


def _num(value, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return format(value, fmt)
    except (TypeError, ValueError):  # a figure of an unexpected type is shown as it is
        return str(value)


if __name__ == "__main__":
    sys.exit(main())
