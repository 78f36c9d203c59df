"""Compile stage: what the GPU compiler makes of a candidate, with or without a GPU.

Without a GPU we capture each launch the entry point makes (on `meta` tensors, so
nothing runs and nothing is allocated), let Triton's own binder derive the
specialisation the JIT would use (divisibility-16 attributes, stride-1 constexprs),
and compile ahead of time for the task's target. Shared memory comes from the
compiled metadata, registers and spills from the cubin via the `cuobjdump` that
ships in the Triton wheel. Limits are checked by the caller (targets.py), since an
offline compile happily produces kernels that would fail to launch.

Functions prefixed `child_` run inside the sandboxed child; the rest in the parent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from . import compat, dataflow
from .fingerprint import judge_fingerprint

LOG_LIMIT = 1500  # characters of compiler output kept in feedback


def truncate(text: str, limit: int = LOG_LIMIT) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[: limit // 3] + "\n…[truncated]…\n" + text[-(2 * limit) // 3 :]


# ---------------------------------------------------------------- child side


def child_backend(capability: int):
    """(target, backend) of Triton's CUDA compiler for `capability` (e.g. 90); no GPU needed."""
    return compat.cuda_backend(capability)


def child_specialise(jit_fn, backend, args: tuple, kwargs: dict) -> dict:
    """Triton's own binder applied to real arguments: signature, constexprs, attrs, options."""
    return compat.specialise(jit_fn, backend, args, kwargs)


