"""Control flow never depends on the data: a dataflow check over a kernel's TTIR.

In a matmul kernel every branch, loop bound, load/store mask and address derives from program
ids, shapes, strides, loop counters and values returned by atomics. A kernel that decides from
the values it loads (skip a K-tile whose A is all zero or small, a NaN clamp that changes which
elements are stored) or from floating-point arithmetic (a float expression whose value differs
when the compiler fuses it into an FMA; a bf16 comparison or a float-to-int conversion that
Triton's CPU interpreter evaluates differently from a GPU) can take one path under the judge's
interpreter and another in production, on inputs nobody drew. One rule closes that kind.

Taint sources: values loaded from memory (`tt.load`, descriptor loads, any element type: an
input viewed as integers is still the input), float comparisons (`arith.cmpf`), float-to-int
conversions (`arith.fptosi`/`fptoui`, a bitcast from a float type) and inline asm (opaque).
Atomics' results are not tainted: they are how programs legitimately order themselves (split-K
arrival counters, stream-K flags). Taint flows through every op, through the values yielded by
`scf.for`/`scf.if`/`scf.while` regions position by position, and through reductions.
Sinks: `scf.if`/`cf.cond_br` conditions, `scf.for` bounds and step, `scf.while` conditions,
masks and addresses of loads, stores and atomics, descriptor offsets. A select (`tl.where`) on
tainted values is not a sink: it computes both sides, elementwise math judged by its values.

Reference for the IR: Triton's TTIR dialect (triton-lang/triton, include/triton/Dialect/Triton/IR/
TritonOps.td) and MLIR's scf dialect; the text form parsed here is what `asm["ttir"]` prints.
"""

from __future__ import annotations

import dataclasses
import re

_VALUE = re.compile(r"%[\w.$-]+(?:#\d+)?")
RESULTS = re.compile(r"^\s*((?:%[\w.$-]+(?::\d+)?)(?:\s*,\s*%[\w.$-]+(?::\d+)?)*)\s*=\s*(.*)$")
OP = re.compile(r'^"?([a-z_]+\.[\w.]+)"?')
_LOC_REF = re.compile(r"loc\((#loc\d*)\)\s*$")
LOC_DEF = re.compile(r"^(#loc\d*) = loc\((.*)\)\s*$")
_FILE_LINE = re.compile(r'"([^"]+)":(\d+):\d+')
_LOC_NAMES = re.compile(r"#loc\d*")
_FLOAT_TYPE = re.compile(r"\b(?:f16|bf16|f32|f64|f8\w*)\b")

SOURCES = {
    "tt.load": "a value loaded from memory",
    "tt.descriptor_load": "a value loaded from memory",
    "tt.descriptor_gather": "a value loaded from memory",
    "arith.cmpf": "a floating-point comparison",
    "arith.fptosi": "a float-to-int conversion",
    "arith.fptoui": "a float-to-int conversion",
    "tt.elementwise_inline_asm": "inline asm",
}
_RANK = {
    text: rank
    for rank, text in enumerate(dict.fromkeys([*SOURCES.values(), "a float reinterpreted as bits"]))
}
UNTAINTED = {"tt.atomic_rmw", "tt.atomic_cas"}  # their results: how programs order themselves
BITCASTS = {"arith.bitcast", "tt.bitcast"}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One sink fed by data: `what` ("branch", "loop bound", "mask", "address", ...) at `line` of
    the kernel's source, depending on `source` (e.g. "a value loaded from memory") at `source_line`."""

    what: str
    line: int | None
    source: str
    source_line: int | None

    def describe(self) -> str:
        at = f" (line {self.line})" if self.line else ""
        src = f" (line {self.source_line})" if self.source_line else ""
        return f"a {self.what}{at} depends on {self.source}{src}"


@dataclasses.dataclass
class _Frame:
    op: str
    results: list[str]
    args: list[str]  # block arguments bound to them (before-region for scf.while)
    operands: list[str]  # everything the op line uses (reductions: their inputs)
    condition_args: list[str] = dataclasses.field(default_factory=list)
    phase: str = "body"
    sink: int | None = None  # index in _Graph.sinks of the op's own sink (its line comes at the `}`)


