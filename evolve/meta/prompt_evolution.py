"""Prompt evolution: an LLM writes variants of the prompt templates, and variants compete as arms.

Every EVOLVE_EVERY LLM calls of a run (evolve/proposing.py), one LLM proposer is asked for a variant
of the template its arms rate best (the bandit's mean reward, evolve/meta/bandit.py), shown with
every arm's record and the run's lessons. A variant is kept only if it renders with the fields a
template may use (evolve/proposers/prompt.py PromptFields), still shows the parent's source and its
editable regions, and is not the same text again; it becomes a new arm of every LLM proposer
(`llm:MODEL|v1`, ...) and is stored (`prompts` table), so a resumed run keeps it. The variant whose
arms were paid best is what `evolve export-prompts RUN` writes for the next run (`best_variant`).
"""

from __future__ import annotations

import re

from evolve.proposers import prompt

EVOLVE_EVERY = 20  # LLM calls between two variants: enough rewards to tell templates apart first
REQUIRED = ("$parent_source", "$evolve_regions")  # a kernel prompt without these cannot be answered
MAX_GROWTH = 3  # a variant at most 3x its base's length (plus MAX_EXTRA): prompts are paid per token
MAX_EXTRA = 2000
_OPEN = re.compile(r"^```[ \t]*(markdown|md|)[ \t]*$")

SYSTEM = (
    "You improve the prompt templates an optimiser sends to a code model that writes Triton matmul "
    "kernels. A template is Markdown with $placeholders filled in for each request."
)


def request(base_id: str, base_text: str, arms: list[dict], lessons: str) -> dict:
    """The system and user messages asking for a variant of template `base_id` (`arms`: the bandit's
    records, {arm, pulls, mean}; `lessons`: the run's latest lessons text)."""
    records = "\n".join(f"- {a['arm']}: {a['pulls']} children, mean reward {a['mean']:+.3f}" for a in arms)
    fields = ", ".join(f"${name}" for name in prompt.FIELD_NAMES)
    user = (
        f"The template `{base_id}` below is the best so far. Write an improved variant that makes the code "
        "model propose faster, correct kernels more often (clearer instructions, better emphasis, what to "
        "try first given the lessons).\n\n"
        f"Rewards of the templates so far (log of child over parent fitness, failures -0.5):\n{records}\n\n"
        f"Lessons from the run:\n{lessons or '(none yet)'}\n\n"
        f"Keep these placeholders and use no others: {fields} ($parent_source and $evolve_regions are "
        "required; write $$ for a dollar sign). Keep the exact SEARCH/REPLACE answer format it asks for.\n\n"
        f"Answer with the whole new template in one ```markdown fence.\n\nThe template:\n```markdown\n"
        f"{base_text}```\n"
    )
    return {"system": SYSTEM, "user": user}


def variant_from_answer(answer: str, base_text: str) -> tuple[str | None, str]:
    """(the template the answer holds, "") when it is a usable variant of `base_text`, else (None, why)."""
    text = _outer_fence(answer.replace("\r\n", "\n"))
    if text is None:
        return None, "no fenced template in the answer"
    missing = [field for field in REQUIRED if field not in text]
    if missing:
        return None, f"the variant drops {', '.join(missing)}"
    try:
        prompt.render(text, _probe_fields())
    except prompt.PromptError as e:
        return None, str(e)
    if text.strip() == base_text.strip():
        return None, "the variant is the template unchanged"
    if len(text) > MAX_GROWTH * len(base_text) + MAX_EXTRA:
        return None, f"the variant is {len(text)} characters, over {MAX_GROWTH}x its base's"
    return text, ""


def best_variant(arms: list[dict], min_pulls: int = 3) -> str | None:
    """The template id whose arms were paid best on average (pull-weighted over LLM proposers), among
    those pulled at least `min_pulls` times in all; None when none was."""
    totals: dict[str, list[float]] = {}
    for a in arms:
        name, _, template = a["arm"].partition("|")
        if name.startswith("llm:") and template:
            pulls, mean = totals.setdefault(template, [0.0, 0.0]), a
            pulls[0] += mean["pulls"]
            pulls[1] += mean["pulls"] * mean["mean"]
    ranked = [(total / n, t) for t, (n, total) in totals.items() if n >= min_pulls]
    return max(ranked)[1] if ranked else None


def _outer_fence(answer: str) -> str | None:
    """The text between the first fence opener (```markdown, ```md or ```) and the LAST closing fence:
    a template holds fences of its own (the parent's ```python block), so the first closing line is not
    its end."""
    lines = answer.split("\n")
    start = next((i for i, line in enumerate(lines) if _OPEN.match(line.strip())), None)
    if start is None:
        return None
    end = max((i for i, line in enumerate(lines) if i > start and line.strip() == "```"), default=None)
    return "\n".join(lines[start + 1 : end]) + "\n" if end is not None else None


def _probe_fields() -> prompt.PromptFields:
    return prompt.PromptFields(**{name: f"<{name}>" for name in prompt.FIELD_NAMES})
