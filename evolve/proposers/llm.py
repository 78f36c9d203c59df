"""The LLM proposer: kernel modules written by any OpenAI-compatible chat model.

Each LLM proposer (one `[[proposers]] kind = "llm"` of the run file) is one Ray actor, `LLMActor`,
that asks no CPU (`num_cpus=0`: the evaluator actors hold the CPUs, and an LLM call only waits on
the network) and keeps up to `concurrency` calls in flight through one `AsyncOpenAI` client
(evolve/proposers/llm_client.py). A call's answer is applied to the parent there too
(evolve/proposers/edits.py), so the controller only picks parents, dispatches requests and records
what comes back.

The API key travels by one actor method call (`set_key`) after the actor exists: never in the actor's
constructor arguments (kept in Ray's actor table), never in a `runtime_env` (shown by the dashboard),
never in the environment Ray's workers inherit (evolve/runner.py removes it from the driver's
environment before `ray.init`). Results never carry it (llm_client scrubs errors of it).

`LLMProposer` is the driver's handle: how many more calls it takes (`capacity`, 0 while it backs off
after repeated failures), `submit` and `poll`. It is not a `Proposer` (evolve/candidate.py): its
proposals arrive later, and the controller (evolve/llm_proposals.py) collects them as they come.
"""

from __future__ import annotations

import dataclasses
import os
import time

from evolve.raytools import ready

from .call_status import FAILED_CALLS

BACKOFF_AFTER = 3  # failed calls in a row before a proposer pauses (one flaky answer is not a pattern)
BACKOFF_FIRST_S = 15.0  # the first pause; doubled after each further failure, up to BACKOFF_MAX_S
BACKOFF_MAX_S = 300.0


@dataclasses.dataclass(frozen=True)
class LLMProposerConfig:
    """One LLM proposer of the run file (`[[proposers]] kind = "llm"`).

    Attributes:
        settings: the model and endpoint (evolve/proposers/llm_client.py LLMSettings fields, as a dict
            so that it crosses to the actor as plain data).
        weight: the proposer's prior share of proposals (the bandit's prior, evolve/meta/bandit.py).
        concurrency: calls in flight at once through this proposer.
        templates: prompt template ids the bandit chooses among (evolve/prompts/).
    """

    settings: dict
    weight: float = 1.0
    concurrency: int = 4
    templates: tuple[str, ...] = ("default", "rewrite")

    @property
    def name(self) -> str:
        return f"llm:{self.settings['model']}"


class LLMActor:
    """Made a Ray actor (num_cpus=0, max_concurrency=concurrency) by `LLMProposer.start`."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.client = None

    def set_key(self, key: str) -> bool:
        """Take the API key (a call, so it is in no actor spec); True once the client is built."""
        from .llm_client import LLMClient, LLMSettings

        self.client = LLMClient(LLMSettings(**self.settings), key)
        return True

    async def propose(self, request: dict) -> dict:
        """One call and its edit: {"call": CallResult fields, "edit": EditResult fields or None}.
        `request`: system, user (the prompt), parent_source (None: the answer is not a kernel, e.g. a
        prompt variant, and is returned as it is). Never raises for the endpoint's failures."""
        from .edits import apply_answer

        result = await self.client.complete(request["system"], request["user"])
        edit = None
        if result.ok and request.get("parent_source") is not None:  # None: not a kernel (a prompt variant)
            edit = dataclasses.asdict(
                apply_answer(
                    request["parent_source"],
                    result.text,
                    truncated=result.status == "truncated",
                    max_tokens=self.settings.get("max_tokens"),
                )
            )
        call = dataclasses.asdict(result)
        return {"call": call, "edit": edit}

    def pid(self) -> int:
        return os.getpid()

    def environ(self) -> str:
        """This worker process's environment as the kernel sees it (the secrets test reads it)."""
        with open(f"/proc/{os.getpid()}/environ", "rb") as f:
            return f.read().decode(errors="replace")


@dataclasses.dataclass
class Waiting:
    """A call in flight: what the controller needs to record its result."""

    island: int
    parent_id: int
    parent_fitness: float
    parent_source: str
    generation: int
    template: str
    arm: str
    started: float
    cost: float = 0.0  # USD, set when the answer arrives (the child's arm pays it)


class LLMProposer:
    """The driver's handle on one LLM proposer's actor."""

    asynchronous = True

    def __init__(self, config: LLMProposerConfig) -> None:
        self.config = config
        self.name = config.name
        self.model = config.settings["model"]
        self.actor = None
        self._key = ""  # held to start the actor again should it die; never logged or stored
        self.in_flight: dict = {}  # ObjectRef -> (Waiting, the actor it went to)
        self.failures_in_row = 0
        self.paused_until = 0.0
        self.last_failure = ""
        self.stopped = ""  # why it proposes no more (a budget), "" while it does

    def start(self, key: str) -> None:
        """Start the actor and hand it the key (by a method call, never in its creation spec)."""
        import ray

        self._key = key
        actor_class = ray.remote(LLMActor)
        self.actor = actor_class.options(
            num_cpus=0, max_concurrency=max(1, self.config.concurrency), max_restarts=0
        ).remote(self.config.settings)
        ray.get(self.actor.set_key.remote(key))

    def capacity(self, now: float | None = None) -> int:
        """How many more calls it takes now: 0 when stopped, backing off, or at its concurrency."""
        now = time.monotonic() if now is None else now
        if self.stopped or now < self.paused_until:
            return 0
        return max(0, self.config.concurrency - len(self.in_flight))

    def submit(self, request: dict, waiting: Waiting) -> None:
        self.in_flight[self.actor.propose.remote(request)] = (waiting, self.actor)

    def poll(self, timeout: float = 0.0) -> list[tuple[Waiting, dict]]:
        """Calls finished (waits at most `timeout` s for the first): (what was waiting, its result).
        An actor that died answers each of its calls as a server_error and is started again later."""
        import ray

        if not self.in_flight:
            return []
        done = []
        for ref in ready(self.in_flight, timeout):
            waiting, actor = self.in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the proposer's failure, never the run's end
                error = f"the LLM actor failed: {type(e).__name__}"
                result = {"call": {"status": "server_error", "error": error}, "edit": None}
                if isinstance(e, ray.exceptions.RayActorError) and actor is self.actor:
                    self.start(self._key)  # a new one; the dead one's other calls fail as they are polled
            self._count(result["call"].get("status", ""), result["call"].get("error", ""))
            done.append((waiting, result))
        return done

    def _count(self, status: str, error: str) -> None:
        """Back off after BACKOFF_AFTER failed calls in a row: the pause doubles with each further one."""
        if status not in FAILED_CALLS:
            self.failures_in_row, self.last_failure = 0, ""
            return
        self.failures_in_row += 1
        self.last_failure = status
        if self.failures_in_row >= BACKOFF_AFTER:
            pause = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.failures_in_row - BACKOFF_AFTER))
            self.paused_until = time.monotonic() + pause

    def state(self, now: float | None = None) -> str:
        """A few words for the live line: stopped, backing off, or calls in flight."""
        now = time.monotonic() if now is None else now
        if self.stopped:
            return f"{self.name} stopped ({self.stopped})"
        if now < self.paused_until:
            return (
                f"{self.name} backing off {self.paused_until - now:.0f} s after {self.failures_in_row} "
                f"failed calls ({self.last_failure})"
            )
        return f"{self.name} {len(self.in_flight)} in flight"

    def shutdown(self) -> None:
        import ray

        if self.actor is not None:
            ray.kill(self.actor, no_restart=True)
            self.actor = None
        self.in_flight.clear()
