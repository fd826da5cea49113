"""The small, safe query language of ``catalog find --where``.

Grammar (keywords case-insensitive)::

    expr       := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expr ")" | comparison
    comparison := NAME op literal | NAME "like" STRING | "has" NAME
    op         := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    literal    := STRING | NUMBER
    NAME       := [A-Za-z_][A-Za-z0-9_.:-]*  |  "double-quoted name"
    STRING     := 'single-quoted text' ('' for a quote)

Semantics, over the object's attribute-value-unit metadata (an attribute may have several
values; a comparison is true when *any* value satisfies it, as in iRODS's ``imeta qu``):

* ``a = 'x'`` compares the text value; ``a = 2`` and ``a < 2.5`` compare the numeric shadow
  column (values that parse as numbers), so ``run = 1`` matches ``run-01``;
* ``a < 'x'`` compares text lexicographically; ``a like 'sub-0%'`` is a case-insensitive SQL
  LIKE (``%`` any run, ``_`` one character);
* ``a != v`` is true when the object has attribute ``a`` and none of its values equals ``v``;
* ``has a`` is true when the object has attribute ``a`` at all.

The expression is parsed into a tree and translated into SQLAlchemy expressions with bound
parameters (``object_id IN (sub-query)`` per comparison, each answered by one scan of the
``(attribute, value, object)`` or ``(attribute, value_num, object)`` index); no text is ever
formatted into SQL.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from neuroscale.catalog.errors import QuerySyntaxError
from neuroscale.catalog.paths import nfc

MAX_LENGTH = 4000
MAX_DEPTH = 50
MAX_COMPARISONS = 200

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<qname>"(?:[^"]|"")+")
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<name>[A-Za-z_][A-Za-z0-9_.:\-]*)
    """,
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "not", "like", "has"}


@dataclass(frozen=True)
class Token:
    """One lexical token: ``kind`` (string, number, op, lparen, rparen, name, kw, end)."""

    kind: str
    text: str
    pos: int
    value: Any = None


@dataclass(frozen=True)
class Comparison:
    """``attribute op value`` (``op`` one of = != < <= > >= like has)."""

    attribute: str
    op: str
    value: str | float | None


@dataclass(frozen=True)
class Not:
    """Logical negation."""

    operand: Node


@dataclass(frozen=True)
class BoolOp:
    """``and`` / ``or`` of two or more operands."""

    op: str
    operands: tuple[Node, ...]


