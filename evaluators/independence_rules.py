"""Static rules that keep a candidate's calls independent of where and how often it runs.

Part of the static rules (evaluators/static_rules.py calls `check`). The judge compares the
launches of a `meta` run with a checked CPU run and ranks them as if they ran on a GPU, so a
kernel module must not be able to tell those runs apart, nor one call from the next
(shared/DESIGN.md, "The candidate contract"). Three families:

- *placement*: no reading of where a tensor lives (`is_cuda`, `is_meta`, `data_ptr()`,
  `device.type`, a tensor's text, `torch.cuda.is_available()`, autograd state). `x.device` may
  only be passed on, as `device=` to a torch allocation or to a `torch.cuda` device query,
  or compared with another tensor's device in an assert;
- *state*: nothing outlives a call: no `global`/`nonlocal`, no changes to a container the
  function did not create itself (module tables stay read-only), no defaults or top-level
  generators evaluated once and shared;
- *cache* (evaluators/cache_rules.py): `functools.lru_cache`/`cache` only on pure config
  functions of plain values, and nobody reads a cache's statistics or clears it.

`check` returns (line, rule, message) triples; static_rules turns them into Violations.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from . import cache_rules
from .rule_tables import (
    CACHED_BODY_BUILTINS,
    DEVICE_QUERIES,
    FRESH_CONSTRUCTORS,
    KERNEL_STATE_ATTRS,
    MUTATING_METHODS,
    PLACEMENT_ATTRS,
    TEXT_BUILTINS,
)

ONLY_SHAPES = "launches may depend only on shapes, strides, dtypes and the target's properties"
INDEPENDENT = "calls must be independent (no state kept from one call to the next)"

Found = tuple[int, str, str]
_IN_PLACE_OPS = (ast.Add, ast.Mult, ast.BitOr, ast.BitAnd, ast.Sub, ast.BitXor)  # list/dict/set ops
# Node kinds the rules never look at (contexts, operators), and plain field values.
_KERNEL_DECORATORS = frozenset({"triton.jit", "triton.autotune", "triton.heuristics"})
_LEAVES = frozenset(
    [type(None), str, int, float, bool, bytes, ast.Constant]
    + [
        c
        for base in (ast.expr_context, ast.operator, ast.cmpop, ast.boolop, ast.unaryop)
        for c in base.__subclasses__()
    ]
)


def _chain_root(node: ast.expr) -> ast.expr:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node


def _short(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Nodes(list):
    """A scope's nodes, also grouped by kind so that each rule visits only the kinds it judges."""

    def __init__(self, nodes: list[ast.AST]) -> None:
        super().__init__(nodes)
        self.kinds: dict[type, list[ast.AST]] = {}
        for node in nodes:
            self.kinds.setdefault(type(node), []).append(node)

    def of(self, *kinds: type) -> list[ast.AST]:
        return [n for kind in kinds for n in self.kinds.get(kind, ())]


