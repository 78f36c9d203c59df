"""Lessons distilled from the run so far: a short, deterministic text a proposer can put in its prompt.

No model is called here: the text is counted from plain records (`Outcome`: what a proposer changed,
the verdict, the first line of the judge's feedback, parent and child fitness). An LLM distillation may
later use the same inputs. Three kinds of line, each an imperative a model can act on:

- changes that helped: notes are parsed into changes ("tiles 128x128x64 -> 128x256x64" is raising
  BLOCK_N; "split_k 1 -> 4" raising SPLIT_K; "template gemm -> persistent" switching template; free
  text is grouped by its first words), e.g. "Raising BLOCK_N to 256 helped 3 of 4 times (+12% median)";
- changes that hurt: "Avoid lowering num_stages to 2: worse in 4 of 5 tries (-8% median)";
- recurring failures, grouped by status and key phrase, with a count, an example and advice, e.g.
  "4 children failed to compile: out of shared memory (e.g. tiles 128x128x64 -> 256x256x64, stages
  3 -> 4): keep (BLOCK_M + BLOCK_N) * BLOCK_K * num_stages under the shared-memory limit".

A child whose note names several changes counts for each of them (the records cannot say which one
mattered; repeated evidence sorts it out). `unsupported` and `judge_error` verdicts are not the
change's fault and teach nothing here. Lines with the most evidence are kept when max_lines is short.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping

from evaluators.evaluation import STATUSES

# A change "helped" when the child is more than NOISE faster (relative fitness), "was worse" when more
# than NOISE slower: GPU timings of the same kernel scatter by about 1-2%, so smaller moves are noise.
NOISE = 0.02
FAILED = ("rejected", "compile_error", "incorrect", "timeout", "crashed")  # the candidate's fault
NOT_ITS_FAULT = ("unsupported", "judge_error")  # the judge's limits: no lesson about the change
STOPWORDS = frozenset("a an the to of and or with in on for by from it its this that".split())  # not a family
EXAMPLE_CHARS = 60  # an example note is an illustration, not the record
PHRASE_CHARS = 80
ALIASES = {  # how notes spell the knobs -> one name per knob, so that the counts add up
    "warps": "num_warps",
    "num_warps": "num_warps",
    "stages": "num_stages",
    "num_stages": "num_stages",
    "split_k": "SPLIT_K",
    "group_m": "GROUP_M",
    "block_m": "BLOCK_M",
    "block_n": "BLOCK_N",
    "block_k": "BLOCK_K",
}
VERBS = {
    "rejected": "{be} rejected",
    "compile_error": "failed to compile",
    "incorrect": "gave wrong results",
    "timeout": "timed out",
    "crashed": "crashed",
}
# (pattern in the lowercased feedback, key phrase, advice). First match wins; order is most specific first.
KNOWN_FAILURES: tuple[tuple[str, str, str], ...] = (
    (
        r"out of (resource: )?shared memory|shared memory.{0,40}(exceed|limit|required)",
        "out of shared memory",
        "keep (BLOCK_M + BLOCK_N) * BLOCK_K * num_stages under the shared-memory limit",
    ),
    (
        r"out of (resource: )?registers|too many registers",
        "out of registers",
        "shrink BLOCK_M * BLOCK_N or raise num_warps",
    ),
    (
        r"illegal memory access|out of bounds|out-of-bounds",
        "out-of-bounds access",
        "mask every load and store",
    ),
    (r"out of memory", "out of memory", "allocate only the output"),
    (r"syntaxerror|invalid syntax", "syntax error", "return complete, valid Python"),
    (r"nameerror|is not defined", "undefined name", "define or import every name you use"),
    (r"max scaled error", "wrong values", "check the edge masks and the K loop on these shapes"),
    (r"results are biased", "biased rounding", "round to nearest"),
)
_CHANGE = re.compile(r"([A-Za-z_]\w*)(?:\s*[:=]\s*|\s+)([\w.]+)\s*->\s*([\w.]+)")
_SHAPE = re.compile(r"shape \((\d+), (\d+), (\d+)\)")
_LOCATION = re.compile(
    r"^(shape \([\d, ]+\)( layout \w+)?: |kernel \S+ (\S+ )?failed to compile( for the target)?: |"
    r"static checks failed: |line \d+: )+"
)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One judged child, as the store records it.

    candidate: its id. proposer: who made it ("mutator", "llm:gpt-4o", ...). note: what the proposer
    changed ("tiles 128x128x64 -> 128x256x64", free text from a model). status: the judge's status
    (evaluators/evaluation.py STATUSES). feedback: the judge's feedback (its first line is used; for
    static checks, the first violation). parent_fitness: the parent's fitness (None or 0 without a
    parent). child_fitness: the child's fitness (0 unless ok)."""

    candidate: str
    proposer: str = ""
    note: str = ""
    status: str = "ok"
    feedback: str = ""
    parent_fitness: float | None = None
    child_fitness: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping) -> Outcome:
        """An Outcome from a mapping with these field names (other keys are ignored, so a store row
        can be passed as it is). Raises ValueError for a missing candidate or an unknown status."""
        if "candidate" not in d:
            raise ValueError(f"an outcome needs a 'candidate' id; got keys {sorted(d)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(
                f"outcome {self.candidate}: unknown status {self.status!r}; "
                f"expected one of {', '.join(STATUSES)}"
            )


