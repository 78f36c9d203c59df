"""The run store's LLM records (schema 5) on real SQLite files: calls, totals, bandit state, lessons,
the compressed answers, the key scrub and the migration of a schema-4 store."""

import json
import random
import sqlite3
import zlib
from pathlib import Path

import pytest

from evolve.meta.bandit import Bandit
from evolve.store import SCHEMA_VERSION, Store, StoreError


@pytest.fixture
def store(tmp_path: Path):
    s = Store.create(tmp_path / "run.sqlite", "run", {"seed": 1}, seed=1)
    yield s
    s.close()


def call(store: Store, **kw) -> int:
    args = dict(
        proposer="llm:gpt-4o", model="gpt-4o", template="diff-v1", status="ok", edit_status="applied",
        prompt_tokens=100, completion_tokens=40, cost=0.01, latency_s=1.5, error="", answer="BLOCK",
    )  # fmt: skip
    return store.add_llm_call(**{**args, **kw})


def test_schema_is_6():
    assert SCHEMA_VERSION == 6


def test_llm_call_round_trip_and_candidate_link(store):
    answer = "Use BLOCK_K=64.\n<<<<<<< SEARCH\nBLOCK_K = 32\n=======\nBLOCK_K = 64\n>>>>>>> REPLACE\n"
    cid = call(store, answer=answer, island=2, parent_id=7)
    failed = call(store, status="timeout", edit_status="", answer=None, error="read timed out",
                  prompt_tokens=None, completion_tokens=None, cost=None)  # fmt: skip
    assert failed > cid
    store.set_llm_call_candidate(cid, 42)
    first, second = store.llm_calls()
    assert first["id"] == cid and first["candidate_id"] == 42 and first["answer"] == answer
    assert (first["proposer"], first["model"], first["template"]) == ("llm:gpt-4o", "gpt-4o", "diff-v1")
    assert (first["status"], first["edit_status"], first["island"], first["parent_id"]) == (
        "ok",
        "applied",
        2,
        7,
    )
    assert (first["prompt_tokens"], first["completion_tokens"], first["cost"], first["latency_s"]) == (
        100,
        40,
        0.01,
        1.5,
    )
    assert second["answer"] == "" and second["error"] == "read timed out" and second["candidate_id"] is None
    assert second["prompt_tokens"] is None and second["island"] is None
    assert [c["id"] for c in store.llm_calls(limit=1)] == [failed]  # the latest
    with pytest.raises(StoreError, match="no LLM call 999"):
        store.set_llm_call_candidate(999, 1)


def test_answer_is_compressed_on_disk(store):
    answer = "def kernel():\n    return 1\n" * 50
    cid = call(store, answer=answer)
    conn = sqlite3.connect(store.path)
    (blob,) = conn.execute("SELECT answer FROM llm_calls WHERE id = ?", (cid,)).fetchone()
    conn.close()
    assert isinstance(blob, bytes) and answer.encode() not in blob and len(blob) < len(answer)
    assert zlib.decompress(blob).decode("utf-8") == answer


def test_totals_by_status_edit_status_and_proposer(store):
    call(store)
    call(store, edit_status="search_not_found", prompt_tokens=10, completion_tokens=5, cost=0.5)
    call(store, status="rate_limited", edit_status="", prompt_tokens=None, completion_tokens=None, cost=None)
    call(store, proposer="llm:local", model="qwen", status="truncated", edit_status="truncated", cost=0.0)
    totals = store.llm_totals()
    assert totals == {
        "calls": 4, "prompt_tokens": 210, "completion_tokens": 85, "cost": pytest.approx(0.51),
        "by_status": {"ok": 2, "rate_limited": 1, "truncated": 1},
        "by_edit_status": {"applied": 1, "search_not_found": 1, "truncated": 1},
    }  # fmt: skip
    gpt, local = store.llm_totals_by_proposer()
    assert gpt["proposer"] == "llm:gpt-4o" and gpt["calls"] == 3 and gpt["cost"] == pytest.approx(0.51)
    assert gpt["by_status"] == {"ok": 2, "rate_limited": 1}
    assert gpt["by_edit_status"] == {"applied": 1, "search_not_found": 1}
    assert local == {"proposer": "llm:local", "calls": 1, "prompt_tokens": 100, "completion_tokens": 40,
                     "cost": 0.0, "by_status": {"truncated": 1}, "by_edit_status": {"truncated": 1}}  # fmt: skip


