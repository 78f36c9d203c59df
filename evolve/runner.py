"""Wire a run together: config -> task -> store -> population -> proposers -> pool -> controller."""

from __future__ import annotations

import os
from pathlib import Path

from evaluators import EvalOptions, backend_label, load_task
from evaluators.compat import UnsupportedEnvironment, require_tested_environment
from evaluators.fingerprint import judge_fingerprint
from evaluators.task import TaskError

from .candidate import Proposer
from .config import ConfigError, RunConfig, UsageError, load_run_config
from .population import Member, Population
from .store import Store
from .verification import stands


def make_proposers(config: RunConfig) -> list[tuple[Proposer, float]]:
    """Proposers named in the run file, with their weights (kinds: evolve/config.py)."""
    out = []
    for p in config.proposers:
        if p.kind == "mutator":
            from .proposers.mutator import OfflineMutator

            out.append((OfflineMutator(**p.options), p.weight))
    return out


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers(device: str) -> int:
    if device == "cuda":
        import torch

        return max(torch.cuda.device_count(), 1)
    return os.cpu_count() or 1


def eval_options(config: RunConfig, device: str) -> EvalOptions:
    return EvalOptions(
        device=device,
        timeout_s=config.timeout_s,
        model_gpu=config.model_gpu,
        verify_programs=config.verify_programs,
        verify_sample_s=config.verify_sample_s,
    )


def rebuild_population(config: RunConfig, store: Store, backend: str, judge: str | None = None) -> Population:
    """The population a resumed run continues from: the store's verdicts on `backend`, each ok one
    fit only when it stands (evolve/verification.py): verified, by `judge` (default: this process's,
    evaluators/fingerprint.py). Another judge's (stale) or a provisional one is seen (never proposed
    again) but holds no niche until the controller verifies it (Controller.run)."""
    judge = judge if judge is not None else judge_fingerprint()
    members = [
        Member(r["id"], r["island"], r["fitness"] if stands(r, judge) else 0.0,
               tuple(r["niche"]), r["source_hash"], r["generation"])
        for r in store.population_rows(backend)
    ]  # fmt: skip
    population = Population.rebuild(config.population, members, store.all_hashes())
    population.spread([m for m in members if m.generation == 0])  # every island starts from the seeds
    return population


def launch(args) -> int:
    import dataclasses

    from .controller import Controller
    from .pool import RayMissing, WorkerPool, gpu_workers, require_ray, start_ray
    from .ui import LiveDisplay, install_interrupt, render_leaderboard, run_dir

    try:
        ray = require_ray()  # before anything is created: no half-made run without a pool
    except RayMissing as e:
        raise UsageError(str(e)) from None

    if args.resume:
        folder = run_dir(args.resume)
        store = Store.open(folder / "run.sqlite", readonly=False)
        config = RunConfig.from_dict(store.run_info()["config"])
        if args.config:
            raise UsageError("give either a run file or --resume RUN_DIR, not both")
    else:
        if not args.config:
            raise UsageError("give a run file, e.g. `evolve run runs/demo.toml`, or --resume runs/<name>")
        config = load_run_config(args.config)
        config = config.replace(name=args.name)
        folder = Path("runs") / config.name
        if (folder / "run.sqlite").exists():
            raise UsageError(f"run {config.name!r} exists in {folder}; resume it with `evolve run --resume "
                             f"{folder}` or pick another --name")  # fmt: skip
    config = config.replace(max_evals=args.max_evals, time_budget_s=args.time_budget, workers=args.workers,
                            seed=args.seed, device=args.device)  # fmt: skip
    try:
        task = load_task(config.task)
    except TaskError as e:
        raise ConfigError(f"{config.source}: field 'run.task': {e}") from None
    for seed_path in config.seeds:
        if not Path(seed_path).is_file():
            raise ConfigError(f"{config.source}: field 'run.seeds': {seed_path} does not exist")
    device = resolve_device(config.device)
    try:
        require_tested_environment(device)
    except UnsupportedEnvironment as e:
        raise UsageError(str(e)) from None
    workers = config.workers or default_workers(device)
    start_ray(args.ray_address, workers)  # one evaluator actor per GPU: capped below, said at start
    if device == "cuda":
        try:
            workers, note = gpu_workers(workers, int(ray.cluster_resources().get("GPU", 0)))
        except RayMissing as e:
            raise UsageError(str(e)) from None
        if note:
            print(note)
    options = eval_options(config, device)
    backend = backend_label(task, options)
    if not args.resume:
        store = Store.create(folder / "run.sqlite", config.name, config.to_dict(), config.seed)
    pool = WorkerPool(workers, use_gpus=device == "cuda")
    judge = pool.judge()  # the workers' judge is the one that judges; only its verdicts stand
    if judge != judge_fingerprint():
        print(f"note: the workers' judge {judge} is not the evaluators/ here now ({judge_fingerprint()}): "
              "the files changed while the run started")  # fmt: skip
    population = rebuild_population(config, store, backend, judge)
    proposers = make_proposers(config)
    names = ", ".join(f"{p.name} (weight {w:g})" for p, w in proposers)
    print(f"run {config.name}: task {task.name} ({task.dtype}, {len(task.train)} training shapes), "
          f"proposers: {names}, device {device}, backend {backend}, {workers} workers"
          + (f", resuming with {store.evaluated_count()} evaluated and {len(store.pending_ids())} pending"
             if args.resume else ""))  # fmt: skip
    if backend.startswith("model:"):
        print("no GPU: fitness is MODELLED by the performance model (label model:...), not measured")
    display = LiveDisplay(config.max_evals)
    controller = Controller(config, task, store, population, proposers, pool,
                            dataclasses.asdict(options), backend, display, judge=judge)  # fmt: skip
    install_interrupt(controller)
    store.set_run_status("running")
    try:
        reason = controller.run()
    finally:
        display.close()
        pool.shutdown()
    print(f"stopped: {reason or 'done'}")
    print(render_leaderboard(store, 5, judge))
    store.close()
    return 0
