"""The tiny end-to-end run the engine's process-level tests and the scripted-LLM benchmark start: the
CPU task tests/tasks/tiny.toml and a run file on it with the settings they share (the seed kernel, 2
workers, verifications on a small budget so that make test stays short), plus what each adds."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "kernels" / "seeds" / "tiled_matmul.py"
TASK = (ROOT / "tests" / "tasks" / "tiny.toml").read_text()


def write_run(folder: Path, *, seed: int, max_evals: int, name: str = "t", tail: str = "") -> Path:
    """Write folder/tiny.toml and folder/run.toml (run `name`, randomness `seed`, `max_evals`, then
    `tail`: proposers, population); return the run file's path."""
    (folder / "tiny.toml").write_text(TASK)
    run = folder / "run.toml"
    run.write_text(
        f"""
[run]
name = "{name}"
task = "tiny.toml"
seeds = ["{SEED}"]
seed = {seed}
max_evals = {max_evals}
workers = 2
timeout_s = 120
# verifications on a small budget (the skinny shape's whole grid, 2 s of samples): make test stays short
verify_programs = 64
verify_sample_s = 2
{tail}"""
    )
    return run
