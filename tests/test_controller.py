"""Controller logic through a synchronous in-process pool (the Ray pool has its own tests)."""

from pathlib import Path

from evaluators import load_task
from evolve.candidate import Proposal
from evolve.config import RunConfig
from evolve.controller import MAX_BARREN_PROPOSALS, Controller
from evolve.population import Population, PopulationConfig
from evolve.store import Store

SEED = str(Path(__file__).resolve().parents[1] / "kernels" / "seeds" / "tiled_matmul.py")


class InlinePool:
    """Judges instantly with a fitness derived from the source length (no GPU, no Ray)."""

    def __init__(self, workers: int) -> None:
        self.size, self.jobs, self.done = workers, [], []

    def idle_slots(self) -> int:
        return self.size - len(self.jobs)

    def in_flight(self) -> int:
        return len(self.jobs)

    def submit(self, job) -> None:
        self.jobs.append(job)

    def poll(self, timeout: float):
        out = []
        for job in self.jobs:
            fitness = (len(job.source) % 97) / 100 + 0.01
            out.append((job.candidate_id, {"status": "ok", "backend": "model:h100", "fitness": fitness,
                                           "fitness_kind": "modelled", "feedback": "", "shapes": [],
                                           "compile": [], "seconds": {}, "provenance": {}}))  # fmt: skip
            self.done.append(job.candidate_id)
        self.jobs = []
        return out


class FixedProposer:
    """Always proposes the same handful of sources: most proposals are duplicates."""

    name = "fixed"

    def __init__(self, variants: int) -> None:
        self.variants, self.calls = variants, 0

    def propose(self, parents, context):
        self.calls += 1
        n = self.calls % self.variants
        return [Proposal(Path(SEED).read_text() + f"\nX_{n} = {n}\n", (parents[0].id,), self.name)]


def _controller(tmp_path, proposer, max_evals=10):
    config = RunConfig(name="c", task="runs/demo_cpu.toml", seeds=(SEED,), max_evals=max_evals,
                       population=PopulationConfig(islands=2))  # fmt: skip
    store = Store.create(tmp_path / "run.sqlite", "c", config.to_dict(), 0)
    pool = InlinePool(2)
    controller = Controller(config, load_task(config.task), store, Population(config.population),
                            [(proposer, 1.0)], pool, {}, "model:h100")  # fmt: skip
    return controller, store, pool


def test_duplicates_are_rejected_and_a_barren_run_stops(tmp_path):
    proposer = FixedProposer(variants=3)
    controller, store, pool = _controller(tmp_path, proposer, max_evals=50)
    reason = controller.run()
    assert "duplicates or invalid" in reason
    # the seed plus the three distinct variants, each judged exactly once
    assert store.evaluated_count() == 4 and sorted(pool.done) == sorted(set(pool.done))
    assert controller.progress.duplicates >= MAX_BARREN_PROPOSALS
    stats = {(r["proposer"], r["island"]): r for r in store.proposer_stats()}
    assert sum(r["failures"].get("duplicate", 0) for r in stats.values()) == controller.progress.duplicates


def test_stops_at_max_evals_and_records_everything(tmp_path):
    controller, store, pool = _controller(tmp_path, FixedProposer(variants=1000), max_evals=9)
    assert controller.run() == "max_evals 9 reached"
    assert store.evaluated_count() == 9 and store.pending_ids() == []
    assert store.run_info()["status"] == "finished"
    best = store.best("model:h100")
    assert controller.progress.best_fitness == best["fitness"]
