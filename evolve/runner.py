"""Wire a run together: config -> task -> store -> population -> proposers -> pool -> controller."""

from __future__ import annotations

import os
from pathlib import Path

from evaluators import EvalOptions, backend_label, load_task
from evaluators.compat import UnsupportedEnvironment, require_tested_environment
from evaluators.fingerprint import judge_fingerprint
from evaluators.task import TaskError

from .candidate import Proposer
from .config import ConfigError, ProposerConfig, RunConfig, UsageError, load_run_config
from .population import Member, Population
from .store import Store
from .verification import stands


def make_proposers(config: RunConfig, environ=None) -> tuple[list[tuple[Proposer, float]], list, list[str]]:
    """The run file's proposers (kinds: evolve/config.py): the synchronous ones with their weights,
    the LLM proposers' configs (evolve/proposers/llm.py LLMProposerConfig), and what `auto` chose and
    why. The endpoint: `base_url`, else OPENAI_BASE_URL, else the openai client's default."""
    from .proposers.llm import LLMProposerConfig

    environ = os.environ if environ is None else environ
    sync, llms, notes = [], [], []
    for p in config.proposers:
        options = dict(p.options)
        if p.kind == "auto":
            key_env = options.get("api_key_env", "OPENAI_API_KEY")
            endpoint = options.get("base_url") or environ.get("OPENAI_BASE_URL") or ""
            if options.get("model") and environ.get(key_env):
                notes.append(
                    f"auto: the LLM {options['model']} at {endpoint or 'api.openai.com'} ({key_env} is set)"
                )
            else:
                missing = [
                    w
                    for w, ok in (("model", options.get("model")), (key_env, environ.get(key_env)))
                    if not ok
                ]
                notes.append(f"auto: the offline mutator (no {' and no '.join(missing)} for an LLM)")
                sync.append(_mutator(p.weight))
                continue
        if p.kind == "mutator":
            sync.append(_mutator(p.weight, options))
            continue
        concurrency = int(options.pop("concurrency", 4))
        templates = tuple(options.pop("templates", ("default", "rewrite")))
        options["base_url"] = options.get("base_url") or environ.get("OPENAI_BASE_URL") or None
        llms.append(LLMProposerConfig(options, p.weight, concurrency, templates))
    return sync, llms, notes


def _mutator(weight: float, options: dict | None = None) -> tuple[Proposer, float]:
    from .proposers.mutator import OfflineMutator

    return OfflineMutator(**(options or {})), weight


def take_keys(llms: list, environ=None) -> dict[str, str]:
    """The API key of each LLM proposer, by the NAME of its variable; every *_API_KEY variable and
    those named leave `environ` (default: this process's) so that nothing started after this (Ray's
    workers inherit the driver's environment; the judge's children scrub theirs anyway) sees a key.
    UsageError naming the variable when one is unset."""
    environ = os.environ if environ is None else environ
    names = {c.settings.get("api_key_env", "OPENAI_API_KEY") for c in llms}
    keys = {}
    for name in sorted(names):
        if not environ.get(name):
            raise UsageError(
                f"an LLM proposer reads its API key from {name}, which is not set: export {name}=... (a local "
                "server such as vLLM or Ollama accepts any non-empty value), or use --proposer mutator"
            )
        keys[name] = environ[name]
    for name in [n for n in environ if n.endswith("_API_KEY") or n in names]:
        del environ[name]
    return keys


def parse_proposer_flags(flags: list[str] | None) -> tuple[ProposerConfig, ...] | None:
    """`--proposer llm:MODEL | mutator | auto:MODEL` (repeatable): the proposers replacing the run
    file's, None when not given. The endpoint and key come from the environment."""
    if not flags:
        return None
    out = []
    for flag in flags:
        kind, _, model = flag.partition(":")
        if kind == "mutator" and not model:
            out.append(ProposerConfig("mutator"))
        elif kind in ("llm", "auto") and (model or kind == "auto"):
            out.append(ProposerConfig(kind, 1.0, {"model": model} if model else {}))
        else:
            raise UsageError(
                f"--proposer {flag}: use llm:MODEL (e.g. llm:gpt-4o-mini), auto:MODEL or mutator"
            )
    return tuple(out)


