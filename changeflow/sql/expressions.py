"""Deterministic row expressions, as UPDATE assignments and WHERE predicates carry them.

An expression is a nested tuple, so it pickles and compares deterministically:

* ``('lit', value)``: a literal (None, int, Decimal, float, str, bytes)
* ``('col', name)``: the row's current value of a column
* ``('neg', e)``: unary minus
* ``('bin', op, a, b)``: ``op`` one of ``+ - * / DIV % `` with MySQL's NULL rules
* ``('fn', NAME, (args...))``: one of :data:`FUNCTIONS`, or an operator of
  :data:`OPERATORS` (comparisons and logic, NAME the operator: ``'='``,
  ``'<=>'``, ``'AND'``, ``'IS NULL'``, ``'IN'``, ``'BETWEEN'``, ``'LIKE'``, ...)

Values follow MySQL (MariaDB 10.11, default ``utf8mb4_general_ci``
collation): comparisons and logic give 1, 0 or NULL (None) with SQL's
three-valued logic; a string compared to a number is read as a number by its
numeric prefix ('12abc' is 12, 'abc' is 0); strings compare case- and
accent-insensitively with trailing spaces ignored (PAD SPACE); a binary
string (bytes) compares byte by byte. A value MySQL would refuse raises
:class:`ExpressionError`, a ValueError the sinks dead-letter.

Only what can be evaluated from the row alone is representable: anything that
reads the clock, randomness, the session or other rows is rejected earlier by
the SQL stage as ``needs-lookup``.
"""

import datetime
import decimal
import re
import unicodedata
from typing import Any, Callable, Dict, Iterator, Mapping

from changeflow.sql.literals import HexLiteral

__all__ = ['MissingColumn', 'ExpressionError', 'FUNCTIONS', 'OPERATORS', 'lit', 'col',
           'evaluate', 'substitute', 'truthy', 'is_literal', 'literal_value', 'leaf_tags',
           'to_sql']

_CONTEXT = decimal.Context(prec=65)  # MySQL DECIMAL holds up to 65 digits


class MissingColumn(LookupError):
    """The expression reads a column whose current value is not known."""


class ExpressionError(ValueError):
    """A value MySQL refuses in an expression (BIGINT overflow, a bad argument):
    the source statement succeeded, so the replica's row cannot be the source's."""


def lit(value: Any) -> tuple:
    return ('lit', value)


def col(name: str) -> tuple:
    return ('col', name)


def is_literal(expr: tuple) -> bool:
    return expr[0] == 'lit'


def literal_value(expr: tuple) -> Any:
    return expr[1]


# Values in numeric context -------------------------------------------------

_NUMERIC_PREFIX = re.compile(r'[ \t\n\r\f\v]*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?')
_DOUBLE_MAX = 1.7976931348623157e308


def _text_of_bytes(value: bytes) -> str:
    return bytes(value).decode('utf-8', 'replace')


def _prefix_double(text: str) -> float:
    """A string in numeric context: its longest numeric prefix ('12abc' -> 12,
    'abc' -> 0, '1e400' -> the largest double), as MySQL reads it."""
    number = _NUMERIC_PREFIX.match(text).group(1)
    if not number:
        return 0.0
    result = float(number)
    if result in (float('inf'), float('-inf')):
        return _DOUBLE_MAX if result > 0 else -_DOUBLE_MAX
    return result


def _temporal_number(value):
    """A DATE as YYYYMMDD, a DATETIME as YYYYMMDDHHMMSS[.ffffff], a TIME as HHMMSS."""
    if isinstance(value, datetime.datetime):
        whole = int(value.strftime('%Y%m%d%H%M%S'))
        return decimal.Decimal(whole) + decimal.Decimal(value.microsecond).scaleb(-6) \
            if value.microsecond else whole
    if isinstance(value, datetime.date):
        return int(value.strftime('%Y%m%d'))
    if isinstance(value, datetime.time):
        return int(value.strftime('%H%M%S'))
    seconds = int(value.total_seconds())  # timedelta: a TIME as drivers return it
    sign, seconds = (-1 if seconds < 0 else 1), abs(seconds)
    return sign * (seconds // 3600 * 10000 + seconds % 3600 // 60 * 100 + seconds % 60)


def _numeric(value):
    """``value`` in numeric context: int, Decimal or float (None stays None).

    Numbers stay as they are (a bool is 0/1), a hexadecimal literal is its
    unsigned integer, a string or binary string its numeric prefix as a
    double, a temporal value its number (YYYYMMDD...)."""
    if value is None or isinstance(value, (int, decimal.Decimal, float)):
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, HexLiteral):
        return int.from_bytes(value, 'big')
    if isinstance(value, str):
        return _prefix_double(value)
    if isinstance(value, (bytes, bytearray)):
        return _prefix_double(_text_of_bytes(value))
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        return _temporal_number(value)
    raise ExpressionError(f'{type(value).__name__} value in numeric context')


