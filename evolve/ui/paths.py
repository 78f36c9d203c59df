"""Where runs live and what is in them: run folders, read-only stores, and errors that list what exists.

Every reader here opens the store read-only (evolve/store.py), so it works while a run is going (SQLite
WAL: the run writes, readers see its last commit) and on a finished or killed run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..config import UsageError
from ..store import Store

RUNS_DIR = Path("runs")


def run_dir(name_or_path: str) -> Path:
    """`demo`, `runs/demo` or `runs/demo/run.sqlite` -> runs/demo; a clear error listing runs otherwise."""
    path = Path(name_or_path)
    if path.name == "run.sqlite":
        path = path.parent
    for candidate in (path, RUNS_DIR / name_or_path):
        if (candidate / "run.sqlite").is_file():
            return candidate
    existing = sorted(p.parent.name for p in RUNS_DIR.glob("*/run.sqlite"))
    known = ", ".join(existing) if existing else "none yet (start one with `evolve run runs/demo.toml`)"
    raise UsageError(f"no run named {name_or_path!r}; runs in {RUNS_DIR}/: {known}")


def open_run(name_or_path: str) -> Store:
    """The run's store, read-only (use it as a context manager); UsageError listing runs when unknown."""
    return Store.open(run_dir(name_or_path) / "run.sqlite", readonly=True)


def id_ranges(ids: Iterable[int]) -> str:
    """Sorted ids as compact ranges: [1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10"; "none" when empty."""
    spans: list[list[int]] = []
    for i in sorted(set(ids)):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans) or "none"


def candidate_ids(store: Store) -> list[int]:
    """Every candidate id in the run, ascending."""
    return [r[0] for r in store.connection.execute("SELECT id FROM candidates ORDER BY id")]


def require_candidate(store: Store, candidate_id: int) -> dict:
    """Store.candidate(id) (columns plus evaluations); UsageError naming the ids that exist otherwise,
    e.g. "no candidate 999 in run demo; ids 1-57"."""
    found = store.candidates([candidate_id])
    if not found:
        name = store.run_info()["name"]
        raise UsageError(f"no candidate {candidate_id} in run {name}; ids {id_ranges(candidate_ids(store))}")
    return found[0]


def backend_counts(store: Store) -> dict[str, int]:
    """Verdicts per backend, most first: {"model:h100": 57, ...}."""
    q = "SELECT backend, total FROM backend_counts ORDER BY total DESC, backend"
    return dict(store.connection.execute(q))


def require_backend(store: Store, backend: str | None) -> str | None:
    """`backend` when the run has verdicts on it, else UsageError listing the run's backends; None
    given: the default (the backend with most ok verdicts; None when nothing is judged yet)."""
    if backend is None:
        return store.default_backend()
    counts = backend_counts(store)
    if backend not in counts:
        known = ", ".join(f"{b} ({n} verdicts)" for b, n in counts.items()) or "none yet"
        raise UsageError(
            f"no verdict on backend {backend!r} in run {store.run_info()['name']}; backends: {known}"
        )
    return backend
