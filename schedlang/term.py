"""Terminal output: aligned tables, with colour only when the stream is a terminal.

Colour follows the usual conventions: on when the stream is a TTY, off when it is piped or
redirected, off whenever ``NO_COLOR`` is set (https://no-color.org) or ``TERM=dumb``, and on when
``FORCE_COLOR`` is set (for pagers such as ``less -R``). Plain output has no escape codes at all,
so it can be parsed or diffed.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "cyan": "36"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def use_colour(stream: TextIO) -> bool:
    """Whether to colour output written to ``stream`` (see the module docstring)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, *styles: str, enabled: bool = True) -> str:
    """``text`` wrapped in ANSI codes for ``styles`` (names from :data:`CODES`), or unchanged."""
    if not enabled or not styles:
        return text
    return "\x1b[" + ";".join(CODES[s] for s in styles) + "m" + text + "\x1b[0m"


def visible_len(text: str) -> int:
    """Length of ``text`` on screen (escape codes do not count)."""
    return len(_ANSI.sub("", text))


def fmt_num(x: Any, digits: int = 6) -> str:
    """A compact number: ints as ints, floats with ``digits`` significant digits."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) or float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.{digits}g}"


@dataclass
class Column:
    """A table column: header, alignment (``<`` or ``>``) and a cell formatter."""

    header: str
    align: str = ">"
    fmt: Callable[[Any], str] = fmt_num


@dataclass
class Table:
    """Rows of cells under :class:`Column` headers; cells may be styled per row and column."""

    columns: Sequence[Column]
    rows: list[list[Any]] = field(default_factory=list)
    styles: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict)

    def add(self, *cells: Any) -> None:
        assert len(cells) == len(self.columns), "one cell per column"
        self.rows.append(list(cells))

    def highlight(self, row: int, col: int, *styles: str) -> None:
        self.styles[(row, col)] = styles

    def _style(self, row: int, col: int) -> tuple[str, ...]:
        return self.styles.get((row, col), ())

    def render(self, colour: bool = False) -> str:
        """The table as text: a header, a rule, and one line per row, columns aligned."""
        texts = [[c.fmt(v) for c, v in zip(self.columns, row, strict=True)] for row in self.rows]
        widths = [max([len(c.header)] + [len(t[i]) for t in texts]) for i, c in enumerate(self.columns)]

        def line(cells: Sequence[str], styles: Callable[[int], tuple[str, ...]]) -> str:
            parts = []
            for i, (c, text) in enumerate(zip(self.columns, cells, strict=True)):
                padded = text.ljust(widths[i]) if c.align == "<" else text.rjust(widths[i])
                parts.append(paint(padded, *styles(i), enabled=colour))
            return "  ".join(parts).rstrip()

        def header_style(_i: int) -> tuple[str, ...]:
            return ("bold",)

        out = [line([c.header for c in self.columns], header_style)]
        out.append(paint("  ".join("-" * w for w in widths), "dim", enabled=colour))
        for r, cells in enumerate(texts):
            out.append(line(cells, functools.partial(self._style, r)))
        return "\n".join(out) + "\n"
