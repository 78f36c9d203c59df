"""Who proposes next, and the LLM calls in flight: the controller's proposing, apart from its loop.

Arms (evolve/meta/bandit.py) are the synchronous proposers by name ("mutator") and, per LLM
proposer, one arm per prompt template ("llm:MODEL|default", "llm:MODEL|rewrite"): the template
decides the edit mode (SEARCH/REPLACE diffs or a whole module). The bandit picks among the arms
that can take a proposal now: an LLM arm whose proposer is at its concurrency, backing off after
failures, past the run's budget, or already LOOKAHEAD calls ahead of each free evaluator, waits.
A proposer with transformation families (the mutator: tiles, split_k, crossover, ...) has a second
bandit over them (saved as "families:NAME"): pulling its arm then chooses the family to try, so its
families compete without outnumbering the other proposers' arms at the first level. A child's verdict
rewards its arm and its family (evolve/meta/bandit.py `reward`, the LLM call's cost subtracted at
COST_WEIGHT); the bandits' states are saved in the store after each reward, so `--resume` goes on
with them.

An LLM call's answer comes back applied (evolve/proposers/llm.py): a child module, or the reason it
was refused (no code, SEARCH text not found, an edit outside the EVOLVE-BLOCKs, cut off). Every
call is recorded in the store (`llm_calls`: proposer, model, template, tokens, cost, latency,
status, edit status, the answer); a refused edit's reason goes into that island's next prompts.
Budgets (`max_cost` USD, `max_tokens`) stop new calls once the calls made, plus those in flight at
the average cost of a call so far, would pass them: a run ends within about one call of its cap.
"""

from __future__ import annotations

import random
import time

from .candidate import Proposal, Proposer
from .meta import prompt_evolution
from .meta.bandit import Bandit, reward
from .meta.lessons import distil
from .meta.sweeps import sweeps
from .population import Member, Population
from .proposers import prompt
from .proposers.llm import LLMProposer, Waiting
from .store import Store

LOOKAHEAD = 2  # LLM calls in flight per free evaluator: enough to hide a call's latency, not a backlog
COST_WEIGHT = 1.0  # reward lost per USD an LLM child cost (a $0.01 call weighs like a 1% slowdown)
BANDIT_KEY = "arms"
FAMILIES = "families:"  # + a proposer's name: the store key of the bandit over its transformation families
FAILURES_IN_PROMPT = 4  # the island's most recent failures a prompt shows
SWEEPS = 3  # constant sweeps an ok LLM child gets before its arm is rewarded (evolve/meta/sweeps.py)
EVOLUTION = "prompt-evolution"  # the template name of a call that asks for a prompt variant
LESSONS_EVERY = 10  # evaluations between two distillations of the lessons (enough new evidence to say more)


