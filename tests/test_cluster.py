"""A run on a real two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`), and its faults:
an evaluator's process killed with SIGKILL mid-evaluation, the second node leaving mid-run.

Each cluster is private to its test: both nodes on loopback with their own temp dir (RAY_TMPDIR, so the
address file Ray writes for `ray.init()` to find stays in it: no other Ray user on this machine joins
it) and ports Ray picks; it is stopped by `Cluster.shutdown()` whatever happens, which ends only the
processes its nodes started. Never `ray stop` (it would stop every Ray process on the machine).
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="needs ray (the worker pool), which is not installed here")

from ray import ray_constants  # noqa: E402 - after the importorskip of ray
from ray.cluster_utils import Cluster  # noqa: E402

from evolve.store import Store  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import write_run  # noqa: E402

pytestmark = pytest.mark.slow  # a few minutes on 2 cores: `make test-slow`, which CI runs

ROOT = Path(__file__).resolve().parents[1]
MAX_EVALS = 6


@pytest.fixture
def cluster(monkeypatch):
    """A head node and a second node ("node_b"), one CPU each, so each holds one evaluator actor: the
    pool asks for CPUs only (num_cpus=1), and Ray places one per node by resources."""
    temp = tempfile.mkdtemp(prefix="te-cluster-", dir="/tmp")  # short: Ray's socket paths live under it
    monkeypatch.setenv("RAY_TMPDIR", temp)
    # Loopback for every process of the cluster and the run's driver: Ray would rewrite 127.0.0.1 in an
    # address to this machine's outward IP, unless told (as on a laptop) that clusters stay on loopback.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    nodes = Cluster()
    try:
        common = dict(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
        # each node its own judge's cache (compiles, memoised verdicts), as on separate machines: nothing
        # is shared but what Ray carries, and no earlier run's memo answers for this one
        caches = {name: Path(temp) / f"cache-{name}" for name in ("head", "node_b")}
        head = nodes.add_node(
            **common, resources={"head": 1}, env_vars={"TRITON_EVOLVE_CACHE": str(caches["head"])}
        )
        second = nodes.add_node(
            **common, resources={"node_b": 1}, env_vars={"TRITON_EVOLVE_CACHE": str(caches["node_b"])}
        )
        nodes.wait_for_nodes()
        yield nodes, head, second, caches
    finally:
        nodes.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _run_file(tmp_path: Path) -> Path:
    return write_run(tmp_path, seed=7, max_evals=MAX_EVALS, tail='\n[[proposers]]\nkind = "mutator"\n')


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _start_run(tmp_path: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "evolve.cli", "run", str(_run_file(tmp_path)), "--ray-address", address],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 420) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its handle
        out, err = proc.communicate()
        pytest.fail(f"the run did not finish in {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
    assert f"stopped: max_evals {MAX_EVALS} reached" in out, out[-2000:]
    return out, err


@contextlib.contextmanager
def _stopped_on_failure(proc: subprocess.Popen):
    """The run (our own child, by its handle) is killed if the block fails, so the test fails at once."""
    try:
        yield
    except BaseException:
        proc.kill()
        proc.communicate()
        raise


def _verdicts(tmp_path: Path) -> list[dict]:
    """Every evaluation in the run's store; none pending, one per candidate, as many as max_evals."""
    with Store.open(tmp_path / "runs" / "t" / "run.sqlite", readonly=True) as store:
        rows = store.all_evaluated()
        assert store.pending_ids() == []
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == MAX_EVALS, ids
    return rows


def _node_of(row: dict) -> str | None:
    return (row["metrics"].get("provenance") or {}).get("node", {}).get("id")


def _evaluating_actor(node, timeout: float = 300) -> int:
    """The pid of an evaluator actor of `node` while it judges a candidate: a worker process its raylet
    started whose title Ray set to the method it runs (`ray::EvaluatorActor.evaluate`)."""
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
                parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == raylet and title.startswith(b"ray::EvaluatorActor.evaluate"):
                return int(pid)
        time.sleep(0.2)
    pytest.fail(f"no evaluator actor of node {node.node_id} was judging within {timeout} s")


def _died_notes(err: str) -> list[tuple[int, str]]:
    return [
        (int(c), how) for c, how in re.findall(r"worker judging candidate (\d+) died \(\w+\); ([a-z ]+)", err)
    ]


def test_a_run_on_two_nodes_records_where_each_candidate_was_judged(cluster, tmp_path):
    nodes, head, second, caches = cluster
    out, err = _finish(_start_run(tmp_path, nodes.address))
    rows = _verdicts(tmp_path)
    assert {_node_of(r) for r in rows} == {head.node_id, second.node_id}, [
        r["metrics"]["provenance"] for r in rows
    ]
    assert all(r["metrics"]["provenance"]["node"]["address"] == "127.0.0.1" for r in rows)
    board = subprocess.run([sys.executable, "-m", "evolve.cli", "leaderboard", "t", "--json"], cwd=tmp_path,
                           env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert board.returncode == 0, board.stderr
    by_id = {r["id"]: r["node"] for r in json.loads(board.stdout)}
    assert by_id == {r["id"]: r["metrics"]["provenance"]["node"] for r in rows}
    assert all(set(node) == {"id", "address", "hostname"} for node in by_id.values())
    assert not _died_notes(err), err[-2000:]
    assert all(any(cache.iterdir()) for cache in caches.values())  # each node judged with its own


def test_an_evaluator_killed_mid_evaluation_is_judged_again_once(cluster, tmp_path):
    nodes, head, _, _ = cluster
    proc = _start_run(tmp_path, nodes.address)
    with _stopped_on_failure(proc):
        os.kill(_evaluating_actor(head), signal.SIGKILL)
    out, err = _finish(proc)
    rows = _verdicts(tmp_path)
    ((cid, how),) = _died_notes(err)  # one worker died, once, judging one candidate
    assert how == "judged once more", err[-2000:]
    assert cid in {r["id"] for r in rows}  # and its verdict is recorded, once (_verdicts)
    assert "not replaced" not in err  # its node could hold a new evaluator: it was replaced


def test_the_second_node_leaving_mid_run_leaves_the_run_on_the_head(cluster, tmp_path):
    nodes, head, second, _ = cluster
    proc = _start_run(tmp_path, nodes.address)
    with _stopped_on_failure(proc):
        _evaluating_actor(second)
        nodes.remove_node(second)  # its raylet and the processes it started, ours only
    out, err = _finish(proc)
    rows = _verdicts(tmp_path)
    notes = _died_notes(err)
    assert notes and all(how == "judged once more" for _, how in notes), err[-2000:]
    assert len({cid for cid, _ in notes}) == len(notes), "a candidate was re-queued twice"
    assert "not replaced" in err  # the head holds one evaluator, which is busy: none was made
    requeued = {cid for cid, _ in notes}
    assert all(_node_of(r) == head.node_id for r in rows if r["id"] in requeued)
    assert all(r["status"] != "crashed" for r in rows)
