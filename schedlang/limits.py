"""Work limits: how big a program, a value or a loop may grow before schedlang refuses it.

A typo such as ``microbatches 88888888``, a ``**`` tower or a hostile input must give a quick
located error, never exhaust the machine. Each limit has a name; an error that hits one names it
and says how to raise it (``--limit NAME=N`` on the command line, ``limits={"NAME": N}`` in the
API). The limits in force live in a context variable, so every stage reads the same ones without
threading them through each call; :func:`using` sets them for a block.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from schedlang.source import SchedlangError, Span, cli_source


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force (defaults suit every program in the standard library many times over)."""

    #: largest integer a program may compute, in bits of magnitude (2**63 - 1 fits)
    max_int_bits: int = 63
    #: longest list ``range()`` may build
    max_list_len: int = 1_000_000
    #: loop iterations a ``schedule { ... }`` block may run, all loops together
    max_loop_steps: int = 10_000_000
    #: ops a program may have (stages x microbatches x op kinds), checked before any is built
    max_ops: int = 1_000_000
    #: dependency edges a program may have
    max_deps: int = 5_000_000
    #: nesting depth of expressions and blocks (each operator, call, bracket or block is a level)
    max_depth: int = 200
    #: size of one source file, params file or command-line value, in bytes
    max_source_bytes: int = 2 << 20

    def replace(self, **kw: int) -> Limits:
        return dataclasses.replace(self, **kw)


NAMES = tuple(f.name for f in dataclasses.fields(Limits))
_current: contextvars.ContextVar[Limits] = contextvars.ContextVar("schedlang_limits", default=Limits())  # noqa: B039 - frozen


def current() -> Limits:
    """The limits in force."""
    return _current.get()


@contextlib.contextmanager
def using(limits: Limits | Mapping[str, int] | None) -> Iterator[Limits]:
    """Run a block under ``limits`` (a :class:`Limits`, or a mapping of names to raise or lower on
    top of the limits in force; None keeps them)."""
    if limits is None:
        yield current()
        return
    value = limits if isinstance(limits, Limits) else make(limits)
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)


def make(overrides: Mapping[str, int], base: Limits | None = None) -> Limits:
    """``base`` (default: the limits in force) with some limits changed; unknown names and values
    below 1 are errors."""
    kw: dict[str, int] = {}
    for name, value in overrides.items():
        if name not in NAMES:
            raise SchedlangError(f"unknown limit '{name}' (limits: {', '.join(NAMES)})")
        if type(value) is not int or value < 1:
            raise SchedlangError(f"limit {name} must be a positive int, got {value!r}")
        kw[name] = value
    return (base or current()).replace(**kw)


def parse_limit(text: str) -> tuple[str, int]:
    """``NAME=N`` (``--limit max_ops=5000000``); N may use ``_`` separators."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip().replace("_", "")
    src = cli_source(text, "<--limit>")
    if not sep or name not in NAMES:
        raise SchedlangError(f"expected NAME=N with NAME one of {', '.join(NAMES)}, got {text!r}", Span(src, 1, 1))
    if not value.isdigit() or len(value) > 18 or int(value) < 1:
        raise SchedlangError(f"limit {name} must be a positive integer below 10**18, got {value!r}",
                             Span(src, 1, len(name) + 2))
    return name, int(value)


def limit_arg(text: str) -> tuple[str, int]:
    """An argparse ``type=`` for ``--limit NAME=N``."""
    try:
        return parse_limit(text)
    except SchedlangError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def how_to_raise(name: str) -> str:
    """The tail of an error message: which limit was hit and how to raise it."""
    return f"limit {name}={getattr(current(), name):,}; raise it with --limit {name}=N"


def exceeded(message: str, name: str, span: Span | None) -> SchedlangError:
    """A located error for a limit that was hit."""
    return SchedlangError(f"{message} ({how_to_raise(name)})", span)


# ------------------------------------------------------------------ argparse validators
# Option values checked where they are parsed, so a bad one never reaches the work (or a worker).


def positive_int(text: str) -> int:
    """An argparse ``type=``: an int >= 1."""
    return _ranged(text, int, 1, "a positive integer")


def nonneg_int(text: str) -> int:
    """An argparse ``type=``: an int >= 0."""
    return _ranged(text, int, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """An argparse ``type=``: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return v


def _ranged(text: str, conv: type[int], lo: int, what: str) -> int:
    s = text.strip()
    if not s.lstrip("+-").isdigit() or len(s) > 18:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    v = conv(s)
    if v < lo:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


MAX_PICTURE_WIDTH = 20_000


def picture_width(text: str) -> int:
    """An argparse ``type=``: a picture width in pixels, 200 to 20000."""
    s = text.strip()
    v = int(s) if s.isdigit() and len(s) <= 18 else -1
    if not 200 <= v <= MAX_PICTURE_WIDTH:
        raise argparse.ArgumentTypeError(f"expected a width from 200 to {MAX_PICTURE_WIDTH} pixels, got {text!r}")
    return v