def spec_key(kernel_name: str, spec: dict) -> str:
    """Stable text key of one specialisation (what the JIT's own cache keys on)."""
    opts = spec["options"].__dict__ if hasattr(spec["options"], "__dict__") else spec["options"]
    opts = {k: v for k, v in sorted(opts.items()) if k not in ("extern_libs",)}
    text = json.dumps(
        [
            kernel_name,
            spec["signature"],
            sorted((str(k), repr(v)) for k, v in spec["constexprs"].items()),
            sorted((str(k), repr(v)) for k, v in spec["attrs"].items()),
            repr(opts),
        ],
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def child_compile(jit_fn, spec: dict, target) -> dict:
    """Compile ahead of time; facts about the result as plain data."""
    start = time.perf_counter()
    kernel = compat.kernel_facts(compat.compile_for(jit_fn, spec, target))
    facts = compiled_facts(
        kernel["asm"], kernel["shared"], kernel["num_warps"], kernel["num_stages"], kernel["metadata"]
    )
    facts.update(cubin_resources(kernel["asm"]["cubin"]))
    facts["compile_s"] = round(time.perf_counter() - start, 3)
    return facts


def compiled_facts(asm: dict, shared: int, num_warps: int, num_stages: int, metadata=None) -> dict:
    """Facts the judge and the model use, from a compiled kernel's asm by stage and metadata.

    `global_scratch`: bytes of global scratch memory the kernel asks the host's Triton allocator
    for at launch (in-kernel TMA descriptors); the contract provides that allocator
    (compat.install_scratch_allocator). `data_dependent`: branches, loop bounds, masks and addresses
    that depend on loaded data or float arithmetic (evaluators/dataflow.py), as dicts."""
    ptx = asm.get("ptx", "")
    ttir = asm.get("ttir", "")
    return {
        "global_scratch": int(getattr(metadata, "global_scratch_size", 0) or 0),
        "spin_wait": spin_wait(ttir),
        "data_dependent": [dataclasses.asdict(f) for f in dataflow.check(ttir)],
        "ttir": ttir,  # for the per-launch int32 range check (evaluators/ranges.py); not reported
        "shared": int(shared),
        "num_warps": int(num_warps),
        "num_stages": int(num_stages),
        "uses_wgmma": bool(_WGMMA.search(ptx)),
        "uses_tma": bool(_TMA.search(ptx)),
        "pipeline_stages": pipeline_stages(asm.get("ttgir", "")),
        "loop_float_flops": loop_float_flops(asm.get("ttgir", "")),
        "mma_operand_types": mma_operand_types(asm.get("ttgir", "")),
        "dots": dot_facts(ttir),
        "narrowed_to": narrowing_facts(ttir),
        "atomics": "tt.atomic_rmw" in ttir or "tt.atomic_cas" in ttir,
    }


# Instruction lines of the PTX, never a substring of a symbol name (a kernel named "..._wgmma_..."
# must not read as one that uses wgmma).
_WGMMA = re.compile(r"^\s*(?:@!?%\w+\s+)?wgmma\.mma_async\b", re.M)  # an optional predicate
_TMA = re.compile(r"^\s*(?:@!?%\w+\s+)?cp\.async\.bulk\.tensor\b", re.M)  # issued by one thread: predicated
_ASYNC_COPY = re.compile(r"\b(?:ttg\.async_copy_global_to_local|ttng\.async_tma_copy_global_to_local)\b")
_BUFFERS = re.compile(r"ttg\.local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+)x\d+x\d+x")


def pipeline_stages(ttgir: str) -> int:
    """Operand buffers the compiled K loop cycles through: the leading dimension of the multi-buffered
    shared-memory allocations that async copies (cp.async or TMA) fill; 1 when nothing is copied
    asynchronously (loads go through registers and nothing overlaps them), whatever the launch's
    num_stages said (a `tl.range(..., num_stages=1)` loop compiles no pipeline)."""
    if not _ASYNC_COPY.search(ttgir):
        return 1
    return max((int(n) for n in _BUFFERS.findall(ttgir)), default=1)


# A dot as lowered: tt.dot on register operands (mma.sync) or ttng.warp_group_dot on shared memory (wgmma).
_COMPILED_DOT = re.compile(
    r"\b(?:tt\.dot|ttng\.warp_group_dot)\s.*?:\s*(?:tensor|!ttg\.memdesc)<(?:\d+x)+(\w+)[,>]"
)


def mma_operand_types(ttgir: str) -> list[str]:
    """The A operand's element type of every dot as the compiler lowered it (TTGIR), e.g. "f16" for an
    fp8 dot that Hopper's mma.sync path upcasts, where the TTIR still says f8E4M3FN: what sets the
    tensor-core rate the dot runs at."""
    return [m.group(1) for m in _COMPILED_DOT.finditer(ttgir)]


_DOT_OP = re.compile(r"\b(?:tt\.dot|ttng\.warp_group_dot)\s")
# Float arithmetic on tensors (or scalars): the op, then the result type's shape and float type.
_FLOAT_OP = re.compile(
    r"=\s*(arith\.(?:addf|subf|mulf|divf|negf|maximumf|minimumf|maxnumf|minnumf)|math\.fma)\s[^:]*:\s*"
    r"(?:tensor<((?:\d+x)+)f\d+|f\d+)"
)


def k_loop_bodies(ttgir: str) -> list[list[str]]:
    """The body lines (nested regions included) of every scf.for that holds a dot, the innermost loop
    owning a line."""
    stack: list[dict] = []  # open regions; an scf.for collects its own body's lines
    loops = []
    for line in ttgir.splitlines():
        text = line.strip()
        if text.startswith("}"):
            region = stack.pop() if stack else None
            if region and region["for"] and any(_DOT_OP.search(x) for x in region["lines"]):
                loops.append(region["lines"])
            if text.endswith("{"):  # "} else {": the next region of the same op
                stack.append({"for": False, "lines": []})
            continue
        loop = next((r for r in reversed(stack) if r["for"]), None)
        if loop is not None:
            loop["lines"].append(text)
        if text.endswith("{"):
            stack.append({"for": "scf.for" in text, "lines": []})
    return loops


def loop_float_flops(ttgir: str) -> int:
    """Float arithmetic one program executes per iteration of its K loop besides the dot, as compiled:
    elementwise float ops on tensors (or scalars) in the body of the scf.for that holds the dot, each
    counted over its elements (math.fma twice). `acc = tl.dot(a, b, acc)` compiles to none (the MMA
    accumulates); `acc += tl.dot(a, b) * scale` compiles to a multiply and an add per element, run
    on CUDA cores every step. The largest over a kernel's dot loops; 0 without one."""
    best = 0
    for lines in k_loop_bodies(ttgir):
        flops = 0
        for x in lines:
            m = _FLOAT_OP.search(x)
            if m:
                elems = math.prod(int(d) for d in m.group(2).rstrip("x").split("x")) if m.group(2) else 1
                flops += elems * (2 if m.group(1) == "math.fma" else 1)
        best = max(best, flops)
    return best


_CONSTANT = re.compile(r"(%[\w.]+) = arith\.constant (?:dense<)?(-?[\d.]+(?:e[-+]?\d+)?)")
_RMW = re.compile(r"tt\.atomic_rmw (\w+),[^%]*%[\w.]+, (%[\w.]+)")
_CAS = re.compile(r"tt\.atomic_cas [^%]*%[\w.]+, (%[\w.]+), (%[\w.]+)")


def spin_wait(ttir: str) -> bool:
    """True when a `while` loop (scf.while) polls memory: reads it without changing it, through a
    volatile load, an atomic add/or/xor/max/min of zero, or an atomic_cas that writes back what it
    expects. That is a wait for another program's write (flags between programs); a loop that
    takes work from an atomic counter (atomic_add of 1) or a lock is not."""
    zeros = {name for name, value in _CONSTANT.findall(ttir) if float(value) == 0.0}
    lines = ttir.splitlines()
    i = 0
    while i < len(lines):
        if "scf.while" not in lines[i]:
            i += 1
            continue
        depth = lines[i].count("{") - lines[i].count("}")
        i += 1
        while i < len(lines) and depth > 0:
            line = lines[i]
            depth += line.count("{") - line.count("}")
            if "tt.load" in line and "isVolatile = true" in line:
                return True
            if "atomic_poll" in line:
                return True
            rmw = _RMW.search(line)
            if rmw and rmw.group(1) in ("add", "fadd", "or", "xor", "max", "umax") and rmw.group(2) in zeros:
                return True
            cas = _CAS.search(line)
            if cas and cas.group(1) == cas.group(2):
                return True
            i += 1
    return False


_DOT = re.compile(
    r"tt\.dot\s.*?(?:inputPrecision\s*=\s*(\w+))?(?:\s*\{[^}]*\})?\s*:\s*tensor<((?:\d+x)+)(\w+)>\s*\*\s*"
    r"tensor<((?:\d+x)+)(\w+)>(?:\s*->\s*tensor<(?:\d+x)+(\w+)>)?"
)
# A float value rounded to another float type: arith.truncf (f32 -> bf16) or tt.fp_to_fp (-> fp8).
_NARROWING = re.compile(r"(arith\.truncf|tt\.fp_to_fp)\b.*?(?:to|->)\s*tensor<(?:\d+x)*(\w+)>")


def dot_facts(ttir: str) -> list[dict]:
    """Each tt.dot: operand element types, precision (for fp32 operands the input precision,
    tf32 or ieee, absent meaning IEEE; for others their own type, e.g. "bf16") and the tile it multiplies, [BLOCK_M, BLOCK_N, BLOCK_K] (whatever the kernel calls them)."""
    out = []
    for line in ttir.splitlines():
        if "tt.dot " not in line:
            continue
        m = _DOT.search(line)
        if m:
            a_dims = [int(x) for x in m.group(2).rstrip("x").split("x")]
            b_dims = [int(x) for x in m.group(4).rstrip("x").split("x")]
            tile = [a_dims[-2], b_dims[-1], a_dims[-1]] if len(a_dims) >= 2 and len(b_dims) >= 2 else []
            # inputPrecision only matters for fp32 operands (tf32 or ieee); others multiply at their own type.
            f32 = m.group(3) == "f32" and m.group(5) == "f32"
            precision = (m.group(1) or "ieee") if f32 else m.group(3)
            out.append(
                {"precision": precision, "a": m.group(3), "b": m.group(5), "acc": m.group(6), "tile": tile}
            )
    return out


def cuobjdump_path() -> str | None:
    try:
        import triton

        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(path) if path.exists() else None
    except Exception:
        return None


def cubin_resources(cubin: bytes) -> dict:
    """Registers and spill (local memory) bytes per thread, from `cuobjdump -res-usage`."""
    tool = cuobjdump_path()
    if tool is None:
        return {"regs": None, "spill_bytes": None, "resource_note": "cuobjdump not found in the triton wheel"}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, timeout=60).stdout
    regs = re.search(r"REG:(\d+)", out)
    local = re.search(r"LOCAL:(\d+)", out)
    return {
        "regs": int(regs.group(1)) if regs else None,
        "spill_bytes": int(local.group(1)) if local else None,
    }


