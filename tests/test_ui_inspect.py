"""Inspecting a run through the CLI (evolve/ui/, evolve/cli.py): the leaderboard's filters, CSV and JSON,
`evolve show`, `diff` and `lineage`, their errors, and the live display; on a store built directly
(no Ray, no judge), read while its writer still holds it open."""

import csv
import io
import json

import pytest
from rich.console import Console

from evaluators.evaluation import Evaluation, ShapeResult
from evaluators.fingerprint import judge_fingerprint
from evolve import cli
from evolve.controller import Progress
from evolve.store import Store
from evolve.ui import LiveDisplay, diff_text, status_line

MODEL, GPU = "model:h100", "cuda:FAKE GPU"
BIG, SKINNY, HELD = (4096, 4096, 4096), (16, 4096, 4096), (8192, 8192, 1024)
JUDGE = judge_fingerprint()
FEEDBACK = "shape (16, 4096, 4096): max error 3.2e-01 > tolerance [x] :warning:" + " much detail" * 20
ANSWER = "Swizzle the program ids for L2 reuse.\n```python\nreturn 3\n```"


def modelled(
    fitness: float, big: float, skinny: float, status: str = "ok", stage: str = "verified"
) -> Evaluation:
    shapes = [
        ShapeResult(BIG, kind="train", tflops=big, model_error=0.12, max_scaled_err=2e-4, tolerance=1e-2),
        ShapeResult(SKINNY, kind="train", tflops=skinny, model_error=None, max_scaled_err=5e-4),
        ShapeResult(HELD, kind="held_out", tflops=big * 0.8),
    ]
    ok = status == "ok"
    return Evaluation(status, MODEL, fitness=fitness if ok else 0.0, fitness_kind="modelled", stage=stage,
                      judge=JUDGE, model_error=0.05, shapes=shapes if ok else [], held_out=fitness * 0.9 if ok else None,
                      feedback="" if ok else FEEDBACK)  # fmt: skip


def measured(fitness: float) -> Evaluation:
    shape = ShapeResult(
        BIG, kind="train", time_s=1e-3 / fitness, torch_time_s=1e-3, speedup=fitness, tflops=137.4
    )
    return Evaluation("ok", GPU, fitness=fitness, fitness_kind="measured", stage="verified", judge=JUDGE,
                      shapes=[shape], held_out=fitness - 0.1)  # fmt: skip


def source(i: int) -> str:
    return f"import triton\n\n\ndef matmul(a, b):\n    x = {i}\n    return a\n"


@pytest.fixture
def run(tmp_path, monkeypatch):
    """runs/demo: #1 seed, #2 mutator (best fitness), #3 an LLM's (best on the skinny shape, and measured
    best), #4 incorrect, #5 pending (a killed run's), #6 provisional. The writer stays open throughout."""
    monkeypatch.chdir(tmp_path)
    store = Store.create(tmp_path / "runs" / "demo" / "run.sqlite", "demo", {"name": "demo"}, 0)
    ids = {}
    ids[1] = store.add_candidate(
        source(1), proposer="seed", island=0, generation=0, note="seed kernels/seeds/a.py"
    )
    ids[2] = store.add_candidate(source(2), parent_ids=[1], proposer="mutator", island=0, generation=1,
                                 note="BLOCK_M 64 -> 128", niche=[2, "big"])  # fmt: skip
    ids[3] = store.add_candidate(source(3), parent_ids=[2, 1], proposer="llm:gpt-4o", model="gpt-4o",
                                 template="default", island=1, generation=2, note="swizzle the grid")  # fmt: skip
    ids[4] = store.add_candidate(
        source(4), parent_ids=[3], proposer="mutator", island=1, generation=3, note="num_warps 8"
    )
    ids[5] = store.add_candidate(source(5), parent_ids=[3], proposer="mutator", island=1, generation=3,
                                 note="num_stages 4", pending=True)  # fmt: skip
    ids[6] = store.add_candidate(
        source(6), parent_ids=[2], proposer="mutator", island=0, generation=2, note="BLOCK_K 64"
    )
    assert ids == {i: i for i in range(1, 7)}
    store.add_evaluation(1, modelled(0.20, 200, 20))
    store.add_evaluation(2, modelled(0.30, 300, 10))
    store.add_evaluation(3, modelled(0.28, 280, 50))
    store.add_evaluation(4, modelled(0.0, 0, 0, status="incorrect"))
    store.add_evaluation(6, modelled(0.50, 500, 60, stage="provisional"))
    store.add_evaluation(1, measured(1.00))
    store.add_evaluation(3, measured(1.25))
    call = store.add_llm_call(proposer="llm:gpt-4o", model="gpt-4o", template="default", status="ok",
                              edit_status="applied", prompt_tokens=1200, completion_tokens=300, cost=0.0123,
                              latency_s=2.5, error="", answer=ANSWER, island=1, parent_id=2)  # fmt: skip
    store.set_llm_call_candidate(call, 3)
    yield store
    store.close()


