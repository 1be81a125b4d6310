"""Text to syntax tree: a thin layer over Lark.

The grammar (``schedlang.grammars/schedlang.lark``) is parsed with LALR and the contextual lexer;
a transformer turns Lark's tree into :mod:`schedlang.syntax` nodes with their spans. Every Lark
exception is converted here into a located :class:`~schedlang.source.SchedlangError`.
"""

from __future__ import annotations

import difflib
import functools
import math
import sys
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from schedlang import limits
from schedlang import syntax as S
from schedlang.source import SchedlangError, Source, Span

# The words a declaration starts with (a file that starts with none of them is not a program).
KEYWORDS = frozenset({"import", "param", "let", "ranks", "stages", "microbatches", "place", "op", "comm",
                      "dep", "mem_limit", "overlap", "schedule"})
# Longest integer literal converted at all (Python refuses to convert 4301 digits and more).
_MAX_INT_DIGITS = 4000

_TOKEN_NAMES = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "LPAR": "'('", "RPAR": "')'",
    "COMMA": "','", "EQUAL": "'='", "COLON": "':'", "QMARK": "'?'", "PLUS": "'+'", "MINUS": "'-'",
    "MULOP": "an operator", "COMP_OP": "a comparison", "$END": "end of input", "SEMICOLON": "';'",
}


