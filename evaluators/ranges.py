"""int32 offsets that wrap: interval arithmetic over a kernel's TTIR at one launch's arguments.

A kernel that computes `offs_m[:, None] * stride_cm` in int32 is right on every shape the judge
runs and writes the wrong memory once an operand passes 2^31 elements (triton-lang/triton #6748;
databricks/megablocks #185). The interpreter never runs the training shapes, so the judge
evaluates the integer arithmetic of each launch abstractly: every integer value gets the interval
it can take given the launch's scalar arguments (exact), the grid (program ids in [0, grid)),
`tl.arange` ranges and loop induction variables; an i32 add, subtract, multiply or shift whose
exact interval leaves [-2^31, 2^31 - 1] wraps, and a wrapped value that reaches an address
(`tt.addptr`, a descriptor offset) is a finding. Values the analysis cannot bound (loop-carried
integers, reductions, loads) are unknown and never reported: no false alarms, only misses.
Pointer arithmetic itself is 64-bit (`tt.addptr` sign-extends its offset), so a pointer advanced
in a loop never wraps; the offsets computed in int32 before it do.
"""

from __future__ import annotations

import dataclasses
import re

from . import dataflow

I32 = (-(2**31), 2**31 - 1)
_FUNC_ARG = re.compile(r"(%[\w.$-]+): (i1|i8|i16|i32|i64)\b")
_INT = re.compile(r"arith\.constant (?:dense<)?(-?\d+|true|false)>?\s*:\s*(?:tensor<[\dx]*)?(i\d+)")
_RANGE = re.compile(r"\{end = (-?\d+) : i32, start = (-?\d+) : i32\}")
_AXIS = re.compile(r"tt\.get_program_id (x|y|z)")
_RESULT_TYPE = re.compile(r":\s*(?:tensor<(?:\d+x)*)?(i\d+)>?\s*(?:loc\(|$)")

Interval = tuple[int, int] | None
SAME = {"tt.splat", "tt.broadcast", "tt.expand_dims", "tt.reshape", "tt.trans", "arith.extsi", "arith.extui"}
SAME |= {"arith.index_cast", "arith.index_castui", "arith.trunci"}


@dataclasses.dataclass(frozen=True)
class Wrap:
    """An int32 op at `line` whose exact result spans `interval`, reaching an address."""

    line: int | None
    op: str
    interval: tuple[int, int]

    def describe(self) -> str:
        at = f"line {self.line}: " if self.line else ""
        lo, hi = self.interval
        return f"{at}int32 {self.op} reaches {hi if hi > I32[1] else lo}, past int32's range"


def _combine(op: str, a: tuple[int, int], b: tuple[int, int]) -> Interval:
    if op == "arith.addi":
        return a[0] + b[0], a[1] + b[1]
    if op == "arith.subi":
        return a[0] - b[1], a[1] - b[0]
    if op == "arith.muli":
        products = [x * y for x in a for y in b]
        return min(products), max(products)
    if op in ("arith.minsi", "arith.minui"):
        return min(a[0], b[0]), min(a[1], b[1])
    if op in ("arith.maxsi", "arith.maxui"):
        return max(a[0], b[0]), max(a[1], b[1])
    if op in ("arith.divsi", "arith.divui") and b[0] > 0:
        quotients = [int(x / y) for x in a for y in b]
        return min(quotients), max(quotients)
    if op in ("arith.remsi", "arith.remui") and b[0] > 0:
        if a[0] >= 0:
            return 0, min(a[1], b[1] - 1)
        return -(b[1] - 1), b[1] - 1
    if op == "arith.andi" and a[0] >= 0 and b[0] >= 0:
        return 0, min(a[1], b[1])
    if op in ("arith.ori", "arith.xori") and a[0] >= 0 and b[0] >= 0:
        return 0, (1 << max(a[1], b[1]).bit_length()) - 1
    if op == "arith.shli" and a[0] >= 0 and b[0] >= 0 and b[1] < 64:
        return a[0] << b[0], a[1] << b[1]
    if op in ("arith.shrsi", "arith.shrui") and a[0] >= 0 and b[0] >= 0:
        return a[0] >> min(b[1], 64), a[1] >> b[0]
    return None