@dataclasses.dataclass(frozen=True)
class Lessons:
    """version: which distillation this is (the caller counts). evaluations: how many outcomes it was
    distilled from. text: the lines, newline-separated, ready for a prompt."""

    version: int
    evaluations: int
    text: str


@dataclasses.dataclass
class _Tally:
    """What one kind of change did: measured relative gains, and targets by effect."""

    gains: list[float] = dataclasses.field(default_factory=list)
    failed: int = 0
    targets: dict[str, Counter] = dataclasses.field(
        default_factory=lambda: {"helped": Counter(), "worse": Counter()}
    )


def changes(note: str) -> list[tuple[str, str, str]]:
    """The changes a note names, as (knob, direction, target): direction "raise"/"lower" for numbers
    (tiles split into BLOCK_M/N/K), "switch" otherwise (target part of the kind), "free" for a note
    with no "old -> new" (knob: its first three words). Each change once, in the order written."""
    found: list[tuple[str, str, str]] = []
    for name, old, new in _CHANGE.findall(note):
        knob = ALIASES.get(name.lower(), name)
        if name.lower() == "tiles":
            olds, news = old.split("x"), new.split("x")
            if len(olds) == len(news) == 3 and all(v.isdigit() for v in olds + news):
                for axis, o, n in zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), olds, news, strict=True):
                    if o != n:
                        found.append((axis, "raise" if int(n) > int(o) else "lower", n))
                continue
        try:
            o, n = float(old), float(new)
        except ValueError:
            found.append((knob, "switch", new))
            continue
        if n != o:
            found.append((knob, "raise" if n > o else "lower", new))
    if not found:
        words = [w for w in re.findall(r"[a-z0-9_]+", note.lower()) if w not in STOPWORDS][:3]
        if words:
            found.append((" ".join(words), "free", ""))
    return list(dict.fromkeys(found))


def _gain(o: Outcome) -> float | None:
    """child / parent - 1 for an ok child with a measurable parent, else None."""
    p, c = o.parent_fitness, o.child_fitness
    if o.status != "ok" or p is None or not (math.isfinite(p) and p > 0 and math.isfinite(c) and c > 0):
        return None
    return c / p - 1.0


def _first_line(feedback: str) -> str:
    """The line the lessons read: the first, or for static checks the first violation listed."""
    lines = [line.strip() for line in feedback.splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].startswith("static checks failed") and len(lines) > 1 and lines[1].startswith("- "):
        return "static checks failed: " + lines[1][2:]
    return lines[0]


def failure_kind(feedback: str) -> tuple[str, str]:
    """(key phrase, advice) for a failure's feedback: a known phrase, or the feedback's own words with
    the location (shape, kernel, line) dropped and numbers replaced by N (advice "")."""
    line = _first_line(feedback)
    low = line.lower()
    for pattern, phrase, advice in KNOWN_FAILURES:
        if re.search(pattern, low):
            return phrase, advice
    text = _LOCATION.sub("", line)
    text = re.split(r" \(|; |\. ", text, maxsplit=1)[0]  # the key phrase, not the details after it
    text = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text).strip().rstrip(":.")
    return (_clip(text, PHRASE_CHARS) or "no feedback"), ""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _targets(counter: Counter) -> str:
    """' to 256', ' to 128 or 256' (at most three, numeric order), or '' when they scatter."""
    values = sorted(
        counter, key=lambda v: (float(v), v) if v.replace(".", "", 1).isdigit() else (math.inf, v)
    )
    if not values or len(values) > 3:
        return ""
    return " to " + " or ".join(values)


def _subject(knob: str, direction: str, target: str) -> tuple[str, str]:
    """(phrase starting a 'helped' line, phrase after 'Avoid') for a kind of change."""
    if direction == "free":
        return f"Changes like '{knob}'", f"changes like '{knob}'"
    if direction == "switch":
        return f"Switching {knob} to {target}", f"switching {knob} to {target}"
    word = "raising" if direction == "raise" else "lowering"
    return f"{word.capitalize()} {knob}", f"{word} {knob}"


