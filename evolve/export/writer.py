"""The exported module's text: header, judged facts, the kernel's source, the runtime inlined.

One file that imports only torch and triton (and the standard library): the kernel runs where this
package is not installed. The kernel's source is kept whole in a string (KERNEL_SOURCE) and run as a
module of its own at import (registered with linecache, so Triton reads its source and tracebacks
show it): its names can never collide with the runtime's. The runtime is kernels/runtime/*.py,
inlined in RUNTIME_FILES order, with their package imports dropped (each file only uses names the
files before it define; checked here: no name defined twice).
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import json
import math
import pprint
import re
import textwrap
from pathlib import Path

from kernels import runtime

from .facts import Facts

RUNTIME_DIR = Path(runtime.__file__).parent
# The names the generated prologue and epilogue define; the runtime must not define them.
OWN_NAMES = {
    "RUN",
    "CANDIDATE_ID",
    "NAMESPACE",
    "JUDGED",
    "PROVENANCE",
    "KERNEL_SOURCE",
    "kernel",
    "load_kernel",
    "KERNEL_SOURCES",
    "PORTFOLIO",
    "kernels",
}
# What of the judge's provenance the exported PROVENANCE keeps (the rest is the judge's working).
JUDGE_KEYS = ("torch", "triton", "python", "triton_evolve", "device", "gpu", "cuda", "driver", "interp_fixes")
PROLOGUE_IMPORTS = ["import linecache", "import sys", "import types"]
# Runs a kernel's source as a module of its own (written into every export, after the runtime).
LOADER = '''def load_kernel(key: str, source: str) -> types.ModuleType:
    """`source` as a module of its own (its names apart from the runtime's); linecache holds its lines
    so that Triton, which reads a kernel's source, and tracebacks find them."""
    name = f"{__name__}._{key}"
    filename = f"<{NAMESPACE} {key}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name, "An exported candidate kernel module")
    module.__file__ = filename
    sys.modules[name] = module
    exec(compile(source, filename, "exec"), module.__dict__)
    return module
'''
PUBLIC = ["matmul", "explain", "Linear", "patch", "unpatch", "recent_calls", "clear_recent_calls", "kernel"]


def quote_source(source: str) -> str:
    """`source` as a triple-quoted Python literal that reads as the source (backslashes and runs of
    quotes escaped); checked to evaluate back to `source` exactly."""
    body = source.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    literal = f'"""{body}"""'
    if ast.literal_eval(literal) != source:  # pragma: no cover - a bug here would ship a wrong kernel
        raise AssertionError("the kernel source does not survive quoting; not exporting it")
    return literal


def _runtime_part(name: str) -> tuple[list[str], str, set[str]]:
    """(absolute imports, the code without its docstring and imports, top-level names) of one file."""
    text = (RUNTIME_DIR / name).read_text()
    tree = ast.parse(text)
    lines = text.splitlines()
    drop: set[int] = set()
    imports: list[str] = []
    names: set[str] = set()
    for i, node in enumerate(tree.body):
        span = range(node.lineno - 1, node.end_lineno)
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            drop.update(span)  # the docstring: printed above the part as a comment instead
        elif isinstance(node, ast.ImportFrom) and (node.level or node.module == "__future__"):
            drop.update(span)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(ast.unparse(node))
            drop.update(span)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    doc = ast.get_docstring(tree) or ""
    head = [f"# ---- kernels/runtime/{name} " + "-" * max(0, 80 - len(name))]
    head += [f"# {line}".rstrip() for line in doc.splitlines()]
    code = "\n".join(line for j, line in enumerate(lines) if j not in drop).strip("\n")
    return imports, "\n".join(head) + "\n\n" + code, names


def runtime_text() -> tuple[list[str], str]:
    """(hoisted imports, code) of the runtime inlined; ValueError when two parts define one name."""
    imports: list[str] = []
    parts: list[str] = []
    seen: dict[str, str] = {name: "the export's own prologue" for name in OWN_NAMES}
    for name in runtime.RUNTIME_FILES:
        part_imports, code, names = _runtime_part(name)
        for defined in sorted(names):
            if defined in seen:
                raise ValueError(f"kernels/runtime/{name} defines {defined!r}, as {seen[defined]} does")
            seen[defined] = f"kernels/runtime/{name}"
        imports += [i for i in part_imports if i not in imports]
        parts.append(code)
    for i in imports:
        top = i.split()[1].split(".")[0]
        if top in ("evolve", "evaluators", "kernels"):
            raise ValueError(f"the runtime imports {top} ({i}); it must depend on torch and triton only")
    return imports, "\n\n\n".join(parts)


def python_literal(value: object) -> str:
    """`value` (JSON-like data) as a Python literal: None/True/False (not JSON's null/true/false),
    non-finite floats and other objects as strings; checked to evaluate."""

    def clean(x: object) -> object:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return repr(x)
        if x is None or isinstance(x, bool | int | float | str):
            return x
        return str(x)

    text = pprint.pformat(clean(value), width=100, sort_dicts=False)
    ast.literal_eval(text)
    return text


def namespace(run: str, what: str, source: str, judged: dict) -> str:
    """The custom op's namespace: the run, what it exports (c<id>, portfolio) and a hash of what the op
    computes, so two different exports never share an op in one process (the same one reloaded reuses
    its own)."""
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", run).strip("_").lower()[:40] or "run"
    digest = hashlib.sha256((source + json.dumps(judged, sort_keys=True)).encode()).hexdigest()[:8]
    return f"evolve_{slug}_{what}_{digest}"


def _shapes_text(evaluation: dict) -> list[str]:
    rows = evaluation["metrics"].get("shapes", [])
    out = []
    for kind in ("train", "held_out", "check", "fresh"):
        shapes: dict[tuple, list[str]] = {}
        for s in rows:
            if s.get("kind") == kind:
                shapes.setdefault(tuple(s["shape"]), []).append(s.get("layout") or "?")
        if shapes:
            listed = ", ".join(f"{'x'.join(map(str, k))} ({'/'.join(sorted(v))})" for k, v in shapes.items())
            out.append(f"  {kind:<9} {listed}")
    return out


def _backward_text(judged: dict) -> list[str]:
    """What autograd runs for nn.Linear (x·Wᵀ, layout nt): dA = dC·W (nn) and dW through dB = Xᵀ·dC
    (tn), held to the verdict on the backward products (judged["backward"])."""
    backward = judged["backward"]
    forward = "runs the kernel" if "nt" in judged["layouts"] else "NOT judged: torch.matmul"
    lines = [f"  {'forward of nn.Linear (x·Wᵀ)':<28} layout nt: {forward}"]
    if backward.get("reason"):
        lines.append(f"  backward (dA = dC·Bᵀ, dB = Aᵀ·dC): torch.matmul: {backward['reason']}")
        return lines
    shapes = ", ".join("x".join(map(str, s)) for s in backward["shapes"])
    said = (
        f"backward judged on its products {shapes} (layouts {', '.join(backward['layouts'])}): "
        f"{backward['fitness']:.4g} on {backward['label']}"
    )
    lines += textwrap.wrap(said, 100, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False)
    for product, layout in (("dA = dC·Bᵀ", "nn"), ("dB = Aᵀ·dC", "tn")):
        verdict = "runs the kernel" if layout in backward["layouts"] else "NOT judged: torch.matmul"
        lines.append(f"  {product:<28} layout {layout}: {verdict}")
    return lines


def header(facts: Facts, ns: str, module_name: str, exported_with: dict) -> str:
    ev, judged, cand = facts.evaluation, facts.judged, facts.candidate
    prov = ev["metrics"].get("provenance", {})
    measured = judged["kind"] == "measured"
    unit = "geomean speedup over torch.matmul" if measured else "geomean modelled fraction of the GPU's peak"
    held = ev.get("held_out")
    lines = [
        f"triton-evolve export: run {facts.run}, candidate {facts.candidate_id}.",
        "",
        f"fitness    {ev['fitness']:.4f} ({unit}) on {judged['label']}"
        + (f"; held-out shapes {held:.4f}" if held is not None else ""),
    ]
    if not measured:
        lines += [
            "           MODELLED, NOT MEASURED: exported with --allow-modelled. The performance model can be",
            "           several times too optimistic on small shapes; `evolve remeasure` measures it on a GPU.",
        ]
    lines += [
        f"GPU        {judged['gpu']}",
        f"judged by  torch {prov.get('torch', '?')}, triton {prov.get('triton', '?')}, "
        f"triton-evolve {prov.get('triton_evolve', '?')} (judge {ev.get('judge') or '?'}, stage "
        f"{ev.get('stage') or 'not recorded'})",
        f"exported   {exported_with['date']} with torch {exported_with['torch']}, triton {exported_with['triton']}",
        f"task       {facts.task.name} ({facts.task.source}): dtype {facts.task.dtype}, layouts "
        f"{', '.join(judged['layouts'])}",
        f"lineage    {cand.get('proposer')} (generation {cand.get('generation')}, parents "
        f"{cand.get('parent_ids') or 'none'}): {str(cand.get('note') or '')[:100]}",
        f"op         torch.ops.{ns}.matmul",
        "",
        "Shapes (M x N x K, layouts) it was judged on:",
        *_shapes_text(ev),
        "",
        "The Triton kernel runs only for what it was judged on (CUDA tensors, or CPU tensors under",
        f"TRITON_INTERPRET=1; dtype {', '.join(judged['dtypes'])}; layouts {', '.join(judged['layouts'])}; M*N*K at",
        f"least {'x'.join(map(str, judged['min_shape']))}); anything else runs torch.matmul. explain(a, b) says which.",
        "Autograd, nn.Linear:",
        *_backward_text(judged),
        "",
        "Use:",
        f"    import {module_name}",
        f"    {module_name}.patch(model)  # every torch.nn.Linear of model runs the kernel where judged",
        f"    print({module_name}.explain(x, model.layer.weight.t(), backward=True))",
    ]
    return "\n".join(lines)


def exported_with() -> dict:
    """When and with which torch and triton the export was written."""
    import torch
    import triton

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }


def assemble(doc: str, facts_code: str, install_code: str) -> str:
    """An exported module: docstring `doc`, imports, `facts_code` (literal assignments), the runtime,
    the kernel loader and `install_code` (loads the kernels and configures the dispatch)."""
    imports, runtime_code = runtime_text()
    imports = sorted(set(imports) | set(PROLOGUE_IMPORTS), key=lambda i: (i.startswith("from"), i))
    doc = doc.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    text = f'''"""{doc}
"""

# Generated by `evolve export`; edit JUDGED (PORTFOLIO) to widen or narrow where a kernel runs, at your risk.
# ruff: noqa
from __future__ import annotations

{chr(10).join(imports)}

{facts_code.strip()}


{runtime_code}


# ---- the kernels, installed ------------------------------------------------------------------------


{LOADER}

{install_code.strip()}

__all__ = {PUBLIC!r}
'''
    ast.parse(text)  # a syntax error here is this writer's bug: never write a broken module
    return text


def module_text(facts: Facts, module_name: str) -> str:
    """The whole exported module for `facts`, importable as `module_name`."""
    ns = namespace(facts.run, f"c{facts.candidate_id}", facts.source, facts.judged)
    when = exported_with()
    provenance = {
        "run": facts.run,
        "candidate": facts.candidate_id,
        "fitness": facts.evaluation["fitness"],
        "fitness_label": facts.judged["label"],
        "held_out": facts.evaluation.get("held_out"),
        "judge": {
            k: v for k, v in facts.evaluation["metrics"].get("provenance", {}).items() if k in JUDGE_KEYS
        },
        "exported": when,
        "task": facts.task.to_dict(),
    }
    facts_code = f"""
RUN = {facts.run!r}
CANDIDATE_ID = {facts.candidate_id!r}
NAMESPACE = {ns!r}
JUDGED = {python_literal(facts.judged)}
PROVENANCE = {python_literal(provenance)}

# The candidate kernel module, exactly as it was judged.
KERNEL_SOURCE = {quote_source(facts.source)}
"""
    install = """
kernel = load_kernel("kernel", KERNEL_SOURCE)
configure(kernel.matmul, JUDGED, NAMESPACE, getattr(kernel, "pick_config", None), autotuned_kernels(vars(kernel)))
"""
    return assemble(header(facts, ns, module_name, when), facts_code, install)