CHOICES = {"arith.cmpi", "arith.minsi", "arith.maxsi", "arith.minui", "arith.maxui"}
WRAPPING = {"arith.addi", "arith.subi", "arith.muli", "arith.shli"}


def check(ttir: str, scalars: dict[str, int], grid: tuple[int, ...]) -> list[Wrap]:
    """The int32 wraps of one launch: `scalars` maps the kernel's integer argument names (as in
    the TTIR, e.g. "M", "stride_cm") to their values, `grid` is the launch grid. One Wrap per
    overflowing op whose value reaches an address, in program order."""
    return analyse(ttir, scalars, grid)[0]


def branch_outcomes(ttir: str, scalars: dict[str, int], grid: tuple[int, ...]) -> tuple:
    """Each choice of one launch, in program order: `scf.if` conditions, integer comparisons and
    min/max: 0 or 1 (the condition, or which operand a min/max took) where the launch's arguments
    decide it for every program (`if M * N > 2**20`, `min(K, 512)`), None where it varies or cannot
    be bounded. Launches whose decided choices agree take the same shape-keyed paths."""
    return analyse(ttir, scalars, grid)[1]


def analyse(ttir: str, scalars: dict[str, int], grid: tuple[int, ...]) -> tuple[list[Wrap], tuple]:
    """(wraps, branch outcomes) of one launch; see check() and branch_outcomes()."""
    lines = ttir.splitlines()
    defs = {}
    for line in lines:
        m = dataflow.LOC_DEF.match(line)
        if m:
            defs[m.group(1)] = m.group(2)
    files = dataflow.user_files(defs)
    names = dataflow.Scopes()
    value: dict[str, Interval] = {}
    wrapped: dict[str, Wrap] = {}  # node -> the wrap it carries
    found: list[Wrap] = []
    outcomes: list[int | None] = []
    depth = 0  # regions open (func/module excluded)
    for raw in lines:
        line = raw.strip()
        if line.startswith("tt.func"):
            for name, _ in _FUNC_ARG.findall(line):
                if name[1:] in scalars:
                    value[names.define(name)] = (int(scalars[name[1:]]),) * 2
            continue
        if not line or line.startswith(("#loc", "module", "tt.return", "//", "^bb")):
            continue
        if line.startswith("}"):
            if depth:
                names.stack.pop()
                if "do {" in line or "else {" in line:
                    names.stack.append({})
                else:
                    depth -= 1
            continue
        m = dataflow.RESULTS.match(line)
        results, rest = (dataflow.result_names(m.group(1)), m.group(2)) if m else ([], line)
        op_match = dataflow.OP.match(rest)
        op = op_match.group(1) if op_match else ""
        tail = rest[op_match.end() :] if op_match else rest
        if op == "scf.for":
            head = re.match(r"\s*(%[\w.$-]+) = (%[\w.#$-]+) to (%[\w.#$-]+) step (%[\w.#$-]+)", tail)
            bounds = [value.get(names.use(v)) for v in head.groups()[1:3]] if head else [None, None]
            for r in results:
                names.define(r)
            names.stack.append({})
            depth += 1
            if head:
                lb, ub = bounds
                node = names.define(head.group(1))
                value[node] = (lb[0], ub[1] - 1) if lb and ub and ub[1] > lb[0] else None
            for arg in (
                re.findall(r"(%[\w.$-]+) = ", tail.split("iter_args", 1)[1]) if "iter_args" in tail else []
            ):
                names.define(arg)  # loop-carried: unknown
            continue
        if line.endswith("{"):  # scf.if / scf.while / reductions: results unknown
            if op == "scf.if":
                cond = (
                    value.get(names.use(dataflow.operand_names(tail)[0]))
                    if dataflow.operand_names(tail)
                    else None
                )
                outcomes.append(cond[0] if cond and cond[0] == cond[1] else None)
            for r in results:
                names.define(r)
            names.stack.append({})
            depth += 1
            continue
        operands = [names.use(v) for v in dataflow.operand_names(tail)]
        nodes = [names.define(r) for r in results]
        carried = next((wrapped[o] for o in operands if o in wrapped), None)
        if op in ("tt.addptr", "tt.descriptor_load", "tt.descriptor_store", "tt.make_tensor_descriptor"):
            offsets = operands[1:]
            hit = next((wrapped[o] for o in offsets if o in wrapped), None)
            if hit is not None and hit not in found:
                found.append(hit)
        result = _evaluate(op, rest, tail, operands, value, grid)
        if op in CHOICES:  # a choice the arguments may decide for every program: record which way
            inputs = [value.get(o) for o in operands[:2]]
            exact = all(x is not None and x[0] == x[1] for x in inputs) and result is not None
            outcomes.append(
                (result[0] if op == "arith.cmpi" else int(inputs[0] != result)) if exact else None
            )
        if op in WRAPPING and result is not None and _is_i32(rest):
            if result[0] < I32[0] or result[1] > I32[1]:
                carried = Wrap(dataflow.line_of_op(line, defs, files), _OP_WORDS.get(op, op), result)
                result = None
        for node in nodes:
            value[node] = result
            if carried is not None:
                wrapped[node] = carried
    return found, tuple(outcomes)


