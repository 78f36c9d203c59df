"""The controller: the loop that keeps the worker pool busy and records everything.

It is the only writer to the store. Each step: pick an island and parents, ask a
proposer for a kernel, drop duplicates, store the candidate as pending, hand it to the
pool; as evaluations finish, store them (which clears pending), update the population
and the proposer statistics, migrate when due. A SIGKILL loses at most what was in
flight: those candidates stay pending and `--resume` re-queues them, at most
MAX_QUEUED times in all: one that was in flight every time a run died may be what kills it,
so it gets a judge_error verdict instead of a place in the queue. Every verdict, whatever its
status, is recorded; `unsupported` (the CPU backend cannot run it) and `judge_error` (the
judge's bug) are kept and shown, never ranked; judge errors are not charged to the proposer.

Every verdict names its judge (evaluators/fingerprint.py) and its stage (evaluators/evaluation.py
STAGES). A new candidate is judged "provisional" (the cheap checks); a seed "verified" at once. Only a
verified ok verdict of this run's judge stands (a member with fitness: an elite, a parent, `best`).
An ok verdict that does not stand - provisional, or stale (another judge's) - is stored, never lost,
and judged again with stage "verified" when, and only when, it would place in its island's niche or
the run's top-k (evolve/verification.py picks which, first in line, marked pending in the store so a
kill re-queues it on resume); the verified verdict replaces it in place, and only then is the member
admitted. A verification that is not ok (the expensive stage found it wrong) replaces it too, and is
what the proposer sees. Verifications do not count against max_evals (an evaluation is a candidate
judged) but take time; a run that stops (max_evals, the time budget, a first Ctrl-C) finishes the
verifications it queued, as it finishes what is in flight.
A new candidate's proposer statistics are counted once: when its verification returns, if it was
queued for one as its provisional verdict arrived; else on arrival (a provisional ok one as accepted,
not improved: if it is verified later, that verdict is not counted again). One whose verification
was in flight at a kill is verified on resume, uncounted (the store keeps no mark of what was counted).

On resume, the earlier segments' ok verdicts that do not stand (stale ones, provisional ones) that
would place are queued before anything else and the run waits for them before it proposes; as their
verdicts come back, any other that would now place (a niche whose elite came back lower) is queued in
turn. The others are never parents: they could only be by beating an elite, exactly when they would
be verified.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from evaluators import Evaluation, Task
from evaluators.fingerprint import judge_fingerprint

from .candidate import Parent, Proposal, ProposalContext, Proposer
from .config import RunConfig
from .pool import Job
from .population import Member, Population, niche_of
from .proposers.remote import Asked
from .proposing import Proposing
from .store import Store
from .verification import Verification, stands

MAX_BARREN_PROPOSALS = 50
MAX_QUEUED = 3  # times a candidate is queued across stopped and resumed segments before judge_error


@dataclasses.dataclass
class Progress:
    """What the live display shows; updated by the controller."""

    evaluated: int = 0
    in_flight: int = 0
    best_fitness: float = 0.0
    best_id: int | None = None
    backend: str = ""
    failures: dict = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.monotonic)
    evaluated_at_start: int = 0
    duplicates: int = 0
    invalid_proposals: int = 0
    provisional: int = 0  # ok verdicts of today's judge not verified (never ranked)
    verifying: int = 0  # verifications queued or in flight
    llm: str = ""  # the LLM proposers' calls, cost and state (evolve/proposing.py), "" without them
    llm_window_s: float = 0.0  # evaluator-slot seconds while LLM calls were in flight ...
    llm_idle_s: float = 0.0  # ... and of those, idle (a free evaluator waiting for a proposal)

    def evals_per_min(self) -> float:
        minutes = (time.monotonic() - self.started) / 60
        return (self.evaluated - self.evaluated_at_start) / minutes if minutes > 0 else 0.0


class Controller:
    def __init__(
        self,
        config: RunConfig,
        task: Task,
        store: Store,
        population: Population,
        proposers: list[tuple[Proposer, float]],
        pool,
        eval_options: dict,
        backend: str,
        on_progress: Callable[[Progress], None] | None = None,
        judge: str | None = None,
        llms: list | None = None,
    ) -> None:
        """`proposers`: the synchronous ones (the mutator) with their weights; `llms`: LLM proposers
        (evolve/proposers/llm.py, started), whose calls run while the loop goes on."""
        self.config, self.task, self.store, self.population = config, task, store, population
        self.proposers, self.pool, self.eval_options = proposers, pool, eval_options
        self.on_progress = on_progress or (lambda p: None)
        self.rng = random.Random(config.seed)
        self.stop_requested = False
        self.force_stop = False  # a second Ctrl-C: leave what is in flight pending
        self.barren = 0  # proposals in a row that produced nothing new to evaluate
        self.queue: list[int] = []  # stored as pending, waiting for a free worker
        self.stop_reason = ""
        self.progress = Progress(evaluated=store.evaluated_count(), backend=backend)
        self.progress.evaluated_at_start = self.progress.evaluated
        self.sequence = store.evaluated_count() + len(store.pending_ids())
        self.judge = judge or judge_fingerprint()  # today's judge: only its verdicts stand
        self.verification = Verification(population)  # ok verdicts that do not stand yet
        for row in store.population_rows(backend):
            if stands(row, self.judge):
                self.verification.stood(row["fitness"])
        self.deferred: set[int] = set()  # new candidates whose proposer statistics wait for verification
        self.rejudged: dict[str, int] = {}  # the verified verdicts of stale or earlier ones, by status
        self.foreign_judge = ""  # a fresh verdict's judge that was not ours (said once)
        self.proposing = Proposing(store, task.to_dict(), population, proposers, list(llms or []), backend,
                                   config.max_cost, config.max_tokens)  # fmt: skip
        best = store.best(backend, self.judge)
        if best:
            self.progress.best_fitness, self.progress.best_id = best["fitness"], best["id"]

    # ---------------------------------------------------------------- the loop
    def run(self) -> str:
        start = time.monotonic()
        self.queue.extend(self._requeue_pending())  # left in flight by an earlier segment
        self._seed_population()
        self._verify_earlier()
        while True:
            if self._should_stop(start):
                break
            while self.pool.idle_slots() and self.queue and not self.stop_requested:
                self._submit_existing(self.queue.pop(0))
            while self.pool.idle_slots() and not self._budget_spent():
                spent = self.proposing.only_llm_left_spent()
                if spent:
                    self.request_stop(f"the LLM proposers' budget is spent: {spent}")
                    break
                if not self._propose_and_submit():
                    if not self.pool.in_flight() and not self.queue and not len(self.population):
                        # nothing to propose from and nothing coming: waiting would spin forever
                        self.request_stop(self._no_parents_reason())
                    break
                if self.barren >= MAX_BARREN_PROPOSALS:
                    self.request_stop(f"{MAX_BARREN_PROPOSALS} proposals in a row were duplicates or invalid")
                    break
            self._collect(timeout=0.5)
            if self.pool.in_flight() == 0 and not self.queue and self._budget_spent():
                if not self.proposing.in_flight() or self.stop_requested:  # an answer may yet be a child
                    break
        self._drain()
        if not self.stop_reason:
            self._should_stop(start)
        self.store.set_run_status("stopped" if self.stop_requested else "finished", self.stop_reason)
        return self.stop_reason

    def _requeue_pending(self) -> list[int]:
        """Pending candidates of an earlier segment to queue again; one queued MAX_QUEUED times
        already is recorded judge_error instead (so a candidate that kills the run cannot make
        every resume die the same way)."""
        queue = []
        for cid in self.store.pending_ids():
            if self.store.requeue(cid) <= MAX_QUEUED:
                queue.append(cid)
                continue
            feedback = (
                f"in flight each of the {MAX_QUEUED} times the run stopped before its verdict (killed, or "
                "the judge or the run died on it); not queued again. The judge's failure, not the "
                "kernel's: `evolve remeasure` judges it on a GPU"
            )
            self._record(cid, Evaluation("judge_error", self.progress.backend, feedback=feedback).to_dict())
        return queue

    def _no_parents_reason(self) -> str:
        counts = self.store.counts_by_status(self.progress.backend)
        statuses = ", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "pending")
        return f"no ok candidate to propose from (every seed failed: {statuses or 'none judged'})"

    def request_stop(self, reason: str = "interrupted") -> None:
        self.stop_requested, self.stop_reason = True, reason

    def _budget_spent(self) -> bool:
        return self._room() <= 0 or self.stop_requested

    def _room(self) -> int:
        """New candidates max_evals still allows, beside those judged, queued, in flight or being written."""
        queued = self.pool.in_flight() + len(self.queue) - len(self.verification.queued)  # new candidates
        queued += self.proposing.in_flight()  # each LLM call in flight may become one
        return self.config.max_evals - self.progress.evaluated - queued

    def _should_stop(self, start: float) -> bool:
        if self.stop_requested:
            return True
        if self.progress.evaluated >= self.config.max_evals and not self.verification.queued:
            self.stop_reason = f"max_evals {self.config.max_evals} reached"
            return True
        if self.config.time_budget_s and time.monotonic() - start >= self.config.time_budget_s:
            self.stop_reason = f"time budget {self.config.time_budget_s:g} s spent"
            self.stop_requested = True
            return True
        if self.config.target_fitness and self.progress.best_fitness >= self.config.target_fitness:
            self.stop_reason = f"target fitness {self.config.target_fitness:g} reached"
            return True
        return False

    def _drain(self) -> None:
        """Finish what is in flight and the verifications queued (the rest of judgements begun; a new
        candidate queued stays pending for --resume), recorded as usual, unless stopping was forced."""
        while not self.force_stop:
            verifications = [cid for cid in self.queue if cid in self.verification.queued]
            # LLM calls in flight are waited for too: their cost is real and is recorded (their children
            # are judged after a normal stop, left pending for --resume after a Ctrl-C)
            if not self.pool.in_flight() and not verifications and not self.proposing.in_flight():
                return
            for cid in verifications[: self.pool.idle_slots()]:
                self.queue.remove(cid)
                self._submit_existing(cid)
            self._collect(timeout=0.5)

    # ---------------------------------------------------------------- proposing
    def _seed_population(self) -> None:
        if self.store.evaluated_count() or self.store.pending_ids():
            if not len(self.population) and not self.queue and not self.store.pending_ids():
                self._judge_on_new_backend()
            return
        for i, path in enumerate(self.config.seeds):
            source = Path(path).read_text()
            cid = self.store.add_candidate(
                source, proposer="seed", island=i % self.population.config.islands, generation=0,
                note=f"seed {path}", pending=True,
            )  # fmt: skip
            if cid is not None:
                self.queue.append(cid)
        self._wait_for_seeds()

    def _judge_on_new_backend(self) -> None:
        """A resume whose backend has no verdict yet (resumed on another device, or a GPU run resumed
        without one): backends are never mixed, so the seeds and the other backend's best are judged
        here first, and said so; the run stops (with the reason) only if none of them is ok here."""
        other = self.store.default_backend()
        if other is None or other == self.progress.backend:
            return
        rows = [r for r in self.store.population_rows(other) if r["status"] == "ok"]
        best = sorted(rows, key=lambda r: -r["fitness"])[: self.verification.top_k]
        ids = sorted({*self.store.seed_ids(), *(r["id"] for r in best)})
        print(f"resumed on {self.progress.backend}, where this run has no verdict (its verdicts are on {other}, "
              f"never mixed): judging its {len(self.store.seed_ids())} seed(s) and the {len(best)} best of "
              f"{other} here before proposing", flush=True)  # fmt: skip
        for cid in ids:  # pending in the store: a kill before their verdicts re-queues them on resume
            self.store.mark_pending(cid)
        self.queue.extend(ids)
        self._wait_for_seeds()

    def _wait_for_seeds(self) -> None:
        # Every island starts from the seeds once they are evaluated; wait for them.
        while (self.queue or self.pool.in_flight()) and not self.stop_requested:
            while self.pool.idle_slots() and self.queue:
                self._submit_existing(self.queue.pop(0))
            self._collect(timeout=0.5)
        self.population.spread(list(self.population.elites()))

    def _propose_and_submit(self) -> bool:
        """One proposal into the pool, or one LLM call started; False when nothing could be proposed
        this round (no parents, or no arm can take a proposal now: evolve/proposing.py)."""
        if not len(self.population):
            return False
        arm = self.proposing.choose(self.rng, self.pool.idle_slots())
        if arm is None:
            return False
        island = self.population.next_island()
        members = self.population.select_parents(island, self.rng)
        if not members:
            return False
        if arm not in self.proposing.sync and arm not in self.proposing.remote:  # an LLM arm: answers later
            self.proposing.submit_llm(arm, island, members, max(m.generation for m in members) + 1)
            return True
        parents = self._parents(members)
        proposer = self.proposing.sync.get(arm) or self.proposing.remote[arm]
        self.sequence += 1
        context = ProposalContext(
            task=self.task.to_dict(), island=island,
            generation=max(m.generation for m in members) + 1, seed=self.config.seed * 1_000_003 + self.sequence,
            family=self.proposing.choose_family(arm, self.rng),
        )  # fmt: skip
        if arm in self.proposing.remote:  # a proposer in a Ray actor: its proposals arrive later (_collect)
            asked = Asked(island, members[0].fitness, context.generation, arm)
            self.proposing.submit_remote(arm, parents, context, asked)
            return True
        proposals = proposer.propose(parents, context)
        if not proposals:
            self.barren += 1
            self.progress.invalid_proposals += 1
            self.store.update_proposer_stats(proposer.name, island, "invalid", False)
            return True
        for proposal in proposals:
            cid = self._add_and_submit(proposal, island, context.generation)
            if cid is not None:
                self.proposing.proposed(cid, arm, members[0].fitness, family=proposal.template)
        return True

    def _parents(self, members: list[Member]) -> list[Parent]:
        rows = {r["id"]: r for r in self.store.candidates([m.id for m in members])}
        parents = []
        for m in members:
            row = rows[m.id]
            feedback = next((e["feedback"] for e in row["evaluations"]), "")
            parents.append(
                Parent(
                    m.id, row["source"], m.fitness, self.progress.backend, feedback, m.niche, m.source_hash
                )
            )
        return parents

    def _add_and_submit(self, proposal: Proposal, island: int, generation: int) -> int | None:
        """Store the proposal as pending and hand it to a free worker (else queue it); its id, or None
        for a duplicate."""
        cid = self.store.add_proposal(proposal, island, generation, pending=True)
        if cid is None:  # same kernel as one already in the run (normalised source)
            self.barren += 1
            self.progress.duplicates += 1
            self.store.update_proposer_stats(proposal.proposer, island, "duplicate", False)
            return None
        self.barren = 0
        if self.pool.idle_slots() and not self.stop_requested:  # an answer after a stop: left pending
            self._submit_existing(cid)
        else:
            self.queue.append(cid)  # stays pending in the store until a worker is free
        return cid

    def _submit_existing(self, cid: int) -> None:
        row = self.store.candidate(cid)
        verify = cid in self.verification.queued or row["proposer"] == "seed"  # seeds: verified at once
        options = {**self.eval_options, "stage": "verified" if verify else "provisional"}
        if row["proposer"].startswith("llm:") and row["parent_ids"]:  # its edits: inside the parent's regions
            options["parent_source"] = self.store.candidate(row["parent_ids"][0])["source"]
        self.pool.submit(Job(cid, row["source"], self.task.to_dict(), options))
        self.progress.in_flight = self.pool.in_flight()

    # ---------------------------------------------------------------- results
    def _collect(self, timeout: float) -> None:
        """Verdicts and LLM answers that arrived, waiting at most `timeout` s for the first: on the
        pool while it judges, else on the LLM calls (they must never stall the loop)."""
        started, idle, calls = time.monotonic(), self.pool.idle_slots(), self.proposing.in_flight()
        calls = calls if not self._budget_spent() else 0  # idle for want of budget is not the calls' fault
        # Wait on the evaluators while they all work; while a free one waits for a proposal being written
        # (a remote mutator answers in milliseconds, an LLM in seconds), look at both often.
        writing = self.proposing.in_flight() > 0
        if writing and idle:
            pool_wait, wait = 0.0, min(timeout, 0.05)
        else:
            pool_wait, wait = (timeout, 0.0) if self.pool.in_flight() else (0.0, timeout if writing else 0.0)
        for cid, evaluation in self.pool.poll(pool_wait):
            self._record(cid, evaluation)
        for proposal, waiting, call_id in self.proposing.poll(wait):
            if self.stop_requested and call_id is None:  # a remote mutator's after a stop: it cost nothing
                continue
            cid = self._add_and_submit(proposal, waiting.island, waiting.generation)
            if cid is not None and call_id is not None:
                self.store.set_llm_call_candidate(call_id, cid)
            if cid is not None:
                self.proposing.proposed(
                    cid, waiting.arm, waiting.parent_fitness, waiting.cost, proposal.template
                )
        unproductive = self.proposing.take_unproductive()
        self.barren += unproductive
        self.progress.invalid_proposals += unproductive
        if calls:  # evaluator time while calls were in flight, and how much of it sat idle
            elapsed = time.monotonic() - started
            self.progress.llm_window_s += elapsed * self.pool.size
            self.progress.llm_idle_s += elapsed * idle
        self.progress.llm = self.proposing.state()
        self.progress.in_flight = self.pool.in_flight()
        self.progress.provisional = self.verification.provisional()
        self.progress.verifying = len(self.verification.queued)
        self.on_progress(self.progress)

    def _record(self, cid: int, evaluation: dict) -> None:
        if evaluation.get("backend") is None:
            evaluation["backend"] = self.progress.backend
        if not evaluation.get("judge") and evaluation["status"] != "ok":
            evaluation["judge"] = self.judge  # the engine's own verdict (a dead worker, too many queueings)
        if not self.store.add_evaluation(cid, evaluation):
            # recorded already: a final verdict of today's judge replaces one that did not stand (a
            # verification); else a re-queued duplicate, or a verification that did not verify
            if self.store.replace_evaluation(cid, evaluation, self.judge):
                self._record_verified(cid, evaluation)
            elif self.verification.done(cid) is not None:
                self._not_verified(evaluation)
            return
        row = self.store.candidate(cid)
        niche = niche_of(evaluation, row["source"])
        self.store.set_niche(cid, niche)
        self.progress.evaluated += 1
        current = evaluation.get("judge") == self.judge
        if not current:  # stored and seen, but never an elite: not today's judge
            self._foreign(evaluation.get("judge") or "")
        elif evaluation["status"] == "ok" and not stands(evaluation, self.judge):  # provisional
            fitness = float(evaluation.get("fitness") or 0.0)
            member = Member(cid, row["island"], fitness, niche, row["source_hash"], row["generation"])
            self.verification.wait(member)
            if cid in self._queue_verifications():  # it would place: admitted once verified
                self.deferred.add(cid)
                return
        self._admit(cid, row, evaluation, niche)

    def _admit(self, cid: int, row: dict, evaluation: dict, niche: tuple) -> None:
        """A new candidate's verdict for this run, offered once: a member with fitness when it stands
        (else fitness 0, seen but never an elite), its proposer statistics, the run's best, migration."""
        status, fitness = evaluation["status"], float(evaluation.get("fitness") or 0.0)
        standing = stands(evaluation, self.judge)
        if status != "ok":
            self.progress.failures[status] = self.progress.failures.get(status, 0) + 1
        island_best = self.population.island_best(row["island"])
        improved = standing and (island_best is None or fitness > island_best.fitness)
        self.population.add(Member(cid, row["island"], fitness if standing else 0.0, niche,
                                   row["source_hash"], row["generation"]))  # fmt: skip
        if row["proposer"] != "seed" and status != "judge_error":  # the judge's bug: no one's score
            self.store.update_proposer_stats(row["proposer"], row["island"], status, improved)
        # the arm's reward: an ok verdict's figure even if provisional (it did not place: not a failure)
        sweeps = self.proposing.judged(cid, status, fitness, row["source"])
        for sweep in sweeps[: max(0, self._room())] if not self.stop_requested else []:
            self.proposing.swept(cid, self._add_and_submit(sweep, row["island"], row["generation"] + 1))
        self.proposing.settle(cid)
        self.proposing.maybe_distil(self.progress.evaluated)
        if standing:
            self._stood(cid, fitness)
        if self.population.due_migration():  # recorded: a resume rebuilds the islands as they are
            self.store.add_migration([(m.id, island) for m, island in self.population.migrate()])

    def _stood(self, cid: int, fitness: float) -> None:
        self.verification.stood(fitness)
        if fitness > self.progress.best_fitness:
            self.progress.best_fitness, self.progress.best_id = fitness, cid

    # ------------------------------------------------------------ verification
    def _queue_verifications(self) -> list[int]:
        """Queue, first in line, the verdicts that do not stand and would now place (evolve/verification.py),
        each marked pending in the store (a kill before its verdict re-queues it on resume); their ids."""
        due = self.verification.due()
        for cid in due:
            self.store.mark_pending(cid)
        self.queue[:0] = due
        return due

    def _verify_earlier(self) -> None:
        """On resume: verify the earlier segments' ok verdicts that do not stand (stale, provisional)
        and would place, before anything stands on them, and wait for them (see the module
        docstring). Says how many and why."""
        pending = set(self.store.pending_ids())  # queued already (a verification the last segment left)
        rows = self.store.population_rows(self.progress.backend)
        stale = [r for r in rows if r["judge"] != self.judge]
        for r in rows:
            if r["status"] == "ok" and not stands(r, self.judge):
                member = Member(r["id"], r["island"], r["fitness"], tuple(r["niche"]), r["source_hash"],
                                r["generation"])  # fmt: skip
                self.verification.wait(member, stale=r["judge"] != self.judge, queued=r["id"] in pending)
        self._queue_verifications()
        queued, k = set(self.verification.queued), self.verification.top_k
        if not stale and not queued:
            return
        if stale:
            print(
                f"the judge changed since {len(stale)} of the {len(rows)} verdicts on {self.progress.backend} were "
                f"given (judge {self.judge}; before: {', '.join(sorted({r['judge'] or 'unrecorded' for r in stale}))}): "
                f"re-judging the {len(self.verification.stale & queued)} that would be elites or in the top {k} "
                "before any can stand; the other stale ones are never parents (re-judged only if one would place)",
                flush=True,
            )
        if queued - self.verification.stale:
            print(f"verifying the {len(queued - self.verification.stale)} provisional verdicts of an earlier "
                  f"segment that would be elites or in the top {k} before any can stand", flush=True)  # fmt: skip
        while self.verification.queued and not self.stop_requested and (self.queue or self.pool.in_flight()):
            while self.pool.idle_slots() and self.queue:
                self._submit_existing(self.queue.pop(0))
            self._collect(timeout=0.5)
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(self.rejudged.items())) or "none finished"
        print(
            f"verified {sum(self.rejudged.values())} earlier verdicts that would be elites or in the top {k} "
            f"(stale: the judge changed since they were judged; or provisional): {verdicts}; "
            f"{len(self.verification.waiting)} not verified (they would not place, so never parents)",
            flush=True,
        )

    def _record_verified(self, cid: int, evaluation: dict) -> None:
        """A final verdict of today's judge replaced one that did not stand: a new candidate of this
        segment is admitted now (`_admit`); an earlier one stands on it (an elite where it beats the
        niche's), counted apart (no budget, no proposer statistics). Then whatever would now place is queued."""
        self.verification.done(cid)
        row = self.store.candidate(cid)
        niche = niche_of(evaluation, row["source"])
        self.store.set_niche(cid, niche)
        if cid in self.deferred:
            self.deferred.discard(cid)
            self._admit(cid, row, evaluation, niche)
        else:
            status = evaluation["status"]
            self.rejudged[status] = self.rejudged.get(status, 0) + 1
            fitness = float(evaluation.get("fitness") or 0.0) if status == "ok" else 0.0
            member = Member(cid, row["island"], fitness, niche, row["source_hash"], row["generation"])
            self.population.readmit(member)
            if member.generation == 0:  # a seed starts every island
                self.population.spread([member])
            if status == "ok":
                self._stood(cid, fitness)
        self._queue_verifications()

    def _not_verified(self, evaluation: dict) -> None:
        """A verification came back without a final verdict of today's judge: the stored one is kept
        (it does not stand; a resume considers it again). Said once per foreign judge."""
        judge = evaluation.get("judge") or ""
        if judge != self.judge:
            self._foreign(judge)
        else:
            print(f"warning: a verification came back {evaluation.get('stage') or 'without a stage'}, not "
                  "verified (the judge ignored EvalOptions.stage); the provisional verdict is kept, unranked",
                  file=sys.stderr, flush=True)  # fmt: skip

    def _foreign(self, judge: str) -> None:
        if judge == self.foreign_judge:
            return
        self.foreign_judge = judge
        print(
            f"warning: a verdict came back from judge {judge or 'unrecorded'}, not this run's ({self.judge}): "
            "evaluators/ or torch/triton/numpy changed since the run started, or a worker runs other code; "
            "such verdicts are stored as stale and never ranked (resume the run to re-judge them)",
            file=sys.stderr,
            flush=True,
        )
