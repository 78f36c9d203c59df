"""The proposer bandit (evolve/meta/bandit.py): it learns the best arm, resumes exactly, scores verdicts."""

from __future__ import annotations

import json
import math
import random

import pytest

from evaluators.evaluation import STATUSES
from evolve.meta.bandit import FAILURE_PENALTY, NEUTRAL, Bandit, reward

MEANS = {"a": 0.0, "b": 0.1, "c": 0.2, "best": 0.5}


def _run(bandit: Bandit, rng: random.Random, noise: random.Random, pulls: int, means=MEANS) -> list[str]:
    """Pulls the bandit `pulls` times on arms with Gaussian rewards (sd 0.3) around `means`."""
    chosen = []
    for _ in range(pulls):
        arm = bandit.choose(rng)
        bandit.update(arm, means[arm] + noise.gauss(0.0, 0.3))
        chosen.append(arm)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pulls_concentrate_on_the_best_arm(seed):
    bandit = Bandit(list(MEANS))
    chosen = _run(bandit, random.Random(seed), random.Random(100 + seed), 500)
    share = {arm: chosen.count(arm) / len(chosen) for arm in MEANS}
    assert share["best"] > 0.6, share
    assert share["a"] < 0.15, share
    assert sum(s.pulls for s in bandit.stats()) == 500


def test_stats_report_pulls_means_and_costs():
    bandit = Bandit(["x", "y"])
    bandit.update("x", 0.5, cost_usd=0.01)
    bandit.update("x", -0.1, cost_usd=0.02)
    stats = {s.arm: s for s in bandit.stats()}
    assert stats["x"].pulls == 2 and stats["x"].mean_reward == pytest.approx(0.2)
    assert stats["x"].total_cost == pytest.approx(0.03)
    assert (stats["y"].pulls, stats["y"].mean_reward, stats["y"].total_cost) == (0, 0.0, 0.0)


def test_round_trip_continues_identically():
    straight, rng_a, noise_a = Bandit(list(MEANS)), random.Random(7), random.Random(8)
    _run(straight, rng_a, noise_a, 60)
    state = json.loads(json.dumps(straight.to_dict()))  # what the store keeps
    resumed = Bandit.from_dict(state)
    rng_b, noise_b = random.Random(), random.Random()
    rng_b.setstate(rng_a.getstate())
    noise_b.setstate(noise_a.getstate())
    assert _run(resumed, rng_b, noise_b, 100) == _run(straight, rng_a, noise_a, 100)
    assert resumed.stats() == straight.stats()


def test_from_dict_refuses_malformed_state():
    with pytest.raises(ValueError, match="format"):
        Bandit.from_dict({"arms": []})
    with pytest.raises(ValueError, match="malformed arm row"):
        Bandit.from_dict({"format": 1, "arms": [{"arm": "x"}]})
    with pytest.raises(ValueError, match="negative or non-finite"):
        Bandit.from_dict(
            {"format": 1, "arms": [{"arm": "x", "weight": 1, "pulls": 1, "mean": 0, "m2": -1, "cost": 0}]}
        )


def test_unpulled_arms_come_first_and_a_late_arm_is_tried():
    bandit, rng = Bandit(["a", "b", "c"]), random.Random(0)
    first = []
    for _ in range(3):
        first.append(bandit.choose(rng))
        bandit.update(first[-1], 0.3)
    assert first == ["a", "b", "c"]
    _run(bandit, rng, random.Random(1), 100, {"a": 0.3, "b": 0.0, "c": 0.0})
    bandit.add_arm("new")
    assert bandit.choose(rng) == "new"
    bandit.update("new", 0.0)
    assert {s.arm: s.pulls for s in bandit.stats()}["new"] == 1


def test_weights_bias_early_pulls_but_not_forever():
    # Equal arms: the heavier one gets more of the first 20 pulls (averaged over 40 seeds) than the
    # same arm with weight 1 does on the same seeds.
    def early_share(weight: float) -> float:
        shares = []
        for seed in range(40):
            bandit = Bandit({"heavy": weight, "light": 1.0})
            chosen = _run(
                bandit, random.Random(seed), random.Random(50 + seed), 20, {"heavy": 0.1, "light": 0.1}
            )
            shares.append(chosen.count("heavy") / len(chosen))
        return sum(shares) / len(shares)

    weighted, unweighted = early_share(4.0), early_share(1.0)
    assert weighted > 0.6 and unweighted < 0.55, (weighted, unweighted)
    # Unpulled: highest weight first, whatever the order of adding.
    assert Bandit({"light": 1.0, "heavy": 4.0}).choose(random.Random(0)) == "heavy"
    # The heavier arm is worse: real rewards overrule the weight.
    chosen = _run(
        Bandit({"heavy": 4.0, "light": 1.0}),
        random.Random(3),
        random.Random(4),
        300,
        {"heavy": 0.0, "light": 0.3},
    )
    assert chosen[-100:].count("light") > 80


def test_errors_name_the_problem():
    bandit = Bandit(["x"])
    with pytest.raises(KeyError, match="add_arm"):
        bandit.update("nope", 0.1)
    with pytest.raises(ValueError, match="finite"):
        bandit.update("x", math.nan)
    with pytest.raises(ValueError, match="weight"):
        bandit.add_arm("y", 0.0)
    with pytest.raises(ValueError, match="no arms"):
        Bandit().choose(random.Random(0))


def test_reward_for_each_status():
    assert reward("ok", 2.0, 1.0) == pytest.approx(math.log(2.0))
    assert reward("ok", 0.5, 1.0) == pytest.approx(-math.log(2.0))
    assert reward("ok", 100.0, 1.0) == 1.0 and reward("ok", 0.01, 1.0) == -1.0  # clipped
    assert reward("ok", 1.0, 0.0) == 0.0  # no parent fitness: no ratio
    for status in ("rejected", "compile_error", "incorrect", "timeout", "crashed"):
        assert reward(status, 0.0, 1.0) == FAILURE_PENALTY == -0.5
    for status in ("unsupported", "judge_error"):
        assert reward(status, 0.0, 1.0) == NEUTRAL == 0.0
    assert {s for s in STATUSES if s != "ok"} == {
        "rejected",
        "compile_error",
        "incorrect",
        "timeout",
        "crashed",
        "unsupported",
        "judge_error",
    }
    assert reward("ok", 2.0, 1.0, cost_usd=0.1, cost_weight=2.0) == pytest.approx(math.log(2.0) - 0.2)
    assert reward("judge_error", 0.0, 1.0, cost_usd=0.5, cost_weight=1.0) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="unknown status"):
        reward("fine", 1.0, 1.0)
    with pytest.raises(ValueError, match="cost"):
        reward("ok", 1.0, 1.0, cost_usd=-1.0)


def test_choose_among_pulls_only_the_arms_allowed_now():
    bandit = Bandit(["a", "b", "c"])
    rng = random.Random(0)
    for arm in ("a", "b", "c"):
        bandit.update(arm, 0.5 if arm == "a" else 0.0)
    picks = {bandit.choose(rng, among=["b", "c"]) for _ in range(50)}
    assert picks <= {"b", "c"} and picks
    assert bandit.choose(rng, among=["c"]) == "c"
    with pytest.raises(ValueError, match="no arm to choose from"):
        bandit.choose(rng, among=[])
