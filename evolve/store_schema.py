"""The run store's schema: its tables, the version check on open, migrations of older stores, and
how a verdict maps to the evaluations columns and a ranked row back to a dict.

Apart from evolve/store.py (the queries) so that each stays readable; only store.py and store_meta.py use it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path


class StoreError(Exception):
    """The file is missing, not a run store, of another schema version, or misused."""


# 2: pending.attempts (how many times a candidate was queued; see requeue).
# 3: evaluations.judge (the fingerprint of the judge that gave the verdict, evaluators/fingerprint.py;
#    "" for verdicts stored before: stale, re-judged on resume when they matter).
# 4: evaluations.stage (how far the judge went: "provisional" or "verified", evaluators/evaluation.py
#    STAGES; "" for verdicts stored before: not verified, so never ranked) and the index that ranks
#    the verified ok verdicts first.
# 5: the LLM proposer's records (issue 12): llm_calls.proposer, template, status (the call's), edit_status
#    (applying its answer), answer (zlib-compressed UTF-8), island, parent_id ("" / NULL for calls stored
#    before); the tables bandit (the proposing bandit's JSON, evolve/meta/bandit.py, so a resumed run
#    continues it), lessons (each version of the run's lessons, evolve/meta/lessons.py) and prompts (the
#    prompt template variants LLMs wrote, evolve/meta/prompt_evolution.py).
# 6: migrations (each migration round of the population: the member copied and the island it entered,
#    evolve/population.py migrate), so a resumed run rebuilds its islands as they were; a store upgraded
#    from an older schema says "migrations_unrecorded" in meta, and its rebuild replays them instead.
SCHEMA_VERSION = 6
PACKAGE = "triton-evolve"

SCHEMA = """
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
    created REAL NOT NULL, proposer TEXT NOT NULL DEFAULT '', template TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT '', edit_status TEXT NOT NULL DEFAULT '', answer BLOB, island INTEGER,
    parent_id INTEGER);