def evolve(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def table_rows(out: str) -> dict[int, list[str]]:
    """The leaderboard's rows by candidate id: each line whose first cell is a rank or "-"."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) > 6 and (cells[0].isdigit() or cells[0] == "-") and cells[1].isdigit():
            rows[int(cells[1])] = cells
    return rows


# ----------------------------------------------------------------------------------- leaderboard


def test_leaderboard_table_ranks_the_default_backend_only(run, capsys):
    code, out, _ = evolve(capsys, "leaderboard", "demo")
    assert code == 0
    assert "ranking on model:h100 (fitness MODELLED" in out and GPU not in out.split("ranking on")[1]
    rows = table_rows(out)
    assert [rows[i][0] for i in (2, 3, 1)] == ["1", "2", "3"]  # by fitness
    assert rows[4][0] == "-" and rows[4][5] == "incorrect" and rows[6][5:7] == ["ok,", "provisional"]
    assert 5 not in rows  # pending: no verdict yet
    assert rows[3][4] == "llm:gpt-4o" and rows[2][4] == "mutator"  # proposer (its name says the model)
    assert "0.2520" in rows[3] and "5.0e-04" in rows[3]  # held-out, max error
    assert "2/big" in rows[2] and "4096x4096x4096nn:300±12%" in rows[2] and "16x4096x4096nn:10±?" in rows[2]
    header = next(line for line in out.splitlines() if line.split()[:2] == ["#", "id"])
    assert header.index("fitness") < header.index("held-out") < header.index("max err")


def test_leaderboard_measured_backend_shows_speedups_and_never_the_modelled(run, capsys):
    code, out, _ = evolve(capsys, "leaderboard", "demo", "--backend", GPU)
    assert code == 0 and f"ranking on {GPU} (fitness measured" in out
    rows = table_rows(out)
    assert set(rows) == {1, 3} and rows[3][0] == "1" and rows[1][0] == "2"
    assert "4096x4096x4096nn:1.25x" in rows[3] and "1.1500" in rows[3]  # speedup, held-out
    assert "MODELLED" not in out and "±" not in out


def test_leaderboard_filters_hide_rows_and_keep_the_ranks(run, capsys):
    _, out, _ = evolve(capsys, "leaderboard", "demo", "--proposer", "llm")
    rows = table_rows(out)
    assert set(rows) == {3} and rows[3][0] == "2"  # still #2 on the whole backend
    assert "filtered: proposer llm*; 1 of 5 rows shown" in out
    _, out, _ = evolve(capsys, "leaderboard", "demo", "--status", "incorrect")
    rows = table_rows(out)
    assert set(rows) == {4}
    assert "max error 3.2e-01" not in out  # feedback belongs to `evolve show`, not the table
    _, out, _ = evolve(capsys, "leaderboard", "demo", "--status", "ok", "--proposer", "mutator", "--top", "1")
    assert set(table_rows(out)) == {2}
    _, out, _ = evolve(capsys, "leaderboard", "demo", "--proposer", "nobody")
    assert "no row on model:h100 matches proposer nobody*" in out


def test_leaderboard_shape_ranks_by_that_shapes_figure(run, capsys):
    code, out, _ = evolve(capsys, "leaderboard", "demo", "--shape", "16x4096x4096")
    assert code == 0 and "ranked by the TFLOP/s (modelled) on 16x4096x4096" in out
    rows = table_rows(out)
    assert [rows[i][0] for i in (3, 1, 2)] == ["1", "2", "3"]  # 50, 20, 10 TFLOP/s there
    assert rows[3][-1] == "50±?" and rows[6][0] == "-"  # provisional: shown, never ranked
    assert "±model" not in out  # the fitness's tie marks do not apply to a shape's ranking
    _, out, _ = evolve(capsys, "leaderboard", "demo", "--shape", "(8192, 8192, 1024)")  # a held-out shape
    assert table_rows(out)[2][0] == "1"


def test_leaderboard_csv(run, capsys):
    code, out, _ = evolve(capsys, "leaderboard", "demo", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 7  # every verdict on both backends
    by = {(int(r["id"]), r["backend"]): r for r in rows}
    assert by[3, MODEL]["rank"] == "2" and by[3, GPU]["rank"] == "1" and by[4, MODEL]["rank"] == ""
    assert float(by[3, MODEL]["4096x4096x4096nn"]) == 280 and float(by[3, MODEL]["16x4096x4096nn"]) == 50
    assert float(by[3, GPU]["4096x4096x4096nn"]) == 1.25  # measured: the speedup
    assert by[3, MODEL]["proposer"] == "llm:gpt-4o" and by[3, MODEL]["model"] == "gpt-4o"
    assert by[2, MODEL]["niche"] == "2/big" and by[6, MODEL]["stage"] == "provisional"
    assert by[4, MODEL]["feedback"] == FEEDBACK  # quoted, one record
    _, out, _ = evolve(capsys, "leaderboard", "demo", "--csv", "--backend", GPU, "--top", "1")
    assert [(r["id"], r["backend"]) for r in csv.DictReader(io.StringIO(out))] == [("3", GPU)]


def test_leaderboard_json_keeps_its_fields_and_filters(run, capsys):
    _, out, _ = evolve(capsys, "leaderboard", "demo", "--json")
    rows = json.loads(out)
    assert len(rows) == 7 and all(
        {"proposer", "model", "rank", "held_out", "within_model_error"} <= set(r) for r in rows
    )
    by = {(r["id"], r["backend"]): r for r in rows}
    assert by[2, MODEL]["rank"] == 1 and by[6, MODEL]["rank"] is None and by[3, MODEL]["model"] == "gpt-4o"
    assert by[3, MODEL]["max_scaled_err"] == 5e-4
    _, out, _ = evolve(capsys, "leaderboard", "demo", "--json", "--shape", "16x4096x4096", "--top", "2")
    rows = json.loads(out)
    model = [(r["id"], r["shape_rank"], r["shape_figure"]) for r in rows if r["backend"] == MODEL]
    assert model == [(3, 1, 50.0), (1, 2, 20.0)]
    _, out, _ = evolve(capsys, "leaderboard", "demo", "--json", "--proposer", "seed")
    assert {r["id"] for r in json.loads(out)} == {1}


def test_leaderboard_errors_name_what_exists(run, capsys):
    code, _, err = evolve(capsys, "leaderboard", "nope")
    assert code == 2 and "no run named 'nope'" in err and "demo" in err
    code, _, err = evolve(capsys, "leaderboard", "demo", "--backend", "cuda:OTHER")
    assert code == 2 and "no verdict on backend 'cuda:OTHER' in run demo" in err
    assert f"{MODEL} (5 verdicts)" in err and f"{GPU} (2 verdicts)" in err
    code, _, err = evolve(capsys, "leaderboard", "demo", "--shape", "1x2x3")
    assert code == 2 and "no figure on shape 1x2x3" in err and "16x4096x4096" in err
    code, _, err = evolve(capsys, "leaderboard", "demo", "--shape", "4096x4096")
    assert code == 2 and "give the shape as MxNxK" in err
    code, _, err = evolve(capsys, "leaderboard", "demo", "--status", "great")
    assert code == 2 and "not a status" in err and "incorrect" in err
    assert all("Traceback" not in e for e in (err,))


# ------------------------------------------------------------------------------ show / diff / lineage


def test_show(run, capsys):
    code, out, _ = evolve(capsys, "show", "demo", "3")
    assert code == 0
    assert "candidate #3 of run demo: generation 2, island 1" in out
    assert "proposer: llm:gpt-4o (template default)" in out and "note: swizzle the grid" in out
    assert "parents: #2 (ok 0.3000), #1 (ok 0.2000) on model:h100" in out
    assert (
        "verdict on model:h100: ok, verified; fitness 0.2800 MODELLED ±5%, held-out 0.2520, rank 2 of 3"
        in out
    )
    assert (
        "verdict on cuda:FAKE GPU: ok, verified; fitness 1.2500 measured, held-out 1.1500, rank 1 of 2" in out
    )
    shape_rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["train"], ["held_out"])]
    assert ["train", "16x4096x4096", "nn", "50.0", "-", "5.0e-04", "-"] in shape_rows
    assert any(r[:2] == ["train", "4096x4096x4096"] and "1.25x" in r and "1.000" in r for r in shape_rows)
    assert "LLM answer (call #1: llm:gpt-4o, template default, call ok, edit applied, 1200+300 tokens" in out
    assert ANSWER in out
    assert out.rstrip().endswith(source(3).rstrip())


def test_show_a_failure_and_a_pending_candidate(run, capsys):
    _, out, _ = evolve(capsys, "show", "demo", "4")
    assert "verdict on model:h100: incorrect, verified" in out and f"feedback: {FEEDBACK}" in out
    assert "LLM answer" not in out
    _, out, _ = evolve(capsys, "show", "demo", "5")
    assert "verdict: none yet (pending" in out and "parents: #3 (ok 0.2800)" in out
    _, out, _ = evolve(capsys, "show", "demo", "1")
    assert "parents: none (a seed)" in out
    code, out, _ = evolve(capsys, "show", "demo", "2", "--source")
    assert code == 0 and out == source(2)


def test_show_sees_what_the_running_writer_commits(run, capsys):
    cid = run.add_candidate(source(7), parent_ids=[3], proposer="mutator", island=1, generation=3)
    run.add_evaluation(cid, modelled(0.31, 310, 5))
    _, out, _ = evolve(capsys, "show", "demo", str(cid))
    assert "fitness 0.3100 MODELLED" in out and "rank 1 of 4" in out


def test_diff(run, capsys):
    code, out, _ = evolve(capsys, "diff", "demo", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("--- #2 (first parent; mutator; ok 0.3000 on model:h100)")
    assert lines[1].startswith("+++ #3 (swizzle the grid; llm:gpt-4o; ok 0.2800 on model:h100)")
    assert "-    x = 2" in lines and "+    x = 3" in lines and " def matmul(a, b):" in lines
    _, out, _ = evolve(capsys, "diff", "demo", "3", "6")
    assert out.startswith("--- #6 (other;") and "-    x = 6" in out.splitlines()
    code, _, err = evolve(capsys, "diff", "demo", "1")
    assert code == 2 and "candidate 1 is a seed (no parent)" in err and "evolve diff demo 1 OTHER" in err
    _, out, _ = evolve(capsys, "diff", "demo", "2", "2")
    assert out.strip() == "#2 and #2 have the same source"


def test_lineage(run, capsys):
    code, out, _ = evolve(capsys, "lineage", "demo", "4")
    assert code == 0 and "lineage of #4 in run demo: 4 steps from #1 (a seed); verdicts on model:h100" in out
    steps = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert [s[1] for s in steps] == ["1", "2", "3", "4"]  # seed first, the candidate last
    assert (
        steps[1][3:7] == ["mutator", "ok", "0.3000", "+0.1000"]
        and " ".join(steps[1][7:]) == "BLOCK_M 64 -> 128"
    )
    assert steps[2][3:7] == ["llm:gpt-4o", "ok", "0.2800", "-0.0200"] and "(also from #1)" in " ".join(
        steps[2]
    )
    assert steps[3][3:6] == ["mutator", "incorrect", "-"]
    _, out, _ = evolve(capsys, "lineage", "demo", "5")
    assert [line.split()[4] for line in out.splitlines() if line.split()[:2] == ["3", "5"]] == ["pending"]
    _, out, _ = evolve(capsys, "lineage", "demo", "3", "--backend", GPU)
    steps = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert [s[4:7] for s in steps] == [
        ["ok", "1.0000", "-"],
        ["-", "-", "BLOCK_M"],
        ["ok", "1.2500", "+0.2500"],
    ]


@pytest.mark.parametrize("command", ["show", "diff", "lineage"])
def test_unknown_ids_and_runs_list_what_exists(run, capsys, command):
    code, out, err = evolve(capsys, command, "demo", "999")
    assert code == 2 and out == "" and err.strip() == "error: no candidate 999 in run demo; ids 1-6"
    code, _, err = evolve(capsys, command, "missing", "1")
    assert code == 2 and "no run named 'missing'; runs in runs/: demo" in err


def test_a_missing_other_in_diff(run, capsys):
    code, _, err = evolve(capsys, "diff", "demo", "3", "42")
    assert code == 2 and "no candidate 42 in run demo; ids 1-6" in err


def test_piped_lines_never_wrap(run, capsys):
    """A long feedback and note stay one line each when stdout is not a terminal."""
    _, out, _ = evolve(capsys, "show", "demo", "4")
    assert f"feedback: {FEEDBACK}" in out.splitlines()
    assert "\x1b[" not in out  # no colour codes


# ------------------------------------------------------------------------------------- live display


def progress(evaluated: int) -> Progress:
    p = Progress(evaluated=evaluated, in_flight=2, best_fitness=0.3, best_id=2, backend=MODEL)
    p.failures = {"incorrect": 1, "unsupported": 2}
    return p


def test_live_display_piped_prints_plain_lines_and_the_last_state_on_close():
    out = io.StringIO()
    display = LiveDisplay(10, console=Console(file=out, force_terminal=False))
    display(progress(1))  # printed: the first one
    display(progress(2))  # within 15 s: held back
    display.close()  # ... and printed on close
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [["evals", "1/10"], ["evals", "2/10"]]
    assert "best 0.3000 [model:h100] (#2)" in lines[0] and "unsupported 2 (needs a GPU judge)" in lines[0]


def test_live_display_on_a_terminal_draws_bars_against_the_budgets():
    out = io.StringIO()
    display = LiveDisplay(10, time_budget_s=600, console=Console(file=out, force_terminal=True, width=200))
    display(progress(4))
    display.close()
    text = out.getvalue()
    assert "evaluations" in text and "4/10 evals" in text and "time budget" in text and "/600 s" in text
    assert "━" in text  # the bar
    assert "failures: incorrect 1" in text  # the status under the bars


def test_status_line_names_the_time_budget_only_when_there_is_one():
    assert "time " not in status_line(progress(3), 10)
    assert "/540 s" in status_line(progress(3), 10, 540)


def test_a_diff_on_a_terminal_is_coloured_by_line():
    text = diff_text("--- #1\n+++ #2\n@@ -1 +1 @@\n-old\n+new\n same")
    styles = {text.plain[s.start : s.end].strip(): str(s.style) for s in text.spans}
    assert styles == {
        "--- #1": "bold",
        "+++ #2": "bold",
        "@@ -1 +1 @@": "cyan",
        "-old": "red",
        "+new": "green",
    }
