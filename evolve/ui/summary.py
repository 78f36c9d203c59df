"""What proposed in a run (`evolve leaderboard --summary`, and the end of `evolve run`): LLM calls,
the bandits' arms and the lessons."""

from __future__ import annotations

from ..store import Store


def render_proposing_summary(store: Store) -> str:
    """What proposed in a run: the LLM calls per proposer (tokens, cost, how calls ended, how their edits
    applied), the bandit's arms (pulls, mean reward, cost) and the latest lessons; "" when the run made
    no LLM call and kept no bandit state."""
    lines = []
    for t in store.llm_totals_by_proposer():
        ended = ", ".join(f"{k} {v}" for k, v in sorted(t["by_status"].items()))
        applied = ", ".join(f"{k} {v}" for k, v in sorted(t["by_edit_status"].items()))
        lines.append(
            f"{t['proposer'] or 'llm'}: {t['calls']} calls, {t['prompt_tokens']} + {t['completion_tokens']} tokens, "
            f"${t['cost']:.4f}; calls: {ended or 'none'}; edits: {applied or 'none'}"
        )
    for key, state in store.bandits().items():  # "arms", then "families:mutator" (evolve/proposing.py)
        if not any(a["pulls"] for a in state["arms"]):
            continue
        arms = sorted(state["arms"], key=lambda a: -a["pulls"])
        label = "arms" if key == "arms" else f"{key.split(':', 1)[-1]}'s transformation families"
        lines.append(f"{label} (pulls, mean reward, cost): " + "; ".join(
            f"{a['arm']} {a['pulls']}, {a['mean']:+.3f}, ${a['cost']:.4f}" for a in arms))  # fmt: skip
    lessons = store.latest_lessons()
    if lessons:
        lines.append(f"lessons v{lessons['version']}:\n" + lessons["text"])
    return "\n".join(lines)
