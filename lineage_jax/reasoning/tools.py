"""Tools for ReAct / Toolformer-style calls (Yao et al. 2023; Schick et al. 2023): a safe calculator and the call format.

``calculate`` is a recursive-descent evaluator of integer arithmetic written here (never ``eval``):

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := digits | "(" expr ")" | "-" factor

``/`` is exact division (a remainder is an error, as is division by zero); expressions are at most
``MAX_CHARS`` characters and every intermediate value stays below ``MAX_ABS`` in size, so no input can make
the tool run long or grow memory. Anything else is refused with one line naming the position and what is
allowed. ``lookup(table)`` is the second tool: it reads one name of a fact table the task generates
(``arith.fact_table``) and refuses any other text, also in one line.

A call is written ``[name(argument)]``; ``parse_call`` reads the last one in a text, ``observe`` runs it and
always returns an observation string (an error observation for unknown tools, malformed calls and tool
errors), so a decode loop never raises on what the model wrote.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

MAX_CHARS = 64
MAX_ABS = 10 ** 18


class ToolError(ValueError):
    """What a tool refuses, in one line."""


class _Parser:
    def __init__(self, text: str):
        self.text, self.i = text, 0

    def fail(self, what: str):
        raise ToolError(f"calculator: {what} at position {self.i} of {self.text!r}; allowed: integers, + - * /, "
                        f"parentheses")

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def check(self, v: int) -> int:
        if abs(v) >= MAX_ABS:
            self.fail(f"a value of {len(str(abs(v)))} digits exceeds the limit")
        return v

    def expr(self) -> int:
        v = self.term()
        while self.peek() in ("+", "-") and self.peek():
            op = self.peek()
            self.i += 1
            w = self.term()
            v = self.check(v + w if op == "+" else v - w)
        return v

    def term(self) -> int:
        v = self.factor()
        while self.peek() in ("*", "/") and self.peek():
            op = self.peek()
            self.i += 1
            w = self.factor()
            if op == "*":
                v = self.check(v * w)
            elif w == 0:
                self.fail("division by zero")
            elif v % w:
                self.fail(f"{v}/{w} is not a whole number")
            else:
                v = v // w
        return v

    def factor(self) -> int:
        c = self.peek()
        if c == "-":
            self.i += 1
            return -self.factor()
        if c == "(":
            self.i += 1
            v = self.expr()
            if self.peek() != ")":
                self.fail("expected ')'")
            self.i += 1
            return v
        m = re.compile(r"\d+").match(self.text, self.i)
        if not m:
            self.fail(f"unexpected {c!r}" if c else "unexpected end")
        self.i = m.end()
        return self.check(int(m.group()))


def calculate(expression: str) -> int:
    """The exact integer value of ``expression`` (spaces between tokens ignored); ToolError for anything else."""
    split = re.search(r"\d\s+\d", expression)
    if split:
        raise ToolError(f"calculator: a space inside a number at position {split.start() + 1} of {expression!r}")
    text = expression.replace(" ", "")
    if not text:
        raise ToolError("calculator: empty expression; allowed: integers, + - * /, parentheses")
    if len(text) > MAX_CHARS:
        raise ToolError(f"calculator: {len(text)} characters; at most {MAX_CHARS}")
    p = _Parser(text)
    value = p.expr()
    if p.i != len(text):
        p.fail(f"unexpected {p.peek()!r}")
    return value


def lookup(table: Mapping[str, int]) -> Callable[[str], int]:
    """The lookup tool over ``table``: ``lookup(table)("zor") -> 412`` (spaces around the name ignored); a text
    that is not a name, or a name not in the table, raises ToolError saying so and what the table holds."""
    names = sorted(table)
    shown = ", ".join(names[:8]) + (f", … ({len(names)} names)" if len(names) > 8 else "")

    def read(name: str) -> int:
        key = name.strip()
        if not re.fullmatch(r"[a-z]+", key):
            raise ToolError(f"lookup: {name!r} is not a name; allowed: one name of the table (lowercase letters): "
                            f"{shown}")
        if key not in table:
            raise ToolError(f"lookup: {key!r} is not in the table; names: {shown}")
        return table[key]
    return read


def toolbox(table: Mapping[str, int] | None = None) -> dict[str, Callable[[str], object]]:
    """The chapter's tools by call name: ``calc`` always, ``lookup`` over ``table`` when one is given."""
    return {"calc": calculate, **({"lookup": lookup(table)} if table is not None else {})}


_CALL = re.compile(r"\[([a-z]+)\(([^()\[\]]*(?:\([^\[\]]*\))*[^\[\]]*)\)\]$")


def parse_call(text: str) -> tuple[str, str] | None:
    """``"… [calc(12*(3+4))]"`` -> ``("calc", "12*(3+4)")``: the call that ``text`` ends with, or None."""
    m = _CALL.search(text)
    return (m.group(1), m.group(2)) if m else None


def observe(text: str, tools: Mapping[str, Callable[[str], object]]) -> str:
    """Run the call ``text`` ends with; the observation is the result, or ``error: …`` (never an exception)."""
    call = parse_call(text)
    if call is None:
        return "error: malformed call; write [tool(argument)]"
    name, arg = call
    if name not in tools:
        return f"error: unknown tool {name!r}; tools: {', '.join(sorted(tools))}"
    try:
        return str(tools[name](arg))
    except ToolError as e:
        return f"error: {e}"