class Proposing:
    """The arms, the bandit over them, the LLM calls in flight and their budget."""

    def __init__(
        self,
        store: Store,
        task: dict,
        population: Population,
        proposers: list[tuple[Proposer, float]],
        llms: list[LLMProposer],
        backend: str,
        max_cost: float = 0.0,
        max_tokens: int = 0,
    ) -> None:
        self.store, self.task, self.population, self.backend = store, task, population, backend
        # synchronous proposers run in the controller; those run in a Ray actor (evolve/proposers/remote.py)
        # answer later, like the LLMs; both are arms by their name
        self.sync = {p.name: p for p, _ in proposers if not hasattr(p, "submit")}
        self.remote = {p.name: p for p, _ in proposers if hasattr(p, "submit")}
        self.llms = {p.name: p for p in llms}
        self.max_cost, self.max_tokens = max_cost, max_tokens
        saved = store.load_bandit(BANDIT_KEY)
        self.bandit = Bandit.from_dict(saved) if saved else Bandit()
        self.families: dict[str, Bandit] = {}  # proposer -> the bandit over its transformation families
        for proposer, weight in proposers:
            self.bandit.add_arm(proposer.name, weight)
            families = dict(getattr(proposer, "families", None) or {})
            if families:
                saved = store.load_bandit(f"{FAMILIES}{proposer.name}")
                self.families[proposer.name] = Bandit.from_dict(saved) if saved else Bandit()
                for family, share in families.items():
                    self.families[proposer.name].add_arm(family, share)
        for llm in llms:
            for template in llm.config.templates:
                self.bandit.add_arm(f"{llm.name}|{template}", llm.config.weight / len(llm.config.templates))
        self.variants = {v["id"]: v["text"] for v in store.prompt_variants()}  # templates LLMs wrote
        for llm in llms:
            for vid in self.variants:
                self.bandit.add_arm(f"{llm.name}|{vid}", llm.config.weight / len(llm.config.templates))
        totals = store.llm_totals()
        self.calls, self.cost = int(totals.get("calls", 0)), float(totals.get("cost", 0.0))
        self.tokens = int(totals.get("prompt_tokens", 0)) + int(totals.get("completion_tokens", 0))
        # candidate -> (arm, family, parent fitness, cost): what its verdict will pay
        self.rewards: dict[int, tuple[str, str, float, float]] = {}
        self.evolved_at = self.calls  # LLM calls when a prompt variant was last asked for
        self.distilled_at = store.evaluated_count()  # evaluations when the lessons were last distilled
        self.groups: dict[int, dict] = {}  # an LLM child being swept -> its arm's reward, waiting
        self.sweep_of: dict[int, int] = {}  # a sweep -> the LLM child it sweeps
        self.refused: dict[int, list[dict]] = {}  # island -> recent refused edits (for its prompts)
        self.tried: set[str] = set()  # arms (and "NAME|family" families) chosen in this segment
        self.unproductive = 0  # answers that became no child since the controller last took the count

    # ------------------------------------------------------------------ choosing
    def in_flight(self) -> int:
        """Proposals being written: LLM calls and remote proposals in flight."""
        return self.llm_in_flight() + sum(len(p.in_flight) for p in self.remote.values())

    def llm_in_flight(self) -> int:
        return sum(len(p.in_flight) for p in self.llms.values())

    def budget_reason(self) -> str:
        """Why no more LLM calls may start ("" while they may)."""
        ahead = self.llm_in_flight() * (self.cost / self.calls if self.calls else 0.0)
        if self.max_cost and self.cost + ahead >= self.max_cost:
            return f"max_cost ${self.max_cost:g} reached (${self.cost:.4f} spent)"
        per_call = self.tokens / self.calls if self.calls else 0.0
        if self.max_tokens and self.tokens + self.llm_in_flight() * per_call >= self.max_tokens:
            return f"max_tokens {self.max_tokens} reached ({self.tokens} used)"
        return ""

    def ready_arms(self, idle_slots: int) -> list[str]:
        """Arms that can take a proposal now (see the module docstring)."""
        # a remote proposer writes no more at once than there are free evaluators to take its proposals
        remote = sum(len(p.in_flight) for p in self.remote.values())
        arms = [
            *self.sync,
            *(name for name, p in self.remote.items() if p.capacity() > 0 and remote < idle_slots),
        ]
        if self.llms and not self.budget_reason() and self.llm_in_flight() < LOOKAHEAD * max(idle_slots, 1):
            now = time.monotonic()
            for arm in self.bandit.arms:
                name = arm.split("|")[0]
                if name in self.llms and self.llms[name].capacity(now) > 0:
                    arms.append(arm)
        return arms

    def choose(self, rng: random.Random, idle_slots: int) -> str | None:
        """The arm to pull now, or None when none can take a proposal."""
        arms = self.ready_arms(idle_slots)
        if not arms:
            return None
        return self._pick(self.bandit, arms, rng)

    def choose_family(self, arm: str, rng: random.Random) -> str:
        """The transformation family the proposer of `arm` should try ("" when it has none)."""
        bandit = self.families.get(arm)
        return self._pick(bandit, list(bandit.arms), rng, prefix=f"{arm}|") if bandit else ""

    def _pick(self, bandit: Bandit, arms: list[str], rng: random.Random, prefix: str = "") -> str:
        # Rewards arrive with verdicts, late: an arm chosen but not yet rewarded still reads "unpulled" to
        # the bandit, which would choose it again and again; each arm is tried once before the draws.
        pulls = {s.arm: s.pulls for s in bandit.stats()}
        fresh = [a for a in arms if not pulls.get(a) and prefix + a not in self.tried]
        arm = fresh[0] if fresh else bandit.choose(rng, among=arms)
        self.tried.add(prefix + arm)
        return arm

    def only_llm_left_spent(self) -> str:
        """The reason to stop the run: every proposer is an LLM and the budget is spent ("" else)."""
        reason = self.budget_reason() if self.llms else ""
        return reason if reason and not self.sync and not self.remote and not self.in_flight() else ""

    # ------------------------------------------------------------------ LLM calls
    def submit_llm(self, arm: str, island: int, members: list[Member], generation: int) -> None:
        """Ask the arm's LLM for a child of the island's selected parent (the first member)."""
        name, template = arm.split("|", 1)
        llm = self.llms[name]
        if self.calls - self.evolved_at >= prompt_evolution.EVOLVE_EVERY:  # this slot asks for a template
            self._ask_for_variant(llm)
            return
        parent = members[0]
        row = self.store.candidates([parent.id])[0]
        evaluation = self.store.evaluation_dict(parent.id, self.backend) or {}
        others = [m for m in self.population.elites() if m.id != parent.id and m.island != island][:1]
        others += [m for m in members[1:2]]
        inspirations = [
            (f"candidate {r['id']} (fitness {m.fitness:.4g})", r["source"])
            for m, r in zip(others, self.store.candidates([m.id for m in others]), strict=False)
        ]
        lessons = self.store.latest_lessons()
        fields = prompt.PromptFields(
            task_summary=prompt.task_summary(self.task, self.backend),
            target=prompt.target_name(self.task, self.backend),
            parent_source=row["source"],
            parent_figures=prompt.figures(evaluation),
            inspirations=prompt.inspirations(inspirations),
            failures=prompt.failures(self._failures(island)),
            lessons=lessons["text"] if lessons else "No lessons yet.",
            evolve_regions=prompt.regions_text(row["source"]),
        )
        request = {
            "system": prompt.render(prompt.system_prompt(), fields),
            "user": prompt.render(self._template(template), fields),
            "parent_source": row["source"],
        }
        waiting = Waiting(
            island, parent.id, parent.fitness, row["source"], generation, template, arm, time.time()
        )
        llm.submit(request, waiting)

    def _template(self, template_id: str) -> str:
        return self.variants.get(template_id) or prompt.load_template(template_id)

    def _ask_for_variant(self, llm: LLMProposer) -> None:
        """Ask `llm` for a variant of the template whose arms were paid best (evolve/meta/prompt_evolution.py)."""
        self.evolved_at = self.calls
        arms = [{"arm": a.arm, "pulls": a.pulls, "mean": a.mean_reward} for a in self.bandit.stats()]
        base = prompt_evolution.best_variant(arms, min_pulls=1) or llm.config.templates[0]
        lessons = self.store.latest_lessons()
        request = prompt_evolution.request(
            base, self._template(base), arms, lessons["text"] if lessons else ""
        )
        request["parent_source"] = None  # the answer is a template, not a kernel
        waiting = Waiting(-1, 0, 0.0, self._template(base), 0, f"{EVOLUTION}:{base}", "", time.time())
        llm.submit(request, waiting)

    def _record_variant(self, llm: LLMProposer, waiting: Waiting, call: dict) -> tuple[str, str]:
        """A prompt variant's answer: kept as a new template (and an arm of every LLM proposer) when
        usable; (edit status, why not)."""
        if not call.get("text") or call.get("status") != "ok":
            return "", ""
        text, why = prompt_evolution.variant_from_answer(call["text"], waiting.parent_source)
        if text is None:
            return "prompt_refused", why
        same = next((vid for vid, known in self.variants.items() if known.strip() == text.strip()), None)
        if same is not None:
            return "prompt_refused", f"the variant is template {same} again"
        vid = f"v{len(self.variants) + 1}"
        while vid in self.variants:
            vid += "b"
        self.store.add_prompt(vid, waiting.template.split(":", 1)[1], text, llm.name)
        self.variants[vid] = text
        for other in self.llms.values():
            self.bandit.add_arm(f"{other.name}|{vid}", other.config.weight / len(other.config.templates))
        return "prompt_variant", f"kept as template {vid}"

    def submit_remote(self, arm: str, parents: list, context, asked) -> None:
        """Ask the remote proposer `arm` (evolve/proposers/remote.py) for proposals; they arrive by `poll`."""
        self.remote[arm].submit(parents, context, asked)

    def poll(self, timeout: float) -> list[tuple[Proposal, Waiting, int | None]]:
        """Proposals that arrived (waits at most `timeout` s for the first): LLM answers, each recorded in
        the store, the applied ones returned as (proposal, what was waiting, the llm_calls row id); remote
        proposals as (proposal, what was asked, None)."""
        out = []
        for proposer in self.remote.values():
            for asked, proposals in proposer.poll(0.0):
                if not proposals:
                    self.unproductive += 1
                    self.store.update_proposer_stats(proposer.name, asked.island, "invalid", False)
                out += [(proposal, asked, None) for proposal in proposals]
        timeout = 0.0 if out else timeout
        for llm in self.llms.values():
            for waiting, result in llm.poll(timeout if not out else 0.0):
                proposal, call_id = self._record(llm, waiting, result)
                if proposal is not None:
                    out.append((proposal, waiting, call_id))
            timeout = 0.0 if out else timeout
        for llm in self.llms.values():
            reason = self.budget_reason()
            if reason and not llm.stopped:
                llm.stopped = reason
        return out

    def _record(self, llm: LLMProposer, waiting: Waiting, result: dict) -> tuple[Proposal | None, int]:
        call, edit = result["call"], result.get("edit")
        cost = float(call.get("cost_usd") or 0.0)
        waiting.cost = cost
        tokens = int(call.get("prompt_tokens") or 0) + int(call.get("completion_tokens") or 0)
        self.calls, self.cost, self.tokens = self.calls + 1, self.cost + cost, self.tokens + tokens
        edit_status = edit["status"] if edit else ""
        error = call.get("error") or ("" if not edit or edit_status == "applied" else edit["reason"])
        variant = waiting.template.startswith(EVOLUTION)
        if variant:
            edit_status, why = self._record_variant(llm, waiting, call)
            error = call.get("error") or why
        call_id = self.store.add_llm_call(
            proposer=llm.name, model=llm.model, template=waiting.template, status=call.get("status", ""),
            edit_status=edit_status, prompt_tokens=int(call.get("prompt_tokens") or 0),
            completion_tokens=int(call.get("completion_tokens") or 0), cost=cost,
            latency_s=float(call.get("latency_s") or 0.0), error=error, answer=call.get("text") or "",
            island=None if variant else waiting.island, parent_id=None if variant else waiting.parent_id,
        )  # fmt: skip
        if variant:
            return None, call_id
        if not edit or edit_status != "applied":
            self.unproductive += 1
            if edit:  # the model's answer did not apply: its arm pays, the reason goes to the next prompt
                self._reward_arm(waiting.arm, "rejected", 0.0, waiting.parent_fitness, cost)
                refused = self.refused.setdefault(waiting.island, [])
                refused.append({"status": f"edit {edit_status}", "feedback": edit["reason"], "note": ""})
                del refused[:-FAILURES_IN_PROMPT]
                self.store.update_proposer_stats(llm.name, waiting.island, f"edit_{edit_status}", False)
            return None, call_id
        note = f"{_said(call.get('text') or '')} ({edit['mode']}, {edit['edits']} edit(s), {llm.model})"
        proposal = Proposal(
            source=edit["source"], parent_ids=(waiting.parent_id,), proposer=llm.name, note=note,
            model=llm.model, template=waiting.template,
        )  # fmt: skip
        return proposal, call_id

    def take_unproductive(self) -> int:
        """Answers (or failed calls) that became no child since the last call: the controller counts
        them as barren proposals, so a model whose edits never apply cannot keep a run calling forever."""
        n, self.unproductive = self.unproductive, 0
        return n

    def _failures(self, island: int) -> list[dict]:
        """The island's recent failed children (the judge's feedback) and refused edits, newest last."""
        rows = self.store.recent_failures(island, FAILURES_IN_PROMPT)
        return (rows + self.refused.get(island, []))[-FAILURES_IN_PROMPT:]

    # ------------------------------------------------------------------ rewards
    def proposed(
        self, cid: int, arm: str, parent_fitness: float, cost: float = 0.0, family: str = ""
    ) -> None:
        """A child of `arm` entered the run: its verdict will reward the arm, and the arm's `family` (the
        proposal's `template`: the transformation family that made it) when the arm has families."""
        self.rewards[cid] = (arm, family if arm in self.families else "", parent_fitness, cost)

    def judged(self, cid: int, status: str, fitness: float, source: str = "") -> list[Proposal]:
        """A new candidate's verdict (as the controller admits it): reward its arm and save the bandit;
        an ok LLM child first gets up to SWEEPS constant sweeps (returned: the controller adds them as its
        children and says which became candidates, `swept`), and its arm is rewarded by the best of the
        child and its sweeps once they are judged: a good idea is not lost to a bad constant."""
        if cid in self.sweep_of:
            child = self.sweep_of.pop(cid)
            group = self.groups[child]
            group["left"].discard(cid)
            if status == "ok":
                group["best"] = max(group["best"], fitness)
            self.settle(child)
            return []
        if cid not in self.rewards:
            return []
        arm, family, parent_fitness, cost = self.rewards.pop(cid)
        variants = (
            sweeps(source, SWEEPS, random.Random(cid)) if status == "ok" and arm.startswith("llm:") else []
        )
        if not variants:
            with self.store.transaction():  # the arm and its family are paid together, even at a kill
                if family and family in self.families[arm].arms:
                    self.families[arm].update(family, reward(status, fitness, parent_fitness))
                    self.store.save_bandit(f"{FAMILIES}{arm}", self.families[arm].to_dict())
                self._reward_arm(arm, status, fitness, parent_fitness, cost)
            return []
        self.groups[cid] = {
            "arm": arm,
            "parent": parent_fitness,
            "cost": cost,
            "best": fitness,
            "left": set(),
        }
        model = arm.split("|")[0].removeprefix("llm:")
        return [Proposal(src, (cid,), "sweep", note, model=model) for src, note in variants]

    def swept(self, child: int, sweep: int | None) -> None:
        """One of `child`'s sweeps became candidate `sweep` (None: a duplicate, judged already)."""
        if sweep is not None:
            self.groups[child]["left"].add(sweep)
            self.sweep_of[sweep] = child

    def settle(self, child: int) -> None:
        """Reward the LLM arm of `child` once none of its sweeps is waiting for a verdict."""
        group = self.groups.get(child)
        if group is not None and not group["left"]:
            del self.groups[child]
            self._reward_arm(group["arm"], "ok", group["best"], group["parent"], group["cost"])

    def _reward_arm(self, arm: str, status: str, fitness: float, parent_fitness: float, cost: float) -> None:
        if arm not in self.bandit.arms:
            return
        value = reward(status, fitness, parent_fitness, cost_usd=cost, cost_weight=COST_WEIGHT)
        self.bandit.update(arm, value, cost)
        self.store.save_bandit(BANDIT_KEY, self.bandit.to_dict())

    # ------------------------------------------------------------------ lessons
    def maybe_distil(self, evaluated: int) -> None:
        """Every LESSONS_EVERY evaluations (with LLM proposers: only prompts read them), distil the run's
        outcomes into a new version of the lessons (evolve/meta/lessons.py), kept in the store."""
        if not self.llms or evaluated - self.distilled_at < LESSONS_EVERY:
            return
        self.distilled_at = evaluated
        latest = self.store.latest_lessons()
        outcomes = self.store.outcomes(self.backend)
        lessons = distil(outcomes, (latest["version"] + 1) if latest else 1)
        self.store.add_lessons(lessons.version, lessons.evaluations, lessons.text)

    # ------------------------------------------------------------------ display
    def state(self) -> str:
        """The live line's LLM part: calls, tokens, cost, and each proposer's state."""
        if not self.llms:
            return ""
        states = "; ".join(p.state() for p in self.llms.values())
        return f"llm calls {self.calls}, {self.tokens} tokens, ${self.cost:.4f}; {states}"

    def shutdown(self) -> None:
        for proposer in [*self.llms.values(), *self.remote.values()]:
            proposer.shutdown()


def _said(answer: str) -> str:
    """What the model said it changed: the first line of prose before its code (the prompts ask for one),
    cut to 120 characters; the lessons group children by it (evolve/meta/lessons.py)."""
    for line in answer.replace("\r\n", "\n").split("\n"):
        text = line.strip()
        if text.startswith(("```", "<<<<<<<")):
            break
        if text:
            return text[:120]
    return "an edit"
