"""The cascade: static rules -> compile -> correctness -> timing (GPU) -> Evaluation.

Every verdict is reached here, in the trusted process, from what the sandboxed
child reports: the child runs the candidate, the parent computes the float64
reference from its own copy of the inputs and compares. Nothing escapes `evaluate()`:
an error the candidate's child causes (a malformed frame, a death) is `crashed`, an
error of the judge itself (an exception in the parent, the parent out of GPU memory)
is `judge_error`, never memoised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import traceback

import torch

from . import compat, dataflow, failures, fresh_shapes, sandbox, static_rules, wire
from . import compile as comp
from .check_stage import CheckStage
from .compile_watch import CompileWatch
from .cpu_stages import MODEL_FOR_TARGET, CpuStages
from .evaluation import STAGES, Evaluation, ShapeResult
from .fingerprint import judge_fingerprint
from .gpu_timing import gpu_budget, time_task
from .provenance import provenance
from .targets import TARGET_LIMITS, limit_violations
from .task import Task
from .timing import TimingProtocol
from .verdict import Stop
from .verify_stage import VerifyStage

REQUEST_SLACK_S = 60.0  # on a GPU, each check/time request may take its work budget plus this


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How one evaluation runs (documented defaults suit the CPU demo)."""

    device: str = (
        "cpu"  # "cpu": offline compile + interpreter checks; "cuda": JIT, checks and timing on the GPU
    )
    timeout_s: float = 120.0  # wall-clock limit of each stage: the checks (the kernel's run time); the
    # compile's loading and capture, which then gets compile_s_per_kernel more per specialisation to build
    compile_s_per_kernel: float = 15.0  # CPU: compile budget per specialisation (one measured at ~1 s on
    # 2 busy cores; 63 of a stream-K kernel took ~100 s): many specialisations never eat the checks' time
    max_specialisations: int = 256  # CPU: more than this many to compile is `rejected` (autotune lists x
    # shape-dependent constexprs can explode; 256 at ~1 s each is minutes of one core)
    memory_bytes: int | None = sandbox.DEFAULT_MEMORY_LIMIT  # child address space (CPU only)
    prestart: bool = True  # CPU: start the fork servers now; GPU: keep one spare child started ahead
    check_children: int = 1  # CPU: interpreter children the check shapes are split across, beside the
    # compile child. On demo_cpu (2 cores) 2 was slower (2.8 s vs 1.95 s wall per new candidate, more
    # CPU): each child pays for its own first launch. Worth it when the checks far outlast the compile.
    stage: str = "provisional"  # how far to judge (evaluation.STAGES): "provisional" - the cheap stage
    # only (static rules, compile, check shapes, independent calls): what a run judges every new
    # candidate with; "verified" - also the expensive stage (CPU: evaluators/verify_stage.py): what a
    # run asks for those whose provisional fitness would make them elites, and what `python -m
    # evaluators check` asks for. A provisional ok verdict says so (Evaluation.stage) and never ranks.
    # CUDA: always "verified" (every training and held-out shape is checked at full size).
    verify_programs: int = 2048  # CPU, verified stage: programs the whole grids at a reduced K may run in
    # all (~15 ms each under the interpreter for a 128x128 tile); smallest grids first, the rest left out
    # and listed (evaluators/verify_stage.py)
    verify_sample_s: float = 30.0  # CPU, verified stage: seconds for the full-size sampled programs (a
    # 128x128 program at K = 4096 takes ~0.4 s); shapes past it are left out and listed
    parent_source: str | None = None  # enforce EVOLVE-BLOCK regions against this parent
    memo: bool = True  # return the stored verdict for a (source, task, backend) judged before
    model_gpu: str | None = "auto"  # CPU only: GPU the performance model ranks for ("h100", "h200", "a100");
    # "auto" picks by the task's target (sm_90: h100, sm_80: a100); None: no model, no fitness
    work_budget: bool = True  # CUDA only: the limit is timeout_s + the task's GPU work budget
    # (gpu_timing.gpu_budget, FLOPs and bytes at stated slow rates); False: timeout_s alone, hard
    gpu_memory_fraction: float = 0.5  # CUDA only: the child's caching allocator may take this share of
    # the GPU's memory (torch.cuda.set_per_process_memory_fraction); the rest is the parent's, for its
    # float64 references. Beyond it the candidate's allocation fails: `crashed` (out of GPU memory).

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"EvalOptions.stage must be one of {STAGES}, got {self.stage!r}")
        if self.check_children < 1:
            raise ValueError(f"EvalOptions.check_children must be >= 1, got {self.check_children}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError(
                f"EvalOptions.gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}"
            )


