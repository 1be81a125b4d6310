"""The Python API: the same capabilities as the command line, as plain functions.

Typical use::

    import schedlang
    prog = schedlang.compile("std:1f1b", p=4, m=8)        # parse, check, lower, schedule, verify
    sim = schedlang.simulate(prog)
    print(sim.bubble_rate, sim.makespan, [r.peak_memory for r in sim.ranks])
    print(schedlang.orders(prog)[0])                       # ['F[0,0]', 'F[0,1]', ...]

Parameters are keyword arguments (``p=4``) or a mapping (``params={"p": 4}``); overriding a
parameter the program does not declare is an error. ``scheduler="list:priority=BFW"`` swaps the
program's schedule clause for a named scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from schedlang import syntax as S
from schedlang.check import check_items
from schedlang.evaluate import compile_expr
from schedlang.ir import Orders, Program, SchedulerCall, Value, format_slots
from schedlang.load import Item, load_program_items, read_source
from schedlang.lower import lower
from schedlang.parse import parse_expr
from schedlang.passes import DEFAULT_PIPELINE, run_passes
from schedlang.simulate import Simulation
from schedlang.simulate import simulate as _simulate
from schedlang.source import SchedlangError, Source, Span, cli_source
from schedlang.verify import verify


def _to_value(v: Any, name: str) -> Value:
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return tuple(_to_value(x, name) for x in v)
    raise SchedlangError(f"parameter '{name}': unsupported Python value {v!r} (use int, float, bool, str or a list)")


def parse_value(text: str, what: str = "<command line>") -> Value:
    """Parse a literal value given as text (``8``, ``1.5``, ``[1, 2]``, ``true``, ``"span"``)."""
    src = cli_source(text, what)
    expr = parse_expr(src)
    try:
        return compile_expr(expr)({"inf": float("inf")})  # type: ignore[no-any-return]
    except SchedlangError as exc:
        raise SchedlangError(f"{text!r} is not a literal value: {exc.message}", Span(src, 1, 1)) from None


def parse_assignment(text: str) -> tuple[str, Value]:
    """``NAME=VALUE`` from the command line (``--set p=8``)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    src = cli_source(text)
    if not sep or not name.isidentifier():
        raise SchedlangError(f"expected NAME=VALUE, got {text!r}", Span(src, 1, 1))
    try:
        return name, parse_value(value.strip(), "<command line>")
    except SchedlangError as exc:
        raise SchedlangError(f"--set {name}: {exc.message}", Span(src, 1, len(name) + 2)) from None