def test_totals_of_an_empty_store(store):
    assert store.llm_totals() == {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0,
                                  "by_status": {}, "by_edit_status": {}}  # fmt: skip
    assert store.llm_totals_by_proposer() == []


def test_api_keys_are_scrubbed_from_answer_and_error(store, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456789")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh12")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to be told from ordinary text: kept
    cid = call(
        store, answer="Your key sk-test-123456789 and hf_abcdefgh12; abc", error="401 for sk-test-123456789"
    )
    (row,) = store.llm_calls()
    assert row["id"] == cid
    assert row["answer"] == "Your key [api key] and [api key]; abc"
    assert row["error"] == "401 for [api key]"
    raw = Path(store.path).read_bytes() + Path(f"{store.path}-wal").read_bytes()
    assert b"sk-test-123456789" not in raw


def test_bandit_state_round_trip(store):
    assert store.load_bandit("proposers") is None
    bandit = Bandit(["mutator", "llm:gpt-4o"])
    bandit.update("mutator", 0.2)
    bandit.update("llm:gpt-4o", 1.0, cost_usd=0.01)
    store.save_bandit("proposers", bandit.to_dict())
    loaded = store.load_bandit("proposers")
    assert loaded == json.loads(json.dumps(bandit.to_dict()))
    resumed = Bandit.from_dict(loaded)  # continues exactly: the same draws choose the same arms
    assert [resumed.choose(random.Random(i)) for i in range(20)] == [
        bandit.choose(random.Random(i)) for i in range(20)
    ]
    store.save_bandit("proposers", {"arms": {}, "v": 2})  # replaces
    assert store.load_bandit("proposers") == {"arms": {}, "v": 2}
    assert store.load_bandit("other") is None


def test_lessons_versions(store):
    assert store.latest_lessons() is None and store.all_lessons() == []
    store.add_lessons(1, 10, "first")
    store.add_lessons(2, 25, "second")
    latest = store.latest_lessons()
    assert (latest["version"], latest["evaluations"], latest["text"]) == (2, 25, "second")
    assert [(r["version"], r["text"]) for r in store.all_lessons()] == [(1, "first"), (2, "second")]
    with pytest.raises(StoreError, match="lessons version 2 is already stored"):
        store.add_lessons(2, 30, "again")
    assert store.latest_lessons()["text"] == "second"  # the failed write changed nothing


def test_records_survive_reopening_and_a_reader_cannot_write(store):
    cid = call(store, answer="hello")
    store.save_bandit("b", {"x": 1})
    store.add_lessons(1, 3, "L")
    path = store.path
    store.close()
    with Store.open(path) as reader:
        assert reader.llm_calls()[0]["answer"] == "hello" and reader.load_bandit("b") == {"x": 1}
        assert reader.latest_lessons()["text"] == "L"
        for write in (lambda: call(reader), lambda: reader.save_bandit("b", {}),
                      lambda: reader.add_lessons(2, 1, "M"), lambda: reader.set_llm_call_candidate(cid, 1)):  # fmt: skip
            with pytest.raises(StoreError, match="read-only"):
                write()


def test_top_rows_carry_proposer_and_model(store):
    cid = store.add_candidate("def kernel():\n    return 1\n", parent_ids=[], proposer="llm:gpt-4o", island=0,
                              generation=1, model="gpt-4o")  # fmt: skip
    ev = {
        "status": "ok",
        "backend": "model:H100",
        "fitness": 1.2,
        "fitness_kind": "modelled",
        "stage": "verified",
    }
    store.add_evaluation(cid, ev)
    (row,) = store.top(1)
    assert (row["proposer"], row["model"]) == ("llm:gpt-4o", "gpt-4o")


# The schema-4 tables, as evolve/store_schema.py made them (git show 49ac75a:evolve/store_schema.py).
SCHEMA_4 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    name TEXT PRIMARY KEY, config TEXT NOT NULL, created REAL NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'created', notes TEXT NOT NULL DEFAULT '');
CREATE TABLE candidates (
    id INTEGER PRIMARY KEY, run TEXT NOT NULL REFERENCES runs(name), source TEXT NOT NULL,
    source_hash TEXT NOT NULL, parent_ids TEXT NOT NULL DEFAULT '[]', island INTEGER NOT NULL,
    generation INTEGER NOT NULL, proposer TEXT NOT NULL, model TEXT NOT NULL DEFAULT '',
    template TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '',
    niche TEXT NOT NULL DEFAULT '[]', created REAL NOT NULL, UNIQUE (run, source_hash));