def truthy(value) -> bool:
    """MySQL WHERE truth: not NULL and not zero in numeric context ('abc' and
    '0.0' are false, '1abc' is true)."""
    if value is None:
        return False
    number = _numeric(value)
    return number != 0


def _bool3(value):
    """SQL three-valued truth: None (NULL), True or False."""
    return None if value is None else truthy(value)


def _int3(truth):
    return None if truth is None else int(truth)


# Comparison -----------------------------------------------------------------

def _fold_char(char: str) -> str:
    base = unicodedata.normalize('NFD', char)[0]
    upper = base.upper()
    return upper if len(upper) == 1 else _FOLD_SPECIAL.get(base, base)


_FOLD_SPECIAL = {'ß': 'S'}  # utf8mb4_general_ci: 'ß' = 's'


def _collation_key(text: str) -> str:
    """``text`` as utf8mb4_general_ci compares it: case and accents folded
    ('Ä' = 'a'), trailing spaces ignored (PAD SPACE)."""
    text = text.rstrip(' ')
    if text.isascii():
        return text.upper()
    return ''.join(map(_fold_char, text))


def _as_text(value) -> str:
    """A value in string context (numbers as MySQL prints them)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return _text_of_bytes(value)
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return format(value, 'f')
    if isinstance(value, float):
        return double_text(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=' ')
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        seconds = int(value.total_seconds())
        sign, seconds = ('-' if seconds < 0 else ''), abs(seconds)
        return f'{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'
    raise ExpressionError(f'{type(value).__name__} value in string context')


def _as_bytes(value) -> bytes:
    """A value in binary-string context: bytes as they are, anything else its UTF-8 text."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return _as_text(value).encode('utf-8', 'surrogateescape')


def double_text(value: float) -> str:
    """A DOUBLE as MariaDB prints it: shortest round-trip digits, positional
    for exponents -15 to 14 ('0.00001', '100000000000000'), else
    '1.2345678901234568e17' / '1e-16'."""
    if value != value or value in (float('inf'), float('-inf')):
        raise ExpressionError('not a finite number')
    if value == 0:
        return '0'
    number = decimal.Decimal(repr(value))
    exponent = number.adjusted()
    if -15 <= exponent < 15:
        text = format(number, 'f')
        return text.rstrip('0').rstrip('.') if '.' in text else text
    digits = number.as_tuple().digits
    mantissa = str(digits[0]) + ('.' + ''.join(map(str, digits[1:])).rstrip('0')
                                 if any(digits[1:]) else '')
    return ('-' if number < 0 else '') + f'{mantissa}e{exponent}'


def _temporal(value):
    """A date/datetime as a datetime, a string parsed as one; None if it is neither."""
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(
            datetime.timezone.utc).replace(tzinfo=None)
    if isinstance(value, datetime.date):
        return datetime.datetime(value.year, value.month, value.day)
    if isinstance(value, (str, bytes)):
        text = (value if isinstance(value, str) else _text_of_bytes(value)).strip()
        try:
            return _temporal(datetime.datetime.fromisoformat(text))
        except ValueError:
            return None
    return None


def _sign(x, y) -> int:
    return (x > y) - (x < y)


