"""Kernel genomes and the code generator that renders them into kernel modules.

A genome is a template name, three feature switches and a per-shape config table.
`render` turns it into a self-contained kernel module that follows the candidate
contract (shared/DESIGN.md); the genome itself sits in the module's EVOLVE-BLOCK as
plain literals, so `read_genome` gets it back with `ast.literal_eval` from any module
rendered here (or edited by hand, as long as the literals stay literals).

Templates:
- "tiled": one program per C tile (the seed's form);
- "splitk": a second grid axis splits the K loop; each split writes its fp32 partial
  tile to a [SPLIT_K, M, N] buffer that the entry point sums (`.sum(0).to(dtype)`);
  rules with SPLIT_K == 1 write C directly;
- "persistent": min(NUM_SMS, tiles) programs, each looping over tiles.
Switches: GROUPED (grouped program ordering, GROUP_M), EVEN_MASKS (constexpr EVEN_M/N/K
drop masks when the shape divides the tiles), HINTS (tl.multiple_of/tl.max_contiguous).
`adopt` builds a genome from a hand-written module's `pick_config` (`if M <= 64: return
dict(...)` rules and a final return), so the seed can enter the same machinery.
"""

from __future__ import annotations

import ast
import dataclasses

TEMPLATES = ("tiled", "splitk", "persistent")
RULE_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "SPLIT_K", "num_warps", "num_stages")
BOUND_KEYS = ("M_min", "M_max", "N_min", "N_max", "K_min", "K_max", "MN_min", "MN_max")
TILE_SIZES = (16, 32, 64, 128, 256)
WARPS = (2, 4, 8)
STAGES = (2, 3, 4, 5)
GROUP_SIZES = (1, 2, 4, 8, 16)
SPLITS = (1, 2, 4, 8, 16)
SHARED_LIMITS = {"sm_80": 163 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024}
DEFAULTS = {"GROUP_M": 8, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}  # for adopted configs
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "fp8": 1}


@dataclasses.dataclass(frozen=True)
class Genome:
    template: str = "tiled"
    grouped: bool = True
    even_masks: bool = False
    hints: bool = False
    rules: tuple[dict, ...] = ()  # first match wins; the last rule has no bounds (the default)

    def key(self) -> str:
        return repr((self.template, self.grouped, self.even_masks, self.hints, self.rules))


def rule_problem(rule: dict, dtype: str = "bf16", target: str = "sm_90") -> str | None:
    """Why a config rule is unusable (value ranges, shared memory, accumulator registers); None if fine."""
    if set(rule) != {"when", *RULE_KEYS}:
        return "rule keys"
    when = rule["when"]
    if not isinstance(when, dict) or any(k not in BOUND_KEYS or type(v) is not int for k, v in when.items()):
        return "rule bounds"
    if any(type(rule[k]) is not int for k in RULE_KEYS):
        return "non-integer value"
    allowed = {"BLOCK_M": TILE_SIZES, "BLOCK_N": TILE_SIZES, "BLOCK_K": TILE_SIZES, "GROUP_M": GROUP_SIZES}
    allowed.update(SPLIT_K=SPLITS, num_warps=WARPS, num_stages=STAGES)
    for key, values in allowed.items():
        if rule[key] not in values:
            return f"{key}={rule[key]} not in {values}"
    bm, bn, bk = rule["BLOCK_M"], rule["BLOCK_N"], rule["BLOCK_K"]
    shared = rule["num_stages"] * (bm * bk + bk * bn) * DTYPE_BYTES.get(dtype, 2)
    if shared > 0.95 * SHARED_LIMITS.get(target, 99 * 1024):
        return f"{shared} B of shared memory"
    if bm * bn > 128 * 32 * rule["num_warps"]:  # > 128 fp32 accumulator registers per thread
        return "accumulator needs more than 128 registers per thread"
    return None


def genome_problem(genome: Genome, dtype: str = "bf16", target: str = "sm_90") -> str | None:
    if genome.template not in TEMPLATES:
        return f"unknown template {genome.template!r}"
    if not genome.rules or genome.rules[-1].get("when") != {} or len(genome.rules) > 8:
        return "the rule table needs 1..8 rules, the last one without bounds"
    for rule in genome.rules:
        problem = rule_problem(rule, dtype, target)
        if problem:
            return problem
    if genome.template != "splitk" and any(r["SPLIT_K"] != 1 for r in genome.rules):
        return "SPLIT_K > 1 needs the splitk template"
    return None


