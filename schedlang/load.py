"""Reading sources and resolving imports into one flat list of declarations.

``import "PATH"`` names a file relative to the importing file, or ``std:NAME`` for a module of
the standard library (shipped as package data in ``schedlang/stdlib``). Imported declarations
come first, in import order; each module is included once even if imported twice. A declaration
in the importing file overrides one of the same name (a parameter's default, an op kind, a
``let``) or the same clause (``ranks``, ``place``, ``schedule``, ...) from an import; within one
file, declaring the same thing twice is an error. Dependency rules always accumulate.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import resources

from schedlang import syntax as S
from schedlang.parse import parse_module
from schedlang.source import Note, SchedlangError, Source, Span

STD_PREFIX = "std:"

# Clauses that a program has at most once.
SINGLETONS: dict[type, str] = {
    S.RanksDecl: "ranks", S.StagesDecl: "stages", S.MicrobatchesDecl: "microbatches",
    S.PlaceDecl: "place", S.CommDecl: "comm", S.MemLimitDecl: "mem_limit",
    S.OverlapDecl: "overlap", S.WeightsDecl: "weights", S.ScheduleDecl: "schedule",
}


@dataclass(frozen=True, slots=True)
class Item:
    """A declaration and the module it came from (0 = the main file)."""

    decl: S.Decl
    module: str


def std_names() -> list[str]:
    """Names of the standard-library modules (``std:NAME``)."""
    root = resources.files("schedlang.stdlib")
    return sorted(p.name[: -len(".sched")] for p in root.iterdir() if p.name.endswith(".sched"))


@functools.cache
def _std_text(name: str) -> str | None:
    path = resources.files("schedlang.stdlib").joinpath(f"{name}.sched")
    return path.read_text("utf-8") if path.is_file() else None


def read_source(path: str, base_dir: str | None = None, span: Span | None = None) -> Source:
    """Read a file path or a ``std:NAME``; ``span`` locates the error if it cannot be read."""
    if path.startswith(STD_PREFIX):
        name = path[len(STD_PREFIX):]
        text = _std_text(name) if name and "/" not in name and "\\" not in name else None
        if text is None:
            import difflib

            near = difflib.get_close_matches(name, std_names(), n=1)
            hint = f" (did you mean 'std:{near[0]}'?)" if near else ""
            raise SchedlangError(f"no standard module '{path}'{hint}; 'schedlang list' shows the built-ins", span)
        return Source(path, text)
    full = path if base_dir is None or os.path.isabs(path) else os.path.join(base_dir, path)
    try:
        with open(full, encoding="utf-8") as fh:
            return Source(full if base_dir else path, fh.read())
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SchedlangError(f"cannot read '{path}': {reason}", span) from None


def _key(d: S.Decl) -> tuple[str, str] | None:
    """The identity under which a declaration overrides another, or None if it accumulates."""
    if type(d) in SINGLETONS:
        return ("clause", SINGLETONS[type(d)])
    if isinstance(d, (S.ParamDecl, S.LetDecl)):
        return ("name", d.name)
    if isinstance(d, S.OpDecl):
        return ("op", d.name)
    return None


def _what(d: S.Decl) -> str:
    if isinstance(d, S.ParamDecl):
        return f"parameter '{d.name}'"
    if isinstance(d, S.LetDecl):
        return f"let '{d.name}'"
    if isinstance(d, S.OpDecl):
        return f"op kind '{d.name}'"
    return f"'{SINGLETONS[type(d)]}' clause"


def load_program_items(source: Source) -> list[Item]:
    """Parse ``source`` and its imports; return the merged declarations (see module docstring)."""
    order: list[Item] = []
    seen: set[str] = set()
    _collect(source, order, seen, stack=[])
    return _merge(order)


def _collect(source: Source, out: list[Item], seen: set[str], stack: list[str]) -> None:
    module = parse_module(source)
    base = os.path.dirname(source.name) if not source.name.startswith(STD_PREFIX) else None
    stack = stack + [source.name]
    for d in module.items:
        if isinstance(d, S.ImportDecl):
            target = read_source(d.path, base if base is not None else os.getcwd(), d.span)
            if target.name in stack:
                cycle = " -> ".join(stack[stack.index(target.name):] + [target.name])
                raise SchedlangError(f"import cycle: {cycle}", d.span)
            if target.name in seen:
                continue
            seen.add(target.name)
            _collect(target, out, seen, stack)
        else:
            out.append(Item(d, source.name))


def _merge(items: list[Item]) -> list[Item]:
    kept: dict[tuple[str, str], int] = {}
    result: list[Item | None] = []
    for it in items:
        key = _key(it.decl)
        if key is None:
            result.append(it)
            continue
        if key[0] == "name" or key[0] == "op":
            # a name is one thing: a parameter, a let or an op kind, not two of them
            for other_kind in ("name", "op"):
                other = kept.get((other_kind, key[1]))
                if other is not None and other_kind != key[0]:
                    prev = result[other]
                    assert prev is not None
                    raise SchedlangError(
                        f"'{key[1]}' is declared both as {_what(prev.decl)} and as {_what(it.decl)}",
                        it.decl.span, (Note(prev.decl.span, "first declared here"),))
        if key in kept:
            prev = result[kept[key]]
            assert prev is not None
            if prev.module == it.module:
                raise SchedlangError(f"{_what(it.decl)} declared twice", it.decl.span,
                                     (Note(prev.decl.span, "first declared here"),))
            if type(prev.decl) is not type(it.decl):
                raise SchedlangError(f"{_what(it.decl)} redeclares {_what(prev.decl)}", it.decl.span,
                                     (Note(prev.decl.span, "first declared here"),))
            result[kept[key]] = it  # the later module (the importer) wins, in the same place
            continue
        kept[key] = len(result)
        result.append(it)
    return [it for it in result if it is not None]