_OP_WORDS = {"arith.addi": "addition", "arith.subi": "subtraction", "arith.muli": "multiplication"}
_OP_WORDS["arith.shli"] = "shift"


def _is_i32(rest: str) -> bool:
    m = _RESULT_TYPE.search(rest)
    return bool(m) and m.group(1) == "i32"


def _evaluate(op: str, rest: str, tail: str, operands: list[str], value: dict, grid: tuple) -> Interval:
    if op == "arith.constant":
        m = _INT.search(rest)
        if not m:
            return None
        v = {"true": 1, "false": 0}.get(m.group(1))
        v = int(m.group(1)) if v is None else v
        return v, v
    if op == "tt.get_program_id":
        m = _AXIS.search(rest)
        axis = "xyz".index(m.group(1)) if m else 0
        return (0, max(0, int(grid[axis]) - 1)) if axis < len(grid) else (0, 0)
    if op == "tt.get_num_programs":
        m = re.search(r"tt\.get_num_programs (x|y|z)", rest)
        axis = "xyz".index(m.group(1)) if m else 0
        n = int(grid[axis]) if axis < len(grid) else 1
        return n, n
    if op == "tt.make_range":
        m = _RANGE.search(rest)
        return (int(m.group(2)), int(m.group(1)) - 1) if m else None
    if op == "arith.cmpi":
        return 0, 1
    if op in SAME:
        return value.get(operands[0]) if operands else None
    if op == "arith.select" and len(operands) == 3:
        a, b = value.get(operands[1]), value.get(operands[2])
        return (min(a[0], b[0]), max(a[1], b[1])) if a and b else None
    if op.startswith("arith.") and len(operands) == 2:
        a, b = value.get(operands[0]), value.get(operands[1])
        return _combine(op, a, b) if a and b else None
    return None


def first_wrap(launches: list[dict], kernels: dict) -> str | None:
    """The first launch (training, held-out, check: every shape the candidate was captured on) whose
    kernel wraps int32 offsets at its arguments, as a message for the candidate; None if none does.
    `launches`: the compile capture's entries (shape, layout, calls with key, signature, arg_names);
    `kernels`: compile facts by key, with their TTIR."""
    for entry in launches:
        for call in entry.get("calls", []):
            facts = kernels.get(call.get("key")) or {}
            ttir, signature = facts.get("ttir"), call.get("signature")
            if not ttir or not signature or "arg_names" not in call:
                continue
            name, grid, args, kwargs = signature
            named = {**dict(zip(call["arg_names"], args, strict=False)), **dict(kwargs)}
            scalars = {k: v for k, v in named.items() if isinstance(v, int) and not isinstance(v, bool)}
            wraps = check(ttir, scalars, tuple(grid))
            if wraps:
                return (
                    f"shape {tuple(entry['shape'])} layout {entry['layout']}: kernel {name}: {wraps[0].describe()}, "
                    "in a value that reaches an address: the offsets wrap, so the kernel reads or writes the "
                    "wrong memory on this shape (int32 offsets past 2^31 elements). Compute offsets in int64 "
                    "(e.g. offs_m.to(tl.int64) * stride_cm)"
                )
    return None
