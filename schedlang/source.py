"""Source text, spans and located errors.

Every user-facing error is a :class:`SchedlangError` carrying a :class:`Span`; it renders as
``file:line:col: error: message`` followed by the source line and a caret under the spot.
Internal bugs stay plain assertions and are never dressed up as user errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Source:
    """A named piece of text: a file, a ``std:`` module, or a command-line argument.

    ``origin`` is ``"file"`` for text read from a file (its imports resolve next to it) and
    ``"text"`` otherwise."""

    name: str
    text: str
    origin: str = field(default="text", compare=False)

    def line(self, lineno: int) -> str:
        lines = self.text.splitlines()
        return lines[lineno - 1] if 1 <= lineno <= len(lines) else ""


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source: 1-based line and column of its start, and its end."""

    source: Source = field(repr=False)
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    @property
    def where(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Note:
    """A secondary location attached to an error (e.g. the first of two duplicate items)."""

    span: Span | None
    message: str


class SchedlangError(Exception):
    """A located user error. ``str(err)`` is the full rendered diagnostic."""

    def __init__(self, message: str, span: Span | None = None, notes: tuple[Note, ...] = ()) -> None:
        self.message = message
        self.span = span
        self.notes = notes
        super().__init__(message)

    @property
    def location(self) -> tuple[int, int] | None:
        """(line, col) of the error, for tests."""
        return (self.span.line, self.span.col) if self.span else None

    def render(self, severity: str = "error") -> str:
        parts = [_render_one(severity, self.message, self.span)]
        parts.extend(_render_one("note", n.message, n.span) for n in self.notes)
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()


def _render_one(severity: str, message: str, span: Span | None) -> str:
    if span is None:
        return f"schedlang: {severity}: {message}"
    head = f"{span.where}: {severity}: {message}"
    text = span.source.line(span.line)
    if not text:
        return head
    width = 1
    if span.end_line == span.line and span.end_col > span.col:
        width = span.end_col - span.col
    text, col = text.expandtabs(1), span.col
    if len(text) > QUOTE_WIDTH:  # a window around the spot, not a megabyte of line
        start = max(0, min(col - 1 - QUOTE_WIDTH // 2, len(text) - QUOTE_WIDTH))
        window = text[start:start + QUOTE_WIDTH]
        prefix = "..." if start > 0 else ""
        suffix = "..." if start + QUOTE_WIDTH < len(text) else ""
        text, col = prefix + window + suffix, col - start + len(prefix)
        width = max(1, min(width, QUOTE_WIDTH - (col - 1 - len(prefix))))
    caret = " " * (col - 1) + "^" + "~" * (width - 1)
    return f"{head}\n  {text}\n  {caret}"


QUOTE_WIDTH = 160  # longest part of a source line an error quotes


def cli_source(text: str, what: str = "<command line>") -> Source:
    """A pseudo-source for values given on the command line (``--set p=8``)."""
    return Source(what, text)