Node = Comparison | Not | BoolOp


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens.

    Raises
    ------
    QuerySyntaxError
        An unexpected character, unterminated string, or an over-long expression.
    """
    if len(text) > MAX_LENGTH:
        raise QuerySyntaxError(f"query longer than {MAX_LENGTH} characters")
    if "\x00" in text:
        raise QuerySyntaxError("query contains a NUL byte")
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise QuerySyntaxError(f"unexpected character {text[pos]!r} at position {pos}")
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "string":
            tokens.append(Token("string", raw, pos, raw[1:-1].replace("''", "'")))
        elif kind == "qname":
            tokens.append(Token("name", raw, pos, raw[1:-1].replace('""', '"')))
        elif kind == "number":
            value = float(raw)
            if not math.isfinite(value):
                raise QuerySyntaxError(f"number {raw!r} at position {pos} is not finite")
            tokens.append(Token("number", raw, pos, value))
        elif kind == "name":
            low = raw.lower()
            if low in KEYWORDS:
                tokens.append(Token("kw", low, pos, low))
            else:
                tokens.append(Token("name", raw, pos, raw))
        elif kind != "ws":
            tokens.append(Token(kind, raw, pos, raw))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.n_comparisons = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, what: str) -> QuerySyntaxError:
        tok = self.peek()
        found = "end of query" if tok.kind == "end" else repr(tok.text)
        return QuerySyntaxError(f"expected {what} at position {tok.pos}, found {found}")

    def expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise QuerySyntaxError(f"query nested deeper than {MAX_DEPTH} levels")
        operands = [self.term(depth)]
        while self.peek().kind == "kw" and self.peek().value == "or":
            self.take()
            operands.append(self.term(depth))
        return operands[0] if len(operands) == 1 else BoolOp("or", tuple(operands))

    def term(self, depth: int) -> Node:
        operands = [self.factor(depth)]
        while self.peek().kind == "kw" and self.peek().value == "and":
            self.take()
            operands.append(self.factor(depth))
        return operands[0] if len(operands) == 1 else BoolOp("and", tuple(operands))

    def factor(self, depth: int) -> Node:
        tok = self.peek()
        if tok.kind == "kw" and tok.value == "not":
            self.take()
            if depth + 1 > MAX_DEPTH:
                raise QuerySyntaxError(f"query nested deeper than {MAX_DEPTH} levels")
            return Not(self.factor(depth + 1))
        if tok.kind == "lparen":
            self.take()
            node = self.expr(depth + 1)
            if self.peek().kind != "rparen":
                raise self.error("')'")
            self.take()
            return node
        return self.comparison()

    def comparison(self) -> Comparison:
        self.n_comparisons += 1
        if self.n_comparisons > MAX_COMPARISONS:
            raise QuerySyntaxError(f"more than {MAX_COMPARISONS} comparisons in one query")
        tok = self.peek()
        if tok.kind == "kw" and tok.value == "has":
            self.take()
            name = self.take()
            if name.kind != "name":
                self.i -= 1
                raise self.error("an attribute name after 'has'")
            return Comparison(str(name.value), "has", None)
        if tok.kind != "name":
            raise self.error("an attribute name, 'not', 'has' or '('")
        self.take()
        attribute = str(tok.value)
        op_tok = self.peek()
        if op_tok.kind == "kw" and op_tok.value == "like":
            self.take()
            pattern = self.take()
            if pattern.kind != "string":
                self.i -= 1
                raise self.error("a quoted pattern after 'like'")
            return Comparison(attribute, "like", str(pattern.value))
        if op_tok.kind != "op":
            raise self.error("a comparison operator (= != < <= > >= like)")
        self.take()
        op = "!=" if op_tok.text == "<>" else op_tok.text
        lit = self.take()
        if lit.kind == "string":
            return Comparison(attribute, op, str(lit.value))
        if lit.kind == "number":
            return Comparison(attribute, op, float(lit.value))
        self.i -= 1
        raise self.error("a quoted string or a number")

    def parse(self) -> Node:
        node = self.expr(0)
        if self.peek().kind != "end":
            raise self.error("'and', 'or' or the end of the query")
        return node


def parse(text: str) -> Node:
    """Parse a ``--where`` expression into a tree of :class:`Comparison`/:class:`Not`/:class:`BoolOp`.

    Raises
    ------
    QuerySyntaxError
        The text is not in the grammar of the module docstring.
    """
    if not isinstance(text, str) or not text.strip():
        raise QuerySyntaxError("empty query")
    return _Parser(nfc(text)).parse()  # NFC, as the metadata stored (metadata.make_triple)


def to_sql(
    node: Node,
    object_id: Any,
    avu_table: Any,
    *,
    correlated: bool = False,
    driver: Comparison | None = None,
    prefix_ranges: bool = False,
) -> Any:
    """Translate a parsed expression into a SQLAlchemy boolean clause on ``object_id``.

    Parameters
    ----------
    node : Comparison, Not or BoolOp
        From :func:`parse`.
    object_id : SQLAlchemy column
        The data-object id the sub-queries correlate with (``DataObject.id``).
    avu_table : mapped class
        The AVU model (``neuroscale.catalog.models.AVU``).
    correlated : bool
        False (default): each comparison is ``object_id IN (uncorrelated sub-query)``, one
        range scan of an ``(attribute, value[_num], object_id)`` index, best when a comparison
        is selective.  True: each is ``EXISTS (sub-query correlated on object_id)``, one index
        probe per candidate object, best when comparisons match many objects and only the
        first rows in index order are wanted (``LIMIT``).
    driver : Comparison, optional
        With ``correlated``, this comparison (a node of ``node``, by identity) keeps the
        ``IN`` form, so the database starts from its (few) matches and probes the others.
    prefix_ranges : bool
        Add to ``like`` patterns with a literal ASCII prefix an index range on the value
        (:func:`like_range`); only for binary collations (SQLite's default, and the
        ``avus.value`` column on PostgreSQL since migration 0002).

    Returns
    -------
    SQLAlchemy ColumnElement[bool]
    """
    from sqlalchemy import and_, exists, literal, not_, or_, select

    table = getattr(avu_table, "__table__", avu_table)

    def has(c: Comparison | None, attribute: str) -> Any:
        a = table.alias()  # a Core alias: much cheaper to build than an ORM one
        where = [a.c.attribute == attribute]
        if c is not None:
            where.append(condition(c, a.c, prefix_ranges))
        if correlated and (c is None or c is not driver):
            return exists(select(literal(1)).where(a.c.object_id == object_id, *where))
        where.append(a.c.object_id.is_not(None))
        return object_id.in_(select(a.c.object_id).where(*where))

    def build(n: Node) -> Any:
        if isinstance(n, BoolOp):
            parts = [build(o) for o in n.operands]
            return and_(*parts) if n.op == "and" else or_(*parts)
        if isinstance(n, Not):
            return not_(build(n.operand))
        if n.op == "has":
            return has(None, n.attribute)
        if n.op == "!=":
            eq = Comparison(n.attribute, "=", n.value)
            return and_(has(None, n.attribute), not_(has(eq, n.attribute)))
        return has(n, n.attribute)

    return build(node)


def condition(c: Comparison, a: Any, prefix_ranges: bool = False) -> Any:
    """The value condition of comparison ``c`` on ``a`` (an AVU model, alias or column
    collection with ``value`` and ``value_num``); the attribute is not included and ``c.op``
    is neither ``has`` nor ``!=``."""
    from sqlalchemy import and_

    value = c.value
    if c.op == "like":
        assert isinstance(value, str)
        bounds = like_range(value) if prefix_ranges else None
        if bounds is None:
            return a.value.ilike(value)
        return and_(a.value >= bounds[0], a.value <= bounds[1], a.value.ilike(value))
    column = a.value_num if isinstance(value, float) else a.value
    ops = {
        "=": lambda col: col == value,
        "<": lambda col: col < value,
        "<=": lambda col: col <= value,
        ">": lambda col: col > value,
        ">=": lambda col: col >= value,
    }
    return ops[c.op](column)


def like_range(pattern: str) -> tuple[str, str] | None:
    """A (low, high) range of binary-collated text holding every value that ``pattern``
    matches case-insensitively (ASCII case folding, as SQLite's LIKE), or None when the
    pattern has no literal ASCII prefix.

    Every case variant ``v`` of an ASCII prefix ``P`` satisfies ``upper(P) <= v <= lower(P)``
    character by character (upper-case letters sort before lower-case ones), so every value
    starting with ``v`` lies in ``[upper(P), lower(P) + U+10FFFF]``.
    """
    prefix = []
    for ch in pattern:
        if ch in "%_\\" or not ch.isascii():
            break
        prefix.append(ch)
    if not prefix:
        return None
    text = "".join(prefix)
    return text.upper(), text.lower() + "\U0010ffff"


def positive_comparisons(node: Node) -> list[Comparison]:
    """Comparisons every match must satisfy (the top-level ``and`` operands that are plain
    comparisons other than ``!=``), used to estimate how selective a query is."""
    operands = node.operands if isinstance(node, BoolOp) and node.op == "and" else (node,)
    return [o for o in operands if isinstance(o, Comparison) and o.op != "!="]
