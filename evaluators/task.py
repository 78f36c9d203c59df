"""Tasks are data: which matmul to optimise, read from a TOML file in runs/.

A task file looks like::

    [task]
    name = "demo_cpu"
    op = "matmul"
    dtype = "bf16"            # fp16 | bf16 | fp32
    allow_tf32 = false        # fp32 only: may products round inputs to TF32?
    layouts = ["nn", "nt"]    # nn: A[M,K] @ B[K,N]; nt: B stored [N,K]; tn: A stored [K,M]
    target = "sm_90"          # offline compile target without a GPU
    trials = 3                # correctness trials (fresh inputs) per shape and layout
    inputs = ["normal", "sliced"]  # input kinds the trials cycle through (default: all of
                                   # INPUT_KINDS: normal sliced relu positive small mixed large nonfinite)
    fresh = 3                 # shapes drawn afresh for each evaluation and checked like `check` ones
                              # (evaluators/fresh_shapes.py: decode, ragged, tall); 0 turns them off

    [shapes]
    train = [[4096, 4096, 4096]]   # (M, N, K) the fitness is computed on
    held_out = [[5120, 5120, 5120]]
    check = [[64, 64, 64]]         # small shapes checked under the CPU interpreter
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DTYPES = ("fp16", "bf16", "fp32")
LAYOUTS = ("nn", "nt", "tn")
OPS = ("matmul",)
TARGETS = ("sm_80", "sm_89", "sm_90")
# Inputs a real training step passes (evaluators/correctness.py make_inputs): the checks cycle
# through these, a different one each trial. normal: N(0,1), no zeros; sliced: column slices of
# wider tensors at a storage offset, NaN in the padding; relu: A with ~half exact zeros; positive:
# |N(0,1)| (scaled error = relative error); small: 1e-5..1e-3; mixed: row and K-block scales
# 1e-3..1e3; large: outputs near the dtype's range; nonfinite: a NaN and Infs in A and B.
INPUT_KINDS = ("normal", "sliced", "relu", "positive", "small", "mixed", "large", "nonfinite")

Shape = tuple[int, int, int]
MAX_FRESH = 9  # fresh shapes per evaluation at most: each costs interpreter time on every candidate


class TaskError(ValueError):
    """A task file or override is invalid; the message names file, field and fix."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One optimisation problem. All fields are plain data (JSON-safe via to_dict)."""

    name: str
    dtype: str  # input and output dtype: fp16, bf16 or fp32
    layouts: tuple[str, ...]  # memory layouts the kernel must handle
    train: tuple[Shape, ...]  # fitness shapes (measured or modelled)
    held_out: tuple[Shape, ...]  # generalisation check only, never in fitness
    check: tuple[Shape, ...]  # correctness shapes under the CPU interpreter
    op: str = "matmul"
    allow_tf32: bool = False  # fp32 only; False means full-fp32 products like torch's default
    target: str = "sm_90"  # compile target when no GPU is present
    trials: int = 3  # fresh-input trials per (shape, layout)
    inputs: tuple[str, ...] = INPUT_KINDS  # input kinds the check trials cycle through
    fresh: int = 3  # CPU: shapes drawn per evaluation, checked beside `check` (fresh_shapes.py)
    source: str = "<memory>"  # where the task came from, for messages

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("layouts", "train", "held_out", "check", "inputs"):
            d[key] = [list(x) if isinstance(x, tuple) else x for x in d[key]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return _build(d, source=d.get("source", "<dict>"))

    def with_dtype(self, dtype: str) -> Task:
        _check_choice(self.source, "dtype", dtype, DTYPES)
        return dataclasses.replace(self, dtype=dtype, allow_tf32=self.allow_tf32 and dtype == "fp32")

    def with_check_shapes(self, shapes: Sequence[Shape]) -> Task:
        return dataclasses.replace(self, check=tuple(_shapes(self.source, "--shapes", shapes)))


def read_toml(path: Path, kind: str, example: str, error: type[Exception]) -> dict:
    """A TOML file as a dict, or `error` naming the file and the fix (missing file, bad syntax)."""
    if not path.is_file():
        raise error(f"{path}: no such {kind} file; pass a TOML file such as {example}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML ({e}); fix the syntax at that line") from None


def load_task(path: str | Path) -> Task:
    """Read and validate a task file; every problem is a TaskError naming the field."""
    path = Path(path)
    data = read_toml(path, "task", "runs/demo_cpu.toml", TaskError)
    task = data.get("task")
    shapes = data.get("shapes")
    if not isinstance(task, dict):
        raise TaskError(f"{path}: missing [task] table; add one with name, op and dtype")
    if not isinstance(shapes, dict):
        raise TaskError(f"{path}: missing [shapes] table; add train, held_out and check lists of [M, N, K]")
    unknown = set(data) - {"task", "shapes"}
    if unknown:
        raise TaskError(f"{path}: unknown table(s) {sorted(unknown)}; only [task] and [shapes] are read")
    merged = {**task, **{k: v for k, v in shapes.items()}}
    for key in shapes:
        if key not in ("train", "held_out", "check"):
            raise TaskError(f"{path}: field 'shapes.{key}' is unknown; allowed: train, held_out, check")
    return _build(merged, source=str(path))


def parse_shapes(text: str, source: str = "--shapes") -> tuple[Shape, ...]:
    """'M,N,K;M,N,K' -> ((M, N, K), ...), for the command line."""
    out = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        fields = part.split(",")
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            raise TaskError(f"{source}: '{part}' is not M,N,K; write shapes like \"64,64,64;300,260,280\"")
        out.append(tuple(int(f) for f in fields))
    if not out:
        raise TaskError(f'{source}: no shapes given; write shapes like "64,64,64;300,260,280"')
    return tuple(_shapes(source, source, out))


_FIELDS = {f.name for f in dataclasses.fields(Task)}


def _build(d: dict, source: str) -> Task:
    unknown = set(d) - _FIELDS
    if unknown:
        raise TaskError(
            f"{source}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_FIELDS - {'source'})}"
        )
    for required in ("name", "dtype", "train", "check"):
        if required not in d:
            raise TaskError(f"{source}: missing field '{required}'")
    if not isinstance(d["name"], str) or not d["name"]:
        raise TaskError(f"{source}: field 'name' must be a non-empty string")
    _check_choice(source, "op", d.get("op", "matmul"), OPS)
    _check_choice(source, "dtype", d["dtype"], DTYPES)
    _check_choice(source, "target", d.get("target", "sm_90"), TARGETS)
    layouts = d.get("layouts", ["nn"])
    if not isinstance(layouts, list | tuple) or not layouts:
        raise TaskError(f"{source}: field 'layouts' must be a non-empty list drawn from {list(LAYOUTS)}")
    for layout in layouts:
        _check_choice(source, "layouts", layout, LAYOUTS)
    allow_tf32 = d.get("allow_tf32", False)
    if not isinstance(allow_tf32, bool):
        raise TaskError(f"{source}: field 'allow_tf32' must be true or false")
    if allow_tf32 and d["dtype"] != "fp32":
        raise TaskError(
            f"{source}: field 'allow_tf32' applies to dtype fp32 only; remove it or set dtype = \"fp32\""
        )
    trials = d.get("trials", 3)
    if not isinstance(trials, int) or isinstance(trials, bool) or not 1 <= trials <= 20:
        raise TaskError(f"{source}: field 'trials' must be an integer from 1 to 20")
    inputs = d.get("inputs", list(INPUT_KINDS))
    if not isinstance(inputs, list | tuple) or not inputs:
        raise TaskError(f"{source}: field 'inputs' must be a non-empty list drawn from {list(INPUT_KINDS)}")
    for kind in inputs:
        _check_choice(source, "inputs", kind, INPUT_KINDS)
    fresh = d.get("fresh", 3)
    if not isinstance(fresh, int) or isinstance(fresh, bool) or not 0 <= fresh <= MAX_FRESH:
        raise TaskError(
            f"{source}: field 'fresh' is {fresh!r}; it must be an integer from 0 to {MAX_FRESH} "
            "(shapes drawn for each evaluation beside the check shapes; 0 turns them off)"
        )
    train = _shapes(source, "train", d["train"])
    check = _shapes(source, "check", d["check"])
    if not train or not check:
        raise TaskError(f"{source}: fields 'train' and 'check' need at least one [M, N, K] shape each")
    return Task(
        name=d["name"],
        op=d.get("op", "matmul"),
        dtype=d["dtype"],
        allow_tf32=allow_tf32,
        layouts=tuple(layouts),
        target=d.get("target", "sm_90"),
        trials=trials,
        inputs=tuple(inputs),
        fresh=fresh,
        train=tuple(train),
        held_out=tuple(_shapes(source, "held_out", d.get("held_out", []))),
        check=tuple(check),
        source=source,
    )


def _check_choice(source: str, field: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise TaskError(f"{source}: field '{field}' is {value!r}; allowed: {', '.join(allowed)}")


def _shapes(source: str, field: str, value) -> list[Shape]:
    if not isinstance(value, list | tuple):
        raise TaskError(f"{source}: field '{field}' must be a list of [M, N, K] shapes")
    out = []
    for i, shape in enumerate(value):
        ok = (
            isinstance(shape, list | tuple)
            and len(shape) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 1 << 20 for x in shape)
        )
        if not ok:
            raise TaskError(
                f"{source}: field '{field}' entry {i} is {shape!r}; each shape is [M, N, K] of positive integers"
            )
        out.append(tuple(shape))
    return out
