"""Which stored verdicts the run judges again, verified, before they may stand.

A verdict stands (it is a member with fitness: an elite, a parent, the run's best, ranked) only when
it is ok, verified (evaluators/evaluation.py STAGES: the cheap stage and the expensive one) and given
by today's judge (evaluators/fingerprint.py). An ok verdict that does not stand is either
*provisional* (today's judge, the cheap stage only: how every new candidate is judged first) or
*stale* (another judge's: the judge changed since; or stage "", stored before stages existed). Both
are judged again the same way, with stage "verified", when, and only when, their fitness would place
them: in their island's niche (Population.would_place; a seed competes on every island) or in the
run's top `top_k`. The others are never parents and never ranked; they would be verified the moment
they could place.

`Verification` keeps the two sets (waiting: not queued; queued: queued or in flight) and picks which
to queue: fittest first, one per (island, niche) at a time (a fitter one in flight for that cell may
keep it; when its verdict comes back, the next one in line is considered again), and the top-k
counts the verdicts that stand and those queued. The controller (evolve/controller.py) queues the
picked ones first in line, marks them pending in the store (a kill before the verdict re-queues them
on resume) and replaces the stored verdict in place when the verified one returns.
"""

from __future__ import annotations

import bisect
import dataclasses

from .population import Member, Population

VERIFY_TOP_K = 5  # the run's top-k verified (and so ranked) besides the elites; the leaderboard's head


def stands(verdict: dict, judge: str) -> bool:
    """Whether a stored verdict (a dict with status, judge, stage) may stand for today's `judge`."""
    return verdict["status"] == "ok" and verdict.get("judge") == judge and verdict.get("stage") == "verified"


class Verification:
    """The ok verdicts that do not stand yet, and the choice of which to verify now (module docstring).

    `due` costs the number of (island, niche) cells holding waiting verdicts plus the run's top-k, not
    the number waiting: in a cell only its fittest waiting verdict can be due (a less fit one places
    wherever a fitter one does, and the cell is busy once one is queued), and only the fittest waiting
    verdicts can be in the top-k. So the waiting ones are kept sorted, by cell and all together."""

    def __init__(self, population: Population, top_k: int = VERIFY_TOP_K) -> None:
        self.population, self.top_k = population, top_k
        self.waiting: dict[int, Member] = {}  # not queued: verified once they would place
        self.queued: dict[int, Member] = {}  # queued or in flight, with the fitness they would stand on
        self.stale: set[int] = set()  # the ids (either set) whose verdict is another judge's
        self._standing: list[float] = []  # fitness of every verdict that stands, ascending
        self._order: list[tuple[float, int]] = []  # (-fitness, id) of every waiting one, fittest first
        self._by_cell: dict[tuple[int, tuple], list[tuple[float, int]]] = {}  # the same, per cell
        self._stale_waiting = 0  # how many waiting ones are stale

    def wait(self, member: Member, stale: bool = False, queued: bool = False) -> None:
        """Add an ok verdict that does not stand (`queued`: its verification is already queued, as a
        pending one of an earlier segment is); once only."""
        if member.id in self.waiting or member.id in self.queued:
            return
        if stale:
            self.stale.add(member.id)
        if queued:
            self.queued[member.id] = member
            return
        self.waiting[member.id] = member
        self._stale_waiting += stale
        key = (-member.fitness, member.id)
        bisect.insort(self._order, key)
        for cell in self.cells(member):
            bisect.insort(self._by_cell.setdefault(cell, []), key)

    def _unwait(self, cid: int) -> Member | None:
        """Take `cid` out of the waiting ones (and their sorted lists); its member, if it waited."""
        member = self.waiting.pop(cid, None)
        if member is None:
            return None
        self._stale_waiting -= cid in self.stale
        key = (-member.fitness, member.id)
        del self._order[bisect.bisect_left(self._order, key)]
        for cell in self.cells(member):
            keys = self._by_cell[cell]
            del keys[bisect.bisect_left(keys, key)]
            if not keys:
                del self._by_cell[cell]
        return member

    def stood(self, fitness: float) -> None:
        """Count a verdict that stands (a verified ok member) for the run's top-k."""
        if fitness > 0:
            bisect.insort(self._standing, fitness)

    def done(self, cid: int) -> Member | None:
        """Forget `cid` (its verified verdict came back, or the verification gave up); its member, if known."""
        return self.queued.pop(cid, None) or self._unwait(cid)

    def due(self) -> list[int]:
        """Move the waiting members that should be verified now to `queued`; their ids, fittest first."""
        busy = {cell for m in self.queued.values() for cell in self.cells(m)}
        # Who can be due (see the class docstring): each free cell's fittest, and the fittest that are in
        # the top-k now (queuing others only lowers a verdict's rank, so no later one enters it).
        keys = {keys[0] for cell, keys in self._by_cell.items() if cell not in busy}
        for key in self._order:
            if not self._in_top(-key[0]):
                break
            keys.add(key)
        chosen = []
        for _, cid in sorted(keys):
            member = self.waiting[cid]
            cells = self.cells(member)
            free = [i for i, niche in cells if (i, niche) not in busy]
            if self._in_top(member.fitness) or any(
                self.population.would_place(dataclasses.replace(member, island=i)) for i in free
            ):
                self._unwait(cid)
                self.queued[cid] = member
                busy.update(cells)
                chosen.append(cid)
        return chosen

    def _in_top(self, fitness: float) -> bool:
        """Whether `fitness` would be in the run's top-k, against the verdicts that stand and those queued."""
        if self.top_k <= 0 or not fitness > 0:
            return False
        above = len(self._standing) - bisect.bisect_left(self._standing, fitness)
        above += sum(m.fitness >= fitness for m in self.queued.values())
        return above < self.top_k

    def cells(self, member: Member) -> list[tuple[int, tuple]]:
        """(island, niche) cells a member competes for: its island's, or every island's for a seed
        (seeds are spread to every island)."""
        islands = range(self.population.config.islands) if member.generation == 0 else [member.island]
        return [(i, member.niche) for i in islands]

    def provisional(self) -> int:
        """Ok verdicts of today's judge waiting unverified (not queued): never ranked."""
        return len(self.waiting) - self._stale_waiting
