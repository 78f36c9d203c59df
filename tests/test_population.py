"""Population: niches, elites, duplicates, selection, migration, rebuild."""

import collections
import dataclasses
import json
import random

import pytest

from evolve.population import Member, Population, PopulationConfig, is_persistent, niche_of


def facts(tile=(64, 64, 32), stages=3, tma=False, atomics=False, dots=True):
    return {
        "key": "k",
        "num_stages": stages,
        "num_warps": 4,
        "uses_tma": tma,
        "atomics": atomics,
        "dots": [{"precision": "ieee", "a": "f16", "b": "f16", "tile": list(tile)}] if dots else [],
    }


PLAIN = "import triton\n@triton.jit\ndef k(a_ptr):\n    pid = tl.program_id(0)\n"
PERSISTENT = """
@triton.jit
def k(a_ptr, NUM_SMS: tl.constexpr):
    start_pid = tl.program_id(axis=0)
    for tile_id in tl.range(start_pid, num_tiles, NUM_SMS, flatten=True):
        pass
"""
PERSISTENT_NUM_PROGRAMS = """
@triton.jit
def k(a_ptr):
    pid = tl.program_id(0)
    for t in range(pid, num_tiles, tl.num_programs(0)):
        pass
"""
SPLIT_K_LOOP = """
@triton.jit
def k(a_ptr, SPLIT_K: tl.constexpr):
    pid_k = tl.program_id(1)
    for k in range(pid_k, tl.cdiv(K, BLOCK_K), SPLIT_K):
        pass
"""


def m(id, fitness, island=0, niche=("small", 3, False, False, False), generation=0, h=None):
    return Member(id, island, fitness, niche, h or f"h{id}", generation)


def ids(members):
    return [x.id for x in members]


# ---------------------------------------------------------------- niches


def test_niche_small_and_large():
    assert niche_of({"compile": [facts((64, 64, 32), 3)]}, PLAIN) == ("small", 3, False, False, False)
    assert niche_of({"compile": [facts((128, 64, 32), 4)]}, PLAIN)[0] == "medium"
    assert niche_of({"compile": [facts((128, 256, 64), 4)]}, PLAIN) == ("large", 4, False, False, False)


def test_niche_uses_largest_dot_and_its_stages_capped():
    ev = {"compile": [facts((32, 32, 32), 2), facts((256, 128, 64), 7)]}
    assert niche_of(ev, PLAIN) == ("large", 5, False, False, False)
    ev = {"compile": [facts((256, 128, 64), 2), facts((32, 32, 32), 4)]}
    assert niche_of(ev, PLAIN)[:2] == ("large", 2)


def test_niche_split_k_from_atomics_or_source():
    assert niche_of({"compile": [facts(atomics=True)]}, PLAIN)[3] is True
    assert niche_of({"compile": [facts()]}, SPLIT_K_LOOP + "\nCONFIG = dict(SPLIT_K=4)\n")[3] is True
    assert niche_of({"compile": [facts()]}, PLAIN)[3] is False
    # a template that names SPLIT_K but runs every rule with 1 is not split-K
    assert niche_of({"compile": [facts()]}, SPLIT_K_LOOP + '\nCONFIGS = [{"SPLIT_K": 1}]\n')[3] is False


def test_niche_persistent_heuristic():
    assert is_persistent(PERSISTENT) and is_persistent(PERSISTENT_NUM_PROGRAMS)
    assert not is_persistent(PLAIN)
    assert not is_persistent(SPLIT_K_LOOP)  # a split-K loop starts at pid_k but has no SM count
    assert niche_of({"compile": [facts()]}, PERSISTENT)[2] is True


def test_niche_tma():
    assert niche_of({"compile": [facts(), facts(tma=True)]}, PLAIN)[4] is True


def test_niche_unknown_and_no_dot():
    assert niche_of({"status": "rejected", "compile": []}, PLAIN) == ("unknown",)
    assert niche_of({}, PLAIN) == ("unknown",)
    assert niche_of({"compile": [facts(dots=False, stages=2)]}, PLAIN) == ("none", 2, False, False, False)


def test_niche_is_json_safe_and_member_accepts_lists():
    niche = niche_of({"compile": [facts()]}, PERSISTENT)
    assert all(type(x) in (str, int, bool) for x in niche)
    back = Member(1, 0, 1.0, json.loads(json.dumps(niche)), "h", 0)
    assert back.niche == niche and hash(back)


# ---------------------------------------------------------------- elites and duplicates


def test_elite_replaced_only_by_better_in_same_niche_and_island():
    pop = Population(PopulationConfig(islands=2))
    assert pop.add(m(1, 1.0))
    assert not pop.add(m(2, 0.5))  # worse, same niche
    assert not pop.add(m(3, 1.0))  # equal is not better
    assert pop.add(m(4, 0.2, niche=("large", 3, False, False, False)))  # other niche
    assert pop.add(m(5, 0.1, island=1))  # other island
    assert ids(pop.elites(0)) == [1, 4]
    assert pop.add(m(6, 2.0))
    assert ids(pop.elites(0)) == [4, 6]
    assert ids(pop.elites(1)) == [5]
    assert pop.best().id == 6 and pop.island_best(1).id == 5


