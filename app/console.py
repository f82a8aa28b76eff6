"""Terminal output for the CLI: everything from data or users is printed literally.

Captions, paths, queries and error text are never interpreted as rich markup or `:emoji:` codes (a
caption holding `[/i]` once crashed every table that showed it); styles are applied as Text spans.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text

err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)  # never wrap mid-word


def out_console() -> Console:
    """A stdout console for tables (made per call, so it follows the terminal the output goes to)."""
    return Console(markup=False, emoji=False, highlight=False)


def say(*parts: str | tuple[str, str]) -> None:
    """Print to stderr: plain strings literally, (text, style) pairs styled."""
    err.print(Text.assemble(*parts))


def fail(message: str) -> typer.Exit:
    """Print `error: MESSAGE` and return the exit to raise (code 2: the input was refused)."""
    say(("error:", "red"), " ", message)
    return typer.Exit(code=2)
