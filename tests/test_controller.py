"""Controller logic through a synchronous in-process pool (the Ray pool has its own tests)."""

from pathlib import Path

import pytest

from evaluators import load_task
from evaluators.fingerprint import judge_fingerprint
from evolve.candidate import Proposal
from evolve.config import RunConfig
from evolve.controller import MAX_BARREN_PROPOSALS, Controller
from evolve.population import Population, PopulationConfig
from evolve.store import Store

SEED = str(Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py")


class InlinePool:
    """Judges instantly with a fitness derived from the source length (no GPU, no Ray), at the stage
    the job asks for (EvalOptions.stage), as evaluate() on a CPU does."""

    def __init__(self, workers: int) -> None:
        self.size, self.jobs, self.done = workers, [], []
        self.judge = judge_fingerprint()  # today's judge, as evaluate() stamps every verdict

    def idle_slots(self) -> int:
        return self.size - len(self.jobs)

    def in_flight(self) -> int:
        return len(self.jobs)

    def submit(self, job) -> None:
        self.jobs.append(job)

    def poll(self, timeout: float):
        out = []
        for job in self.jobs:
            fitness = (len(job.source) % 97) / 100 + 0.01
            out.append((job.candidate_id, {"status": "ok", "backend": "model:h100", "fitness": fitness,
                                           "fitness_kind": "modelled", "feedback": "", "shapes": [],
                                           "compile": [], "seconds": {}, "provenance": {},
                                           "judge": self.judge, "stage": job.options["stage"]}))  # fmt: skip
            self.done.append((job.candidate_id, job.options["stage"]))
        self.jobs = []
        return out


class FixedProposer:
    """Always proposes the same handful of sources: most proposals are duplicates."""

    name = "fixed"

    def __init__(self, variants: int) -> None:
        self.variants, self.calls = variants, 0

    def propose(self, parents, context):
        self.calls += 1
        n = self.calls % self.variants
        return [Proposal(Path(SEED).read_text() + f"\nX_{n} = {n}\n", (parents[0].id,), self.name)]


def _controller(tmp_path, proposer, max_evals=10):
    config = RunConfig(name="c", task="runs/demo_cpu.toml", seeds=(SEED,), max_evals=max_evals,
                       population=PopulationConfig(islands=2))  # fmt: skip
    store = Store.create(tmp_path / "run.sqlite", "c", config.to_dict(), 0)
    pool = InlinePool(2)
    controller = Controller(config, load_task(config.task), store, Population(config.population),
                            [(proposer, 1.0)], pool, {}, "model:h100")  # fmt: skip
    return controller, store, pool


def test_duplicates_are_rejected_and_a_barren_run_stops(tmp_path):
    proposer = FixedProposer(variants=3)
    controller, store, pool = _controller(tmp_path, proposer, max_evals=50)
    reason = controller.run()
    assert "duplicates or invalid" in reason
    # the seed plus the three distinct variants, each judged exactly once (and verified at most once)
    assert store.evaluated_count() == 4 and sorted(pool.done) == sorted(set(pool.done))
    assert sorted(cid for cid, stage in pool.done if stage == "provisional") == [2, 3, 4]
    assert controller.progress.duplicates >= MAX_BARREN_PROPOSALS
    stats = {(r["proposer"], r["island"]): r for r in store.proposer_stats()}
    assert sum(r["failures"].get("duplicate", 0) for r in stats.values()) == controller.progress.duplicates


def test_stops_at_max_evals_and_records_everything(tmp_path):
    controller, store, pool = _controller(tmp_path, FixedProposer(variants=1000), max_evals=9)
    assert controller.run() == "max_evals 9 reached"
    assert store.evaluated_count() == 9 and store.pending_ids() == []
    assert store.run_info()["status"] == "finished"
    best = store.best("model:h100")
    assert controller.progress.best_fitness == best["fitness"]


class VerdictPool(InlinePool):
    """InlinePool whose verdict for a candidate is chosen by a marker in its source:
    UNSUPPORTED_ -> unsupported (compile facts present), JUDGE_BUG_ -> judge_error, else ok with
    a held-out figure. Records every submitted id."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.submitted: list[int] = []
        self.sources: dict[int, str] = {}

    def submit(self, job) -> None:
        self.submitted.append(job.candidate_id)
        self.sources[job.candidate_id] = job.source
        super().submit(job)

    def poll(self, timeout: float):
        out = []
        for cid, ev in super().poll(timeout):
            source = self.sources[cid]
            if "UNSUPPORTED_" in source:
                ev = {**ev, "status": "unsupported", "fitness": 0.0, "feedback": "tl.inline_asm_elementwise",
                      "compile": [{"key": "k", "num_stages": 3, "dots": [{"tile": [64, 64, 32]}]}]}  # fmt: skip
            elif "JUDGE_BUG_" in source:
                ev = {**ev, "status": "judge_error", "fitness": 0.0, "feedback": "the judge failed"}
            else:
                ev = {**ev, "held_out": ev["fitness"] / 2}
            out.append((cid, ev))
        return out


class MarkedProposer(FixedProposer):
    """Every third proposal is unsupported, every fifth a judge bug (by a marker in the source)."""

    def propose(self, parents, context):
        self.calls += 1
        marker = "UNSUPPORTED_" if self.calls % 3 == 0 else "JUDGE_BUG_" if self.calls % 5 == 0 else "OK_"
        return [
            Proposal(Path(SEED).read_text() + f"\n{marker}{self.calls} = 1\n", (parents[0].id,), self.name)
        ]


def test_unsupported_and_judge_errors_are_kept_counted_and_never_ranked(tmp_path):
    from evolve.ui import failure_summary, render_leaderboard

    controller, store, _ = _controller(tmp_path, MarkedProposer(variants=1000), max_evals=16)
    pool = controller.pool = VerdictPool(2)
    assert controller.run() == "max_evals 16 reached"
    counts = store.counts_by_status("model:h100")
    assert counts["unsupported"] == 5 and counts["judge_error"] == 2 and counts["ok"] == 9
    unranked = {r["id"] for r in store.all_evaluated() if r["status"] in ("unsupported", "judge_error")}
    assert unranked <= set(pool.submitted)  # kept in the store, with their lineage
    assert all(store.candidate(i)["parent_ids"] for i in unranked)
    elites = {m.id for m in controller.population.elites()}
    assert elites and not elites & unranked  # never an elite, so never a parent
    assert store.best("model:h100")["status"] == "ok"
    assert controller.progress.failures == {"unsupported": 5, "judge_error": 2}
    assert "unsupported 5 (needs a GPU judge)" in failure_summary(controller.progress.failures)
    assert "judge errors 2 (the judge's bug)" in failure_summary(controller.progress.failures)
    # judge errors are the judge's: not charged to the proposer; unsupported is
    failures = {}
    for row in store.proposer_stats():
        for k, v in row["failures"].items():
            failures[k] = failures.get(k, 0) + v
    assert failures == {"unsupported": 5}
    board = render_leaderboard(store, 20)
    assert "judge_error 2 (the judge's own failures" in board and "unsupported 5 (the CPU backend" in board
    lines = board.splitlines()
    header = next(line for line in lines if "held-out" in line and "fitness" in line and "#" in line)
    assert header.index("fitness") < header.index("held-out")
    best = store.best("model:h100")
    first = next(line for line in lines if line.split()[:2] == ["1", str(best["id"])])
    assert f"{best['fitness']:.4f} {best['fitness'] / 2:>8.4f}" in first  # held-out beside the fitness
    table = [line.split() for line in lines[3:-1]]
    unranked_rows = [cells for cells in table if cells[5] in ("unsupported", "judge_error")]
    assert len(unranked_rows) == 7 and all(cells[0] == "-" and cells[7] == "-" for cells in unranked_rows)


def test_a_run_whose_seeds_all_fail_stops_with_the_reason(tmp_path):
    import threading

    controller, store, _ = _controller(tmp_path, FixedProposer(variants=1000), max_evals=10)
    controller.pool = VerdictPool(2)
    marked = tmp_path / "seed.py"
    marked.write_text(Path(SEED).read_text() + "\nUNSUPPORTED_SEED = 1\n")
    controller.config = controller.config.replace(seeds=(str(marked),))
    result = []
    thread = threading.Thread(target=lambda: result.append(controller.run()), daemon=True)
    thread.start()
    thread.join(30)
    assert result, "the run kept waiting for a parent that can never come"
    assert "no ok candidate to propose from" in result[0] and "unsupported 1" in result[0]
    assert store.run_info()["status"] == "stopped"


class DyingPool(VerdictPool):
    """The run dies (SystemExit, as a SIGKILL would end it) whenever `doomed` is handed over."""

    doomed = -1

    def submit(self, job) -> None:
        if job.candidate_id == self.doomed:
            self.submitted.append(job.candidate_id)
            raise SystemExit("the run died with this candidate in flight")
        super().submit(job)


def test_a_candidate_in_flight_every_time_the_run_died_is_not_requeued_forever(tmp_path):
    from evolve.controller import MAX_QUEUED
    from evolve.runner import rebuild_population

    controller, store, _ = _controller(tmp_path, FixedProposer(variants=1000), max_evals=3)
    controller.pool = VerdictPool(2)
    controller.run()
    doomed = store.add_candidate(Path(SEED).read_text() + "\nDOOMED = 1\n", parent_ids=[1], proposer="fixed",
                                 island=0, generation=1, pending=True)  # fmt: skip
    config, task = controller.config, controller.task
    pool = DyingPool(2)
    pool.doomed = doomed
    for segment in range(1, MAX_QUEUED + 1):  # each resume queues it again, and dies again
        population = rebuild_population(config, store, "model:h100")
        again = Controller(config.replace(max_evals=3 + segment), task, store, population,
                           [(FixedProposer(variants=1000), 1.0)], pool, {}, "model:h100")  # fmt: skip
        if segment < MAX_QUEUED:
            with pytest.raises(SystemExit):
                again.run()
            assert store.pending_ids() == [doomed]
        else:  # queued MAX_QUEUED times: a verdict instead of another death
            assert again.run() == f"max_evals {3 + segment} reached"
    assert pool.submitted.count(doomed) == MAX_QUEUED - 1
    (row,) = [r for r in store.all_evaluated() if r["id"] == doomed]
    assert row["status"] == "judge_error" and "not queued again" in row["feedback"]
    assert store.pending_ids() == []


class RejudgePool(InlinePool):
    """InlinePool whose verdict on the candidates in `demoted` is incorrect (today's judge finds
    them wrong); records every submitted id in order."""

    def __init__(self, workers: int, demoted: set[int]) -> None:
        super().__init__(workers)
        self.demoted, self.submitted = demoted, []

    def submit(self, job) -> None:
        self.submitted.append(job.candidate_id)
        super().submit(job)

    def poll(self, timeout: float):
        return [
            (cid, {**ev, "status": "incorrect", "fitness": 0.0} if cid in self.demoted else ev)
            for cid, ev in super().poll(timeout)
        ]


def test_a_resumed_run_rejudges_its_stale_elites_before_they_stand(tmp_path, capsys):
    import sqlite3

    from evolve.population import Member
    from evolve.runner import rebuild_population
    from evolve.ui import render_leaderboard

    controller, store, _ = _controller(tmp_path, FixedProposer(variants=1000), max_evals=12)
    controller.run()
    config, task, judge = controller.config, controller.task, controller.pool.judge
    rows = store.population_rows("model:h100")
    assert len(rows) == 12 and {r["judge"] for r in rows} == {judge}
    store.close()
    conn = sqlite3.connect(tmp_path / "run.sqlite")  # an older judge gave every verdict
    conn.execute("UPDATE evaluations SET judge = 'OLDJUDGE'")
    conn.commit()
    conn.close()
    store = Store.open(tmp_path / "run.sqlite", readonly=False)
    old = {r["id"]: r for r in store.population_rows("model:h100")}
    # what the stale elites are: the elites of the population the old verdicts would make
    full = Population.rebuild(config.population, [
        Member(r["id"], r["island"], r["fitness"], tuple(r["niche"]), r["source_hash"], r["generation"])
        for r in old.values()], [])  # fmt: skip
    full.spread([m for m in full.elites() if m.generation == 0])
    elites = {m.id for m in full.elites()}
    top = max(old.values(), key=lambda r: (r["fitness"], -r["id"]))
    assert top["id"] in elites and len(elites) < len(old)
    store.mark_pending(top["id"])  # the last segment died while re-judging it
    demoted = {m.island: m.id for m in full.elites() if m.id != 1}  # island elites today's judge fails
    population = rebuild_population(config, store, "model:h100", judge)
    assert len(population) == 0  # nothing stale stands, before it is re-judged
    pool = RejudgePool(2, set(demoted.values()))
    resumed = Controller(config.replace(max_evals=14), task, store, population,
                         [(FixedProposer(variants=1000), 1.0)], pool, {}, "model:h100", judge=judge)  # fmt: skip
    resumed.verification.top_k = 0  # the elites alone (the run's top-k: tests/test_verification.py)
    assert resumed.progress.best_id is None  # the run's "best" admits no stale verdict
    assert resumed.run() == "max_evals 14 reached"
    out = capsys.readouterr().out
    assert "the judge changed since 12 of the 12 verdicts" in out and "OLDJUDGE" in out
    assert (
        "earlier verdicts that would be elites" in out and "the judge changed since they were judged" in out
    )
    after = {r["id"]: r for r in store.all_evaluated()}
    rejudged = {i for i in old if after[i]["judge"] == judge}
    assert elites <= rejudged  # every stale elite was re-judged before it could stand ...
    assert set(pool.submitted[: len(rejudged)]) == rejudged  # ... first, before any new candidate
    assert pool.submitted.count(top["id"]) == 1  # queued once: pending already, not again as stale
    successors = set()
    for island, cid in demoted.items():  # a demoted elite's niche goes to the next stale member in line
        assert after[cid]["status"] == "incorrect"
        successors.add(max((r for i, r in old.items() if r["island"] == island and i not in elites),
                           key=lambda r: (r["fitness"], -r["id"]))["id"])  # fmt: skip
    assert rejudged == elites | successors  # and no other: stale non-elites are not re-judged
    assert len(after) == 14 and store.pending_ids() == []  # one verdict per candidate, updated in place
    assert {after[i]["judge"] for i in old if i not in rejudged} == {"OLDJUDGE"}  # the rest stay stale
    new = [i for i in after if i not in old]
    assert all(set(store.candidate(i)["parent_ids"]) <= rejudged for i in new)  # no stale parent
    # the leaderboard and the best admit today's verdicts only; stale ones are marked, never ranked
    best = store.best("model:h100", judge)
    assert best is not None and after[best["id"]]["judge"] == judge
    board = render_leaderboard(store, 20, judge).splitlines()
    ranked = [line.split() for line in board if line.split() and line.split()[0].isdigit()]
    assert ranked and all(after[int(cells[1])]["judge"] == judge for cells in ranked)
    stale_rows = [line for line in board if "ok, stale" in line]
    assert stale_rows and all(line.split()[0] == "-" for line in stale_rows)
    assert any("stale: judged by another judge than today's" in line for line in board)


class ForeignPool(InlinePool):
    """A worker that runs another judge's code: every verdict names that judge."""

    def poll(self, timeout: float):
        return [(cid, {**ev, "judge": "SOMEONEELSE"}) for cid, ev in super().poll(timeout)]


def test_a_verdict_from_another_judge_never_stands_and_never_stalls_the_run(tmp_path, capsys):
    import threading

    from evolve.runner import rebuild_population

    controller, store, _ = _controller(tmp_path, FixedProposer(variants=1000), max_evals=4)
    controller.run()
    config, task, judge = controller.config, controller.task, controller.pool.judge
    with store.transaction():
        store._conn.execute("UPDATE evaluations SET judge = 'OLDJUDGE'")
    resumed = Controller(config.replace(max_evals=6), task, store, rebuild_population(config, store,
                         "model:h100", judge), [(FixedProposer(variants=1000), 1.0)], ForeignPool(2), {},
                         "model:h100", judge=judge)  # fmt: skip
    result = []
    thread = threading.Thread(target=lambda: result.append(resumed.run()), daemon=True)
    thread.start()
    thread.join(30)
    assert result, "the run kept waiting for a re-judgement that came back from another judge"
    assert "no ok candidate to propose from" in result[0]  # nothing stands: no parent
    err = capsys.readouterr().err
    assert "a verdict came back from judge SOMEONEELSE, not this run's" in err
    assert {r["judge"] for r in store.all_evaluated()} == {"OLDJUDGE"}  # not replaced by a foreign one
    assert store.best("model:h100", judge) is None and not len(resumed.population)


def test_a_resume_on_another_backend_judges_the_seeds_and_the_best_there_first(tmp_path, capsys):
    controller, store, pool = _controller(tmp_path, FixedProposer(variants=1000), max_evals=6)
    assert controller.run() == "max_evals 6 reached"
    best_on_h100 = store.best("model:h100")["id"]

    # resumed where no verdict exists yet: another backend label, as another device gives
    class B200Pool(InlinePool):  # the same judge, on another device
        def poll(self, timeout):
            return [(cid, {**ev, "backend": "model:b200"}) for cid, ev in super().poll(timeout)]

    population = Population(controller.config.population)
    resumed = Controller(controller.config.replace(max_evals=12), load_task(controller.config.task), store,
                         population, [(FixedProposer(variants=1000), 1.0)], B200Pool(2), {},
                         "model:b200")  # fmt: skip
    reason = resumed.run()
    out = capsys.readouterr().out
    assert "resumed on model:b200, where this run has no verdict (its verdicts are on model:h100" in out
    judged = {r["id"] for r in store.population_rows("model:b200")}
    assert {1, best_on_h100} <= judged  # the seed and the h100 best, judged on b200 before any proposal
    assert reason == "max_evals 12 reached" and store.pending_ids() == []


class OutOfOrderPool(InlinePool):
    """InlinePool whose verdicts come back last-submitted first (parallel workers finish in any order),
    and which dies (SystemExit, as a SIGKILL ends the controller) when handed its `at`-th job (None:
    never): what the store holds then is all a resume has."""

    def __init__(self, workers: int, at: int | None) -> None:
        super().__init__(workers)
        self.at, self.count = at, 0

    def submit(self, job) -> None:
        self.count += 1
        if self.count == self.at:
            raise SystemExit("killed")
        super().submit(job)

    def poll(self, timeout: float):
        return super().poll(timeout)[::-1]


@pytest.mark.parametrize("killed_at", [None, 50])
def test_the_store_rebuilds_the_population_and_bandits_the_run_had(tmp_path, killed_at):
    """The offline mutator over 3 islands migrating every 3 accepted candidates: at the end of a run,
    or when it dies mid-run, the population rebuilt from the store (what --resume continues from) has
    the very elites the run held, migrants included (each migration round is recorded), and the bandit
    states in the store are the run's own."""
    from evolve.proposing import BANDIT_KEY, FAMILIES
    from evolve.runner import make_proposers, rebuild_population

    config = RunConfig(name="c", task="runs/demo_cpu.toml", seeds=(SEED,), max_evals=60, seed=5,
                       population=PopulationConfig(islands=3, migration_interval=3))  # fmt: skip
    store = Store.create(tmp_path / "run.sqlite", "c", config.to_dict(), 0)
    pool = OutOfOrderPool(3, killed_at)
    controller = Controller(config, load_task(config.task), store, Population(config.population),
                            make_proposers(config)[0], pool, {}, "model:h100", judge=pool.judge)  # fmt: skip
    if killed_at is None:
        controller.run()
    else:
        with pytest.raises(SystemExit):
            controller.run()
    live = controller.population
    assert live.summary()["migrations"] >= 2, "the run did not migrate: the test would prove little"
    rebuilt = rebuild_population(config, store, "model:h100", pool.judge)

    def cells(population):
        return sorted((m.island, m.niche, m.id, m.fitness) for m in population.elites())

    assert cells(rebuilt) == cells(live)
    assert rebuilt.summary()["migrations"] == live.summary()["migrations"]
    assert store.load_bandit(BANDIT_KEY) == controller.proposing.bandit.to_dict()
    for name, bandit in controller.proposing.families.items():
        assert store.load_bandit(f"{FAMILIES}{name}") == bandit.to_dict()