def test_failed_members_never_elites_but_seen():
    pop = Population(PopulationConfig())
    assert not pop.add(m(1, 0.0, niche=("unknown",)))
    assert not pop.add(m(2, float("nan")))
    assert pop.seen("h1") and pop.seen("h2")
    assert pop.elites() == [] and pop.best() is None


def test_duplicates_rejected():
    pop = Population(PopulationConfig(islands=2))
    assert pop.add(m(1, 1.0, h="same"))
    assert not pop.add(m(2, 5.0, h="same", island=1))
    assert not pop.add(m(3, 0.0, h="bad"))
    assert not pop.add(m(4, 9.0, h="bad"))  # a failed hash stays rejected
    assert ids(pop.elites()) == [1]
    assert not pop.seen("never")


def test_island_out_of_range():
    with pytest.raises(ValueError):
        Population(PopulationConfig(islands=2)).add(m(1, 1.0, island=2))


# ---------------------------------------------------------------- selection


def island_with_ranks(config, n=5):
    pop = Population(config)
    for i in range(n):  # fitness n..1 in distinct niches: id 0 is best
        pop.add(m(i, float(n - i), niche=("small", i, False, False, False)))
    return pop


def draw_counts(pop, draws=2000, seed=1234):
    rng = random.Random(seed)
    return collections.Counter(pop.select_parents(0, rng)[0].id for _ in range(draws))


def test_selection_favours_fitness_but_explores():
    pop = island_with_ranks(PopulationConfig(parents_per_proposal=1))
    counts = draw_counts(pop)
    assert counts.most_common(1)[0][0] == 0
    assert counts[0] > counts[1] > counts[4]
    assert all(counts[i] > 20 for i in range(5))  # lower ones still picked


def test_higher_temperature_is_more_uniform():
    cold = draw_counts(island_with_ranks(PopulationConfig(temperature=0.1, explore_prob=0.0)))
    hot = draw_counts(island_with_ranks(PopulationConfig(temperature=3.0, explore_prob=0.0)))
    assert cold[0] > hot[0]
    assert cold[4] < hot[4]
    assert max(hot.values()) - min(hot.values()) < max(cold.values()) - min(cold.values())


def test_greedy_and_explore_extremes():
    greedy = draw_counts(island_with_ranks(PopulationConfig(temperature=0.0, explore_prob=0.0)), 200)
    assert greedy == {0: 200}
    uniform = draw_counts(island_with_ranks(PopulationConfig(temperature=0.0, explore_prob=1.0)))
    assert all(300 < uniform[i] < 500 for i in range(5))


def test_parents_distinct_and_deterministic():
    pop = island_with_ranks(PopulationConfig(parents_per_proposal=2))
    a = [ids(pop.select_parents(0, rng)) for rng in [random.Random(7)] for _ in range(50)]
    b = [ids(pop.select_parents(0, rng)) for rng in [random.Random(7)] for _ in range(50)]
    assert a == b
    assert all(len(p) == 2 and p[0] != p[1] for p in a)
    single = Population(PopulationConfig(parents_per_proposal=3))
    single.add(m(1, 1.0))
    assert ids(single.select_parents(0, random.Random(0))) == [1]


def test_selection_falls_back_to_other_islands_and_empty():
    pop = Population(PopulationConfig(islands=3))
    assert pop.select_parents(0, random.Random(0)) == []
    pop.add(m(1, 1.0, island=2))
    assert ids(pop.select_parents(0, random.Random(0))) == [1]


# ---------------------------------------------------------------- migration, round-robin


def test_migration_every_n_accepted_ring_order_copies_keep_id():
    pop = Population(PopulationConfig(islands=3, migration_interval=4))
    niches = [("small", s, False, False, False) for s in range(4)]
    pop.add(m(1, 3.0, island=0, niche=niches[0]))
    pop.add(m(2, 2.0, island=1, niche=niches[1]))
    assert not pop.add(m(3, 0.0, island=2))  # failed: not accepted
    assert not pop.add(m(4, 1.0, island=0, niche=niches[0]))  # worse: not accepted
    pop.add(m(5, 1.0, island=2, niche=niches[2]))
    assert not pop.due_migration()
    pop.add(m(6, 0.5, island=2, niche=niches[3]))
    assert pop.due_migration()
    moved = pop.migrate()
    assert [(x.id, x.island, t) for x, t in moved] == [(1, 1, 1), (2, 2, 2), (5, 0, 0)]
    assert not pop.due_migration()
    assert ids(pop.elites(1)) == [1, 2] and pop.island_best(1).id == 1
    assert pop.elites(1)[0].island == 1 and pop.elites(0)[0].island == 0
    assert ids(pop.elites(0)) == [1, 5]  # the source keeps its member
    # next round: island 0's best (1) is already held by island 1, so it does not re-enter;
    # island 1 now sends 1 on to island 2, island 2 sends its new best (2) to island 0
    moved = pop.migrate()
    assert [(x.id, t) for x, t in moved] == [(1, 2), (2, 0)]


