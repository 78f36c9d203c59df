"""The Evaluation record: what the judge says about one candidate on one backend.

Plain data only, so it crosses process and Ray boundaries as JSON (shared/DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import json
import math

# unsupported: the candidate compiles for the target but uses what the CPU backend (Triton's
# interpreter) cannot run (inline asm, programs waiting on each other); kept, never ranked on CPU,
# re-judged on a GPU by `evolve remeasure`. judge_error: the judge's own failure (an exception in
# the parent, the parent out of GPU memory); never the candidate's fault, never memoised
# (shared/DESIGN.md, "Evaluation").
# How far the judge went (shared/DESIGN.md, "Evaluation"): "provisional" - the cheap stage only (static
# rules, compile, the check shapes, the independent calls); an ok provisional verdict is never an elite,
# never ranked, never exported. "verified" - the cheap stage and the expensive one (CPU: fresh and cover
# shapes, every training and held-out shape on the whole grid at a reduced K and on sampled programs at
# full size, evaluators/verify_stage.py; GPU: every shape checked at full size). A failure found by
# either stage is final whatever the stage. "" for records written before stages existed.
STAGES = ("provisional", "verified")
STATUSES = (
    "ok",
    "rejected",
    "compile_error",
    "incorrect",
    "timeout",
    "crashed",
    "unsupported",
    "judge_error",
)
FEEDBACK_LIMIT = 2000  # characters; feedback goes into prompts and the store


@dataclasses.dataclass
class ShapeResult:
    """Per-shape figures. Times are seconds; figures that were not produced stay None."""

    shape: tuple[int, int, int]
    layout: str = "nn"
    kind: str = "check"  # "check": correctness figures; "train": performance on a training shape;
    # "held_out": performance on a held-out shape (reported, never in the fitness); "fresh": a check
    # shape drawn for this evaluation; "cover": a check shape on a training shape's path (coverage.py)
    max_abs_err: float | None = None
    max_scaled_err: float | None = None  # max |C - R| / (|A||B|), see evaluators/correctness.py
    tolerance: float | None = None  # the bound max_scaled_err was held to
    time_s: float | None = None  # measured candidate median (cuda backends only)
    time_iqr_s: float | None = None
    torch_time_s: float | None = None  # measured torch.matmul median, same protocol
    tflops: float | None = None  # measured or modelled, per the Evaluation's backend
    speedup: float | None = None  # torch time / candidate time (measured only)
    fraction_of_peak: float | None = None  # tflops / the GPU's dense peak for the dtype
    bound: str | None = None  # modelled only: compute, memory, latency or invalid
    # modelled only: the shape's calibration class (evaluators/model/classes.py) and that class's
    # out-of-sample relative error of one modelled figure (None: the class was not calibrated)
    model_class: str | None = None
    model_error: float | None = None


@dataclasses.dataclass
class Evaluation:
    status: str
    backend: str  # "cuda:<device>" measured, "model:<gpu>" modelled, "cpu:interpreter" (no fitness)
    fitness: float = 0.0  # 0 unless status == "ok" and the backend yields a fitness
    fitness_kind: str = "none"  # "measured", "modelled" or "none" (CPU check only)
    feedback: str = ""
    shapes: list[ShapeResult] = dataclasses.field(default_factory=list)
    compile: list[dict] = dataclasses.field(default_factory=list)  # per-kernel compile facts
    seconds: dict = dataclasses.field(default_factory=dict)  # stage -> wall seconds
    provenance: dict = dataclasses.field(default_factory=dict)
    # Held-out shapes, in the fitness's unit and kind (modelled fraction of peak, or measured speedup):
    # their geometric mean, shown beside the fitness and never part of it; None when not judged.
    held_out: float | None = None
    # The judge that gave this verdict: evaluators/fingerprint.py's judge_fingerprint(), set by
    # evaluate(). "" for records written before judges were fingerprinted (and for verdicts the
    # engine makes itself); a verdict whose judge is not today's is stale (evolve/controller.py).
    judge: str = ""
    stage: str = ""  # "provisional" or "verified" (STAGES), set by evaluate(); "" for older records
    # Modelled only: relative error of the modelled fitness RATIO of two candidates on this task (the
    # training shapes' classes' ratio errors, evaluators/model/classes.py): two candidates whose fitness
    # ratio lies within 1 +- model_error are not told apart by the model. None: measured, or uncalibrated.
    model_error: float | None = None

    def __post_init__(self) -> None:
        if self.stage and self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {STAGES}")
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")
        if self.status != "ok":
            self.fitness = 0.0
        if not math.isfinite(self.fitness) or self.fitness < 0:
            self.fitness = 0.0
        if self.status != "ok" or (self.held_out is not None and not math.isfinite(self.held_out)):
            self.held_out = None
        if len(self.feedback) > FEEDBACK_LIMIT:
            self.feedback = self.feedback[: FEEDBACK_LIMIT - 15] + " …[truncated]"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def rankable(self) -> bool:
        """Whether this verdict may stand in a ranking (elite, leaderboard, export): ok and verified."""
        return self.status == "ok" and self.stage == "verified"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for s in d["shapes"]:
            s["shape"] = list(s["shape"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        d = dict(d)
        d["shapes"] = [ShapeResult(**{**s, "shape": tuple(s["shape"])}) for s in d.get("shapes", [])]
        return cls(**d)
