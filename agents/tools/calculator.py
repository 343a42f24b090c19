"""The `calculator` tool: arithmetic evaluated by simpleeval's tree walker, never by eval().

Only numbers, arithmetic operators, a few math functions and two constants exist in it: names,
attributes, subscripts, strings, comparisons, lambdas and statements are refused before anything
runs. Powers and results are bounded so that one call can't spend the worker's CPU or memory.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

import simpleeval

from agents.tools.base import Tool, ToolContext, ToolError

EXPRESSION_MAX_CHARS = 500
EXPONENT_MAX = 10_000
RESULT_MAX = 1e300  # above it a result is refused (and a float would soon be inf)

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
# "17% of 2340", "17 percent of 2340": N/100 times what follows
_PERCENT_OF = re.compile(_NUMBER + r"\s*(?:%|\bpercent\b)\s*of\b", re.IGNORECASE)
# "2340 * 17%", "17% * 2340", "(17%)": a % not followed by an operand is a percentage;
# between two operands ("10 % 3") it stays the remainder
_PERCENT = re.compile(_NUMBER + r"\s*(?:%|\bpercent\b)(?!\s*[\w.(])", re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_CALL = re.compile(r"[A-Za-z_]\s*\(")
_SYMBOLS = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-"})


def _power(base: Any, exponent: Any) -> Any:
    if abs(exponent) > EXPONENT_MAX:
        raise simpleeval.NumberTooHigh(f"the exponent {exponent} is too large (at most {EXPONENT_MAX})")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(RESULT_MAX):
        raise simpleeval.NumberTooHigh(f"{base} ** {exponent} is too large")
    return base**exponent


_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
    ast.BitXor: _power,  # people write 2^10 for a power; there is no xor here
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}

_NAMES = {"pi": math.pi, "e": math.e}


def expression_normalise(expression: str) -> str:
    """The expression as Python arithmetic: percentages, ^, ×, ÷ and 2,340 rewritten."""
    text = expression.translate(_SYMBOLS).strip().rstrip("=?").strip()
    text = _PERCENT_OF.sub(r"(\1/100)*", text)
    text = _PERCENT.sub(r"(\1/100)", text)
    if not _CALL.search(text):  # without a call a comma can only separate thousands
        text = _THOUSANDS.sub("", text)
    return text


def _evaluator() -> simpleeval.SimpleEval:
    """A fresh evaluator (they keep the expression in an attribute: not for sharing threads)."""
    evaluator = simpleeval.SimpleEval(operators=dict(_OPERATORS), functions=dict(_FUNCTIONS), names=_NAMES)
    allowed = (ast.UnaryOp, ast.BinOp, ast.Call, ast.Name, ast.Constant)
    evaluator.nodes = {kind: handler for kind, handler in evaluator.nodes.items() if kind in allowed}

    def number(node: ast.Constant) -> Any:
        if type(node.value) not in (int, float):  # no strings, bytes, complex, True or None
            raise simpleeval.FeatureNotAvailable(f"{node.value!r} is not a number")
        return node.value

    evaluator.nodes[ast.Constant] = number
    return evaluator


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression, or ToolError saying what is wrong with it."""
    if len(expression) > EXPRESSION_MAX_CHARS:
        raise ToolError(f"the expression is longer than {EXPRESSION_MAX_CHARS} characters")
    text = expression_normalise(expression)
    if not text:
        raise ToolError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")  # one expression: statements are a syntax error
        value = _evaluator().eval(text, previously_parsed=tree.body)
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression ({exc.msg})") from None
    except simpleeval.NameNotDefined as exc:
        raise ToolError(f"unknown name {exc.name!r} (known: {', '.join(_NAMES)})") from None
    except simpleeval.FunctionNotDefined as exc:
        raise ToolError(f"unknown function {exc.func_name!r} (known: {', '.join(_FUNCTIONS)})") from None
    except simpleeval.NumberTooHigh as exc:
        raise ToolError(str(exc)) from None
    except simpleeval.InvalidExpression as exc:
        raise ToolError(f"not supported here: {exc}") from None
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ToolError(f"cannot compute it: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError("the expression has no numeric value")
    if not math.isfinite(value) or abs(value) > RESULT_MAX:
        raise ToolError("the result is too large")
    if isinstance(value, float):
        value = float(f"{value:.12g}")  # 0.1 + 0.2 is 0.3 to a person
        if value.is_integer() and abs(value) < 2**53:
            value = int(value)
    return value


class Calculator(Tool):
    """Exact arithmetic, so the model does not do sums in its head."""

    name = "calculator"
    description = (
        "Evaluate an arithmetic expression and return its exact value; use it for any "
        "calculation instead of working it out yourself. Accepts numbers, + - * / "
        "// (floor division), % (remainder), ** or ^ (power), parentheses, and percentages: "
        '"17% of 2340", "2340 * 17%" and "17% * 2340" (N% means N/100; a % between two numbers, '
        'as in "10 % 3", is the remainder). Functions: sqrt, abs, round(x, digits), min, max, '
        "log(x) (natural) or log(x, base), log10, exp, sin, cos, tan (radians), floor, ceil; "
        f"constants pi and e. No variables, units or text. At most {EXPRESSION_MAX_CHARS} characters."
    )
    parameters = {
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": 'The expression, e.g. "17% of 2340" or "(3 + 4) * sqrt(2)".',
                "minLength": 1,
                "maxLength": EXPRESSION_MAX_CHARS,
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    }
    side_effects = False
    idempotent = True

    def run(self, ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
        """Evaluate `expression`: {"expression": ..., "result": number}."""
        expression = args.get("expression")
        if not isinstance(expression, str):
            raise ToolError("expression must be a string")
        return {"expression": expression, "result": calculate(expression)}
