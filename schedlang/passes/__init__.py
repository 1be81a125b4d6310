"""Passes over the IR, registered by name in one explicit dict, and the pass runner.

A pass is a function ``Program -> Program`` that never mutates its input; its docstring says what
it requires and what it guarantees. ``run_passes`` runs a list of them, optionally verifying the
IR after each one (tests always do) and dumping it after a named pass (``--dump-after PASS``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from schedlang.ir import Program
from schedlang.passes.schedule import schedule_pass
from schedlang.source import SchedlangError

Pass = Callable[[Program], Program]

PASSES: dict[str, Pass] = {
    "schedule": schedule_pass,
}

DEFAULT_PIPELINE: tuple[str, ...] = ("schedule",)


class PassVerificationError(AssertionError):
    """A pass broke an IR invariant: a bug in the pass, not a user error."""


def run_passes(
    program: Program,
    names: Sequence[str] = DEFAULT_PIPELINE,
    *,
    verify_each: bool = False,
    dump_after: str | None = None,
    dump: Callable[[str, Program], None] | None = None,
) -> Program:
    """Run ``names`` in order. With ``verify_each``, a broken invariant names the pass and those before it."""
    from schedlang.verify import verify

    for name in names:
        if name not in PASSES:
            raise SchedlangError(f"unknown pass '{name}' (passes: {', '.join(PASSES)})")
    if dump_after is not None and dump_after not in names and dump_after != "lower":
        raise SchedlangError(f"--dump-after {dump_after}: no such pass in this run (passes: lower, {', '.join(names)})")
    if dump_after == "lower" and dump is not None:
        dump("lower", program)
    done: list[str] = ["lower"]
    for name in names:
        program = PASSES[name](program)
        done.append(name)
        if verify_each:
            try:
                verify(program)
            except SchedlangError as exc:
                raise PassVerificationError(
                    f"IR invalid after pass '{name}' (passes run: {', '.join(done)}): {exc.message}") from exc
        if dump_after == name and dump is not None:
            dump(name, program)
    return program
