"""The prompt an LLM proposer sends: template files plus the texts that fill them.

Templates live in `evolve/prompts/` as Markdown with `string.Template` placeholders (`$parent_source`):
`system.md` is the role and the candidate contract, `default.md` asks for SEARCH/REPLACE edits and
`rewrite.md` for a whole module (two edit modes a bandit can choose between). The fields a template may
name are exactly those of `PromptFields`; the builders below turn plain data (a task dict, an
Evaluation dict, store rows) into their texts. Plain text in, plain text out: nothing here calls a model.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
import string
from pathlib import Path

from evaluators.evaluation import Evaluation
from evaluators.targets import DEVICE_PROPERTIES, TARGET_LIMITS
from evaluators.task import Task
from evolve.proposers.edits import evolve_regions

TEMPLATES = ("default", "rewrite")  # user prompts; "default" asks for diffs, "rewrite" for a module
SYSTEM = "system"
NONE_TEXT = "(none)"  # what an empty section shows, so the model sees it was empty, not lost
FEEDBACK_CHARS = 300  # per failure: the first lines say what went wrong; the rest is noise in a prompt
FEEDBACK_LINES = 3
LAYOUT_MEANING = {"nn": "A[M,K] @ B[K,N]", "nt": "B stored [N,K]", "tn": "A stored [K,M]"}


class PromptError(ValueError):
    """A template cannot be loaded or rendered; the message names the template or field and the fix."""


@dataclasses.dataclass(frozen=True)
class PromptFields:
    """The texts a template may use, one `$name` placeholder each; no other placeholder is allowed.

    task_summary: the task and its target GPU's limits (`task_summary`). target: a short name of the
    GPU ranked on (`target_name`). parent_source: the parent module, verbatim. parent_figures: the
    parent's verdict and per-shape figures (`figures`). inspirations: other kernels as labelled code
    blocks (`inspirations`). failures: recent failed children on this island (`failures`). lessons:
    the run's distilled lessons (`evolve.meta.lessons.Lessons.text`). evolve_regions: where the
    parent may be edited (`regions_text`). An empty text renders as NONE_TEXT.
    """

    task_summary: str
    target: str
    parent_source: str
    parent_figures: str
    evolve_regions: str
    inspirations: str = ""
    failures: str = ""
    lessons: str = ""


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(PromptFields))


def _read(name: str) -> str:
    return importlib.resources.files("evolve.prompts").joinpath(f"{name}.md").read_text(encoding="utf-8")


def load_template(template_id: str) -> str:
    """The text of user template `template_id`: one of TEMPLATES, or "file:PATH" (a template a run
    exported, `evolve export-prompts`); PromptError naming the ids or the file otherwise."""
    if template_id.startswith("file:"):
        path = Path(template_id.removeprefix("file:"))
        if not path.is_file():
            raise PromptError(f"prompt template {template_id!r}: {path} is not a file")
        return path.read_text(encoding="utf-8")
    if template_id not in TEMPLATES:
        raise PromptError(
            f"unknown prompt template {template_id!r}; the templates are {', '.join(TEMPLATES)}"
        )
    return _read(template_id)


def system_prompt() -> str:
    """The system prompt: the role, the candidate contract and what the judge rejects."""
    return _read(SYSTEM)


def render(template: str, fields: PromptFields) -> str:
    """`template` with each `$field` replaced by its text; PromptError for a placeholder that is not a
    field of PromptFields (naming it and the known ones) or a stray `$` (write `$$` for a dollar)."""
    values = {name: getattr(fields, name) or NONE_TEXT for name in FIELD_NAMES}
    try:
        return string.Template(template).substitute(values)
    except KeyError as err:
        raise PromptError(
            f"the template names an unknown field ${err.args[0]}; the fields are {', '.join(FIELD_NAMES)}"
        ) from None
    except ValueError as err:  # string.Template's message names the line and column
        raise PromptError(
            f"the template has an invalid placeholder ({err}); write $$ for a literal $"
        ) from None


def target_name(task: dict, backend: str = "") -> str:
    """The GPU the figures are for: the measured device of a "cuda:<name>" backend, else the task's
    compile target and the GPU it stands for."""
    if backend.startswith("cuda:"):
        return backend.removeprefix("cuda:")
    target = Task.from_dict(task).target
    return f"{DEVICE_PROPERTIES[target].name} ({target})"


def task_summary(task: dict, backend: str = "") -> str:
    """The task (`evaluators.Task.to_dict()`) as a few lines: dtype and precision, layouts, training
    shapes, how many held-out shapes, and the target's public limits. TaskError for an invalid dict."""
    t = Task.from_dict(task)
    if t.dtype == "fp32":
        precision = (
            "TF32 products allowed" if t.allow_tf32 else 'strict fp32: tl.dot with input_precision="ieee"'
        )
    else:
        precision = f"tl.dot on {t.dtype} operands, fp32 accumulation"
    layouts = ", ".join(f"{x} ({LAYOUT_MEANING[x]})" for x in t.layouts)
    shapes = ", ".join("x".join(map(str, s)) for s in t.train)
    limits, props = TARGET_LIMITS[t.target], DEVICE_PROPERTIES[t.target]
    gpu = target_name(task, backend)
    return "\n".join(
        [
            f"C = A @ B in {t.dtype} ({precision}); layouts {layouts}.",
            f"Fitness shapes (MxNxK): {shapes}. {len(t.held_out)} held-out shape(s), not shown, check that "
            "the kernel generalises.",
            f"Target: {gpu}; {t.target} limits: compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} SMs, {limits.max_shared_per_block // 1024} KiB shared memory "
            f"per block, {limits.regs_per_sm} registers per SM, at most {limits.max_regs_per_thread} per "
            f"thread and {limits.max_threads_per_block} threads per block.",
        ]
    )


