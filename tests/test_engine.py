"""The engine end to end: real Ray local cluster, real SQLite, real evaluator (tiny task)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evolve.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import write_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run_file(tmp_path: Path, max_evals: int, islands: int = 2) -> Path:
    tail = f"""
[[proposers]]
kind = "mutator"

[population]
islands = {islands}
migration_interval = 3
"""
    return write_run(tmp_path, seed=7, max_evals=max_evals, tail=tail)


def _evolve(tmp_path, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "evolve.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _board(tmp_path, name="t"):
    out = _evolve(tmp_path, "leaderboard", name, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow  # ~100 s on 2 cores (two real runs, the bandits read back): `make test-slow`, which CI runs too
def test_short_run_end_to_end_then_resume(tmp_path):
    run = _run_file(tmp_path, max_evals=5)
    out = _evolve(tmp_path, "run", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "proposers: mutator" in out.stdout and "backend model:h100" in out.stdout
    assert "MODELLED" in out.stdout and "stopped: max_evals 5 reached" in out.stdout
    rows = _board(tmp_path)
    assert len(rows) == 5 and {r["backend"] for r in rows} == {"model:h100"}
    assert {"id", "generation", "status", "fitness", "held_out", "backend"} <= set(rows[0])
    seed = next(r for r in rows if r["proposer"] == "seed")
    assert seed["status"] == "ok" and seed["fitness"] > 0 and seed["generation"] == 0
    assert seed["stage"] == "verified" and all(r["stage"] or r["status"] != "ok" for r in rows)  # staged
    assert all(r["generation"] >= 1 for r in rows if r["proposer"] == "mutator")
    # the human leaderboard labels the ranking
    text = _evolve(tmp_path, "leaderboard", "t", "--top", "3").stdout
    assert "ranking on model:h100" in text and "modelled" in text
    assert "held-out MODELLED, shown beside it, never ranked" in text
    # a second launch under the same name is refused with the fix; resume continues
    again = _evolve(tmp_path, "run", str(run))
    assert again.returncode == 2 and "--resume" in again.stderr
    before = _pulls(tmp_path)
    more = _evolve(tmp_path, "run", "--resume", "runs/t", "--max-evals", "7")
    assert more.returncode == 0, more.stderr[-3000:]
    rows2 = _board(tmp_path)
    assert len(rows2) == 7 and {r["id"] for r in rows} <= {r["id"] for r in rows2}
    # the bandits go on where they stopped: the proposer's arm and its families (evolve/proposing.py)
    after = _pulls(tmp_path)
    assert before["arms"]["mutator"] >= 3 and after["arms"]["mutator"] > before["arms"]["mutator"]
    for key in ("arms", "families:mutator"):
        assert all(after[key][arm] >= n for arm, n in before[key].items()), (before, after)
    for pulls in (before, after):  # every child rewarded the arm and the family that made it
        assert sum(pulls["families:mutator"].values()) == pulls["arms"]["mutator"]
    summary = _evolve(tmp_path, "leaderboard", "t", "--summary").stdout
    assert "mutator's transformation families (pulls, mean reward, cost)" in summary


def _pulls(tmp_path) -> dict[str, dict[str, int]]:
    with Store.open(tmp_path / "runs" / "t" / "run.sqlite", readonly=True) as store:
        return {key: {a["arm"]: a["pulls"] for a in state["arms"]} for key, state in store.bandits().items()}


def test_leaderboard_names_existing_runs(tmp_path):
    (tmp_path / "runs" / "alpha").mkdir(parents=True)
    Store.create(tmp_path / "runs" / "alpha" / "run.sqlite", "alpha", {}, 0).close()
    out = _evolve(tmp_path, "leaderboard", "beta")
    assert out.returncode == 2 and "no run named 'beta'" in out.stderr and "alpha" in out.stderr


@pytest.mark.slow  # ~1 min each on 2 cores: `make test-slow`, which CI runs too
def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path):
    run = _run_file(tmp_path, max_evals=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evolve.cli", "run", str(run)], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    db = tmp_path / "runs" / "t" / "run.sqlite"
    deadline = time.monotonic() + 400
    before = []
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with Store.open(db) as store:
                    before = store.all_evaluated()
                    pending = store.pending_ids()
            except Exception:
                pending = []
            if len(before) >= 3 and pending:
                break
        time.sleep(1)
    assert len(before) >= 3, "the run did not get far enough to test a kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store.open(db) as store:  # the final verdicts (a provisional ok one may be verified after)
        at_kill = {(r["id"], r["backend"]): r["status"] for r in store.all_evaluated()
                   if r["status"] != "ok" or r["stage"] == "verified"}  # fmt: skip
        pending_at_kill = store.pending_ids()
    assert pending_at_kill, "candidates in flight at the kill stay pending"
    bandits_at_kill = _pulls(tmp_path)
    if bandits_at_kill:  # the arm and its family are paid in one transaction: a kill never splits them
        assert sum(bandits_at_kill["families:mutator"].values()) == bandits_at_kill["arms"]["mutator"]
    out = _evolve(tmp_path, "run", "--resume", "runs/t")
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = _pulls(tmp_path)  # the resumed run went on from the bandits the store held at the kill
    for key, pulls in bandits_at_kill.items():
        assert all(resumed[key][arm] >= n for arm, n in pulls.items()), (bandits_at_kill, resumed)
    assert sum(resumed["families:mutator"].values()) == resumed["arms"]["mutator"] > 0
    with Store.open(db) as store:
        after = store.all_evaluated()
        assert store.pending_ids() == []
    keys = [(r["id"], r["backend"]) for r in after]
    assert len(keys) == len(set(keys)), "an evaluation was recorded twice"
    assert len(after) == 8
    for key, status in at_kill.items():  # nothing finished before the kill was lost or changed
        assert {(r["id"], r["backend"]): r["status"] for r in after}[key] == status
    assert set(pending_at_kill) <= {r["id"] for r in after}, "pending candidates were re-queued and judged"


@pytest.mark.slow  # ~1 min each on 2 cores: `make test-slow`, which CI runs too
def test_ctrl_c_stops_cleanly(tmp_path):
    run = _run_file(tmp_path, max_evals=40)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evolve.cli", "run", str(run)], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    db = tmp_path / "runs" / "t" / "run.sqlite"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if db.exists():
            with Store.open(db) as store:
                if store.evaluated_count() >= 2:
                    break
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped: interrupted (Ctrl-C)" in out and "finishing the evaluations in flight" in err
    with Store.open(db) as store:
        assert store.run_info()["status"] == "stopped"
        assert store.pending_ids() == []  # what was in flight was finished and recorded
        assert 2 <= store.evaluated_count() < 40


@pytest.mark.slow  # ~1 min each on 2 cores: `make test-slow`, which CI runs too
def test_resume_after_the_judge_changed_rejudges_the_elites_first(tmp_path):
    import sqlite3

    from evaluators.fingerprint import judge_fingerprint
    from evolve.population import Member, Population, PopulationConfig
    from evolve.verification import VERIFY_TOP_K

    run = _run_file(tmp_path, max_evals=2)
    out = _evolve(tmp_path, "run", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    today = judge_fingerprint()
    assert {r["judge"] for r in _board(tmp_path)} == {today} and not any(r["stale"] for r in _board(tmp_path))
    db = tmp_path / "runs" / "t" / "run.sqlite"
    conn = sqlite3.connect(db)  # as if an older judge had given every verdict
    conn.execute("UPDATE evaluations SET judge = 'an0lderjudge0000'")
    conn.commit()
    conn.close()
    old = _board(tmp_path)
    assert all(r["stale"] for r in old)
    text = _evolve(tmp_path, "leaderboard", "t").stdout
    assert "ok, stale" in text and not any(line.split()[:1] == ["1"] for line in text.splitlines())
    # the stale elites: the members that would hold a niche on their island (a seed: on every island)
    with Store.open(db) as store:
        rows = store.population_rows("model:h100")
    members = [Member(r["id"], r["island"], r["fitness"] if r["status"] == "ok" else 0.0, tuple(r["niche"]),
                      r["source_hash"], r["generation"]) for r in rows]  # fmt: skip
    expected = Population(PopulationConfig(islands=2, migration_interval=0))
    seeds = [m for m in members if m.generation == 0]  # first, spread to every island (as the run began)
    for m in seeds:
        expected.add(m)
    expected.spread(seeds)
    for m in members:
        if m.generation:
            expected.add(m)
    # and the run's top-k (evolve/verification.py): verified too
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (-r["fitness"], r["id"]))
    elites = {m.id for m in expected.elites()} | {r["id"] for r in ok[:VERIFY_TOP_K]}
    assert elites
    more = _evolve(tmp_path, "run", "--resume", "runs/t", "--max-evals", "3")
    assert more.returncode == 0, more.stderr[-3000:]
    assert f"the judge changed since {len(rows)} of the {len(rows)} verdicts" in more.stdout
    assert f"verified {len(elites)} earlier verdicts that would be elites or in the top" in more.stdout
    after = {r["id"]: r for r in _board(tmp_path)}
    assert len(after) == 3  # one verdict per candidate: the re-judged ones updated in place
    assert {i for i in after if i in {r["id"] for r in rows} and not after[i]["stale"]} == elites
    assert all(not after[i]["stale"] for i in after if i not in {r["id"] for r in rows})  # the new one
    text = more.stdout.split("stopped:")[-1]  # the leaderboard the run prints at its end
    ranked = [line.split() for line in text.splitlines() if line.split()[:1] == ["1"]]
    assert ranked and not after[int(ranked[0][1])]["stale"]
    assert all(line.split()[0] == "-" for line in text.splitlines() if "ok, stale" in line)
