"""Stream files as a user hands them over: read, parse and check them with located errors.

``schedlang streams FILE`` is :func:`check_stream_file`: FILE is an instruction-stream file (the
text or JSON form of :mod:`schedlang.isa`) or a PyTorch schedule CSV (``FILE.csv``, read by
:func:`schedlang.export.torch_csv_streams`). The streams go through the one checker,
:func:`schedlang.isa_check.check_streams`, and every problem comes back as a
:class:`~schedlang.source.SchedlangError` located in the file: a text stream's error points at the
instruction's line, a CSV's at the cell, a JSON stream's names the JSON path of the bad value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schedlang import isa
from schedlang.isa_check import RECVS, SENDS, StreamError, check_streams
from schedlang.load import read_text_file
from schedlang.source import SchedlangError, Source, Span

Locate = Callable[[StreamError], Span]

@dataclass(frozen=True, slots=True)
class _TextLines:
    """Where each instruction of a text stream file stands, to locate checker errors."""

    header: int
    ranks: dict[int, int]  # rank section -> its 'rank N' line
    ends: dict[int, int]  # rank section -> its last instruction line
    instrs: dict[tuple[int, int, int | None], tuple[int, int]]  # (rank, index, part) -> (line, col)


def _text_lines(text: str) -> _TextLines:
    header, rank, index, part = 1, -1, -1, None
    ranks: dict[int, int] = {}
    ends: dict[int, int] = {}
    instrs: dict[tuple[int, int, int | None], tuple[int, int]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head, col = line.split()[0], len(raw) - len(raw.lstrip()) + 1
        if head == "pipeline":
            header = lineno
        elif head == "rank":
            rank, index, part = rank + 1, -1, None
            ranks[rank] = ends[rank] = lineno
        elif head in ("schedlang-isa", "meta") or rank < 0:
            continue
        elif head == "END":
            part = None
            ends[rank] = lineno
        elif part is not None:
            instrs[(rank, index, part)] = (lineno, col)
            part += 1
        else:
            index += 1
            instrs[(rank, index, None)] = (lineno, col)
            part = 0 if head == "BATCH" else None
            ends[rank] = lineno
    return _TextLines(header, ranks, ends, instrs)


def _locate_text(source: Source) -> Locate:
    lines = _text_lines(source.text)

    def locate(err: StreamError) -> Span:
        if err.rank is None or err.rank not in lines.ranks:
            return Span(source, lines.header, 1)
        if err.index is None:
            return Span(source, lines.ranks[err.rank], 1)
        at = lines.instrs.get((err.rank, err.index, err.part)) or lines.instrs.get((err.rank, err.index, None))
        if at is None:  # the end of the rank's stream
            return Span(source, lines.ends[err.rank], 1)
        return Span(source, at[0], at[1])

    return locate


def _locate_json(source: Source) -> Locate:
    def locate(err: StreamError) -> Span:
        return Span(source, 1, 1)

    return locate


def _json_path(err: StreamError) -> str:
    if err.rank is None:
        return ""
    if err.index is None:
        return f"ranks[{err.rank}]: "
    part = "" if err.part is None else f".parts[{err.part}]"
    return f"ranks[{err.rank}].instrs[{err.index}]{part}: "


def load_stream_file(path: str) -> tuple[isa.Streams, Source, Locate, str]:
    """Read and parse a stream file: (streams, its source, a locator for checker errors, its kind:
    ``text``, ``json``, ``csv`` or ``csv-compute-only``)."""
    source = read_text_file(path)
    if path.endswith(".csv"):
        from schedlang.export import torch_csv_streams

        streams, spans, kind = torch_csv_streams(source.text, path)

        def locate(err: StreamError) -> Span:
            key = (err.rank, err.index)
            return spans.get(key) or spans.get((err.rank, None)) or Span(source, 1, 1)

        return streams, source, locate, kind
    is_json = source.text.lstrip().startswith("{")
    try:
        streams = isa.from_json(source.text) if is_json else isa.parse_text(source.text)
    except isa.IsaError as exc:
        message = str(exc) if exc.line is None else str(exc).removeprefix(f"line {exc.line}: ")
        raise SchedlangError(message, Span(source, exc.line or 1, 1)) from None
    if is_json:
        return streams, source, _locate_json(source), "json"
    return streams, source, _locate_text(source), "text"


def check_stream_file(path: str, sends: str = "buffered", recvs: str | None = None) -> str:
    """Load a stream file and run the one stream checker on it; return a one-line summary, or
    raise a located :class:`SchedlangError`. ``recvs`` defaults to ``blocking`` for stream files
    (the ISA's semantics) and ``posted`` for a PyTorch CSV (as its runtime executes it)."""
    if sends not in SENDS or (recvs is not None and recvs not in RECVS):
        raise SchedlangError(f"unknown semantics sends={sends!r} recvs={recvs!r} (sends: {', '.join(SENDS)}; "
                             f"recvs: {', '.join(RECVS)})")
    streams, _source, locate, kind = load_stream_file(path)
    recvs = recvs or ("posted" if kind.startswith("csv") else "blocking")
    try:
        check_streams(streams, sends=sends, recvs=recvs, opt_step=not kind.startswith("csv"))
    except StreamError as exc:
        prefix = _json_path(exc) if kind == "json" else ""
        raise SchedlangError(prefix + exc.message, locate(exc)) from None
    n = sum(len(rs.instrs) for rs in streams.ranks)
    how = f"{sends} sends" + (", posted receives" if recvs == "posted" else "")
    what = " (communication added as PyTorch adds it to a compute-only schedule)" if kind == "csv-compute-only" else ""
    return f"{path}: ok: {streams.num_ranks} ranks, {n} instructions, no deadlock ({how}){what}"


__all__ = ["check_stream_file", "load_stream_file"]
