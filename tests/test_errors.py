"""Every kind of user error: located at the right (line, col), rendered with the source line and
a caret, and snapshotted as a whole in tests/golden/core/errors.txt."""

from __future__ import annotations

import pytest

from schedlang.api import compile as compile_program
from schedlang.api import loads, schedule
from schedlang.source import SchedlangError

HEAD = 'import "std:fused"\nparam p = 2\nparam m = 2\nranks p\nmicrobatches m\n'
FBW = 'import "std:fbw"\nparam p = 2\nparam m = 2\nranks p\nmicrobatches m\n'

# (id, source, (line, col), message fragment)
CASES = [
    ("unknown-name", HEAD + "stages q\n", (6, 8), "unknown name 'q'"),
    ("unknown-name-hint", HEAD + "let x = pp + 1\n", (6, 9), "did you mean 'p'"),
    ("unknown-function", HEAD + "let x = mx(p, 1)\n", (6, 9), "unknown function 'mx'"),
    ("arity", HEAD + "let x = at(p)\n", (6, 9), "at() takes 2 arguments, got 1"),
    ("unknown-kind-in-rule", HEAD + "dep F[s, i] -> X[s, i]\n", (6, 16), "unknown op kind 'X'"),
    ("unknown-kind-in-order", HEAD + "schedule { rank 0 { Z[0, 0] } }\n", (6, 21), "unknown op kind 'Z'"),
    ("duplicate-param", HEAD + "param p = 3\n", (6, 1), "parameter 'p' declared twice"),
    ("duplicate-clause", HEAD + "ranks 3\n", (6, 1), "'ranks' clause declared twice"),
    ("name-clash", HEAD + "let F = 1\n", (6, 1), "'F' is declared both"),
    ("no-ranks", 'import "std:fused"\nmicrobatches 2\n', (2, 1), "no 'ranks' clause"),
    ("ranks-type", HEAD.replace("ranks p", "ranks 1.5"), (4, 7), "must be an int, got float"),
    ("ranks-zero", HEAD.replace("ranks p", "ranks p - 2"), (4, 7), "at least 1, got 0"),
    ("placement-out-of-range", HEAD + "place s => s + 1\n", (6, 12), "stage 1 is placed on rank 2"),
    ("placement-length", HEAD + "place [0, 1, 1]\n", (6, 7), "lists 3 ranks for 2 stages"),
    ("rank-without-stage", HEAD + "place [0, 0]\n", (6, 7), "rank 1 holds no stage"),
    ("stages-need-place", HEAD + "stages 4\n", (6, 1), "need a 'place' clause"),
    ("self-reference", HEAD + "let a = b\nlet b = a + 1\n", (6, 1), "defined in terms of itself"),
    ("index-out-of-range", HEAD + "let xs = [1, 2]\nlet y = xs[2]\n", (7, 9), "index 2 out of range"),
    ("division-by-zero", HEAD + "let y = p / (m - 2)\n", (6, 9), "division by zero"),
    ("type-mismatch", HEAD + "let y = p + [1]\n", (6, 9), "right operand of '+' must be a number"),
    ("negative-time", HEAD + "op X[s, i] time -1\n", (6, 17), "must be a finite number >= 0"),
    ("cycle", HEAD + "dep BW[s, i] -> F[s, i]\n", (6, 1), "dependency cycle"),
    ("order-missing-op", HEAD + "schedule { rank 0 { F[0, 0] } }\n", (6, 10), "leaves out"),
    ("order-repeated-op", HEAD + "schedule { rank 0 { F[0, 0] F[0, 0] } }\n", (6, 29), "scheduled twice"),
    ("order-wrong-rank", HEAD + "schedule { rank 0 { F[1, 0] } }\n", (6, 21), "runs on rank 1"),
    ("order-out-of-range", HEAD + "schedule { rank 0 { F[0, 7] } }\n", (6, 21), "microbatch 7 out of range"),
    ("order-rank-twice", HEAD + "schedule { rank 0 { } rank 0 { } }\n", (6, 23), "rank 0 is given twice"),
    ("order-violates-dep", HEAD + """schedule {
  rank 0 { F[0, 0] F[0, 1] BW[0, 0] BW[0, 1] }
  rank 1 { BW[1, 0] F[1, 0] F[1, 1] BW[1, 1] }
}
""", (8, 12), "runs BW[1,0] before F[1,0], which it depends on"),
    ("deadlock", HEAD + """schedule {
  rank 0 { F[0, 0] BW[0, 0] F[0, 1] BW[0, 1] }
  rank 1 { F[1, 1] F[1, 0] BW[1, 0] BW[1, 1] }
}
""", (7, 20), "deadlock: rank 0 waits at BW[0,0] for BW[1,0] (rank 1); rank 1 waits at F[1,1]"),
    ("memory-limit", HEAD.replace('param p = 2', 'param p = 2\nmem_limit 1.5') + """schedule {
  rank r in 0..p { F[r, 0] F[r, 1] BW[r, 0] BW[r, 1] }
}
""", (8, 28), "memory limit exceeded on rank 0: F[0,1] raises memory to 2, over the limit 1.5"),
    ("unknown-scheduler", HEAD + 'schedule "zb-magic"(x = 1)\n', (6, 10), "unknown scheduler 'zb-magic'"),
    ("unknown-scheduler-arg", HEAD + 'schedule "list"(colour = 1)\n', (6, 17), "has no argument 'colour'"),
    ("scheduler-arg-type", HEAD + 'schedule "list"(priority = 3)\n', (6, 17), "must be str, got int"),
    ("no-schedule", HEAD, None, "has no schedule"),
    ("bad-role", HEAD + "op X[s, i] role Q time 1\n", (6, 12), "unknown role 'Q'"),
    ("attr-twice", HEAD + "op X[s, i] time 1 time 2\n", (6, 19), "'time' given twice"),
    ("shadowing", HEAD + "schedule { rank p in 0..2 { } }\n", (6, 12), "shadows a name"),
    ("bad-import", 'import "std:nothing"\n', (1, 1), "no standard module 'std:nothing'"),
    ("missing-file-import", 'import "does/not/exist.sched"\n', (1, 1), "cannot read 'does/not/exist.sched'"),
    ("source-pattern-expr", FBW + "dep F[s + 1, i] -> B[s, i]\n", (6, 7), "unknown name 's'"),
    ("mem-limit-length", HEAD + "mem_limit [1, 2, 3]\n", (6, 11), "mem_limit lists 3 values for 2 ranks"),
    ("overlap-mode", HEAD + "overlap most\n", (6, 1), "unknown overlap mode"),
    ("misspelled-keyword", HEAD + 'schedul "list"\n', (6, 1), "unexpected 'schedul'"),
    ("misspelled-attribute", HEAD + "op X[s, i] tme 1\n", (6, 12), "unexpected 'tme'"),
]

