"""The run store's records of the LLM proposer (issue 12; schema 5, evolve/store_schema.py): each LLM
call (what it cost, how it ended, what the model answered), the proposing bandit's state and the run's
lessons, each version of them.

`MetaRecords` is a mixin of `evolve.store.Store` (apart so that store.py stays readable): its methods are
the Store's, and use only its public `connection`, `transaction()`, `path` and `readonly`. Writes go
through `transaction()` like every Store write: one commit per call (a read-only store refuses them).

An older store (schema < 5) opened read-only is read as is: its calls read proposer, template, status,
edit_status "" and answer ""; it has no bandit state and no lessons.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from collections.abc import Mapping

from evolve.store_schema import StoreError, table_columns

__all__ = ["KEY_PLACEHOLDER", "MetaRecords", "scrub_keys"]

KEY_PLACEHOLDER = "[api key]"

# The columns `llm_calls` returns, in order; the schema-5 ones read as their default on an older store.
_CALL_COLS = (
    "id", "candidate_id", "proposer", "model", "template", "status", "edit_status", "prompt_tokens",
    "completion_tokens", "cost", "latency_s", "error", "answer", "island", "parent_id", "created",
)  # fmt: skip
_DEFAULTS_5 = {
    "proposer": "''", "template": "''", "status": "''", "edit_status": "''", "answer": "NULL",
    "island": "NULL", "parent_id": "NULL",
}  # fmt: skip


def scrub_keys(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with the value of every environment variable named *_API_KEY or *_TOKEN (8 characters or
    more: shorter values would hit ordinary text) replaced by "[api key]"."""
    env = os.environ if environ is None else environ
    secrets = {v for k, v in env.items() if k.endswith(("_API_KEY", "_TOKEN")) and len(v) >= 8}
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: one key may contain another
        text = text.replace(secret, KEY_PLACEHOLDER)
    return text


