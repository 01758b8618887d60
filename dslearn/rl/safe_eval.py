"""Evaluating a model's arithmetic without ``eval``: an AST whitelist with exact, bounded numbers.

A reward function reads text a policy wrote — text that RL will push towards whatever earns reward.
``eval`` (and ``sympy.sympify``, which calls it) would run that text as code. Instead the expression is
parsed with ``ast.parse(mode="eval")`` and walked node by node; only these nodes are allowed:

    integer literals          Constant(int)            (no floats, strings, names, calls, attributes)
    + − × ÷                   BinOp(Add/Sub/Mult/Div)  ÷ is exact (fractions.Fraction)
    unary minus / plus        UnaryOp(USub/UAdd)
    ** (optional)             BinOp(Pow)               integer exponent 0..max_exponent only

Every intermediate value is bounded (|numerator|, |denominator| ≤ max_abs), the text length and the
tree depth are bounded, and division by zero is an error — so no input can make the evaluator slow or
huge (``9**9**9`` is refused before it is computed).
"""

from __future__ import annotations

import ast
from fractions import Fraction


class UnsafeExpression(ValueError):
    """The text is not an allowed arithmetic expression (the message says why)."""


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def safe_eval(text: str, allow_pow: bool = False, max_exponent: int = 8, max_abs: int = 10**12,
              max_len: int = 200, max_depth: int = 32) -> Fraction:
    """The exact value of an arithmetic expression, or UnsafeExpression."""
    if not isinstance(text, str):
        raise UnsafeExpression(f"expected a string, got {type(text).__name__}")
    if len(text) > max_len:
        raise UnsafeExpression(f"expression longer than {max_len} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise UnsafeExpression(f"not an expression: {e.msg}") from None

    def check(v: Fraction) -> Fraction:
        if abs(v.numerator) > max_abs or v.denominator > max_abs:
            raise UnsafeExpression(f"intermediate value exceeds {max_abs:.0e}")
        return v

    def walk(node: ast.AST, depth: int) -> Fraction:
        if depth > max_depth:
            raise UnsafeExpression(f"expression nested deeper than {max_depth}")
        if isinstance(node, ast.Expression):
            return walk(node.body, depth + 1)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return check(Fraction(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = walk(node.operand, depth + 1)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            if type(node.op) in _BINOPS:
                return check(_BINOPS[type(node.op)](walk(node.left, depth + 1), walk(node.right, depth + 1)))
            if isinstance(node.op, ast.Div):
                num, den = walk(node.left, depth + 1), walk(node.right, depth + 1)
                if den == 0:
                    raise UnsafeExpression("division by zero")
                return check(num / den)
            if isinstance(node.op, ast.Pow) and allow_pow:
                base, exp = walk(node.left, depth + 1), walk(node.right, depth + 1)
                if exp.denominator != 1 or not 0 <= exp <= max_exponent:
                    raise UnsafeExpression(f"exponents must be integers in 0..{max_exponent}")
                if abs(base.numerator) > max_abs ** (1 / max(int(exp), 1)) + 1:
                    raise UnsafeExpression(f"power exceeds {max_abs:.0e}")
                return check(base ** int(exp))
        raise UnsafeExpression(f"{type(node).__name__} is not allowed in an arithmetic answer")

    return walk(tree, 0)


def numbers_used(text: str) -> list[int]:
    """The integer literals of an expression (for Countdown's "use each number at most once")."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise UnsafeExpression(f"not an expression: {e.msg}") from None
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and type(n.value) is int]
