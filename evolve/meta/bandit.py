"""A Thompson-sampling bandit over proposing arms (proposers, models, prompt templates, edit modes).

An arm is a string such as "llm:gpt-4o|default|diff" or "mutator:tiles". Each arm's mean reward has a
Normal-Gamma posterior (unknown mean and unknown variance), so an arm whose rewards are noisy is
explored longer than one whose rewards agree. `choose` draws one plausible mean per arm from its
posterior and returns the arm with the largest draw (Thompson sampling: Thompson 1933; Russo, Van Roy
et al., "A Tutorial on Thompson Sampling", 2018, section 3).

Posterior (Murphy, "Conjugate Bayesian analysis of the Gaussian distribution", 2007, section 3,
eqs. 85-89), prior NG(mu0, kappa0, alpha0, beta0) and n rewards with mean m and sum of squared
deviations s2:
    kappa_n = kappa0 + n
    mu_n    = (kappa0 * mu0 + n * m) / kappa_n
    alpha_n = alpha0 + n / 2
    beta_n  = beta0 + s2 / 2 + kappa0 * n * (m - mu0)**2 / (2 * kappa_n)
A draw: precision tau ~ Gamma(shape alpha_n, rate beta_n), then mean ~ Normal(mu_n, 1 / (kappa_n * tau)).

Arms never pulled are tried first (highest weight first, then in the order they were added), so an arm
added during a run (a new prompt variant) gets a pull at once. A configured weight w sets the arm's
prior mean mu0 = WEIGHT_PRIOR * ln(w): it counts as PRIOR_PULLS pseudo-pulls, so it biases the first
pulls and fades as real rewards accumulate (its share of mu_n is kappa0 / (kappa0 + n)).

State is plain numbers (Welford running mean and squared deviations), so `to_dict` is JSON-safe and
`Bandit.from_dict(bandit.to_dict())` continues exactly where the original stopped.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Mapping

from evaluators.evaluation import STATUSES

# Reward of an ok child: log(child / parent) clipped to [-RATIO_CLIP, RATIO_CLIP]. A log ratio treats a
# 2x speed-up and a 2x slow-down symmetrically; the clip (e = 2.7x either way) stops one lucky child
# (or a parent measured on a bad day) from dominating an arm's mean.
RATIO_CLIP = 1.0
# A child the judge refused (it failed to compile, gave wrong results, broke a static rule, crashed or
# hung) wasted a judge slot and taught the search nothing. Half the worst ok reward: an arm that fails
# often ranks below one that makes slightly slower kernels, yet one real improvement (up to +1) still
# pays for a couple of failures, so bold arms are not starved.
FAILURE_PENALTY = -0.5
# The judge's own limits are not the arm's fault: `unsupported` (the CPU backend cannot run what the
# child uses; a GPU may) and `judge_error` (the judge failed) earn nothing either way.
NEUTRAL = 0.0
# An ok child whose parent had no fitness (a first kernel written from scratch) has no ratio to score.
NO_PARENT_REWARD = 0.0

STATUS_REWARD: dict[str, float | None] = {  # None: computed from the fitness ratio
    "ok": None,
    "rejected": FAILURE_PENALTY,
    "compile_error": FAILURE_PENALTY,
    "incorrect": FAILURE_PENALTY,
    "timeout": FAILURE_PENALTY,
    "crashed": FAILURE_PENALTY,
    "unsupported": NEUTRAL,
    "judge_error": NEUTRAL,
}
assert set(STATUS_REWARD) == set(STATUSES), "every judge status needs a reward (evaluators/evaluation.py)"

# Prior (Normal-Gamma). Rewards live in about [-1, 1]; typical ones are a few tenths.
PRIOR_PULLS = 2.0  # kappa0: the prior mean counts as two pulls, so two real rewards outweigh it
PRIOR_ALPHA = 2.0  # alpha0 > 1 so the prior variance beta0 / (alpha0 - 1) is finite
PRIOR_BETA = 0.1  # beta0: prior reward variance 0.1 (sd ~0.3), the spread between a failure and a gain
# Prior mean per e-fold of weight: weight 2 -> +0.10, weight 4 -> +0.21 (about one good child's reward),
# clipped so that no configured weight outlasts a handful of real pulls.
WEIGHT_PRIOR = 0.15
MAX_PRIOR_MEAN = 0.3
FORMAT = 1  # to_dict layout; from_dict refuses others


def reward(
    status: str, child_fitness: float, parent_fitness: float, cost_usd: float = 0.0, cost_weight: float = 0.0
) -> float:
    """The reward an arm earns for one child.

    ok: log(child_fitness / parent_fitness) clipped to [-RATIO_CLIP, RATIO_CLIP] (improvement positive;
    NO_PARENT_REWARD when parent_fitness is not > 0). rejected, compile_error, incorrect, timeout,
    crashed: FAILURE_PENALTY. unsupported, judge_error: NEUTRAL. Then minus cost_weight * cost_usd
    (what the proposal cost, e.g. an LLM call; cost_weight is reward per dollar).
    Raises ValueError for an unknown status or a negative or non-finite cost."""
    if status not in STATUS_REWARD:
        raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
    if not (math.isfinite(cost_usd) and cost_usd >= 0 and math.isfinite(cost_weight) and cost_weight >= 0):
        raise ValueError(f"cost_usd ({cost_usd}) and cost_weight ({cost_weight}) must be finite and >= 0")
    fixed = STATUS_REWARD[status]
    if fixed is not None:
        base = fixed
    elif not (math.isfinite(parent_fitness) and parent_fitness > 0):
        base = NO_PARENT_REWARD
    elif not (math.isfinite(child_fitness) and child_fitness > 0):
        base = -RATIO_CLIP  # an ok verdict without a fitness is as bad as the clip allows
    else:
        base = max(-RATIO_CLIP, min(RATIO_CLIP, math.log(child_fitness / parent_fitness)))
    return base - cost_weight * cost_usd


@dataclasses.dataclass(frozen=True)
class ArmStats:
    """One arm's record. arm: its name. pulls: rewards received. mean_reward: their mean (0.0 before
    any). total_cost: dollars spent through it (the cost_usd passed to update)."""

    arm: str
    pulls: int
    mean_reward: float
    total_cost: float


@dataclasses.dataclass
class _Arm:
    weight: float
    prior_mean: float
    pulls: int = 0
    mean: float = 0.0  # Welford running mean of the rewards
    m2: float = 0.0  # Welford sum of squared deviations from the mean
    cost: float = 0.0


class Bandit:
    """Thompson sampling over string arms with a Normal-Gamma posterior per arm (module docstring)."""

    def __init__(self, arms: Mapping[str, float] | Iterable[str] = ()) -> None:
        """arms: names (weight 1) or a mapping name -> weight (> 0; higher is tried earlier and
        favoured for the first pulls)."""
        self._arms: dict[str, _Arm] = {}
        items = arms.items() if isinstance(arms, Mapping) else ((a, 1.0) for a in arms)
        for arm, weight in items:
            self.add_arm(arm, weight)

    @property
    def arms(self) -> list[str]:
        """Arm names in the order they were added."""
        return list(self._arms)

    def add_arm(self, arm: str, weight: float = 1.0) -> None:
        """Adds an arm (a no-op when it exists: its record and weight stay). Raises ValueError for an
        empty name or a weight that is not a finite number > 0."""
        if not isinstance(arm, str) or not arm:
            raise ValueError(f"an arm is a non-empty string, got {arm!r}")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"arm {arm!r}: weight must be a finite number > 0, got {weight!r}")
        if arm in self._arms:
            return
        prior = max(-MAX_PRIOR_MEAN, min(MAX_PRIOR_MEAN, WEIGHT_PRIOR * math.log(weight)))
        self._arms[arm] = _Arm(weight=float(weight), prior_mean=prior)

    def choose(self, rng: random.Random, among: Iterable[str] | None = None) -> str:
        """The arm to pull next: an unpulled arm if any (highest weight, then earliest added), else the
        arm with the largest posterior draw (ties: earliest added). Deterministic given rng's state.
        `among`: only these arms may be pulled now (e.g. an LLM arm at its concurrency is not)."""
        if not self._arms:
            raise ValueError("the bandit has no arms; add_arm one first")
        allowed = None if among is None else set(among)
        arms = {n: a for n, a in self._arms.items() if allowed is None or n in allowed}
        if not arms:
            raise ValueError(f"no arm to choose from: none of {sorted(self._arms)} is in `among`")
        unpulled = [(-a.weight, i, name) for i, (name, a) in enumerate(arms.items()) if a.pulls == 0]
        if unpulled:
            return min(unpulled)[2]
        best, best_draw = "", -math.inf
        for name, a in arms.items():
            draw = self._draw(a, rng)
            if draw > best_draw:
                best, best_draw = name, draw
        return best

    @staticmethod
    def _draw(a: _Arm, rng: random.Random) -> float:
        """One sample of the arm's mean reward from its Normal-Gamma posterior (module docstring)."""
        kappa = PRIOR_PULLS + a.pulls
        mu = (PRIOR_PULLS * a.prior_mean + a.pulls * a.mean) / kappa
        alpha = PRIOR_ALPHA + a.pulls / 2
        beta = PRIOR_BETA + a.m2 / 2 + PRIOR_PULLS * a.pulls * (a.mean - a.prior_mean) ** 2 / (2 * kappa)
        tau = rng.gammavariate(alpha, 1.0 / beta)  # random.gammavariate takes a scale, not a rate
        return rng.gauss(mu, 1.0 / math.sqrt(kappa * tau))

    def update(self, arm: str, reward: float, cost_usd: float = 0.0) -> None:
        """Records one reward (e.g. from `reward()`) and what the pull cost. Raises KeyError for an
        unknown arm and ValueError for a non-finite reward or a negative cost."""
        if arm not in self._arms:
            raise KeyError(f"unknown arm {arm!r}; add_arm({arm!r}) before updating it")
        if not math.isfinite(reward):
            raise ValueError(f"arm {arm!r}: reward must be finite, got {reward!r}")
        if not (math.isfinite(cost_usd) and cost_usd >= 0):
            raise ValueError(f"arm {arm!r}: cost_usd must be finite and >= 0, got {cost_usd!r}")
        a = self._arms[arm]
        a.pulls += 1
        delta = reward - a.mean
        a.mean += delta / a.pulls
        a.m2 += delta * (reward - a.mean)
        a.cost += cost_usd

    def stats(self) -> list[ArmStats]:
        """Every arm's record, in the order the arms were added."""
        return [ArmStats(name, a.pulls, a.mean, a.cost) for name, a in self._arms.items()]

    def to_dict(self) -> dict:
        """JSON-safe state (plain str, int and float); `Bandit.from_dict` continues it exactly."""
        return {
            "format": FORMAT,
            "arms": [
                {
                    "arm": name,
                    "weight": a.weight,
                    "pulls": a.pulls,
                    "mean": a.mean,
                    "m2": a.m2,
                    "cost": a.cost,
                }
                for name, a in self._arms.items()
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Bandit:
        """The bandit `to_dict` described. Raises ValueError naming what is wrong with d."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(
                f"bandit state has format {got!r}, expected {FORMAT}; was it written by to_dict?"
            )
        bandit = cls()
        for row in d.get("arms", []):
            try:
                bandit.add_arm(row["arm"], row["weight"])
                a = bandit._arms[row["arm"]]
                a.pulls, a.mean, a.m2, a.cost = (
                    int(row["pulls"]),
                    float(row["mean"]),
                    float(row["m2"]),
                    float(row["cost"]),
                )
            except (KeyError, TypeError) as e:
                raise ValueError(f"bandit state: malformed arm row {row!r} ({type(e).__name__}: {e})") from e
            if a.pulls < 0 or a.m2 < 0 or a.cost < 0 or not all(map(math.isfinite, (a.mean, a.m2, a.cost))):
                raise ValueError(f"bandit state: arm row {row!r} has negative or non-finite figures")
        return bandit