class MetaRecords:
    """LLM calls, bandit state and lessons of a run (methods of `Store`; see the module docstring)."""

    # Provided by Store.
    path: object
    readonly: bool

    @property
    def connection(self) -> sqlite3.Connection:  # pragma: no cover - Store defines it
        raise NotImplementedError

    def transaction(self):  # pragma: no cover - Store defines it
        raise NotImplementedError

    # --------------------------------------------------------------- what prompts show

    def evaluation_dict(self, candidate_id: int, backend: str | None = None) -> dict | None:
        """The candidate's latest Evaluation as a dict (evaluators/evaluation.py, with its per-shape
        rows), on `backend` when named; None when it has none."""
        q = "SELECT metrics FROM evaluations WHERE candidate_id = ?"
        args: tuple = (candidate_id,)
        if backend is not None:
            q, args = q + " AND backend = ?", (candidate_id, backend)
        row = self.connection.execute(q + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return json.loads(row[0]) if row else None

    def seed_ids(self) -> list[int]:
        """The run's seed candidates, in id order."""
        return [
            r[0]
            for r in self.connection.execute("SELECT id FROM candidates WHERE proposer = 'seed' ORDER BY id")
        ]

    def recent_failures(self, island: int, limit: int) -> list[dict]:
        """The island's `limit` latest children whose verdict was a failure of theirs (not ok, not
        unsupported, not judge_error), oldest first: {id, status, feedback, note}."""
        rows = self.connection.execute(
            "SELECT c.id, e.status, e.feedback, c.note FROM evaluations e JOIN candidates c"
            " ON c.id = e.candidate_id WHERE c.island = ? AND c.proposer != 'seed'"
            " AND e.status NOT IN ('ok', 'unsupported', 'judge_error') ORDER BY e.id DESC LIMIT ?",
            (island, int(limit)),
        ).fetchall()
        return [{"id": r[0], "status": r[1], "feedback": r[2], "note": r[3]} for r in reversed(rows)]

    def outcomes(self, backend: str) -> list[dict]:
        """Every judged child on `backend` in run order, as evolve/meta/lessons.py `Outcome` fields:
        candidate, proposer, note, status, feedback, child_fitness, parent_fitness (its first parent's
        fitness on the same backend; None when it has none)."""
        rows = self.connection.execute(
            "SELECT c.id, c.proposer, c.note, e.status, e.feedback, e.fitness, c.parent_ids FROM candidates c"
            " JOIN evaluations e ON e.candidate_id = c.id WHERE e.backend = ? AND c.proposer != 'seed'"
            " ORDER BY c.id",
            (backend,),
        ).fetchall()
        fitness = dict(
            self.connection.execute(
                "SELECT candidate_id, fitness FROM evaluations WHERE backend = ?", (backend,)
            )
        )
        out = []
        for cid, proposer, note, status, feedback, child, parents in rows:
            parent_ids = json.loads(parents)
            out.append({
                "candidate": str(cid), "proposer": proposer, "note": note, "status": status,
                "feedback": feedback, "child_fitness": float(child or 0.0),
                "parent_fitness": fitness.get(parent_ids[0]) if parent_ids else None,
            })  # fmt: skip
        return out

    # --------------------------------------------------------------- LLM calls

    def add_llm_call(
        self,
        *,
        proposer: str,
        model: str,
        template: str,
        status: str,
        edit_status: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost: float | None,
        latency_s: float | None,
        error: str,
        answer: str | None,
        island: int | None = None,
        parent_id: int | None = None,
        candidate_id: int | None = None,
    ) -> int:
        """Record one LLM call and return its id. `status`: how the call ended (ok, truncated, empty,
        rate_limited, server_error, timeout, connection_error, auth_error, bad_request); `edit_status`:
        what applying its answer gave (applied, no_code, search_not_found, outside_evolve_block,
        truncated, unchanged, duplicate; "" when there was no answer to apply). `answer` is stored
        zlib-compressed. `candidate_id` may be set later (`set_llm_call_candidate`)."""
        # The caller never passes a key, but a model or an endpoint can echo one back (in an error
        # message quoting the request, or in the answer itself): scrub it before it reaches the file.
        error = scrub_keys(error or "")
        blob = zlib.compress(scrub_keys(answer).encode("utf-8")) if answer else None
        with self.transaction():
            cur = self.connection.execute(
                "INSERT INTO llm_calls (candidate_id, proposer, model, template, status, edit_status,"
                " prompt_tokens, completion_tokens, cost, latency_s, error, answer, island, parent_id, created)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (candidate_id, proposer, model, template, status, edit_status, prompt_tokens,
                 completion_tokens, cost, latency_s, error, blob, island, parent_id, time.time()),
            )  # fmt: skip
        return int(cur.lastrowid)

    def set_llm_call_candidate(self, call_id: int, candidate_id: int) -> None:
        """Link a recorded call to the candidate its answer became; StoreError when no such call."""
        with self.transaction():
            cur = self.connection.execute(
                "UPDATE llm_calls SET candidate_id = ? WHERE id = ?", (candidate_id, call_id)
            )
            if not cur.rowcount:
                raise StoreError(f"{self.path}: no LLM call {call_id} (use the id add_llm_call returned)")

    def llm_calls(self, limit: int | None = None) -> list[dict]:
        """The recorded calls in id order (with `limit`: the latest `limit` of them), each a dict of
        id, candidate_id, proposer, model, template, status, edit_status, prompt_tokens, completion_tokens,
        cost, latency_s, error, answer (decompressed text; "" when none), island, parent_id, created."""
        have = table_columns(self.connection, "llm_calls")
        cols = ", ".join(c if c in have else f"{_DEFAULTS_5[c]} AS {c}" for c in _CALL_COLS)
        q = f"SELECT {cols} FROM llm_calls ORDER BY id DESC"
        args: tuple = ()
        if limit is not None:
            q, args = q + " LIMIT ?", (int(limit),)
        rows = [dict(zip(_CALL_COLS, r, strict=True)) for r in self.connection.execute(q, args)]
        for row in rows:
            row["answer"] = zlib.decompress(row["answer"]).decode("utf-8") if row["answer"] else ""
        return rows[::-1]

    def llm_totals(self) -> dict:
        """{calls, prompt_tokens, completion_tokens, cost, by_status: {status: n}, by_edit_status:
        {edit_status: n}} over every call (unknown tokens or cost count 0; a call with status or
        edit_status "" - stored before schema 5, or no answer to apply - is counted in calls only)."""
        rows = self._llm_totals(grouped=False)
        return rows[0] if rows else _empty_totals()

    def llm_totals_by_proposer(self) -> list[dict]:
        """The totals of `llm_totals` per proposer, each with its `proposer`, ordered by proposer."""
        return self._llm_totals(grouped=True)

    def _llm_totals(self, grouped: bool) -> list[dict]:
        have = table_columns(self.connection, "llm_calls")
        proposer = "proposer" if "proposer" in have else "''"
        key = proposer if grouped else "''"
        q = (
            f"SELECT {key}, COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
            f" COALESCE(SUM(cost), 0.0) FROM llm_calls GROUP BY {key} ORDER BY {key}"
        )
        totals: dict[str, dict] = {}
        for k, calls, prompt, completion, cost in self.connection.execute(q):
            totals[k] = {**({"proposer": k} if grouped else {}), **_empty_totals()}
            totals[k].update(calls=calls, prompt_tokens=prompt, completion_tokens=completion, cost=cost)
        for column, field in (("status", "by_status"), ("edit_status", "by_edit_status")):
            if column not in have:
                continue
            q = (
                f"SELECT {key}, {column}, COUNT(*) FROM llm_calls WHERE {column} != ''"
                f" GROUP BY {key}, {column} ORDER BY {key}, {column}"
            )
            for k, value, n in self.connection.execute(q):
                totals[k][field][value] = n
        return list(totals.values())

    # ------------------------------------------------------------------ bandit

    def save_bandit(self, key: str, state: dict) -> None:
        """Store the bandit's state (`Bandit.to_dict()`, evolve/meta/bandit.py) under `key`, replacing
        the last one: a resumed run continues from it (`load_bandit`)."""
        text = json.dumps(state, sort_keys=True)
        with self.transaction():
            self.connection.execute(
                "INSERT INTO bandit (key, state, updated) VALUES (?, ?, ?) ON CONFLICT (key)"
                " DO UPDATE SET state = excluded.state, updated = excluded.updated",
                (key, text, time.time()),
            )

    def load_bandit(self, key: str) -> dict | None:
        """The bandit state last saved under `key`; None when none was (or the store predates schema 5)."""
        if not table_columns(self.connection, "bandit"):
            return None
        row = self.connection.execute("SELECT state FROM bandit WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def bandits(self) -> dict[str, dict]:
        """Every bandit state saved in the run, by key (the proposers' arms, each one's families)."""
        if not table_columns(self.connection, "bandit"):
            return {}
        rows = self.connection.execute("SELECT key, state FROM bandit ORDER BY key").fetchall()
        return {key: json.loads(state) for key, state in rows}

    # -------------------------------------------------------------- migrations

    def add_migration(self, moved: list[tuple[int, int]]) -> None:
        """Record one migration round of the population: (candidate id, island it entered) for each
        copy that entered (evolve/population.py migrate); a round that moved nothing is recorded too."""
        with self.transaction():
            conn = self.connection
            last = conn.execute("SELECT COALESCE(MAX(round), 0) FROM migrations").fetchone()[0]
            rows = [(last + 1, int(cid), int(island), time.time()) for cid, island in moved]
            conn.executemany(
                "INSERT INTO migrations (round, candidate_id, island, created) VALUES (?, ?, ?, ?)",
                rows or [(last + 1, None, None, time.time())],
            )

    def migrations(self) -> list[list[tuple[int, int]]] | None:
        """Every migration round recorded, in order, each a list of (candidate id, island entered);
        None when the store cannot say (it predates schema 6, or was upgraded from it): replay them."""
        if not table_columns(self.connection, "migrations"):
            return None
        unrecorded = self.connection.execute(
            "SELECT 1 FROM meta WHERE key = 'migrations_unrecorded'"
        ).fetchone()
        if unrecorded:
            return None
        rounds: dict[int, list[tuple[int, int]]] = {}
        for rnd, cid, island in self.connection.execute(
            "SELECT round, candidate_id, island FROM migrations ORDER BY round, rowid"
        ):
            rounds.setdefault(rnd, [])
            if cid is not None:
                rounds[rnd].append((cid, island))
        return [rounds[r] for r in sorted(rounds)]

    # ----------------------------------------------------------------- lessons

    def add_lessons(self, version: int, evaluations: int, text: str) -> None:
        """Store one version of the run's lessons (`Lessons`, evolve/meta/lessons.py), distilled from
        `evaluations` outcomes. Versions are the caller's count: StoreError when `version` is stored."""
        try:
            with self.transaction():
                self.connection.execute(
                    "INSERT INTO lessons (version, evaluations, text, created) VALUES (?, ?, ?, ?)",
                    (int(version), int(evaluations), text, time.time()),
                )
        except sqlite3.IntegrityError as e:
            raise StoreError(
                f"{self.path}: lessons version {version} is already stored; "
                "number the next one after latest_lessons()['version']"
            ) from e

    def latest_lessons(self) -> dict | None:
        """{version, evaluations, text, created} of the highest version; None when there are none."""
        rows = self._lessons(" ORDER BY version DESC LIMIT 1")
        return rows[0] if rows else None

    def all_lessons(self) -> list[dict]:
        """Every stored version of the lessons, {version, evaluations, text, created}, oldest first."""
        return self._lessons(" ORDER BY version")

    def _lessons(self, order: str) -> list[dict]:
        if not table_columns(self.connection, "lessons"):
            return []
        cur = self.connection.execute("SELECT version, evaluations, text, created FROM lessons" + order)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur]

    # ------------------------------------------------------------------ prompt variants

    def add_prompt(self, prompt_id: str, base: str, text: str, proposer: str) -> None:
        """Keep a prompt template variant (`text`, a variant of template `base`, written by `proposer`);
        StoreError when `prompt_id` is taken."""
        with self.transaction():
            try:
                self.connection.execute(
                    "INSERT INTO prompts (id, base, text, proposer, created) VALUES (?,?,?,?,?)",
                    (prompt_id, base, scrub_keys(text), proposer, time.time()),
                )
            except sqlite3.IntegrityError:
                raise StoreError(
                    f"{self.path}: prompt variant {prompt_id!r} exists; pick another id"
                ) from None

    def prompt_variants(self) -> list[dict]:
        """Every prompt template variant, {id, base, text, proposer, created}, oldest first ([] on an older
        store)."""
        if not table_columns(self.connection, "prompts"):
            return []
        q = "SELECT id, base, text, proposer, created FROM prompts ORDER BY created, id"
        return [dict(zip(("id", "base", "text", "proposer", "created"), r, strict=True))
                for r in self.connection.execute(q)]  # fmt: skip


def _empty_totals() -> dict:
    return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0, "by_status": {},
            "by_edit_status": {}}  # fmt: skip
