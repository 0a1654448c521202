"""Deterministic row expressions, as UPDATE assignments carry them.

An expression is a nested tuple, so it pickles and compares deterministically:

* ``('lit', value)``: a literal (None, int, Decimal, float, str, bytes)
* ``('col', name)``: the row's current value of a column
* ``('neg', e)``: unary minus
* ``('bin', op, a, b)``: ``op`` one of ``+ - * / DIV % `` with MySQL's NULL rules
* ``('fn', NAME, (args...))``: one of :data:`FUNCTIONS`

Only what can be evaluated from the row alone is representable: anything that
reads the clock, randomness, the session or other rows is rejected earlier by
the SQL stage as ``needs-lookup``.
"""

import decimal
from typing import Any, Callable, Dict, Iterator, Mapping

__all__ = ['MissingColumn', 'FUNCTIONS', 'lit', 'col', 'evaluate', 'substitute',
           'is_literal', 'literal_value', 'leaf_tags', 'to_sql']

_CONTEXT = decimal.Context(prec=65)  # MySQL DECIMAL holds up to 65 digits


class MissingColumn(LookupError):
    """The expression reads a column whose current value is not known."""


def lit(value: Any) -> tuple:
    return ('lit', value)


def col(name: str) -> tuple:
    return ('col', name)


def is_literal(expr: tuple) -> bool:
    return expr[0] == 'lit'


def literal_value(expr: tuple) -> Any:
    return expr[1]


def _number(value):
    """MySQL arithmetic operands: numbers stay, numeric strings convert."""
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, (int, decimal.Decimal)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        try:
            return decimal.Decimal(text.strip() or '0')
        except decimal.InvalidOperation:
            return 0  # MySQL reads a non-numeric string as 0 in arithmetic
    return value


def _arith(op: str, a, b):
    if a is None or b is None:
        return None
    a, b = _number(a), _number(b)
    if op == '+':
        return _CONTEXT.add(a, b) if _is_dec(a, b) else a + b
    if op == '-':
        return _CONTEXT.subtract(a, b) if _is_dec(a, b) else a - b
    if op == '*':
        return _CONTEXT.multiply(a, b) if _is_dec(a, b) else a * b
    if b == 0:
        return None  # MySQL: division by zero is NULL
    if op == '/':
        return _CONTEXT.divide(decimal.Decimal(a), decimal.Decimal(b))
    if op == 'DIV':
        quotient = decimal.Decimal(a) / decimal.Decimal(b)
        return int(quotient.to_integral_value(rounding=decimal.ROUND_DOWN))
    if op == '%':
        # MySQL's MOD takes the sign of the dividend, as Decimal's % does.
        remainder = decimal.Decimal(a) % decimal.Decimal(b)
        return int(remainder) if isinstance(a, int) and isinstance(b, int) else remainder
    raise ValueError(f'unknown operator {op!r}')


def _is_dec(a, b) -> bool:
    return isinstance(a, decimal.Decimal) or isinstance(b, decimal.Decimal)


def _concat(*args):
    if any(a is None for a in args):
        return None
    return ''.join(a.decode() if isinstance(a, bytes) else str(a) for a in args)


def _coalesce(*args):
    return next((a for a in args if a is not None), None)


def _greatest(*args):
    return None if any(a is None for a in args) else max(args)


def _least(*args):
    return None if any(a is None for a in args) else min(args)


def _upper(a):
    return None if a is None else str(a).upper()


def _lower(a):
    return None if a is None else str(a).lower()


def _abs(a):
    return None if a is None else abs(_number(a))


FUNCTIONS: Dict[str, Callable[..., Any]] = {
    'CONCAT': _concat,
    'COALESCE': _coalesce,
    'IFNULL': lambda a, b: b if a is None else a,
    'GREATEST': _greatest,
    'LEAST': _least,
    'UPPER': _upper,
    'LOWER': _lower,
    'ABS': _abs,
}


def evaluate(expr: tuple, row: Mapping[str, Any]) -> Any:
    """Value of ``expr`` on ``row``; raises MissingColumn for an unknown column."""
    tag = expr[0]
    if tag == 'lit':
        return expr[1]
    if tag == 'col':
        try:
            return row[expr[1]]
        except KeyError:
            raise MissingColumn(expr[1]) from None
    if tag == 'neg':
        value = evaluate(expr[1], row)
        return None if value is None else -_number(value)
    if tag == 'bin':
        return _arith(expr[1], evaluate(expr[2], row), evaluate(expr[3], row))
    if tag == 'fn':
        return FUNCTIONS[expr[1]](*(evaluate(arg, row) for arg in expr[2]))
    raise ValueError(f'not an expression: {expr!r}')


def substitute(expr: tuple, known: Mapping[str, tuple]) -> tuple:
    """``expr`` with columns in ``known`` replaced by their expressions, folded
    to a literal where every input is now known."""
    tag = expr[0]
    if tag == 'lit':
        return expr
    if tag == 'col':
        return known.get(expr[1], expr)
    if tag == 'neg':
        inner = substitute(expr[1], known)
        result = ('neg', inner)
    elif tag == 'bin':
        result = ('bin', expr[1], substitute(expr[2], known), substitute(expr[3], known))
    elif tag == 'fn':
        result = ('fn', expr[1], tuple(substitute(arg, known) for arg in expr[2]))
    else:
        raise ValueError(f'not an expression: {expr!r}')
    if _all_literal(result):
        return lit(evaluate(result, {}))
    return result


def leaf_tags(expr: tuple) -> Iterator[str]:
    """The tags of an expression's leaves ('lit', 'col', or others a caller
    adds, such as the SQL stage's 'param')."""
    tag = expr[0]
    if tag == 'neg':
        yield from leaf_tags(expr[1])
    elif tag == 'bin':
        yield from leaf_tags(expr[2])
        yield from leaf_tags(expr[3])
    elif tag == 'fn':
        for arg in expr[2]:
            yield from leaf_tags(arg)
    else:
        yield tag


def _all_literal(expr: tuple) -> bool:
    return all(tag == 'lit' for tag in leaf_tags(expr))


def to_sql(expr: tuple) -> str:
    """Readable MySQL-like text of an expression (for backups and notifications)."""
    tag = expr[0]
    if tag == 'lit':
        value = expr[1]
        if value is None:
            return 'NULL'
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return str(value)
    if tag == 'col':
        return '`' + expr[1].replace('`', '``') + '`'
    if tag == 'neg':
        return f'-({to_sql(expr[1])})'
    if tag == 'bin':
        return f'({to_sql(expr[2])} {expr[1]} {to_sql(expr[3])})'
    return f'{expr[1]}({", ".join(to_sql(arg) for arg in expr[2])})'
