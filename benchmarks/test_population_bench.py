"""What the population costs the controller at 100k candidates (evolve/population.py, evolve/verification.py).

Run with `make bench`. The population keeps one elite per (island, niche), so its grids stay small
however many candidates were offered; what grows with the run is the set of hashes seen and, in the
verification, the provisional ok verdicts that did not place (each waits, unverified, until it would).
Figures, on a population offered 100k members over a realistic niche space (tile class x stages x
persistent x split-K x TMA, 4 islands) and a verification with every unplaced one waiting:
- add: one new member offered (per finished evaluation);
- select: `select_parents` on an island (per proposal);
- due: `Verification.due()`, which the controller calls after every provisional ok verdict: it looks
  at every waiting member, so its cost grows with the run;
- rebuild: `Population.rebuild` from 100k members (what `--resume` does), once.
Under --benchmark-disable (`make test`) a 2k-member population checks the code paths in a second.
"""

import itertools
import random

import pytest

from evolve.population import Member, Population, PopulationConfig
from evolve.verification import Verification

N = 100_000
N_SMOKE = 2_000
NICHES = [
    (tile, stages, persistent, split_k, False)
    for tile in ("small", "medium", "large")
    for stages in (2, 3, 4, 5)
    for persistent in (False, True)
    for split_k in (False, True)
]
_ids = itertools.count(N + 1)


def _member(i: int, islands: int) -> Member:
    fitness = 0.05 + (i * 7919 % 10_007) / 11_000  # scattered, so elites change all along the run
    return Member(i, i % islands, fitness, NICHES[i * 31 % len(NICHES)], f"{i:064x}", i // 64)


@pytest.fixture(scope="module")
def grown(request):
    config = request.config
    disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    n = N_SMOKE if disabled else N
    pc = PopulationConfig()
    members = [_member(i, pc.islands) for i in range(1, n + 1)]
    population = Population(pc)
    verification = Verification(population)
    for m in members:
        if population.add(m):
            verification.stood(m.fitness)
        else:
            verification.wait(m)  # an ok verdict that did not place: waits unverified, as in a run
        if population.due_migration():
            population.migrate()
    verification.due()  # what would place is queued, as the controller does after each verdict
    return n, pc, members, population, verification


def test_add_one_member(benchmark, grown):
    n, pc, _, population, _ = grown
    rng = random.Random(0)

    def setup():
        i = next(_ids)
        return (Member(i, i % pc.islands, rng.random(), rng.choice(NICHES), f"{i:064x}", i // 64),), {}

    benchmark.pedantic(population.add, setup=setup, rounds=200, iterations=1)
    benchmark.extra_info.update(offered=n, elites=len(population))
    assert len(population) <= pc.islands * len(NICHES)  # one elite per (island, niche), whatever was offered


def test_select_parents(benchmark, grown):
    n, pc, _, population, _ = grown
    rng = random.Random(1)
    parents = benchmark.pedantic(lambda: population.select_parents(rng.randrange(pc.islands), rng),
                                 rounds=200, iterations=1)  # fmt: skip
    assert 1 <= len(parents) <= pc.parents_per_proposal
    benchmark.extra_info.update(offered=n, elites=len(population))


def test_verification_due(benchmark, grown):
    n, _, _, _, verification = grown
    due = benchmark.pedantic(verification.due, rounds=10, iterations=1)
    assert due == []  # nothing changed since the last call: none of the waiting ones would place now
    benchmark.extra_info.update(offered=n, waiting=len(verification.waiting))
    if benchmark.stats:  # None under --benchmark-disable
        median_ms = benchmark.stats.stats.median * 1e3
        print(f"\nVerification.due() with {len(verification.waiting)} waiting: {median_ms:.1f} ms")


def test_rebuild(benchmark, grown):
    n, pc, members, population, _ = grown
    rebuilt = benchmark.pedantic(
        lambda: Population.rebuild(pc, members, (m.source_hash for m in members)), rounds=1, iterations=1
    )
    assert 0 < len(rebuilt) <= pc.islands * len(NICHES)
    assert all(rebuilt.seen(m.source_hash) for m in members[-10:])
    benchmark.extra_info.update(members=n)