# A misspelled keyword gets the closest keyword allowed at that place; a name that is close to
# none gets no guess.
HINTS = [
    ('schedul "list"\n', "schedul", "schedule"),
    ("microbatch 4\n", "microbatch", "microbatches"),
    ("op X[s, i] tme 1\n", "tme", "time"),
    ("dep F[s, i] -> F[s + 1, i] latncy 2\n", "latncy", "latency"),
    ("zzzz 4\n", "zzzz", None),
]


@pytest.mark.parametrize(("text", "word", "hint"), HINTS)
def test_misspelled_keyword_hint(text: str, word: str, hint: str | None) -> None:
    message = _error(HEAD + text).message
    if hint is None:
        assert message.startswith(f"unexpected '{word}'; expected"), message
        assert "did you mean" not in message
    else:
        assert message.startswith(f"unexpected '{word}' (did you mean '{hint}'?); expected"), message


def _error(source: str) -> SchedlangError:
    with pytest.raises(SchedlangError) as info:
        schedule(loads(source, name="case.sched"))
    return info.value


@pytest.mark.parametrize(("case", "source", "where", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_error_is_located(case: str, source: str, where: tuple[int, int] | None, fragment: str) -> None:
    err = _error(source)
    assert fragment in err.message, err.render()
    if where is not None:
        assert err.span is not None, err.render()
        if err.span.source.name == "case.sched":
            assert err.location == where, err.render()
        rendered = err.render()
        assert f":{err.span.line}:{err.span.col}: error: " in rendered
        assert "^" in rendered


def test_error_messages_snapshot(golden) -> None:  # type: ignore[no-untyped-def]
    text = "".join(f"== {case}\n{_error(source).render()}\n" for case, source, _, _ in CASES)
    golden.check("core/errors.txt", text)


def test_unknown_parameter_override_is_an_error() -> None:
    with pytest.raises(SchedlangError, match="has no parameter 'q'"):
        compile_program("std:1f1b", q=3)


def test_internal_errors_stay_assertions() -> None:
    # a scheduled program with a hand-broken order is a bug in a pass, not a user error
    from schedlang.passes import PASSES, PassVerificationError, run_passes

    prog = compile_program("std:1f1b", p=2, m=2)
    broken = prog.with_orders(type(prog.orders)(tuple(reversed(prog.orders.ranks))))
    PASSES["_break"] = lambda p: broken
    try:
        with pytest.raises(PassVerificationError, match="after pass '_break'"):
            run_passes(prog, ["_break"], verify_each=True)
    finally:
        del PASSES["_break"]