def _compare(a, b):
    """-1, 0 or 1 as MySQL orders ``a`` and ``b``; None when either is NULL.

    Two strings: by the collation; a binary string (bytes, a hexadecimal
    literal not compared to a number) with a string: byte by byte; a
    date/datetime with a string: as date-times; integers and decimals
    exactly; otherwise as doubles (a string by its numeric prefix)."""
    if a is None or b is None:
        return None
    a_text, b_text = isinstance(a, (str, bytes)), isinstance(b, (str, bytes))
    if a_text and b_text:
        if isinstance(a, str) and isinstance(b, str):
            return _sign(_collation_key(a), _collation_key(b))
        return _sign(_as_bytes(a), _as_bytes(b))
    a_time = isinstance(a, (datetime.date, datetime.datetime))
    b_time = isinstance(b, (datetime.date, datetime.datetime))
    if a_time or b_time:
        x, y = _temporal(a), _temporal(b)
        if x is not None and y is not None:
            return _sign(x, y)
        if a_text or b_text:  # a string that is not a date-time: as strings
            return _sign(_collation_key(_as_text(a)), _collation_key(_as_text(b)))
    x, y = _numeric(a), _numeric(b)
    if isinstance(x, float) or isinstance(y, float):
        return _sign(float(x), float(y))
    return _sign(x, y)  # int and Decimal compare exactly


def _comparison(test: Callable[[int], bool]) -> Callable[[Any, Any], Any]:
    def compare(a, b):
        order = _compare(a, b)
        return None if order is None else int(test(order))
    return compare


def _null_safe_equal(a, b) -> int:
    if a is None or b is None:
        return int(a is None and b is None)
    return int(_compare(a, b) == 0)


def _between(value, low, high):
    above, below = _compare(value, low), _compare(value, high)
    return _and_values(None if above is None else above >= 0,
                       None if below is None else below <= 0)


def _and_values(*truths):
    if any(t is False for t in truths):
        return 0
    return None if any(t is None for t in truths) else 1


def _in(value, *candidates):
    """``value IN (candidates)``: 1 if one equals it, else NULL if a NULL is
    among them (or value is NULL), else 0."""
    if value is None:
        return None
    seen_null = False
    for candidate in candidates:
        order = _compare(value, candidate)
        if order == 0:
            return 1
        seen_null = seen_null or order is None
    return None if seen_null else 0


def _like(value, pattern, escape='\\'):
    """``value LIKE pattern ESCAPE escape``: ``%`` any run, ``_`` one character;
    case- and accent-insensitive (no PAD SPACE: trailing spaces count); byte
    by byte when either side is a binary string."""
    if value is None or pattern is None or escape is None:
        return None
    binary = isinstance(value, bytes) or isinstance(pattern, bytes)
    if binary:  # one latin-1 character per byte
        value = _as_bytes(value).decode('latin-1')
        pattern = _as_bytes(pattern).decode('latin-1')
        escape = _as_bytes(escape).decode('latin-1')
    else:
        value, pattern, escape = _as_text(value), _as_text(pattern), _as_text(escape)
    if len(escape) > 1:
        raise ExpressionError('incorrect arguments to ESCAPE')
    regex = _like_regex(pattern, escape, binary)
    return int(regex.fullmatch(value if binary else _like_fold(value)) is not None)


def _like_fold(text: str) -> str:
    return text.upper() if text.isascii() else ''.join(map(_fold_char, text))


def _like_regex(pattern: str, escape: str, binary: bool):
    parts = []
    chars = iter(pattern)
    for char in chars:
        if escape and char == escape:
            char = next(chars, escape)
            parts.append(re.escape(char if binary else _like_fold(char)))
        elif char == '%':
            parts.append('.*')
        elif char == '_':
            parts.append('.')
        else:
            parts.append(re.escape(char if binary else _like_fold(char)))
    return re.compile(''.join(parts), re.S)


def _is(test: Callable[[Any], bool]) -> Callable[[Any], int]:
    return lambda value: int(test(value))


def _not(value):
    truth = _bool3(value)
    return None if truth is None else int(not truth)


def _xor(a, b):
    x, y = _bool3(a), _bool3(b)
    return None if x is None or y is None else int(x != y)


