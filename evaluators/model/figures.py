"""The model's calibration table (evaluators/model/figures.toml) and measured tables as fit rows.

`load_figures(path)` parses and checks the TOML table: every problem is a FiguresError naming the
file, the row (its index and id) and the field. `measured_rows(folder)` turns the model-vs-measured
tables that `make gpu-check` writes (benchmarks/results/*/calibration.json, format in
evaluators/model/calibration.py) into rows of the same kind, weighted above published figures.
Nothing here imports torch or triton.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
FIGURES_PATH = Path(__file__).with_name("figures.toml")
RESULTS_DIR = ROOT / "benchmarks" / "results"
GPUS = ("h100", "h200", "h100_nvl")
DTYPES = ("fp16", "bf16", "fp8")
LAYOUTS = ("nn", "nt", "tn")
MEASURED_WEIGHT = 4.0  # a row measured by `make gpu-check` counts as four published ones


class FiguresError(ValueError):
    """The calibration table is invalid; the message names the file, the row and the field."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One figure to fit: a kernel (file + settings) on one shape, and what it reached."""

    id: str
    gpu: str
    dtype: str
    shape: tuple[int, int, int]
    layout: str
    kernel: str  # path relative to the repository root
    settings: dict  # module-level assignments rewritten for this row
    tflops: float
    source: str
    quote: str = ""
    config: str = ""
    autotune: str | None = None  # a settings key swept over the module's CONFIGS
    exclude: str | None = None  # modelled and reported, not fitted
    weight: float = 1.0
    kind: str = "published"  # "published" | "measured"


@dataclasses.dataclass(frozen=True)
class Ceiling:
    """What a library (cuBLAS) reached on a shape: the ceiling a Triton kernel is compared with."""

    gpu: str
    dtype: str
    shape: tuple[int, int, int]
    library: str
    tflops: float
    source: str
    quote: str = ""


_ROW_FIELDS = {"id", "gpu", "dtype", "shape", "layout", "kernel", "settings", "tflops", "source", "quote",
               "config", "autotune", "exclude"}  # fmt: skip
_CEILING_FIELDS = {"gpu", "dtype", "shape", "library", "tflops", "source", "quote"}


def _fail(path: Path, where: str, message: str) -> FiguresError:
    return FiguresError(f"{path}: {where}: {message}")


def _text(path, where, entry, name, required=True) -> str | None:
    value = entry.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, where, f"field '{name}' must be a non-empty string, got {value!r}")
    return value


def _choice(path, where, entry, name, options) -> str:
    value = _text(path, where, entry, name)
    if value not in options:
        raise _fail(path, where, f"field '{name}' = {value!r} is not one of {', '.join(options)}")
    return value  # type: ignore[return-value]


def _shape(path, where, entry) -> tuple[int, int, int]:
    value = entry.get("shape")
    ok = isinstance(value, list) and len(value) == 3
    if not ok or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value):
        raise _fail(path, where, f"field 'shape' must be [M, N, K] of positive integers, got {value!r}")
    return tuple(value)  # type: ignore[return-value]


def _tflops(path, where, entry) -> float:
    value = entry.get("tflops")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _fail(path, where, f"field 'tflops' must be a positive number, got {value!r}")
    return float(value)


def _unknown(path, where, entry, known) -> None:
    extra = sorted(set(entry) - known)
    if extra:
        raise _fail(path, where, f"unknown field(s) {', '.join(extra)} (known: {', '.join(sorted(known))})")


def _row(path: Path, index: int, entry: dict, root: Path) -> Row:
    where = f"row {index}"
    if not isinstance(entry, dict):
        raise _fail(path, where, "must be a table")
    if isinstance(entry.get("id"), str):
        where += f" ({entry['id']})"
    _unknown(path, where, entry, _ROW_FIELDS)
    kernel = _text(path, where, entry, "kernel")
    if not (root / kernel).is_file():
        raise _fail(path, where, f"field 'kernel' = {kernel!r}: no such file under {root}")
    settings = entry.get("settings", {})
    if not isinstance(settings, dict):
        raise _fail(path, where, f"field 'settings' must be a table of NAME = value, got {settings!r}")
    autotune = _text(path, where, entry, "autotune", required=False)
    return Row(
        id=_text(path, where, entry, "id"),  # type: ignore[arg-type]
        gpu=_choice(path, where, entry, "gpu", GPUS),
        dtype=_choice(path, where, entry, "dtype", DTYPES),
        shape=_shape(path, where, entry),
        layout=_choice(path, where, entry, "layout", LAYOUTS),
        kernel=kernel,  # type: ignore[arg-type]
        settings=dict(settings),
        tflops=_tflops(path, where, entry),
        source=_text(path, where, entry, "source"),  # type: ignore[arg-type]
        quote=_text(path, where, entry, "quote"),  # type: ignore[arg-type]
        config=_text(path, where, entry, "config", required=False) or "",
        autotune=autotune,
        exclude=_text(path, where, entry, "exclude", required=False),
    )