"""

# Schema 5's new llm_calls columns, as `migrate` adds them to an older store.
LLM_CALL_COLUMNS_5 = (
    ("proposer", "TEXT NOT NULL DEFAULT ''"),
    ("template", "TEXT NOT NULL DEFAULT ''"),
    ("status", "TEXT NOT NULL DEFAULT ''"),
    ("edit_status", "TEXT NOT NULL DEFAULT ''"),
    ("answer", "BLOB"),
    ("island", "INTEGER"),
    ("parent_id", "INTEGER"),
)
# Schema 5's new tables (IF NOT EXISTS: the same statements make a new store and upgrade an older one).
TABLES_5 = """
CREATE TABLE IF NOT EXISTS bandit (key TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lessons (
    version INTEGER PRIMARY KEY, evaluations INTEGER NOT NULL, text TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    id TEXT PRIMARY KEY, base TEXT NOT NULL, text TEXT NOT NULL, proposer TEXT NOT NULL, created REAL NOT NULL);
"""


# Schema 6's table (IF NOT EXISTS, as TABLES_5). A round that moved nothing is one row of NULLs.
TABLES_6 = """
CREATE TABLE IF NOT EXISTS migrations (
    round INTEGER NOT NULL, candidate_id INTEGER, island INTEGER, created REAL NOT NULL);
"""


def create_tables(conn: sqlite3.Connection, run_name: str, config: dict, seed: int) -> None:
    """Make a new store's tables and its run's row, in one transaction (a new, empty file)."""
    conn.execute("BEGIN IMMEDIATE")
    for stmt in (SCHEMA + TABLES_5 + TABLES_6).split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("schema_version", str(SCHEMA_VERSION)), ("package", PACKAGE), ("created", str(time.time()))],
    )
    conn.execute(
        "INSERT INTO runs (name, config, created, seed) VALUES (?, ?, ?, ?)",
        (run_name, json.dumps(config, sort_keys=True, default=str), time.time(), int(seed)),
    )
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a store of an older schema up to SCHEMA_VERSION, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version < 2:  # every pending candidate so far was queued once
            conn.execute("ALTER TABLE pending ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1")
        if version < 3:  # no verdict so far names its judge: all are stale to any judge of today
            conn.execute("ALTER TABLE evaluations ADD COLUMN judge TEXT NOT NULL DEFAULT ''")
        if version < 4:  # no verdict so far says it was verified: none is ranked until it is
            conn.execute("ALTER TABLE evaluations ADD COLUMN stage TEXT NOT NULL DEFAULT ''")
            conn.execute(
                "CREATE INDEX evaluations_ranked ON evaluations (backend, stage, ok, fitness DESC, candidate_id)"
            )
        if version < 5:  # no LLM call so far says its proposer, status or answer: they read "" / NULL
            have = table_columns(conn, "llm_calls")
            for name, ddl in LLM_CALL_COLUMNS_5:
                if name not in have:  # a store downgraded by hand may keep some
                    conn.execute(f"ALTER TABLE llm_calls ADD COLUMN {name} {ddl}")
            for stmt in TABLES_5.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
        if version < 6:  # the migrations so far were not recorded: a resume replays them
            for stmt in TABLES_6.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('migrations_unrecorded', '1')")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The columns of one of the store's tables (empty when the store has no such table)."""
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def evaluation_columns(conn: sqlite3.Connection) -> set[str]:
    """The columns of the store's evaluations table: an older store opened read-only is read as is,
    without `judge` (schema < 3: every verdict reads judge "") or `stage` (schema < 4: stage "")."""
    return {r[1] for r in conn.execute("PRAGMA table_info(evaluations)")}


# The verdict's columns, in the order of verdict_values.
VERDICT_COLS = "status, ok, fitness, fitness_kind, metrics, feedback, seconds, created, judge, stage"

# The ranked rows' query: {judge} and {stage} are the column, or '' on an older store read as is.
ROW_SQL = """SELECT c.id, c.generation, c.island, c.niche, c.proposer, c.model, c.note, c.parent_ids,
    c.created, e.status, e.fitness, e.backend, e.fitness_kind, e.feedback, e.seconds, e.created,
    e.metrics, {judge}, {stage} FROM evaluations e JOIN candidates c ON c.id = e.candidate_id"""


def verdict_values(ev: dict) -> tuple:
    """An Evaluation dict as the values of VERDICT_COLS (seconds: the stages' total)."""
    seconds = ev.get("seconds") or {}
    total = float(sum(seconds.values())) if isinstance(seconds, dict) else float(seconds)
    return (ev["status"], int(ev["status"] == "ok"), float(ev.get("fitness") or 0.0),
            ev.get("fitness_kind", "none"), json.dumps(ev, sort_keys=True, default=str),
            ev.get("feedback", ""), total, time.time(), ev.get("judge") or "", ev.get("stage") or "")  # fmt: skip


def row_dict(r: tuple, full: bool = False) -> dict:
    """A row of ROW_SQL as the dict `Store.top` and `Store.all_evaluated` return (`metrics`: the
    whole Evaluation dict, with `full`)."""
    metrics = json.loads(r[16])
    row = {
        "id": r[0], "generation": r[1], "island": r[2], "niche": json.loads(r[3]), "proposer": r[4],
        "model": r[5], "note": r[6], "parent_ids": json.loads(r[7]), "created": r[8], "status": r[9],
        "fitness": r[10], "backend": r[11], "fitness_kind": r[12], "feedback": r[13], "seconds": r[14],
        "evaluated": r[15], "shapes": metrics.get("shapes", []), "held_out": metrics.get("held_out"),
        "judge": r[17], "stage": r[18],
    }  # fmt: skip
    if full:
        row["metrics"] = metrics
    return row


def check_schema(conn: sqlite3.Connection, path: Path) -> int:
    """The store's schema version (this one, or an older one `migrate` upgrades); StoreError else."""
    not_store = f"{path} is not a triton-evolve run store; pass the run.sqlite written by a triton-evolve run"
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        meta = dict(conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{not_store} ({e})") from e
    if meta.get("package") != PACKAGE:
        raise StoreError(not_store)
    stored = meta.get("schema_version")
    if stored != str(version) or not 1 <= version <= SCHEMA_VERSION:
        raise StoreError(
            f"{path} was created by schema {stored or version}, this triton-evolve reads "
            f"{SCHEMA_VERSION}; start a new run or use a matching version of triton-evolve"
        )
    return version