class _Graph:
    def __init__(self) -> None:
        self.deps: dict[str, set[str]] = {}
        self.origin: dict[str, tuple[str, int | None]] = {}
        self.sinks: list[tuple[str, list[str], int | None]] = []
        self.writes: list[list[str]] = []  # address operands of stores, atomics, descriptor stores

    def depend(self, node: str, on: list[str]) -> None:
        self.deps.setdefault(node, set()).update(on)

    def propagate(self) -> None:
        """Fixed point: each node takes the highest-ranked origin among its own and its deps' (a loaded
        value over what was computed from it, so the message names the root cause)."""
        changed = True
        while changed:
            changed = False
            for node, on in self.deps.items():
                best = self.origin.get(node)
                for dep in on:
                    theirs = self.origin.get(dep)
                    if theirs is not None and (best is None or _RANK[theirs[0]] < _RANK[best[0]]):
                        best = theirs
                if best is not None and best != self.origin.get(node):
                    self.origin[node] = best
                    changed = True

    def findings(self) -> list[Finding]:
        out = []
        for what, nodes, line in self.sinks:
            for node in nodes:
                if node in self.origin:
                    source, source_line = self.origin[node]
                    out.append(Finding(what, line, source, source_line))
                    break
        return out


def _line_of(loc: str, defs: dict[str, str], user_files: set[str] | None, seen=None) -> int | None:
    """The source line a `#locN` names, in the kernel's own file (not Triton's standard library)."""
    seen = seen or set()
    if loc in seen or loc not in defs:
        return None
    seen.add(loc)
    text = defs[loc]
    for path, line in _FILE_LINE.findall(text):
        if "/triton/" not in path and (user_files is None or path in user_files):
            return int(line)
    # callsite(#callee at #caller): the caller's line is the kernel's; names wrap another loc
    refs = _LOC_NAMES.findall(text)
    for ref in reversed(refs) if "callsite" in text else refs:
        line = _line_of(ref, defs, user_files, seen)
        if line is not None:
            return line
    return None


def operand_names(text: str) -> list[str]:
    """The %values an op line uses, in order, up to its type annotation and location."""
    body = re.sub(r"\sloc\(.*$", "", text)
    return _VALUE.findall(body)


def user_files(defs: dict[str, str]) -> set[str]:
    """The source files `#loc` definitions name, Triton's own library excluded: the kernel's."""
    return {path for path, _ in _FILE_LINE.findall("\n".join(defs.values())) if "/triton/" not in path}


def line_of_op(line: str, defs: dict[str, str], files: set[str]) -> int | None:
    """The kernel-source line of one printed op, from its trailing `loc(...)`."""
    m = _LOC_REF.search(line)
    if m:
        return _line_of(m.group(1), defs, files)
    m = _FILE_LINE.search(line.rsplit("loc(", 1)[-1]) if "loc(" in line else None
    return int(m.group(2)) if m else None


def result_names(spec: str) -> list[str]:
    """`%x:3` -> [%x#0, %x#1, %x#2]; `%a, %b` -> [%a, %b]."""
    names = []
    for part in spec.split(","):
        part = part.strip()
        if ":" in part:
            name, count = part.split(":")
            names += [f"{name}#{i}" for i in range(int(count))]
        else:
            names.append(part)
    return names


def _bind(names: list[str], values: list[str]) -> list[tuple[str, str]]:
    return list(zip(names, values, strict=False))


class Scopes:
    """SSA names to graph nodes. The printer reuses a name in sibling regions (`%acc_17` in one
    loop's body and in a later `if`), so a name means the innermost visible definition."""

    def __init__(self) -> None:
        self.stack: list[dict[str, str]] = [{}]
        self.count = 0

    def define(self, name: str) -> str:
        self.count += 1
        node = f"{name}@{self.count}"
        self.stack[-1][name] = node
        return node

    def use(self, name: str) -> str:
        for scope in reversed(self.stack):
            if name in scope:
                return scope[name]
            if f"{name}#0" in scope:
                return scope[f"{name}#0"]
        return f"{name}@0"  # a function argument (never tainted)


def check(ttir: str) -> list[Finding]:
    """Every sink of `ttir` (one kernel's TTIR text) whose value depends on loaded data or float
    arithmetic, one Finding per sink, in program order; [] for a kernel whose control flow, masks
    and addresses derive only from program ids, arguments, loop counters and atomics."""
    graph = _build(ttir)
    graph.propagate()
    return graph.findings()