def describe_when(when: dict) -> str:
    """{"M_max": 64} -> "M<=64"; {} -> "the default rule"."""
    parts = []
    for key in BOUND_KEYS:
        if key in when:
            dim, side = key.split("_")
            parts.append(f"{'M*N' if dim == 'MN' else dim}{'>=' if side == 'min' else '<='}{when[key]}")
    return " and ".join(parts) if parts else "the default rule"


def read_genome(source: str) -> Genome | None:
    """The genome literals of a rendered module (TEMPLATE, GROUPED, EVEN_MASKS, HINTS, CONFIGS), or None."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    values = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                values[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
    names = ("TEMPLATE", "GROUPED", "EVEN_MASKS", "HINTS", "CONFIGS")
    if any(n not in values for n in names) or not isinstance(values["CONFIGS"], list | tuple):
        return None
    if not all(isinstance(r, dict) for r in values["CONFIGS"]):
        return None
    flags = [values[n] for n in names[1:4]]
    if not all(isinstance(f, bool) for f in flags) or not isinstance(values["TEMPLATE"], str):
        return None
    genome = Genome(values["TEMPLATE"], *flags, rules=tuple(values["CONFIGS"]))
    return genome if genome_problem(genome, "fp16", "sm_90") is None else None


# ------------------------------------------------------------------------------ rendering

_DOC = '''"""Matmul kernel rendered by evolve/proposers/mutator.py from the genome below.

C[M, N] = A[M, K] @ B[K, N] with any strides (layouts nn/nt/tn), fp32 accumulation, output in
the input dtype. {what}
"""

import torch
import triton
import triton.language as tl
'''

_WHAT = {
    "tiled": "One program per tile of C.",
    "splitk": "Split-K: a second grid axis splits the K loop; partial tiles are summed in fp32.",
    "persistent": "Persistent: min(NUM_SMS, tiles) programs, each looping over tiles of C.",
}


class _Lines:
    """Collects source lines at an indentation level."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.depth = 0

    def __call__(self, *lines: str) -> None:
        for line in lines:
            self.out.append("    " * self.depth + line if line else "")


