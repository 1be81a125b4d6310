"""Parser and printer: round trips, spans, and syntax errors located exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedlang import syntax as S
from schedlang import testing as sst
from schedlang.api import loads
from schedlang.load import read_source, std_names
from schedlang.parse import parse_expr, parse_module
from schedlang.source import SchedlangError, Source


def roundtrip(text: str) -> tuple[S.Module, S.Module]:
    m1 = parse_module(Source("a.sched", text))
    m2 = parse_module(Source("b.sched", S.format_module(m1)))
    return m1, m2


@pytest.mark.parametrize("name", std_names())
def test_stdlib_modules_print_and_parse_back(name: str) -> None:
    m1, m2 = roundtrip(read_source(f"std:{name}").text)
    assert m1 == m2
    assert len(m1.items) > 0


names = st.sampled_from(["p", "m", "x", "tf", "num_stages"])
leaves = st.one_of(
    st.integers(0, 1000).map(S.IntLit),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False).map(S.FloatLit),
    st.booleans().map(S.BoolLit),
    names.map(S.Name),
    st.sampled_from(["a", "span", "zb-h1"]).map(S.StrLit),
)


def _extend(children: st.SearchStrategy[S.Expr]) -> st.SearchStrategy[S.Expr]:
    return st.one_of(
        st.builds(S.Binary, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), children, children),
        st.builds(S.Unary, st.sampled_from(["-", "+"]), children),
        st.builds(S.BoolOp, st.sampled_from(["and", "or"]), children, children),
        st.builds(S.Not, children),
        st.builds(S.Cond, children, children, children),
        st.builds(lambda a, b, c, o1, o2: S.Compare((a, b, c), (o1, o2)), children, children, children,
                  st.sampled_from(["<", "<=", "=="]), st.sampled_from([">", "!=", ">="])),
        st.builds(S.Index, children, children),
        st.lists(children, max_size=3).map(lambda xs: S.ListLit(tuple(xs))),
        st.builds(lambda f, xs: S.Call(f, tuple(xs)), st.sampled_from(["min", "max", "at"]),
                  st.lists(children, min_size=1, max_size=3)),
    )


expressions = st.recursive(leaves, _extend, max_leaves=12)


@pytest.mark.slow
@given(expressions)
@settings(max_examples=300, deadline=None)
def test_expression_printer_round_trips(e: S.Expr) -> None:
    text = S.format_expr(e)
    assert parse_expr(Source("<e>", text)) == e, text


@pytest.mark.slow
@given(sst.pipeline_sources())
@settings(max_examples=60, deadline=None)
def test_printed_program_lowers_to_the_same_ir(text: str) -> None:
    m1, m2 = roundtrip(text)
    assert m1 == m2
    assert loads(text) == loads(S.format_module(m1))


def test_spans_point_at_the_construct() -> None:
    m = parse_module(Source("t.sched", "param p = 4\n\nranks   p + 1\n"))
    ranks = m.items[1]
    assert isinstance(ranks, S.RanksDecl)
    assert ranks.span is not None and (ranks.span.line, ranks.span.col) == (3, 1)
    assert ranks.value.span is not None and (ranks.value.span.line, ranks.value.span.col) == (3, 9)


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("ranks p +", (1, 10), "unexpected end of input"),
        ("param = 3", (1, 7), "unexpected '='"),
        ("ranks 4\nmicrobatches $", (2, 14), "unexpected character '$'"),
        ("schedule { rank 0 { F[0] } }", (1, 24), "unexpected ']'"),
        ("op F[s, i] time 1 mem", (1, 22), "unexpected end of input"),
        ("x = 3", (1, 1), "unexpected 'x'"),
        ('import "unterminated\nranks 1', (1, 8), "unexpected character"),
    ],
)
def test_syntax_errors_are_located(text: str, where: tuple[int, int], fragment: str) -> None:
    with pytest.raises(SchedlangError) as info:
        parse_module(Source("bad.sched", text))
    assert info.value.location == where
    assert fragment in info.value.message
    rendered = info.value.render()
    assert rendered.startswith(f"bad.sched:{where[0]}:{where[1]}: error: ")
    assert "^" in rendered
