"""Static rules for caches in a kernel module (part of the independence rules).

`functools.lru_cache` / `functools.cache` may memoise a pure config function of plain values
(tile sizes per shape, the SM count), never anything a tensor flows into or out of: a cached
output buffer is shared by every call, and a cache keyed by a tensor keeps what one call made
for the next. So (shared/DESIGN.md, "The candidate contract"; issue 10, item 6):

- the decorators appear only as decorators;
- a cached function's parameters are all annotated int, bool, float or str, it does not
  return a torch.Tensor, and it calls only builtins, math, triton.cdiv/next_power_of_2/Config,
  torch.cuda device queries and other cached functions (so it cannot make a tensor);
- every call of a cached function passes plain values: constants, shapes, strides, dtypes,
  arithmetic on them (annotations are not enforced at run time, so the call sites are checked);
- nothing reads a cache's statistics or clears it (`cache_info().hits` counts calls).

`check` returns (line, rule, message) triples, like evaluators/independence_rules.py.
"""

from __future__ import annotations

import ast

from .rule_tables import (
    CACHE_DECORATORS,
    CACHE_STAT_ATTRS,
    CACHED_BODY_BUILTINS,
    CACHED_BODY_CALLS,
    CACHED_BODY_METHODS,
    PLAIN_ANNOTATIONS,
    PLAIN_ATTRS,
    PLAIN_METHODS,
)

INDEPENDENT = "calls must be independent (no state kept from one call to the next)"
Found = tuple[int, str, str]
# What a cached body may not make: objects with state of their own, shared by every call.
_LIVE_KINDS = (ast.GeneratorExp, ast.Yield, ast.YieldFrom, ast.Lambda, ast.FunctionDef, ast.ClassDef)
_ANY_ARGS = frozenset({"int", "float", "bool", "str", "len"})  # return a plain value whatever they get


def _short(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.arg]:
    a = fn.args
    return [x for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if x is not None]


