"""What a kernel module sees of "the GPU" when it runs on CPU tensors under Triton's interpreter.

A kernel's entry point may ask torch for the GPU (SM count for a persistent grid, shared memory,
compute capability). On a CPU the judge answered those questions with its compile target's figures
(evaluators/standins.py, from evaluators/targets.py), so the launches it checked are the ones that
see these answers; `device_answers(props)` gives the same answers, only while the entry point runs
and only where torch has no CUDA device, then puts torch back as it was.

`@triton.autotune` kernels cannot run under the interpreter without a GPU (the autotuner times its
configs on a device); `autotuned_kernels(namespace)` names them, so the dispatch falls back and says so.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch

# The device queries a kernel module makes, as the judge's CPU children answer them.
_QUERIES = ("get_device_properties", "get_device_capability", "get_device_name", "current_device")


@contextlib.contextmanager
def device_answers(props: dict | None) -> Iterator[None]:
    """While inside, torch.cuda's device queries answer with `props` (the target's figures, names as
    torch's device properties); nothing changes when `props` is None or torch has a CUDA device."""
    if not props or torch.cuda.is_available():
        yield
        return
    answer = types.SimpleNamespace(**props)
    saved = {name: getattr(torch.cuda, name) for name in _QUERIES}
    torch.cuda.get_device_properties = lambda device=None: answer
    torch.cuda.get_device_capability = lambda device=None: (answer.major, answer.minor)
    torch.cuda.get_device_name = lambda device=None: answer.name
    torch.cuda.current_device = lambda: 0
    try:
        yield
    finally:
        for name, query in saved.items():
            setattr(torch.cuda, name, query)


def autotuned_kernels(namespace: dict) -> list[str]:
    """Names of the `@triton.autotune` kernels among a module's globals."""
    from triton.runtime.autotuner import Autotuner

    return sorted(name for name, value in namespace.items() if isinstance(value, Autotuner))
