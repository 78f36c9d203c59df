"""What the offline performance model (evaluators/model/perf_model.py) is fed, per launch: the compile
facts of one kernel (evaluators/compile.py) with the grid of one launch and, at the verified stage, what
its programs executed (evaluators/work_count.py, scaled by evaluators/model/executed.py). Facts only:
what was compiled and what ran, never a name or a launch option's claim."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ExecutedWork:
    """What the programs of one launch executed, counted under the interpreter (evaluators/work_count.py)
    on the programs the judge ran and scaled to the whole grid at the full shape
    (evaluators/model/executed.py). The model prices this, not what the IR could do."""

    programs: int  # programs of the launch grid
    working: int  # programs that executed any arithmetic (the rest exit at once: launch cost only)
    dot_flops: tuple[tuple[str, tuple[int, int, int], float], ...]  # busiest program: (rate key, tile, FLOPs)
    cuda_flops: float  # busiest program: CUDA-core flop-equivalents (work_count.py)
    source: str = ""  # how it was counted, in words

    @property
    def main_dot(self) -> tuple[str, tuple[int, int, int], float] | None:
        """(rate key, tile, FLOPs) of the dot that did the most work in the busiest program."""
        return max(self.dot_flops, key=lambda x: x[2], default=None)


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    tile: tuple[int, int, int] | None  # BLOCK_M, BLOCK_N, BLOCK_K of the main dot (from the TTIR)
    grid: tuple[int, ...]  # launch grid as captured
    num_warps: int
    num_stages: int  # the launch option (a claim; pipeline_stages is what was compiled)
    shared: int
    regs: int | None
    spill_bytes: int | None
    uses_wgmma: bool  # a wgmma.mma_async instruction line in the PTX
    uses_tma: bool  # a cp.async.bulk.tensor instruction line in the PTX
    atomics: bool  # tt.atomic_rmw present (split-K by atomic add)
    pipeline_stages: int | None = None  # operand buffers the compiled loop cycles through (None: num_stages)
    dot_rate: str | None = None  # rate key of the main dot (dot_rate_key); None: the task's
    work: ExecutedWork | None = None  # verified stage: what ran
    loop_flops: float = 0.0  # float ops per K step besides the dot, as compiled (compile.loop_float_flops)

    @property
    def buffers(self) -> int:
        """Operand buffers of the compiled pipeline (the launch's num_stages when not known)."""
        return self.pipeline_stages if self.pipeline_stages is not None else self.num_stages


def dot_rate_key(precision: str) -> str:
    """A dot's rate key from its TTIR precision (compile.dot_facts: "bf16", "f16", "f8E4M3FN", or for
    fp32 operands "tf32", "tf32x3", "ieee"): "bf16", "fp16", "fp8", "tf32", "tf32x3", "fp32"."""
    if precision.startswith("f8") or precision.startswith("fp8"):
        return "fp8"
    return {"f16": "fp16", "fp16": "fp16", "bf16": "bf16", "tf32": "tf32", "tf32x3": "tf32x3"}.get(
        precision, "fp32"
    )


def launch_from_facts(facts: dict, grid: list[int], work: ExecutedWork | None = None) -> KernelLaunch:
    """One kernel's compile facts (evaluators/compile.py) plus the grid of one launch (and, verified,
    what its programs executed). The main dot is the largest tile the TTIR multiplies (with executed
    work: the one that did the most FLOPs), never the first one written."""
    dots = [d for d in facts.get("dots") or [] if d.get("tile") and len(d["tile"]) == 3]
    main = max(dots, key=lambda d: math.prod(d["tile"]), default=None)
    if work is not None and work.main_dot is not None:
        key, tile, _ = work.main_dot
        main = {"tile": list(tile), "precision": key}
    stages = facts.get("pipeline_stages")
    rate = dot_rate_key(str(main["precision"])) if main and main.get("precision") else None
    return KernelLaunch(
        tile=tuple(int(x) for x in main["tile"]) if main else None,
        grid=tuple(int(g) for g in grid) or (1,),
        num_warps=int(facts.get("num_warps", 4)),
        num_stages=int(facts.get("num_stages", 3)),
        shared=int(facts.get("shared", 0)),
        regs=None if facts.get("regs") is None else int(facts["regs"]),
        spill_bytes=None if facts.get("spill_bytes") is None else int(facts["spill_bytes"]),
        uses_wgmma=bool(facts.get("uses_wgmma", False)),
        uses_tma=bool(facts.get("uses_tma", False)),
        atomics=bool(facts.get("atomics", False)),
        pipeline_stages=None if stages is None else int(stages),
        dot_rate=compiled_rate(rate, facts.get("mma_operand_types") or []),
        work=work,
        loop_flops=float(facts.get("loop_float_flops") or 0),
    )


def compiled_rate(rate: str | None, operand_types: list[str]) -> str | None:
    """The main dot's rate key as compiled: an fp8 dot whose every lowered dot multiplies 16-bit
    operands (Hopper's mma.sync path upcasts fp8 to fp16) runs at that 16-bit rate, not fp8's."""
    if rate == "fp8" and operand_types and all(t in ("f16", "bf16") for t in operand_types):
        return "bf16" if all(t == "bf16" for t in operand_types) else "fp16"
    return rate