def _kernel(g: Genome) -> str:
    w = _Lines()
    params = ["a_ptr", "b_ptr", "c_ptr", "M", "N", "K", "stride_am", "stride_ak", "stride_bk", "stride_bn"]
    params += ["stride_cs"] if g.template == "splitk" else []
    params += ["stride_cm", "stride_cn"] + (["NUM_SMS"] if g.template == "persistent" else [])
    consts = ["BLOCK_M", "BLOCK_N", "BLOCK_K"] + (["GROUP_M"] if g.grouped else [])
    consts += (["SPLIT_K"] if g.template == "splitk" else []) + (
        ["EVEN_M", "EVEN_N", "EVEN_K"] if g.even_masks else []
    )
    w("@triton.jit", "def matmul_kernel(")
    w(*[f"    {p}," for p in params], *[f"    {c}: tl.constexpr," for c in consts + ["DOT_PRECISION"]], "):")
    w.depth = 1
    w("num_pid_m = tl.cdiv(M, BLOCK_M)", "num_pid_n = tl.cdiv(N, BLOCK_N)")
    if g.template == "persistent":
        w("# Persistent: each program walks the tiles pid, pid + NUM_SMS, ... so one wave covers C.")
        w("num_tiles = num_pid_m * num_pid_n", "for tile_id in range(tl.program_id(0), num_tiles, NUM_SMS):")
        w.depth = 2
    else:
        w("tile_id = tl.program_id(0)")
    if g.grouped:
        w("# Grouped ordering: GROUP_M row-blocks share each column-block of B while it is in L2.")
        w("pids_per_group = GROUP_M * num_pid_n", "group = tile_id // pids_per_group")
        w("first_pid_m = group * GROUP_M", "group_rows = min(num_pid_m - first_pid_m, GROUP_M)")
        w("pid_m = first_pid_m + (tile_id % pids_per_group) % group_rows")
        w("pid_n = (tile_id % pids_per_group) // group_rows")
    else:
        w("# Row-major ordering: consecutive programs sweep one row of C tiles.")
        w("pid_m = tile_id // num_pid_n", "pid_n = tile_id % num_pid_n")
    w("", "# The tile of C this program owns, and the first K-slab of A and B feeding it.")
    w("offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)", "offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
    if g.template == "splitk":
        w("# Split-K: program (tile, s) takes the K-slabs s, s + SPLIT_K, s + 2 * SPLIT_K, ...")
        w("pid_s = tl.program_id(1)")
    w("offs_k = tl.arange(0, BLOCK_K)")
    if g.hints:
        w(
            "# Hints for vectorised loads: each offset run is contiguous and starts at a multiple of its block."
        )
        for o, b in (("offs_m", "BLOCK_M"), ("offs_n", "BLOCK_N")):
            w(f"{o} = tl.max_contiguous(tl.multiple_of({o}, {b}), {b})")
    k0 = "(pid_s * BLOCK_K + offs_k)" if g.template == "splitk" else "offs_k"
    w(f"a_ptrs = a_ptr + offs_m[:, None] * stride_am + {k0}[None, :] * stride_ak")
    w(f"b_ptrs = b_ptr + {k0}[:, None] * stride_bk + offs_n[None, :] * stride_bn")
    w("", "# acc = sum over K-slabs of A_tile @ B_tile in fp32; masked loads read 0 past the ragged edges.")
    w("acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)")
    first, step = ("pid_s", "SPLIT_K") if g.template == "splitk" else ("0", "1")
    w(f"for k in range({first}, tl.cdiv(K, BLOCK_K){'' if step == '1' else ', ' + step}):")
    w.depth += 1
    w("k_left = K - k * BLOCK_K")
    a_mask = "(offs_m[:, None] < M) & (offs_k[None, :] < k_left)"
    b_mask = "(offs_k[:, None] < k_left) & (offs_n[None, :] < N)"
    if g.even_masks:
        w("if EVEN_M and EVEN_K:  # constexpr: the shape divides the tiles, no masks needed")
        w("    a = tl.load(a_ptrs)", "else:", f"    a = tl.load(a_ptrs, mask={a_mask}, other=0.0)")
        w("if EVEN_N and EVEN_K:", "    b = tl.load(b_ptrs)", "else:")
        w(f"    b = tl.load(b_ptrs, mask={b_mask}, other=0.0)")
    else:
        w(f"a = tl.load(a_ptrs, mask={a_mask}, other=0.0)", f"b = tl.load(b_ptrs, mask={b_mask}, other=0.0)")
    w("acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)")
    w(f"a_ptrs += {'' if step == '1' else step + ' * '}BLOCK_K * stride_ak")
    w(f"b_ptrs += {'' if step == '1' else step + ' * '}BLOCK_K * stride_bk")
    w.depth -= 1
    w("", "c = acc.to(c_ptr.dtype.element_ty)")
    split = "pid_s * stride_cs + " if g.template == "splitk" else ""
    w(f"c_ptrs = c_ptr + {split}offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn")
    c_mask = "(offs_m[:, None] < M) & (offs_n[None, :] < N)"
    if g.even_masks:
        w(
            "if EVEN_M and EVEN_N:",
            "    tl.store(c_ptrs, c)",
            "else:",
            f"    tl.store(c_ptrs, c, mask={c_mask})",
        )
    else:
        w(f"tl.store(c_ptrs, c, mask={c_mask})")
    return "\n".join(w.out)


def _genome_block(g: Genome) -> str:
    lines = [
        "# Kernel genome (read back by evolve/proposers/mutator.py; keep these plain literals).",
        f'TEMPLATE = "{g.template}"  # "tiled", "splitk" or "persistent"',
        f"GROUPED = {g.grouped}  # grouped program ordering with GROUP_M",
        f"EVEN_MASKS = {g.even_masks}  # drop masks when the shape divides the tiles evenly",
        f"HINTS = {g.hints}  # tl.multiple_of / tl.max_contiguous on offsets",
        "# Per-shape configs: the first rule whose bounds all hold wins; the last rule is the default.",
        "CONFIGS = [",
    ]
    for rule in g.rules:
        when = "{" + ", ".join(f'"{k}": {rule["when"][k]}' for k in BOUND_KEYS if k in rule["when"]) + "}"
        values = ", ".join(f'"{k}": {rule[k]}' for k in RULE_KEYS)
        lines.append(f'    {{"when": {when}, {values}}},')
    return "\n".join([*lines, "]"])


_PICK = '''def rule_matches(when: dict, M: int, N: int, K: int) -> bool:
    """Whether every bound of a rule holds for this shape (a rule without bounds always matches)."""
    return (
        when.get("M_min", 0) <= M <= when.get("M_max", M)
        and when.get("N_min", 0) <= N <= when.get("N_max", N)
        and when.get("K_min", 0) <= K <= when.get("K_max", K)
        and when.get("MN_min", 0) <= M * N <= when.get("MN_max", M * N)
    )


def pick_config(M: int, N: int, K: int) -> dict:
    """Tile sizes and launch options for one problem shape: the first matching rule."""
    for rule in CONFIGS:
        if rule_matches(rule["when"], M, N, K):
            return rule
    return CONFIGS[-1]
'''


def _entry(g: Genome) -> str:
    w = _Lines()
    w("def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:")
    w.depth = 1
    w("# EVOLVE-BLOCK-START")
    w("M, K = a.shape", "K2, N = b.shape", 'assert K == K2, "inner dimensions differ"')
    w(
        "cfg = pick_config(M, N, K)",
        'BLOCK_M, BLOCK_N, BLOCK_K = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]',
    )
    w("# Full fp32 products for fp32 inputs, as torch.matmul computes by default.")
    w('precision = "ieee" if a.dtype == torch.float32 else "tf32"')
    w("num_tiles = triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N)")
    extra = []
    if g.template == "splitk":
        w('split_k = cfg["SPLIT_K"]', "if split_k == 1:")
        w("    c = torch.empty((M, N), device=a.device, dtype=a.dtype)", "    out = c", "else:")
        w("    # fp32 partial tiles, one slice per split, summed after the launch.")
        w("    out = torch.empty((split_k, M, N), device=a.device, dtype=torch.float32)")
        w("grid = (num_tiles, split_k)")
        strides = ["out.stride(0) if split_k > 1 else 0", "out.stride(-2)", "out.stride(-1)"]
        extra.append("SPLIT_K=split_k,")
    else:
        w("c = torch.empty((M, N), device=a.device, dtype=a.dtype)", "out = c")
        strides = ["c.stride(0)", "c.stride(1)"]
        if g.template == "persistent":
            # The judge answers device queries with the target's figures when there is no GPU.
            w("# One program per SM, at most one per tile.")
            w("num_sms = torch.cuda.get_device_properties(a.device).multi_processor_count")
            w("grid = (min(num_sms, num_tiles),)")
            strides.append("num_sms")
        else:
            w("grid = (num_tiles,)")
    w("matmul_kernel[grid](")
    args = [
        "a",
        "b",
        "out",
        "M",
        "N",
        "K",
        "a.stride(0)",
        "a.stride(1)",
        "b.stride(0)",
        "b.stride(1)",
        *strides,
    ]
    w(*[f"    {x}," for x in args])
    w("    BLOCK_M=BLOCK_M,", "    BLOCK_N=BLOCK_N,", "    BLOCK_K=BLOCK_K,")
    if g.grouped:
        w('    GROUP_M=cfg["GROUP_M"],')
    w(*[f"    {x}" for x in extra])
    if g.even_masks:
        w("    EVEN_M=M % BLOCK_M == 0,", "    EVEN_N=N % BLOCK_N == 0,", "    EVEN_K=K % BLOCK_K == 0,")
    w(
        "    DOT_PRECISION=precision,",
        '    num_warps=cfg["num_warps"],',
        '    num_stages=cfg["num_stages"],',
        ")",
    )
    if g.template == "splitk":
        w("if split_k > 1:", "    c = out.sum(0).to(a.dtype)")
    w("return c", "# EVOLVE-BLOCK-END")
    return "\n".join(w.out)


def render(genome: Genome) -> str:
    """The kernel module for a genome: docstring, imports, kernel, genome block, config picker, entry point.
    Everything a proposer may change is inside EVOLVE-BLOCK regions (the kernel, the genome, the picker,
    the entry point's body), so that an LLM child of a rendered module may edit all of it; the imports
    and the entry point's signature stay outside."""
    parts = [
        _DOC.format(what=_WHAT[genome.template]),
        "# EVOLVE-BLOCK-START\n" + _kernel(genome),
        _genome_block(genome),
        _PICK.rstrip() + "\n\n\n# EVOLVE-BLOCK-END",
        _entry(genome),
    ]
    return parts[0] + "\n\n" + "\n\n\n".join(parts[1:]) + "\n"


# ------------------------------------------------------------------------------ adoption


def _int(node: ast.expr) -> int | None:
    """Value of an integer constant expression (`512 * 512`, `1 << 20`), else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _int(node.left), _int(node.right)
        if left is None or right is None or abs(right) > 64 and isinstance(node.op, ast.Pow | ast.LShift):
            return None
        ops = {
            ast.Add: int.__add__,
            ast.Sub: int.__sub__,
            ast.Mult: int.__mul__,
            ast.FloorDiv: int.__floordiv__,
        }
        ops |= {ast.Pow: int.__pow__, ast.LShift: int.__lshift__}
        fn = ops.get(type(node.op))
        return fn(left, right) if fn and (right != 0 or not isinstance(node.op, ast.FloorDiv)) else None
    return None


def _dim(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name) and node.id in ("M", "N", "K"):
        return node.id
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Mult)
        and {_dim(node.left), _dim(node.right)} == {"M", "N"}
    ):
        return "MN"
    return None


def parse_bounds(test: ast.expr) -> dict | None:
    """`M <= 64 and M * N <= 512 * 512` -> {"M_max": 64, "MN_max": 262144}; None if not understood."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        out: dict = {}
        for part in test.values:
            sub = parse_bounds(part)
            if sub is None:
                return None
            for k, v in sub.items():
                out[k] = min(out.get(k, v), v) if k.endswith("_max") else max(out.get(k, v), v)
        return out
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = test.left, test.ops[0], test.comparators[0]
    flip = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}
    if _dim(left) is None and type(op) in flip:  # `64 >= M` reads as `M <= 64`
        left, right, op = right, left, flip[type(op)]()
    dim, value = _dim(left), _int(right)
    if dim is None or value is None:
        return None
    table = {ast.LtE: ("max", 0), ast.Lt: ("max", -1), ast.GtE: ("min", 0), ast.Gt: ("min", 1)}
    if type(op) not in table:
        return None
    side, shift = table[type(op)]
    return {f"{dim}_{side}": value + shift}


