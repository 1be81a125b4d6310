"""The ``--emit`` formats: one explicit registry of everything a compiled program can be written as.

Each entry is a name, a one-line description (shown by ``schedlang compile --help``) and a
function ``Program -> str``. The functions import their module when called, so listing or
validating a format costs nothing and optional modules load only when their format is used::

    from schedlang import emitters
    text = emitters.emit(program, "torch-csv")

To add a format, write the function in the module that owns its meaning and add one line to
:data:`EMITTERS` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schedlang.ir import Program
from schedlang.source import SchedlangError


@dataclass(frozen=True)
class Emitter:
    """One ``--emit`` format."""

    name: str
    summary: str
    fn: Callable[[Program], str]

    def __call__(self, program: Program) -> str:
        return self.fn(program)


def _ir(program: Program) -> str:
    from schedlang.ir import format_program

    return format_program(program)


def _orders(program: Program) -> str:
    from schedlang.ir import format_orders

    return format_orders(program)


def _streams(program: Program) -> str:
    from schedlang.codegen import emit_streams

    return emit_streams(program)


def _json(program: Program) -> str:
    from schedlang.codegen import emit_json

    return emit_json(program)


def _torch_csv(program: Program) -> str:
    from schedlang.export import emit_torch_csv

    return emit_torch_csv(program)


def _torch_csv_comms(program: Program) -> str:
    from schedlang.export import emit_torch_csv_comms

    return emit_torch_csv_comms(program)


def _svg(program: Program) -> str:
    from schedlang.render import render_svg

    return render_svg(program)


def _sched(program: Program) -> str:
    from schedlang.program_text import program_text

    return program_text(program)


def _chrome_trace(program: Program) -> str:
    from schedlang.trace import chrome_trace

    return chrome_trace(program)


EMITTERS: dict[str, Emitter] = {e.name: e for e in (
    Emitter("ir", "the scheduled IR as text (parameters, ops, dependencies, orders)", _ir),
    Emitter("orders", "each rank's op order, one line per rank", _orders),
    Emitter("streams", "per-rank instruction streams, text form (schedlang.isa)", _streams),
    Emitter("json", "per-rank instruction streams, JSON form (schedlang.isa)", _json),
    Emitter("torch-csv", "PyTorch schedule CSV, compute_only (compute actions only)", _torch_csv),
    Emitter("torch-csv-comms", "PyTorch schedule CSV, compute_comms (with sends, receives, REDUCE_GRAD)",
            _torch_csv_comms),
    Emitter("sched", "the scheduled program as schedlang text with explicit per-rank orders "
            "(compiles back to the same orders and costs)", _sched),
    Emitter("svg", "the pipeline picture as SVG: one row per rank, time across", _svg),
    Emitter("chrome-trace", "the simulated timeline as a Chrome/Perfetto trace (JSON)", _chrome_trace),
)}


def names() -> list[str]:
    """Every format's name, in registry order."""
    return list(EMITTERS)


def get(name: str) -> Emitter:
    """The emitter called ``name``; an unknown name is a user error that lists the formats."""
    try:
        return EMITTERS[name]
    except KeyError:
        raise SchedlangError(f"unknown --emit format '{name}' (formats: {', '.join(EMITTERS)})") from None


def emit(program: Program, name: str) -> str:
    """``program`` written in format ``name``."""
    return get(name)(program)