_ARGUMENT = re.compile(r'(%[\w.$-]+): (!tt\.(?:ptr|tensordesc)\S*|\S+)[^%]*?loc\("([^"]+)"')


def written_arguments(ttir: str) -> list[str]:
    """The kernel's pointer parameters (by their Python names, in signature order) that reach the
    address of a store, an atomic or a descriptor store: the arguments the kernel writes through.
    Read from the compiled kernel, so a GPU launch can be held to "inputs are read-only" without
    the interpreter (evaluators/child.py)."""
    head = next((line for line in ttir.splitlines() if line.strip().startswith("tt.func")), "")
    params = {value: name for value, kind, name in _ARGUMENT.findall(head) if kind.startswith("!tt.")}
    graph = _build(ttir)
    seen: set[str] = set()
    todo = [node for nodes in graph.writes for node in nodes]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.deps.get(node, ()))
    reached = {node.rsplit("@", 1)[0] for node in seen if node.endswith("@0")}
    return [name for value, name in params.items() if value in reached]


def _build(ttir: str) -> _Graph:
    """The dependency graph of one kernel's TTIR: values, sinks, the addresses written (module doc)."""
    lines = ttir.splitlines()
    defs = {}
    for line in lines:
        m = LOC_DEF.match(line)
        if m:
            defs[m.group(1)] = m.group(2)
    files = user_files(defs)
    graph = _Graph()
    stack: list[_Frame] = []
    names = Scopes()

    def where(line: str) -> int | None:
        return line_of_op(line, defs, files)

    def enter(frame: _Frame, bound: list[tuple[str, list[str]]] = ()) -> None:
        """Push `frame` and a scope for its region; `bound`: region arguments and what they depend on."""
        stack.append(frame)
        names.stack.append({})
        for name, on in bound:
            graph.depend(names.define(name), on)

    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(("#loc", "module", "tt.func", "tt.return", "//")):
            continue
        at = where(line)
        if line.startswith("^bb"):  # block arguments: bound by the enclosing op
            args = [names.define(v) for v in _VALUE.findall(line)]
            if stack:
                frame = stack[-1]
                if frame.op == "scf.while" and frame.phase == "after":
                    for arg, value in _bind(args, frame.condition_args):
                        graph.depend(arg, [value])
                else:
                    for arg in args:
                        graph.depend(arg, frame.operands)
            continue
        if line.startswith("}"):
            if not stack:  # the function's or the module's
                continue
            names.stack.pop()
            if "do {" in line or "else {" in line:
                names.stack.append({})  # the sibling region
                if "do {" in line:
                    stack[-1].phase = "after"
                continue
            frame = stack.pop()
            if frame.sink is not None and graph.sinks[frame.sink][2] is None:
                what, nodes, _ = graph.sinks[frame.sink]
                graph.sinks[frame.sink] = (what, nodes, at)  # a region op's location is on its `}`
            continue
        m = RESULTS.match(line)
        declared, rest = (result_names(m.group(1)), m.group(2)) if m else ([], line)
        op_match = OP.match(rest)
        op = op_match.group(1) if op_match else rest.split(" ")[0]
        tail = rest[op_match.end() :] if op_match else rest
        if op == "scf.for":
            head = re.match(r"\s*(%[\w.$-]+) = (%[\w.#$-]+) to (%[\w.#$-]+) step (%[\w.#$-]+)", tail)
            pairs = (
                re.findall(r"(%[\w.$-]+) = (%[\w.#$-]+)", tail.split("iter_args", 1)[1])
                if "iter_args" in tail
                else []
            )
            bounds = [names.use(v) for v in head.groups()[1:]] if head else []
            inits = [names.use(v) for _, v in pairs]
            results = [names.define(r) for r in declared]
            graph.sinks.append(("loop bound", bounds, at))
            frame = _Frame(op, results, [], bounds + inits, sink=len(graph.sinks) - 1)
            enter(
                frame,
                ([(head.group(1), bounds)] if head else [])
                + [(a, [i]) for (a, _), i in zip(pairs, inits, strict=True)],
            )
            frame.args = [names.stack[-1][a] for a, _ in pairs]
            continue
        if op == "scf.while":
            pairs = re.findall(r"(%[\w.$-]+) = (%[\w.#$-]+)", tail.split(":")[0])
            inits = [names.use(v) for _, v in pairs]
            results = [names.define(r) for r in declared]
            frame = _Frame(op, results, [], inits, phase="before")
            enter(frame, [(a, [i]) for (a, _), i in zip(pairs, inits, strict=True)])
            frame.args = [names.stack[-1][a] for a, _ in pairs]
            continue
        operands = [names.use(v) for v in operand_names(tail)]
        if op in ("scf.yield", "tt.reduce.return", "tt.scan.return", "scf.condition"):
            if not stack:
                continue
            frame = stack[-1]
            if op == "scf.condition":
                cond, forwarded = (operands[0], operands[1:]) if operands else (None, [])
                if cond:
                    graph.sinks.append(("loop condition", [cond], at))
                frame.condition_args = forwarded
                for result, value in _bind(frame.results, forwarded):
                    graph.depend(result, [value])
            elif frame.op == "scf.while":  # after-region yield feeds the before-region's arguments
                for arg, value in _bind(frame.args, operands):
                    graph.depend(arg, [value])
            else:
                for result, value in _bind(frame.results, operands):
                    graph.depend(result, [value])
                if frame.op == "scf.for":  # and the next iteration's iter_args
                    for arg, value in _bind(frame.args, operands):
                        graph.depend(arg, [value])
            continue
        results = [names.define(r) for r in declared]
        if op == "scf.if":
            cond = operands[:1]
            graph.sinks.append(("branch", cond, at))
            for result in results:  # control dependence: what an `if` yields depends on its condition
                graph.depend(result, cond)
            enter(_Frame(op, results, [], operands, sink=len(graph.sinks) - 1))
            continue
        if op == "cf.cond_br":
            graph.sinks.append(("branch", operands[:1], at))
            continue
        if line.endswith("{"):  # tt.reduce, tt.scan, any other op with a region: results from its returns
            for result in results:
                graph.depend(result, operands)
            enter(_Frame(op, results, [], operands))
            continue
        _sinks(graph, op, operands, at)
        if op in UNTAINTED:
            continue
        source = SOURCES.get(op)
        if op in BITCASTS and _FLOAT_TYPE.search(rest.split(":", 1)[-1].split("->")[0].split(" to ")[0]):
            source = "a float reinterpreted as bits"
        for result in results:
            if source:
                graph.origin[result] = (source, at)
            graph.depend(result, operands)
    return graph


