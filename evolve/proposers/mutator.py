"""The offline mutator: a Proposer that needs no network and repeats exactly under a seed.

It works on kernel genomes (evolve/proposers/kernel_templates.py): a template, feature switches and
a per-shape config table, rendered to a readable kernel module with the genome in its
EVOLVE-BLOCK. A parent it rendered is read back with `ast.literal_eval`; a parent without
a genome (the hand-written seed, an LLM's kernel) is adopted by extracting its
`pick_config` returns and conditions; when even that fails, the mutator edits the
integer literals of known config names inside the parent's EVOLVE-BLOCK, in place.

Transformations (each a named function returning (genome, note) or None when it does
not apply): tiles, grouping, split_k, persistent, even_masks, hints, rule_table and
crossover (two parents: config rules from one, template and switches from the other).
Each is a family the proposing bandit chooses among (`families`, evolve/proposing.py): asked for one
(`context.family`) the mutator tries it first and falls back to its own weighted draw when it does not
apply to the parent; a proposal's `template` names the family that made it ("numeric" for an edit in
place). All randomness comes from `context.rng()`.
"""

from __future__ import annotations

import ast
import dataclasses
import random
from collections.abc import Callable

from evolve.candidate import Parent, Proposal, ProposalContext, normalised_hash
from evolve.proposers.kernel_templates import (
    GROUP_SIZES,
    SPLITS,
    STAGES,
    TILE_SIZES,
    WARPS,
    Genome,
    adopt,
    describe_when,
    genome_problem,
    read_genome,
    render,
    rule_problem,
)

EVOLVE_START, EVOLVE_END = "# EVOLVE-BLOCK-START", "# EVOLVE-BLOCK-END"
MAX_RULES = 8


@dataclasses.dataclass(frozen=True)
class Env:
    """What the transformations need to know of the task."""

    dtype: str = "bf16"
    target: str = "sm_90"
    train: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def from_task(cls, task: dict | None) -> Env:
        task = task or {}
        train = tuple(tuple(int(x) for x in s) for s in task.get("train", ()) if len(s) == 3)
        return cls(str(task.get("dtype", "bf16")), str(task.get("target", "sm_90")), train)

    def fits(self, rule: dict) -> bool:
        return rule_problem(rule, self.dtype, self.target) is None


Result = tuple[Genome, str] | None


# ------------------------------------------------------------------------ small helpers


def _step(ladder: tuple[int, ...], value: int, rng: random.Random) -> int:
    """A neighbour of `value` on `ladder` (one step, sometimes two), never `value` itself."""
    i = min(range(len(ladder)), key=lambda j: abs(ladder[j] - value))
    moves = [d for d in (-2, -1, 1, 2) if 0 <= i + d < len(ladder) and ladder[i + d] != value]
    weights = [1 if abs(d) == 2 else 4 for d in moves]
    return ladder[i + rng.choices(moves, weights)[0]] if moves else value


def _tiles(rule: dict) -> str:
    return f"{rule['BLOCK_M']}x{rule['BLOCK_N']}x{rule['BLOCK_K']}"


def _diff(old: dict, new: dict) -> str:
    """'tiles 128x128x64 -> 128x256x64, warps 4 -> 8' for the fields that changed."""
    parts = [f"tiles {_tiles(old)} -> {_tiles(new)}"] if _tiles(old) != _tiles(new) else []
    for key, label in (
        ("num_warps", "warps"),
        ("num_stages", "stages"),
        ("GROUP_M", "GROUP_M"),
        ("SPLIT_K", "SPLIT_K"),
    ):
        if old[key] != new[key]:
            parts.append(f"{label} {old[key]} -> {new[key]}")
    return ", ".join(parts)


def _with_rule(g: Genome, i: int, rule: dict) -> Genome:
    return dataclasses.replace(g, rules=g.rules[:i] + (rule,) + g.rules[i + 1 :])


def _no_split(rules: tuple[dict, ...]) -> tuple[dict, ...]:
    return tuple(dict(r, SPLIT_K=1) for r in rules)


