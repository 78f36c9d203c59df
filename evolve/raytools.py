"""Ray, imported only where it is needed (`require_ray`), and the one way the engine waits on it (`ready`).

The rest of `evolve` (and all of `evaluators`) imports where ray is not installed, e.g. the GPU image.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType


class RayMissing(RuntimeError):
    """ray is not installed; the message says what needs it and what works without it."""


def require_ray() -> ModuleType:
    """The ray module, or RayMissing with one clear line (never a bare ModuleNotFoundError)."""
    try:
        import ray
    except ImportError as e:
        raise RayMissing(
            f"`evolve run` needs ray for its worker pool, and it cannot be imported ({e}); install it "
            "(pip install 'ray>=2.9') or judge single kernels without it: python -m evaluators check KERNEL.py "
            "--task TASK.toml"
        ) from None
    return ray


def ready(refs: Iterable, timeout: float) -> list:
    """The object refs among `refs` that are done: waits at most `timeout` s for the first, then takes
    whatever else is already done without waiting (so one result wakes the caller at once)."""
    refs = list(refs)
    if not refs:
        return []
    ray = require_ray()
    done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
    if done:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    return done
