"""Stages in the engine (issue 10 item 1): new candidates are judged provisional, and only those
that would place (an island's niche, the run's top-k) are verified before they stand.

The controller with a synchronous in-process pool and real SQLite (tests/test_controller.py drives it
the same way); the pool's verdict follows the job's stage and markers in the candidate's source.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evaluators import load_task
from evaluators.fingerprint import judge_fingerprint
from evolve.candidate import Proposal
from evolve.config import RunConfig
from evolve.controller import Controller
from evolve.population import Population, PopulationConfig
from evolve.runner import rebuild_population
from evolve.store import Store
from evolve.ui import render_leaderboard
from evolve.verification import Verification

SEED = str(Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py")
BACKEND = "model:h100"
SEED_FITNESS = 0.5


class StagePool:
    """Judges at once, at the stage the job asks for: fitness from a `FIT = x` line in the source
    (the seed: SEED_FITNESS); a source with `WRONG` passes the cheap stage and is found incorrect by
    the expensive one. Records every job as (candidate id, stage), and before each job checks that
    nothing stands on a verdict that is not verified (`check`)."""

    def __init__(self, workers: int, check=None) -> None:
        self.size, self.jobs, self.done, self.check = workers, [], [], check
        self.judge = judge_fingerprint()

    def idle_slots(self) -> int:
        return self.size - len(self.jobs)

    def in_flight(self) -> int:
        return len(self.jobs)

    def submit(self, job) -> None:
        if self.check is not None:
            self.check()
        self.jobs.append(job)
        self.done.append((job.candidate_id, job.options["stage"]))

    def poll(self, timeout: float):
        out = []
        for job in self.jobs:
            stage = job.options["stage"]
            found = re.search(r"^FIT = ([0-9.]+)$", job.source, re.M)
            fitness = float(found.group(1)) if found else SEED_FITNESS
            ev = {"status": "ok", "backend": BACKEND, "fitness": fitness, "fitness_kind": "modelled",
                  "feedback": f"{stage} ok", "shapes": [], "compile": [], "seconds": {}, "provenance": {},
                  "judge": self.judge, "stage": stage}  # fmt: skip
            if "WRONG" in job.source and stage == "verified":
                ev = {
                    **ev,
                    "status": "incorrect",
                    "fitness": 0.0,
                    "feedback": "fresh shape (7, 300, 33): wrong",
                }
            out.append((job.candidate_id, ev))
        self.jobs = []
        return out


class ScriptProposer:
    """Proposes the scripted kernels in order (one per call), then nothing."""

    name = "script"

    def __init__(self, script: list[str]) -> None:
        self.script, self.calls = list(script), 0

    def propose(self, parents, context):
        if self.calls >= len(self.script):
            return []
        self.calls += 1
        line = self.script[self.calls - 1]
        return [
            Proposal(Path(SEED).read_text() + f"\n{line}\nN_{self.calls} = 1\n", (parents[0].id,), self.name)
        ]


def _run(tmp_path, script, workers=1, top_k=0, islands=1):
    """A controller over `script` (one candidate per line, plus the seed), with the run's top-k."""
    config = RunConfig(name="v", task="runs/demo_cpu.toml", seeds=(SEED,), max_evals=1 + len(script),
                       population=PopulationConfig(islands=islands, migration_interval=0))  # fmt: skip
    store = Store.create(tmp_path / "run.sqlite", "v", config.to_dict(), 0)
    pool = StagePool(workers)
    controller = Controller(config, load_task(config.task), store, Population(config.population),
                            [(ScriptProposer(script), 1.0)], pool, {}, BACKEND, judge=pool.judge)  # fmt: skip
    controller.verification.top_k = top_k
    pool.check = lambda: _only_verified_stand(controller)
    return controller, store, pool


def _verdict(store: Store, cid: int) -> dict:
    (ev,) = store.candidate(cid)["evaluations"]
    return ev