def _tweak_rule(rule: dict, rng: random.Random, env: Env) -> dict | None:
    """The rule with its tiles, warps or stages moved a step; None if nothing valid was found."""
    for _ in range(12):
        new = dict(rule)
        kind = rng.choice(("tile", "tile", "tile", "warps", "stages", "tile+warps"))
        if "tile" in kind:
            key = rng.choice(("BLOCK_M", "BLOCK_N", "BLOCK_K"))
            new[key] = _step(TILE_SIZES, new[key], rng)
        if "warps" in kind:
            new["num_warps"] = _step(WARPS, new["num_warps"], rng)
        if kind == "stages":
            new["num_stages"] = _step(STAGES, new["num_stages"], rng)
        if new != rule and env.fits(new):
            return new
    return None


def rule_index(g: Genome, M: int, N: int, K: int) -> int:
    """Index of the rule `pick_config` would choose for a shape (mirrors the rendered code)."""
    for i, rule in enumerate(g.rules):
        w = rule["when"]
        if (
            w.get("M_min", 0) <= M <= w.get("M_max", M)
            and w.get("N_min", 0) <= N <= w.get("N_max", N)
            and w.get("K_min", 0) <= K <= w.get("K_max", K)
            and w.get("MN_min", 0) <= M * N <= w.get("MN_max", M * N)
        ):
            return i
    return len(g.rules) - 1


# ------------------------------------------------------------------------ transformations


def mutate_tiles(g: Genome, rng: random.Random, env: Env) -> Result:
    """Tile sizes, num_warps or num_stages of one config rule."""
    i = rng.randrange(len(g.rules))
    new = _tweak_rule(g.rules[i], rng, env)
    if new is None:
        return None
    return _with_rule(g, i, new), f"{_diff(g.rules[i], new)} for {describe_when(new['when'])}"


def mutate_grouping(g: Genome, rng: random.Random, env: Env) -> Result:
    """Grouped program ordering on/off, or GROUP_M of one rule."""
    if not g.grouped or rng.random() < 0.3:
        new = dataclasses.replace(g, grouped=not g.grouped)
        return (
            new,
            "grouped ordering on (GROUP_M per rule)" if new.grouped else "grouped ordering off (row-major)",
        )
    i = rng.randrange(len(g.rules))
    rule = dict(g.rules[i], GROUP_M=_step(GROUP_SIZES, g.rules[i]["GROUP_M"], rng))
    return _with_rule(g, i, rule), f"{_diff(g.rules[i], rule)} for {describe_when(rule['when'])}"


def mutate_split_k(g: Genome, rng: random.Random, env: Env) -> Result:
    """Switch to the split-K template for the skinny shapes, change SPLIT_K, or leave split-K."""
    if g.template == "splitk":
        if rng.random() < 0.25:
            return dataclasses.replace(
                g, template="tiled", rules=_no_split(g.rules)
            ), "template splitk -> tiled"
        i = rng.randrange(len(g.rules))
        rule = dict(g.rules[i], SPLIT_K=_step(SPLITS, g.rules[i]["SPLIT_K"], rng))
        return _with_rule(g, i, rule), f"{_diff(g.rules[i], rule)} for {describe_when(rule['when'])}"
    rules = list(_no_split(g.rules))
    small = min(env.train, default=(64, 4096, 4096))  # the skinniest training shape
    i = rule_index(g, *small)
    others = [s for s in env.train if rule_index(g, *s) == i and s[0] > small[0]]
    if i == len(rules) - 1 or others:  # that rule also serves big-M shapes: give the skinny ones their own
        bound = max(16, 1 << (max(small[0], 1) - 1).bit_length())
        rules.insert(i, dict(rules[i], when={**rules[i]["when"], "M_max": bound}))
    split = rng.choice((2, 4, 8))
    rules[i] = dict(rules[i], SPLIT_K=split)
    new = dataclasses.replace(g, template="splitk", rules=tuple(rules))
    return new, f"template {g.template} -> splitk, SPLIT_K {split} for {describe_when(rules[i]['when'])}"


