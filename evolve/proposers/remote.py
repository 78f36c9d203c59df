"""A synchronous proposer (the offline mutator) run in a Ray actor, so that the controller only selects
parents, dispatches and records.

The evaluator actors hold the CPUs (`num_cpus=1` each, evolve/pool.py), so an actor or task asking
for a CPU would wait for ever; this one asks none (`num_cpus=0`: a proposal takes ~16 ms of Python).
It takes up to `lookahead` proposals at once and the controller collects them as they come
(evolve/proposing.py), so a free evaluator finds a candidate queued rather than waiting for one.
"""

from __future__ import annotations

import dataclasses

from evolve.candidate import Parent, Proposal, ProposalContext, Proposer
from evolve.raytools import ready


class ProposerActor:
    """Made a Ray actor (num_cpus=0) by `RemoteProposer`: holds the proposer, answers `propose`."""

    def __init__(self, proposer: Proposer) -> None:
        self.proposer = proposer

    def propose(self, parents: list[Parent], context: ProposalContext) -> list[Proposal]:
        return self.proposer.propose(parents, context)


@dataclasses.dataclass
class Asked:
    """A proposal request in flight: what the controller needs to place its answer."""

    island: int
    parent_fitness: float
    generation: int
    arm: str
    cost: float = 0.0  # what the proposal cost (nothing: no LLM call)


class RemoteProposer:
    """The driver's handle on a synchronous proposer's actor (its `name` is the proposer's)."""

    def __init__(self, proposer: Proposer, lookahead: int = 4) -> None:
        import ray

        self.name = proposer.name
        self.families = dict(getattr(proposer, "families", None) or {})  # its transformation families
        self.lookahead = lookahead
        self.actor = ray.remote(ProposerActor).options(num_cpus=0, max_restarts=1).remote(proposer)
        self.in_flight: dict = {}  # ObjectRef -> Asked

    def capacity(self) -> int:
        return max(0, self.lookahead - len(self.in_flight))

    def submit(self, parents: list[Parent], context: ProposalContext, asked: Asked) -> None:
        self.in_flight[self.actor.propose.remote(parents, context)] = asked

    def poll(self, timeout: float = 0.0) -> list[tuple[Asked, list[Proposal]]]:
        """Answers that arrived (waits at most `timeout` s for the first); a failed one is no proposal."""
        import ray

        if not self.in_flight:
            return []
        done = []
        for ref in ready(self.in_flight, timeout):
            asked = self.in_flight.pop(ref)
            try:
                done.append((asked, list(ray.get(ref))))
            except Exception:  # noqa: BLE001 - a proposer's failure is no proposal, never the run's end
                done.append((asked, []))
        return done

    def shutdown(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)
        self.in_flight.clear()
