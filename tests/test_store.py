"""The run store on real SQLite files: ranking, duplicates, idempotence, resume, readers, kills."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evaluators.evaluation import Evaluation, ShapeResult
from evolve.candidate import Proposal, normalised_hash
from evolve.store import SCHEMA_VERSION, Store, StoreError

REPO = Path(__file__).resolve().parents[1]
CUDA = "cuda:NVIDIA H100"
MODEL = "model:H100"


def src(i: int) -> str:
    return f"import triton\n\n\ndef kernel():\n    return {i}\n"


def ev(fitness: float, backend: str = CUDA, status: str = "ok", stage: str = "verified") -> dict:
    shapes = [
        ShapeResult(shape=(1024, 1024, 1024), time_s=1e-4, torch_time_s=1e-4 * fitness, speedup=fitness)
    ]
    kind = "measured" if backend.startswith("cuda") else "modelled"
    return Evaluation(
        status, backend, fitness, kind, feedback="", shapes=shapes, seconds={"bench": 0.5}, stage=stage
    ).to_dict()


def add(store: Store, i: int, island: int = 0, **kw) -> int:
    cid = store.add_candidate(src(i), parent_ids=[], proposer="mutator", island=island, generation=1, **kw)
    assert cid is not None
    return cid


@pytest.fixture
def store(tmp_path):
    with Store.create(tmp_path / "runs" / "r1" / "run.sqlite", "r1", {"task": "demo"}, seed=7) as s:
        yield s


def test_create_insert_and_top_k_ordering(store):
    fits = [1.2, 0.0, 3.4, 2.2, 0.9]
    ids = [add(store, i, niche=[i % 2, "big"]) for i in range(len(fits))]
    for cid, f in zip(ids, fits, strict=True):
        store.add_evaluation(cid, ev(f, status="ok" if f else "incorrect"))
    top = store.top(3, CUDA)
    assert [r["fitness"] for r in top] == [3.4, 2.2, 1.2]
    assert top[0]["id"] == ids[2] and top[0]["niche"] == [0, "big"] and top[0]["backend"] == CUDA
    assert top[0]["shapes"][0]["speedup"] == 3.4 and top[0]["fitness_kind"] == "measured"
    assert {"id", "generation", "island", "proposer", "status", "created"} <= set(top[0])
    assert store.top(10)[-1]["status"] == "incorrect"  # failures rank last
    assert store.best(CUDA)["id"] == ids[2]
    assert store.counts_by_status() == {"ok": 4, "incorrect": 1, "pending": 0}
    assert store.evaluated_count() == 5
    assert len(store.all_evaluated()) == 5 and "metrics" in store.all_evaluated()[0]
    info = store.run_info()
    assert info["name"] == "r1" and info["config"] == {"task": "demo"} and info["seed"] == 7
    assert info["schema_version"] == SCHEMA_VERSION
    store.set_run_status("finished")
    assert store.run_info()["status"] == "finished"


def test_create_refuses_existing_run(store):
    with pytest.raises(StoreError, match="already exists.*Store.open"):
        Store.create(store.path, "r1", {}, seed=0)


def test_candidate_round_trip(store):
    p = Proposal(src(1), parent_ids=(), proposer="mutator", note="seed")
    root = store.add_proposal(p, island=0, generation=0)
    child = store.add_candidate(src(2), parent_ids=[root], proposer="llm:x", island=1, generation=1,
                                niche=[3], model="x", template="t1")  # fmt: skip
    store.add_evaluation(child, ev(1.5))
    c = store.candidate(child)
    assert c["parent_ids"] == [root] and c["island"] == 1 and c["model"] == "x" and c["niche"] == [3]
    assert c["source_hash"] == normalised_hash(src(2)) and c["evaluations"][0]["fitness"] == 1.5
    assert [x["id"] for x in store.candidates([child, 999, root])] == [child, root]
    with pytest.raises(StoreError, match="no candidate 999"):
        store.candidate(999)


def test_duplicate_rejected_by_normalised_hash(store):
    first = add(store, 1)
    comment_only = src(1).replace("def kernel():", "# a new comment\ndef kernel():  # tuned\n")
    assert store.add_candidate(comment_only, proposer="mutator", island=3, generation=2) is None
    assert store.has_hash(normalised_hash(src(1))) and not store.has_hash(normalised_hash(src(2)))
    assert store.add_candidate(src(2), proposer="mutator", island=0, generation=2) == first + 1


def test_evaluation_insert_is_idempotent(store):
    cid = add(store, 1)
    assert store.add_evaluation(cid, ev(2.0)) is True
    assert store.add_evaluation(cid, ev(9.0)) is False  # same (candidate, backend): ignored
    assert store.add_evaluation(cid, Evaluation("ok", MODEL, 0.5, "modelled")) is True  # other backend
    assert [r["fitness"] for r in store.top(10, CUDA)] == [2.0]
    assert store.counts_by_status() == {"ok": 2, "pending": 0}
    assert store.evaluated_count() == 1
    with pytest.raises(StoreError, match="candidate 424242"):
        store.add_evaluation(424242, ev(1.0))
    with pytest.raises(StoreError, match="candidate 424242"):
        store.mark_pending(424242)
    with pytest.raises(sqlite3.IntegrityError):  # a bad row is an error, never taken for a duplicate
        store.add_candidate(src(5), proposer=None, island=0, generation=0)


def test_pending_survive_reopen_and_clear_on_evaluation(store):
    ids = [add(store, i) for i in range(4)]
    for cid in ids[:3]:
        store.mark_pending(cid)
    extra = add(store, 10, pending=True)
    store.add_evaluation(ids[0], ev(1.0))
    path = store.path
    store.close()
    with Store.open(path, readonly=False) as s:
        assert s.pending_ids() == [ids[1], ids[2], extra]
        s.add_evaluation(ids[1], ev(1.1, status="timeout"))
        s.mark_pending(ids[2])  # twice is once
        assert s.pending_ids() == [ids[2], extra]
        assert s.counts_by_status()["pending"] == 2


def test_backends_never_mixed(store):
    a, b, c = (add(store, i) for i in range(3))
    store.add_evaluation(a, ev(5.0, MODEL))
    store.add_evaluation(b, ev(1.0, CUDA))
    store.add_evaluation(c, ev(2.0, CUDA))
    store.add_evaluation(c, ev(0.7, MODEL))
    store.add_evaluation(b, ev(0.0, MODEL, status="crashed"))
    assert store.default_backend() == MODEL  # 2 ok each: the tie goes to more evaluations
    assert {r["backend"] for r in store.top(10)} == {store.default_backend()}
    assert [r["id"] for r in store.top(10, CUDA)] == [c, b]
    assert [r["id"] for r in store.top(10, MODEL)] == [a, c, b]
    assert store.best(MODEL)["fitness"] == 5.0 and store.best("cuda:other") is None
    assert store.top(5, "cuda:other") == []


def test_read_only_open_while_writer_holds_it(store):
    cid = add(store, 1)
    store.add_evaluation(cid, ev(1.0))
    with Store.open(store.path) as reader:
        assert reader.readonly and reader.top(5)[0]["id"] == cid
        with store.transaction():  # writer holds an open write transaction
            store.add_evaluation(add(store, 2), ev(3.0))
            assert [r["fitness"] for r in reader.top(5)] == [1.0]  # reader sees the last commit
        assert [r["fitness"] for r in reader.top(5)] == [3.0, 1.0]
        with pytest.raises(StoreError, match="read-only"):
            reader.set_run_status("hacked")
        with pytest.raises(StoreError, match="read-only"):
            reader.add_candidate(src(9), proposer="m", island=0, generation=0)


def test_transaction_rolls_back_on_error(store):
    with pytest.raises(RuntimeError), store.transaction():
        add(store, 1)
        raise RuntimeError
    assert store.evaluated_count() == 0 and not store.has_hash(normalised_hash(src(1)))


def test_proposer_stats(store):
    store.update_proposer_stats("mutator", 0, "ok", improved=True)
    store.update_proposer_stats("mutator", 0, "compile_error", improved=False)
    store.update_proposer_stats("mutator", 0, "compile_error", improved=False)
    store.update_proposer_stats("llm:x", 1, "duplicate", improved=False)
    assert store.proposer_stats() == [
        {"proposer": "llm:x", "island": 1, "proposals": 1, "accepted": 0, "improved": 0,
         "failures": {"duplicate": 1}},
        {"proposer": "mutator", "island": 0, "proposals": 3, "accepted": 1, "improved": 1,
         "failures": {"compile_error": 2}},
    ]  # fmt: skip


def test_missing_file_read_only(tmp_path):
    with pytest.raises(StoreError, match=r"nope\.sqlite.*not found"):
        Store.open(tmp_path / "nope.sqlite")
    assert not (tmp_path / "nope.sqlite").exists()


def test_schema_version_mismatch_message(store):
    path = store.path
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    for readonly in (True, False):
        with pytest.raises(StoreError) as err:
            Store.open(path, readonly=readonly)
        msg = str(err.value)
        assert str(path) in msg and f"created by schema 99, this triton-evolve reads {SCHEMA_VERSION}" in msg
        assert "start a new run or use a matching version" in msg


def test_non_store_files_message(tmp_path):
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all " * 100)
    for path in (other, junk):
        with pytest.raises(StoreError, match=f"{path}.* is not a triton-evolve run store"):
            Store.open(path)


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from evolve.store import Store
    def ev(f):
        return {"status": "ok", "backend": "cuda:NVIDIA H100", "fitness": f, "fitness_kind": "measured"}
    s = Store.open(sys.argv[1], readonly=False)
    n = int(sys.argv[2])
    for i in range(n + 5):
        cid = s.add_candidate(f"def kernel():\\n    return {1000 + i}\\n", proposer="mutator", island=i % 3, generation=i, pending=True)
        if i < n:
            s.add_evaluation(cid, ev(1.0 + i))
            print(cid, flush=True)
    with s.transaction():  # an uncommitted write is in flight at the kill
        s.add_evaluation(cid, ev(99.0))
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_writer_killed_with_sigkill_loses_nothing_committed(store):
    path = store.path
    store.close()
    n = 40
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path), str(n)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    done = [int(x) for x in proc.stdout.split()]
    assert len(done) == n
    assert Path(f"{path}-wal").exists()  # died without a checkpoint
    with Store.open(path) as reader:  # a reader first, as the leaderboard would
        assert reader.evaluated_count() == n
        assert reader.top(1)[0]["fitness"] == float(n)
    with Store.open(path, readonly=False) as s:
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert s._conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert sorted(r["id"] for r in s.all_evaluated()) == done
        assert len(s.pending_ids()) == 5 and not set(s.pending_ids()) & set(done)
        assert s.counts_by_status() == {"ok": n, "pending": 5}
    assert os.path.getsize(path) > 0


FULL_DISK_WRITER = textwrap.dedent(
    """
    import resource, signal, sys
    from evolve.store import Store, StoreError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
    s = Store.open(sys.argv[1], readonly=False)
    size = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))  # the disk is full at `size` bytes a file
    for i in range(100000):
        try:
            cid = s.add_candidate("def kernel():\\n    return %d\\n" % i + "# pad\\n" * 200, proposer="mutator",
                                  island=0, generation=i)
        except StoreError as e:
            print("REFUSED", e, flush=True)
            break
        print(cid, flush=True)
    """
)


def test_a_full_disk_is_a_clear_error_and_loses_nothing_committed(store):
    path = store.path
    store.close()
    limit = 1 << 20  # 1 MiB a file (the WAL): a few hundred candidates
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_WRITER, str(path), str(limit)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    refused = [line for line in lines if line.startswith("REFUSED")]
    assert len(refused) == 1, proc.stdout[-500:]
    assert "the disk refused a write" in refused[0] and "everything committed before is kept" in refused[0]
    assert "evolve run --resume" in refused[0] and "Traceback" not in proc.stderr
    committed = [int(x) for x in lines if not x.startswith("REFUSED")]
    assert len(committed) > 10
    with Store.open(path, readonly=False) as s:  # space is back: every acknowledged candidate is there
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [r[0] for r in s._conn.execute("SELECT id FROM candidates ORDER BY id")]
        assert ids == committed
        assert s.add_candidate("def kernel():\n    return -1\n", proposer="mutator", island=0, generation=0)


def test_held_out_read_back_beside_the_fitness(store):
    cid = add(store, 1)
    record = {**ev(1.5, backend=MODEL), "held_out": 0.42}
    store.add_evaluation(cid, record)
    (row,) = store.top(1, MODEL)
    assert row["fitness"] == 1.5 and row["held_out"] == 0.42
    assert store.all_evaluated()[0]["held_out"] == 0.42
    other = add(store, 2)
    store.add_evaluation(other, ev(1.0, backend=MODEL))  # judged before held-out figures existed
    assert store.top(2, MODEL)[1]["held_out"] is None


def test_requeue_counts_each_queueing(store):
    cid = add(store, 1, pending=True)
    assert store.requeue(cid) == 2 and store.requeue(cid) == 3  # queued once when added
    store.add_evaluation(cid, ev(1.0))
    assert store.requeue(cid) == 0  # no longer pending


def _as_schema(path: Path, version: int) -> None:
    """Turn a store into one written by an older schema: 3 has no evaluations.stage (nor its index),
    2 no evaluations.judge either, 1 no pending.attempts either."""
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX evaluations_ranked")
    conn.execute("ALTER TABLE evaluations DROP COLUMN stage")
    if version < 3:
        conn.execute("ALTER TABLE evaluations DROP COLUMN judge")
    if version < 2:
        conn.execute("ALTER TABLE pending DROP COLUMN attempts")
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
    conn.execute(f"PRAGMA user_version={version}")
    conn.commit()
    conn.close()


def _as_schema_1(path: Path) -> None:
    _as_schema(path, 1)


def test_schema_1_store_is_read_as_is_and_migrated_for_writing(store):
    pending = add(store, 1, pending=True)
    done = add(store, 2)
    store.add_evaluation(done, ev(2.0))
    path = store.path
    store.close()
    _as_schema_1(path)
    with Store.open(path) as reader:  # a reader changes nothing
        assert reader.pending_ids() == [pending] and reader.top(1)[0]["id"] == done
        assert reader.run_info()["schema_version"] == 1
    with Store.open(path, readonly=False) as writer:  # resume: migrated in place
        assert writer.run_info()["schema_version"] == SCHEMA_VERSION == 6
        assert writer.migrations() is None  # not recorded before schema 6: a resume replays them
        assert writer.pending_ids() == [pending] and writer.requeue(pending) == 2
        assert writer.top(1)[0]["fitness"] == 2.0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def judged(fitness: float, judge: str, status: str = "ok", stage: str = "verified") -> dict:
    return {**ev(fitness, backend=MODEL, status=status, stage=stage), "judge": judge}


def test_schema_2_store_migrates_with_every_verdict_stale(store):
    old = add(store, 1)
    store.add_evaluation(old, ev(2.0, backend=MODEL))
    pending = add(store, 2, pending=True)
    path = store.path
    store.close()
    _as_schema(path, 2)
    with Store.open(path) as reader:  # read as is: no judge column yet, every verdict judge ""
        assert reader.run_info()["schema_version"] == 2
        assert reader.top(1, MODEL)[0]["judge"] == "" and reader.best(MODEL, judge="J1") is None
    with Store.open(path, readonly=False) as writer:
        assert writer.run_info()["schema_version"] == SCHEMA_VERSION == 6
        assert writer.migrations() is None  # not recorded before schema 6: a resume replays them
        (row,) = writer.population_rows(MODEL)
        assert row["id"] == old and row["judge"] == "" and row["fitness"] == 2.0
        assert writer.pending_ids() == [pending]
        writer.add_evaluation(pending, judged(1.0, "J1"))  # a new verdict names its judge
        assert {r["id"]: r["judge"] for r in writer.all_evaluated()} == {old: "", pending: "J1"}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    conn.close()


def test_a_stale_verdict_is_replaced_in_place_by_todays(store):
    cid = add(store, 1, pending=True)
    assert store.add_evaluation(cid, judged(3.0, "OLD"))
    row_id = "SELECT id FROM evaluations WHERE candidate_id = ?"
    before = store._conn.execute(row_id, (cid,)).fetchone()[0]
    assert not store.replace_evaluation(cid, judged(1.0, "OLD"), "NEW")  # not today's verdict
    assert not store.add_evaluation(cid, judged(1.0, "NEW"))  # still one verdict per candidate and backend
    store.mark_pending(cid)  # queued for its re-judgement
    assert store.replace_evaluation(cid, judged(0.0, "NEW", status="incorrect"), "NEW")
    (after,) = store.all_evaluated()
    assert after["judge"] == "NEW" and after["status"] == "incorrect" and after["fitness"] == 0.0
    assert store.pending_ids() == []
    assert store.counts_by_status(MODEL) == {"incorrect": 1, "pending": 0}
    assert store.default_backend() == MODEL and store.best(MODEL) is None  # backend_counts follows
    assert store._conn.execute(row_id, (cid,)).fetchone()[0] == before  # the same row, updated
    assert not store.replace_evaluation(cid, judged(5.0, "NEW"), "NEW")  # today's verdict stands


def test_top_ranks_todays_verdicts_first_and_marks_stale_ones(store):
    fresh, stale, failed = add(store, 1), add(store, 2), add(store, 3)
    store.add_evaluation(fresh, judged(1.0, "NEW"))
    store.add_evaluation(stale, judged(9.0, "OLD"))
    store.add_evaluation(failed, judged(0.0, "NEW", status="incorrect"))
    rows = store.top(10, MODEL, judge="NEW")
    assert [(r["id"], r["stale"]) for r in rows] == [(fresh, False), (stale, True), (failed, False)]
    assert store.best(MODEL, judge="NEW")["id"] == fresh
    assert store.best(MODEL)["id"] == stale  # without a judge: any judge's verified verdicts, by fitness
    assert store.best(MODEL, judge="OTHER") is None


def test_schema_3_store_migrates_with_no_verdict_verified(store):
    old = add(store, 1)
    store.add_evaluation(old, judged(2.0, "J1"))
    path = store.path
    store.close()
    _as_schema(path, 3)
    with Store.open(path) as reader:  # read as is: no stage column yet, every verdict stage ""
        (row,) = reader.top(1, MODEL, judge="J1")
        assert row["stage"] == "" and not row["rankable"] and reader.best(MODEL, judge="J1") is None
    with Store.open(path, readonly=False) as writer:
        assert writer.run_info()["schema_version"] == SCHEMA_VERSION == 6
        assert writer.migrations() is None  # not recorded before schema 6: a resume replays them
        assert writer.population_rows(MODEL)[0]["stage"] == ""
        assert writer.best(MODEL) is None  # never verified: never ranked, not even without a judge
        new = add(writer, 2)
        writer.add_evaluation(new, judged(1.0, "J1"))  # a new verdict says its stage
        assert writer.best(MODEL, judge="J1")["id"] == new
        assert {r["id"]: r["stage"] for r in writer.all_evaluated()} == {old: "", new: "verified"}
        assert writer.replace_evaluation(old, judged(2.5, "J1"), "J1")  # verified in place on resume
        assert writer.best(MODEL, judge="J1")["id"] == old
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert "evaluations_ranked" in indexes


def test_only_verified_ok_verdicts_are_ranked(store):
    verified, provisional, low, failed = add(store, 1), add(store, 2), add(store, 3), add(store, 4)
    store.add_evaluation(verified, judged(1.0, "NEW"))
    store.add_evaluation(provisional, judged(9.0, "NEW", stage="provisional"))
    store.add_evaluation(low, judged(0.5, "NEW"))
    store.add_evaluation(failed, judged(0.0, "NEW", status="incorrect", stage="provisional"))
    for judge in ("NEW", None):
        rows = store.top(10, MODEL, judge=judge)
        assert [r["id"] for r in rows] == [verified, low, provisional, failed]  # fitness 9 ranked after
        assert [r["rankable"] for r in rows] == [True, True, False, False]
        assert store.best(MODEL, judge=judge)["id"] == verified
    assert store.top(1, MODEL)[0]["id"] == verified and len(store.top(3, MODEL)) == 3
    assert store.provisional_count() == 1 and store.provisional_count(CUDA) == 0  # the failure is not
    only = add(store, 5)
    store.add_evaluation(only, judged(3.0, "NEW", stage="provisional"))
    assert store.best(CUDA) is None and store.provisional_count(MODEL) == 2


def test_a_provisional_verdict_is_replaced_in_place_by_its_verification(store):
    ok, wrong = add(store, 1), add(store, 2)
    for cid in (ok, wrong):
        assert store.add_evaluation(cid, judged(3.0, "NEW", stage="provisional"))
        store.mark_pending(cid)  # queued for its verification
    assert not store.replace_evaluation(ok, judged(3.0, "NEW", stage="provisional"), "NEW")  # not final
    assert not store.replace_evaluation(ok, judged(3.0, "OTHER"), "NEW")  # not today's judge
    assert store.replace_evaluation(ok, judged(2.5, "NEW"), "NEW")
    assert store.replace_evaluation(wrong, judged(0.0, "NEW", status="incorrect", stage="verified"), "NEW")
    rows = {r["id"]: r for r in store.all_evaluated()}
    assert (rows[ok]["stage"], rows[ok]["fitness"]) == ("verified", 2.5) and rows[wrong][
        "status"
    ] == "incorrect"
    assert store.pending_ids() == [] and store.evaluated_count() == 2
    assert store.counts_by_status(MODEL) == {"incorrect": 1, "ok": 1, "pending": 0}
    assert [r["id"] for r in store.top(10, MODEL, "NEW") if r["rankable"]] == [ok]
    assert not store.replace_evaluation(ok, judged(5.0, "NEW"), "NEW")  # a verified verdict stands
    failed = add(store, 3)  # a failure of the cheap stage is final whatever the stage
    store.add_evaluation(failed, judged(0.0, "NEW", status="compile_error", stage="provisional"))
    assert not store.replace_evaluation(failed, judged(1.0, "NEW"), "NEW")
