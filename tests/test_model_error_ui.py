"""The model's calibration error on the user's side: ties in the leaderboard (table and --json) and the
order remeasure takes (evolve/model_error.py, evolve/ui/, evolve/cli.py)."""

import json

import pytest

from evaluators.evaluation import Evaluation, ShapeResult
from evolve import cli
from evolve.model_error import Ranked, head_group, remeasure_order, tie_flags, within_error
from evolve.store import Store
from evolve.ui import leaderboard_json, render_leaderboard

JUDGE = "J"
MODEL, GPU = "model:h100", "cuda:FAKE GPU"
SHAPE = (4096, 4096, 4096)


def modelled(fitness: float, error: float | None, status: str = "ok", stage: str = "verified") -> Evaluation:
    figure_error = None if error is None else 0.12  # one figure's error: wider than a ratio's
    shape = ShapeResult(
        SHAPE, kind="train", tflops=1000 * fitness, model_class="large", model_error=figure_error
    )
    return Evaluation(status, MODEL, fitness=fitness, fitness_kind="modelled", stage=stage, judge=JUDGE,
                      model_error=error, shapes=[shape])  # fmt: skip


def measured(fitness: float) -> Evaluation:
    return Evaluation("ok", GPU, fitness=fitness, fitness_kind="measured", stage="verified", judge=JUDGE)


def make_store(path, verdicts: list[Evaluation]) -> tuple[Store, list[int]]:
    store = Store.create(path, "r", {"name": "r"}, 0)
    ids = []
    for i, ev in enumerate(verdicts):
        cid = store.add_candidate(f"F = {i}\n", proposer="mutator", island=0, generation=i)
        store.add_evaluation(cid, ev)
        ids.append(cid)
    return store, ids


# ----------------------------------------------------------------------------------- the rule


def test_within_error_uses_the_ratio_and_the_larger_error():
    a, b = Ranked(1, 1.0, 0.10), Ranked(2, 0.91, 0.10)
    assert within_error(a, b) is True  # 0.91 >= 1.0 * 0.9
    assert within_error(a, Ranked(2, 0.89, 0.10)) is False
    assert within_error(Ranked(2, 0.89, 0.10), a) is False  # argument order does not matter
    assert within_error(a, Ranked(2, 0.89, 0.20)) is True  # the larger of the two errors
    assert within_error(a, Ranked(2, 0.99, None)) is None  # unknown, never False
    assert within_error(Ranked(1, 1.0, None), b) is None


def test_tie_flags_next_better_and_best():
    ranking = [Ranked(1, 1.0, 0.1), Ranked(2, 0.95, 0.1), Ranked(3, 0.88, 0.1), Ranked(4, 0.5, 0.1)]
    flags = tie_flags(ranking)
    assert [flags[i].within_model_error for i in (1, 2, 3, 4)] == [True, True, True, False]
    assert [flags[i].within_model_error_of_best for i in (1, 2, 3, 4)] == [True, True, False, False]


def test_tie_flags_unknown_and_lone():
    flags = tie_flags([Ranked(1, 1.0, 0.1), Ranked(2, 0.99, None), Ranked(3, 0.2, 0.1)])
    assert flags[2].within_model_error is None and flags[2].within_model_error_of_best is None
    assert flags[1].within_model_error is None  # its runner-up's error is unknown
    assert flags[1].within_model_error_of_best is None  # no known tie, one unknown
    assert flags[3].within_model_error is None and flags[3].within_model_error_of_best is False
    assert tie_flags([Ranked(1, 1.0, 0.1)])[1].within_model_error is False
    assert tie_flags([Ranked(1, 1.0, None)])[1].within_model_error is None
    assert tie_flags([]) == {}


# ------------------------------------------------------------------------- the remeasure order


def test_head_group_chains_ties_and_the_rest_follows_in_rank_order():
    ranking = [Ranked(1, 0.90, 0.1), Ranked(2, 0.85, 0.01), Ranked(3, 0.83, 0.1), Ranked(4, 0.76, 0.1),
               Ranked(5, 0.60, 0.1), Ranked(6, 0.45, 0.6)]  # fmt: skip
    # 2 ties 1 (0.85 >= 0.81); 3 ties 1; 4 ties 3 (0.76 >= 0.747) though not 1; 5 ties none;
    # 6 ties the best through its own wide error (0.45 >= 0.9 * 0.4), past 5 in rank
    head, order = remeasure_order(ranking)
    assert head == [1, 2, 3, 4, 6]
    assert order == [1, 2, 3, 4, 6, 5]


def test_head_group_without_ties_or_errors_is_the_best_alone():
    assert head_group([Ranked(1, 1.0, 0.05), Ranked(2, 0.5, 0.05)]) == [1]
    unknown = [Ranked(1, 1.0, None), Ranked(2, 0.999, None), Ranked(3, 0.99, 0.1)]
    assert head_group(unknown) == [1]  # an unknown error never ties by default
    assert remeasure_order(unknown) == ([1], [1, 2, 3])
    assert head_group([]) == []