def test_migration_single_island_or_disabled():
    pop = Population(PopulationConfig(islands=1, migration_interval=1))
    pop.add(m(1, 1.0))
    assert not pop.due_migration() and pop.migrate() == []
    pop = Population(PopulationConfig(islands=2, migration_interval=0))
    pop.add(m(1, 1.0))
    assert not pop.due_migration()


def test_next_island_round_robin():
    pop = Population(PopulationConfig(islands=3))
    assert [pop.next_island() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


# ---------------------------------------------------------------- rebuild, summary, empty


def random_members(count=60, islands=3, seed=5):
    rng = random.Random(seed)
    out = []
    for i in range(count):
        fitness = 0.0 if rng.random() < 0.2 else round(rng.uniform(0.1, 3.0), 3)
        niche = (
            ("unknown",)
            if fitness == 0
            else (
                rng.choice(["small", "medium", "large"]),
                rng.randint(2, 5),
                rng.random() < 0.3,
                False,
                rng.random() < 0.2,
            )
        )
        h = f"h{rng.randint(0, 45)}"  # some duplicates
        out.append(Member(i, rng.randrange(islands), fitness, niche, h, i // 10))
    return out


def test_rebuild_equals_incremental_adds():
    config = PopulationConfig(islands=3, migration_interval=5)
    members = random_members()
    live = Population(config)
    for member in members:
        if live.add(member) and live.due_migration():
            live.migrate()
    assert live.summary()["migrations"] > 0
    extra = ["only-in-store"]
    rebuilt = Population.rebuild(config, reversed(members), extra)
    assert rebuilt.elites() == live.elites()
    assert rebuilt.summary() == {**live.summary(), "seen": live.summary()["seen"] + 1}
    assert rebuilt.seen("only-in-store")
    assert [ids(live.select_parents(i, random.Random(3))) for i in range(3)] == [
        ids(rebuilt.select_parents(i, random.Random(3))) for i in range(3)
    ]


def test_summary_and_empty_population():
    pop = Population(PopulationConfig(islands=2))
    s = pop.summary()
    assert s["best_fitness"] is None and [i["size"] for i in s["islands"]] == [0, 0]
    assert pop.best() is None and pop.island_best(0) is None and pop.elites() == []
    assert pop.migrate() == [] and len(pop) == 0
    pop.add(m(1, 2.0, niche=("large", 4, True, False, True)))
    pop.add(m(2, 1.0, niche=("unknown",)))
    s = pop.summary()
    json.dumps(s)
    assert s["islands"][0]["size"] == 2 and s["islands"][0]["best_fitness"] == 2.0
    assert s["islands"][0]["niches_filled"] == 2 and s["best_id"] == 1


def test_spread_puts_a_seed_on_every_island():
    pop = Population(PopulationConfig(islands=3))
    seed = Member(1, 0, 0.5, ("large",), "h1", 0)
    assert pop.add(seed)
    pop.spread([seed])
    assert [pop.island_best(i).id for i in range(3)] == [1, 1, 1]
    # a copy never displaces a better elite already there
    better = Member(2, 2, 0.9, ("large",), "h2", 1)
    assert pop.add(better)
    pop.spread([seed])
    assert pop.island_best(2).id == 2


def test_would_place_asks_without_changing_and_readmit_takes_back_a_seen_member():
    pop = Population(PopulationConfig(islands=2, migration_interval=2))
    holder = Member(1, 0, 0.5, ("a",), "h1", 1)
    stale = Member(2, 0, 0.9, ("a",), "h2", 1)
    assert pop.add(holder) and not pop.add(dataclasses.replace(stale, fitness=0.0))  # seen, no niche
    assert pop.would_place(stale) and not pop.would_place(dataclasses.replace(stale, fitness=0.5))
    assert not pop.would_place(dataclasses.replace(stale, fitness=0.0))  # a failure is never an elite
    assert pop.would_place(dataclasses.replace(stale, island=1))  # an empty niche elsewhere
    assert pop.elites() == [holder] and pop.summary()["accepted"] == 1  # asking changed nothing
    assert not pop.add(stale)  # its hash was seen: add refuses it as a duplicate ...
    assert pop.readmit(stale)  # ... readmit places its new verdict
    assert pop.elites() == [stale] and pop.seen("h2")
    assert pop.summary()["accepted"] == 1 and not pop.due_migration()  # not a new candidate
    assert not pop.readmit(Member(3, 0, 0.1, ("a",), "h3", 1)) and pop.seen("h3")
    with pytest.raises(ValueError, match="island 5 out of range"):
        pop.readmit(Member(4, 5, 0.1, ("a",), "h4", 1))