def _sinks(graph: _Graph, op: str, operands: list[str], at: int | None) -> None:
    if op in ("tt.store", "tt.atomic_rmw", "tt.atomic_cas", "tt.descriptor_store", "tt.descriptor_scatter"):
        graph.writes.append(operands[:1])  # the pointer, or the descriptor (made from a base pointer)
    if op in ("tt.load", "tt.store", "tt.atomic_rmw", "tt.atomic_cas", "tt.prefetch"):
        graph.sinks.append(("memory address", operands[:1], at))
        mask_at = {"tt.load": 1, "tt.store": 2, "tt.atomic_rmw": 2}.get(op)
        if mask_at is not None and len(operands) > mask_at:
            graph.sinks.append(("mask", [operands[mask_at]], at))
    elif op in ("tt.descriptor_load", "tt.descriptor_store", "tt.descriptor_gather", "tt.descriptor_scatter"):
        graph.sinks.append(
            ("memory address", operands[1:] if op.endswith(("load", "gather")) else operands[1:-1], at)
        )
    elif op in ("tt.make_tensor_descriptor", "tt.make_tensor_ptr"):
        graph.sinks.append(("memory address", operands, at))


def feedback(kernel: str, found: list[Finding], limit: int = 3) -> str:
    """The rejection message for `kernel`'s findings: the first `limit` sinks, and the rule."""
    said = "; ".join(f.describe() for f in found[:limit])
    more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
    return (
        f"kernel {kernel}: {said}{more}. Control flow, masks and addresses must derive only from program ids, shapes, "
        "strides, loop counters and values returned by atomics: a kernel that decides from the values it "
        "loads or from float arithmetic can take another path on inputs nobody checked, or on a GPU "
        "(fused multiply-adds, bf16 comparisons and float-to-int conversions differ from the CPU "
        "interpreter). Compute every tile the same way; tl.where on values is fine"
    )