def mutate_persistent(g: Genome, rng: random.Random, env: Env) -> Result:
    """Persistent-loop form on (grid = min(NUM_SMS, tiles)) or off."""
    if g.template == "persistent":
        return dataclasses.replace(g, template="tiled"), "template persistent -> tiled"
    new = dataclasses.replace(g, template="persistent", rules=_no_split(g.rules))
    return new, f"template {g.template} -> persistent (grid = min(NUM_SMS, tiles), tile loop per program)"


def mutate_even_masks(g: Genome, rng: random.Random, env: Env) -> Result:
    """Constexpr EVEN_M/N/K: loads and stores without masks when the shape divides the tiles."""
    new = dataclasses.replace(g, even_masks=not g.even_masks)
    return new, "masks dropped on evenly divided shapes (EVEN_M/N/K)" if new.even_masks else "masks always on"


def mutate_hints(g: Genome, rng: random.Random, env: Env) -> Result:
    """tl.multiple_of / tl.max_contiguous hints on the tile offsets."""
    new = dataclasses.replace(g, hints=not g.hints)
    return new, "tl.multiple_of/tl.max_contiguous hints on" if new.hints else "offset hints off"


_LADDER = {d: tuple(1 << e for e in range(4, 15)) for d in ("M", "N", "K")} | {
    "MN": tuple(1 << e for e in range(12, 29, 2))
}


def _empty(when: dict) -> bool:
    """Whether no shape satisfies the bounds (a min above the max of the same size)."""
    return any(when.get(f"{d}_min", 0) > when.get(f"{d}_max", 1 << 62) for d in ("M", "N", "K", "MN"))


def _sizes(shape: tuple[int, int, int]) -> dict:
    return {"M": shape[0], "N": shape[1], "K": shape[2], "MN": shape[0] * shape[1]}


def mutate_rule_table(g: Genome, rng: random.Random, env: Env) -> Result:
    """Split a rule at a new bound (the new rule gets other tiles), remove a rule, or move a bound."""
    ops = ["split"] * (len(g.rules) < MAX_RULES) * 2 + ["remove"] * (len(g.rules) > 1)
    ops += ["bound"] * any(r["when"] for r in g.rules)
    op = rng.choice(ops or ["none"])
    if op == "remove":
        i = rng.randrange(len(g.rules) - 1)
        rules = g.rules[:i] + g.rules[i + 1 :]
        return dataclasses.replace(
            g, rules=rules
        ), f"rule table: removed rule {describe_when(g.rules[i]['when'])}"
    if op == "bound":
        i = rng.choice([j for j, r in enumerate(g.rules) if r["when"]])
        key = rng.choice(sorted(g.rules[i]["when"]))
        value, shift = (
            g.rules[i]["when"][key],
            int(key.endswith("_min")),
        )  # min bounds sit just above a ladder step
        new = _step(_LADDER[key.split("_")[0]], value - shift, rng) + shift
        rule = dict(g.rules[i], when={**g.rules[i]["when"], key: new})
        if _empty(rule["when"]):
            return None
        old, now = describe_when(g.rules[i]["when"]), describe_when(rule["when"])
        return _with_rule(g, i, rule), f"rule table: bound {old} -> {now}"
    if op != "split":
        return None
    i = rng.randrange(len(g.rules))
    rule, when = g.rules[i], g.rules[i]["when"]
    for _ in range(12):
        dim, side = rng.choice(("M", "M", "N", "K", "MN")), rng.choice(("max", "min"))
        key = f"{dim}_{side}"
        # Prefer bounds that separate training shapes this rule serves: they change what is measured.
        served = [_sizes(s)[dim] for s in env.train if rule_index(g, *s) == i]
        useful = [t for t in _LADDER[dim] if any(v <= t for v in served) and any(v > t for v in served)]
        t = rng.choice(useful if useful and rng.random() < 0.7 else _LADDER[dim])
        t = t + 1 if side == "min" else t
        if key in when and (when[key] <= t if side == "max" else when[key] >= t) or _empty({**when, key: t}):
            continue  # not tighter than the bound the rule already has, or no shape would match
        tuned = _tweak_rule(dict(rule, when={**when, key: t}), rng, env)
        if tuned is not None:
            rules = g.rules[:i] + (tuned,) + g.rules[i:]
            note = f"rule table: new rule {describe_when(tuned['when'])} before {describe_when(when)} ({_diff(rule, tuned)})"
            return dataclasses.replace(g, rules=rules), note
    return None