def evaluate(
    source: str,
    task: Task,
    options: EvalOptions | None = None,
    *,
    cache: comp.CompileCache | None = None,
    **overrides,
) -> Evaluation:
    """Judge one kernel module. Never raises for a bad candidate: the status says what went wrong.

    Raises compat.UnsupportedEnvironment (before judging) when the installed torch/triton/numpy
    cannot run `options.device`'s mode (evaluators/compat.py)."""
    options = dataclasses.replace(options or EvalOptions(), **overrides)
    compat.require_tested_environment(options.device)
    cache = cache if cache is not None else _default_cache()
    # Fresh shapes join the check shapes of this evaluation only; the memo key holds the task as
    # named, so a hit returns the verdict of an earlier draw (evaluators/fresh_shapes.py says why).
    # Fresh shapes belong to the expensive stage (CPU): a provisional verdict is checked without them.
    fresh = fresh_shapes.draw(task) if options.device == "cpu" and options.stage == "verified" else ()
    run = _Run(source, fresh_shapes.with_fresh(task, fresh), options, cache)
    run.fresh = set(fresh)  # one trial each: a fresh draw every evaluation is the variety they bring
    key = _memo_key(source, task, options, run.backend)
    if options.memo:
        start = time.perf_counter()
        stored = cache.get_evaluation(key)
        if stored is not None:
            evaluation = Evaluation.from_dict(stored)
            evaluation.seconds = {"memo": round(time.perf_counter() - start, 4)}
            evaluation.provenance["memo_hit"] = True
            evaluation.judge = judge_fingerprint()  # the same judge: the memo key holds its fingerprint
            return evaluation
    try:
        with _parent_threads(1):
            evaluation = run.run()
    except Exception as e:  # noqa: BLE001 - the judge's own bug: a verdict, never an escape
        run.memo = False
        evaluation = run.result("judge_error", _judge_error(e))
    evaluation.judge = (
        judge_fingerprint()
    )  # every verdict says which judge gave it (evaluators/fingerprint.py)
    # CUDA checks every training and held-out shape at full size: verified in one go.
    evaluation.stage = "verified" if options.device == "cuda" else options.stage
    fresh_shapes.mark(evaluation, fresh)
    if evaluation.status in MEMO_STATUSES and run.memo:
        cache.put_evaluation(key, evaluation.to_dict())
    return evaluation


# Verdicts that depend only on the source and the task are remembered: the static rules, the
# compile, the checks (wrong results, forbidden ops), what the CPU backend cannot run. Judged afresh next time: timeouts and
# crashes (maybe the machine's fault), judge errors, and whatever rests on a measurement: a
# measured fitness and a timing-guard or speed-of-light rejection (_Run.memo is False then).
MEMO_STATUSES = ("ok", "rejected", "compile_error", "incorrect", "unsupported")