def read_params_file(path: str) -> list[tuple[str, Value, Span]]:
    """Parameter overrides from a file: one ``NAME=VALUE`` per line, ``#`` comments, blank lines.

    This is what ``schedlang profile`` writes and ``--params FILE`` reads. Returns
    ``(name, value, span)`` in file order; a later line for the same name wins.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SchedlangError(f"cannot read '{path}': {exc.strerror}") from None
    src = Source(path, text)
    out: list[tuple[str, Value, Span]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        col = len(line) - len(line.lstrip()) + 1
        name, sep, value = line.strip().partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise SchedlangError(f"expected NAME=VALUE, got {line.strip()!r}", Span(src, lineno, col))
        span = Span(src, lineno, col, lineno, col + len(name))
        try:
            out.append((name, parse_value(value.strip(), path), span))
        except SchedlangError as exc:
            raise SchedlangError(f"{name}: {exc.message}",
                                 Span(src, lineno, col + line.strip().index("=") + 1)) from None
    return out


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def parse_scheduler_spec(spec: str) -> SchedulerCall:
    """``NAME[:ARG=VALUE,...]`` (``--scheduler``). A bare word value is a string (``objective=span``)."""
    name, _, rest = spec.partition(":")
    src = cli_source(spec, "<--scheduler>")
    if not name:
        raise SchedlangError("--scheduler needs a name", Span(src, 1, 1))
    args: list[tuple[str, Value]] = []
    spans: list[Span | None] = []
    col = len(name) + 2
    for part in _split_top(rest):
        key, sep, val = part.partition("=")
        span = Span(src, 1, col, 1, col + len(part))
        if not sep or not key.strip().isidentifier():
            raise SchedlangError(f"expected ARG=VALUE, got {part!r}", span)
        v = val.strip()
        value: Value = v if v.isidentifier() and v not in ("true", "false", "inf") else parse_value(v, "<--scheduler>")
        args.append((key.strip(), value))
        spans.append(span)
        col += len(part) + 1
    return SchedulerCall(name.strip(), tuple(args), Span(src, 1, 1, 1, len(name) + 1), tuple(spans))


def _declared_params(items: list[Item]) -> dict[str, S.ParamDecl]:
    return {it.decl.name: it.decl for it in items if isinstance(it.decl, S.ParamDecl)}


def load_items(path: str) -> tuple[Source, list[Item]]:
    source = read_source(path)
    return source, load_program_items(source)


def lower_source(source: Source, params: Mapping[str, Any] | None = None,
                 param_spans: Mapping[str, Span] | None = None) -> Program:
    """Parse, check and lower one source (with its imports) under parameter overrides."""
    items = load_program_items(source)
    check_items(items)
    declared = _declared_params(items)
    overrides: dict[str, Value] = {}
    for name, value in (params or {}).items():
        if name not in declared:
            known = ", ".join(declared) or "none"
            span = (param_spans or {}).get(name)
            raise SchedlangError(f"'{source.name}' has no parameter '{name}' (parameters: {known})", span)
        overrides[name] = _to_value(value, name)
    return lower(items, source.name, overrides)


def load(path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> Program:
    """Parse, check and lower a file or ``std:NAME``; the result is not scheduled yet if it names
    a scheduler (run :func:`schedule` or use :func:`compile`)."""
    return lower_source(read_source(path), {**(params or {}), **kw})


def loads(text: str, name: str = "<string>", params: Mapping[str, Any] | None = None, **kw: Any) -> Program:
    """Like :func:`load`, from source text."""
    return lower_source(Source(name, text), {**(params or {}), **kw})


def with_scheduler(program: Program, scheduler: str | SchedulerCall) -> Program:
    """Replace the program's schedule clause with a named scheduler (``NAME[:ARG=VALUE,...]``)."""
    call = parse_scheduler_spec(scheduler) if isinstance(scheduler, str) else scheduler
    return replace(program, schedule=call)


def schedule(program: Program, passes: Sequence[str] = DEFAULT_PIPELINE, *, verify_each: bool = False) -> Program:
    """Run the passes (by default: the program's scheduler) and verify the result."""
    out = run_passes(program, passes, verify_each=verify_each)
    verify(out)
    return out


def compile(path: str, params: Mapping[str, Any] | None = None, *, scheduler: str | None = None,
            passes: Sequence[str] = DEFAULT_PIPELINE, **kw: Any) -> Program:  # noqa: A001 - the verb users expect
    """Load, schedule and verify: the result has explicit, valid orders."""
    program = load(path, params, **kw)
    if scheduler is not None:
        program = with_scheduler(program, scheduler)
    return schedule(program, passes)


def simulate(program: Program) -> Simulation:
    """Simulate a scheduled program (see :mod:`schedlang.simulate`)."""
    if not isinstance(program.schedule, Orders):
        program = schedule(program)
    return _simulate(program)


def orders(program: Program) -> dict[int, list[str]]:
    """Per-rank op orders as labels (``'F[0,3]'``; overlapped ops joined by ``&``)."""
    return {r: format_slots(program, slots).split() for r, slots in enumerate(program.orders.ranks)}


def run(program: Program, model: str = "schedlang.runtime.models:tiny_gpt",
        split: str | Sequence[str] | None = None, **options: Any) -> Any:
    """Train ``model`` (``MODULE:FACTORY`` or ``path/to/file.py:FACTORY``, split at ``split``)
    with the program's schedule on one process per rank, as ``schedlang run`` does.

    Options: ``steps``, ``nproc``, ``launcher`` (``"torchrun"`` or ``"spawn"``),
    ``split_backward``, ``prepost``, ``timeout``, ``trace``, ``echo``. The model is checked in
    this process before any worker starts. Returns a :class:`schedlang.train.RunResult` (the
    loss of every step, the measured bubble); see :mod:`schedlang.train` and docs/models.md.
    """
    from schedlang.train import run_program

    if not isinstance(program.schedule, Orders):
        program = schedule(program)
    return run_program(program, model, split, **options)