def _ceiling(path: Path, index: int, entry: dict) -> Ceiling:
    where = f"ceiling {index}"
    if not isinstance(entry, dict):
        raise _fail(path, where, "must be a table")
    _unknown(path, where, entry, _CEILING_FIELDS)
    return Ceiling(
        gpu=_choice(path, where, entry, "gpu", GPUS),
        dtype=_choice(path, where, entry, "dtype", DTYPES),
        shape=_shape(path, where, entry),
        library=_text(path, where, entry, "library"),  # type: ignore[arg-type]
        tflops=_tflops(path, where, entry),
        source=_text(path, where, entry, "source"),  # type: ignore[arg-type]
        quote=_text(path, where, entry, "quote", required=False) or "",
    )


def load_figures(path: Path = FIGURES_PATH, root: Path = ROOT) -> tuple[list[Row], list[Ceiling]]:
    """(rows, ceilings) of a figures.toml. Raises FiguresError naming file, row and field for a
    missing file, bad TOML, a missing or mistyped field, a kernel file that does not exist under
    `root`, or a duplicate row id."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FiguresError(f"{path}: no such calibration table") from None
    except tomllib.TOMLDecodeError as e:
        raise FiguresError(f"{path}: not valid TOML ({e}); fix the syntax at that line") from None
    _unknown(path, "top level", data, {"row", "ceiling"})
    rows = [_row(path, i, e, root) for i, e in enumerate(data.get("row", []))]
    seen: set[str] = set()
    for i, r in enumerate(rows):
        if r.id in seen:
            raise _fail(path, f"row {i} ({r.id})", "field 'id' repeats an earlier row's id")
        seen.add(r.id)
    ceilings = [_ceiling(path, i, e) for i, e in enumerate(data.get("ceiling", []))]
    return rows, ceilings


# ---------------------------------------------------------------- measured tables (make gpu-check)

_MEASURED_KERNELS = {  # calibration.json "kernel" -> (file, settings key of its config index)
    "tutorial03": ("kernels/baselines/tutorial_matmul.py", "CONFIG_INDEX"),
    "seed": ("kernels/seeds/tiled_matmul.py", None),
}


def measured_rows(folder: Path = RESULTS_DIR) -> tuple[list[Row], list[Ceiling]]:
    """Rows from every `folder/*/calibration.json` (do_bench rows with a measured figure, kernels we
    have the source of), weighted MEASURED_WEIGHT; torch.matmul rows become ceilings. Raises
    FiguresError naming the file for a table that is not readable or not of the expected schema."""
    from .calibration import read_table

    rows: list[Row] = []
    ceilings: list[Ceiling] = []
    for path in sorted(Path(folder).glob("*/calibration.json")):
        try:
            doc = read_table(path)  # the format's own reader: JSON, then its schema
        except (OSError, json.JSONDecodeError) as e:
            raise FiguresError(f"{path}: not readable JSON ({e}); rerun `make gpu-check`") from None
        except ValueError as e:  # another schema: read_table names the file and both schemas
            raise FiguresError(str(e)) from None
        gpu = (doc.get("gpu") or {}).get("model_gpu")
        dtype = (doc.get("task") or {}).get("dtype")
        if gpu not in GPUS or dtype not in DTYPES:
            continue  # another GPU or dtype than the table calibrates
        for i, r in enumerate(doc.get("rows", [])):
            measured = r.get("measured_tflops")
            if r.get("protocol") != "do_bench" or not measured or r.get("status") != "ok":
                continue
            shape = tuple(int(x) for x in r["shape"])
            source = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} rows[{i}]"
            if r["kernel"] == "torch.matmul":
                ceilings.append(Ceiling(gpu, dtype, shape, "torch.matmul (measured)", measured, source))
                continue
            if r["kernel"] not in _MEASURED_KERNELS:
                continue
            kernel, key = _MEASURED_KERNELS[r["kernel"]]
            settings = {key: int(r["config_index"])} if key and r.get("config_index") is not None else {}
            rows.append(Row(
                id=f"measured:{path.parent.name}:{r['kernel']}:{r.get('config_index')}:{'x'.join(map(str, shape))}"
                   f":{r['layout']}",
                gpu=gpu, dtype=dtype, shape=shape, layout=r["layout"], kernel=kernel, settings=settings,
                tflops=float(measured), source=source, quote="do_bench median", config=r.get("config") or "",
                weight=MEASURED_WEIGHT, kind="measured",
            ))  # fmt: skip
    return rows, ceilings
