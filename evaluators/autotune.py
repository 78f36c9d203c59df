"""@triton.autotune without a GPU: the config per shape that the model ranks best (parent side).

The compile child records, for every autotuned launch on every shape, the launch each pruned
config would make, and compiles them all for the target (evaluators/child.py,
evaluators/standins.py). Here each is modelled (evaluators/model/perf_model.py) and the fastest is
chosen, as the real autotuner chooses by timing; configs the target cannot launch (too much
shared memory, too many registers) are never chosen, as the autotuner skips what fails
to compile. The interpreter child then checks each shape with its chosen config.
"""

from __future__ import annotations

import dataclasses

from .model.constants import GpuSpec
from .model.launch import launch_from_facts
from .model.perf_model import estimate_shape
from .targets import TargetLimits, limit_violations


@dataclasses.dataclass(frozen=True)
class Choice:
    """The config chosen for one autotuned launch of one (shape, layout)."""

    kernel: str
    index: int  # into the pruned configs, in the order the autotuner lists them
    config: str  # str(triton.Config)
    modelled_s: float | None  # the chosen config's modelled time; None when nothing was modelled


def launchable(facts: dict | None, limits: TargetLimits) -> bool:
    """Compiled, and within the target's per-CTA limits."""
    if not facts:
        return False
    return not limit_violations(
        limits,
        shared=facts.get("shared", 0),
        regs=facts.get("regs") or 0,
        num_warps=facts.get("num_warps", 4),
    )


def resolve(
    launches: list[dict],
    kernels: dict,
    limits: TargetLimits,
    gpu: GpuSpec | None,
    dtype: str,
    allow_tf32: bool,
) -> tuple[list[dict], dict[tuple, list[Choice]]]:
    """Replace every autotuned call of `launches` (the compile child's entries) by the
    alternative the model ranks fastest; return (resolved entries, choices by (shape, layout, kind)).

    With no GPU to model (`gpu` None) or nothing launchable, the first launchable config, else
    the first config, is taken, and `modelled_s` is None."""
    resolved, choices = [], {}
    for entry in launches:
        shape = tuple(entry["shape"])
        calls, chosen = [], []
        for call in entry["calls"]:
            if "autotune" not in call:
                calls.append(call)
                continue
            index, seconds = _fastest(call["autotune"], shape, kernels, limits, gpu, dtype, allow_tf32)
            option = call["autotune"][index]
            calls.append({k: v for k, v in option.items() if k != "config"})
            chosen.append(Choice(call["kernel"], index, option["config"], seconds))
        resolved.append({**entry, "calls": calls})
        if chosen:
            choices[(shape, entry["layout"], entry.get("kind", "train"))] = chosen
    return resolved, choices


def _fastest(options, shape, kernels, limits, gpu, dtype, allow_tf32) -> tuple[int, float | None]:
    fits = [i for i, option in enumerate(options) if launchable(kernels.get(option.get("key")), limits)]
    if not fits:
        return 0, None
    if gpu is None:
        return fits[0], None
    timed = []
    for i in fits:
        launch = launch_from_facts(kernels[options[i]["key"]], options[i]["grid"])
        estimate = estimate_shape([launch], shape, dtype, gpu, allow_tf32)
        if estimate.bound != "invalid":
            timed.append((estimate.time_s, i))
    if not timed:
        return fits[0], None
    seconds, index = min(timed)
    return index, seconds


def summary(choices: dict[tuple, list[Choice]], kinds: tuple[str, ...] = ("train", "held_out")) -> str:
    """'autotune, chosen per shape by the model: matmul_kernel[BLOCK_M=128, ...] on (4096, 4096, 4096)
    nn, nt; ...': each chosen config once, with the shapes it was chosen for."""
    by_config: dict[str, list[str]] = {}
    for (shape, layout, kind), chosen in choices.items():
        if kind in kinds:
            for c in chosen:
                label = f"{shape} {layout}" + (" (held-out)" if kind == "held_out" else "")
                by_config.setdefault(f"{c.kernel}[{c.config}]", []).append(label)
    if not by_config:
        return ""
    return "autotune, config chosen per shape by the model: " + "; ".join(
        f"{config} on {', '.join(shapes)}" for config, shapes in by_config.items()
    )