# ------------------------------------------------------------------------- the leaderboard


@pytest.fixture
def board(tmp_path):
    verdicts = [
        modelled(0.30, 0.10),  # the best
        modelled(0.28, 0.10),  # within 10% of it
        modelled(0.20, 0.10),  # beyond
        modelled(0.19, None),  # an older or uncalibrated record
        modelled(0.50, 0.10, stage="provisional"),  # never ranked
        modelled(0.0, None, status="incorrect"),
    ]
    store, ids = make_store(tmp_path / "r" / "run.sqlite", verdicts)
    store.add_evaluation(ids[0], measured(1.30))
    store.add_evaluation(ids[1], measured(1.29))
    return store, ids


def test_leaderboard_json_flags(board):
    store, ids = board
    rows = {(r["id"], r["backend"]): r for r in leaderboard_json(store.all_evaluated(), JUDGE)}
    flag = {
        i: (rows[i, MODEL]["within_model_error"], rows[i, MODEL]["within_model_error_of_best"]) for i in ids
    }
    assert flag[ids[0]] == (True, True) and flag[ids[1]] == (True, True)
    assert flag[ids[2]] == (False, False)
    assert flag[ids[3]] == (None, None)  # no model_error: unknown, never false
    assert flag[ids[4]] == (None, None) and flag[ids[5]] == (None, None)  # not ranked
    assert rows[ids[0], MODEL]["model_error"] == 0.1 and rows[ids[3], MODEL]["model_error"] is None
    # measured rows are never within a model's error, however close
    for i in ids[:2]:
        assert rows[i, GPU]["model_error"] is None
        assert (rows[i, GPU]["within_model_error"], rows[i, GPU]["within_model_error_of_best"]) == (
            False,
            False,
        )
    assert rows[ids[0], MODEL]["shapes"][0]["model_error"] == 0.12


def test_leaderboard_json_reads_records_without_model_error(board):
    """A record stored before model errors lacks the key: model_error None, flags null."""
    store, ids = board
    old = {**modelled(0.29, None).to_dict()}
    del old["model_error"]
    cid = store.add_candidate("F = -1\n", proposer="mutator", island=0, generation=9)
    store.add_evaluation(cid, old)
    rows = {(r["id"], r["backend"]): r for r in leaderboard_json(store.all_evaluated(), JUDGE)}
    assert rows[cid, MODEL]["model_error"] is None and rows[cid, MODEL]["within_model_error"] is None
    assert next(r for r in store.top(10, MODEL, JUDGE) if r["id"] == cid)["model_error"] is None


def test_leaderboard_json_through_the_cli(board, capsys, monkeypatch):
    store, ids = board
    folder = store.path.parent
    store.close()
    monkeypatch.setattr("evolve.ui.board_data.judge_fingerprint", lambda: JUDGE)
    assert cli.main(["leaderboard", str(folder), "--json"]) == 0
    rows = {(r["id"], r["backend"]): r for r in json.loads(capsys.readouterr().out)}
    assert rows[ids[1], MODEL]["within_model_error"] is True
    assert rows[ids[2], MODEL]["within_model_error"] is False


def test_leaderboard_table_shows_the_error_and_the_tie(board):
    store, ids = board
    lines = render_leaderboard(store, 10, JUDGE).splitlines()
    by_id = {int(line.split()[1]): line for line in lines if line.split()[:1] and line.split()[0] in "-123456"
             and len(line.split()) > 1 and line.split()[1].isdigit()}  # fmt: skip
    assert " 0.3000 ±10%" in by_id[ids[0]] and "≈" not in by_id[ids[0]]
    assert " 0.2800 ±10% ≈" in by_id[ids[1]]  # within the error of the row above
    assert " 0.2000 ±10% " in by_id[ids[2]] and "≈" not in by_id[ids[2]]
    assert " 0.1900 ±? " in by_id[ids[3]]
    assert "nn:300±12%" in by_id[ids[0]]  # a figure carries its class's error of one figure
    assert "nn:190±?" in by_id[ids[3]]  # and says when its class has none
    text = "\n".join(lines)
    assert "calibration error, out of sample" in text and "not called better than each other" in text
    assert f"the model cannot tell #{ids[1]} from the best #{ids[0]}" in text
    assert f"#{ids[2]}" not in text.split("cannot tell")[1]


def test_leaderboard_table_without_errors_says_unknown(tmp_path):
    store, ids = make_store(tmp_path / "run.sqlite", [modelled(0.3, None), modelled(0.29, None)])
    text = render_leaderboard(store, 10, JUDGE)
    assert "≈" not in text and "nn:300±?" in text
    assert "the model's error of these fitness figures is unknown" in text
    header = next(line for line in text.splitlines() if "held-out" in line and "#" in line)
    assert "±model" not in header


def test_measured_leaderboard_has_no_model_notes(tmp_path):
    store, _ = make_store(tmp_path / "run.sqlite", [measured(1.2), measured(1.19)])
    text = render_leaderboard(store, 10, JUDGE)
    assert "±" not in text and "model's error" not in text and "calibration" not in text
