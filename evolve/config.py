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
screen_workers = 0                # GPU runs: CPU actors that screen each candidate (static rules,
                                  # compile, check shapes) before it takes a GPU (evolve/screen.py)
device = "auto"                   # auto | cpu | cuda
model_gpu = "auto"                # without a GPU: the GPU the performance model ranks for
timeout_s = 180                   # hard limit per candidate evaluation
verify_programs = 2048            # CPU: programs a verification's whole grids (reduced K) may run
verify_sample_s = 30              # CPU: seconds a verification's full-size sampled programs may take

max_cost = 0                      # USD: LLM proposers stop once their calls cost this (0: none)
max_tokens = 0                    # LLM proposers stop once their calls used this many tokens (0: none)

[[proposers]]                     # who writes candidates; weights are the bandit's prior shares
kind = "mutator"
weight = 1.0

[[proposers]]                     # an LLM through any OpenAI-compatible endpoint
kind = "llm"                      # or "auto": the LLM when an endpoint and key are set, else the mutator
model = "gpt-4o-mini"
base_url = "http://localhost:8000/v1"   # optional; default OPENAI_BASE_URL, else api.openai.com
api_key_env = "OPENAI_API_KEY"    # the NAME of the variable holding the key, never the key
temperature = 0.8
max_tokens = 4096                 # per answer
concurrency = 4                   # calls in flight through this proposer
timeout_s = 120                   # per HTTP attempt (the client retries 429/5xx/timeouts itself)
price_in = 0.15                   # USD per million prompt tokens (0: cost not tracked)
price_out = 0.60                  # USD per million completion tokens
templates = ["default", "rewrite"]  # prompt templates (evolve/prompts/) the bandit chooses among

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


PROPOSER_KINDS = ("mutator", "llm", "auto")
# The fields of an LLM proposer (evolve/proposers/llm_client.py LLMSettings, plus the proposer's own),
# with their types; model is required for "llm" ("auto" without one falls back to the mutator).
LLM_FIELDS = {
    "model": str, "base_url": str, "api_key_env": str, "temperature": float, "max_tokens": int,
    "timeout_s": float, "max_retries": int, "price_in": float, "price_out": float, "stream": bool,
    "concurrency": int, "templates": list,
}  # fmt: skip


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
    # GPU runs: CPU actors judging each candidate's cheap checks first (evolve/screen.py); 0: none
    screen_workers: int = 0
    device: str = "auto"
    model_gpu: str = "auto"
    timeout_s: float = 180.0
    # CPU verifications (the expensive stage, evaluators/verify_stage.py): their budgets
    verify_programs: int = 2048
    verify_sample_s: float = 30.0
    max_cost: float = 0.0  # USD the LLM proposers may spend (0: no cap)
    max_tokens: int = 0  # tokens the LLM proposers may use, in and out (0: no cap)
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
        raise ConfigError(
            f"{path}: unknown table(s) {sorted(unknown)}; allowed: [run], [[proposers]], [population]"
        )
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
        if p["kind"] in ("llm", "auto"):
            _check_llm(path, i, p["kind"], options)
        elif set(options) - {"weights"}:
            raise ConfigError(
                f"{path}: proposers[{i}] (mutator) has unknown field(s) {sorted(set(options) - {'weights'})}; "
                "allowed: weight, weights (per transformation, evolve/proposers/mutator.py DEFAULT_WEIGHTS)"
            )
        proposers.append(ProposerConfig(p["kind"], float(weight), options))
    pop = data.get("population", {})
    bad = set(pop) - _POP_FIELDS
    if bad:
        raise ConfigError(
            f"{path}: unknown field(s) population.{sorted(bad)}; allowed: {sorted(_POP_FIELDS)}"
        )
    try:
        population = PopulationConfig(**pop)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: [population]: {e}") from None
    fields = {k: tuple(v) if k == "seeds" else v for k, v in run.items()}
    return RunConfig(**fields, proposers=tuple(proposers), population=population, source=str(path))


def _check_llm(path: Path, i: int, kind: str, options: dict) -> None:
    """An LLM proposer's fields: known, of their type, a model for kind "llm"; the error names the field."""
    if "api_key" in options or any(str(v).startswith("sk-") for v in options.values()):
        raise ConfigError(f"{path}: proposers[{i}]: never put an API key in a run file; set api_key_env")
    bad = set(options) - set(LLM_FIELDS)
    if bad:
        raise ConfigError(
            f"{path}: proposers[{i}] has unknown field(s) {sorted(bad)}; allowed for kind {kind!r}: "
            f"weight, {', '.join(LLM_FIELDS)}"
        )
    for field, value in options.items():
        kind_ = LLM_FIELDS[field]
        ok = isinstance(value, int | float) if kind_ is float else isinstance(value, kind_)
        if not ok or (kind_ is not bool and isinstance(value, bool)):
            raise ConfigError(f"{path}: field 'proposers[{i}].{field}' must be a {kind_.__name__}")
        if kind_ in (int, float) and value < 0:
            raise ConfigError(f"{path}: field 'proposers[{i}].{field}' must not be negative")
    if kind == "llm" and not options.get("model"):
        raise ConfigError(
            f'{path}: proposers[{i}] (kind llm) needs model = "..." (the endpoint\'s model name)'
        )
    if options.get("concurrency", 1) < 1:
        raise ConfigError(f"{path}: field 'proposers[{i}].concurrency' must be at least 1")
    templates = options.get("templates", [])
    if not templates and "templates" in options or not all(isinstance(t, str) for t in templates):
        raise ConfigError(
            f"{path}: field 'proposers[{i}].templates' must be a non-empty list of template ids"
        )
    from .proposers.prompt import TEMPLATES

    unknown = [t for t in templates if t not in TEMPLATES and not _template_file(path, t)]
    if unknown:
        raise ConfigError(
            f"{path}: field 'proposers[{i}].templates' names {unknown}; the templates are {', '.join(TEMPLATES)} "
            "(evolve/prompts/), or file:PATH of an existing file (`evolve export-prompts RUN` writes one)"
        )


def _template_file(path: Path, template: str) -> bool:
    """A "file:PATH" template (exported by `evolve export-prompts`) whose file exists."""
    return template.startswith("file:") and Path(template.removeprefix("file:")).is_file()


def _check_types(path: Path, run: dict) -> None:
    numbers = {"seed": int, "max_evals": int, "workers": int, "screen_workers": int, "time_budget_s": float,
               "target_fitness": float, "timeout_s": float, "verify_programs": int, "verify_sample_s": float, "max_cost": float,
               "max_tokens": int}  # fmt: skip
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
