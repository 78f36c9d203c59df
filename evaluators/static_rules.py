"""Static rules over an untrusted candidate kernel module's source.

First stage of the cheat-proof evaluator (shared/DESIGN.md, "The candidate
contract"). It parses the source with `ast` and never executes it, so it is
safe to run in the parent process. Every rule reports the line it concerns and
a one-sentence message a proposer (an LLM) can act on; `feedback` turns the
list into the short text that goes back into the next prompt.

The rules are deliberately conservative: an honest tiled / split-K /
persistent Triton matmul needs only a small slice of torch and triton, so
anything outside that slice is rejected rather than reasoned about. The
tables (allowlists, banned names) are in evaluators/rule_tables.py; the rules that keep calls
independent of where and how often they run are in evaluators/independence_rules.py.
"""

from __future__ import annotations

import ast
import dataclasses

from . import independence_rules
from .rule_tables import (
    ALLOWED_DECORATORS,
    ALLOWED_HINT,
    ALLOWED_MODULES,
    ALLOWED_PATHS,
    ALLOWED_ROOTS,
    BANNED_ATTRS,
    BANNED_NAMES,
    DEVICE_LIBRARIES,
    EVOLVE_END,
    EVOLVE_START,
    SAFE_TOPLEVEL_CALLS,
    STREAM_NAMES,
    is_matrix,
)