CREATE INDEX candidates_by_island ON candidates (island, generation);
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY, candidate_id INTEGER NOT NULL REFERENCES candidates(id),
    backend TEXT NOT NULL, status TEXT NOT NULL, ok INTEGER NOT NULL, fitness REAL NOT NULL,
    fitness_kind TEXT NOT NULL, metrics TEXT NOT NULL, feedback TEXT NOT NULL DEFAULT '',
    seconds REAL NOT NULL DEFAULT 0, created REAL NOT NULL, judge TEXT NOT NULL DEFAULT '',
    stage TEXT NOT NULL DEFAULT '', UNIQUE (candidate_id, backend));
CREATE INDEX evaluations_top ON evaluations (backend, fitness DESC, ok DESC, candidate_id);
CREATE INDEX evaluations_ranked ON evaluations (backend, stage, ok, fitness DESC, candidate_id);
CREATE TABLE backend_counts (backend TEXT PRIMARY KEY, ok INTEGER NOT NULL, total INTEGER NOT NULL);
CREATE TABLE pending (candidate_id INTEGER PRIMARY KEY REFERENCES candidates(id), created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1);
CREATE TABLE proposer_stats (
    proposer TEXT NOT NULL, island INTEGER NOT NULL, proposals INTEGER NOT NULL DEFAULT 0,
    accepted INTEGER NOT NULL DEFAULT 0, improved INTEGER NOT NULL DEFAULT 0,
    failures TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (proposer, island));
CREATE TABLE llm_calls (
    id INTEGER PRIMARY KEY, candidate_id INTEGER, model TEXT NOT NULL, prompt_tokens INTEGER,
    completion_tokens INTEGER, cost REAL, latency_s REAL, error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL);
"""


def _schema_4_store(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_4)
    conn.executemany("INSERT INTO meta VALUES (?, ?)",
                     [("schema_version", "4"), ("package", "triton-evolve"), ("created", "0")])  # fmt: skip
    conn.execute("INSERT INTO runs (name, config, created, seed) VALUES ('old', '{}', 0, 1)")
    conn.execute(
        "INSERT INTO candidates (run, source, source_hash, island, generation, proposer, created)"
        " VALUES ('old', 'def k(): pass', 'h1', 0, 0, 'seed', 0)"
    )
    conn.execute(
        "INSERT INTO llm_calls (candidate_id, model, prompt_tokens, completion_tokens, cost, latency_s, created)"
        " VALUES (1, 'gpt-4o', 11, 7, 0.25, 2.0, 0)"
    )
    conn.execute("PRAGMA user_version=4")
    conn.commit()
    conn.close()


def test_schema_4_store_is_read_as_is_and_migrated_to_6(tmp_path):
    path = tmp_path / "old.sqlite"
    _schema_4_store(path)
    with Store.open(path) as reader:  # read as is: no new column, no new table
        (old,) = reader.llm_calls()
        assert (old["model"], old["proposer"], old["status"], old["answer"], old["island"]) == (
            "gpt-4o",
            "",
            "",
            "",
            None,
        )
        assert reader.llm_totals()["calls"] == 1 and reader.llm_totals()["by_status"] == {}
        assert (
            reader.load_bandit("b") is None and reader.latest_lessons() is None and reader.all_lessons() == []
        )
    with Store.open(path, readonly=False) as writer:  # resume: migrated in place, rows kept
        assert writer.run_info()["schema_version"] == SCHEMA_VERSION == 6
        assert writer.candidate(1)["proposer"] == "seed"
        assert writer.migrations() is None  # none recorded before schema 6: a resume replays them
        (old,) = writer.llm_calls()
        assert (old["candidate_id"], old["prompt_tokens"], old["cost"], old["proposer"]) == (1, 11, 0.25, "")
        new = call(writer, answer="A")
        writer.save_bandit("b", {"n": 1})
        writer.add_lessons(1, 1, "L")
        assert [c["id"] for c in writer.llm_calls()] == [old["id"], new]
        assert writer.llm_totals_by_proposer()[0] == {
            "proposer": "", "calls": 1, "prompt_tokens": 11, "completion_tokens": 7, "cost": 0.25,
            "by_status": {}, "by_edit_status": {},
        }  # fmt: skip
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 6
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "6"
    conn.close()
    with Store.open(path, readonly=False) as again:  # opening a schema-6 store changes nothing
        assert again.load_bandit("b") == {"n": 1} and len(again.llm_calls()) == 2