def _config(node: ast.expr | None) -> dict | None:
    """`dict(BLOCK_M=..., ...)` or `{"BLOCK_M": ...}` with integer values, completed with defaults."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "dict"
        and not node.args
    ):
        items = [(k.arg, k.value) for k in node.keywords]
    elif isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
        items = [(k.value, v) for k, v in zip(node.keys, node.values, strict=True)]
    else:
        return None
    values = {k: _int(v) for k, v in items}
    if any(k not in RULE_KEYS or v is None for k, v in values.items()):
        return None
    if not {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= set(values):
        return None
    return {**DEFAULTS, **values}


def adopt(source: str, dtype: str = "bf16", target: str = "sm_90") -> Genome | None:
    """A genome from a module's own `pick_config`: its `if <bounds>: return dict(...)` rules and last return."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    funcs = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "pick_config"]
    if not funcs:
        return None
    rules = []
    for stmt in funcs[0].body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # docstring
        if (
            isinstance(stmt, ast.If)
            and not stmt.orelse
            and len(stmt.body) == 1
            and isinstance(stmt.body[0], ast.Return)
        ):
            when, cfg = parse_bounds(stmt.test), _config(stmt.body[0].value)
            if when is None or cfg is None or not when:
                return None
            rules.append({"when": when, **cfg})
        elif isinstance(stmt, ast.Return) and stmt is funcs[0].body[-1]:
            cfg = _config(stmt.value)
            if cfg is None:
                return None
            rules.append({"when": {}, **cfg})
        else:
            return None
    rules = [{"when": r["when"], **{k: r[k] for k in RULE_KEYS}} for r in rules]
    split = any(r["SPLIT_K"] > 1 for r in rules)
    genome = Genome("splitk" if split else "tiled", "GROUP_M" in source, False, False, tuple(rules))
    return genome if genome_problem(genome, dtype, target) is None else None