# ---------------------------------------------------------------- parent side


class CompileCache:
    """Compile facts by (source hash, specialisation, target), one JSON file per source, and
    finished verdicts by (source, task, backend) under evaluations/."""

    def __init__(self, root: str | Path | None = None) -> None:
        default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "triton-evolve"
        self.root = Path(root or os.environ.get("TRITON_EVOLVE_CACHE") or default)
        self._memory: dict[str, dict] = {}

    def _file(self, source_hash: str, target: str) -> Path:
        # The judge's fingerprint is in the name: facts recorded by other judge code are not reused.
        return self.root / "compile" / f"{source_hash}-{target}-{judge_fingerprint()[:16]}.json"

    def get(self, source_hash: str, target: str) -> dict:
        key = f"{source_hash}-{target}"
        if key not in self._memory:
            try:
                self._memory[key] = json.loads(self._file(source_hash, target).read_text())
            except (OSError, ValueError):
                self._memory[key] = {}
        return dict(self._memory[key])

    def put(self, source_hash: str, target: str, entries: dict) -> None:
        if not entries:
            return
        merged = {**self.get(source_hash, target), **entries}
        self._memory[f"{source_hash}-{target}"] = merged
        try:
            self._file(source_hash, target).parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file(source_hash, target).with_suffix(".tmp")
            tmp.write_text(json.dumps(merged))
            tmp.replace(self._file(source_hash, target))
        except OSError:
            pass  # a read-only cache only costs time

    def get_evaluation(self, key: str) -> dict | None:
        try:
            return json.loads((self.root / "evaluations" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put_evaluation(self, key: str, evaluation: dict) -> None:
        try:
            folder = self.root / "evaluations"
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f"{key}.tmp"
            tmp.write_text(json.dumps(evaluation))
            tmp.replace(folder / f"{key}.json")
        except OSError:
            pass


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def narrowing_facts(ttir: str) -> list[str]:
    """The float types values are rounded to in the kernel (truncf, fp_to_fp), each once, sorted."""
    return sorted({m.group(2) for m in _NARROWING.finditer(ttir)})


# Float types a task's values may be held in: the task's own dtype and anything wider. Narrower in
# range (fp16 for bf16 data), in mantissa (bf16 for fp16 data) or both (fp8) loses what the task
# promises; TTIR element-type names.
_KEEPS_PRECISION = {
    "fp16": {"f16", "f32", "f64"},
    "bf16": {"bf16", "f32", "f64"},
    "fp32": {"f32", "f64"},
}


def precision_problems(facts: dict, dtype: str, allow_tf32: bool) -> list[str]:
    """What the compiled kernel does below the task's precision, one message per fault:
    a tl.dot on operands narrower than the task's dtype (fp8 or fp16 on a bf16 task), a tl.dot
    accumulating below fp32 on a 16-bit task (out_dtype=tl.float16), a value rounded to a
    narrower float type anywhere in the kernel, and on a strict fp32 task (allow_tf32 false)
    a dot at TF32 (3xTF32, `tf32x3`, is fp32-accurate and allowed)."""
    keeps = _KEEPS_PRECISION.get(dtype)
    if keeps is None:
        return []
    problems = []
    for dot in facts.get("dots", []):
        narrow = [t for t in (dot["a"], dot["b"]) if t not in keeps]
        if narrow:
            problems.append(
                f"tl.dot on {dot['a']} x {dot['b']} operands: narrower than the task's {dtype}"
                f"{' (the task is strict fp32)' if dtype == 'fp32' and not allow_tf32 else ''} "
                f"({', '.join(sorted(set(narrow)))} loses range or mantissa); multiply the task's dtype"
            )
        elif dtype != "fp32" and dot.get("acc") and dot["acc"] not in ("f32", "f64"):
            problems.append(
                f"tl.dot accumulating in {dot['acc']} (out_dtype): a {dtype} task accumulates in fp32"
            )
        elif dtype == "fp32" and not allow_tf32 and dot["precision"] not in ("ieee", "tf32x3"):
            problems.append(
                f"tl.dot with input_precision={dot['precision']}: the task is strict fp32 (no TF32); "
                'pass input_precision="ieee" (or "tf32x3", fp32-accurate)'
            )
    narrowed = [t for t in facts.get("narrowed_to", []) if t.startswith(("f", "bf")) and t not in keeps]
    if narrowed:
        problems.append(
            f"values rounded to {', '.join(narrowed)} inside the kernel: narrower than the task's {dtype}"
        )
    return problems
