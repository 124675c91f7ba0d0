"""Safe expressions in spec fields: ``${make_divisible(32 * width, 8)}``.

A small grammar of our own (a subset of Python's expression syntax, so that a backend can
print an expression as code) is parsed into a typed AST, evaluated over the params, block
arguments and the repeat index, and printed back with names mapped to the generated
code's identifiers. No spec text is ever run as Python code; the only functions are the
ones in :data:`FUNCTIONS`.

    expression  := or_test ["if" or_test "else" expression]
    or_test     := and_test ("or" and_test)*
    and_test    := not_test ("and" not_test)*
    not_test    := "not" not_test | comparison
    comparison  := sum [("<" | "<=" | ">" | ">=" | "==" | "!=") sum]
    sum         := term (("+" | "-") term)*
    term        := factor (("*" | "/" | "//" | "%") factor)*
    factor      := ("-" | "+") factor | atom
    atom        := NUMBER | "true" | "false" | NAME | NAME "(" [expression ("," expression)*] ")"
                 | "(" expression ")"
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from archc.syntax.errors import did_you_mean, show

INDEX = "i"  # the repeat index, as expressions inside a repeated body name it
MAX_LENGTH = 1000
MAX_DEPTH = 50


class ExprError(Exception):
    """A bad expression: ``message`` ('expected ..., found ...') about the text at
    ``start`` (0-based, inside the expression)."""

    def __init__(self, message: str, start: int):
        super().__init__(message)
        self.message = message
        self.start = start


# -- the AST ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: int | float | bool
    start: int


@dataclass(frozen=True)
class Name:
    name: str
    start: int


@dataclass(frozen=True)
class Unary:
    op: str  # '-', '+', 'not'
    operand: Expr
    start: int


@dataclass(frozen=True)
class Binary:
    op: str  # arithmetic, comparison, 'and', 'or'
    left: Expr
    right: Expr
    start: int  # the operator's position


@dataclass(frozen=True)
class Cond:
    then: Expr
    test: Expr
    other: Expr
    start: int


@dataclass(frozen=True)
class Func:
    name: str
    args: tuple[Expr, ...]
    start: int


Expr = Num | Name | Unary | Binary | Cond | Func


# -- functions ----------------------------------------------------------------------------


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """The multiple of ``divisor`` nearest ``value``, never below ``min_value`` (default
    ``divisor``) nor more than 10% below ``value``: keras.applications' rounding of
    channel counts under a width multiplier (MobileNetV2, EfficientNet)."""
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * value else rounded)


@dataclass(frozen=True)
class Function:
    call: Callable[..., Any]
    arity: tuple[int, int | None]  # fewest and most arguments (None: any number)
    code: str  # the name in generated code
    needs: str = ""  # what the generated module must define or import: 'math', 'make_divisible'


FUNCTIONS: dict[str, Function] = {
    "min": Function(min, (2, None), "min"),
    "max": Function(max, (2, None), "max"),
    "abs": Function(abs, (1, 1), "abs"),
    "int": Function(int, (1, 1), "int"),
    "round": Function(round, (1, 1), "round"),
    "ceil": Function(math.ceil, (1, 1), "math.ceil", "math"),
    "floor": Function(math.floor, (1, 1), "math.floor", "math"),
    "make_divisible": Function(make_divisible, (2, 3), "make_divisible", "make_divisible"),
}
INT_ARGS = {"make_divisible": (1, 2)}  # argument positions that must be integers
# a tensor's size, in a layer's `when:` only (archc.passes.shapes evaluates it, where shapes are known)
SHAPE_FUNCTIONS = {"height": 0, "width": 1, "channels": 2}
for _name in SHAPE_FUNCTIONS:
    FUNCTIONS[_name] = Function(lambda shape: shape, (1, 1), _name)

# Python's precedence, lowest first; the printer parenthesises by it.
PRECEDENCE = {"if": 1, "or": 2, "and": 3, "not": 4, "cmp": 5, "+": 6, "-": 6, "*": 7, "/": 7, "//": 7, "%": 7, "unary": 8, "atom": 9}
COMPARISONS = ("<=", ">=", "==", "!=", "<", ">")
KEYWORDS = {"and", "or", "not", "if", "else", "true", "false"}


# -- parsing ------------------------------------------------------------------------------

TOKEN = re.compile(
    # names as Python identifiers are (a param may be called `größe`), numbers ASCII only
    r"\s*(?:(?P<num>(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)|(?P<name>[^\W\d]\w*)"
    r"|(?P<op>//|<=|>=|==|!=|[-+*/%<>(),]))"
)


@dataclass(frozen=True)
class Token:
    kind: str  # 'num', 'name', 'op', 'end'
    text: str
    start: int


def tokenize(text: str) -> list[Token]:
    tokens = []
    pos = 0
    while True:
        match = TOKEN.match(text, pos)
        if match is None:
            rest = text[pos:]
            if not rest.strip():
                return [*tokens, Token("end", "", len(text))]
            at = pos + len(rest) - len(rest.lstrip())
            raise ExprError(f"expected a number, a name, an operator or a parenthesis, found {text[at]!r}", at)
        kind = match.lastgroup or "end"
        if kind == "name" and not match.group(kind).isidentifier():  # '½' is a word character
            raise ExprError(f"expected a name, found {match.group(kind)!r}", match.start(kind))
        tokens.append(Token(kind, match.group(kind), match.start(kind)))
        pos = match.end()


class Parser:
    def __init__(self, text: str):
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.pos]

    def take(self, *texts: str) -> Token | None:
        tok = self.token
        if tok.kind in ("op", "name") and tok.text in texts:
            self.pos += 1
            return tok
        return None

    def expect(self, text: str) -> Token:
        tok = self.take(text)
        if tok is None:
            raise ExprError(f"expected '{text}', found {describe(self.token)}", self.token.start)
        return tok

    def parse(self) -> Expr:
        tree = self.expression()
        if self.token.kind != "end":
            raise ExprError(f"expected an operator or the end of the expression, found {describe(self.token)}", self.token.start)
        return tree

    def expression(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"expected nesting at most {MAX_DEPTH} deep, found deeper", self.token.start)
        then = self.or_test()
        if_tok = self.take("if")
        if if_tok:
            test = self.or_test()
            self.expect("else")
            then = Cond(then, test, self.expression(), if_tok.start)
        self.depth -= 1
        return then

    def or_test(self) -> Expr:
        left = self.and_test()
        while tok := self.take("or"):
            left = Binary("or", left, self.and_test(), tok.start)
        return left

    def and_test(self) -> Expr:
        left = self.not_test()
        while tok := self.take("and"):
            left = Binary("and", left, self.not_test(), tok.start)
        return left

    def not_test(self) -> Expr:
        if tok := self.take("not"):
            return Unary("not", self.not_test(), tok.start)
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.sum()
        if tok := self.take(*COMPARISONS):
            left = Binary(tok.text, left, self.sum(), tok.start)
            if self.token.text in COMPARISONS:
                raise ExprError(f"expected one comparison (join two with 'and'), found a second '{self.token.text}'", self.token.start)
        return left

    def sum(self) -> Expr:
        left = self.term()
        while tok := self.take("+", "-"):
            left = Binary(tok.text, left, self.term(), tok.start)
        return left

    def term(self) -> Expr:
        left = self.factor()
        while tok := self.take("*", "/", "//", "%"):
            left = Binary(tok.text, left, self.factor(), tok.start)
        return left

    def factor(self) -> Expr:
        if tok := self.take("-", "+"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExprError(f"expected nesting at most {MAX_DEPTH} deep, found deeper", tok.start)
            tree = Unary(tok.text, self.factor(), tok.start)
            self.depth -= 1
            return tree
        return self.atom()

    def atom(self) -> Expr:
        tok = self.token
        if tok.kind == "num":
            self.pos += 1
            number = float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
            if isinstance(number, float) and not math.isfinite(number):
                raise ExprError(f"expected a finite number, found {tok.text}", tok.start)
            return Num(number, tok.start)
        if tok.kind == "name" and tok.text in ("true", "false"):
            self.pos += 1
            return Num(tok.text == "true", tok.start)
        if tok.kind == "name" and tok.text not in KEYWORDS:
            self.pos += 1
            if self.take("("):
                return self.call(tok)
            return Name(tok.text, tok.start)
        if self.take("("):
            inner = self.expression()
            self.expect(")")
            return inner
        raise ExprError(f"expected a number, a name or '(', found {describe(tok)}", tok.start)

    def call(self, name: Token) -> Expr:
        if name.text not in FUNCTIONS:
            known = ", ".join(FUNCTIONS)
            raise ExprError(f"expected a function ({known}), found '{name.text}'{did_you_mean(name.text, FUNCTIONS)}", name.start)
        args: list[Expr] = []
        if not self.take(")"):
            args.append(self.expression())
            while self.take(","):
                args.append(self.expression())
            self.expect(")")
        low, high = FUNCTIONS[name.text].arity
        if len(args) < low or (high is not None and len(args) > high):
            wanted = f"{low}" if low == high else f"{low} or more" if high is None else f"{low} to {high}"
            raise ExprError(f"expected {wanted} arguments to {name.text}(), found {len(args)}", name.start)
        if name.text in SHAPE_FUNCTIONS and not isinstance(args[0], Name):
            raise ExprError(f"expected a tensor name as the argument of {name.text}(), found an expression", name.start)
        return Func(name.text, tuple(args), name.start)


def describe(tok: Token) -> str:
    return "the end of the expression" if tok.kind == "end" else f"'{tok.text}'"


@lru_cache(maxsize=4096)
def parse(text: str) -> Expr:
    """The AST of an expression (without its ``${`` ``}``); ExprError if malformed."""
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expected an expression of at most {MAX_LENGTH} characters, found {len(text)}", 0)
    if not text.strip():
        raise ExprError("expected an expression inside ${...}, found nothing", 0)
    return Parser(text).parse()


# -- evaluation ---------------------------------------------------------------------------


def evaluate(tree: Expr, symbols: Mapping[str, Any]) -> Any:
    """The value of ``tree`` with names looked up in ``symbols``; ExprError on an unknown
    name, a value of the wrong type, a division by zero or a non-finite result."""
    if isinstance(tree, Num):
        return tree.value
    if isinstance(tree, Name):
        if tree.name not in symbols:
            raise ExprError(
                f"expected a param, block argument or repeat index, found '{tree.name}'{did_you_mean(tree.name, symbols)}", tree.start
            )
        return symbols[tree.name]
    if isinstance(tree, Unary):
        value = evaluate(tree.operand, symbols)
        if tree.op == "not":
            return not _boolean(value, tree.operand)
        return -_number(value, tree.operand) if tree.op == "-" else _number(value, tree.operand)
    if isinstance(tree, Cond):
        test = _boolean(evaluate(tree.test, symbols), tree.test)
        return evaluate(tree.then if test else tree.other, symbols)
    if isinstance(tree, Binary):
        if tree.op in ("and", "or"):
            left = _boolean(evaluate(tree.left, symbols), tree.left)
            if left == (tree.op == "or"):
                return left
            return _boolean(evaluate(tree.right, symbols), tree.right)
        left = _number(evaluate(tree.left, symbols), tree.left)
        right = _number(evaluate(tree.right, symbols), tree.right)
        return _finite(_arithmetic(tree, left, right), tree)
    if tree.name in SHAPE_FUNCTIONS:
        return _size(tree, symbols)
    args = [_number(evaluate(arg, symbols), arg) for arg in tree.args]
    for i in INT_ARGS.get(tree.name, ()):
        if i < len(args) and (not isinstance(args[i], int) or args[i] < 1):
            raise ExprError(
                f"expected a positive integer as argument {i + 1} of {tree.name}(), found {show(args[i])}", _start(tree.args[i])
            )
    if tree.name in ("ceil", "floor", "round", "int"):
        _finite(args[0], tree.args[0])
    return _finite(FUNCTIONS[tree.name].call(*args), tree)


def _arithmetic(tree: Binary, left: int | float, right: int | float) -> Any:
    op = tree.op
    if op in ("/", "//", "%") and right == 0:
        raise ExprError(f"expected a non-zero divisor, found {show(right)} (in '{op}')", _start(tree.right))
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        return left / right
    if op == "//":
        return left // right
    if op == "%":
        return left % right
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right, "==": left == right, "!=": left != right}[op]


def _number(value: Any, tree: Expr) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExprError(f"expected a number, found {show(value)}{_origin(tree)}", _start(tree))
    return value


def _boolean(value: Any, tree: Expr) -> bool:
    if not isinstance(value, bool):
        raise ExprError(f"expected true or false, found {show(value)}{_origin(tree)}", _start(tree))
    return value


def _finite(value: Any, tree: Expr) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ExprError(f"expected a finite result, found {value}", _start(tree))
    if isinstance(value, int) and abs(value) > 10**18:
        raise ExprError(f"expected a result of at most 10**18 in size, found {show(value)}", _start(tree))
    return value


def _origin(tree: Expr) -> str:
    return f" (from {tree.name})" if isinstance(tree, Name) else ""


def _start(tree: Expr) -> int:
    """Where a subexpression begins in the text (a binary operation: at its left end)."""
    while isinstance(tree, (Binary, Cond)):
        tree = tree.left if isinstance(tree, Binary) else tree.then
    return tree.start


# -- inspection and printing --------------------------------------------------------------


def _size(tree: Func, symbols: Mapping[str, Any]) -> int:
    """``height(t)``, ``width(t)``, ``channels(t)``: ``symbols`` holds each tensor's shape
    (a tuple) where the shapes are known; anywhere else a tensor is not a value."""
    arg = tree.args[0]
    shape = symbols.get(arg.name) if isinstance(arg, Name) else None
    if not isinstance(shape, tuple):
        raise ExprError(f"expected {tree.name}() of a tensor name in a layer's when: only, found {tree.name}({arg.name})", tree.start)
    if len(shape) != 3:
        raise ExprError(f"expected {tree.name}() of a feature map, found '{arg.name}' of shape {'x'.join(map(str, shape))}", tree.start)
    return shape[SHAPE_FUNCTIONS[tree.name]]


def tensors(tree: Expr) -> set[str]:
    """The tensor names whose sizes an expression reads (the arguments of height() ...)."""
    own = {tree.args[0].name} if isinstance(tree, Func) and tree.name in SHAPE_FUNCTIONS else set()
    return own.union(*(tensors(p) for p in parts(tree)))


def parts(tree: Expr) -> tuple[Expr, ...]:
    """The subexpressions of ``tree``."""
    if isinstance(tree, Unary):
        return (tree.operand,)
    if isinstance(tree, Binary):
        return (tree.left, tree.right)
    if isinstance(tree, Cond):
        return (tree.then, tree.test, tree.other)
    return tree.args if isinstance(tree, Func) else ()


def names(tree: Expr) -> set[str]:
    """The names an expression reads."""
    own = {tree.name} if isinstance(tree, Name) else set()
    return own.union(*(names(p) for p in parts(tree)))


def needs(tree: Expr) -> set[str]:
    """What generated code must provide for the functions ``tree`` calls."""
    own = {FUNCTIONS[tree.name].needs} - {""} if isinstance(tree, Func) else set()
    return own.union(*(needs(p) for p in parts(tree)))


def to_python(tree: Expr, name: Callable[[str], str], size: Callable[[str, str], str] | None = None) -> str:
    """Python source for ``tree``, each name replaced by ``name(it)``, and each
    ``height(t)`` ... by ``size(function, t)`` (a backend's shape lookup);
    parentheses only where Python's precedence needs them, as one would write it by hand."""
    return _print(tree, name, size)[0]


def _print(tree: Expr, name: Callable[[str], str], size: Callable[[str, str], str] | None = None) -> tuple[str, int]:
    if isinstance(tree, Num):
        return repr(tree.value), PRECEDENCE["atom"]
    if isinstance(tree, Name):
        return name(tree.name), PRECEDENCE["atom"]
    if isinstance(tree, Func) and tree.name in SHAPE_FUNCTIONS and size is not None:
        return size(tree.name, tree.args[0].name), PRECEDENCE["atom"]
    if isinstance(tree, Func):
        return f"{FUNCTIONS[tree.name].code}({', '.join(_print(a, name, size)[0] for a in tree.args)})", PRECEDENCE["atom"]
    if isinstance(tree, Unary):
        level = PRECEDENCE["not" if tree.op == "not" else "unary"]
        operand = _wrap(tree.operand, name, level, size)
        return (f"not {operand}" if tree.op == "not" else f"{tree.op}{operand}"), level
    if isinstance(tree, Cond):
        level = PRECEDENCE["if"]
        return (
            f"{_wrap(tree.then, name, level + 1, size)} if {_wrap(tree.test, name, level + 1, size)} else {_wrap(tree.other, name, level, size)}",
            level,
        )
    level = PRECEDENCE["cmp" if tree.op in COMPARISONS else tree.op]
    # left-associative: a right operand of the same level needs parentheses (a - (b - c));
    # comparisons do not chain here, so both sides of one need them ((a < b) == c)
    left = level + 1 if tree.op in COMPARISONS else level
    return f"{_wrap(tree.left, name, left, size)} {tree.op} {_wrap(tree.right, name, level + 1, size)}", level


def _wrap(tree: Expr, name: Callable[[str], str], level: int, size: Callable[[str, str], str] | None = None) -> str:
    text, own = _print(tree, name, size)
    return f"({text})" if own < level else text


def spelled(ref: str) -> str:
    """A reference as the spec wrote it: ``$width`` or ``${32 * width}``."""
    return f"${ref}" if ref.isidentifier() else f"${{{ref}}}"
