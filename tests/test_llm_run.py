"""`evolve run --proposer llm:MODEL` end to end: the real CLI, a real Ray local cluster, the real judge on
a tiny task, the real openai client talking HTTP to a scripted OpenAI-compatible server on loopback.
The API key is looked for everywhere a run leaves something: the store, the run's folder, its output,
Ray's session logs, and the environment of every process the run started (read from /proc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evolve.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from llm_server import ScriptedServer  # noqa: E402
from tiny_run import write_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-e2e-secret-0123456789abcdef"
LARGE_OLD = "    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)"
SKINNY_OLD = "        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)"
# M = 16: 16x16 tiles give 128 programs on 132 SMs where the seed's 32x64 give 32 (the judge models
# 0.073 against the seed's 0.062 on this task, measured with `python -m evaluators check` on CPU)
SKINNY_NEW = "        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=128, GROUP_M=8, num_warps=2, num_stages=4)"


def _diff(old: str, new: str) -> str:
    return f"Smaller tiles for skinny shapes: more programs on the SMs.\n\n```\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n```"


def _run_file(tmp_path: Path) -> Path:
    return write_run(tmp_path, seed=3, max_evals=4, tail="\n[population]\nislands = 1\n")


def _other_processes_with_key(own: int) -> list[str]:
    """Processes (not the driver `own`, whose start-up environment still holds what it deleted) whose
    environment holds the key."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) in (own, os.getpid()):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
        except OSError:
            continue
        if KEY.encode() in environ:
            found.append(f"{pid}: {cmdline.decode(errors='replace')}")
    return found


@pytest.mark.slow  # ~2 min on 2 cores (the real judge): `make test-slow`, which CI runs too
def test_an_llm_run_records_every_call_judges_its_children_and_leaks_no_key(tmp_path):
    script = [
        {"text": "Let me think about it."},  # prose: no_code
        {"status": 429, "headers": {"Retry-After": "0"}, "error": "rate limited"},  # retried by the client
        {"text": _diff(SKINNY_OLD, SKINNY_NEW)},
        {"text": _diff("import triton", "import os\nimport triton")},  # outside every region
    ]
    # then one edit of a line no child changed: new children of the seed and of the skinny child
    default = {"text": _diff(LARGE_OLD, LARGE_OLD.replace("num_stages=3", "num_stages=4"))}
    with ScriptedServer(script, default=default) as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.url}
        proc = subprocess.Popen(
            [sys.executable, "-m", "evolve.cli", "run", str(_run_file(tmp_path)), "--proposer", "llm:scripted"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        leaks: list[str] = []
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            leaks += _other_processes_with_key(proc.pid)
            time.sleep(2)
        out, err = proc.communicate(timeout=60)
        requests = list(server.requests)
    assert proc.returncode == 0, err[-3000:]
    assert not leaks, leaks
    assert "proposers: llm:scripted" in out and "stopped: max_evals 4 reached" in out, out[-3000:]
    db = tmp_path / "runs" / "t" / "run.sqlite"
    with Store.open(db) as store:
        calls = store.llm_calls()
        totals = store.llm_totals()
        rows = store.all_evaluated()
    # calls run concurrently: which one the server answered first (and so with which scripted answer) is
    # a race, so the answers are checked as a set, not in order
    statuses = [c["edit_status"] for c in calls]
    assert "no_code" in statuses and "applied" in statuses, statuses
    assert totals["calls"] == len(calls) >= 3 and totals["prompt_tokens"] > 0
    assert len(requests) == len(calls) + 1  # the 429 was retried inside one call
    children = [r for r in rows if r["proposer"] == "llm:scripted"]
    assert children and all(r["model"] == "scripted" for r in children)
    skinny = next(r for r in children if SKINNY_NEW.strip() in store_source(db, r["id"]))
    seed = next(r for r in rows if r["proposer"] == "seed")
    assert skinny["status"] == "ok" and skinny["stage"] == "verified"
    assert skinny["fitness"] > seed["fitness"]  # the scripted edit improves the modelled kernel
    board = subprocess.run(
        [sys.executable, "-m", "evolve.cli", "leaderboard", "t", "--json"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert all({"proposer", "model"} <= set(r) for r in json.loads(board.stdout))
    summary = subprocess.run(
        [sys.executable, "-m", "evolve.cli", "leaderboard", "t", "--summary"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    assert f"llm:scripted: {len(calls)} calls" in summary and "arms (pulls, mean reward, cost)" in summary
    # the key nowhere a run leaves something
    texts = [out, err, board.stdout, summary]
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    sessions = sorted(Path("/tmp/ray").glob("session_2*"), key=lambda p: p.stat().st_mtime)
    for path in sessions[-1].rglob("*") if sessions else []:
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert KEY.encode() not in path.read_bytes(), path
    assert all(KEY not in t for t in texts)


def store_source(db: Path, cid: int) -> str:
    with Store.open(db) as store:
        return store.candidate(cid)["source"]
