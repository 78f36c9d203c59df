"""The judge's fingerprint: a short, stable hash of everything that decides a verdict.

Every Evaluation carries it (`Evaluation.judge`, set in evaluators/evaluate.py), so a run
store can tell a verdict of today's judge from one an older judge gave: the engine never
lets an older judge's verdict stand as a winner (evolve/controller.py re-judges it).

What goes in, and why:
- the bytes of every Python file of this package (evaluators/**/*.py, by path relative to the
  package, sorted; each path goes in with its bytes, so moving code between files counts too):
  the static rules, the compile, the checks, the guards, the timing protocol and the
  performance model are all code here, and any of them can turn a verdict or a fitness;
- the model's fitted constants (evaluators/model/fitted.json, DATA_FILES): `make calibrate`
  rewrites them, and they set every modelled fitness and the error it carries;
- the versions of torch, triton and numpy (the installed distributions' versions): torch draws
  the inputs and computes the references, triton compiles and (on a CPU) interprets the kernels,
  and the interpreter does its arithmetic in numpy.

Not in it: the task (a run's task is fixed by its config), the machine and the GPU (they are in
the backend label and the provenance), and anything outside evaluators/ (the engine decides
which candidates are judged, never what a verdict says). Data files the judge may read later
must be added here.

Computed once per process (the files are read at the first call): a process whose evaluators/
files change under it keeps the fingerprint of the code it loaded first.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("torch", "triton", "numpy")  # whose versions decide verdicts (see the module docstring)
DATA_FILES = ("fitted.json",)  # data files the judge reads, by name under the package (see the docstring)
LENGTH = 16  # hex characters kept: 64 bits, short enough to print, far from any collision in a run


def judge_sources(root: Path = PACKAGE_DIR) -> list[Path]:
    """The Python files (and DATA_FILES) under `root` that make up the judge, sorted by their path
    relative to it."""
    files = [*root.rglob("*.py"), *(p for name in DATA_FILES for p in root.rglob(name))]
    return sorted(
        (p for p in files if "__pycache__" not in p.parts),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """The installed version of each library (the distribution's metadata: no import needed, so
    a leaderboard reader does not pay for importing torch); "absent" when it is not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def fingerprint_of(root: Path, versions: Mapping[str, str]) -> str:
    """The fingerprint of the judge whose sources lie under `root`, run with library `versions`."""
    digest = hashlib.sha256(b"triton-evolve judge 1\0")
    for name in sorted(versions):
        digest.update(f"{name}={versions[name]}\0".encode())
    for path in judge_sources(root):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:LENGTH]


@functools.cache
def judge_fingerprint() -> str:
    """This process's judge: evaluators/ as installed here with this torch, triton and numpy.
    Cached: the first call reads the files, later calls return the same string."""
    return fingerprint_of(PACKAGE_DIR, library_versions())
