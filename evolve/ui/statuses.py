"""How statuses are counted for people: the kernels' failures, with unsupported and judge_error apart."""

from __future__ import annotations

# Statuses that say nothing about the kernel's quality: shown apart from the kernels' failures.
APART = {
    "unsupported": "the CPU backend cannot run them; `evolve remeasure` judges them on a GPU",
    "judge_error": "the judge's own failures, not the kernels'; `evolve remeasure` judges them again",
}


def status_summary(counts: dict[str, int]) -> str:
    """Counts per status, with unsupported and judge_error apart and explained, e.g.
    "ok 3, incorrect 1, pending 0; unsupported 1 (the CPU backend cannot run them; ...)"."""
    main = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in APART)
    apart = "; ".join(f"{k} {counts[k]} ({why})" for k, why in APART.items() if counts.get(k))
    return main + (f"; {apart}" if apart else "")


def failure_summary(failures: dict[str, int]) -> str:
    """The live line's failure counts: the kernels' failures, then unsupported and judge errors
    apart (neither is the kernel's fault), e.g. "failures: incorrect 2  unsupported 1  judge errors 1"."""
    kernel = ", ".join(f"{k} {v}" for k, v in sorted(failures.items()) if k not in APART) or "none"
    text = f"failures: {kernel}"
    if failures.get("unsupported"):
        text += f"  unsupported {failures['unsupported']} (needs a GPU judge)"
    if failures.get("judge_error"):
        text += f"  judge errors {failures['judge_error']} (the judge's bug)"
    return text