def _only_verified_stand(controller: Controller) -> None:
    """Every elite (so every parent) and the run's best stand on a verified ok verdict."""
    store = controller.store
    for member in controller.population.elites():
        ev = _verdict(store, member.id)
        assert (ev["status"], ev["stage"]) == ("ok", "verified"), f"elite {member.id} stands on {ev}"
    if controller.progress.best_id is not None:
        assert _verdict(store, controller.progress.best_id)["stage"] == "verified"


def _ids_by_fitness(store: Store) -> dict[float, int]:
    return {r["fitness"] if r["status"] == "ok" else -r["id"]: r["id"] for r in store.all_evaluated()}


def test_a_would_be_elite_is_verified_before_it_stands_and_the_others_never(tmp_path):
    controller, store, pool = _run(tmp_path, ["FIT = 0.8", "FIT = 0.3", "FIT = 0.9", "FIT = 0.6"])
    assert controller.run() == "max_evals 5 reached"
    ids = _ids_by_fitness(store)
    seed, better, lower, best, between = ids[0.5], ids[0.8], ids[0.3], ids[0.9], ids[0.6]
    # seeds verified at once; every new candidate provisional first; only the would-be elites verified
    assert pool.done == [(seed, "verified"), (better, "provisional"), (better, "verified"),
                         (lower, "provisional"), (best, "provisional"), (best, "verified"),
                         (between, "provisional")]  # fmt: skip
    assert {m.id for m in controller.population.elites()} == {best}
    assert controller.progress.best_id == best and store.best(BACKEND, pool.judge)["id"] == best
    # one verdict per candidate, updated in place; the others stay provisional, stored, never ranked
    stages = {r["id"]: r["stage"] for r in store.all_evaluated()}
    assert stages == {seed: "verified", better: "verified", lower: "provisional", best: "verified",
                      between: "provisional"}  # fmt: skip
    assert store.evaluated_count() == 5 and store.pending_ids() == []  # verifications: no budget
    ranked = [r["id"] for r in store.top(10, BACKEND, pool.judge) if r["rankable"]]
    assert ranked == [best, better, seed]
    board = render_leaderboard(store, 10, pool.judge).splitlines()
    rows = {
        int(line.split()[1]): line.split()
        for line in board
        if line.split()[:1] in (["-"], ["1"], ["2"], ["3"])
    }
    assert [rows[i][0] for i in (best, better, seed)] == ["1", "2", "3"]
    assert rows[lower][0] == rows[between][0] == "-" and rows[lower][5:7] == ["ok,", "provisional"]
    assert "of the ok, 2 provisional (not verified, never ranked)" in board[0]
    # proposer statistics: one per candidate; improved only for the verified ones that beat the island
    (stats,) = store.proposer_stats()
    assert (stats["proposals"], stats["accepted"], stats["improved"]) == (4, 4, 2)


def test_the_runs_top_k_is_verified_besides_the_elites(tmp_path):
    controller, store, pool = _run(tmp_path, ["FIT = 0.8", "FIT = 0.6", "FIT = 0.3", "FIT = 0.4"], top_k=3)
    controller.run()
    ids = _ids_by_fitness(store)
    verified = {cid for cid, stage in pool.done if stage == "verified"}
    # 0.6 is in the top 3 (0.8 holds the niche); 0.3 and 0.4 come after 0.8, 0.6 and the seed's 0.5
    assert verified == {ids[0.5], ids[0.8], ids[0.6]}
    assert {m.id for m in controller.population.elites()} == {ids[0.8]}  # top-k verified, not an elite
    ranked = [r["id"] for r in store.top(10, BACKEND, pool.judge) if r["rankable"]]
    assert ranked == [ids[0.8], ids[0.6], ids[0.5]]


