"""The run store's schema: its tables, the version check on open, and migrations of older stores.

Apart from evolve/store.py (the queries) so that each stays readable; only store.py uses it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class StoreError(Exception):
    """The file is missing, not a run store, of another schema version, or misused."""


# 2: pending.attempts (how many times a candidate was queued; see requeue).
# 3: evaluations.judge (the fingerprint of the judge that gave the verdict, evaluators/fingerprint.py;
#    "" for verdicts stored before: stale, re-judged on resume when they matter).
SCHEMA_VERSION = 3
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
    UNIQUE (candidate_id, backend));
CREATE INDEX evaluations_top ON evaluations (backend, fitness DESC, ok DESC, candidate_id);
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


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a store of an older schema up to SCHEMA_VERSION, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version < 2:  # every pending candidate so far was queued once
            conn.execute("ALTER TABLE pending ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1")
        if version < 3:  # no verdict so far names its judge: all are stale to any judge of today
            conn.execute("ALTER TABLE evaluations ADD COLUMN judge TEXT NOT NULL DEFAULT ''")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def has_judge_column(conn: sqlite3.Connection) -> bool:
    """Whether the store's evaluations name their judge (schema 3; an older store opened
    read-only is read as is, its verdicts all judge "")."""
    return any(r[1] == "judge" for r in conn.execute("PRAGMA table_info(evaluations)"))


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
