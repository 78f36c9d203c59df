"""Sampled programs at full size (child side, under Triton's interpreter).

A training shape's grid is far too large for the interpreter (one 128x128 program of the seed at
K = 4096 takes ~0.4 s; 16384x14336x4096 has 14336 of them), so the expensive stage
(evaluators/verify_stage.py) runs the candidate's real entry point at the full shape with only a
sample of each launch's programs executed: the first, the last and some at random (the child
draws them from the parent's seed; nothing of the candidate's sees the plan). The others return
at once, so the output is right only where the sampled programs wrote it. What they wrote is
recorded from the interpreter's stores (evaluators/compat.py `interpreter_accesses`), and only
those elements travel back and are compared.

A sample is only comparable when each written element is the sampled program's own work: one
launch, no atomics, and no program reading memory stored during the call (a split-K partial, a
workspace, a flag). Kernels that combine partials across programs are not compared here; the
whole grid at a reduced K (the same stage) checks them on whole tiles.
"""

from __future__ import annotations

import inspect
import random

import numpy as np

from . import compat
from .race_check import access_addresses

RANDOM_PROGRAMS = 1  # per launch, beside the first and the last


class ProgramSample:
    """Install once per interpreter child (after the race check); `begin` / `end` bracket a sampled call."""

    def __init__(self) -> None:
        self.active = False
        self.rng = random.Random(0)
        self.random_programs = RANDOM_PROGRAMS
        self.chosen: set[int] = set()
        self.grid = (1, 1, 1)
        self.launches: list[dict] = []
        self.stores: list[np.ndarray] = []
        self.spans: list[tuple[int, int]] = []  # [first, last] byte stored to in this call
        self.combines = ""  # why the sample is not comparable ("" when it is)
        self.extra: list[int] = []  # programs of the first launch to run besides the drawn ones

    # -- set-up
    def install(self) -> None:
        executor, builder = compat.interpreter_grid()
        sample = self
        original_init = executor.__init__

        def init(ex, fn, *args, **kwargs):
            original_init(ex, fn, *args, **kwargs)
            if sample.active:
                ex.fn = _Sampled(ex.fn, sample, builder)

        executor.__init__ = init
        builder_class, plain, atomics, _ = compat.interpreter_accesses()
        compat.on_interpreter_launch(lambda grid: sample._launch(grid) if sample.active else None)
        for name, (kind, ptr_index, mask_index, _) in plain.items():
            if hasattr(builder_class, name):
                setattr(
                    builder_class, name, self._wrap(getattr(builder_class, name), kind, ptr_index, mask_index)
                )
        for name in atomics:
            if hasattr(builder_class, name):
                setattr(builder_class, name, self._wrap(getattr(builder_class, name), "atomic", 0, None))

    def begin(self, seed: int, random_programs: int = RANDOM_PROGRAMS, programs: list | None = None) -> None:
        """The next call runs sampled: in each launch, programs drawn from `seed`; in the first launch
        also `programs` (flat ids: the owners of C's edges, known from a whole-grid run)."""
        self.active, self.rng, self.random_programs = True, random.Random(seed), random_programs
        self.extra = [int(p) for p in programs or []]
        self.launches, self.stores, self.spans, self.combines = [], [], [], ""

    def end(self) -> None:
        self.active = False

    # -- per launch
    def _launch(self, grid: tuple) -> None:
        grid = grid + (1,) * (3 - len(grid))
        total = grid[0] * grid[1] * grid[2]
        chosen = {0, total - 1} if total else set()
        if total > 2:
            chosen |= set(self.rng.sample(range(total), min(self.random_programs, total)))
        if not self.launches:
            chosen |= {p for p in self.extra if 0 <= p < total}
        self.grid, self.chosen = grid, chosen
        self.launches.append({"grid": list(grid), "programs": total, "ran": sorted(chosen)})
        if len(self.launches) > 1 and not self.combines:
            self.combines = "the call makes several launches (a later one may read an earlier one's partials)"

    def runs(self, index: tuple) -> bool:
        return compat.program_index(self.grid, index) in self.chosen

    def _wrap(self, original, kind: str, ptr_index: int, mask_index: int | None):
        sample = self

        def access(builder_self, *args, **kwargs):
            if sample.active and len(args) > ptr_index:
                mask = args[mask_index] if mask_index is not None and len(args) > mask_index else None
                sample._record(kind, args[ptr_index], mask)
            return original(builder_self, *args, **kwargs)

        return access

    def _record(self, kind: str, handle, mask) -> None:
        if kind == "atomic":
            self.combines = self.combines or "the kernel uses atomics (programs combine their results)"
            return
        addresses, _ = access_addresses(np.asarray(handle.data), mask)
        if addresses.size == 0:
            return
        low, high = int(addresses.min()), int(addresses.max())
        if kind == "store":
            self.stores.append(addresses.copy())
            self.spans.append((low, high))
        elif any(low <= last and first <= high for first, last in self.spans) and not self.combines:
            self.combines = "a program reads memory stored during the call (partials, a workspace or a flag)"

    # -- after the call
    def written(self, out) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of each element of `out` [M, N] the sampled programs stored (pairs, unique)."""
        if not self.stores:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        addresses = np.unique(np.concatenate(self.stores)).astype(np.int64)
        size, base = out.element_size(), out.data_ptr()
        offsets = addresses - base
        keep = (offsets >= 0) & (offsets % size == 0)
        offsets = offsets[keep] // size
        (s0, s1), (m, n) = out.stride(), out.shape
        outer, inner = (0, 1) if s0 >= s1 else (1, 0)
        strides = (s0, s1)
        first = offsets // max(strides[outer], 1)
        second = (offsets - first * strides[outer]) // max(strides[inner], 1)
        exact = first * strides[outer] + second * strides[inner] == offsets
        index = [None, None]
        index[outer], index[inner] = first, second
        rows, cols = index
        inside = exact & (rows >= 0) & (rows < m) & (cols >= 0) & (cols < n)
        return rows[inside], cols[inside]


class _Sampled:
    """A kernel's Python function that runs only for the sampled programs; the interpreter reads its
    signature and globals (evaluators/compat.py `interpreter_grid`), so both are the function's."""

    def __init__(self, fn, sample: ProgramSample, builder) -> None:
        self.fn, self.sample, self.builder = fn, sample, builder
        self.__signature__ = inspect.signature(fn)
        self.__globals__ = fn.__globals__
        self.__annotations__ = getattr(fn, "__annotations__", {})
        self.__name__ = getattr(fn, "__name__", "kernel")
        self.__wrapped__ = fn

    def __call__(self, **args):
        if self.sample.runs(tuple(self.builder.grid_idx)):
            return self.fn(**args)
        return None


def sampled_output(sample: ProgramSample, out) -> tuple[dict, dict]:
    """What the parent needs of a sampled call: the header facts and the tensors (the block of `out`
    on the written rows x cols, and which of its elements were written, 1.0 / 0.0)."""
    import torch

    rows, cols = sample.written(out)
    facts = {
        "sampled_launches": sample.launches,
        "combines": sample.combines,
        "written": int(rows.size),
    }
    if sample.combines or rows.size == 0:
        return {**facts, "rows": [], "cols": []}, {}
    row_ids, col_ids = np.unique(rows), np.unique(cols)
    block = out[torch.from_numpy(row_ids)][:, torch.from_numpy(col_ids)]
    written = torch.zeros(len(row_ids), len(col_ids), dtype=torch.float32)
    written[
        torch.from_numpy(np.searchsorted(row_ids, rows)), torch.from_numpy(np.searchsorted(col_ids, cols))
    ] = 1.0
    if block.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        block = block.float()
    facts.update(rows=row_ids.tolist(), cols=col_ids.tolist())
    return facts, {"block": block.contiguous(), "written": written}
