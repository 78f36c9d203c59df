"""evolve/remeasure.py: measure the model's top candidates, compare model vs measurement."""

import argparse
import json
from pathlib import Path

import pytest

from evaluators import load_task
from evaluators.model import calibration
from evolve import remeasure as rm
from evolve.store import Store

ROOT = Path(__file__).resolve().parents[1]
TASK = "runs/demo_cpu.toml"
MODEL, FAKE = "model:h100", "cuda:FAKE GPU"
SHAPES = [[4096, 4096, 4096], [16, 4096, 4096]]


def modelled(fitness: float, status: str = "ok", stage: str = "verified") -> dict:
    return {"status": status, "backend": MODEL, "fitness": fitness if status == "ok" else 0.0,
            "fitness_kind": "modelled", "stage": stage,
            "shapes": [{"shape": s, "layout": "nn", "kind": "train", "tflops": 1000 * fitness} for s in SHAPES]}  # fmt: skip


def fake_measure(calls: list):
    """Measured fitness = 2 * modelled (read back from the source), so the ranks agree."""

    def measure(source: str, task) -> dict:
        calls.append(source)
        fitness = float(source.split("=")[1])
        return {"status": "ok", "backend": FAKE, "fitness": 2 * fitness, "fitness_kind": "measured", "stage": "verified",
                "shapes": [{"shape": s, "layout": "nn", "kind": "train", "tflops": 500 * fitness}
                           for s in SHAPES]}  # fmt: skip

    return measure


def make_store(path: Path, fitnesses=(0.1, 0.5, 0.3, 0.9, 0.7, 0.2)) -> tuple[Store, dict[float, int]]:
    store = Store.create(path, "r", {"name": "r", "task": TASK, "timeout_s": 60.0}, 0)
    ids = {}
    for i, f in enumerate(fitnesses):
        cid = store.add_candidate(f"F={f}\n", proposer="mutator", island=0, generation=i)
        store.add_evaluation(cid, modelled(f))
        ids[f] = cid
    bad = store.add_candidate("F=0.0\n# rejected\n", proposer="mutator", island=0, generation=9)
    store.add_evaluation(bad, modelled(0.0, status="rejected"))
    return store, ids


@pytest.fixture
def task():
    return load_task(ROOT / TASK)


def test_measures_only_the_top_and_never_twice(tmp_path, task):
    store, ids = make_store(tmp_path / "run.sqlite")
    before = {r["id"]: (r["fitness"], r["shapes"]) for r in store.top(100, MODEL)}
    calls: list = []
    done = rm.remeasure(store, task, 3, fake_measure(calls))
    assert done == [ids[0.9], ids[0.7], ids[0.5]] and len(calls) == 3
    assert rm.remeasure(store, task, 3, fake_measure(calls)) == [] and len(calls) == 3
    # a larger top measures only the newcomers; the rejected candidate is never measured
    assert rm.remeasure(store, task, 100, fake_measure(calls)) == [ids[0.3], ids[0.2], ids[0.1]]
    assert rm.remeasure(store, task, 100, fake_measure(calls)) == []
    assert {r["id"]: (r["fitness"], r["shapes"]) for r in store.top(100, MODEL)} == before
    assert all(r["fitness_kind"] == "modelled" for r in store.top(100, MODEL))
    measured = store.top(100, FAKE)
    assert [r["backend"] for r in measured] == [FAKE] * 6
    assert all(r["fitness_kind"] == "measured" for r in measured)
    assert [r["id"] for r in measured] == [ids[f] for f in (0.9, 0.7, 0.5, 0.3, 0.2, 0.1)]
    cand = store.candidate(ids[0.9])
    assert sorted(e["backend"] for e in cand["evaluations"]) == [FAKE, MODEL]


def test_the_top_is_the_verified_ranking(tmp_path, task):
    """A provisional modelled verdict (the cheap checks only) is never ranked, so never in the top
    remeasure takes, whatever its fitness; the GPU verdict it stores is verified and ranked."""
    store, ids = make_store(tmp_path / "run.sqlite", fitnesses=(0.5, 0.3))
    provisional = store.add_candidate("F=0.9\n", proposer="mutator", island=0, generation=5)
    store.add_evaluation(provisional, modelled(0.9, stage="provisional"))
    assert rm.remeasure(store, task, 2, fake_measure([])) == [ids[0.5], ids[0.3]]
    assert all(r["rankable"] and r["stage"] == "verified" for r in store.top(10, FAKE))
    assert store.best(MODEL)["id"] == ids[0.5] and store.best(FAKE)["id"] == ids[0.5]


