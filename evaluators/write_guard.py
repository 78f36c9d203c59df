"""Inputs are read-only, inside the kernels too (child side, under Triton's interpreter).

The parent compares A and B before and after each call; a kernel that writes into an input and
puts it back (B transposed in place, the kernel run, B transposed back) passes that. Here every
memory write the interpreter makes (stores, atomics, descriptor stores) is tested against the
storage of the call's inputs while the call runs; a write that lands there is recorded with the
kernel that made it, and the parent rejects the candidate. The storage, not the view: a column
slice's padding is the caller's memory too.
"""

from __future__ import annotations

import numpy as np

from . import compat


class InputWriteGuard:
    """Install once per interpreter child; `protect(tensors)` for the span of one call."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int, str]] = []  # [start, end) byte addresses, input name
        self.hits: list[str] = []  # "kernel K wrote into A's storage (create_masked_store)"
        self.kernel = lambda: "?"  # the kernel being launched (set by the child)

    def install(self) -> None:
        builder, writers = compat.interpreter_writers()
        for name, (ptr_index, mask_index) in writers.items():
            original = getattr(builder, name, None)
            if original is not None:
                setattr(builder, name, self._wrap(name, original, ptr_index, mask_index))

    def protect(self, named: dict) -> None:
        """Guard the storage of each tensor in `named` (name -> tensor); an empty dict lifts it."""
        self.ranges = []
        for label, tensor in named.items():
            storage = tensor.untyped_storage()
            if storage.nbytes():
                self.ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes(), label))

    def _wrap(self, name: str, original, ptr_index: int, mask_index: int | None):
        guard = self

        def write(builder_self, *args, **kwargs):
            if guard.ranges and len(args) > ptr_index:
                guard._check(name, args[ptr_index], args[mask_index] if mask_index is not None else None)
            return original(builder_self, *args, **kwargs)

        return write

    def _check(self, name: str, handle, mask) -> None:
        base = getattr(handle, "base", None)  # a tensor descriptor or block pointer: its base address
        data = getattr(base if base is not None else handle, "data", None)
        if data is None:
            return
        addresses = np.asarray(data).astype(np.uint64, copy=False).ravel()
        if mask is not None and base is None:
            on = np.broadcast_to(np.asarray(getattr(mask, "data", mask), dtype=bool), np.shape(data)).ravel()
            addresses = addresses[on]
        for start, end, label in self.ranges:
            if np.any((addresses >= np.uint64(start)) & (addresses < np.uint64(end))):
                hit = f"kernel {self.kernel()} wrote into {label}'s storage ({name})"
                if hit not in self.hits:
                    self.hits.append(hit)