class _Builder(Transformer[Token, Any]):
    """Builds AST nodes; rule names map one-to-one onto :mod:`schedlang.syntax` classes."""

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.source = source

    # -- positions
    def _span(self, meta: Any) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return Span(self.source, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_span(self, tok: Token) -> Span:
        return Span(self.source, tok.line or 0, tok.column or 0, tok.end_line or 0, tok.end_column or 0)

    # -- expressions
    @v_args(meta=True)
    def int_lit(self, meta: Any, c: list[Token]) -> S.IntLit:
        text, span = str(c[0]), self._span(meta)
        bits = limits.current().max_int_bits
        if len(text) > _MAX_INT_DIGITS or int(text).bit_length() > bits:
            what = f"a {len(text):,}-digit integer" if len(text) > 30 else f"the integer {text}"
            raise limits.exceeded(f"{what} is too large", "max_int_bits", span)
        return S.IntLit(int(text), span)

    @v_args(meta=True)
    def float_lit(self, meta: Any, c: list[Token]) -> S.FloatLit:
        value = float(c[0])
        if not math.isfinite(value):
            raise SchedlangError("the number is too large for a float (about 1.8e308 at most)", self._span(meta))
        return S.FloatLit(value, self._span(meta))

    @v_args(meta=True)
    def str_lit(self, meta: Any, c: list[Token]) -> S.StrLit:
        return S.StrLit(str(c[0])[1:-1], self._span(meta))

    @v_args(meta=True)
    def true_lit(self, meta: Any, c: list[Any]) -> S.BoolLit:
        return S.BoolLit(True, self._span(meta))

    @v_args(meta=True)
    def false_lit(self, meta: Any, c: list[Any]) -> S.BoolLit:
        return S.BoolLit(False, self._span(meta))

    @v_args(meta=True)
    def name(self, meta: Any, c: list[Token]) -> S.Name:
        return S.Name(str(c[0]), self._span(meta))

    @v_args(meta=True)
    def call(self, meta: Any, c: list[Any]) -> S.Call:
        args = tuple(a for a in c[1:] if a is not None)
        return S.Call(str(c[0]), args, self._span(meta))

    @v_args(meta=True)
    def index(self, meta: Any, c: list[Any]) -> S.Index:
        return S.Index(c[0], c[1], self._span(meta))

    @v_args(meta=True)
    def list_lit(self, meta: Any, c: list[Any]) -> S.ListLit:
        return S.ListLit(tuple(a for a in c if a is not None), self._span(meta))

    @v_args(meta=True)
    def unary(self, meta: Any, c: list[Any]) -> S.Unary:
        return S.Unary(str(c[0]), c[1], self._span(meta))

    @v_args(meta=True)
    def binary(self, meta: Any, c: list[Any]) -> S.Binary:
        return S.Binary(str(c[1]), c[0], c[2], self._span(meta))

    @v_args(meta=True)
    def pow_expr(self, meta: Any, c: list[Any]) -> S.Binary:
        return S.Binary("**", c[0], c[2], self._span(meta))

    @v_args(meta=True)
    def compare(self, meta: Any, c: list[Any]) -> S.Compare:
        return S.Compare(tuple(c[0::2]), tuple(str(t) for t in c[1::2]), self._span(meta))

    @v_args(meta=True)
    def or_expr(self, meta: Any, c: list[Any]) -> S.BoolOp:
        return S.BoolOp("or", c[0], c[1], self._span(meta))

    @v_args(meta=True)
    def and_expr(self, meta: Any, c: list[Any]) -> S.BoolOp:
        return S.BoolOp("and", c[0], c[1], self._span(meta))

    @v_args(meta=True)
    def not_expr(self, meta: Any, c: list[Any]) -> S.Not:
        return S.Not(c[0], self._span(meta))

    @v_args(meta=True)
    def cond_expr(self, meta: Any, c: list[Any]) -> S.Cond:
        return S.Cond(c[0], c[2], c[3], self._span(meta))

    # -- patterns and orders
    @v_args(meta=True)
    def op_pattern(self, meta: Any, c: list[Any]) -> S.OpPattern:
        return S.OpPattern(str(c[0]), c[1], c[2], self._span(meta))

    @v_args(meta=True)
    def block(self, meta: Any, c: list[Any]) -> S.Block:
        return S.Block(tuple(c), self._span(meta))

    @v_args(meta=True)
    def for_stmt(self, meta: Any, c: list[Any]) -> S.ForStmt:
        return S.ForStmt(str(c[0]), c[1], c[2], c[3], self._span(meta))

    @v_args(meta=True)
    def elif_clause(self, meta: Any, c: list[Any]) -> S.ElifClause:
        return S.ElifClause(c[0], c[1], self._span(meta))

    @v_args(meta=True)
    def else_clause(self, meta: Any, c: list[Any]) -> S.Block:
        return c[0]  # type: ignore[no-any-return]

    @v_args(meta=True)
    def if_stmt(self, meta: Any, c: list[Any]) -> S.IfStmt:
        elifs = tuple(x for x in c[2:-1] if isinstance(x, S.ElifClause))
        return S.IfStmt(c[0], c[1], elifs, c[-1], self._span(meta))

    @v_args(meta=True)
    def let_stmt(self, meta: Any, c: list[Any]) -> S.LetStmt:
        return S.LetStmt(str(c[0]), c[1], self._span(meta))

    @v_args(meta=True)
    def emit(self, meta: Any, c: list[Any]) -> S.Emit:
        ops = tuple(x for x in c if isinstance(x, S.OpPattern))
        return S.Emit(ops, c[-1] is not None, self._span(meta))

    @v_args(meta=True)
    def rank_loop(self, meta: Any, c: list[Any]) -> S.RankLoop:
        return S.RankLoop(str(c[0]), c[1], c[2], c[3], self._span(meta))

    @v_args(meta=True)
    def rank_one(self, meta: Any, c: list[Any]) -> S.RankOne:
        return S.RankOne(c[0], c[1], self._span(meta))

    @v_args(meta=True)
    def orders_clause(self, meta: Any, c: list[Any]) -> S.OrdersClause:
        return S.OrdersClause(tuple(c), self._span(meta))

    @v_args(meta=True)
    def arg(self, meta: Any, c: list[Any]) -> S.Arg:
        return S.Arg(str(c[0]), c[1], self._span(meta))

    @v_args(meta=True)
    def scheduler_clause(self, meta: Any, c: list[Any]) -> S.SchedulerClause:
        args = tuple(a for a in c[1:] if a is not None)
        return S.SchedulerClause(str(c[0])[1:-1], args, self._span(meta))

    # -- declarations
    @v_args(meta=True)
    def import_decl(self, meta: Any, c: list[Token]) -> S.ImportDecl:
        return S.ImportDecl(str(c[0])[1:-1], self._span(meta))

    @v_args(meta=True)
    def param_decl(self, meta: Any, c: list[Any]) -> S.ParamDecl:
        return S.ParamDecl(str(c[0]), c[1], self._span(meta))

    @v_args(meta=True)
    def let_decl(self, meta: Any, c: list[Any]) -> S.LetDecl:
        return S.LetDecl(str(c[0]), c[1], self._span(meta))

    @v_args(meta=True)
    def ranks_decl(self, meta: Any, c: list[Any]) -> S.RanksDecl:
        return S.RanksDecl(c[0], self._span(meta))

    @v_args(meta=True)
    def stages_decl(self, meta: Any, c: list[Any]) -> S.StagesDecl:
        return S.StagesDecl(c[0], self._span(meta))

    @v_args(meta=True)
    def microbatches_decl(self, meta: Any, c: list[Any]) -> S.MicrobatchesDecl:
        return S.MicrobatchesDecl(c[0], self._span(meta))

    @v_args(meta=True)
    def place_decl(self, meta: Any, c: list[Any]) -> S.PlaceDecl:
        binder = str(c[0]) if c[0] is not None else None
        return S.PlaceDecl(binder, c[1], self._span(meta))

    @v_args(meta=True)
    def comm_decl(self, meta: Any, c: list[Any]) -> S.CommDecl:
        return S.CommDecl(c[0], self._span(meta))

    @v_args(meta=True)
    def mem_limit_decl(self, meta: Any, c: list[Any]) -> S.MemLimitDecl:
        return S.MemLimitDecl(c[0], self._span(meta))

    @v_args(meta=True)
    def allreduce_decl(self, meta: Any, c: list[Any]) -> S.AllreduceDecl:
        return S.AllreduceDecl(c[0], self._span(meta))

    @v_args(meta=True)
    def overlap_decl(self, meta: Any, c: list[Token]) -> S.OverlapDecl:
        return S.OverlapDecl(str(c[0]), self._span(meta))

    @v_args(meta=True)
    def weights_decl(self, meta: Any, c: list[Any]) -> S.WeightsDecl:
        return S.WeightsDecl(str(c[0]), tuple(c[1:]), self._span(meta))

    @v_args(meta=True)
    def every_attr(self, meta: Any, c: list[Any]) -> S.EveryAttr:
        return S.EveryAttr(c[0], self._span(meta))

    @v_args(meta=True)
    def binders(self, meta: Any, c: list[Token]) -> tuple[str, ...]:
        return tuple(str(t) for t in c)

    @v_args(meta=True)
    def role_attr(self, meta: Any, c: list[Token]) -> S.RoleAttr:
        return S.RoleAttr(str(c[0]), self._span(meta))

    @v_args(meta=True)
    def time_attr(self, meta: Any, c: list[Any]) -> S.TimeAttr:
        return S.TimeAttr(c[0], self._span(meta))

    @v_args(meta=True)
    def mem_attr(self, meta: Any, c: list[Any]) -> S.MemAttr:
        return S.MemAttr(c[0], self._span(meta))

    @v_args(meta=True)
    def where_attr(self, meta: Any, c: list[Any]) -> S.WhereAttr:
        return S.WhereAttr(c[0], self._span(meta))

    @v_args(meta=True)
    def latency_attr(self, meta: Any, c: list[Any]) -> S.LatencyAttr:
        return S.LatencyAttr(c[0], self._span(meta))

    @v_args(meta=True)
    def op_decl(self, meta: Any, c: list[Any]) -> S.OpDecl:
        binders = c[1] if c[1] is not None else ()
        return S.OpDecl(str(c[0]), binders, tuple(c[2:]), self._span(meta))

    @v_args(meta=True)
    def dep_decl(self, meta: Any, c: list[Any]) -> S.DepDecl:
        return S.DepDecl(c[0], c[1], tuple(c[2:]), self._span(meta))

    @v_args(meta=True)
    def schedule_decl(self, meta: Any, c: list[Any]) -> S.ScheduleDecl:
        return S.ScheduleDecl(c[0], self._span(meta))

    def start(self, c: list[Any]) -> tuple[Any, ...]:
        return tuple(c)

    def value(self, c: list[Any]) -> Any:
        return c[0]


@functools.cache
def _grammar_text() -> str:
    return resources.files("schedlang.grammars").joinpath("schedlang.lark").read_text("utf-8")


class _TooDeep(Exception):
    def __init__(self, line: int, col: int) -> None:
        super().__init__(line, col)
        self.line, self.col = line, col


class _DepthTree(Tree[Token]):
    """A parse-tree node that knows its depth, so a tree nested too deeply is refused while it is
    being built: a megabyte of ``1+1+...`` fails after a few hundred tokens, not after the parse."""

    limit = 200  # set by _Parser.parse from the limits in force
    depth: int

    def __init__(self, data: str, children: list[Any], meta: Any = None) -> None:
        # what Tree.__init__ does, inline: this runs once per node of every parse
        self.data, self.children, self._meta = data, children, meta
        depth = 0
        for c in children:
            if type(c) is _DepthTree and c.depth > depth:  # tokens and None count 0
                depth = c.depth
        self.depth = depth = depth + 1
        if depth > _DepthTree.limit:
            line, col = _first_position(children)
            raise _TooDeep(line, col)


def _first_position(children: list[Any]) -> tuple[int, int]:
    for c in children:
        if isinstance(c, Token) and c.line is not None:
            return c.line, c.column or 1
        meta = getattr(c, "_meta", None)
        if meta is not None and getattr(meta, "line", None) is not None:
            return meta.line, meta.column
    return 1, 1


class _Parser:
    """One compiled LALR parser (building it takes ~100 ms) and its AST builder."""

    def __init__(self) -> None:
        self.builder = _Builder(Source("<none>", ""))
        self.lark = Lark(
            _grammar_text(),
            parser="lalr",
            lexer="contextual",
            propagate_positions=True,
            maybe_placeholders=True,
            start=["start", "value"],
            tree_class=_DepthTree,
        )

    def parse(self, source: Source, start: str) -> Any:
        # The builder reads the current source for its spans; parsing is single-threaded.
        self.builder.source = source
        lim = limits.current()
        if len(source.text) > lim.max_source_bytes:
            raise limits.exceeded(f"the source is {len(source.text):,} characters long", "max_source_bytes",
                                  Span(Source(source.name, ""), 1, 1))
        # A byte-order mark reads as a blank, so columns stay those of the text.
        text = " " + source.text[1:] if source.text.startswith("\ufeff") else source.text
        _DepthTree.limit = lim.max_depth
        ensure_recursion_limit(lim.max_depth)
        try:
            tree = self.lark.parse(text, start=start)
            return self.builder.transform(tree)
        except _TooDeep as exc:
            raise limits.exceeded(f"nested more than {lim.max_depth} levels deep", "max_depth",
                                  Span(source, exc.line, exc.col)) from None
        except VisitError as exc:  # an error raised on purpose in a callback, or a bug
            if isinstance(exc.orig_exc, SchedlangError):
                raise exc.orig_exc from None
            raise
        except UnexpectedInput as exc:
            raise _syntax_error(source, exc) from None


@functools.cache
def _parser() -> _Parser:
    return _Parser()


def parse_module(source: Source) -> S.Module:
    """Parse a whole source file into a :class:`~schedlang.syntax.Module`."""
    items = _parser().parse(source, "start")
    return S.Module(tuple(items), source.name)


def ensure_recursion_limit(max_depth: int) -> None:
    """Let Python recurse as deep as a tree within ``max_depth`` needs: each level takes a few
    frames to build, check, compile and evaluate."""
    needed = 12 * max_depth + 2000
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


ensure_recursion_limit(limits.Limits().max_depth)  # at import, so the default never changes it later


def _describe_expected(expected: set[str]) -> str:
    names = sorted({_TOKEN_NAMES.get(t, _keyword(t)) for t in expected if not t.startswith("__")})
    if not names:
        return ""
    if len(names) > 8:
        names = names[:8] + ["..."]
    return "; expected " + ", ".join(names)


def _keyword(term: str) -> str:
    # anonymous keyword terminals are named after their text by Lark (e.g. 'RANKS' for "ranks")
    return f"'{term.lower()}'" if term.isupper() else term


def _syntax_error(source: Source, exc: UnexpectedInput) -> SchedlangError:
    line = getattr(exc, "line", None) or 1
    col = getattr(exc, "column", None) or 1
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            lines = source.text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
            msg = "unexpected end of input" + _describe_expected(exc.expected)
        else:
            msg = f"unexpected {str(tok)!r}" + _did_you_mean(str(tok), exc.expected) + _describe_expected(exc.expected)
            line, col = tok.line or line, tok.column or col
            if "\n" not in str(tok):  # underline the whole token
                return SchedlangError(msg, Span(source, line, col, line, col + len(str(tok))))
    elif isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        ch = source.text[pos] if pos < len(source.text) else ""
        msg = f"unexpected character {ch!r}"
        word = _word_at(source.text, pos)
        if word:
            msg = f"unexpected {word!r}" + _did_you_mean(word, exc.allowed) + _describe_expected(exc.allowed)
    elif isinstance(exc, UnexpectedEOF):
        msg = "unexpected end of input"
    else:
        msg = "syntax error"
    return SchedlangError(msg, Span(source, line, col))


def _word_at(text: str, pos: int) -> str:
    end = pos
    while end < len(text) and (text[end].isalnum() or text[end] == "_") and text[end].isascii():
        end += 1
    word = text[pos:end]
    return word if word and not word[0].isdigit() else ""


def _did_you_mean(word: str, expected: set[str]) -> str:
    """' (did you mean 'schedule'?)' when ``word`` is a near miss of a keyword expected here."""
    keywords = sorted(t.lower() for t in expected if t.isupper() and t.lower() in KEYWORDS | _OTHER_WORDS)
    near = difflib.get_close_matches(word, keywords, n=1, cutoff=0.7)
    return f" (did you mean '{near[0]}'?)" if near and near[0] != word else ""


_OTHER_WORDS = frozenset({"rank", "for", "in", "if", "elif", "else", "role", "time", "mem", "where", "latency",
                          "true", "false", "and", "or", "not"})


def parse_expr(source: Source) -> S.Expr:
    """Parse one expression (used for ``--set NAME=VALUE`` values)."""
    return _parser().parse(source, "value")  # type: ignore[no-any-return]


__all__ = ["parse_expr", "parse_module"]
