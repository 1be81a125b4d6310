"""Reading sources and resolving imports into one flat list of declarations.

``import "PATH"`` names a file relative to the importing file, or ``std:NAME`` for a module of
the standard library (shipped as package data in ``schedlang/stdlib``).

Imports are confined: a path must name a regular ``.sched`` file that lies, once ``..`` and
symbolic links are resolved, under the import root (by default the folder of the program being
compiled; the current folder for a program given as text; ``--import-root DIR`` or
``import_root=`` widens or narrows it), and a standard module imports only ``std:`` names. A
refused import is refused before the file is opened, and an imported file that does not start
like a schedlang program is reported without quoting it. Every file read (the program too) must
be a regular file no larger than the ``max_source_bytes`` limit. Imported declarations
come first, in import order; each module is included once even if imported twice. A declaration
in the importing file overrides one of the same name (a parameter's default, an op kind, a
``let``) or the same clause (``ranks``, ``place``, ``schedule``, ...) from an import; within one
file, declaring the same thing twice is an error. Dependency rules always accumulate.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import stat
from dataclasses import dataclass
from importlib import resources

from schedlang import limits
from schedlang import syntax as S
from schedlang.parse import KEYWORDS, parse_module
from schedlang.source import Note, SchedlangError, Source, Span

STD_PREFIX = "std:"

# Clauses that a program has at most once.
SINGLETONS: dict[type, str] = {
    S.RanksDecl: "ranks", S.StagesDecl: "stages", S.MicrobatchesDecl: "microbatches",
    S.PlaceDecl: "place", S.CommDecl: "comm", S.MemLimitDecl: "mem_limit", S.AllreduceDecl: "allreduce",
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
    """Read a file path or a ``std:NAME``; ``span`` locates the error if it cannot be read.

    A file must be a regular file (not a FIFO or a device) within the ``max_source_bytes``
    limit; it is checked on the open descriptor before anything is read."""
    if path.startswith(STD_PREFIX):
        return _read_std(path, span)
    if "\0" in path:
        raise SchedlangError("a file name cannot contain a NUL character", span)
    full = path if base_dir is None or os.path.isabs(path) else os.path.join(base_dir, path)
    return Source(full if base_dir else path, _read_regular(full, path, span), origin="file")


def read_text_file(path: str, span: Span | None = None) -> Source:
    """A text file any command reads (a program, a params file, a CSV, a stream file): a regular
    file within the ``max_source_bytes`` limit, UTF-8 (a leading byte-order mark is dropped)."""
    if "\0" in path:
        raise SchedlangError("a file name cannot contain a NUL character", span)
    return Source(path, _read_regular(path, path, span), origin="file")


def _read_std(path: str, span: Span | None) -> Source:
    name = path[len(STD_PREFIX):]
    text = _std_text(name) if re.fullmatch(r"[A-Za-z0-9_.-]+", name) and ".." not in name else None
    if text is None:
        near = difflib.get_close_matches(name, std_names(), n=1)
        hint = f" (did you mean 'std:{near[0]}'?)" if near else ""
        raise SchedlangError(f"no standard module '{path}'{hint}; 'schedlang list' shows the built-ins", span)
    return Source(path, text)


def _read_regular(full: str, shown: str, span: Span | None, *, follow: bool = True) -> str:
    """The text of a regular file, refusing FIFOs, devices, directories and oversized files.
    ``follow=False`` refuses a symbolic link (an import opens the path it resolved and checked,
    so a link put in its place since is not followed out of the import root)."""
    cap = limits.current().max_source_bytes
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(full, flags)  # non-blocking: opening a FIFO must not wait for a writer
    except OSError as exc:
        raise SchedlangError(f"cannot read '{shown}': {exc.strerror}", span) from None
    at = span or Span(Source(shown, ""), 1, 1)  # a file named on the command line: the file itself
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SchedlangError(f"cannot read '{shown}': not a regular file", at)
        if st.st_size > cap:
            raise limits.exceeded(f"cannot read '{shown}': {st.st_size:,} bytes is too large",
                                  "max_source_bytes", at)
        chunks, size = [], 0
        while size <= cap:
            chunk = os.read(fd, cap + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SchedlangError(f"cannot read '{shown}': {exc.strerror}", span) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > cap:  # it grew after the check
        raise limits.exceeded(f"cannot read '{shown}': it is too large", "max_source_bytes",
                              span or Span(Source(shown, ""), 1, 1))
    return decode_text(data, shown, span)


def decode_text(data: bytes, shown: str, span: Span | None = None) -> str:
    """UTF-8 text (a leading byte-order mark is dropped). The error is located at the bad byte
    (in ``shown``, or at ``span`` for an import) and names its offset, not the bytes."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if span is None:  # line and column of the bad byte, without quoting the line
            line = data.count(b"\n", 0, exc.start) + 1
            col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            span = Span(Source(shown, ""), line, col)
        raise SchedlangError(f"cannot read '{shown}': not UTF-8 text (bad byte at offset {exc.start})", span) from None