def resolve_device(device: str, cluster_gpus: int = 0) -> str:
    """`device` as configured, or for "auto": "cuda" when this machine or the joined Ray cluster
    (`cluster_gpus`, its GPU count) has a GPU, else "cpu"."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() or cluster_gpus > 0 else "cpu"


def gpu_backend(labels: list[str]) -> str:
    """The one backend label the GPU workers report (`WorkerPool.backends`): a run measures on one kind
    of GPU. UsageError when they differ (speedups on two kinds are not one ranking) or a worker has no
    usable GPU."""
    kinds = sorted(set(labels))
    if not kinds or "cuda:?" in kinds:
        raise UsageError(
            "a GPU worker of the Ray cluster sees no CUDA device (torch.cuda.is_available() is False "
            "there): check its driver and its CUDA build of torch, or run with --device cpu"
        )
    if len(kinds) > 1:
        counts = ", ".join(f"{k} ({labels.count(k)} worker(s))" for k in kinds)
        raise UsageError(
            f"the cluster's GPUs are of more than one kind: {counts}; measured speedups on different "
            "GPUs are not one ranking: run on nodes of one kind (a cluster of them, or one run per kind)"
        )
    return kinds[0]


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
    population = Population.rebuild(config.population, members, store.all_hashes(), store.migrations())
    population.spread([m for m in members if m.generation == 0])  # every island starts from the seeds
    return population


def launch(args) -> int:
    import dataclasses

    from .controller import Controller
    from .pool import PoolExhausted, WorkerPool, gpu_workers, start_ray
    from .raytools import RayMissing, require_ray
    from .screen import with_screen
    from .ui import LiveDisplay, install_interrupt, render_leaderboard, render_proposing_summary, run_dir

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
                            seed=args.seed, device=args.device, max_cost=getattr(args, "max_cost", None),
                            max_tokens=getattr(args, "max_tokens", None),
                            proposers=parse_proposer_flags(getattr(args, "proposer", None)))  # fmt: skip
    try:
        task = load_task(config.task)
    except TaskError as e:
        raise ConfigError(f"{config.source}: field 'run.task': {e}") from None
    for seed_path in config.seeds:
        if not Path(seed_path).is_file():
            raise ConfigError(f"{config.source}: field 'run.seeds': {seed_path} does not exist")
    sync, llm_configs, notes = make_proposers(config)
    keys = take_keys(llm_configs)  # before Ray starts: its workers must not inherit a key
    cluster_gpus = 0
    if args.ray_address:  # a joined cluster's GPUs count, wherever they are (the driver may have none)
        start_ray(args.ray_address, 0)
        cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
    device = resolve_device(config.device, cluster_gpus)
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
    pool = WorkerPool(workers, use_gpus=device == "cuda")
    try:  # on a GPU run, the label of the GPUs the workers have (the driver's may differ, or be none)
        backend = (
            gpu_backend(pool.backends(task.to_dict(), dataclasses.asdict(options)))
            if device == "cuda"
            else backend_label(task, options)
        )
    except UsageError:
        pool.shutdown()
        raise
    if not args.resume:
        store = Store.create(folder / "run.sqlite", config.name, config.to_dict(), config.seed)
    pool = with_screen(pool, config.screen_workers, device, workers, backend)
    judge = pool.judge()  # the workers' judge is the one that judges; only its verdicts stand
    if judge != judge_fingerprint():
        print(f"note: the workers' judge {judge} is not the evaluators/ here now ({judge_fingerprint()}): "
              "the files changed while the run started")  # fmt: skip
    population = rebuild_population(config, store, backend, judge)
    from .proposers.llm import LLMProposer
    from .proposers.remote import RemoteProposer

    # the mutator proposes in a Ray actor asking no CPU: the controller only selects, dispatches, records
    sync = [(RemoteProposer(p), w) for p, w in sync]
    llms = [LLMProposer(c) for c in llm_configs]
    for llm in llms:
        llm.start(keys[llm.config.settings.get("api_key_env", "OPENAI_API_KEY")])
    for note in notes:
        print(note)
    names = ", ".join([f"{p.name} (weight {w:g})" for p, w in sync]
                      + [f"{c.name} (weight {c.weight:g}, {c.concurrency} calls at once)" for c in llm_configs])  # fmt: skip
    print(f"run {config.name}: task {task.name} ({task.dtype}, {len(task.train)} training shapes), "
          f"proposers: {names}, device {device}, backend {backend}, {workers} workers"
          + (f", resuming with {store.evaluated_count()} evaluated and {len(store.pending_ids())} pending"
             if args.resume else ""))  # fmt: skip
    if backend.startswith("model:"):
        print("no GPU: fitness is MODELLED by the performance model (label model:...), not measured")
    display = LiveDisplay(config.max_evals, config.time_budget_s)
    controller = Controller(config, task, store, population, sync, pool,
                            dataclasses.asdict(options), backend, display, judge=judge, llms=llms)  # fmt: skip
    install_interrupt(controller)
    store.set_run_status("running")
    try:
        reason = controller.run()
    except PoolExhausted as e:  # no evaluator left in the cluster: the run stops, in-flight ones stay pending
        store.set_run_status("stopped", str(e))
        raise
    finally:
        display.close()
        controller.proposing.shutdown()
        pool.shutdown()
    print(f"stopped: {reason or 'done'}")
    screened = getattr(pool, "screened", None)  # a CPU screen before the GPUs (evolve/screen.py)
    if screened:
        print(f"CPU screen: {screened['final']} candidate(s) found wrong before any GPU time, "
              f"{screened['passed']} passed on to a GPU")  # fmt: skip
    print(render_leaderboard(store, 5, judge))
    summary = render_proposing_summary(store)
    if summary and llms:
        print(summary)
        p = controller.progress
        print(f"evaluators idle {p.llm_idle_s:.1f} of {p.llm_window_s:.1f} slot-seconds while proposals were being "
              f"written ({100 * p.llm_idle_s / max(p.llm_window_s, 1e-9):.0f}%)")  # fmt: skip
    store.close()
    return 0