def _change_lines(outcomes: list[Outcome]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(helped, hurt) lines with their evidence counts, each list in its display order."""
    tallies: dict[tuple[str, str, str], _Tally] = {}
    for o in outcomes:
        if o.status in NOT_ITS_FAULT:
            continue
        gain = _gain(o)
        for knob, direction, target in changes(o.note):
            key = (knob, direction, target if direction == "switch" else "")
            t = tallies.setdefault(key, _Tally())
            if o.status in FAILED:
                t.failed += 1
                t.targets["worse"][target] += 1
            elif gain is not None:
                t.gains.append(gain)
                if abs(gain) > NOISE:
                    t.targets["helped" if gain > 0 else "worse"][target] += 1
    helped, hurt = [], []
    for (knob, direction, target), t in tallies.items():
        h = sum(g > NOISE for g in t.gains)
        w = sum(g < -NOISE for g in t.gains)
        tries = len(t.gains) + t.failed
        median = statistics.median(t.gains) if t.gains else 0.0
        good, bad = _subject(knob, direction, target)
        to_good = "" if direction in ("switch", "free") else _targets(t.targets["helped"])
        to_bad = "" if direction in ("switch", "free") else _targets(t.targets["worse"])
        if h and h >= w + t.failed:
            times = "time" if tries == 1 else "times"
            line = f"{good}{to_good} helped {h} of {tries} {times} ({median:+.0%} median)"
            helped.append(((-h, -median, line), h, line))
        elif w + t.failed > h:
            of = f"{tries} {'try' if tries == 1 else 'tries'}"
            if not t.failed:
                what = f"worse in {w} of {of} ({median:+.0%} median)"
            elif not w:
                what = f"failed in {t.failed} of {of}"
            else:
                what = (
                    f"worse or failed in {w + t.failed} of {of} "
                    f"({w} slower, {median:+.0%} median; {t.failed} failed)"
                )
            line = f"Avoid {bad}{to_bad}: {what}"
            hurt.append(((-(w + t.failed), median, line), w + t.failed, line))
    return [(n, line) for _, n, line in sorted(helped)], [(n, line) for _, n, line in sorted(hurt)]


def _failure_lines(outcomes: list[Outcome]) -> list[tuple[int, str]]:
    """Recurring failures grouped by (status, key phrase), most frequent first."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    advice: dict[tuple[str, str], str] = {}
    for o in outcomes:
        if o.status in FAILED:
            phrase, tip = failure_kind(o.feedback)
            groups.setdefault((o.status, phrase), []).append(o)
            advice[(o.status, phrase)] = tip
    lines = []
    for (status, phrase), members in groups.items():
        n = len(members)
        shapes = Counter(m.group(0)[6:] for o in members if (m := _SHAPE.search(_first_line(o.feedback))))
        where = ""
        if shapes:
            top = sorted(shapes.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            where = " on shape " + ", ".join(f"{s}" + (f" x{c}" if c > 1 else "") for s, c in top)
        example = next((o.note for o in members if o.note.strip()), "")
        eg = f" (e.g. {_clip(example.strip(), EXAMPLE_CHARS)})" if example else ""
        tip = f": {advice[(status, phrase)]}" if advice[(status, phrase)] else ""
        who = (
            f"{n} {'child' if n == 1 else 'children'} {VERBS[status].format(be='was' if n == 1 else 'were')}"
        )
        line = f"{who}: {phrase}{where}{eg}{tip}"
        lines.append(((-n, status, phrase), n, line))
    return [(n, line) for _, n, line in sorted(lines)]


def distil(outcomes: Iterable[Outcome | Mapping], version: int, max_lines: int = 12) -> Lessons:
    """The lessons from these outcomes (in run order; dicts are read with Outcome.from_dict).

    The text is a header line then at most max_lines - 1 lines: changes that helped, changes that hurt,
    recurring failures, in that order; when there are more, those with the most evidence (children
    counted) are kept, ties going to the earlier section. Same input, same text. Raises ValueError when
    max_lines < 1 or an outcome is malformed."""
    if max_lines < 1:
        raise ValueError(f"max_lines must be at least 1 (the header), got {max_lines}")
    rows = [o if isinstance(o, Outcome) else Outcome.from_dict(o) for o in outcomes]
    if not rows:
        return Lessons(version, 0, "No evaluations yet: nothing learned so far.")
    helped, hurt = _change_lines(rows)
    sections = [helped, hurt, _failure_lines(rows)]
    ranked = sorted(
        (-n, s, i) for s, section in enumerate(sections) for i, (n, _) in enumerate(section)
    )  # most evidence first; ties: earlier section, then its own order
    keep = sorted((s, i) for _, s, i in ranked[: max_lines - 1])
    body = [sections[s][i][1] for s, i in keep]
    plural = "s" if len(rows) != 1 else ""
    header = f"Lessons from {len(rows)} evaluation{plural}:"
    if not ranked:
        header += " no change has clearly helped, hurt or failed yet."
    return Lessons(version, len(rows), "\n".join([header, *body]))