class _Rules:
    def __init__(self, tree: ast.Module, aliases: dict[str, str]) -> None:
        self.tree = tree
        self.aliases = aliases
        self.found: list[Found] = []
        self.user_defs = {s.name for s in tree.body if isinstance(s, (ast.FunctionDef, ast.ClassDef))}
        self.called: set[int] = set()  # ids of the current scope's called functions (placement)
        self.kernels = {  # names of the module's Triton kernels (jit, autotuned or with heuristics)
            s.name
            for s in tree.body
            if isinstance(s, ast.FunctionDef)
            and any(
                self.resolve(d.func if isinstance(d, ast.Call) else d) in _KERNEL_DECORATORS
                for d in s.decorator_list
            )
        }
        self.nodes: list[ast.AST] = []  # every node but contexts and operators, once scopes() ran

    def add(self, node: ast.AST, rule: str, text: str) -> None:
        line = getattr(node, "lineno", 1)
        self.found.append((line, rule, f"line {line}: {text}"))

    def resolve(self, node: ast.expr) -> str | None:
        attrs: list[str] = []
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        return ".".join([self.aliases[node.id], *attrs[::-1]])

    def builtin(self, func: ast.expr, names: frozenset[str]) -> str | None:
        """`func`'s name when it is a plain call of one of the builtins `names` (not shadowed)."""
        if (
            isinstance(func, ast.Name)
            and func.id in names
            and func.id not in self.aliases.keys() | self.user_defs
        ):
            return func.id
        return None

    # -- scopes ---------------------------------------------------------------------------------
    def scopes(self) -> Iterator[tuple[ast.AST, list[ast.AST], bool]]:
        """(scope node, its own nodes, whether it is @triton.jit code) for the module and every
        function, lambda and class; a scope's nodes stop at nested scopes' bodies (decorators,
        defaults and annotations belong to the enclosing scope, where they are evaluated)."""
        todo: list[tuple[ast.AST, list[ast.AST], bool]] = [(self.tree, list(self.tree.body), False)]
        while todo:
            scope, roots, jit = todo.pop()
            own: list[ast.AST] = []
            stack = list(roots)
            while stack:
                node = stack.pop()
                own.append(node)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    is_jit = any(
                        self.resolve(d.func if isinstance(d, ast.Call) else d) == "triton.jit"
                        for d in node.decorator_list
                    )
                    stack += [*node.decorator_list, node.args]
                    stack += [node.returns] if node.returns else []
                    todo.append((node, list(node.body), jit or is_jit))
                elif isinstance(node, ast.Lambda):
                    stack.append(node.args)
                    todo.append((node, [node.body], jit))
                elif isinstance(node, ast.ClassDef):
                    stack += [*node.decorator_list, *node.bases, *node.keywords]
                    todo.append((node, list(node.body), jit))
                else:
                    for field in node._fields:  # ast.iter_child_nodes, minus the many ctx nodes
                        value = getattr(node, field, None)
                        kind = type(value)
                        if kind is list:
                            stack += [v for v in value if isinstance(v, ast.AST)]
                        elif kind not in _LEAVES and isinstance(value, ast.AST):
                            stack.append(value)
            self.nodes += own
            yield scope, _Nodes(own), jit

    # -- placement ------------------------------------------------------------------------------
    def allowed_device_reads(self) -> set[int]:
        """ids of the `x.device` nodes that only pass the device on (see the module docstring)."""
        ok: set[int] = set()
        for node in self.nodes:
            if isinstance(node, ast.Call):
                path = self.resolve(node.func) or ""
                if path.startswith("torch.") and path != "torch.device":
                    ok |= {id(k.value) for k in node.keywords if k.arg == "device"}
                if path in DEVICE_QUERIES:
                    ok |= {id(x) for x in node.args}
            elif isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):
                sides = [node.test.left, *node.test.comparators]
                if all(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.test.ops) and all(
                    isinstance(s, ast.Attribute) and s.attr == "device" and isinstance(s.value, ast.Name)
                    for s in sides
                ):
                    ok |= {id(s) for s in sides}  # `assert a.device == b.device` can only fail
        return ok

    def placement(self, own: _Nodes, jit: bool, passing: set[int]) -> None:
        quoted: set[int] = set()  # in assert/raise messages and annotations, where text is allowed
        for node in own.of(ast.Assert, ast.Raise):
            if isinstance(node, ast.Assert) and node.msg is not None:
                quoted |= {id(n) for n in ast.walk(node.msg)}
            elif isinstance(node, ast.Raise):
                quoted |= {id(n) for part in (node.exc, node.cause) if part for n in ast.walk(part)}
        discarded = {id(n.value) for n in own.of(ast.Expr)}
        hints = [n.annotation for n in own.of(ast.arg, ast.AnnAssign)]
        hints += [n.returns for n in own.of(ast.FunctionDef, ast.AsyncFunctionDef)]
        quoted |= {id(n) for hint in hints if hint is not None for n in ast.walk(hint)}  # `dtype: str`
        called = self.called = {id(n.func) for n in own.of(ast.Call)}
        for node in own.of(ast.Subscript):
            if isinstance(node.value, ast.Name) and node.value.id in self.kernels and id(node) not in called:
                self.add(
                    node,
                    "placement",
                    f"{_short(node)} keeps a kernel's launcher instead of launching it; {ONLY_SHAPES}: "
                    "launch it where it is made, `kernel[grid](...)`, as a statement of its own",
                )
        for node in own.of(ast.Call, ast.Attribute, ast.JoinedStr, ast.BinOp, ast.Name):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Subscript)
                and id(node) not in discarded
            ):
                self.add(
                    node,
                    "placement",
                    f"the result of the launch {_short(node.func)}(...) tells the interpreter from a GPU (None "
                    f"under the interpreter, a compiled kernel on a GPU); {ONLY_SHAPES}: launch as a "
                    "statement of its own and ignore what it returns",
                )
            if (
                isinstance(node, ast.Attribute)
                and node.attr in KERNEL_STATE_ATTRS
                and not jit
                and self.resolve(node) is None  # `functools.cache` is a library path, judged elsewhere
            ):
                self.add(
                    node,
                    "state",
                    f"{_short(node)} reads a kernel's or autotuner's runtime state (compile caches, tuned "
                    f"configs, hooks), which differs between the judge's runs and production and grows "
                    f"with calls; {INDEPENDENT} and {ONLY_SHAPES}: remove it",
                )
                continue
            if isinstance(node, ast.Attribute):
                if node.attr not in PLACEMENT_ATTRS and node.attr not in ("device", "type"):
                    continue
                path = self.resolve(node)
                what = _short(node)
                if node.attr in PLACEMENT_ATTRS:
                    self.add(
                        node,
                        "placement",
                        f"{what} tells where or how the call runs (a judge's meta or CPU run from a GPU "
                        f"one); {ONLY_SHAPES}, so the module must not depend on the device: remove it",
                    )
                elif node.attr == "device" and path != "torch.device" and id(node) not in passing:
                    self.add(
                        node,
                        "placement",
                        f"{what} reads the device; {ONLY_SHAPES} (they must not depend on the device): "
                        "pass x.device only as `device=` to a torch allocation or to "
                        "torch.cuda.get_device_properties",
                    )
                elif (
                    node.attr == "type"
                    and not jit
                    and not (path or "").startswith("triton.")
                    and not (isinstance(node.value, ast.Attribute) and node.value.attr == "device")
                ):  # (`x.device.type` is reported once, at `.device`)
                    self.add(
                        node,
                        "placement",
                        f"{what} names the tensor's type, which includes its device; {ONLY_SHAPES}: "
                        "read .dtype instead",
                    )
            elif not jit and id(node) not in quoted and self.is_text(node):
                self.add(
                    node,
                    "placement",
                    f"{_short(node)} turns a value into text, which shows a tensor's device; "
                    f"{ONLY_SHAPES}: format values only in assert and raise messages",
                )

    def is_text(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):  # `map(str, xs)`, `str.format(...)`: str passed on, not called
            return id(node) not in self.called and self.builtin(node, TEXT_BUILTINS) is not None
        if isinstance(node, ast.JoinedStr):
            return any(isinstance(v, ast.FormattedValue) for v in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)
        if isinstance(node, ast.Call):
            func = node.func
            if self.builtin(func, TEXT_BUILTINS) and (node.args or node.keywords):
                # `str(a.dtype)` and `str(a.shape)` show no device
                shown = [*node.args, *(k.value for k in node.keywords)]
                return not all(isinstance(x, ast.Attribute) and x.attr in ("dtype", "shape") for x in shown)
            return (
                isinstance(func, ast.Attribute)
                and func.attr in ("format", "format_map")
                and isinstance(func.value, ast.Constant)
                and isinstance(func.value.value, str)
            )
        return False

    # -- state ----------------------------------------------------------------------------------
    def fresh_names(self, scope: ast.AST, own: _Nodes) -> set[str]:
        """Local names of a function bound only to containers it built itself (`[]`, `dict(...)`)."""
        if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return set()  # module and class names live as long as the module: never fresh
        fresh: dict[str, bool] = {}
        args = scope.args
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None:
                fresh[a.arg] = False  # a parameter is the caller's object
        judged: set[int] = set()  # Name targets of plain assignments (and `x op= y`, judged apart)
        for node in own.of(ast.Assign, ast.AnnAssign, ast.AugAssign):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        judged.add(id(t))
                        fresh[t.id] = fresh.get(t.id, True) and self.is_fresh(node.value)
            elif isinstance(node, ast.AugAssign):
                judged.add(id(node.target))
        kinds = (
            ast.Name,
            ast.FunctionDef,
            ast.ClassDef,
            ast.Import,
            ast.ImportFrom,
            ast.Global,
            ast.Nonlocal,
        )
        for node in own.of(*kinds):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load) and id(node) not in judged:
                fresh[node.id] = False  # for/with/walrus/comprehension targets, unpacking, del
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                fresh[node.name] = False
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                fresh.update(dict.fromkeys(((a.asname or a.name).split(".")[0] for a in node.names), False))
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                fresh.update(dict.fromkeys(node.names, False))
        return {name for name, ok in fresh.items() if ok}

    def is_fresh(self, value: ast.expr) -> bool:
        """Whether `value` builds a new container or tensor (one the function may change)."""
        if isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)):
            return True
        if not isinstance(value, ast.Call):
            return False
        # a torch allocation is a new tensor: writing into it (`c[:, :K] = a`) keeps nothing
        path = self.resolve(value.func) or ""
        return path.startswith("torch.") or self.builtin(value.func, FRESH_CONSTRUCTORS) is not None

    def state(self, scope: ast.AST, own: _Nodes, jit: bool) -> None:
        # `tuple(x for x in ...)` at import consumes its generator there; a bare one lives on.
        consumed = {id(n.args[0]) for n in own.of(ast.Call) if len(n.args) == 1}
        kinds = (
            ast.Global,
            ast.Nonlocal,
            ast.FunctionDef,
            ast.AsyncFunctionDef,
            ast.Lambda,
            ast.GeneratorExp,
        )
        for node in own.of(*kinds):
            if isinstance(node, (ast.Global, ast.Nonlocal)):
                kind = type(node).__name__.lower()
                self.add(
                    node,
                    "state",
                    f"{kind} {', '.join(node.names)} keeps state outside the call; {INDEPENDENT}: "
                    "pass values as arguments and return results",
                )
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                self.defaults(node)
            elif (
                isinstance(node, ast.GeneratorExp)
                and not isinstance(scope, (ast.FunctionDef, ast.Lambda))
                and id(node) not in consumed
            ):
                self.add(
                    node,
                    "state",
                    f"the generator {_short(node)} is made once at import and advanced by every call; "
                    f"{INDEPENDENT}: use a tuple or list",
                )
        if jit:
            return  # Triton code has no Python containers; its `x += y` are values, not objects
        fresh = self.fresh_names(scope, own)
        local = isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))  # else: toplevel rule
        kinds = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.comprehension, ast.Delete)
        for node in own.of(*kinds, ast.withitem, ast.NamedExpr, ast.Attribute):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.comprehension)):
                targets = [node.target]
            elif isinstance(node, ast.Delete):
                targets = node.targets
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                targets = [node.optional_vars]
            elif isinstance(node, ast.NamedExpr):
                targets = [node.target]
            for target in targets:
                for t in ast.walk(target):
                    if isinstance(t, (ast.Subscript, ast.Attribute)) and isinstance(
                        t.ctx, (ast.Store, ast.Del)
                    ):
                        self.mutation(t, t.value, fresh)
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and local:
                if not isinstance(node.op, _IN_PLACE_OPS):
                    continue  # no list, dict or set changes in place under @=, /=, **= ...
                self.aug_name(node, scope, own, fresh)
            if (
                isinstance(node, ast.Attribute)
                and node.attr in MUTATING_METHODS
                and isinstance(node.ctx, ast.Load)
            ):
                self.mutation(node, node.value, fresh)

    def mutation(self, node: ast.expr, container: ast.expr, fresh: set[str]) -> None:
        if isinstance(node, ast.Subscript) and isinstance(container, ast.Name) and container.id in fresh:
            return
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            if isinstance(container, ast.Name) and container.id in fresh:
                return
        if self.resolve(node) is not None:
            return  # a library path (`torch.cuda.x = ...`): the monkeypatching rule reports it
        root = _chain_root(container)
        whose = f" {root.id}," if isinstance(root, ast.Name) else ""
        self.add(
            node,
            "state",
            f"{_short(node)} changes{whose} an object this function did not create (a module table, "
            f"an argument, a call's result); {INDEPENDENT}: copy it into a new local first, "
            "e.g. `cfg = dict(table)`, and change the copy",
        )

    def aug_name(self, node: ast.AugAssign, scope: ast.AST, own: list[ast.AST], fresh: set[str]) -> None:
        """`x op= y` changes x in place when x is a list, dict or set: allowed only when every
        binding of x in this function makes a new object (a literal, arithmetic, a library call)."""
        name = node.target.id  # type: ignore[attr-defined]
        if name in fresh:
            return
        values = []
        local = isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if local:
            args = scope.args  # type: ignore[attr-defined]
            params = {
                a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg] if a
            }
            local = name not in params
        for n in own:
            if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    values.append(n.value)
                elif any(isinstance(x, ast.Name) and x.id == name for t in targets for x in ast.walk(t)):
                    local = False  # unpacked from something else
            elif isinstance(n, (ast.For, ast.comprehension, ast.withitem, ast.NamedExpr)):
                target = n.optional_vars if isinstance(n, ast.withitem) else n.target
                if target is not None and any(
                    isinstance(x, ast.Name) and x.id == name for x in ast.walk(target)
                ):
                    local = False
        if local and values and all(self.new_object(v, own) for v in values):
            return
        op = type(node.op).__name__
        self.add(
            node,
            "state",
            f"{name} {_short(node).split(' ', 2)[1]} ... may change in place an object this function did "
            f"not create ({op} on a list, dict or set); {INDEPENDENT}: write `{name} = {name} <op> ...`",
        )

    def new_object(self, value: ast.expr, own: list[ast.AST], depth: int = 0) -> bool:
        """Whether `value` always evaluates to an object made right there (never a shared one)."""
        if depth > 8:
            return False
        if isinstance(value, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.Compare, ast.JoinedStr, ast.Tuple)):
            return True
        if self.is_fresh(value):
            return True
        if isinstance(value, ast.IfExp):
            return self.new_object(value.body, own, depth + 1) and self.new_object(
                value.orelse, own, depth + 1
            )
        if isinstance(value, ast.Call):
            path = self.resolve(value.func) or ""
            return path.split(".")[0] in ("torch", "triton", "math") or bool(
                self.builtin(value.func, CACHED_BODY_BUILTINS - {"min", "max"})
            )
        return False

    def defaults(self, fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = fn.args
        params = [*args.posonlyargs, *args.args]
        pairs = list(zip(params[len(params) - len(args.defaults) :], args.defaults, strict=True))
        pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
        for arg, default in pairs:
            bad = next(
                (
                    n
                    for n in ast.walk(default)
                    if isinstance(
                        n,
                        (
                            ast.Call,
                            ast.List,
                            ast.Dict,
                            ast.Set,
                            ast.ListComp,
                            ast.DictComp,
                            ast.SetComp,
                            ast.GeneratorExp,
                            ast.Lambda,
                        ),
                    )
                ),
                None,
            )
            if bad is not None:
                self.add(
                    default,
                    "state",
                    f"the default of parameter {arg.arg} ({_short(default)}) is made once and shared "
                    f"by every call; {INDEPENDENT}: use a constant default such as None",
                )

    def run(self) -> list[Found]:
        scopes = list(self.scopes())
        passing = self.allowed_device_reads()
        for scope, own, jit in scopes:
            self.placement(own, jit, passing)
            self.state(scope, own, jit)
        self.found += cache_rules.check(self.tree, self.aliases, self.nodes)
        return self.found


def check(tree: ast.Module, aliases: dict[str, str]) -> list[Found]:
    """(line, rule, message) for every placement, state and cache violation in a parsed module.

    `aliases` maps each imported name to the dotted path it denotes (as static_rules computes it).
    """
    return _Rules(tree, aliases).run()