# Operators evaluated on argument values; AND / OR are in _LAZY (they stop at
# the first operand that decides).
OPERATORS: Dict[str, Callable[..., Any]] = {
    '=': _comparison(lambda order: order == 0),
    '<=>': _null_safe_equal,
    '<>': _comparison(lambda order: order != 0),
    '<': _comparison(lambda order: order < 0),
    '<=': _comparison(lambda order: order <= 0),
    '>': _comparison(lambda order: order > 0),
    '>=': _comparison(lambda order: order >= 0),
    'IS NULL': _is(lambda value: value is None),
    'IS NOT NULL': _is(lambda value: value is not None),
    'IS TRUE': _is(lambda value: _bool3(value) is True),
    'IS NOT TRUE': _is(lambda value: _bool3(value) is not True),
    'IS FALSE': _is(lambda value: _bool3(value) is False),
    'IS NOT FALSE': _is(lambda value: _bool3(value) is not False),
    'BETWEEN': _between,
    'IN': _in,
    'LIKE': _like,
    'NOT': _not,
    'XOR': _xor,
}


def _and(args):
    seen_null = False
    for arg in args:
        truth = _bool3(arg())
        if truth is False:
            return 0
        seen_null = seen_null or truth is None
    return None if seen_null else 1


def _or(args):
    seen_null = False
    for arg in args:
        truth = _bool3(arg())
        if truth is True:
            return 1
        seen_null = seen_null or truth is None
    return None if seen_null else 0


# Forms that evaluate only the arguments they need: each gets one thunk per argument.
_LAZY: Dict[str, Callable[..., Any]] = {
    'AND': _and,
    'OR': _or,
}


# Arithmetic -----------------------------------------------------------------

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


# Functions ------------------------------------------------------------------

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
    **OPERATORS,
}


def evaluate(expr: tuple, row: Mapping[str, Any]) -> Any:
    """Value of ``expr`` on ``row``; raises MissingColumn for an unknown column
    and ExpressionError (a ValueError) for a value MySQL refuses."""
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
        name, args = expr[1], expr[2]
        lazy = _LAZY.get(name)
        if lazy is not None:
            return lazy([lambda arg=arg: evaluate(arg, row) for arg in args])
        function = FUNCTIONS.get(name)
        if function is None:
            raise ExpressionError(f'unknown function {name}')
        return function(*(evaluate(arg, row) for arg in args))
    raise ValueError(f'not an expression: {expr!r}')


def substitute(expr: tuple, known: Mapping[str, tuple]) -> tuple:
    """``expr`` with columns in ``known`` replaced by their expressions, folded
    to a literal where every input is now known (and its value is one MySQL
    accepts: an error is left for the evaluation on the row to report)."""
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
        try:
            return lit(evaluate(result, {}))
        except (ArithmeticError, ValueError):
            return result
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


_INFIX = {'=', '<=>', '<>', '<', '<=', '>', '>=', 'AND', 'OR', 'XOR'}


def to_sql(expr: tuple) -> str:
    """Readable MySQL-like text of an expression (for backups and notifications)."""
    tag = expr[0]
    if tag == 'lit':
        value = expr[1]
        if value is None:
            return 'NULL'
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        if isinstance(value, bytes):
            return f"X'{value.hex().upper()}'"
        return str(value)
    if tag == 'col':
        return '`' + expr[1].replace('`', '``') + '`'
    if tag == 'neg':
        return f'-({to_sql(expr[1])})'
    if tag == 'bin':
        return f'({to_sql(expr[2])} {expr[1]} {to_sql(expr[3])})'
    name, args = expr[1], [to_sql(arg) for arg in expr[2]]
    if name in _INFIX:
        return '(' + f' {name} '.join(args) + ')'
    if name.startswith('IS '):
        return f'({args[0]} {name})'
    if name == 'NOT':
        return f'(NOT {args[0]})'
    if name == 'BETWEEN':
        return f'({args[0]} BETWEEN {args[1]} AND {args[2]})'
    if name == 'IN':
        return f'({args[0]} IN ({", ".join(args[1:])}))'
    if name == 'LIKE':
        return f'({args[0]} LIKE {args[1]}' + (f' ESCAPE {args[2]})' if len(args) > 2 else ')')
    return f'{name}({", ".join(args)})'