def crossover(g: Genome, other: Genome, rng: random.Random, env: Env) -> Result:
    """Template and switches of `g` with the config rules of `other` (or a mix of both tables)."""
    rules = other.rules if g.template == "splitk" else _no_split(other.rules)
    child = dataclasses.replace(g, rules=rules)
    if child.key() in (g.key(), other.key()):
        i = rng.randrange(len(g.rules))
        child = _with_rule(g, i, dict(rng.choice(rules), when=g.rules[i]["when"]))
        if child.key() in (g.key(), other.key()):
            return None
        return (
            child,
            f"crossover: rule {describe_when(g.rules[i]['when'])} takes a config of the other parent",
        )
    flags = [n for n, on in (("grouped", g.grouped), ("even masks", g.even_masks), ("hints", g.hints)) if on]
    return (
        child,
        f"crossover: template {g.template} ({', '.join(flags) or 'no switches'}) + {len(rules)} config rules of the other parent",
    )


TRANSFORMS: dict[str, Callable[[Genome, random.Random, Env], Result]] = {
    "tiles": mutate_tiles,
    "grouping": mutate_grouping,
    "split_k": mutate_split_k,
    "persistent": mutate_persistent,
    "even_masks": mutate_even_masks,
    "hints": mutate_hints,
    "rule_table": mutate_rule_table,
}
DEFAULT_WEIGHTS = {
    "tiles": 4.0,
    "grouping": 1.0,
    "split_k": 1.5,
    "persistent": 1.0,
    "even_masks": 1.0,
    "hints": 0.5,
    "rule_table": 2.0,
    "crossover": 1.5,
}


# ------------------------------------------------------------------------ parents without a genome


def _ladder(name: str) -> tuple[int, ...] | None:
    upper = name.upper()
    if "BLOCK" in upper:
        return TILE_SIZES
    for word, ladder in (("WARPS", WARPS), ("STAGES", STAGES), ("GROUP", GROUP_SIZES), ("SPLIT", SPLITS)):
        if word in upper:
            return ladder
    return None


