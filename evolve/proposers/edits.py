"""Turn an LLM's answer text into a new kernel module, from the parent's source.

Two answer formats are accepted:

- SEARCH/REPLACE blocks (the format OpenEvolve and Aider use), possibly several, possibly inside
  ``` fences with prose around them; each block is applied to the result of the previous one;
- a whole kernel module in a fenced code block (a full rewrite): models often ignore diff
  instructions and answer with the complete file.

Either way only the parent's EVOLVE-BLOCK regions may change. The judge enforces that too
(`evaluators.static_rules`, rule "evolve-block"); checking it here turns a wasted evaluation into a
`reason` the next prompt can show the model.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap

from evaluators.rule_tables import EVOLVE_END, EVOLVE_START
from evaluators.static_rules import check_source

STATUSES = ("applied", "no_code", "search_not_found", "outside_evolve_block", "truncated", "unchanged")

# Marker lines may carry trailing spaces, and models miscount the 7 characters: accept 5-9.
_SEARCH = re.compile(r"^[ \t]*<{5,9}[ \t]*SEARCH[ \t]*$")
_DIVIDER = re.compile(r"^[ \t]*={5,9}[ \t]*$")
_REPLACE = re.compile(r"^[ \t]*>{5,9}[ \t]*REPLACE[ \t]*$")
_FENCE = re.compile(r"^([ \t]*)```[ \t]*([\w+-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
_CODE_TAGS = ("", "python", "py", "python3")


@dataclasses.dataclass(frozen=True)
class EditResult:
    """What applying one answer gave.

    status: one of STATUSES. source: the new module when status is "applied", else the parent's
    source unchanged. mode: "diff", "rewrite" or "" (no format recognised, or a truncated answer).
    edits: SEARCH/REPLACE blocks applied (1 for a rewrite), 0 when nothing was applied.
    reason: one or two sentences for the next prompt, naming the problem and the fix.
    """

    status: str
    source: str
    mode: str
    edits: int
    reason: str


@dataclasses.dataclass(frozen=True)
class _Block:
    search: list[str]
    replace: list[str]


class _Rejected(Exception):
    """Raised inside the diff path; carries the status and reason to return."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _is_marker(line: str) -> bool:
    text = line.strip()  # the same test as the judge's _outside_blocks
    return text.startswith(EVOLVE_START) or text.startswith(EVOLVE_END)


def evolve_regions(source: str) -> list[tuple[int, int]]:
    """The body of each EVOLVE-BLOCK region as (first line, last line), 1-based, markers excluded.

    An empty body gives (n + 1, n) where n is the START marker's line. Returns [] when the source
    has no markers, or unbalanced / nested ones: the judge then constrains nothing either.
    """
    regions: list[tuple[int, int]] = []
    start: int | None = None
    for n, line in enumerate(_lf(source).split("\n"), 1):
        if not _is_marker(line):
            continue
        opening = line.strip().startswith(EVOLVE_START)
        if opening == (start is not None):
            return []
        if opening:
            start = n
        else:
            regions.append((start + 1, n - 1))
            start = None
    return [] if start is not None else regions


def _parse_blocks(answer: str) -> tuple[list[_Block], int]:
    """Complete SEARCH/REPLACE blocks in order, and the number of blocks left unclosed."""
    blocks: list[_Block] = []
    unclosed = 0
    lines = answer.split("\n")
    i = 0
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not _DIVIDER.match(lines[j]) and not _SEARCH.match(lines[j]):
            j += 1
        k = j + 1
        while k < len(lines) and not _REPLACE.match(lines[k]) and not _SEARCH.match(lines[k]):
            k += 1
        if k >= len(lines) or not _DIVIDER.match(lines[j]) or not _REPLACE.match(lines[k]):
            unclosed += 1
            i = j if j < len(lines) and _SEARCH.match(lines[j]) else i + 1
            continue
        blocks.append(_Block(lines[i + 1 : j], lines[j + 1 : k]))
        i = k + 1
    return blocks, unclosed


def _indent(lines: list[str]) -> str:
    """The leading whitespace all non-blank lines share."""
    body = [line for line in lines if line.strip()]
    if not body:
        return ""
    common = textwrap.dedent("\n".join(body)).split("\n")
    return body[0][: len(body[0]) - len(common[0])]


def _loose(lines: list[str]) -> list[str]:
    """Lines compared without trailing whitespace or the indentation they all share."""
    cut = len(_indent(lines))
    return [line[cut:].rstrip() if line.strip() else "" for line in lines]


def _find(source: list[str], block: _Block, number: int) -> tuple[int, list[str]]:
    """The 0-based start of the block's unique match, and its REPLACE lines re-indented to fit."""
    first = next((line.strip() for line in block.search if line.strip()), "")
    if not first:
        raise _Rejected(
            "search_not_found",
            f"Block {number} has an empty SEARCH section; copy the exact lines to change from the kernel.",
        )
    size = len(block.search)
    windows = range(len(source) - size + 1)
    hits = [s for s in windows if source[s : s + size] == block.search]
    replace = block.replace
    if not hits:
        # Models drop trailing spaces and shift a whole snippet's indentation: accept that when unique.
        want = _loose(block.search)
        hits = [s for s in windows if _loose(source[s : s + size]) == want]
        if len(hits) == 1:
            mine, theirs = _indent(source[hits[0] : hits[0] + size]), _indent(block.search)
            replace = [
                mine + line[len(theirs) :] if line.startswith(theirs) and line.strip() else line.rstrip()
                for line in replace
            ]
    if len(hits) == 1:
        return hits[0], replace
    if not hits:
        reason = (
            f"Block {number}: the SEARCH text (first line `{first}`) does not occur in the kernel; "
            "copy the lines to replace exactly, whole lines, from the current kernel."
        )
    else:
        reason = (
            f"Block {number}: the SEARCH text (first line `{first}`) occurs {len(hits)} times; "
            "include more surrounding lines so that it matches exactly once."
        )
    raise _Rejected("search_not_found", reason)


