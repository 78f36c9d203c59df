"""Inputs are read-only, inside the kernels too (child side, under Triton's interpreter).

The parent compares A and B before and after each call; a kernel that writes into an input and
puts it back (B transposed in place, the kernel run, B transposed back) passes that. Here every
memory write the interpreter makes (stores, atomics, descriptor stores) is tested against the
storage of the call's inputs while the call runs; a write that lands there is recorded with the
kernel that made it, and the parent rejects the candidate. The storage, not the view: a column
slice's padding is the caller's memory too.

On a GPU nothing watches the stores; there the compiled kernel says which pointer arguments it
writes through (evaluators/dataflow.py `written_arguments`, from its TTIR), and a launch passing
an input's storage as one of them is recorded the same way (`check_launch`): stricter than the
interpreter's check (a masked-off write counts), as the issue asks of a kernel that cannot be watched.
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

    def check_launch(self, kernel: str, arg_names, args: tuple, kwargs: dict, written: list[str]) -> None:
        """A launch of `kernel` (GPU): each argument in `written` (the parameters it writes through)
        whose storage overlaps a guarded input's is recorded as a hit."""
        if not self.ranges:
            return
        named = {**dict(zip(arg_names, args, strict=False)), **kwargs}
        for name in written:
            value = named.get(name)
            base = getattr(value, "base", None)  # a tensor descriptor: the tensor it describes
            tensor = base if base is not None and hasattr(base, "untyped_storage") else value
            if not hasattr(tensor, "untyped_storage"):
                continue
            storage = tensor.untyped_storage()
            start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
            for low, high, label in self.ranges:
                if start < high and low < end:
                    hit = f"kernel {kernel} writes through its argument {name}, which is {label}'s storage"
                    if hit not in self.hits:
                        self.hits.append(hit)

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
