"""Run configuration: one TOML file per run in runs/ (e.g. runs/demo.toml).

    [run]
    name = "demo"
    task = "runs/demo_cpu.toml"      # a task file (evaluators/task.py)
    seeds = ["kernels/seeds/tiled_matmul.py"]
    seed = 0                          # randomness of selection and of the mutator
    max_evals = 40                    # stop after this many evaluated candidates (all segments)
    time_budget_s = 540               # stop after this many seconds of this segment (0: none)
    target_fitness = 0                # stop once the best fitness reaches this (0: none)
    workers = 2                       # evaluations in flight (default: one per core / per GPU)
    device = "auto"                   # auto | cpu | cuda
    model_gpu = "auto"                # without a GPU: the GPU the performance model ranks for
    timeout_s = 180                   # hard limit per candidate evaluation
    verify_programs = 2048            # CPU: programs a verification's whole grids (reduced K) may run
    verify_sample_s = 30              # CPU: seconds a verification's full-size sampled programs may take

    [[proposers]]                     # who writes candidates; weights share the proposals
    kind = "mutator"
    weight = 1.0

    [population]                      # evolve/population.py PopulationConfig
    islands = 2
    temperature = 0.3
    explore_prob = 0.1
    migration_interval = 10
    parents_per_proposal = 2
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from evaluators.task import read_toml

from .population import PopulationConfig


class ConfigError(ValueError):
    """A run file is invalid; the message names the file, the field and the fix."""


class UsageError(Exception):
    """A command was given the wrong arguments (a missing run, a name taken); says the fix."""


PROPOSER_KINDS = ("mutator",)  # later issues add "llm"


@dataclasses.dataclass(frozen=True)
class ProposerConfig:
    kind: str  # one of PROPOSER_KINDS
    weight: float = 1.0  # share of proposals relative to the other proposers
    options: dict = dataclasses.field(default_factory=dict)  # kind-specific settings, passed through


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str
    task: str  # path of the task TOML
    seeds: tuple[str, ...] = ("kernels/seeds/tiled_matmul.py",)
    seed: int = 0
    max_evals: int = 100
    time_budget_s: float = 0.0  # 0: no time limit
    target_fitness: float = 0.0  # 0: no target
    workers: int = 0  # 0: one per core (CPU) or per GPU
    device: str = "auto"
    model_gpu: str = "auto"
    timeout_s: float = 180.0
    # CPU verifications (the expensive stage, evaluators/verify_stage.py): their budgets
    verify_programs: int = 2048
    verify_sample_s: float = 30.0
    proposers: tuple[ProposerConfig, ...] = (ProposerConfig("mutator"),)
    population: PopulationConfig = PopulationConfig()
    source: str = "<memory>"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        d["proposers"] = [dataclasses.asdict(p) for p in self.proposers]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d)
        d["seeds"] = tuple(d.get("seeds", ()))
        d["proposers"] = tuple(ProposerConfig(**p) for p in d.get("proposers", ()))
        d["population"] = PopulationConfig(**d.get("population", {}))
        return cls(**d)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"proposers", "population", "source"}
_POP_FIELDS = {f.name for f in dataclasses.fields(PopulationConfig)}


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    data = read_toml(path, "run", "runs/demo.toml", ConfigError)
    unknown = set(data) - {"run", "proposers", "population"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {sorted(unknown)}; allowed: [run], [[proposers]], [population]")
    run = data.get("run")
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: missing [run] table with at least name and task")
    bad = set(run) - _RUN_FIELDS
    if bad:
        raise ConfigError(f"{path}: unknown field(s) run.{sorted(bad)}; allowed: {sorted(_RUN_FIELDS)}")
    for field in ("name", "task"):
        if not isinstance(run.get(field), str) or not run[field]:
            raise ConfigError(f"{path}: field 'run.{field}' must be a non-empty string")
    _check_types(path, run)
    proposers = []
    for i, p in enumerate(data.get("proposers", [{"kind": "mutator"}])):
        if not isinstance(p, dict) or p.get("kind") not in PROPOSER_KINDS:
            raise ConfigError(
                f"{path}: proposers[{i}].kind is {p.get('kind') if isinstance(p, dict) else p!r}; "
                f"allowed: {', '.join(PROPOSER_KINDS)}"
            )
        weight = p.get("weight", 1.0)
        if not isinstance(weight, int | float) or weight <= 0:
            raise ConfigError(f"{path}: proposers[{i}].weight must be a positive number")
        options = {k: v for k, v in p.items() if k not in ("kind", "weight")}
        proposers.append(ProposerConfig(p["kind"], float(weight), options))
    pop = data.get("population", {})
    bad = set(pop) - _POP_FIELDS
    if bad:
        raise ConfigError(f"{path}: unknown field(s) population.{sorted(bad)}; allowed: {sorted(_POP_FIELDS)}")
    try:
        population = PopulationConfig(**pop)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: [population]: {e}") from None
    fields = {k: tuple(v) if k == "seeds" else v for k, v in run.items()}
    return RunConfig(**fields, proposers=tuple(proposers), population=population, source=str(path))


def _check_types(path: Path, run: dict) -> None:
    numbers = {"seed": int, "max_evals": int, "workers": int, "time_budget_s": float, "target_fitness": float,
               "timeout_s": float, "verify_programs": int, "verify_sample_s": float}  # fmt: skip
    for field, kind in numbers.items():
        if field in run:
            value = run[field]
            ok = isinstance(value, int | float) if kind is float else isinstance(value, int)
            if not ok or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{path}: field 'run.{field}' must be a non-negative {kind.__name__}")
    if run.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{path}: field 'run.device' is {run['device']!r}; allowed: auto, cpu, cuda")
    seeds = run.get("seeds", [])
    if not isinstance(seeds, list) or not all(isinstance(s, str) for s in seeds):
        raise ConfigError(f"{path}: field 'run.seeds' must be a list of kernel file paths")