def _resolve_import(path: str, importer: Source, root: str, span: Span | None) -> tuple[str, str]:
    """Check an import path against the rules (module docstring) without opening the file;
    return the name to show and the resolved path (the module's identity, for cycles)."""
    if "\0" in path:
        raise SchedlangError("an import path cannot contain a NUL character", span)
    if importer.name.startswith(STD_PREFIX):
        raise SchedlangError(f"a standard module imports only std: modules, not '{path}'", span)
    if not path.endswith(".sched"):
        raise SchedlangError(f"cannot import '{path}': only .sched files can be imported", span)
    base = os.path.dirname(importer.name)  # relative to the importer ('' for text: the current folder)
    shown = os.path.normpath(os.path.join(base, path))
    real = os.path.realpath(shown)
    if not _within(real, root):
        raise SchedlangError(f"cannot import '{path}': it lies outside the import root (the program's "
                             "folder; --import-root DIR or import_root= widens it)", span)
    return shown, real


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def default_root(source: Source) -> str:
    """The import root of a program: its file's folder, or the current folder for text."""
    if source.origin == "file" and not source.name.startswith(STD_PREFIX):
        return os.path.dirname(os.path.abspath(source.name))
    return os.getcwd()


_WORD = re.compile(r"(?:\s|#[^\n]*)*([A-Za-z_][A-Za-z0-9_]*)?")


def _looks_like_program(source: Source) -> tuple[bool, str | None]:
    """Whether an imported file starts like a schedlang program (with a keyword, or is empty of
    declarations), and the keyword a misspelled first word is close to."""
    m = _WORD.match(source.text)
    end = m.end() if m else 0
    if m and m.group(1) in KEYWORDS:
        return True, None
    if end >= len(source.text) and not (m and m.group(1)):
        return True, None  # only blanks and comments
    near = difflib.get_close_matches(m.group(1), sorted(KEYWORDS), n=1, cutoff=0.75) if m and m.group(1) else []
    return False, near[0] if near else None


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


def load_program_items(source: Source, import_root: str | None = None) -> list[Item]:
    """Parse ``source`` and its imports; return the merged declarations (see module docstring).

    ``import_root`` is the folder imports must lie under (default: :func:`default_root`)."""
    root = os.path.realpath(import_root if import_root is not None else default_root(source))
    order: list[Item] = []
    seen: set[str] = set()
    _collect(source, _identity(source), root, order, seen, stack=[])
    return _merge(order)


def _identity(source: Source) -> str:
    if source.origin == "file" and not source.name.startswith(STD_PREFIX):
        return os.path.realpath(source.name)
    return source.name


def _collect(source: Source, ident: str, root: str, out: list[Item], seen: set[str],
             stack: list[tuple[str, str]], imported_at: Span | None = None) -> None:
    module = parse_module(source) if not stack else _parse_imported(source, imported_at)
    stack = stack + [(ident, source.name)]
    for d in module.items:
        if isinstance(d, S.ImportDecl):
            if d.path.startswith(STD_PREFIX):
                target, key = _read_std(d.path, d.span), d.path
            else:
                shown, key = _resolve_import(d.path, source, root, d.span)
                target = None
            idents = [k for k, _ in stack]
            if key in idents:
                cycle = " -> ".join([n for _, n in stack[idents.index(key):]] + [stack[idents.index(key)][1]])
                raise SchedlangError(f"import cycle: {cycle}", d.span)
            if key in seen:
                continue
            seen.add(key)
            if target is None:
                target = Source(shown, _read_regular(key, d.path, d.span, follow=False), origin="file")
            _collect(target, key, root, out, seen, stack, d.span)
        else:
            out.append(Item(d, source.name))


def _parse_imported(source: Source, imported_at: Span | None) -> S.Module:
    """Parse an imported file; one that does not start like a program is not quoted back."""
    ok, near = _looks_like_program(source)
    if not ok:
        hint = f" (did you mean '{near}'?)" if near else ""
        raise SchedlangError("not a schedlang program: an imported file must start with a declaration "
                             f"such as 'import', 'param' or 'op'{hint}", Span(Source(source.name, ""), 1, 1),
                             (Note(imported_at, "imported here"),))
    return parse_module(source)


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