def _check_span(
    regions: list[tuple[int, int]], start: int, old: list[str], new: list[str], number: int
) -> None:
    """Raise unless the lines the block really changes lie inside one EVOLVE-BLOCK body."""
    # Unchanged context lines at either end are not an edit: models often copy a marker line
    # into both SEARCH and REPLACE, and that must not count as touching it.
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    first = start + 1 + head  # 1-based first changed line; last < first means a pure insertion
    last = start + len(old) - tail
    added = new[head : len(new) - tail]
    if last < first and not added:
        return  # nothing changes here: the caller reports an unchanged kernel
    if any(_is_marker(line) for line in added):
        raise _Rejected(
            "outside_evolve_block",
            f"Block {number} adds or moves an EVOLVE-BLOCK marker; keep the markers as they are and "
            "edit only the lines between them.",
        )
    if not any(lo <= first and last <= hi for lo, hi in regions):
        where = f"inserts lines at line {first}" if last < first else f"changes lines {first}-{last}"
        allowed = ", ".join(f"{lo}-{hi}" for lo, hi in regions)
        raise _Rejected(
            "outside_evolve_block",
            f"Block {number} {where} (first SEARCH line `{old[0].strip() if old else ''}`), "
            f"outside the EVOLVE-BLOCK regions (lines {allowed}); edit only the code between "
            f"{EVOLVE_START} and {EVOLVE_END}.",
        )


def _apply_blocks(parent: str, blocks: list[_Block]) -> str:
    lines = parent.split("\n")
    constrained = bool(evolve_regions(parent))
    for number, block in enumerate(blocks, 1):
        start, replace = _find(lines, block, number)
        if constrained:
            # Regions are recomputed on the current text: earlier blocks may have moved lines,
            # and they cannot have moved markers (checked above).
            old = lines[start : start + len(block.search)]  # as in the kernel, not as the model typed it
            _check_span(evolve_regions("\n".join(lines)), start, old, replace, number)
        lines[start : start + len(block.search)] = replace
    return "\n".join(lines)


def _whole_module(answer: str) -> str | None:
    """The last fenced code block that is a whole kernel module, dedented; None when there is none."""
    found = None
    for match in _FENCE.finditer(answer):
        if match.group(2).lower() not in _CODE_TAGS:
            continue
        body = textwrap.dedent(match.group(3))
        if "def matmul(" in body and "@triton.jit" in body:
            found = body
    return found


def _judge_outside(source: str, parent: str) -> str | None:
    """The judge's own evolve-block message for this child, or None when it has none."""
    bad = [v for v in check_source(source, parent_source=parent) if v.rule == "evolve-block"]
    return bad[0].message if bad else None


def _same(a: str, b: str) -> bool:
    """Equal after dropping trailing spaces and blank lines (indentation still matters in Python)."""

    def norm(text: str) -> list[str]:
        return [line.rstrip() for line in text.split("\n") if line.strip()]

    return norm(a) == norm(b)


def apply_answer(
    parent_source: str, answer: str, *, truncated: bool = False, max_tokens: int | None = None
) -> EditResult:
    """Apply an LLM answer to the parent kernel module.

    `truncated` is True when the model stopped at its output limit (finish_reason "length"); then
    nothing is applied, not even complete blocks, since the cut may have removed later edits they
    depend on. `max_tokens`, when given, is named in that reason.
    """
    if truncated:
        limit = f"the {max_tokens} tokens limit" if max_tokens else "the output token limit"
        return EditResult(
            "truncated",
            parent_source,
            "",
            0,
            f"Your answer was cut off at {limit}, so nothing was applied; answer with fewer, "
            "shorter SEARCH/REPLACE blocks and no repeated code.",
        )
    parent, text = _lf(parent_source), _lf(answer)
    blocks, unclosed = _parse_blocks(text)
    if unclosed:
        return EditResult(
            "no_code",
            parent_source,
            "diff",
            0,
            f"{unclosed} SEARCH/REPLACE block(s) are incomplete; close each with the ======= line "
            "and the >>>>>>> REPLACE line.",
        )
    if blocks:
        mode = "diff"
        try:
            child = _apply_blocks(parent, blocks)
        except _Rejected as err:
            return EditResult(err.status, parent_source, mode, 0, err.reason)
        edits = len(blocks)
    else:
        module = _whole_module(text)
        if module is None:
            return EditResult(
                "no_code",
                parent_source,
                "",
                0,
                "No SEARCH/REPLACE block and no complete kernel module was found in your answer; answer "
                "with <<<<<<< SEARCH / ======= / >>>>>>> REPLACE blocks.",
            )
        mode, child, edits = "rewrite", module, 1
    # The judge's rule is the final word for both modes (it also catches what a diff's span check
    # cannot see, e.g. a rewrite that drops the markers).
    if evolve_regions(parent) and (message := _judge_outside(child, parent)):
        return EditResult(
            "outside_evolve_block",
            parent_source,
            mode,
            0,
            f"Your {mode} was refused: {message}. Keep everything outside the markers, and the markers "
            "themselves, exactly as in the kernel given.",
        )
    if _same(child, parent):
        return EditResult(
            "unchanged",
            parent_source,
            mode,
            edits,
            "Your edit left the kernel unchanged; propose a change that alters its code.",
        )
    return EditResult("applied", child, mode, edits, f"applied ({mode}, {edits} edit(s))")
