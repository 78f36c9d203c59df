"""What the CPU children put in place of the GPU a kernel module expects (child side).

Two stand-ins, installed before the candidate is imported, in both CPU children (the
compile child capturing launches on `meta` tensors and the interpreter child), so the
two see the same device and choose the same launches:

- device queries (`torch.cuda.get_device_properties`, `get_device_capability`,
  `get_device_name`, `current_device`) answer with the target's figures
  (targets.DEVICE_PROPERTIES), as Triton's persistent-matmul tutorial reads the SM count;
- `@triton.autotune` kernels are not benchmarked (there is nothing to time): the compile
  child records every pruned config's launch (`capture`), the parent models each and picks
  per shape what the model ranks best (evaluators/autotune.py), and the interpreter child
  launches the config it is told (`check`), with the hooks the real autotuner runs.

On a GPU nothing here is installed: the real device answers and the real autotuner runs
in the warm-up (the first call per shape), never inside timed calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from . import compat
from .targets import DEVICE_PROPERTIES


def answer_device_queries(target: str) -> None:
    """Make torch's CUDA device queries answer with `target`'s figures (KeyError: unknown target)."""
    import torch

    props = DEVICE_PROPERTIES[target]
    torch.cuda.get_device_properties = lambda device=None: props
    torch.cuda.get_device_capability = lambda device=None: (props.major, props.minor)
    torch.cuda.get_device_name = lambda device=None: props.name
    torch.cuda.current_device = lambda: 0


@dataclasses.dataclass
class Alternative:
    """One pruned config of an autotuned launch and what launching with it captured."""

    config: str  # config_text(triton.Config): its kwargs, warps, stages
    calls: list  # what the capture recorded while the config's launch ran (one launch)


class AutotuneStandIn:
    """Replaces `Autotuner.run` in a CPU child. Mode "capture": every pruned config's launch is
    recorded through `record(kernel_name, alternatives)`; mode "check": each autotuned launch of
    one call takes the next index of `choices` (into the pruned configs, in launch order)."""

    def __init__(self) -> None:
        self.mode = "check"
        self.sink: list = []  # capture: where the compile child's capture appends launches
        self.record: Callable[[str, list[Alternative]], None] | None = None
        self.choices: list[int] = []
        self.chosen: list[str] = []  # check: the configs launched in this call, in order

    def install(self) -> None:
        stand_in = self

        def run(tuner, *args, **kwargs):
            return stand_in.run(tuner, args, kwargs)

        compat.autotuner_class().run = run

    def run(self, tuner, args: tuple, kwargs: dict):
        tuner.nargs = dict(zip(tuner.arg_names, args, strict=False))
        try:
            configs = tuner.prune_configs(kwargs) if len(tuner.configs) > 1 else list(tuner.configs)
            name = compat.base_function_name(tuner)
            if self.mode == "capture":
                alternatives = []
                outer = self.sink
                for config in configs:
                    self.sink = []
                    try:
                        tuner.fn.run(*args, **kwargs, **config.all_kwargs())
                    finally:
                        alternatives.append(Alternative(config_text(config), self.sink))
                        self.sink = outer
                if self.record is not None:
                    self.record(name, alternatives)
                return None
            return self.launch(tuner, name, configs, args, kwargs)
        finally:
            tuner.nargs = None

    def launch(self, tuner, name: str, configs: list, args: tuple, kwargs: dict):
        if not self.choices:
            raise RuntimeError(
                f"autotuned kernel {name} was launched more often than when its launches were captured "
                "(launches must depend on shapes only)"
            )
        index = self.choices.pop(0)
        if not 0 <= index < len(configs):
            raise RuntimeError(f"autotuned kernel {name}: config {index} of {len(configs)} after pruning")
        config = configs[index]
        full = {**tuner.nargs, **kwargs, **config.all_kwargs()}
        key = compat.tuning_key(tuner, args, kwargs)
        if len(configs) > 1 and key not in tuner.cache:
            # What the real autotuner does once per key after benchmarking: zero the
            # reset_to_zero arguments (its default pre_hook, or the user's with reset_only).
            tuner.pre_hook(full, reset_only=True)
        tuner.cache[key] = config
        if config.pre_hook is not None:
            config.pre_hook(full)
        self.chosen.append(config_text(config))
        return tuner.fn.run(*args, **kwargs, **config.all_kwargs())


def config_text(config) -> str:
    """'BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3' for a triton.Config."""
    parts = [f"{k}={v}" for k, v in config.kwargs.items()]
    parts += [f"num_warps={config.num_warps}", f"num_stages={config.num_stages}"]
    return ", ".join(parts)
