"""The run store: one SQLite file per run (shared/DESIGN.md, "Store").

The controller is the only writer; it commits after every call, so a Ctrl-C or SIGKILL
loses at most the evaluations in flight, and `pending_ids()` names exactly the
candidates to re-queue on resume (`requeue` counts each time, so the controller can stop
re-queuing one that every segment died on). Schema and migrations: evolve/store_schema.py. Readers (the leaderboard) open the file read-only
(`Store.open(path)`) while a run is going or after it died. WAL mode with
`synchronous=NORMAL`: a commit is durable against a process kill (not against power loss
since the last checkpoint), which is the failure this store is built for.

Each evaluation names the judge that gave it (`judge`, evaluators/fingerprint.py; "" before schema
3) and how far it went (`stage`: "provisional" - the cheap checks only - or "verified"; "" before
schema 4). Only ok verdicts that are verified (and, where a judge is named, that judge's) are ranked
(`top`, `best`); a stale (another judge's) or provisional one is shown after them, never ranked, and
`replace_evaluation` puts today's final verdict in its place when the run verifies or re-judges it
(evolve/controller.py, evolve/verification.py).

Times (`created`) are Unix seconds (float). JSON columns come back decoded.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from evolve.candidate import Proposal, normalised_hash
from evolve.store_meta import MetaRecords
from evolve.store_schema import (
    PACKAGE,
    ROW_SQL,
    SCHEMA_VERSION,
    VERDICT_COLS,
    StoreError,
    check_schema,
    create_tables,
    evaluation_columns,
    migrate,
    row_dict,
    verdict_values,
)

__all__ = ["PACKAGE", "RETRYABLE", "SCHEMA_VERSION", "Store", "StoreError"]

_CANDIDATE_COLS = "id, run, source, source_hash, parent_ids, island, generation, proposer, model, template, note, niche, created"

# Verdicts that may be the machine's or the judge's fault, so a later measurement may replace them.
RETRYABLE = ("timeout", "crashed", "judge_error")


class Store(MetaRecords):
    """One run's SQLite file. Build with `Store.create` (new run) or `Store.open` (resume/read).
    LLM calls, bandit state and lessons: the methods of evolve/store_meta.py MetaRecords."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self._depth = 0  # transaction nesting: only the outermost level commits
        self.run_name: str = conn.execute("SELECT name FROM runs LIMIT 1").fetchone()[0]
        # An older store opened read-only lacks the newer columns: its verdicts read as judge "" (schema
        # < 3) and stage "" (schema < 4, never verified).
        columns = evaluation_columns(conn)
        self._judge = "e.judge" if "judge" in columns else "''"
        self._stage = "e.stage" if "stage" in columns else "''"
        self._rows = ROW_SQL.format(judge=self._judge, stage=self._stage)

    # ----------------------------------------------------------------- opening

    @classmethod
    def create(cls, path: str | Path, run_name: str, config: dict, seed: int) -> Store:
        """Start a new run in a new file at `path` (parent folders are made).

        Raises StoreError when the file already exists: resume with `Store.open(path, readonly=False)`.
        """
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            raise StoreError(
                f"{path} already exists; resume it with Store.open(path, readonly=False) "
                "or choose a new run name"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = cls._connect(path, readonly=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            create_tables(conn, run_name, config, seed)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, readonly=False)

    @classmethod
    def open(cls, path: str | Path, readonly: bool = True) -> Store:
        """Open an existing run: read-only (default; safe while the run's writer is live) or to resume."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path}: no run store there (file not found)")
        conn = cls._connect(path, readonly)
        try:
            version = check_schema(conn, path)
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                if version < SCHEMA_VERSION:
                    migrate(conn, version)
            return cls(conn, path, readonly)
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
        uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rwc'}"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open ({e})") from e
        if not readonly:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA journal_size_limit={64 << 20}")
        return conn

    @property
    def connection(self) -> sqlite3.Connection:
        """The open SQLite connection (for evolve/store_meta.py): write only inside `transaction()`."""
        return self._conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """Group writes into one commit (bulk loads, tests). Calls inside do not commit on their own;
        an exception rolls the whole group back. Nests: only the outermost level commits."""
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only; open with readonly=False to write")
        if self._depth == 0:
            self._conn.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield self
        except BaseException as e:
            self._depth -= 1
            if self._depth == 0 and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            refused = self._refused_write(e)
            if refused is not None:
                raise refused from e
            raise
        self._depth -= 1
        if self._depth == 0:
            try:
                self._conn.execute("COMMIT")
            except BaseException as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                refused = self._refused_write(e)
                if refused is not None:
                    raise refused from e
                raise

    def _refused_write(self, error: BaseException) -> StoreError | None:
        """A StoreError naming the fix when the disk refused a write (full, over a file size limit,
        failing); None for any other error. SQLite rolls the write back: what was committed stays."""
        if not isinstance(error, sqlite3.OperationalError):
            return None
        text = str(error).lower()
        if "full" not in text and "disk i/o error" not in text:
            return None
        return StoreError(
            f"{self.path}: the disk refused a write ({error}); everything committed before is kept. "
            f"Free space where the run lives ({self.path.parent}), then continue with "
            f"`evolve run --resume {self.path.parent}`"
        )

    # ------------------------------------------------------------------ writes

    def add_candidate(
        self,
        source: str,
        *,
        parent_ids: Iterable[int] = (),
        proposer: str,
        island: int,
        generation: int,
        niche: Any = (),
        note: str = "",
        model: str = "",
        template: str = "",
        pending: bool = False,
        source_hash: str = "",
    ) -> int | None:
        """Store a new candidate; its id, or None when its normalised source is already in this run.

        `pending=True` also marks it handed to the pool, in the same commit. `source_hash`: its
        normalised_hash when the caller computed it already (else computed here).
        """
        h = source_hash or normalised_hash(source)
        with self.transaction():
            cur = self._conn.execute(
                "INSERT INTO candidates (run, source, source_hash, parent_ids, island, generation, proposer,"
                " model, template, note, niche, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (run, source_hash) DO NOTHING",
                (self.run_name, source, h, json.dumps([int(p) for p in parent_ids]), int(island),
                 int(generation), proposer, model, template, note, json.dumps(niche), time.time()),
            )  # fmt: skip
            if cur.rowcount == 0:
                return None
            cid = int(cur.lastrowid)  # type: ignore[arg-type]
            if pending:
                self.mark_pending(cid)
        return cid

    def add_proposal(
        self, proposal: Proposal, island: int, generation: int, niche: Any = (), pending: bool = False
    ) -> int | None:
        """`add_candidate` with the fields of an `evolve.candidate.Proposal`."""
        return self.add_candidate(
            proposal.source, parent_ids=proposal.parent_ids, proposer=proposal.proposer, island=island,
            generation=generation, niche=niche, note=proposal.note, model=proposal.model,
            template=proposal.template, pending=pending, source_hash=proposal.source_hash,
        )  # fmt: skip

    def mark_pending(self, candidate_id: int) -> None:
        """Record that the candidate was handed to the worker pool and is not yet evaluated."""
        q = "INSERT INTO pending (candidate_id, created) VALUES (?, ?) ON CONFLICT (candidate_id) DO NOTHING"
        try:
            with self.transaction():
                self._conn.execute(q, (candidate_id, time.time()))
        except sqlite3.IntegrityError as e:
            raise StoreError(f"{self.path}: cannot mark candidate {candidate_id} pending ({e})") from e

    def requeue(self, candidate_id: int) -> int:
        """Count one more queueing of a pending candidate (a resumed run hands it to the pool
        again); how many times it has been queued in all. 0 when it is not pending."""
        with self.transaction():
            self._conn.execute(
                "UPDATE pending SET attempts = attempts + 1 WHERE candidate_id = ?", (candidate_id,)
            )
            row = self._conn.execute("SELECT attempts FROM pending WHERE candidate_id = ?", (candidate_id,))
            found = row.fetchone()
        return int(found[0]) if found else 0

    def retry_evaluation(self, candidate_id: int, evaluation: dict | Any) -> bool:
        """Store a new verdict over one of the same (candidate, backend) that may have been the
        machine's or the judge's fault (RETRYABLE: timeout, crashed, judge_error); a standing
        verdict (ok, rejected, compile_error, incorrect) is kept and False returned. With no
        verdict stored yet, the same as add_evaluation. True when stored."""
        ev = evaluation.to_dict() if hasattr(evaluation, "to_dict") else dict(evaluation)
        with self.transaction():
            row = self._conn.execute(
                "SELECT status, ok FROM evaluations WHERE candidate_id = ? AND backend = ?",
                (candidate_id, ev["backend"]),
            ).fetchone()
            if row is None:
                return self.add_evaluation(candidate_id, ev)
            if row[0] not in RETRYABLE:
                return False
            self._conn.execute(
                "DELETE FROM evaluations WHERE candidate_id = ? AND backend = ?",
                (candidate_id, ev["backend"]),
            )
            self._conn.execute(
                "UPDATE backend_counts SET ok = ok - ?, total = total - 1 WHERE backend = ?",
                (row[1], ev["backend"]),
            )
            return self.add_evaluation(candidate_id, ev)

    def add_evaluation(self, candidate_id: int, evaluation: dict | Any) -> bool:
        """Store an Evaluation (dict or object with `to_dict`) and clear the candidate's pending mark.

        Idempotent per (candidate_id, backend): a repeat is ignored and returns False; True when stored.
        """
        ev = evaluation.to_dict() if hasattr(evaluation, "to_dict") else dict(evaluation)
        values = verdict_values(ev)
        try:
            with self.transaction():
                cur = self._conn.execute(
                    f"INSERT INTO evaluations (candidate_id, backend, {VERDICT_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (candidate_id, backend) DO NOTHING",
                    (candidate_id, ev["backend"], *values),
                )
                self._conn.execute("DELETE FROM pending WHERE candidate_id = ?", (candidate_id,))
                if cur.rowcount:
                    self._conn.execute(
                        "INSERT INTO backend_counts (backend, ok, total) VALUES (?, ?, 1) ON CONFLICT (backend)"
                        " DO UPDATE SET ok = ok + excluded.ok, total = total + 1",
                        (ev["backend"], values[1]),
                    )
        except sqlite3.IntegrityError as e:
            raise StoreError(f"{self.path}: cannot store evaluation of candidate {candidate_id} ({e})") from e
        return bool(cur.rowcount)

    def replace_evaluation(self, candidate_id: int, evaluation: dict | Any, judge: str) -> bool:
        """Store a final verdict of `judge` (today's) over one that does not stand, in place (still one
        evaluation per candidate and backend), and clear the candidate's pending mark.

        Final: verified, or a failure (a failure found by either stage is final). Does not stand: a
        stale verdict (another judge's), or an ok one of `judge` that is not verified (provisional; ""
        before stages). False, and nothing changed, otherwise: no stored verdict (use add_evaluation),
        a standing one (verified ok, or a failure of `judge`), or a new verdict that is not final or
        not `judge`'s (the controller, evolve/controller.py, re-judges such records)."""
        ev = evaluation.to_dict() if hasattr(evaluation, "to_dict") else dict(evaluation)
        final = ev.get("stage") == "verified" or ev["status"] != "ok"
        if not judge or (ev.get("judge") or "") != judge or not final:
            return False
        values = verdict_values(ev)
        with self.transaction():
            row = self._conn.execute(
                f"SELECT ok, {self._judge}, {self._stage} FROM evaluations e WHERE candidate_id = ? AND backend = ?",
                (candidate_id, ev["backend"]),
            ).fetchone()
            if row is None or (row[1] == judge and (not row[0] or row[2] == "verified")):
                return False
            sets = ", ".join(f"{c} = ?" for c in VERDICT_COLS.split(", "))
            q = f"UPDATE evaluations SET {sets} WHERE candidate_id = ? AND backend = ?"
            self._conn.execute(q, (*values, candidate_id, ev["backend"]))
            q = "UPDATE backend_counts SET ok = ok + ? WHERE backend = ?"
            self._conn.execute(q, (values[1] - row[0], ev["backend"]))
            self._conn.execute("DELETE FROM pending WHERE candidate_id = ?", (candidate_id,))
        return True

    def set_niche(self, candidate_id: int, niche: Any) -> None:
        """Record the niche derived from the candidate's evaluation (compile facts and source)."""
        with self.transaction():
            self._conn.execute(
                "UPDATE candidates SET niche = ? WHERE id = ?", (json.dumps(niche), candidate_id)
            )

    def population_rows(self, backend: str) -> list[dict]:
        """What a resumed run rebuilds its population from: every candidate evaluated on `backend`
        with {id, island, generation, niche, source_hash, status, fitness, judge, stage}, in id order."""
        cur = self._conn.execute(
            "SELECT c.id, c.island, c.generation, c.niche, c.source_hash, e.status, e.fitness,"
            f" {self._judge}, {self._stage} FROM candidates c JOIN evaluations e ON e.candidate_id = c.id"
            " WHERE e.backend = ? ORDER BY c.id",
            (backend,),
        )
        names = ("id", "island", "generation", "niche", "source_hash", "status", "fitness", "judge", "stage")
        return [{**dict(zip(names, r, strict=True)), "niche": json.loads(r[3])} for r in cur]

    def all_hashes(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT source_hash FROM candidates ORDER BY id")]

    def update_proposer_stats(self, proposer: str, island: int, status: str, improved: bool) -> None:
        """Count one proposal: accepted when `status` is "ok", else a failure under its status
        (any string, e.g. "duplicate"); `improved` when it beat the island's best."""
        with self.transaction():
            row = self._conn.execute(
                "SELECT failures FROM proposer_stats WHERE proposer = ? AND island = ?", (proposer, island)
            ).fetchone()
            failures = json.loads(row[0]) if row else {}
            if status != "ok":
                failures[status] = failures.get(status, 0) + 1
            self._conn.execute(
                "INSERT INTO proposer_stats (proposer, island, proposals, accepted, improved, failures)"
                " VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT (proposer, island) DO UPDATE SET"
                " proposals = proposals + 1, accepted = accepted + excluded.accepted,"
                " improved = improved + excluded.improved, failures = excluded.failures",
                (
                    proposer,
                    island,
                    int(status == "ok"),
                    int(bool(improved)),
                    json.dumps(failures, sort_keys=True),
                ),
            )

    def set_run_status(self, status: str, notes: str | None = None) -> None:
        """Set the run's status (e.g. "running", "stopped", "finished"), and optionally its notes."""
        with self.transaction():
            self._conn.execute("UPDATE runs SET status = ? WHERE name = ?", (status, self.run_name))
            if notes is not None:
                self._conn.execute("UPDATE runs SET notes = ? WHERE name = ?", (notes, self.run_name))

    # ------------------------------------------------------------------- reads

    def pending_ids(self) -> list[int]:
        """Candidates handed to the pool and not yet evaluated, oldest first: re-queue these on resume."""
        return [r[0] for r in self._conn.execute("SELECT candidate_id FROM pending ORDER BY candidate_id")]

    def has_hash(self, source_hash: str) -> bool:
        """Whether a candidate with this normalised source hash is already in the run."""
        q = "SELECT 1 FROM candidates WHERE run = ? AND source_hash = ?"
        return self._conn.execute(q, (self.run_name, source_hash)).fetchone() is not None

    def candidate(self, candidate_id: int) -> dict:
        """One candidate with its evaluations (no metrics); StoreError when unknown."""
        found = self.candidates([candidate_id])
        if not found:
            raise StoreError(f"{self.path}: no candidate {candidate_id}")
        return found[0]

    def candidates(self, ids: Iterable[int]) -> list[dict]:
        """Candidates in the order of `ids` (unknown ids skipped). Each dict holds the candidate
        columns plus `evaluations`: [{backend, status, fitness, fitness_kind, feedback, judge, stage}]."""
        ids = [int(i) for i in ids]
        out: dict[int, dict] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            cur = self._conn.execute(f"SELECT {_CANDIDATE_COLS} FROM candidates WHERE id IN ({marks})", chunk)
            names = [d[0] for d in cur.description]
            for row in cur:
                c = dict(zip(names, row, strict=True))
                c["parent_ids"] = json.loads(c["parent_ids"])
                c["niche"] = json.loads(c["niche"])
                c["evaluations"] = []
                out[c["id"]] = c
            q = (
                "SELECT e.candidate_id, e.backend, e.status, e.fitness, e.fitness_kind, e.feedback,"
                f" {self._judge}, {self._stage} FROM evaluations e WHERE e.candidate_id IN ({marks}) ORDER BY e.id"
            )
            for cid, backend, status, fitness, kind, feedback, judge, stage in self._conn.execute(q, chunk):
                out[cid]["evaluations"].append(
                    {"backend": backend, "status": status, "fitness": fitness, "fitness_kind": kind,
                     "feedback": feedback, "judge": judge, "stage": stage}
                )  # fmt: skip
        return [out[i] for i in ids if i in out]

    def default_backend(self) -> str | None:
        """The backend with the most ok evaluations (ties: most evaluations, then name); None if none."""
        row = self._conn.execute(
            "SELECT backend FROM backend_counts ORDER BY ok DESC, total DESC, backend LIMIT 1"
        ).fetchone()
        return row[0] if row else None

    def top(self, k: int, backend: str | None = None, judge: str | None = None) -> list[dict]:
        """The k best evaluations on one backend (default: `default_backend()`), never mixing backends.
        Rows: store_schema.row_dict, plus `model_error` (the Evaluation's; None when measured, uncalibrated
        or stored before model errors), `stale` (judged by another judge than `judge`) and `rankable`.

        Rankable rows come first, by fitness (ties: lower id): ok, verified (a provisional verdict passed
        the cheap checks only; stage "" was never verified) and, with `judge` (today's fingerprint,
        evaluators/fingerprint.py), that judge's. Every other row (a provisional or stale ok verdict,
        whatever its fitness, or a failure) comes after them, by fitness (ties: ok first, lower id)."""
        backend = backend if backend is not None else self.default_backend()
        if backend is None:
            return []
        rankable = f"{self._stage} = 'verified' AND e.ok = 1" + (
            "" if judge is None else f" AND {self._judge} = ?"
        )
        first = () if judge is None else (judge,)
        # Two index walks (evaluations_ranked, evaluations_top), not a sort of the backend on a computed key
        q = f"{self._rows} WHERE e.backend = ? AND {rankable} ORDER BY e.fitness DESC, e.candidate_id LIMIT ?"
        rows = [_with_model_error(r) for r in self._conn.execute(q, (backend, *first, int(k)))]
        if len(rows) < k:
            q = (
                f"{self._rows} WHERE e.backend = ? AND NOT ({rankable})"
                " ORDER BY e.fitness DESC, e.ok DESC, e.candidate_id LIMIT ?"
            )
            rows += [
                _with_model_error(r) for r in self._conn.execute(q, (backend, *first, int(k) - len(rows)))
            ]
        for row in rows:
            row["stale"] = judge is not None and row["judge"] != judge
            row["rankable"] = row["status"] == "ok" and row["stage"] == "verified" and not row["stale"]
        return rows

    def best(self, backend: str | None = None, judge: str | None = None) -> dict | None:
        """The best rankable evaluation on `backend` (default: `default_backend()`): ok and verified,
        and with `judge`, that judge's (a stale or provisional verdict is never the best); or None."""
        rows = self.top(1, backend, judge)
        return rows[0] if rows and rows[0]["rankable"] else None

    def provisional_count(self, backend: str | None = None) -> int:
        """Ok verdicts that passed the cheap checks only (stage "provisional"; never ranked), on all backends
        unless one is named."""
        q, args = f"SELECT COUNT(*) FROM evaluations e WHERE e.ok = 1 AND {self._stage} = 'provisional'", ()
        if backend is not None:
            q, args = q + " AND e.backend = ?", (backend,)
        return self._conn.execute(q, args).fetchone()[0]

    def all_evaluated(self) -> list[dict]:
        """Every evaluation of every candidate (by candidate id, then backend), for `--json` output.
        Rows as store_schema.row_dict, plus `metrics` (the full Evaluation dict) and `model_error` (as in top)."""
        q = f"{self._rows} ORDER BY e.candidate_id, e.backend"
        rows = [row_dict(r, full=True) for r in self._conn.execute(q)]
        return [{**row, "model_error": row["metrics"].get("model_error")} for row in rows]

    def counts_by_status(self, backend: str | None = None) -> dict[str, int]:
        """Number of evaluations per status (all backends unless one is named); "pending" is added."""
        q, args = "SELECT status, COUNT(*) FROM evaluations", ()
        if backend is not None:
            q, args = q + " WHERE backend = ?", (backend,)
        counts = dict(self._conn.execute(q + " GROUP BY status ORDER BY status", args))
        counts["pending"] = self._conn.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        return counts

    def evaluated_count(self) -> int:
        """Number of distinct candidates with at least one evaluation."""
        return self._conn.execute("SELECT COUNT(DISTINCT candidate_id) FROM evaluations").fetchone()[0]

    def proposer_stats(self) -> list[dict]:
        """Rows {proposer, island, proposals, accepted, improved, failures: {status: n}}."""
        cur = self._conn.execute(
            "SELECT proposer, island, proposals, accepted, improved, failures FROM proposer_stats"
            " ORDER BY proposer, island"
        )
        names = [d[0] for d in cur.description]
        return [{**dict(zip(names, r, strict=True)), "failures": json.loads(r[5])} for r in cur]

    def run_info(self) -> dict:
        """{name, config, created, seed, status, notes, schema_version, package, path}."""
        cur = self._conn.execute("SELECT name, config, created, seed, status, notes FROM runs LIMIT 1")
        info = dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))
        info["config"] = json.loads(info["config"])
        meta = dict(self._conn.execute("SELECT key, value FROM meta"))
        return {**info, "schema_version": int(meta["schema_version"]), "package": meta["package"],
                "path": str(self.path)}  # fmt: skip


def _with_model_error(r: tuple) -> dict:
    """A row of ROW_SQL as row_dict makes it, plus the Evaluation's `model_error` (the relative error of a
    modelled fitness ratio, evolve/model_error.py); None when measured, uncalibrated or an older record."""
    row = row_dict(r, full=True)
    row["model_error"] = row.pop("metrics").get("model_error")
    return row