def numeric_edit(source: str, rng: random.Random) -> tuple[str, str] | None:
    """Move one integer config literal (BLOCK_*, num_warps, num_stages, GROUP_M, SPLIT_K) inside an
    EVOLVE-BLOCK (anywhere, if the module has none) a step along its ladder, editing the text in place."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    lines = source.splitlines(keepends=True)
    blocks, start = [], None
    for n, line in enumerate(lines, 1):
        if line.strip().startswith(EVOLVE_START):
            start = n
        elif line.strip().startswith(EVOLVE_END) and start is not None:
            blocks.append((start, n))
            start = None
    found = []
    for node in ast.walk(tree):
        pairs = []
        if isinstance(node, ast.Call):
            pairs = [(k.arg, k.value) for k in node.keywords if k.arg]
        elif isinstance(node, ast.Dict):
            pairs = [
                (k.value, v)
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant)
            ]
        elif (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            pairs = [(node.targets[0].id, node.value)]
        for name, value in pairs:
            ok = isinstance(name, str) and isinstance(value, ast.Constant) and type(value.value) is int
            if ok and _ladder(name) and value.lineno == value.end_lineno:
                if not blocks or any(a < value.lineno < b for a, b in blocks):
                    found.append((value.lineno, value.col_offset, name, value))
    if not found:
        return None
    _, _, name, value = sorted(found, key=lambda f: f[:3])[rng.randrange(len(found))]
    new = _step(_ladder(name), value.value, rng)
    if new == value.value:
        return None
    line = lines[value.lineno - 1].encode()
    edited = line[: value.col_offset] + str(new).encode() + line[value.end_col_offset :]
    lines[value.lineno - 1] = edited.decode()
    return "".join(lines), f"numeric edit: {name} {value.value} -> {new} (line {value.lineno})"


def genome_of(source: str, env: Env) -> tuple[Genome, bool] | None:
    """(genome, adopted?) of a parent module: read back if rendered here, else extracted; None if neither."""
    genome = read_genome(source)
    if genome is not None and genome_problem(genome, env.dtype, env.target) is None:
        return genome, False
    genome = adopt(source, env.dtype, env.target)
    return (genome, True) if genome is not None else None


def mutate(
    source: str, transform: str, rng: random.Random, task: dict | None = None, other: str | None = None
) -> tuple[str, str] | None:
    """Apply one named transformation (or "crossover" with `other`, or "numeric") to a module's source:
    (new source, note), or None when it does not apply."""
    env = Env.from_task(task)
    if transform == "numeric":
        return numeric_edit(source, rng)
    got = genome_of(source, env)
    if got is None:
        return None
    genome, adopted = got
    if transform == "crossover":
        theirs = genome_of(other, env) if other is not None else None
        result = crossover(genome, theirs[0], rng, env) if theirs else None
    else:
        result = TRANSFORMS[transform](genome, rng, env)
    if result is None or genome_problem(result[0], env.dtype, env.target) is not None:
        return None
    child, note = result
    rendered = render(child)
    if rendered == source or (child == genome and not adopted):
        return None
    return rendered, ("adopted pick_config; " if adopted else "") + note


class OfflineMutator:
    """Proposer that rewrites kernels through genomes, with no network; deterministic under context.seed."""

    name = "mutator"
    attempts_per_proposal = 6

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown transformations {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.invalid_count = 0  # attempts that produced nothing (transformation did not apply, duplicate)

    @property
    def families(self) -> dict[str, float]:
        """The transformation families it may use, with their weights (> 0): the arms of its bandit."""
        return {n: w for n, w in self.weights.items() if w > 0}

    def propose(self, parents: list[Parent], context: ProposalContext) -> list[Proposal]:
        rng = context.rng()
        if not parents:
            self.invalid_count += 1
            return []
        seen = {p.source_hash or normalised_hash(p.source) for p in parents}
        out: list[Proposal] = []
        for n in range(max(context.count, 0)):
            parent = parents[n % len(parents)]
            for attempt in range(self.attempts_per_proposal):
                # the asked family for the first half of the attempts, then any (it may not apply)
                family = context.family if attempt < self.attempts_per_proposal // 2 else ""
                made = self._attempt(parent, parents, rng, context.task, family)
                digest = normalised_hash(made[0]) if made else None
                if made is None or digest in seen:
                    self.invalid_count += 1
                    continue
                seen.add(digest)
                out.append(
                    Proposal(made[0], made[2], self.name, note=made[1], template=made[3], source_hash=digest)
                )
                break
        return out

    def _attempt(
        self, parent: Parent, parents: list[Parent], rng: random.Random, task: dict, family: str = ""
    ) -> tuple[str, str, tuple[int, ...], str] | None:
        """(source, note, parent ids, family) of one transformation of `parent`, or None."""
        env = Env.from_task(task)
        if genome_of(parent.source, env) is None:  # foreign kernel: edit its literals in place
            made = numeric_edit(parent.source, rng)
            return (made[0], made[1], (parent.id,), "numeric") if made else None
        others = [p for p in parents if p.id != parent.id and p.source != parent.source]
        names = [n for n in self.families if n != "crossover" or others]
        if family:
            names = [n for n in names if n == family]
        if not names:
            return None
        name = rng.choices(names, [self.weights[n] for n in names])[0]
        if name == "crossover":
            other = rng.choice(others)
            made = mutate(parent.source, "crossover", rng, task, other.source)
            return (made[0], f"{made[1]} #{other.id}", (parent.id, other.id), name) if made else None
        made = mutate(parent.source, name, rng, task)
        return (made[0], made[1], (parent.id,), name) if made else None
