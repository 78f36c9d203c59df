"""The CPU compile child's progress, followed by the parent while the checks run beside it.

The compile child streams what it does (evaluators/child.py `compile_offline`):

    {"event": "captured", "specs": n, "new": m}   every launch captured; m of n specialisations to build
    {"event": "compiled", "key": k, "facts": {...}}  one per specialisation built (kept at once)
    {"event": "loaded", ...}                       all facts, all launches
    {"event": "error", ...}                        evaluators/failures.py names it

Compile time is budgeted apart from the kernel's run time: `base_s` (the evaluation's timeout,
for loading the module and capturing its launches) plus `per_spec_s` for each specialisation
still to build. Each one built is written to the compile cache as it arrives, so a kernel with
many specialisations pays for each once, even if one evaluation runs out of time part way.
"""

from __future__ import annotations

import time

from . import compile as comp
from . import failures, sandbox
from .verdict import Stop


class CompileWatch:
    def __init__(
        self,
        box: sandbox.Sandbox,
        cache: comp.CompileCache,
        source_hash: str,
        target: str,
        base_s: float,
        per_spec_s: float,
        max_specs: int = 256,
    ) -> None:
        self.box, self.cache, self.source_hash, self.target = box, cache, source_hash, target
        self.base_s, self.per_spec_s, self.max_specs = base_s, per_spec_s, max_specs
        self.started = time.monotonic()
        self.deadline = self.started + base_s
        self.specs: int | None = None  # specialisations to build (None until captured)
        self.total: int | None = None  # specialisations the launches use, built or cached
        self.built = 0
        self.header: dict | None = None  # the "loaded" reply once done
        self.stop: Stop | None = None  # the verdict when the stage failed

    @property
    def done(self) -> bool:
        return self.header is not None or self.stop is not None

    def read_one(self) -> None:
        """Read and apply one frame (call when the box has one waiting, or to wait for it)."""
        header, _ = self.box.read(self.deadline)
        event = header.get("event")
        if event == "captured":
            # A second round comes when cover shapes (evaluators/coverage.py) bring new specialisations.
            new, specs = int(header.get("new", 0)), int(header.get("specs", 0))
            self.specs, self.total = (self.specs or 0) + new, (self.total or 0) + specs
            self.deadline += self.per_spec_s * new
            if self.total > self.max_specs:
                self.stop = Stop(
                    "rejected",
                    f"the launches need {self.total} specialisations compiled for {self.target}, more than the "
                    f"{self.max_specs} the judge compiles for one candidate: fewer autotune configs, or fewer "
                    "constexpr values that change with the shape",
                )
        elif event == "compiled":
            self.built += 1
            self.cache.put(self.source_hash, self.target, {str(header["key"]): header["facts"]})
        elif event == "loaded":
            self.header = header
        elif event == "error":
            self.stop = failures.from_child(header, interpreter=False)
        else:
            self.stop = Stop("crashed", f"the compile child sent an unexpected reply ({str(event)[:40]!r})")

    def counts(self) -> dict:
        """{'specialisations', 'compiled', 'from_cache'} so far (for provenance)."""
        total = self.total or 0
        return {"specialisations": total, "compiled": self.built, "from_cache": total - (self.specs or 0)}

    def finish(self) -> dict:
        """Wait for the end of the stage; the "loaded" reply, or raise its Stop / ChildTimeout."""
        while not self.done:
            self.read_one()
        if self.stop is not None:
            raise self.stop
        return self.header

    def timeout_feedback(self) -> str:
        """What ran out: the compile, of how many specialisations, after how long, within what."""
        elapsed = time.monotonic() - self.started
        if self.specs is None:
            what = "loading the module and capturing its launches on every shape did not finish"
        else:
            what = (
                f"compiling {self.specs} specialisation(s) for {self.target} did not finish ({self.built} built, "
                "kept in the compile cache and not built again)"
            )
        budget = f"{self.base_s:g} s"
        if self.specs:
            budget += f" + {self.per_spec_s:g} s x {self.specs} specialisations"
        return (
            f"timeout in the compile stage: {what} in {elapsed:.0f} s (its budget: {budget}); "
            f"{failures.machine_load()}"
        )
