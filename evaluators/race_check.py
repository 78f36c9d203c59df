"""Races and ordering between the programs of one launch (child side, under Triton's interpreter).

The interpreter runs a launch's programs one after another, so two kinds of kernel are right there
and wrong on a GPU, where the programs run at once: programs that write the same element without
atomics (split-K doing load-add-store on one C tile), and a program that reads what another one
stored before that store was published to it (split-K where the last program to arrive reduces the
partials, but each program bumps the arrival counter BEFORE storing its partial). This module
watches every memory access the interpreter makes (evaluators/compat.py `interpreter_accesses`)
and keeps happens-before bookkeeping with vector clocks:

- program p has a clock C_p, one entry per program of the grid; its own entry is its epoch;
- an atomic by p on address F with acquire semantics joins F's clock into C_p; with release
  semantics it joins C_p into F's clock and starts a new epoch of p (acq_rel, the default of
  tl.atomic_*, does both; relaxed neither). Through F, p is ordered after every write another
  program made before its own release on F, directly or transitively;
- plain stores and atomics record (program, epoch) per address written;
- a plain store by p over an element another program q last wrote (plain store or atomic) in this
  launch, q's write not ordered before p (q's epoch > C_p[q]), is a race: two programs wrote the
  same element without atomics (unless p stores the very bits q did: overlapping tiles that compute
  the same element lose nothing); so is an atomic over an unordered plain store. Atomics by several
  programs on one address are fine (split-K with tl.atomic_add into a zeroed C);
- a plain load by p of an element another program stored in this launch, that store not ordered
  before the load, is an ordering race: on a GPU the load can see the value before the store.

Launches are stream-ordered, so each launch starts afresh (at `set_grid_dim`). Plain loads of A
and B dominate the interpreter's accesses: a load is looked at in detail only when its address
range meets the byte ranges stored to in this launch (a few comparisons otherwise).

Not tracked: a write after another program's read of the same element (write-after-read); an
element is keyed by its first byte (the same memory viewed with another dtype is not matched).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import compat

PAGE_BITS = 16  # records are kept per byte address, in dense pages of 64 KiB
PAGE_MASK = (1 << PAGE_BITS) - 1
# Rows of a page, per byte address: the last plain store's program + 1 (0: none) and epoch; the last
# atomic's program + 1 and epoch; the id of the clock the address's atomics released (0: none).
STORE_BY, STORE_AT, ATOMIC_BY, ATOMIC_AT, CLOCK = range(5)
SPAN_GAP = 1 << 16  # stored byte ranges closer than this are merged (few ranges, one comparison each)
# What the check covers, for the verdict's provenance ("race_check").
DESCRIPTION = (
    "every launch under the interpreter: plain stores, loads and atomics per program (grid index), "
    "happens-before through atomics (vector clocks); write-write (of different bits) and unordered "
    "read-after-write between programs are races"
)


@dataclasses.dataclass(frozen=True)
class TensorFacts:
    """Where a tensor lies, to name an element from its address (plain data: no tensor is kept)."""

    name: str
    start: int  # data_ptr of the view
    storage: tuple[int, int]  # [first, last + 1) byte of its storage
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    itemsize: int
    dtype: str

    @classmethod
    def of(cls, name: str, tensor) -> TensorFacts:
        storage = tensor.untyped_storage()
        return cls(
            name,
            tensor.data_ptr(),
            (storage.data_ptr(), storage.data_ptr() + storage.nbytes()),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.element_size(),
            str(tensor.dtype).replace("torch.", ""),
        )

    def holds(self, address: int) -> bool:
        return self.storage[0] <= address < self.storage[1]

    def index(self, address: int) -> str:
        """'[i, j]' of the element at `address`, or where it lies in the storage (padding, another view)."""
        offset, rest = divmod(address - self.start, self.itemsize)
        index = [0] * len(self.shape)
        for dim in sorted(range(len(self.shape)), key=lambda d: -self.strides[d]):
            if self.strides[dim] > 0 and offset >= 0:
                index[dim] = min(offset // self.strides[dim], self.shape[dim] - 1)
                offset -= index[dim] * self.strides[dim]
        if offset == 0 and rest == 0:
            return "[" + ", ".join(str(i) for i in index) + "]"
        return f" (byte {address - self.storage[0]} of its storage, outside the view)"


def launch_tensors(arg_names, args: tuple, kwargs: dict) -> tuple[TensorFacts, ...]:
    """Where each CPU tensor a launch was given lies: tensor arguments, tensors inside tuple arguments,
    the base tensor of a tensor descriptor (named `name.base`)."""
    import torch

    found: list[TensorFacts] = []

    def visit(name: str, value, depth: int = 0) -> None:
        base = getattr(value, "base", None)  # a tensor descriptor or a reinterpreting wrapper
        if isinstance(base, torch.Tensor) and not isinstance(value, torch.Tensor):
            name, value = f"{name}.base", base
        if isinstance(value, torch.Tensor):
            if value.device.type == "cpu":
                found.append(TensorFacts.of(name, value))
        elif isinstance(value, tuple | list) and depth < 4:
            for i, item in enumerate(value):
                visit(f"{name}[{i}]", item, depth + 1)

    for name, value in [*zip(arg_names, args, strict=False), *kwargs.items()]:
        visit(name, value)
    return tuple(found)


@dataclasses.dataclass(frozen=True)
class Race:
    """One race: `program` met the write `other` made (grid indices), at `address`."""

    kind: str  # "store", "store over atomic", "atomic" (over a plain store), "load"
    kernel: str
    program: tuple[int, int, int]
    other: tuple[int, int, int]
    address: int
    arguments: tuple[TensorFacts, ...]  # the launch's tensor arguments, to name the element

    def element(self, output: TensorFacts | None = None) -> str:
        """'C[i, j]' when the address is in the output, else the kernel argument that holds it."""
        if output is not None and output.holds(self.address):
            return "C" + output.index(self.address)
        for facts in self.arguments:
            if facts.holds(self.address):
                shape = "x".join(str(s) for s in facts.shape)
                return (
                    f"{facts.name}{facts.index(self.address)} (argument {facts.name}: {shape} {facts.dtype})"
                )
        return f"the element at address {self.address:#x}"

    def text(self, output: TensorFacts | None = None) -> str:
        p, q, where = _grid_text(self.program), _grid_text(self.other), self.element(output)
        head = f"kernel {self.kernel}: "
        if self.kind == "load":
            return head + (
                f"program {p} read {where}, which program {q} stored in the same launch, but that store is "
                "not ordered before the read (no atomic the writer issued after its store, that the reader "
                "then synchronised with through the same address)"
            )
        if self.kind == "atomic":
            return head + (
                f"program {p} updated {where} with an atomic over the plain store of program {q}, "
                "which is not ordered before it"
            )
        if self.kind == "store over atomic":
            return head + (
                f"program {p} overwrote {where} with a plain store, not ordered after the atomic "
                f"program {q} made on it"
            )
        return head + (
            f"programs {q} and {p} both wrote {where} with plain stores (no atomics), with nothing "
            "ordering one write after the other"
        )


def _grid_text(index: tuple[int, int, int]) -> str:
    return "(" + ", ".join(str(i) for i in index) + ")"


class RaceCheck:
    """Install once per interpreter child; `begin` names each launch; `races` accumulates until cleared."""

    def __init__(self) -> None:
        self.races: list[Race] = []
        self.errors: list[str] = []  # the check's own failures (a judge bug, reported as such)
        self.kernel = "?"
        self.arguments: tuple[TensorFacts, ...] = ()
        self._start((1, 1, 1))

    # -- set-up
    def install(self) -> None:
        builder, plain, atomics, _ = compat.interpreter_accesses()
        for name, (kind, ptr_index, mask_index, value_index) in plain.items():
            if hasattr(builder, name):
                wrapped = self._wrap_plain(getattr(builder, name), kind, ptr_index, mask_index, value_index)
                setattr(builder, name, wrapped)
        self.native_load = compat.interpreter_atomics()[2]  # reads memory at raw addresses
        for name, (ptr_index, mask_index, sem_index) in atomics.items():
            if hasattr(builder, name):
                original = getattr(builder, name)
                setattr(builder, name, self._wrap_atomic(original, ptr_index, mask_index, sem_index))
        compat.on_interpreter_launch(self._start)

    def begin(self, kernel: str, arg_names, args: tuple, kwargs: dict) -> None:
        """Name the launch about to run (the child's launcher calls this): its kernel, its tensors."""
        self.kernel = kernel
        self.arguments = launch_tensors(arg_names, args, kwargs)

    def messages(self, output=None) -> list[str]:
        """Each race found since the last `clear`, in words (`output`: the call's result, named C)."""
        facts = (
            TensorFacts.of("C", output) if output is not None and hasattr(output, "untyped_storage") else None
        )
        return [race.text(facts) for race in self.races]

    def edge_owners(self, out) -> list[int]:
        """Flat ids of the programs whose plain stores or atomics, in the last launch, reached C's last
        row and last column (`out` [M, N]) at their ends and middles (C[M-1, 0], C[M-1, N/2], C[M-1, N-1],
        C[M/2, N-1], C[0, N-1]): the few programs the full-size sample adds (evaluators/verify_stage.py;
        a program at full K costs ~0.4 s, so not every edge tile)."""
        if out.dim() != 2 or out.numel() == 0:
            return []
        M, N = out.shape
        (s0, s1), size, base = out.stride(), out.element_size(), out.data_ptr()
        edges = {(M - 1, 0), (M - 1, N // 2), (M - 1, N - 1), (M // 2, N - 1), (0, N - 1)}
        offsets = sorted(i * s0 + j * s1 for i, j in edges)
        addresses = np.asarray(offsets, dtype=np.uint64) * np.uint64(size) + np.uint64(base)
        found: set[int] = set()
        for key, offsets, _ in self._groups(addresses):
            page = self.pages.get(key)
            if page is not None:
                for row in (STORE_BY, ATOMIC_BY):
                    found.update(int(p) - 1 for p in np.unique(page[row, offsets]) if p > 0)
        return sorted(found)

    def clear(self) -> None:
        """Forget the races found and the last launch's records (the memory they hold goes now)."""
        self.races.clear()
        self.errors.clear()
        self._start(self.grid)

    # -- per launch
    def _start(self, grid: tuple) -> None:
        self.grid = grid + (1,) * (3 - len(grid))
        self.pages: dict[int, np.ndarray] = {}
        self.spans: list[list[int]] = []  # [first, last] byte addresses stored to (plain) in this launch
        self.clocks: dict[int, np.ndarray] = {}  # clock id -> the clock an address's atomics released
        self.next_clock = 1
        self.compact_at = 256
        self.program: tuple | None = None
        self.flat = -1
        self.clock = np.zeros(1, dtype=np.int64)
        self.done = False  # a race found: one per launch is enough (the verdict is a rejection)
        self.in_atomic = 0

    def _enter(self, builder) -> None:
        """The program running now; a new one starts with a clock of its own epoch only."""
        index = tuple(builder.grid_idx)
        if index != self.program:
            self.program = index
            self.flat = compat.program_index(self.grid, index)
            self.clock = np.zeros(self.grid[0] * self.grid[1] * self.grid[2], dtype=np.int64)
            self.clock[self.flat] = 1

    # -- wrappers
    def _wrap_plain(self, original, kind: str, ptr_index: int, mask_index: int, value_index: int | None):
        check = self

        def access(builder_self, *args, **kwargs):
            if not check.done and not check.in_atomic and len(args) > max(ptr_index, mask_index):
                value = args[value_index] if value_index is not None else None
                check._guarded(kind, builder_self, args[ptr_index], args[mask_index], value)
            return original(builder_self, *args, **kwargs)

        return access

    def _wrap_atomic(self, original, ptr_index: int, mask_index: int | None, sem_index: int):
        check = self

        def atomic(builder_self, *args, **kwargs):
            if not check.done and not check.in_atomic and len(args) > max(ptr_index, sem_index):
                mask = args[mask_index] if mask_index is not None else None
                check._guarded("atomic", builder_self, args[ptr_index], mask, args[sem_index])
            check.in_atomic += 1  # the plain accesses an atomic makes inside (3.9's atomic load/store)
            try:
                return original(builder_self, *args, **kwargs)
            finally:
                check.in_atomic -= 1

        return atomic

    def _guarded(self, kind: str, builder, handle, mask, extra) -> None:
        """One access, bookkept before the interpreter makes it (`extra`: a store's value, an atomic's
        sem). A failure here is the judge's own bug: recorded (the parent reports a judge_error), the
        check off for the rest of the launch."""
        try:
            if kind == "load":
                self._load(builder, handle, mask)
            elif kind == "store":
                self._store(builder, handle, mask, extra)
            else:
                self._atomic(builder, handle, mask, extra)
        except Exception as e:  # noqa: BLE001 - the judge's bug must not pass as the kernel's crash
            self.done = True
            self.errors.append(
                f"race check failed on a {kind} in kernel {self.kernel}: {type(e).__name__}: {e}"
            )

    # -- bookkeeping
    def _load(self, builder, handle, mask) -> None:
        if not self.spans:
            return
        data = np.asarray(handle.data)
        if data.size == 0:
            return
        low, high = int(data.min()), int(data.max())
        if not any(low <= last and first <= high for first, last in self.spans):
            return  # A and B, and whatever else this launch did not store to
        addresses, _ = access_addresses(data, mask)
        if addresses.size == 0:
            return
        self._enter(builder)
        for key, offsets, _ in self._groups(addresses):
            page = self.pages.get(key)
            if page is None:
                continue
            if self._unordered("load", page, STORE_BY, STORE_AT, key, offsets):
                return

    def _store(self, builder, handle, mask, value) -> None:
        data = np.asarray(handle.data)
        addresses, on = access_addresses(data, mask)
        if addresses.size == 0:
            return
        self._enter(builder)
        epoch = self.clock[self.flat]
        values = np.broadcast_to(np.asarray(value.data), data.shape)
        values = (values if on is None else values[on]).ravel()
        for key, offsets, picked in self._groups(addresses):
            page = self._page(key)
            mine = values if picked is None else values[picked]

            def same(bad, key=key, offsets=offsets, mine=mine):  # the bits already there: no lost write
                return self._holds(key, offsets[bad], mine[bad])

            if self._unordered("store", page, STORE_BY, STORE_AT, key, offsets, same) or self._unordered(
                "store over atomic", page, ATOMIC_BY, ATOMIC_AT, key, offsets
            ):
                return
            page[STORE_BY, offsets] = self.flat + 1
            page[STORE_AT, offsets] = epoch
        self._add_span(int(addresses.min()), int(addresses.max()))

    def _atomic(self, builder, handle, mask, sem) -> None:
        addresses, _ = access_addresses(np.asarray(handle.data), mask)
        if addresses.size == 0:
            return
        self._enter(builder)
        acquires, releases = compat.memory_order(sem)
        touched = [(key, self._page(key), offsets) for key, offsets, _ in self._groups(addresses)]
        ids = np.unique(np.concatenate([page[CLOCK, offsets] for _, page, offsets in touched]))
        if acquires:
            for i in ids[ids > 0]:
                np.maximum(self.clock, self.clocks[int(i)], out=self.clock)
        for key, page, offsets in touched:  # the plain stores it lands on must be ordered before it
            if self._unordered("atomic", page, STORE_BY, STORE_AT, key, offsets):
                return
        if releases and acquires:  # this program's clock already holds every address's: one for all
            fresh = self._new_clock(None)
            joined = {int(i): fresh for i in ids}
        elif releases:  # each address's clock joins this program's
            joined = {int(i): self._new_clock(self.clocks[int(i)] if i > 0 else None) for i in ids}
        for _, page, offsets in touched:
            page[ATOMIC_BY, offsets] = self.flat + 1
            page[ATOMIC_AT, offsets] = self.clock[self.flat]
            if releases:
                page[CLOCK, offsets] = _remap(page[CLOCK, offsets], joined)
        if releases:
            self.clock[self.flat] += 1  # what this program does next is not covered by that release
            if len(self.clocks) > self.compact_at:
                self._compact()

    def _unordered(self, kind: str, page, by_row: int, at_row: int, key: int, offsets, forgiven=None) -> bool:
        """Report (and True) when a record at `offsets` is another program's write that the running
        program is not ordered after. `forgiven(bad)`: which of those lanes are no race after all."""
        by = page[by_row, offsets]
        other = (by > 0) & (by != self.flat + 1)
        if not other.any():
            return False
        bad = other & (page[at_row, offsets] > self.clock[np.maximum(by - 1, 0)])
        if bad.any() and forgiven is not None:
            bad[np.flatnonzero(bad)[forgiven(bad)]] = False
        if not bad.any():
            return False
        first = int(np.argmax(bad))
        writer = int(by[first]) - 1
        _, ny, nz = self.grid
        self.races.append(
            Race(
                kind,
                self.kernel,
                self.program,
                (writer // (ny * nz), writer // nz % ny, writer % nz),
                (key << PAGE_BITS) | int(offsets[first]),
                self.arguments,
            )
        )
        self.done = True
        return True

    def _groups(self, addresses: np.ndarray):
        """(page key, offsets in the page, which addresses: a mask or None for all), one per page touched."""
        pages = addresses >> np.uint64(PAGE_BITS)
        offsets = (addresses & np.uint64(PAGE_MASK)).astype(np.intp)
        low, high = int(pages.min()), int(pages.max())
        if low == high:
            return [(low, offsets, None)]
        keys, inverse = np.unique(pages, return_inverse=True)
        return [(int(k), offsets[inverse == i], inverse == i) for i, k in enumerate(keys)]

    def _holds(self, key: int, offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Which addresses (page `key`, `offsets`) already hold exactly `values`' bits: a second
        program storing the same bits (overlapping tiles that compute the same element) loses nothing."""
        addresses = (np.uint64(key) << np.uint64(PAGE_BITS)) | offsets.astype(np.uint64)
        values = np.ascontiguousarray(values)
        there = np.ascontiguousarray(
            self.native_load(
                addresses, np.ones(addresses.shape, dtype=bool), np.zeros_like(values), values.dtype
            )
        )
        width = values.dtype.itemsize
        return (there.view(np.uint8).reshape(-1, width) == values.view(np.uint8).reshape(-1, width)).all(
            axis=1
        )

    def _page(self, key: int) -> np.ndarray:
        page = self.pages.get(key)
        if page is None:
            page = self.pages[key] = np.zeros((5, PAGE_MASK + 1), dtype=np.int32)
        return page

    def _add_span(self, first: int, last: int) -> None:
        keep = []
        for span in self.spans:
            if span[0] - SPAN_GAP <= last and first <= span[1] + SPAN_GAP:
                first, last = min(first, span[0]), max(last, span[1])
            else:
                keep.append(span)
        keep.append([first, last])
        self.spans = keep

    def _new_clock(self, previous: np.ndarray | None) -> int:
        clock = self.clock.copy() if previous is None else np.maximum(previous, self.clock)
        self.clocks[self.next_clock] = clock
        self.next_clock += 1
        return self.next_clock - 1

    def _compact(self) -> None:
        """Drop the clocks no address refers to any more (an arrival counter releases one per program)."""
        live = set()
        for page in self.pages.values():
            live.update(int(i) for i in np.unique(page[CLOCK]))
        self.clocks = {i: c for i, c in self.clocks.items() if i in live}
        self.compact_at = max(256, 2 * len(self.clocks))


def access_addresses(data: np.ndarray, mask) -> tuple[np.ndarray, np.ndarray | None]:
    """The byte addresses an access touches (its pointers where its mask is on, flat, uint64), and
    the mask (None: all on)."""
    addresses = data.astype(np.uint64, copy=False)
    on = None
    if mask is not None:
        on = np.asarray(getattr(mask, "data", mask), dtype=bool)
        if on.shape != addresses.shape:
            on = np.broadcast_to(on, addresses.shape)
        addresses = addresses[on]
    return addresses.ravel(), on


def _remap(ids: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    if len(mapping) == 1:
        return np.full_like(ids, next(iter(mapping.values())))
    out = ids.copy()
    for old, new in mapping.items():
        out[ids == old] = new
    return out