def test_a_verification_found_wrong_replaces_the_record_and_never_stands(tmp_path):
    # two slots: the wrong kernel's verification is in flight when the 0.7 one arrives, so the 0.7
    # one waits (one verification per niche at a time) and is verified once the niche is free again
    controller, store, pool = _run(tmp_path, ["FIT = 0.95\nWRONG = 1", "FIT = 0.7"], workers=2)
    controller.run()
    ids = _ids_by_fitness(store)
    wrong, successor = next(r["id"] for r in store.all_evaluated() if r["status"] != "ok"), ids[0.7]
    assert (wrong, "verified") in pool.done and pool.done.index((wrong, "verified")) < pool.done.index(
        (successor, "verified")
    )
    ev = _verdict(store, wrong)  # replaced in place: the verified verdict is the one kept and shown
    assert (ev["status"], ev["stage"], ev["fitness"]) == ("incorrect", "verified", 0.0)
    assert ev["feedback"] == "fresh shape (7, 300, 33): wrong"  # what the proposer sees as a parent's
    assert wrong not in {m.id for m in controller.population.elites()}
    assert {m.id for m in controller.population.elites()} == {successor}
    assert controller.progress.best_id == successor and controller.progress.failures == {"incorrect": 1}
    assert store.evaluated_count() == 3 and store.pending_ids() == []
    (stats,) = store.proposer_stats()  # counted once each: the wrong one as incorrect, not as ok
    assert (stats["proposals"], stats["accepted"], stats["failures"]) == (2, 1, {"incorrect": 1})


class DyingPool(StagePool):
    """The run dies (SystemExit, as a SIGKILL would end it) when `doomed` is handed over to be verified."""

    doomed = -1

    def submit(self, job) -> None:
        if (job.candidate_id, job.options["stage"]) == (self.doomed, "verified"):
            raise SystemExit("the run died with a verification in flight")
        super().submit(job)


def test_a_verification_in_flight_at_a_kill_is_resumed_as_a_verification(tmp_path, capsys):
    controller, store, _ = _run(tmp_path, ["FIT = 0.8"])
    config, task, judge = controller.config, controller.task, controller.pool.judge
    pool = controller.pool = DyingPool(1)
    pool.doomed = 2  # the first proposal
    with pytest.raises(SystemExit):
        controller.run()
    assert store.pending_ids() == [2] and _verdict(store, 2)["stage"] == "provisional"
    population = rebuild_population(config, store, BACKEND, judge)
    assert [m.id for m in population.elites()] == [1]  # the provisional verdict stands on nothing
    pool = StagePool(1)
    resumed = Controller(config.replace(max_evals=3), task, store, population,
                         [(ScriptProposer(["FIT = 0.1"]), 1.0)], pool, {}, BACKEND, judge=judge)  # fmt: skip
    resumed.verification.top_k = 0
    pool.check = lambda: _only_verified_stand(resumed)
    assert resumed.run() == "max_evals 3 reached"
    assert pool.done[0] == (2, "verified")  # queued first, as a verification again, and only once
    assert [job for job in pool.done if job[0] == 2] == [(2, "verified")]
    assert "verifying the 1 provisional verdicts of an earlier segment" in capsys.readouterr().out
    assert _verdict(store, 2)["stage"] == "verified" and resumed.progress.best_id == 2
    assert {m.id for m in resumed.population.elites()} == {2}
    assert store.evaluated_count() == 3 and store.pending_ids() == []


def test_the_choice_of_what_to_verify():
    from evolve.population import Member

    population = Population(PopulationConfig(islands=2))
    population.add(Member(1, 0, 0.5, ("a",), "h1", 0))
    population.spread([population.elites()[0]])
    verification = Verification(population, top_k=1)
    verification.stood(0.5)
    low, high, other, seed = (Member(2, 0, 0.4, ("a",), "h2", 1), Member(3, 0, 0.7, ("a",), "h3", 1),
                              Member(4, 1, 0.6, ("a",), "h4", 1), Member(5, 0, 0.45, ("b",), "h5", 0))  # fmt: skip
    for m in (low, high, other, seed):
        verification.wait(m)
    # fittest first; one per (island, niche); a seed competes on every island
    assert verification.due() == [high.id, other.id, seed.id] and list(verification.waiting) == [low.id]
    assert verification.provisional() == 1
    verification.done(3)
    assert verification.due() == []  # 0.4 neither beats the niche's 0.5 nor enters the top 1