def test_rejects_a_measure_that_is_not_cuda(tmp_path, task):
    store, _ = make_store(tmp_path / "run.sqlite")
    with pytest.raises(ValueError, match="cuda"):
        rm.remeasure(store, task, 1, lambda src, t: {**modelled(0.5), "backend": "model:h100"})
    assert store.top(10, FAKE) == []


def test_no_model_backend_measures_nothing(tmp_path, task):
    store = Store.create(tmp_path / "run.sqlite", "r", {"task": TASK}, 0)
    assert rm.remeasure(store, task, 5, fake_measure([])) == []
    assert "no model:* evaluations" in rm.comparison(store).render()


def test_spearman_and_kendall():
    assert rm.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rm.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rm.spearman([1, 2], [1, 2]) is None
    assert rm.spearman([], []) is None
    assert rm.spearman([1, 1, 1], [1, 2, 3]) is None
    # ties take average ranks: x ranks (1, 2.5, 2.5, 4) against y ranks (1, 2, 3, 4)
    assert rm.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert calibration.ranks([5, 1, 5, 3]) == [3.5, 1.0, 3.5, 2.0]
    assert rm.kendall_tau([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert rm.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rm.kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / 30**0.5)  # tau-b with a tie
    assert rm.kendall_tau([1, 2], [1, 2]) is None
    with pytest.raises(ValueError):
        rm.spearman([1, 2, 3], [1, 2])


def test_comparison_table_and_json(tmp_path, task):
    store, ids = make_store(tmp_path / "run.sqlite")
    assert "nothing measured yet" in rm.comparison(store).render()
    rm.remeasure(store, task, 4, fake_measure([]))
    comp = rm.comparison(store)
    assert (comp.model_backend, comp.measured_backend, comp.pairs) == (MODEL, FAKE, 4)
    assert [r["id"] for r in comp.rows] == [ids[f] for f in (0.9, 0.7, 0.5, 0.3)]
    top = comp.rows[0]
    assert (top["modelled_fitness"], top["measured_fitness"]) == pytest.approx((0.9, 1.8))
    assert top["shapes"][0] == {"shape": SHAPES[0], "layout": "nn", "modelled_tflops": pytest.approx(900),
                                "measured_tflops": pytest.approx(450)}  # fmt: skip
    assert comp.spearman == pytest.approx(1.0) and comp.kendall_tau == pytest.approx(1.0)
    text = comp.render()
    assert "modelled (model:h100)" in text and "measured (cuda:FAKE GPU)" in text
    assert "Spearman +1.000" in text and "4096x4096x4096nn:900/450" in text
    assert json.loads(json.dumps(comp.to_dict()))["spearman"] == pytest.approx(1.0)
    assert rm.comparison(store, MODEL, "cuda:other").rows == []


def test_comparison_correlation_needs_three_ok_pairs(tmp_path, task):
    store, _ = make_store(tmp_path / "run.sqlite")
    rm.remeasure(store, task, 2, fake_measure([]))
    comp = rm.comparison(store)
    assert comp.pairs == 2 and comp.spearman is None and "n/a (needs >= 3 ok pairs)" in comp.render()


def _args(run: Path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rm.add_remeasure_parser(parser.add_subparsers(dest="command"))
    extra = [f"--{k.replace('_', '-')}" for k, v in kw.items() if v is True]
    extra += [x for k, v in kw.items() if v is not True for x in (f"--{k.replace('_', '-')}", str(v))]
    return parser.parse_args(["remeasure", str(run), *extra])


def test_parser_defaults():
    args = _args(Path("demo"))
    assert (args.run, args.top, args.json, args.compare_only) == ("demo", 10, False, False)
    assert args.model_backend is None


def test_main_without_cuda_returns_2(tmp_path, monkeypatch, capsys):
    store, _ = make_store(tmp_path / "r" / "run.sqlite")
    store.close()
    monkeypatch.setattr(rm, "_cuda_available", lambda: False)
    assert rm.main_remeasure(_args(tmp_path / "r")) == 2
    assert rm.NO_GPU in capsys.readouterr().err


def test_main_compare_only_without_cuda(tmp_path, monkeypatch, capsys, task):
    store, _ = make_store(tmp_path / "r" / "run.sqlite")
    rm.remeasure(store, task, 3, fake_measure([]))
    store.close()
    monkeypatch.setattr(rm, "_cuda_available", lambda: False)
    assert rm.main_remeasure(_args(tmp_path / "r", compare_only=True)) == 0
    out = capsys.readouterr().out
    assert "modelled (model:h100)" in out and "measured (cuda:FAKE GPU)" in out and "Spearman +1.000" in out
    assert rm.main_remeasure(_args(tmp_path / "r", compare_only=True, json=True)) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 3


def test_main_measures_with_cuda(tmp_path, monkeypatch, capsys):
    store, _ = make_store(tmp_path / "r" / "run.sqlite")
    store.close()
    calls: list = []
    monkeypatch.chdir(ROOT)  # the run's config names the task relative to the repository root
    monkeypatch.setattr(rm, "_cuda_available", lambda: True)
    monkeypatch.setattr(rm, "_cuda_measure", lambda timeout_s: fake_measure(calls))
    assert rm.main_remeasure(_args(tmp_path / "r", top=2, json=True)) == 0
    assert len(calls) == 2 and json.loads(capsys.readouterr().out)["pairs"] == 2
    assert rm.main_remeasure(_args(tmp_path / "r", top=2)) == 0 and len(calls) == 2
    assert "measured 0 new candidate(s)" in capsys.readouterr().err


def test_main_unknown_run(tmp_path, capsys):
    assert rm.main_remeasure(_args(tmp_path / "nope", compare_only=True)) == 2
    assert "no run named" in capsys.readouterr().err


def test_a_measurement_that_timed_out_is_measured_again(tmp_path, task):
    """A timeout, crash or judge error may be the machine's fault: the next remeasure retries it
    and the new verdict replaces the old; a standing verdict is never measured twice."""
    store, ids = make_store(tmp_path / "run.sqlite", fitnesses=(0.9, 0.5))
    calls: list = []
    outcomes = iter(["timeout", "judge_error", "ok", "incorrect"])

    def flaky(source, task):
        calls.append(source)
        return {**fake_measure([])(source, task), "status": next(outcomes)}

    assert rm.remeasure(store, task, 1, flaky) == [ids[0.9]]  # timeout stored
    assert rm.remeasure(store, task, 1, flaky) == [ids[0.9]]  # judge_error replaces it
    assert rm.remeasure(store, task, 1, flaky) == [ids[0.9]]  # ok replaces that
    assert rm.remeasure(store, task, 1, flaky) == [] and len(calls) == 3  # ok stands
    statuses = [e["status"] for e in store.candidate(ids[0.9])["evaluations"] if e["backend"] == FAKE]
    assert statuses == ["ok"]
    assert (
        store.retry_evaluation(ids[0.9], {**fake_measure([])("F=0.9", task), "status": "incorrect"}) is False
    )


def test_unsupported_and_judge_errors_are_judged_on_the_gpu(tmp_path, task):
    """What the CPU judge could not judge (unsupported, judge_error) was never measured: remeasure
    judges it too, after the top ok candidates, up to --unranked of them, oldest first, once."""
    store, ids = make_store(tmp_path / "run.sqlite", fitnesses=(0.9, 0.5))
    unranked = []
    for i, status in enumerate(("unsupported", "judge_error", "unsupported")):
        cid = store.add_candidate(f"# {status}\nF=0.{i + 2}\n", proposer="mutator", island=0, generation=3)
        store.add_evaluation(cid, modelled(0.0, status=status))
        unranked.append(cid)
    calls: list = []
    assert rm.remeasure(store, task, 1, fake_measure(calls), unranked=2) == [ids[0.9], *unranked[:2]]
    assert rm.remeasure(store, task, 1, fake_measure(calls)) == [unranked[2]]  # --unranked defaults to --top
    assert rm.remeasure(store, task, 5, fake_measure(calls)) == [ids[0.5]] and len(calls) == 5
    measured = {r["id"]: r for r in store.top(10, FAKE)}
    assert set(unranked) <= set(measured) and all(measured[i]["status"] == "ok" for i in unranked)
    modelled_rows = {r["id"]: r["status"] for r in store.top(10, MODEL)}
    assert [modelled_rows[i] for i in unranked] == [
        "unsupported",
        "judge_error",
        "unsupported",
    ]  # kept as judged
    comp = rm.comparison(store)
    assert comp.pairs == 2  # only ok/ok pairs are correlated
    assert "unsupported" in comp.render() and "judge_error" in comp.render()
    assert _args(Path("demo"), unranked=3).unranked == 3 and _args(Path("demo")).unranked is None


def test_a_gpu_judge_that_raises_is_that_candidates_judge_error(monkeypatch, task):
    import evaluators
    from evaluators.compat import UnsupportedEnvironment

    def broken(source, task, options):
        raise RuntimeError("injected: the GPU judge fell over")

    monkeypatch.setattr(evaluators, "evaluate", broken)
    ev = rm._cuda_measure(30.0)("F=0.5\n", task)
    assert ev["status"] == "judge_error" and ev["backend"].startswith("cuda:")
    assert (
        "injected: the GPU judge fell over" in ev["feedback"] and "not the kernel's fault" in ev["feedback"]
    )

    def unsupported(source, task, options):
        raise UnsupportedEnvironment("--device cuda needs ...")

    monkeypatch.setattr(evaluators, "evaluate", unsupported)
    with pytest.raises(UnsupportedEnvironment):  # no GPU judge here at all: the command's error
        rm._cuda_measure(30.0)("F=0.5\n", task)


def add_modelled(store: Store, errors: dict[float, float | None]) -> dict[float, int]:
    """Candidates with modelled fitness and the model's ratio error (Evaluation.model_error)."""
    ids = {}
    for i, (f, e) in enumerate(errors.items()):
        cid = store.add_candidate(f"F={f}\n", proposer="mutator", island=0, generation=i)
        store.add_evaluation(cid, {**modelled(f), "model_error": e})
        ids[f] = cid
    return ids


def test_remeasure_starts_with_what_the_model_cannot_tell_apart(tmp_path, task):
    """0.5 lies within its own wide error (50%) of the best 0.9: the model cannot tell them apart, so
    it is measured before 0.8 and 0.7, which the model ranks below the best beyond their 5% error."""
    store = Store.create(tmp_path / "run.sqlite", "r", {"name": "r", "task": TASK}, 0)
    ids = add_modelled(store, {0.9: 0.05, 0.8: 0.05, 0.7: 0.05, 0.5: 0.5})
    calls: list = []
    assert rm.remeasure(store, task, 2, fake_measure(calls)) == [ids[0.9], ids[0.5]]
    assert calls == ["F=0.9\n", "F=0.5\n"]
    assert rm.remeasure(store, task, 4, fake_measure(calls)) == [ids[0.8], ids[0.7]]
    ranking, take = rm.plan(store, MODEL, 3)
    assert take == [ids[0.9], ids[0.5], ids[0.8]] and [r.id for r in ranking][:2] == [ids[0.9], ids[0.8]]
    line = rm.describe_plan(ranking, 3)
    assert f"cannot tell #{ids[0.5]} from the best #{ids[0.9]}" in line and "measuring these first" in line


def test_remeasure_order_without_errors_is_the_rank_order(tmp_path, task):
    store = Store.create(tmp_path / "run.sqlite", "r", {"name": "r", "task": TASK}, 0)
    ids = add_modelled(store, {0.9: None, 0.8: None, 0.5: 0.5})
    assert rm.plan(store, MODEL, 3)[1] == [ids[0.9], ids[0.8], ids[0.5]]
    assert "error is unknown for the best" in rm.describe_plan(rm.plan(store, MODEL, 3)[0], 3)
    clear = Store.create(tmp_path / "clear.sqlite", "r", {"name": "r", "task": TASK}, 0)
    add_modelled(clear, {0.9: 0.01, 0.5: 0.01})
    assert "tells the best" in rm.describe_plan(rm.plan(clear, MODEL, 2)[0], 2)
    assert rm.describe_plan([], 2) == "no ranked modelled candidates to measure"


def test_a_tie_larger_than_top_is_named_with_the_fix(tmp_path, task):
    """Forty candidates within the model's error of the best: the ranking is read past `top` (and past
    its first page) to find them all, and the user is told how to measure them all."""
    store = Store.create(tmp_path / "run.sqlite", "r", {"name": "r", "task": TASK}, 0)
    add_modelled(store, {round(0.9 - 0.001 * i, 3): 0.9 for i in range(40)})
    ranking, take = rm.plan(store, MODEL, 2)
    assert len(ranking) == 40 and len(take) == 2
    assert "38 of them lie beyond --top 2: pass --top 40 to measure all" in rm.describe_plan(ranking, 2)


def test_main_says_what_it_measures_first(tmp_path, monkeypatch, capsys):
    store = Store.create(
        tmp_path / "r" / "run.sqlite", "r", {"name": "r", "task": TASK, "timeout_s": 60.0}, 0
    )
    ids = add_modelled(store, {0.9: 0.1, 0.85: 0.1, 0.3: 0.1})
    store.close()
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(rm, "_cuda_available", lambda: True)
    monkeypatch.setattr(rm, "_cuda_measure", lambda timeout_s: fake_measure([]))
    assert rm.main_remeasure(_args(tmp_path / "r", top=3)) == 0
    err = capsys.readouterr().err
    assert f"the model cannot tell #{ids[0.85]} from the best #{ids[0.9]}" in err
    assert err.index("cannot tell") < err.index("measured #")