@contextlib.contextmanager
def _parent_threads(count: int):
    """Run the parent's tensor math (references, comparisons) on `count` threads, then restore.

    The parent's tensors are small next to the children's work; torch's default pool (one
    thread per core) spins against the children for the same cores: measured on demo_cpu,
    1.1 CPU-s of the parent per candidate with the default pool, 0.04 s with one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _judge_error(e: BaseException) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}" if where else ""
    if isinstance(e, torch.OutOfMemoryError):
        return (
            f"the judge ran out of GPU memory{at} (its reference or a verification); not held against the "
            f"candidate, judged again next time: {comp.truncate(str(e))}"
        )
    return f"the judge failed{at} ({type(e).__name__}: {comp.truncate(str(e))}); judged again next time"


def _memo_key(source: str, task: Task, options: EvalOptions, backend: str) -> str:
    task_dict = {k: v for k, v in task.to_dict().items() if k != "source"}
    text = json.dumps(
        [
            source,
            task_dict,
            backend,
            options.parent_source,
            options.stage if options.device == "cpu" else "verified",
            # what a CPU verification ran depends on its budgets: a smaller one is another verdict
            [options.verify_programs, options.verify_sample_s] if options.stage == "verified" else None,
            options.max_specialisations,
            judge_fingerprint(),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


_CACHE: comp.CompileCache | None = None


def _default_cache() -> comp.CompileCache:
    global _CACHE
    if _CACHE is None:
        _CACHE = comp.CompileCache()
    return _CACHE


class _Run(CpuStages, CheckStage, VerifyStage):
    """One evaluation: the cascade's state and the stages common to CPU and GPU (the CPU compile
    and model in cpu_stages.py, the checks in check_stage.py, the CPU's expensive stage in
    verify_stage.py)."""

    def __init__(self, source: str, task: Task, options: EvalOptions, cache: comp.CompileCache) -> None:
        self.source, self.task, self.options, self.cache = source, task, options, cache
        self.seconds: dict[str, float] = {}
        self.shapes: list[ShapeResult] = []
        self.kernels: dict = {}
        self.fresh: set = set()  # this evaluation's fresh shapes (evaluators/fresh_shapes.py)
        self.edge_owners: dict = {}  # (M, N, layout) -> programs storing C's last row/column (whole grids)
        # CPU, verified: executed work per program (evaluators/work_count.py) of the whole grids at a
        # reduced K, (M, N, layout, "reduced") -> (K_r, summary), and of the full-size sampled runs,
        # (M, N, layout, "sampled") -> summary; what the model prices (evaluators/model/executed.py)
        self.executed: dict = {}
        self.run_signatures: dict = {}  # (shape, layout, input strides/offsets) -> launches seen in the checked run
        self.children_cpu: float | None = None  # CPU seconds the sandboxed children used
        self.provenance = provenance(options.device)
        self.model_gpu = _model_gpu(options, task) if options.device == "cpu" else None
        self.backend = backend_label(task, options)
        self.memo = True  # False once the verdict rests on a measurement or the judge failed
        self.protocol = TimingProtocol()
        self.budget = gpu_budget(task, self.protocol) if options.device == "cuda" else None
        self.work_s = self.budget.total_s if self.budget and options.work_budget else 0.0
        self.deadline = 0.0
        self.waiting = "the start of the child"  # what the parent waits for, named when a deadline fires
        self.timeout_text: str | None = None  # what ran out, said by whoever knew (compile or a check)
        self.launches: list[dict] = []  # resolved launches per shape (kind: train, held_out, check)
        self.choices: dict = {}  # CPU: autotune configs chosen per (shape, layout, kind)
        self.compile_header: dict | None = None
        self.watch: CompileWatch | None = None
        # Where inputs are drawn and references computed: the GPU itself on CUDA (a seam: tests
        # drive the CUDA cascade on the CPU with a fake child by setting "cpu" here).
        self.input_device = "cuda" if options.device == "cuda" else "cpu"

    def result(self, status: str, feedback: str = "", fitness: float = 0.0, kind: str = "none") -> Evaluation:
        compile_facts = [
            {"key": k, **{f: x for f, x in v.items() if f != "ttir"}} for k, v in self.kernels.items()
        ]
        return Evaluation(
            status=status,
            backend=self.backend,
            fitness=fitness,
            fitness_kind=kind,
            feedback=feedback,
            shapes=self.shapes,
            compile=compile_facts,
            seconds={k: round(v, 3) for k, v in self.seconds.items()},
            provenance=self.provenance,
        )

    def run(self) -> Evaluation:
        start = time.perf_counter()
        violations = static_rules.check_source(self.source, parent_source=self.options.parent_source)
        self.seconds["static"] = time.perf_counter() - start
        if violations:
            return self.result("rejected", static_rules.feedback(violations))
        if self.options.device == "cpu":
            # The fork servers' start-up (once per evaluator process) is the judge's, not the candidate's.
            self.seconds["judge_start"] = sandbox.start_servers()
        # On a GPU the limit grows with the task's work (evaluators/gpu_timing.py: gpu_budget).
        deadline = self.deadline = time.monotonic() + self.options.timeout_s + self.work_s
        evaluation = self.stages(deadline)
        if self.watch is not None and self.watch.total is not None:
            evaluation.provenance["compile_specialisations"] = self.watch.counts()
        if self.children_cpu is not None:
            evaluation.seconds["children_cpu"] = round(self.children_cpu, 3)
        evaluation.seconds["total"] = round(time.perf_counter() - start, 3)
        return evaluation

    def stages(self, deadline: float) -> Evaluation:
        boxes: list[sandbox.Sandbox] = []
        try:
            if self.options.device == "cpu":
                return self.cpu_stages(boxes, deadline)
            box = sandbox.take("cuda", None, self.options.prestart)
            boxes.append(box)
            self.wait(box, "child_wait", deadline)
            self.send_job(
                box,
                "cuda",
                {
                    "protocol": dataclasses.asdict(self.protocol),
                    "gpu_memory_fraction": self.options.gpu_memory_fraction,
                },
            )
            self.waiting = "the JIT compile stage (every training and held-out shape and layout called twice)"
            self.finish_compile(box, deadline)
            self.check([box], deadline)
            return self.time(box)
        except Stop as stop:
            self.memo = self.memo and stop.memo
            return self.result(stop.status, stop.feedback)
        except sandbox.ChildTimeout:
            return self.result("timeout", self.timeout_feedback())
        except sandbox.ChildDied as died:
            return self.result("crashed", str(died))
        except wire.WireError as e:  # the child is untrusted: a malformed frame is the candidate's doing
            return self.result("crashed", f"the candidate's process sent a malformed reply ({e})")
        finally:
            for box in boxes:
                box.close()
            # CPU seconds of the children (forked ones report it when they end; spawned ones don't).
            used = [box.cpu_s for box in boxes if box.cpu_s is not None]
            self.children_cpu = sum(used) if used else None

    def deadline_for(self, work_s: float) -> float:
        """A deadline for one GPU request with ``work_s`` seconds of budgeted work, within the whole's."""
        return min(self.deadline, time.monotonic() + work_s + REQUEST_SLACK_S)

    def timeout_feedback(self) -> str:
        if self.timeout_text:
            return self.timeout_text
        if self.budget is None:
            limit = self.options.timeout_s
            return (
                f"timeout in {self.waiting}: no answer within the {limit:g} s limit (a hang, an endless loop, "
                f"or far too slow; compile time is budgeted apart); {failures.machine_load()}"
            )
        text = (
            f"no answer in time while waiting for {self.waiting} (a hang, an endless loop, or far too slow)"
        )
        return (
            f"{text}; the limit was {self.options.timeout_s:g} s (start-up and compile) + "
            f"{self.work_s:.0f} s of GPU work for this task, each request its share + "
            f"{REQUEST_SLACK_S:g} s; budget: {self.budget.how}"
        )

    def wait(self, box: sandbox.Sandbox, label: str, deadline: float) -> None:
        start = time.perf_counter()
        box.wait_ready(deadline)
        self.seconds[label] = time.perf_counter() - start

    def send_job(self, box: sandbox.Sandbox, mode: str, extra: dict) -> None:
        task = {**self.task.to_dict(), "device": self.options.device, "stage": self.options.stage, **extra}
        box.send({"cmd": "job", "mode": mode, "source": self.source, "task": task})

    def receive_job(self, box: sandbox.Sandbox, mode: str, deadline: float) -> dict:
        header, _ = box.read(deadline)
        if header.get("event") == "error":
            raise failures.from_child(header, interpreter=mode == "check")
        if header.get("event") != "loaded":
            raise Stop("crashed", f"the child sent an unexpected reply to the {mode} request")
        return header

    def judge_kernels(self, keys) -> None:
        """Limits of the target and the task's precision, for each kernel that is launched."""
        limits = TARGET_LIMITS[self.task.target]
        for key in sorted(keys):
            facts = self.kernels[key]
            problems = limit_violations(
                limits,
                shared=facts.get("shared", 0),
                regs=facts.get("regs") or 0,
                num_warps=facts.get("num_warps", 4),
            )
            if problems:
                raise Stop("compile_error", f"kernel {facts.get('kernel')} {key[:8]}: " + "; ".join(problems))
            precision = comp.precision_problems(facts, self.task.dtype, self.task.allow_tf32)
            if precision:
                raise Stop("incorrect", f"kernel {facts.get('kernel')}: " + "; ".join(precision))
            found = [dataflow.Finding(**f) for f in facts.get("data_dependent", [])]
            if found:
                raise Stop("rejected", dataflow.feedback(str(facts.get("kernel")), found))

    def finish_compile(self, box: sandbox.Sandbox, deadline: float) -> None:
        """The GPU child's JIT warm-up: every training and held-out shape called (autotuners run)."""
        header = self.receive_job(box, "cuda", deadline)
        self.seconds["compile"] = float(header.get("seconds", 0.0))
        self.kernels = dict(header.get("kernels", {}))
        self.launches = header.get("launches", [])
        for key in ("gpu_memory_fraction", "baseline_precision", "flush_bytes", "device_notes"):
            if key in header:  # what the CUDA child set before the candidate loaded
                self.provenance[key] = header[key]
        tuned = [
            {"shape": e["shape"], "layout": e["layout"], "kind": e.get("kind"), "kernel": k, "config": c}
            for e in self.launches
            for k, c in (e.get("autotune") or {}).items()
        ]
        if tuned:
            self.provenance["autotune"] = tuned  # what the real autotuner chose, by timing
        self.judge_kernels(self.kernels)

    def time(self, box: sandbox.Sandbox) -> Evaluation:
        """Measured fitness (evaluators/gpu_timing.py). A measurement: never memoised."""
        start = time.perf_counter()
        gpu = self.provenance.get("gpu", "")
        self.memo = False

        def deadline_for(work_s: float) -> float:
            self.waiting = "a timing request (one training shape and layout, all trials)"
            return self.deadline_for(work_s)

        timed = time_task(self.task, box, deadline_for, gpu, self.protocol, device=self.input_device)
        self.seconds["timing"] = time.perf_counter() - start
        self.shapes += timed.shapes
        if timed.notes:
            self.provenance["timing_notes"] = timed.notes
        self.provenance["timing_batch"] = timed.batch
        if not any(s.fraction_of_peak for s in timed.shapes):
            self.provenance["speed_of_light_guard"] = f"skipped: no peak known for {gpu!r}"
        text = f"measured on {gpu}: geometric-mean speedup over torch.matmul {timed.fitness:.3f}"
        if timed.held_out is not None:
            text += f"; held-out shapes (not in the fitness): {timed.held_out:.3f}"
        evaluation = self.result("ok", text, fitness=timed.fitness, kind="measured")
        evaluation.held_out = timed.held_out
        return evaluation


def backend_label(task: Task, options: EvalOptions) -> str:
    """The label every verdict of this (task, options) will carry; runs rank one label only."""
    if options.device == "cuda":
        return f"cuda:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cuda:?"
    model = _model_gpu(options, task)
    return f"model:{model}" if model else "cpu:interpreter"


def _model_gpu(options: EvalOptions, task: Task) -> str | None:
    from .model.constants import GPUS

    name = options.model_gpu
    if name == "auto":
        return MODEL_FOR_TARGET.get(task.target)
    if name is not None and name not in GPUS:
        raise ValueError(f"model_gpu {name!r} is unknown; known: {', '.join(sorted(GPUS))}")
    return name