class StoppingPool(StagePool):
    """Ctrl-C (request_stop) arrives as the first proposal's provisional verdict comes back."""

    controller: Controller

    def poll(self, timeout: float):
        out = super().poll(timeout)
        if any(cid == 2 for cid, _ in out):
            self.controller.request_stop("interrupted (Ctrl-C)")
        return out


def test_a_stop_finishes_the_verifications_queued_and_leaves_nothing_pending(tmp_path):
    controller, store, _ = _run(tmp_path, ["FIT = 0.8", "FIT = 0.9"])
    pool = controller.pool = StoppingPool(1)
    pool.controller = controller
    assert controller.run() == "interrupted (Ctrl-C)"
    assert pool.done == [(1, "verified"), (2, "provisional"), (2, "verified")]  # no new candidate after
    assert store.pending_ids() == [] and _verdict(store, 2)["stage"] == "verified"
    assert controller.progress.best_id == 2 and store.run_info()["status"] == "stopped"


class ScanningVerification(Verification):
    """The specification of `due`: every waiting verdict, fittest first, each queued when it is in the
    top-k or would place in a cell no queued verdict holds (the first implementation, a full scan)."""

    def due(self) -> list[int]:
        import dataclasses

        busy = {cell for m in self.queued.values() for cell in self.cells(m)}
        chosen = []
        for member in sorted(self.waiting.values(), key=lambda m: (-m.fitness, m.id)):
            cells = self.cells(member)
            free = [i for i, niche in cells if (i, niche) not in busy]
            if self._in_top(member.fitness) or any(
                self.population.would_place(dataclasses.replace(member, island=i)) for i in free
            ):
                self._unwait(member.id)
                self.queued[member.id] = member
                busy.update(cells)
                chosen.append(member.id)
        return chosen


@pytest.mark.parametrize("seed", range(6))
def test_due_picks_what_a_full_scan_picks(seed):
    """`due` looks only at each cell's fittest waiting verdict and the top-k; over random runs of
    offers, verifications coming back, elites placing and verdicts standing, it picks exactly what the
    full scan picks, in the same order, and both keep the same waiting and queued verdicts."""
    import random

    from evolve.population import Member

    rng = random.Random(seed)
    config = PopulationConfig(islands=3, migration_interval=0)
    pairs = [
        (kind(Population(config), top_k=3), Population(config))
        for kind in (Verification, ScanningVerification)
    ]
    pairs = [(v, v.population) for v, _ in pairs]
    next_id = 1
    for _ in range(400):
        action = rng.random()
        if action < 0.55:  # a new ok verdict that does not stand yet (some seeds, some stale)
            member = Member(next_id, rng.randrange(3), round(rng.uniform(0.01, 1.0), 3),
                            (rng.choice("abcdef"),), f"h{next_id}", 0 if rng.random() < 0.05 else 1)  # fmt: skip
            next_id += 1
            stale = rng.random() < 0.2
            for v, _ in pairs:
                v.wait(member, stale=stale)
        elif action < 0.75:  # a verification came back: it stands (placed) or not
            queued = sorted(pairs[0][0].queued)
            if queued:
                cid = rng.choice(queued)
                placed = rng.random() < 0.6
                for v, population in pairs:
                    member = v.done(cid)
                    if placed:
                        population.readmit(member)
                        v.stood(member.fitness)
        else:
            picks = [v.due() for v, _ in pairs]
            assert picks[0] == picks[1]
        assert [sorted(v.waiting) for v, _ in pairs][0] == sorted(pairs[1][0].waiting)
        assert sorted(pairs[0][0].queued) == sorted(pairs[1][0].queued)
        assert pairs[0][0].provisional() == pairs[1][0].provisional()