@dataclasses.dataclass(frozen=True)
class Violation:
    line: int  # 1-based source line
    rule: str  # short rule id, e.g. "import", "matrix-product"
    message: str  # one actionable sentence, starting with f"line {line}: "


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _short(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chain(node: ast.expr) -> tuple[ast.Name, list[str]] | None:
    """`a.b.c` -> (Name a, ["b", "c"]); None when the chain is not rooted at a plain name."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node, attrs[::-1]) if isinstance(node, ast.Name) else None


class _Checker(ast.NodeVisitor):
    """One pass over the tree; `aliases` maps each imported name to the dotted path it denotes."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.found: list[Violation] = []
        self.jit_depth = 0  # > 0 while inside a @triton.jit function (where `@` and tl.dot are fine)

    def add(self, node: ast.AST | int, rule: str, text: str) -> None:
        line = node if isinstance(node, int) else getattr(node, "lineno", 1)
        self.found.append(Violation(line, rule, f"line {line}: {text}"))

    def resolve(self, node: ast.expr) -> str | None:
        """Dotted module path of a Name/Attribute chain rooted at an import alias, else None."""
        chain = _chain(node)
        if chain is None or chain[0].id not in self.aliases:
            return None
        return ".".join([self.aliases[chain[0].id], *chain[1]])

    # -- module paths -------------------------------------------------------------------------
    def check_path(self, node: ast.AST, path: str) -> None:
        """Report the most specific problem with a module path such as `torch.nn.functional.linear`."""
        root, *parts = path.split(".")
        if root not in ALLOWED_ROOTS:
            return None  # the import itself was reported
        for part in parts:
            if part.startswith("_"):
                return self.add(
                    node,
                    "dunder",
                    f"{path} uses the private or dunder name {part}; only public names are allowed",
                )
            if root != "triton" and is_matrix(part):
                return self.add(
                    node,
                    "matrix-product",
                    f"{path} is a library matrix product; the entry "
                    "point must compute C with its own Triton kernel",
                )
            if part in STREAM_NAMES:
                return self.add(
                    node,
                    "stream",
                    f"{path}: the module may use no streams, events, graphs or syncs of its own",
                )
            if part in BANNED_ATTRS:
                return self.add(
                    node, "module-attr", f"{path} reaches .{part}, which kernel modules may not use"
                )
        prefixes = {".".join([root, *parts[:i]]) for i in range(1, len(parts) + 1)}
        if prefixes & ALLOWED_PATHS:
            return None
        if path in ALLOWED_MODULES:
            return self.add(
                node, "module-attr", f"{path} is a module; use it only as {path}.<name>, not as a value"
            )
        first = path if path.startswith("triton.language.") else f"{root}.{parts[0]}"
        hint = ALLOWED_HINT.get(root, f"the public names of {root}")
        self.add(
            node, "module-attr", f"{first} is not available to kernel modules; allowed {root} names: {hint}"
        )

    # -- imports ------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name not in ALLOWED_MODULES:
                self.add(
                    node,
                    "import",
                    f"import {alias.name} is not allowed; kernel modules may import "
                    "only triton, triton.language, torch, math, functools and typing",
                )
            if alias.asname and _is_dunder(alias.asname):
                self.add(node, "dunder", f"the alias {alias.asname} is a dunder name; pick a plain name")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = "." * node.level + (node.module or "")
        if module == "__future__":
            if any(a.name != "annotations" for a in node.names):
                self.add(node, "import", "only `from __future__ import annotations` is allowed")
            return
        if node.level or module not in ALLOWED_MODULES:
            return self.add(
                node,
                "import",
                f"from {module} import ... is not allowed; kernel modules may "
                "import only from triton, triton.language, torch, math, functools and typing",
            )
        for alias in node.names:
            if alias.name == "*":
                self.add(node, "import", f"from {module} import * is not allowed; import names explicitly")
            elif alias.asname and _is_dunder(alias.asname):
                self.add(node, "dunder", f"the alias {alias.asname} is a dunder name; pick a plain name")
            elif (
                f"{module}.{alias.name}" not in ALLOWED_MODULES | DEVICE_LIBRARIES
            ):  # e.g. `from triton import language`
                self.check_path(node, f"{module}.{alias.name}")

    # -- names and attributes -----------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if _is_dunder(node.id):
            self.add(node, "dunder", f"{node.id} is a dunder name; kernel modules may not use dunder names")
        elif node.id in BANNED_NAMES:
            self.add(
                node,
                "banned-call",
                f"{node.id} is not available to kernel modules (no reflection, dynamic code or I/O)",
            )
        elif node.id in self.aliases:
            if not isinstance(node.ctx, ast.Load):
                self.add(
                    node,
                    "module-assign",
                    f"{node.id} names an imported module; rebinding or deleting it is not allowed",
                )
            else:
                self.check_path(node, self.aliases[node.id])

    def visit_Attribute(self, node: ast.Attribute) -> None:
        path = self.resolve(node)
        if path is not None:  # the whole chain is one module path: judge it once
            if not isinstance(node.ctx, ast.Load):
                self.add(
                    node,
                    "module-assign",
                    f"assigning to {path} monkeypatches a library; monkeypatching is not allowed",
                )
            else:
                self.check_path(node, path)
            return
        base: ast.expr = node
        names: list[str] = []
        while isinstance(base, ast.Attribute):  # judge the whole chain once, innermost name first
            names.insert(0, base.attr)
            base = base.value
        what = _short(node)
        for name in names:
            if name.startswith("_"):
                self.add(
                    node,
                    "dunder",
                    f"{what} uses the private or dunder attribute {name}; only public attributes are allowed",
                )
            elif is_matrix(name) and not self.jit_depth:
                self.add(
                    node,
                    "matrix-product",
                    f"{what} is a library matrix product; the entry point must "
                    "compute C with its own Triton kernel",
                )
            elif name in STREAM_NAMES:
                self.add(
                    node,
                    "stream",
                    f"{what}: the module may use no streams, events, graphs or syncs of its own",
                )
            elif name in BANNED_ATTRS:
                self.add(
                    node,
                    "module-attr",
                    f"{what} uses .{name}, which kernel modules may not use (host copies, "
                    "storage, reflection or a kernel's Python body)",
                )
            else:
                continue
            break
        self.visit(base)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.MatMult) and not self.jit_depth:
            self.add(
                node,
                "matrix-product",
                "the @ operator is a library matrix product outside @triton.jit "
                "kernels; the entry point must compute C with its own Triton kernel",
            )
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.op, ast.MatMult) and not self.jit_depth:
            self.add(
                node,
                "matrix-product",
                "@= is a library matrix product outside @triton.jit kernels; "
                "the entry point must compute C with its own Triton kernel",
            )
        self.generic_visit(node)

    # -- statements -----------------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if _is_dunder(node.name):
            self.add(node, "dunder", f"def {node.name} defines a dunder hook; kernel modules may not")
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None and _is_dunder(arg.arg):
                self.add(arg, "dunder", f"parameter {arg.arg} is a dunder name; pick a plain name")
        is_jit = False
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            path = self.resolve(target)
            is_jit |= path == "triton.jit"
            if path not in ALLOWED_DECORATORS:
                self.add(
                    dec,
                    "decorator",
                    f"decorator @{_short(target)} is not allowed; use only triton.jit, "
                    "triton.autotune, triton.heuristics, functools.lru_cache or functools.cache",
                )
        # Decorator arguments, defaults and annotations run as plain Python (a heuristics lambda sees
        # the real tensors), so only the body counts as jit code.
        for part in [*node.decorator_list, node.args, node.returns]:
            if part is not None:
                self.visit(part)
        self.jit_depth += is_jit
        for stmt in node.body:
            self.visit(stmt)
        self.jit_depth -= is_jit

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.add(node, "async", "async functions are not allowed; write plain functions")
        self.generic_visit(node)

    def visit_Await(self, node: ast.Await) -> None:
        self.add(node, "async", "await is not allowed; write plain functions")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if _is_dunder(node.name):
            self.add(node, "dunder", f"class {node.name} has a dunder name; pick a plain name")
        if node.decorator_list or node.keywords:
            self.add(node, "decorator", f"class {node.name} may not have decorators or keywords (metaclass)")
        self.generic_visit(node)

    def visit_Try(self, node: ast.stmt) -> None:
        self.add(node, "try", "exceptions may not be caught; remove the try statement and let errors surface")
        self.generic_visit(node)

    visit_TryStar = visit_Try

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            if name in self.aliases or _is_dunder(name):
                self.add(
                    node, "module-assign", f"global {name} would let the module rebind an import; not allowed"
                )


