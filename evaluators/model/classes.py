"""Shape classes of the model's calibration, and the error each class was fitted to.

The model's error is not the same everywhere: it is tightest on large compute-bound shapes and
loosest where launch and latency terms dominate. `evaluators/model/fit.py` fits the constants
against the calibration table and writes, per class, the out-of-sample (leave-one-out) error to
FITTED_PATH (evaluators/model/fitted.json):

    "classes": {CLASS: {"rows": int, "error": float, "ratio_error": float | null, ...}}

`error`: relative error of one modelled figure (|modelled / published - 1|, the fit's quoted
percentile); `ratio_error`: relative error of the modelled RATIO of two kernels on one shape
(errors move together across kernels, so a ratio is known better than each figure); null when the
class has too few same-shape pairs, and then `error` stands for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .constants import FITTED_PATH

CLASSES = ("skinny", "small_k", "large", "medium")


def shape_class(shape: tuple[int, int, int]) -> str:
    """The calibration class of [M, N, K]: "skinny" (M or N <= 16: decode, GEMV-like), "small_k"
    (K <= 1024 with M*N >= 2048^2: one or two k-tiles per program, ramp-dominated), "large" (M, N,
    K all >= 2048: compute-bound), "medium" (the rest)."""
    m, n, k = (int(x) for x in shape)
    if min(m, n) <= 16:
        return "skinny"
    if k <= 1024 and m * n >= 2048 * 2048:
        return "small_k"
    if min(m, n, k) >= 2048:
        return "large"
    return "medium"


def class_errors(path: Path = FITTED_PATH) -> dict[str, dict]:
    """{class: {"rows", "error", "ratio_error", ...}} from the fit's file; {} when there is none
    (the model then carries no calibrated error, and says so). Raises ValueError naming the file
    when it is present but malformed."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e}); rerun `make calibrate` to write it") from e
    classes = data.get("classes", {}) if isinstance(data, dict) else None
    if not isinstance(classes, dict):
        raise ValueError(f"{path}: field 'classes' must be an object of class -> figures")
    return {str(k): dict(v) for k, v in classes.items() if isinstance(v, dict)}


def shape_error(shape: tuple[int, int, int], errors: dict[str, dict]) -> tuple[float | None, float | None]:
    """(error, ratio_error) of `shape`'s class in `errors` (class_errors()); (None, None) when the
    class was not calibrated. ratio_error falls back to error when the class has no same-shape pairs."""
    row = errors.get(shape_class(shape))
    if not row or row.get("error") is None:
        return None, None
    error = float(row["error"])
    ratio = row.get("ratio_error")
    return error, float(ratio) if ratio is not None else error
