"""The CPU compile child's stage (child side): every launch captured on `meta` tensors, the
paths training shapes take covered by smaller shapes (evaluators/coverage.py), every
specialisation compiled for the target. Run by evaluators/child.py's `Child` (its `compile_offline`).
"""

from __future__ import annotations


def compile_offline(child, path: str, task: dict) -> dict:
    """Capture every launch on meta tensors (training, held-out and check shapes), compile each
    new specialisation for the target, then find cover shapes for the training paths no check
    shape took (evaluators/coverage.py) and compile what they bring in a second round.

    `child`: the Child serving this candidate (its loader, guards, autotune stand-in and channel).
    Streams {"event": "captured"} (specialisations to build, once per round) and one {"event": "compiled"} per
    specialisation as it is built, so the parent budgets the compile by its size and keeps
    what was built even when the stage runs out of time. Every launch of every shape is
    compiled, check shapes included: what the interpreter checks is what compiles for the
    target (a tile that only small shapes use and the target cannot build is a compile_error)."""
    from . import compile as comp
    from . import coverage, ranges
    from .correctness import layout_views

    child.phase = "load"
    module = child.load(path, "candidate", interpret=False)
    target, backend = comp.child_backend(int(task["target"].split("_")[1]))
    tuner = child.autotune

    def capture(fn, args, kwargs):
        signature = child.guards.launch_signature(fn.__name__, fn.arg_names, args, kwargs)
        grid = kwargs.pop("grid")
        kwargs.pop("warmup", None)
        spec = comp.child_specialise(fn, backend, args, kwargs)
        if callable(grid):
            named = {**dict(zip(fn.arg_names, args, strict=False)), **kwargs}
            grid = grid({**named, **spec_constexprs(fn, spec)})
        grid = tuple(int(g) for g in grid)
        if any(g < 0 for g in grid):
            raise ValueError(f"kernel {fn.__name__} launched with a negative grid {grid}")
        tuner.sink.append({"fn": fn, "spec": spec, "grid": grid, "signature": signature})

    def record(name, alternatives):
        tuner.sink.append({"kernel": name, "alternatives": alternatives})

    child.capture, tuner.mode, tuner.record = capture, "capture", record
    dtype = child.wire.torch_dtype(task["dtype"])
    todo: dict = {}

    def describe(call: dict) -> dict:
        if "alternatives" in call:  # an autotuned launch: every pruned config, to be modelled
            options = [{"config": alt.config, **describe(alt.calls[0])} for alt in call["alternatives"]]
            return {"kernel": call["kernel"], "autotune": options}
        key = comp.spec_key(call["fn"].__name__, call["spec"])
        todo.setdefault(key, (call["fn"], call["spec"]))
        return {
            "kernel": call["fn"].__name__,
            "key": key,
            "grid": list(call["grid"]),
            "signature": call["signature"],
            "arg_names": list(call["fn"].arg_names),
        }

    def run_entry(shape, layout) -> list:
        a, b = layout_views(tuple(shape), layout, dtype, device="meta")
        tuner.sink = []
        child.phase, child.where = "entry", {"shape": list(shape), "layout": layout}
        module.matmul(a, b)
        return list(tuner.sink)

    kernels: dict = {}
    ttirs: dict = {}  # (kernel, constexprs) -> a compiled TTIR of it: the shape-keyed paths inside

    def identity(shape, layout, sink):
        facts = [launch_facts(call) for call in sink]
        for fact in facts:
            ttir = ttirs.get((fact.get("kernel"), repr(sorted(fact.get("constexprs", {}).items()))))
            if ttir:
                fact["outcomes"] = ranges.branch_outcomes(ttir, fact["scalars"], tuple(fact["grid"]))
        return coverage.identity(shape, layout, facts)

    def probe(shape, layout):
        try:
            return identity(shape, layout, run_entry(shape, layout))
        except Exception:  # noqa: BLE001 - a shape the entry point refuses takes another path
            return None

    def build(todo_now: dict) -> None:
        known = task.get("known_kernels", {})
        todo_now = {key: v for key, v in todo_now.items() if key not in kernels}  # a round's own
        new = [key for key in todo_now if key not in known]
        child.send({"event": "captured", "specs": len(todo_now), "new": len(new)})
        child.phase, child.where = "compile", None
        for key, (fn, spec) in todo_now.items():
            child.where = {"kernel": fn.__name__, "key": key}
            if key not in new:
                kernels[key] = known[key]
            else:
                kernels[key] = {"kernel": fn.__name__, **comp.child_compile(fn, spec, target)}
                child.send({"event": "compiled", "key": key, "facts": kernels[key]})
            fact = launch_facts({"fn": fn, "spec": spec, "signature": [None, None, [], []], "grid": []})
            ttirs.setdefault(
                (fn.__name__, repr(sorted(fact["constexprs"].items()))), kernels[key].get("ttir")
            )

    launches, sinks, left_out = [], [], []
    kinds = (("train", task["train"]), ("held_out", task.get("held_out", [])), ("check", task["check"]))
    try:
        for kind, shapes in kinds:
            for shape in shapes:
                for layout in task["layouts"]:
                    sink = run_entry(shape, layout)
                    sinks.append((kind, shape, layout, sink))
                    calls = [describe(call) for call in sink]
                    launches.append({"shape": list(shape), "layout": layout, "kind": kind, "calls": calls})
    finally:
        child.capture, tuner.mode, tuner.record = None, "check", None
    build(dict(todo))
    if task.get("stage", "verified") != "verified":  # cover shapes and reduced K: the expensive stage's
        return {"kernels": kernels, "launches": launches, "uncovered": left_out}
    # Paths of the training shapes that no check shape took: a smaller shape on the same path
    # (evaluators/coverage.py), its new specialisations built in a second round.
    child.capture, tuner.mode, tuner.record = capture, "capture", record
    todo.clear()
    try:
        entries = [{"kind": k, "shape": sh, "layout": lay, "identity": identity(sh, lay, sk)}
                   for k, sh, lay, sk in sinks]  # fmt: skip
        covered_shapes: set = set()
        for entry in coverage.uncovered(entries):
            # One layout per path: the check shapes run every layout already; a cover checks the path.
            if tuple(entry["shape"]) in covered_shapes:
                continue
            covered_shapes.add(tuple(entry["shape"]))
            found, reason = coverage.search(tuple(entry["shape"]), entry["layout"], entry["identity"], probe)
            if reason:
                left_out.append({"shape": list(entry["shape"]), "layout": entry["layout"], "cover": list(found),
                                 "reason": reason})  # fmt: skip
                continue
            calls = [describe(call) for call in run_entry(found, entry["layout"])]
            launches.append({"shape": list(found), "layout": entry["layout"], "kind": "cover", "calls": calls,
                             "covers": list(entry["shape"])})  # fmt: skip
        # The expensive stage runs each training and held-out launch's whole grid at a reduced K
        # (evaluators/verify_stage.py): the smallest K with the same launches, grids included.
        for entry in entries:
            if entry["kind"] not in ("train", "held_out") or entry["identity"] is None:
                continue
            shape = tuple(entry["shape"])
            k = coverage.reduced_k(shape, entry["layout"], entry["identity"], probe)
            calls = [describe(call) for call in run_entry((shape[0], shape[1], k), entry["layout"])]
            launches.append({"shape": [shape[0], shape[1], k], "layout": entry["layout"], "kind": "reduced",
                             "calls": calls, "reduces": list(shape), "of": entry["kind"]})  # fmt: skip
    finally:
        child.capture, tuner.mode, tuner.record = None, "check", None
    if todo:
        build(dict(todo))
    return {"kernels": kernels, "launches": launches, "uncovered": left_out}


def launch_facts(call: dict) -> dict:
    """What evaluators/coverage.py needs of one captured launch (or {"autotuned": True})."""
    if "alternatives" in call:
        return {"autotuned": True}
    spec, options = call["spec"], call["spec"]["options"]
    _, _, args, kwargs = call["signature"]
    named = {**dict(zip(call["fn"].arg_names, args, strict=False)), **dict(kwargs)}
    return {
        "kernel": call["fn"].__name__,
        "constexprs": spec_constexprs(call["fn"], spec),
        "options": (getattr(options, "num_warps", None), getattr(options, "num_stages", None)),
        "args": args,
        "scalars": {k: v for k, v in named.items() if isinstance(v, int) and not isinstance(v, bool)},
        "grid": call["grid"],
    }


def spec_constexprs(fn, spec: dict) -> dict:
    """Constexpr values by parameter name, for grid lambdas that read META['BLOCK_M']."""
    out = {}
    for path, value in spec["constexprs"].items():
        if len(path) == 1:
            out[fn.arg_names[path[0]]] = value
    return out
