"""The plain values that move between the controller, proposers, the pool and the store."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import tokenize
from typing import Protocol


def normalised_hash(source: str) -> str:
    """Hash of the source with comments, blank lines and trailing spaces removed.

    Two candidates that differ only in comments or spacing are the same kernel: the
    population keeps one. Falls back to the raw text when it does not tokenize.
    """
    try:
        tokens = [
            (tok.type, tok.string)
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT)
        ]
        text = repr(tokens)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        text = "\n".join(line.rstrip() for line in source.splitlines() if line.strip())
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Proposal:
    """A new kernel module a proposer wrote, before it has an id."""

    source: str
    parent_ids: tuple[int, ...]
    proposer: str  # "mutator", later "llm:<model>"
    note: str = ""  # what was changed, e.g. "tiles 128x128x64 -> 128x256x64 for M>=4096"
    model: str = ""  # LLM model name, empty for the mutator
    template: str = ""  # the prompt template id (an LLM) or the transformation family (the mutator)
    # normalised_hash(source) when the proposer computed it already (the mutator does, to skip its own
    # duplicates); "": the store computes it. Tokenizing a 4 KB module costs ~7 ms: once is enough.
    source_hash: str = ""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A proposal with its identity in a run."""

    id: int
    source: str
    source_hash: str
    parent_ids: tuple[int, ...]
    island: int
    generation: int
    proposer: str
    note: str = ""
    model: str = ""
    template: str = ""


@dataclasses.dataclass(frozen=True)
class Parent:
    """What a proposer sees of a selected parent."""

    id: int
    source: str
    fitness: float
    backend: str
    feedback: str
    niche: tuple = ()
    source_hash: str = ""  # its normalised_hash, as the store holds it ("": not given)


@dataclasses.dataclass(frozen=True)
class ProposalContext:
    """Everything else a proposer may use; plain data so it crosses process boundaries."""

    task: dict  # evaluators.Task.to_dict()
    island: int
    generation: int
    seed: int  # proposers draw randomness only from this, so a run repeats under --seed
    count: int = 1  # how many proposals are wanted
    family: str = ""  # the transformation family to try first (a bandit arm; "" = the proposer's own draw)

    def rng(self) -> random.Random:
        return random.Random(self.seed)


class Proposer(Protocol):
    """Anything that writes kernel modules: the offline mutator now, an LLM later."""

    name: str

    def propose(self, parents: list[Parent], context: ProposalContext) -> list[Proposal]: ...
