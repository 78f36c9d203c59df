"""The population: islands of MAP-Elites grids, parent selection, migration, duplicate rejection.

Each island keeps one elite per *niche*; a niche is a tuple of kernel traits read from the
compile facts and the source (see `niche_of`), so the search keeps structurally different
kernels alive even while one family leads. Islands evolve apart and exchange their best
kernel along a ring every `migration_interval` accepted candidates.

Pure Python and deterministic: all randomness comes from a `random.Random` passed in,
and every iteration order is fixed (ids, islands, niches sorted).
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Iterable

UNKNOWN_NICHE: tuple = ("unknown",)
MAX_STAGES = 5  # num_stages above this share one niche


@dataclasses.dataclass(frozen=True)
class PopulationConfig:
    """How the population is shaped and how it picks parents.

    islands: number of islands (independent sub-populations), >= 1.
    temperature: fitness-ranked sampling, p(rank r) ∝ exp(-r / (temperature * size)) where
        rank 0 is the fittest of the island's `size` elites; higher explores more, <= 0 is greedy.
    explore_prob: chance that a parent is drawn uniformly from all the island's elites instead.
    migration_interval: every N accepted candidates (add() returned True, all islands
        together) each island sends its best to the next island on the ring; <= 0 disables.
    parents_per_proposal: how many distinct parents select_parents returns at most
        (1 for mutation, 2 allows crossover).
    """

    islands: int = 4
    temperature: float = 0.3
    explore_prob: float = 0.1
    migration_interval: int = 20
    parents_per_proposal: int = 2

    def __post_init__(self) -> None:
        if self.islands < 1:
            raise ValueError("islands must be >= 1")
        if self.parents_per_proposal < 1:
            raise ValueError("parents_per_proposal must be >= 1")
        if not 0.0 <= self.explore_prob <= 1.0:
            raise ValueError("explore_prob must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Member:
    """One evaluated candidate as the population sees it. `niche` comes from `niche_of`."""

    id: int
    island: int
    fitness: float
    niche: tuple
    source_hash: str
    generation: int

    def __post_init__(self) -> None:
        # A niche read back from JSON is a list; keep it hashable.
        if not isinstance(self.niche, tuple):
            object.__setattr__(self, "niche", tuple(self.niche))


# ---------------------------------------------------------------------------- niches

_PERSISTENT_LOOP = re.compile(
    r"for\s+\w+\s+in\s+(?:tl\.)?range\(\s*(?:\w*pid\w*|tl\.program_id\([^)]*\))\s*,"
)


def is_persistent(source: str) -> bool:
    """Heuristic: a persistent kernel launches about one program per SM and loops over tiles.

    True when the source mentions `tl.num_programs` or `NUM_SMS` *and* has a loop whose start
    is the program id: `for t in range(pid, ...)`, `for t in tl.range(start_pid, ...)` (any name
    containing "pid") or `for t in range(tl.program_id(0), ...)`. A split-K loop such as
    `range(pid_k, k_tiles, SPLIT_K)` alone does not count: it needs the programs-count marker too.
    """
    return ("tl.num_programs" in source or "NUM_SMS" in source) and bool(_PERSISTENT_LOOP.search(source))


def _tile_class(bm: int, bn: int) -> str:
    area = bm * bn
    return "small" if area <= 64 * 64 else "medium" if area <= 128 * 128 else "large"


_SPLIT_K_ABOVE_ONE = re.compile(r"SPLIT_K[\"']?\s*[:=]\s*(?:[2-9]|[1-9]\d)")


def niche_of(evaluation: dict, source: str) -> tuple:
    """The niche of a kernel: (tile class, num_stages, persistent, split_k, tma).

    - tile class of the largest-area tl.dot tile [BM, BN, BK] over all compile entries:
      "small" (BM*BN <= 64*64), "medium" (<= 128*128), "large"; "none" if no entry has a dot;
    - num_stages of the kernel holding that dot (capped at MAX_STAGES; the max over entries
      when there is no dot);
    - persistent: `is_persistent(source)`;
    - split_k: any entry has "atomics" true, or the source sets a SPLIT_K above 1
      (`SPLIT_K=4`, `"SPLIT_K": 4`); a template that merely names SPLIT_K does not count;
    - tma: any entry has "uses_tma" true.

    `evaluation` is an Evaluation.to_dict() (an object with a `compile` attribute also works).
    Without compile facts (a rejected kernel), or with facts that are not numbers where numbers
    belong (the judge's bug, never a reason to stop the run), the niche is ("unknown",).
    """
    try:
        return _niche(evaluation, source)
    except (TypeError, ValueError, AttributeError):
        return UNKNOWN_NICHE


def _niche(evaluation: dict, source: str) -> tuple:
    entries = (
        evaluation.get("compile") if isinstance(evaluation, dict) else getattr(evaluation, "compile", None)
    )
    entries = [e for e in (entries or []) if isinstance(e, dict)]
    if not entries:
        return UNKNOWN_NICHE
    best: tuple | None = None  # (area, BK, stages, BM, BN)
    for entry in entries:
        stages = int(entry.get("num_stages") or 0)
        for dot in entry.get("dots") or []:
            tile = list(dot.get("tile") or [])
            if len(tile) >= 3:
                bm, bn, bk = (int(x) for x in tile[:3])
                key = (bm * bn, bk, stages, bm, bn)
                if best is None or key > best:
                    best = key
    if best is None:
        tile_class = "none"
        stages = max(int(e.get("num_stages") or 0) for e in entries)
    else:
        tile_class, stages = _tile_class(best[3], best[4]), best[2]
    split_k = any(bool(e.get("atomics")) for e in entries) or bool(_SPLIT_K_ABOVE_ONE.search(source))
    tma = any(bool(e.get("uses_tma")) for e in entries)
    return (tile_class, min(stages, MAX_STAGES), is_persistent(source), split_k, tma)


# ---------------------------------------------------------------------------- population


def _is_viable(member: Member) -> bool:
    return math.isfinite(member.fitness) and member.fitness > 0


def _rank_key(member: Member) -> tuple:
    return (-member.fitness, member.id)


class Population:
    """Islands of MAP-Elites grids: one elite per (island, niche)."""

    def __init__(self, config: PopulationConfig):
        self.config = config
        self._grids: list[dict[tuple, Member]] = [{} for _ in range(config.islands)]
        self._seen: set[str] = set()
        self._accepted = 0  # add() calls that returned True
        self._accepted_at_migration = 0
        self._migrations = 0
        self._offered = [0] * config.islands  # non-duplicate offers per island
        self._next = 0

    # -- insertion

    def add(self, member: Member) -> bool:
        """Offer an evaluated candidate. Returns True when it became the elite of its niche.

        False when its source hash was offered before (duplicate), its fitness is 0 (failed
        kernels are never elites), or it does not strictly beat the niche's current elite.
        Every offered hash is remembered (`seen`).
        """
        if not 0 <= member.island < self.config.islands:
            raise ValueError(f"island {member.island} out of range 0..{self.config.islands - 1}")
        if member.source_hash in self._seen:
            return False
        self._seen.add(member.source_hash)
        self._offered[member.island] += 1
        if not self._place(member):
            return False
        self._accepted += 1
        return True

    def _place(self, member: Member) -> bool:
        if not _is_viable(member):
            return False
        grid = self._grids[member.island]
        current = grid.get(member.niche)
        if current is not None and member.fitness <= current.fitness:
            return False
        grid[member.niche] = member
        return True

    def would_place(self, member: Member) -> bool:
        """Whether `member` would become the elite of its niche on its island now (viable and
        strictly fitter than the elite there); changes nothing. A resumed run asks this of a
        stale verdict to know whether it must be re-judged before it can stand."""
        current = self._grids[member.island].get(member.niche)
        return _is_viable(member) and (current is None or member.fitness > current.fitness)

    def readmit(self, member: Member) -> bool:
        """Place a member whose verdict was given again (a stale verdict re-judged): like `add`,
        but its hash may have been seen (it was, as a stale member) and it is not counted as an
        accepted candidate (no migration is due for it). True when it became an elite."""
        if not 0 <= member.island < self.config.islands:
            raise ValueError(f"island {member.island} out of range 0..{self.config.islands - 1}")
        self._seen.add(member.source_hash)
        return self._place(member)

    def seen(self, source_hash: str) -> bool:
        """Whether this hash was ever offered, elite or not (the controller skips it)."""
        return source_hash in self._seen

    # -- selection

    def select_parents(self, island: int, rng: random.Random) -> list[Member]:
        """1..parents_per_proposal distinct members (by id), drawn without replacement.

        Each draw is uniform over the remaining pool with probability `explore_prob`, else
        fitness-ranked with p(rank r) ∝ exp(-r / (temperature * size)). The pool is the
        island's elites, or every island's (one copy per id) when that island is empty.
        Returns [] when the whole population is empty.
        """
        pool = sorted(self._grids[island].values(), key=_rank_key) if self._grids[island] else []
        if not pool:
            pool = sorted(self._unique_elites(), key=_rank_key)
        parents: list[Member] = []
        while pool and len(parents) < self.config.parents_per_proposal:
            index = self._draw(len(pool), rng)
            parents.append(pool.pop(index))
        return parents

    def _draw(self, size: int, rng: random.Random) -> int:
        if rng.random() < self.config.explore_prob:
            return rng.randrange(size)
        if self.config.temperature <= 0 or size == 1:
            return 0
        scale = self.config.temperature * size
        weights = [math.exp(-r / scale) for r in range(size)]
        target = rng.random() * sum(weights)
        for index, weight in enumerate(weights):
            target -= weight
            if target < 0:
                return index
        return size - 1

    # -- migration

    def due_migration(self) -> bool:
        """True when `migration_interval` candidates were accepted since the last migration
        (never with one island or a non-positive interval)."""
        interval = self.config.migration_interval
        return (
            self.config.islands > 1
            and interval > 0
            and self._accepted - self._accepted_at_migration >= interval
        )

    def copy_to(self, member: Member, island: int) -> bool:
        """Place a copy of an evaluated member on another island (same id and hash), where it
        strictly beats that niche's elite: how every island starts from the seed kernels."""
        return self._place(dataclasses.replace(member, island=island))

    def spread(self, members: list[Member]) -> None:
        """Copy each member to every island (the run's seeds, at start and on resume)."""
        for member in members:
            for island in range(self.config.islands):
                if island != member.island:
                    self.copy_to(member, island)

    def migrate(self) -> list[tuple[Member, int]]:
        """Each island sends a copy of its best to the next island on the ring (i -> i+1 mod n).

        The bests are taken before any copy lands, so a migrant travels one hop per round.
        A copy keeps its id and hash, takes island = target, and enters the target's grid only
        where it strictly beats that niche's elite. Returns the copies that entered, with their
        target, in source-island order. Migration does not count as an accepted candidate.
        """
        n = self.config.islands
        senders = [(self.island_best(i), (i + 1) % n) for i in range(n)] if n > 1 else []
        moved: list[tuple[Member, int]] = []
        for best, target in senders:
            if best is None:
                continue
            if self.copy_to(best, target):
                moved.append((dataclasses.replace(best, island=target), target))
        self._accepted_at_migration = self._accepted
        self._migrations += 1
        return moved

    def next_island(self) -> int:
        """The island the next proposal is for: 0, 1, ..., n-1, 0, ... (round-robin)."""
        island = self._next
        self._next = (self._next + 1) % self.config.islands
        return island

    # -- queries

    def best(self) -> Member | None:
        """The fittest elite of all islands (lowest id, then lowest island, on ties)."""
        elites = self.elites()
        return min(elites, key=lambda m: (-m.fitness, m.id, m.island)) if elites else None

    def island_best(self, island: int) -> Member | None:
        """The fittest elite of one island (lowest id on ties), None if it is empty."""
        grid = self._grids[island]
        return min(grid.values(), key=_rank_key) if grid else None

    def elites(self, island: int | None = None) -> list[Member]:
        """Elites of one island sorted by id, or of all islands sorted by (id, island); a
        migrated member appears once per island that holds it."""
        if island is not None:
            return sorted(self._grids[island].values(), key=lambda m: m.id)
        return sorted((m for g in self._grids for m in g.values()), key=lambda m: (m.id, m.island))

    def _unique_elites(self) -> list[Member]:
        by_id: dict[int, Member] = {}
        for member in self.elites():
            by_id.setdefault(member.id, member)
        return list(by_id.values())

    def __len__(self) -> int:
        return sum(len(g) for g in self._grids)

    def summary(self) -> dict:
        """JSON-safe overview. Per island: size (elites held, which equals niches filled, one
        elite per niche), best fitness and id (None when empty), offered (non-duplicate
        candidates offered to it) and its filled niches as lists."""
        islands = []
        for i, grid in enumerate(self._grids):
            top = self.island_best(i)
            islands.append(
                {
                    "island": i,
                    "size": len(grid),
                    "niches_filled": len(grid),
                    "best_fitness": top.fitness if top else None,
                    "best_id": top.id if top else None,
                    "offered": self._offered[i],
                    "niches": [list(k) for k in sorted(grid, key=repr)],
                }
            )
        top = self.best()
        return {
            "islands": islands,
            "best_fitness": top.fitness if top else None,
            "best_id": top.id if top else None,
            "seen": len(self._seen),
            "accepted": self._accepted,
            "migrations": self._migrations,
        }

    @classmethod
    def rebuild(
        cls,
        config: PopulationConfig,
        members: Iterable[Member],
        seen_hashes: Iterable[str],
        migrations: list[list[tuple[int, int]]] | None = None,
    ) -> Population:
        """Rebuild from the store on resume: add the members in id order, then place the recorded
        `migrations` (rounds of (member id, island it entered), as the run made them), then mark every
        hash in `seen_hashes` as seen. Elites only ever give way to a strictly fitter member, so each
        (island, niche) ends with the fittest member that entered it, whatever the order: the islands
        the run had. Without records (None: an older store), migrations are replayed instead, one
        whenever due while adding (as a controller that calls migrate() right after a due add would)."""
        population = cls(config)
        by_id: dict[int, Member] = {}
        for member in sorted(members, key=lambda m: m.id):
            by_id[member.id] = member
            if population.add(member) and migrations is None and population.due_migration():
                population.migrate()
        for moved in migrations or []:
            for member_id, island in moved:
                if member_id in by_id and 0 <= island < config.islands:
                    population.copy_to(by_id[member_id], island)
            population._migrations += 1
        if migrations is not None:
            population._accepted_at_migration = population._accepted  # the next round: one interval on
        population._seen.update(seen_hashes)
        return population