class _TopLevel:
    """Rule 9: the module body may only define things; anything else runs at import."""

    def __init__(self, checker: _Checker) -> None:
        self.checker = checker

    def check(self, tree: ast.Module) -> None:
        for i, stmt in enumerate(tree.body):
            if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.AsyncFunctionDef)):
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and i == 0:
                continue  # module docstring
            if isinstance(stmt, ast.FunctionDef):
                for dec in stmt.decorator_list:
                    self.calls(
                        dec.args + [k.value for k in dec.keywords] if isinstance(dec, ast.Call) else []
                    )
            elif isinstance(stmt, ast.ClassDef):
                self.class_body(stmt)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                self.calls([stmt.value] if stmt.value is not None else [])
            else:
                self.checker.add(
                    stmt,
                    "toplevel",
                    f"top-level {type(stmt).__name__.lower()} statement runs at "
                    "import; move it into a function",
                )

    def class_body(self, cls: ast.ClassDef) -> None:
        for stmt in cls.body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                self.calls([stmt.value] if stmt.value is not None else [])
            elif not isinstance(stmt, (ast.FunctionDef, ast.Pass)) and not (
                isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            ):
                self.checker.add(
                    stmt,
                    "toplevel",
                    f"class {cls.name} may hold only assignments and "
                    "functions; move other code into a function",
                )

    def calls(self, exprs: list[ast.expr]) -> None:
        """Calls evaluated at import must be to constructors of plain data or triton.Config."""
        todo = list(exprs)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.Lambda):
                continue  # the body runs later, inside a launch, and is checked by the other rules
            if isinstance(node, ast.Call):
                func, path = node.func, self.checker.resolve(node.func)
                safe = path == "triton.Config" or (
                    isinstance(func, ast.Name) and func.id in SAFE_TOPLEVEL_CALLS and path is None
                )
                if not safe:
                    self.checker.add(
                        node,
                        "toplevel",
                        f"top-level call {_short(func)}(...) runs at import; "
                        "only dict/list/tuple/range/min/max/len/triton.Config may be called "
                        "there, move the rest into a function",
                    )
            todo.extend(ast.iter_child_nodes(node))


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Every name bound by an import (anywhere), mapped to the dotted path it denotes.

    Imports are statements, so only statement lists are walked, not expressions (keeps this cheap).
    """
    out: dict[str, str] = {}
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module != "__future__":
            for a in node.names:
                if a.name != "*":
                    out[a.asname or a.name] = f"{node.module}.{a.name}"
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            todo.extend(getattr(node, field, None) or [])
    return out


def _entry_point(tree: ast.Module) -> list[Violation]:
    """Rule 11: exactly one top-level `def matmul(a, b)`, undecorated, two positional parameters."""
    defs = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "matmul"]
    rebinds = [
        s
        for s in tree.body
        if isinstance(
            s,
            (
                ast.Assign,
                ast.AnnAssign,
                ast.AugAssign,
                ast.ClassDef,
                ast.AsyncFunctionDef,
                ast.ImportFrom,
                ast.Import,
            ),
        )
        and "matmul" in _bound_names(s)
    ]

    def v(line: int, text: str) -> Violation:
        return Violation(line, "entry-point", f"line {line}: {text}")

    if not defs:
        return [v(1, "the module must define the entry point `def matmul(a, b)` at top level")]
    out = [
        v(s.lineno, "matmul is bound more than once; define `def matmul(a, b)` exactly once")
        for s in [*defs[1:], *rebinds]
    ]
    args = defs[0].args
    if len(args.posonlyargs) + len(args.args) != 2 or args.vararg or args.kwarg or args.kwonlyargs:
        out.append(
            v(
                defs[0].lineno,
                "the entry point must take exactly two positional parameters: `def matmul(a, b)`",
            )
        )
    if defs[0].decorator_list:
        out.append(v(defs[0].lineno, "the entry point matmul may not be decorated (no caching of results)"))
    return out


def _bound_names(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.ClassDef, ast.AsyncFunctionDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _outside_blocks(source: str) -> tuple[list[tuple[int, str]], Violation | None]:
    """The text outside EVOLVE-BLOCK regions as (line, text) items; each region becomes one marker item."""
    items: list[tuple[int, str]] = []
    start: int | None = None
    for n, raw in enumerate(source.splitlines(), 1):
        text = raw.strip()
        if text.startswith(EVOLVE_START) or text.startswith(EVOLVE_END):
            opening = text.startswith(EVOLVE_START)
            if opening == (start is not None):
                return items, Violation(
                    n,
                    "evolve-block",
                    f"line {n}: unbalanced EVOLVE-BLOCK markers; each "
                    f"{EVOLVE_START} needs one {EVOLVE_END} after it, without nesting",
                )
            start = n if opening else None
            if opening:
                items.append((n, EVOLVE_START))
        elif start is None:
            items.append((n, raw.rstrip()))
    if start is not None:
        return items, Violation(
            start, "evolve-block", f"line {start}: {EVOLVE_START} has no matching {EVOLVE_END}"
        )
    while items and not items[-1][1]:
        items.pop()  # trailing blank lines do not count as an edit
    return items, None


def _evolve_block(source: str, parent_source: str | None) -> list[Violation]:
    """Rule 12: only the marked regions of the parent may change."""
    mine, bad = _outside_blocks(source)
    if bad is not None:
        return [bad]
    if parent_source is None or EVOLVE_START not in parent_source:
        return []
    theirs, parent_bad = _outside_blocks(parent_source)
    if parent_bad is not None:
        return []  # a malformed parent constrains nothing; the parent's own check reported it
    for i in range(max(len(mine), len(theirs))):
        if i >= len(mine) or i >= len(theirs) or mine[i][1] != theirs[i][1]:
            line = mine[i][0] if i < len(mine) else (mine[-1][0] if mine else 1)
            return [
                Violation(
                    line,
                    "evolve-block",
                    f"line {line}: edit outside the EVOLVE-BLOCK regions; only "
                    f"code between {EVOLVE_START} and {EVOLVE_END} may change",
                )
            ]
    return []


def check_source(source: str, *, parent_source: str | None = None) -> list[Violation]:
    """All rule violations in a candidate module's source, sorted by line; [] means it may be run."""
    found = _evolve_block(source, parent_source)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as err:
        line = getattr(err, "lineno", None) or 1
        detail = getattr(err, "msg", None) or str(err)
        found.append(Violation(line, "syntax", f"line {line}: syntax error: {detail}; the module must parse"))
        return sorted(set(found), key=lambda v: (v.line, v.rule, v.message))
    checker = _Checker(_aliases(tree))
    checker.visit(tree)
    _TopLevel(checker).check(tree)
    found += checker.found + _entry_point(tree)
    found += [
        Violation(line, rule, text) for line, rule, text in independence_rules.check(tree, checker.aliases)
    ]
    return sorted(set(found), key=lambda v: (v.line, v.rule, v.message))


def feedback(violations: list[Violation], limit: int = 5) -> str:
    """Short text for the proposer: the first `limit` messages and how many more were cut."""
    if not violations:
        return "static checks passed"
    lines = [f"static checks failed ({len(violations)} violations):"]
    lines += [f"- {v.message}" for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"+{len(violations) - limit} more")
    return "\n".join(lines)