def _shape(row: dict) -> str:
    return "x".join(map(str, row["shape"])) + f" {row.get('layout', 'nn')}"


def _num(x: float | None, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x * scale, fmt)


def figures(evaluation: dict) -> str:
    """An Evaluation dict (`Evaluation.to_dict()`) as the parent's figures: verdict, fitness with its
    kind, and one line per training shape. Modelled figures are labelled "modelled" with the model's
    error, and never carry a measured time or speedup."""
    e = Evaluation.from_dict(evaluation)
    kind = e.fitness_kind
    if kind == "none":  # older records: the backend still says which kind a figure is
        kind = {"cuda": "measured", "model": "modelled"}.get(e.backend.split(":")[0], "none")
    stage = f" ({e.stage})" if e.stage else ""
    lines = [f"Verdict: {e.status}{stage} on {e.backend}."]
    if not e.ok:
        first = "\n".join(e.feedback.strip().splitlines()[:FEEDBACK_LINES])
        return "\n".join(lines + ([f"Feedback: {_cut(first)}"] if first else []))
    if kind == "measured":
        lines.append(f"Fitness {e.fitness:.3f}: measured geometric-mean speedup over torch.matmul.")
    elif kind == "modelled":
        err = f", ratios within +-{e.model_error:.0%} not told apart" if e.model_error else ""
        lines.append(
            f"Fitness {e.fitness:.3f}: modelled geometric-mean fraction of the GPU's peak (performance "
            f"model, no GPU ran it{err})."
        )
    else:
        lines.append("No performance figures: checked on the CPU interpreter only.")
    for row in evaluation.get("shapes", []):
        if row.get("kind") != "train" or kind == "none":
            continue
        if kind == "measured":
            text = (
                f"measured {_num(row.get('time_s'), '.3f', 1e3)} ms, "
                f"{_num(row.get('tflops'), '.1f')} TFLOP/s, speedup {_num(row.get('speedup'), '.2f')}x "
                f"over torch.matmul ({_num(row.get('torch_time_s'), '.3f', 1e3)} ms)"
            )
        else:
            err = row.get("model_error")
            text = (
                f"modelled {_num(row.get('tflops'), '.1f')} TFLOP/s, "
                f"{_num(row.get('fraction_of_peak'), '.1f', 100)}% of peak, "
                f"{row.get('bound') or 'unknown'}-bound, model error "
                f"{'+-' + format(err, '.0%') if err else 'not calibrated'}"
            )
        lines.append(f"- {_shape(row)}: {text}")
    if e.held_out is not None and kind != "none":
        lines.append(f"Held-out shapes ({kind}, not in the fitness): {e.held_out:.3f}.")
    return "\n".join(lines)


def _cut(text: str, limit: int = FEEDBACK_CHARS) -> str:
    text = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def failures(rows: list[dict], limit: int = 5) -> str:
    """Recent failed children (dicts with status, feedback or an edit's reason, and note), at most
    `limit` in the order given, as a bulleted list; each feedback is its first lines, cut to
    FEEDBACK_CHARS characters."""
    out = []
    for row in rows[:limit]:
        feedback = row.get("feedback") or row.get("reason") or ""
        first = "\n".join(feedback.strip().splitlines()[:FEEDBACK_LINES])
        note = f" (change: {_cut(row['note'], 120)})" if row.get("note") else ""
        out.append(f"- {row.get('status', 'failed')}{note}: {_cut(first) or 'no feedback'}")
    return "\n".join(out)


def _fence(source: str) -> str:
    # Longer than any run of backticks in the source, so that a docstring cannot close the block.
    return "`" * max(3, 1 + max(map(len, re.findall("`+", source)), default=0))


def inspirations(sources: list[tuple[str, str]]) -> str:
    """(label, source) pairs as labelled python code blocks."""
    blocks = []
    for label, source in sources:
        fence = _fence(source)
        blocks.append(f"### {label}\n{fence}python\n{source.rstrip()}\n{fence}")
    return "\n\n".join(blocks)


def regions_text(source: str) -> str:
    """Where the parent's EVOLVE-BLOCK regions are, by line numbers and first line."""
    regions = evolve_regions(source)
    if not regions:
        return (
            "The parent has no EVOLVE-BLOCK markers: the whole module may change (the marker rule below "
            "does not apply)."
        )
    lines = source.replace("\r\n", "\n").split("\n")
    parts = []
    for first, last in regions:
        body = [x.strip() for x in lines[first - 1 : last] if x.strip()]
        start = f", starting `{body[0]}`" if body else ", empty"
        parts.append(f"lines {first}-{last}{start}")
    return f"The parent's editable region(s) (EVOLVE-BLOCK): {'; '.join(parts)}."