def _own_nodes(body: list[ast.AST]) -> list[ast.AST]:
    """The nodes of a function body, not descending into nested functions' bodies or lambdas."""
    out: list[ast.AST] = []
    stack = list(body)
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack += [*node.decorator_list, *node.args.defaults]
        elif not isinstance(node, ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return out


class _CacheRules:
    def __init__(self, tree: ast.Module, aliases: dict[str, str], nodes: list[ast.AST]) -> None:
        self.tree = tree
        self.aliases = aliases
        self.nodes = nodes
        self.found: list[Found] = []
        self.cached: set[str] = set()
        self.user_defs = {s.name for s in tree.body if isinstance(s, (ast.FunctionDef, ast.ClassDef))}
        # module-level names bound once to immutable constants (`BLOCK = 64`, `SIZES = (16, 32)`)
        self.constants = {
            t.id
            for s in tree.body
            if isinstance(s, ast.Assign) and self.constant(s.value)
            for t in s.targets
            if isinstance(t, ast.Name)
        }

    def add(self, node: ast.AST, text: str) -> None:
        line = getattr(node, "lineno", 1)
        self.found.append((line, "cache", f"line {line}: {text}"))

    def resolve(self, node: ast.expr) -> str | None:
        attrs: list[str] = []
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        return ".".join([self.aliases[node.id], *attrs[::-1]])

    def constant(self, value: ast.expr) -> bool:
        if isinstance(value, ast.Tuple):
            return all(self.constant(v) for v in value.elts)
        return isinstance(value, ast.Constant) or (
            isinstance(value, ast.UnaryOp) and isinstance(value.operand, ast.Constant)
        )

    def check(self) -> list[Found]:
        decorating: set[int] = set()
        functions = [n for n in self.nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for fn in functions:
            for dec in fn.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if self.resolve(target) in CACHE_DECORATORS:
                    decorating.add(id(target))
                    self.cached.add(fn.name)
        for node in self.nodes:
            if isinstance(node, ast.Attribute) and node.attr in CACHE_STAT_ATTRS:
                self.add(
                    node,
                    f"{_short(node)} reads a cache's statistics or clears it, which counts calls; "
                    f"{INDEPENDENT}: remove it",
                )
            elif (
                (isinstance(node, ast.Attribute) and node.attr in ("lru_cache", "cache"))
                or (isinstance(node, ast.Name) and self.aliases.get(node.id) in CACHE_DECORATORS)
            ) and id(node) not in decorating:
                path = self.resolve(node)
                if path in CACHE_DECORATORS:
                    self.add(node, f"{path} may be used only as a decorator (`@{path}`)")
        for fn in functions:
            if fn.name in self.cached:
                self.cached_function(fn)
        if self.cached:
            for fn in [*functions, *(n for n in self.nodes if isinstance(n, ast.Lambda))]:
                self.call_sites(fn)
        return self.found

    # -- the cached function itself -------------------------------------------------------------
    def cached_function(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for a in _params(fn):
            if not (isinstance(a.annotation, ast.Name) and a.annotation.id in PLAIN_ANNOTATIONS):
                self.add(
                    a,
                    f"{fn.name} is cached, so its parameter {a.arg} must be annotated int, bool, float "
                    "or str; caching is allowed only for pure config functions of plain values, never "
                    "of tensors",
                )
        if fn.returns is not None and any(
            self.resolve(n) == "torch.Tensor" for n in ast.walk(fn.returns) if isinstance(n, ast.expr)
        ):
            self.add(
                fn.returns,
                f"{fn.name} is cached and returns a torch.Tensor: every call would share that tensor "
                "(an output buffer overwritten by the next call); allocate tensors in the entry point",
            )
        for node in (n for stmt in fn.body for n in ast.walk(stmt)):
            if isinstance(node, _LIVE_KINDS):
                self.add(
                    node,
                    f"{fn.name} is cached but makes a generator or function ({_short(node)}): the cache "
                    f"would hand the same one to every call, which can count calls; {INDEPENDENT}: "
                    "return plain values (numbers, strings, tuples, dicts of them)",
                )
            elif isinstance(node, ast.Call) and not self.pure_call(node.func):
                self.add(
                    node,
                    f"{fn.name} is cached but calls {_short(node.func)}(...); a cached function may "
                    "call only builtins, math, triton.cdiv/next_power_of_2/Config, torch.cuda device "
                    "queries and other cached functions (no tensors, no launches)",
                )

    def pure_call(self, func: ast.expr) -> bool:
        path = self.resolve(func)
        if path is not None:
            return path.startswith("math.") or path in CACHED_BODY_CALLS
        if isinstance(func, ast.Name):
            return func.id in self.cached or self.builtin(func.id, CACHED_BODY_BUILTINS)
        return isinstance(func, ast.Attribute) and func.attr in CACHED_BODY_METHODS

    def builtin(self, name: str, names: frozenset[str]) -> bool:
        return name in names and name not in self.aliases and name not in self.user_defs

    # -- its call sites -------------------------------------------------------------------------------
    def call_sites(self, fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        """Every argument of a call to a cached function must be a plain value (see `plain`)."""
        own = _own_nodes(fn.body if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) else [fn.body])
        calls = [
            n
            for n in own
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in self.cached
        ]
        if not calls:
            return
        plain = self.plain_names(fn, own)
        for call in calls:
            for arg in [*call.args, *(k.value for k in call.keywords)]:
                if not self.plain(arg, plain):
                    self.add(
                        arg,
                        f"{_short(arg)} is passed to the cached function {call.func.id} but may be a "  # type: ignore[attr-defined]
                        "tensor; pass cached functions only plain values (constants, shapes, strides, "
                        "dtypes, arithmetic on them, parameters annotated int, bool, float or str)",
                    )

    def plain_names(self, fn: ast.AST, own: list[ast.AST]) -> set[str]:
        """Local names whose every binding is a plain value (greatest fixpoint: `n = n + 1` stays)."""
        bindings: dict[str, list[ast.expr | None]] = {}  # None: a binding that is never plain
        for a in _params(fn):  # type: ignore[arg-type]
            ok = isinstance(a.annotation, ast.Name) and a.annotation.id in PLAIN_ANNOTATIONS
            bindings.setdefault(a.arg, []).append(ast.Constant(0) if ok else None)
        for node in own:
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(t, ast.Name):
                        bindings.setdefault(t.id, []).append(node.value)
                    elif isinstance(t, ast.Tuple) and self.unpacks_plain(node.value):
                        for e in t.elts:
                            if isinstance(e, ast.Name):
                                bindings.setdefault(e.id, []).append(ast.Constant(0))
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                ranged = isinstance(node.iter, ast.Call) and isinstance(node.iter.func, ast.Name)
                ranged = ranged and node.iter.func.id == "range"  # type: ignore[attr-defined]
                bindings.setdefault(node.target.id, []).append(ast.Constant(0) if ranged else None)
        simple = {id(t) for t in self.simple_targets(own)}
        for node in own:  # any other binding (unpacking, with, walrus, comprehension) is not plain
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load) and id(node) not in simple:
                bindings.setdefault(node.id, []).append(None)
        plain = set(bindings)
        changed = True
        while changed:
            changed = False
            for name in list(plain):
                if any(v is None or not self.plain(v, plain) for v in bindings[name]):
                    plain.discard(name)
                    changed = True
        return plain

    def simple_targets(self, own: list[ast.AST]) -> list[ast.expr]:
        out: list[ast.expr] = []
        for node in own:
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    out += [t] if isinstance(t, ast.Name) else []
                    if isinstance(t, ast.Tuple) and self.unpacks_plain(node.value):
                        out += [e for e in t.elts if isinstance(e, ast.Name)]
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                out.append(node.target)
        return out

    def unpacks_plain(self, value: ast.expr | None) -> bool:
        """`M, K = a.shape` / `a.stride()` / `(M, N)`: every element unpacked is plain."""
        if isinstance(value, ast.Attribute):
            return value.attr == "shape"
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
            return value.func.attr in ("stride", "size") and not value.args
        return isinstance(value, ast.Tuple) and all(self.plain(v, set()) for v in value.elts)

    def plain(self, node: ast.expr, names: set[str]) -> bool:
        """Whether `node` can only be a plain value (never a tensor), given the plain local `names`."""
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            return node.id in names or node.id in self.constants or self.resolve(node) is not None
        if isinstance(node, ast.Attribute):
            return node.attr in PLAIN_ATTRS or (self.resolve(node) or "").startswith(("torch.", "triton."))
        if isinstance(node, ast.Subscript):
            return self.plain(node.value, names) and self.plain(node.slice, names)
        if isinstance(node, (ast.Tuple, ast.BoolOp)):
            return all(
                self.plain(v, names) for v in (node.elts if isinstance(node, ast.Tuple) else node.values)
            )
        if isinstance(node, ast.BinOp):
            return self.plain(node.left, names) and self.plain(node.right, names)
        if isinstance(node, ast.UnaryOp):
            return self.plain(node.operand, names)
        if isinstance(node, ast.Compare):
            return all(self.plain(v, names) for v in [node.left, *node.comparators])
        if isinstance(node, ast.IfExp):
            return all(self.plain(v, names) for v in (node.test, node.body, node.orelse))
        if isinstance(node, ast.Call):
            args = [*node.args, *(k.value for k in node.keywords)]
            func = node.func
            if isinstance(func, ast.Name) and self.builtin(func.id, _ANY_ARGS):
                return True
            if isinstance(func, ast.Attribute) and func.attr in PLAIN_METHODS and self.resolve(func) is None:
                return all(self.plain(a, names) for a in args)
            path = self.resolve(func) or ""
            known = path.startswith("math.") or path in CACHED_BODY_CALLS
            known |= isinstance(func, ast.Name) and (
                func.id in self.cached or self.builtin(func.id, CACHED_BODY_BUILTINS)
            )
            return known and all(self.plain(a, names) for a in args)
        return False


def check(tree: ast.Module, aliases: dict[str, str], nodes: list[ast.AST]) -> list[Found]:
    """(line, "cache", message) for every cache rule broken; `nodes` are all the module's nodes."""
    return _CacheRules(tree, aliases, nodes).check()
