"""The rich consoles `evolve` prints through: colour and the terminal's width on a terminal; plain,
uncoloured lines that never wrap when piped (tests, CI and scripts read them with grep and split)."""

from __future__ import annotations

import io
import sys
from typing import IO

from rich.console import Console, RenderableType
from rich.table import Table

# Wide enough that no table row or note wraps when piped: a line is one row, whatever its length.
PIPE_WIDTH = 1000


def make_console(file: IO[str] | None = None, tty: bool | None = None) -> Console:
    """A console on `file` (default: stdout): on a terminal, colour at the terminal's width; otherwise
    plain text PIPE_WIDTH wide. Markup, emoji codes and highlighting are off: text from the store
    (feedback, sources, notes) is printed as it is, "[...]" and ":name:" included."""
    file = file if file is not None else sys.stdout
    tty = file.isatty() if tty is None else tty
    options = dict(file=file, markup=False, emoji=False, highlight=False)
    if tty:
        return Console(**options, force_terminal=True)
    return Console(**options, width=PIPE_WIDTH, color_system=None, force_terminal=False, soft_wrap=False)


def to_text(*renderables: RenderableType) -> str:
    """Render as plain text, one renderable after another, trailing spaces removed (as piped)."""
    buffer = io.StringIO()
    console = make_console(buffer, tty=False)
    for r in renderables:
        console.print(r)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def plain_table(*columns: tuple[str, str], wrap: tuple[str, ...] = ()) -> Table:
    """A table without borders or title, one space between columns and one header line, so that a
    row's cells are its words (`line.split()`); `columns`: (header, "left" | "right"). Only the columns
    named in `wrap` may wrap, and only on a terminal narrower than the table (piped, nothing wraps)."""
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False, header_style="bold")
    for header, justify in columns:
        wraps = header in wrap
        table.add_column(header, justify=justify, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis")  # type: ignore[arg-type]
    return table


def print_parts(parts: list[RenderableType], soft_wrap: bool = False, console: Console | None = None) -> None:
    """Print renderables on `console` (default: make_console() on stdout): rich's rendering on a
    terminal (`soft_wrap`: long lines left to the terminal to wrap, for source text); piped, to_text's
    plain lines (no trailing spaces, nothing wrapped)."""
    console = console if console is not None else make_console()
    if console.is_terminal:
        for part in parts:
            console.print(part, soft_wrap=soft_wrap)
    else:
        print(to_text(*parts), file=console.file)
