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
import functools
import math
import re
import unicodedata
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

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
    if isinstance(value, float) and not math.isfinite(value):
        raise ExpressionError('not a finite number')  # MySQL stores no NaN or infinity
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


def _order(x, y) -> int:
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
            return _order(_collation_key(a), _collation_key(b))
        return _order(_as_bytes(a), _as_bytes(b))
    a_time = isinstance(a, (datetime.date, datetime.datetime))
    b_time = isinstance(b, (datetime.date, datetime.datetime))
    if a_time or b_time:
        x, y = _temporal(a), _temporal(b)
        if x is not None and y is not None:
            return _order(x, y)
        if a_text or b_text:  # a string that is not a date-time: as strings
            return _order(_collation_key(_as_text(a)), _collation_key(_as_text(b)))
    x, y = _numeric(a), _numeric(b)
    if isinstance(x, float) or isinstance(y, float):
        return _order(float(x), float(y))
    return _order(x, y)  # int and Decimal compare exactly


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


# Arithmetic -----------------------------------------------------------------

_SIGNED = (-2 ** 63, 2 ** 63 - 1)
_BIGINT_MIN, _BIGINT_MAX = _SIGNED
_UNSIGNED = (0, 2 ** 64 - 1)
_DIV_PRECISION_INCREMENT = 4   # MariaDB's default div_precision_increment
_MAX_DECIMAL_SCALE = 38        # MariaDB's largest DECIMAL scale


def _integer_result(value: int, *operands, what: str = 'BIGINT') -> int:
    """An integer result in MySQL's range: BIGINT UNSIGNED when an operand is
    beyond BIGINT (an unsigned value), else BIGINT; outside it is an error."""
    unsigned = any(isinstance(o, int) and o > _SIGNED[1] for o in operands)
    low, high = _UNSIGNED if unsigned else _SIGNED
    if not low <= value <= high:
        raise ExpressionError(f'{what}{" UNSIGNED" if unsigned else ""} value is out of range')
    return value


def _double_result(value: float) -> float:
    if value != value or value in (float('inf'), float('-inf')):
        raise ExpressionError('DOUBLE value is out of range')
    return value


def _scale(number) -> int:
    return max(0, -number.as_tuple().exponent) if isinstance(number, decimal.Decimal) else 0


def _operands(a, b):
    """The operands in numeric context, and the kind of the result: 'float' when
    either is a double (a string reads as one), 'decimal', else 'int'."""
    x, y = _numeric(a), _numeric(b)
    if isinstance(x, float) or isinstance(y, float):
        return float(x), float(y), 'float'
    if isinstance(x, decimal.Decimal) or isinstance(y, decimal.Decimal):
        return decimal.Decimal(x), decimal.Decimal(y), 'decimal'
    return x, y, 'int'


def _arith(op: str, a, b):
    """``a op b`` as MySQL computes it: NULL in, NULL out; integers exact and
    range-checked (BIGINT overflow is an error); a DECIMAL exact, ``/`` with
    div_precision_increment more digits of scale (1/3 = 0.3333); a double
    (a string operand is one, read by its numeric prefix) as a double;
    division by zero is NULL."""
    if a is None or b is None:
        return None
    x, y, kind = _operands(a, b)
    if op in ('+', '-', '*'):
        if kind == 'float':
            return _double_result(x + y if op == '+' else x - y if op == '-' else x * y)
        if kind == 'decimal':
            return (_CONTEXT.add if op == '+' else _CONTEXT.subtract if op == '-'
                    else _CONTEXT.multiply)(x, y)
        return _integer_result(x + y if op == '+' else x - y if op == '-' else x * y, x, y)
    if y == 0:
        return None  # MySQL: division by zero is NULL
    if op == '/':
        if kind == 'float':
            return _double_result(x / y)
        scale = min(_scale(x) + _DIV_PRECISION_INCREMENT, _MAX_DECIMAL_SCALE)
        quotient = _CONTEXT.divide(decimal.Decimal(x), decimal.Decimal(y))
        return quotient.quantize(decimal.Decimal(1).scaleb(-scale), rounding=decimal.ROUND_HALF_UP,
                                 context=_CONTEXT)
    if op == 'DIV':
        if kind == 'int':
            quotient = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)
        else:
            exact = decimal.Decimal(x) / decimal.Decimal(y) if kind == 'decimal' else x / y
            if kind == 'float' and abs(exact) >= 2 ** 64:
                raise ExpressionError('BIGINT value is out of range')
            quotient = int(exact)
        return _integer_result(quotient, x, y)
    if op == '%':  # the sign of the dividend
        if kind == 'float':
            return math.fmod(x, y)
        if kind == 'decimal':
            return _CONTEXT.remainder(x, y)
        return abs(x) % abs(y) * (-1 if x < 0 else 1)
    raise ExpressionError(f'unknown operator {op!r}')


def _negate(value):
    if value is None:
        return None
    number = _numeric(value)
    if isinstance(number, int):
        # MySQL: -9223372036854775808 is a BIGINT, 9223372036854775808 negated
        # twice a DECIMAL
        result = -number
        return result if _SIGNED[0] <= result <= _SIGNED[1] else decimal.Decimal(result)
    return _double_result(-number) if isinstance(number, float) else -number


# Result types ---------------------------------------------------------------

def _kind(value) -> Optional[str]:
    """The MySQL type class of a value: 'bytes', 'str', 'float', 'decimal',
    'int', 'temporal'; None for NULL."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return 'bytes'
    if isinstance(value, str):
        return 'str'
    if isinstance(value, float):
        return 'float'
    if isinstance(value, decimal.Decimal):
        return 'decimal'
    if isinstance(value, int):
        return 'int'
    return 'temporal'


def _aggregate(values) -> Optional[str]:
    """The result type of IF / CASE / COALESCE over values of these types:
    any binary string -> bytes, any string (or a temporal value with a number)
    -> str, else double over decimal over integer (an unsigned BIGINT with a
    signed one is a decimal); None when the type is kept as it is."""
    kinds = {_kind(v) for v in values} - {None}
    if not kinds or len(kinds) == 1 and kinds != {'int'}:
        return None
    if 'bytes' in kinds:
        return 'bytes'
    if 'str' in kinds or 'temporal' in kinds:
        return None if kinds == {'temporal'} else 'str'
    if 'float' in kinds:
        return 'float'
    if 'decimal' in kinds:
        return 'decimal'
    ints = [v for v in values if _kind(v) == 'int']
    mixed = any(v > _SIGNED[1] for v in ints) and any(v < 0 for v in ints)
    return 'decimal' if mixed else None


def _as_kind(kind: Optional[str], value, values):
    """``value`` as the aggregated type ``kind`` (a decimal with the largest scale)."""
    if value is None or kind is None or _kind(value) == kind:
        if kind == 'decimal' and value is not None:
            return _rescale(value, values)
        return value
    if kind == 'bytes':
        return _as_bytes(value)
    if kind == 'str':
        return _as_text(value)
    number = _numeric(value)
    if kind == 'float':
        return float(number)
    return _rescale(number, values)


def _rescale(value, values) -> decimal.Decimal:
    scale = max((_scale(v) for v in values if _kind(v) == 'decimal'), default=0)
    return decimal.Decimal(value).quantize(decimal.Decimal(1).scaleb(-scale), context=_CONTEXT)


def _static_values(args, row) -> list:
    """The values of those ``args`` known without evaluating anything (literals,
    and columns the row holds): they set the result type of IF and CASE."""
    values = []
    for arg in args:
        if arg[0] == 'lit':
            values.append(arg[1])
        elif arg[0] == 'col' and arg[1] in row:
            values.append(row[arg[1]])
    return values


# Control flow (lazy: an argument not taken is not evaluated) ----------------

def _typed_choice(value, branches, row):
    known = _static_values(branches, row) + [value]
    return _as_kind(_aggregate(known), value, known)


def _if(args, exprs, row):
    if len(exprs) not in (2, 3):
        raise ExpressionError('IF takes 2 or 3 arguments')
    branches = exprs[1:] if len(exprs) == 3 else exprs[1:] + (lit(None),)
    taken = branches[0] if truthy(args[0]()) else branches[1]
    return _typed_choice(evaluate(taken, row), branches, row)


def _case(args, exprs, row):
    """Searched CASE: (when1, then1, ..., whenN, thenN, else)."""
    branches = exprs[1::2] + (exprs[-1],)
    for i in range(0, len(exprs) - 1, 2):
        if truthy(args[i]()):
            return _typed_choice(args[i + 1](), branches, row)
    return _typed_choice(args[-1](), branches, row)


def _coalesce(args, exprs, row):
    value = next((v for v in (arg() for arg in args) if v is not None), None)
    return _typed_choice(value, exprs, row)


# Functions on values ---------------------------------------------------------

_MAX_ALLOWED_PACKET = 16 * 1024 * 1024   # MariaDB 10.11's default: longer results are NULL


def _nulls_to_null(function):
    """A function that is NULL when any argument is NULL, as most SQL functions are."""
    @functools.wraps(function)
    def wrapper(*args):
        return None if any(a is None for a in args) else function(*args)
    return wrapper


def _string_args(*args):
    """The arguments in string context, and whether the result is binary (any
    argument is a binary string: then all are bytes)."""
    if any(isinstance(a, (bytes, bytearray)) for a in args):
        return [_as_bytes(a) for a in args], True
    return [_as_text(a) for a in args], False


def _too_long(result) -> bool:
    """Longer than max_allowed_packet (MySQL then returns NULL, with a warning)."""
    if len(result) <= _MAX_ALLOWED_PACKET // 4:
        return False
    return len(result if isinstance(result, bytes) else result.encode('utf-8', 'surrogatepass')
               ) > _MAX_ALLOWED_PACKET


@_nulls_to_null
def _concat(*args):
    parts, binary = _string_args(*args)
    result = (b'' if binary else '').join(parts)
    return None if _too_long(result) else result


def _concat_ws(separator, *args):
    if separator is None:
        return None
    parts, binary = _string_args(separator, *(a for a in args if a is not None))
    result = parts[0].join(parts[1:])
    return None if _too_long(result) else result


def _nullif(a, b):
    return None if a is None or _compare(a, b) == 0 else a


def _extreme(pick: Callable[[int], bool]):
    """GREATEST / LEAST: strings by the collation, binary strings by bytes, a
    string with a number as doubles (never a TypeError), numbers exactly."""
    @_nulls_to_null
    def extreme(*args):
        kinds = {_kind(a) for a in args}
        if kinds & {'str', 'bytes'} and kinds & {'int', 'decimal', 'float'}:
            args = [float(_numeric(a)) for a in args]
        elif 'bytes' in kinds:
            args = [_as_bytes(a) for a in args]
        best = args[0]
        for value in args[1:]:
            if pick(_compare(value, best)):
                best = value
        if kinds <= {'int', 'decimal', 'float'}:
            return _as_kind(_aggregate(args), best, args)
        return best
    return extreme


def _int_arg(value) -> int:
    """An integer argument (a position, a length): numbers rounded half away
    from zero, strings by their numeric prefix, as MySQL reads them."""
    number = _numeric(value)
    if isinstance(number, int):
        return number
    if isinstance(number, float):
        if number != number:
            return 0
        number = decimal.Decimal(repr(number))
    rounded = number.to_integral_value(rounding=decimal.ROUND_HALF_UP)
    return int(max(min(rounded, 2 ** 64), -2 ** 64))


def _text_function(function):
    """A string function: NULL in, NULL out; the first argument as text or
    bytes (a number as its text), the others as they are."""
    @_nulls_to_null
    def wrapper(subject, *args):
        if not isinstance(subject, (bytes, bytearray)):
            subject = _as_text(subject)
        return function(bytes(subject) if isinstance(subject, bytearray) else subject, *args)
    return wrapper


@_text_function
def _length(subject):
    if isinstance(subject, bytes):
        return len(subject)
    return len(subject.encode('utf-8', 'surrogatepass'))


@_text_function
def _char_length(subject):
    return len(subject)


@_text_function
def _substring(subject, position, length=_MAX_ALLOWED_PACKET):
    position, length = _int_arg(position), _int_arg(length)
    size = len(subject)
    if position == 0 or length <= 0 or abs(position) > size:
        return subject[:0]
    start = position - 1 if position > 0 else size + position
    return subject[start:start + length]


@_text_function
def _left(subject, count):
    count = _int_arg(count)
    return subject[:max(count, 0)]


@_text_function
def _right(subject, count):
    count = _int_arg(count)
    return subject[len(subject) - count:] if 0 < count < len(subject) else (
        subject if count > 0 else subject[:0])


def _trim(where: str):
    @_text_function
    def trim(subject, remove=None):
        if remove is None:
            remove = b' ' if isinstance(subject, bytes) else ' '
        elif isinstance(subject, bytes) or isinstance(remove, (bytes, bytearray)):
            subject, remove = _as_bytes(subject), _as_bytes(remove)
        else:
            remove = _as_text(remove)
        if not remove:
            return subject
        if where in ('both', 'leading'):
            while subject.startswith(remove):
                subject = subject[len(remove):]
        if where in ('both', 'trailing'):
            while subject.endswith(remove):
                subject = subject[:len(subject) - len(remove)]
        return subject
    return trim


@_nulls_to_null
def _replace(subject, old, new):
    (subject, old, new), _ = _string_args(subject, old, new)
    if not old:
        return subject
    # the result can be far longer than its inputs: bound it before building it
    if len(new) > len(old) and subject.count(old) * (len(new) - len(old)) > _MAX_ALLOWED_PACKET:
        return None
    return subject.replace(old, new)  # case-sensitive, as in MySQL


def _pad(left: bool):
    def pad(subject, length, fill=' '):
        if subject is None or length is None or fill is None:
            return None
        (subject, fill), _ = _string_args(subject, fill)
        length = _int_arg(length)
        if length < 0 or length > _MAX_ALLOWED_PACKET:
            return None
        if length <= len(subject):
            return subject[:length]
        if not fill:
            return None
        needed = length - len(subject)
        padding = (fill * (needed // len(fill) + 1))[:needed]
        return padding + subject if left else subject + padding
    return pad


@_text_function
def _repeat(subject, count):
    count = _int_arg(count)
    if count < 1 or not subject:
        return subject[:0]
    if len(subject) * count > _MAX_ALLOWED_PACKET:
        return None
    return subject * count


@_text_function
def _reverse(subject):
    return subject[::-1]


def _locate(needle, haystack, position=1):
    """LOCATE(substr, str[, pos]): 1-based position of ``substr`` in ``str`` at
    or after ``pos``, 0 if absent; case-insensitive but accent-sensitive (as
    MariaDB's general_ci search is), by bytes when either is binary."""
    if needle is None or haystack is None or position is None:
        return None
    (needle, haystack), binary = _string_args(needle, haystack)
    position = _int_arg(position)
    if position < 1 or position > len(haystack) + 1:
        return 0
    if not binary:
        needle, haystack = _upper_chars(needle), _upper_chars(haystack)
    return haystack.find(needle, position - 1) + 1


def _upper_chars(text: str) -> str:
    """Upper case, character by character (so positions stay): 'ß' stays 'ß',
    as MariaDB's UPPER leaves it."""
    return text.upper() if text.isascii() else ''.join(
        upper if len(upper := char.upper()) == 1 else char for char in text)


def _lower_chars(text: str) -> str:
    return text.lower() if text.isascii() else ''.join(
        lower if len(lower := char.lower()) == 1 else char for char in text)


def _case_function(convert: Callable[[str], str]):
    @_text_function
    def case(subject):
        return subject if isinstance(subject, bytes) else convert(subject)  # bytes have no case
    return case


# Numeric functions ------------------------------------------------------------

def _integral(number: decimal.Decimal):
    """An integral DECIMAL as MySQL returns it from FLOOR / CEIL: a BIGINT when it fits."""
    value = int(number)
    if _SIGNED[0] <= value <= _UNSIGNED[1]:
        return value
    return number


def _rounder(rounding: str):
    """ROUND / TRUNCATE: integers stay integers (in range, else DECIMAL),
    decimals get ``places`` digits of scale (half away from zero), doubles
    round half to even as the C library does."""
    @_nulls_to_null
    def round_(value, places=0):
        number, places = _numeric(value), _int_arg(places)
        if isinstance(number, float):
            if places > 330:
                return number
            if places < -330:
                return 0.0
            if rounding == decimal.ROUND_DOWN:
                return float(decimal.Decimal(repr(number)).quantize(
                    decimal.Decimal(1).scaleb(-places), rounding=rounding,
                    context=decimal.Context(prec=400)))
            return _double_result(round(number, places))  # half to even, as rint()
        exact = decimal.Decimal(number)
        if places >= 0 and isinstance(number, int):
            return number
        places = min(places, _MAX_DECIMAL_SCALE)
        if places < -70:
            result = decimal.Decimal(0)
        else:
            result = exact.quantize(decimal.Decimal(1).scaleb(-places), rounding=rounding,
                                    context=decimal.Context(prec=200))
        if isinstance(number, int):
            value = int(result)
            return value if _SIGNED[0] <= value <= _UNSIGNED[1] else result.quantize(
                decimal.Decimal(1))
        return result if places >= 0 else result.quantize(decimal.Decimal(1))
    return round_


def _floor_ceil(rounding: str):
    @_nulls_to_null
    def floor_ceil(value):
        number = _numeric(value)
        if isinstance(number, float):
            return float(math.floor(number) if rounding == decimal.ROUND_FLOOR
                         else math.ceil(number))
        if isinstance(number, int):
            return number
        return _integral(number.to_integral_value(rounding=rounding))
    return floor_ceil


@_nulls_to_null
def _abs(value):
    number = _numeric(value)
    if isinstance(number, int):
        return _integer_result(abs(number), number)
    return abs(number)


@_nulls_to_null
def _sign(value):
    number = _numeric(value)
    return (number > 0) - (number < 0)


def _mod(a, b):
    return _arith('%', a, b)


FUNCTIONS: Dict[str, Callable[..., Any]] = {
    'CONCAT': _concat,
    'CONCAT_WS': _concat_ws,
    'NULLIF': _nullif,
    'GREATEST': _extreme(lambda order: order > 0),
    'LEAST': _extreme(lambda order: order < 0),
    'LENGTH': _length,
    'CHAR_LENGTH': _char_length,
    'SUBSTRING': _substring,
    'LEFT': _left,
    'RIGHT': _right,
    'TRIM': _trim('both'),
    'LTRIM': _trim('leading'),
    'RTRIM': _trim('trailing'),
    'REPLACE': _replace,
    'LPAD': _pad(left=True),
    'RPAD': _pad(left=False),
    'REPEAT': _repeat,
    'REVERSE': _reverse,
    'LOCATE': _locate,
    'UPPER': _case_function(_upper_chars),
    'LOWER': _case_function(_lower_chars),
    'ROUND': _rounder(decimal.ROUND_HALF_UP),
    'TRUNCATE': _rounder(decimal.ROUND_DOWN),
    'FLOOR': _floor_ceil(decimal.ROUND_FLOOR),
    'CEIL': _floor_ceil(decimal.ROUND_CEILING),
    'MOD': _mod,
    'ABS': _abs,
    'SIGN': _sign,
    **OPERATORS,
}

# Forms that evaluate only the arguments they need: each gets one thunk per
# argument, the argument expressions and the row.
_LAZY: Dict[str, Callable[..., Any]] = {
    'AND': lambda args, exprs, row: _and(args),
    'OR': lambda args, exprs, row: _or(args),
    'IF': _if,
    'CASE': _case,
    'COALESCE': _coalesce,
    'IFNULL': _coalesce,
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
        return _negate(evaluate(expr[1], row))
    if tag == 'bin':  # a column or literal operand, the common ones, taken inline
        left, right = expr[2], expr[3]
        if left[0] == 'col':
            try:
                a = row[left[1]]
            except KeyError:
                raise MissingColumn(left[1]) from None
        else:
            a = left[1] if left[0] == 'lit' else evaluate(left, row)
        if right[0] == 'lit':
            b = right[1]
        elif right[0] == 'col':
            try:
                b = row[right[1]]
            except KeyError:
                raise MissingColumn(right[1]) from None
        else:
            b = evaluate(right, row)
        if type(a) is int and type(b) is int and a <= _BIGINT_MAX and b <= _BIGINT_MAX:
            # BIGINT operands (not bools, not unsigned), the common case: what
            # _arith computes, without its calls; a result out of range, or
            # another operator, goes to _arith (which raises its error).
            op = expr[1]
            value = a + b if op == '+' else a - b if op == '-' else a * b if op == '*' else None
            if value is not None and _BIGINT_MIN <= value <= _BIGINT_MAX:
                return value
        try:
            return _arith(expr[1], a, b)
        except ArithmeticError as error:  # a result beyond what the types hold
            raise ExpressionError(f'{expr[1]}: {type(error).__name__}') from None
    if tag == 'fn':
        name, args = expr[1], expr[2]
        lazy = _LAZY.get(name)
        function = FUNCTIONS.get(name)
        if lazy is None and function is None:
            raise ExpressionError(f'unknown function {name}')
        try:
            if lazy is not None:
                return lazy([lambda arg=arg: evaluate(arg, row) for arg in args], args, row)
            return function(*(evaluate(arg, row) for arg in args))
        except (TypeError, IndexError):  # a wrong number of arguments
            raise ExpressionError(f'wrong number of arguments to {name}') from None
        except ArithmeticError as error:  # a result beyond what the types hold
            raise ExpressionError(f'{name}: {type(error).__name__}') from None
    raise ValueError(f'not an expression: {expr!r}')


def substitute(expr: tuple, known: Mapping[str, tuple]) -> tuple:
    """``expr`` with columns in ``known`` replaced by their expressions, folded
    to a literal where every input is now known (and its value is one MySQL
    accepts: an error is left for the evaluation on the row to report)."""
    return _substituted(expr, known)[0]


def _substituted(expr: tuple, known: Mapping[str, tuple]) -> Tuple[tuple, bool]:
    """(:func:`substitute` of ``expr``, whether its leaves are all literals):
    one walk of the tree, which folds bottom up (a walk of the leaves at every
    node cost a sink half its time per op)."""
    tag = expr[0]
    if tag == 'lit':
        return expr, True
    if tag == 'col':
        value = known.get(expr[1])
        if value is None:
            return expr, False
        return value, value[0] == 'lit' or _all_literal(value)
    if tag == 'neg':
        inner, literal = _substituted(expr[1], known)
        result = ('neg', inner)
    elif tag == 'bin':  # the common operand: a literal or a column not known, taken inline
        left, right = expr[2], expr[3]
        if left[0] == 'lit':
            left_literal = True
        elif left[0] == 'col' and left[1] not in known:
            left_literal = False
        else:
            left, left_literal = _substituted(left, known)
        if right[0] == 'lit':
            right_literal = True
        elif right[0] == 'col' and right[1] not in known:
            right_literal = False
        else:
            right, right_literal = _substituted(right, known)
        result = ('bin', expr[1], left, right)
        literal = left_literal and right_literal
    elif tag == 'fn':
        args, literal = [], True
        for arg in expr[2]:
            arg, arg_literal = _substituted(arg, known)
            args.append(arg)
            literal = literal and arg_literal
        result = ('fn', expr[1], tuple(args))
    else:
        raise ValueError(f'not an expression: {expr!r}')
    if literal:
        try:
            return lit(evaluate(result, {})), True
        except (ArithmeticError, ValueError):
            return result, True
    return result, False


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
# Operators written other than NAME(args): their (fewest, most) arguments.
_ARITY = {**{name: (2, 2) for name in _INFIX}, 'AND': (2, 10 ** 9), 'OR': (2, 10 ** 9),
          **{name: (1, 1) for name in OPERATORS if name.startswith('IS ')},
          'NOT': (1, 1), 'BETWEEN': (3, 3), 'IN': (2, 10 ** 9), 'LIKE': (2, 3)}


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
    if tag == 'bin':  # a column operand quoted inline: the common one
        left, right = expr[2], expr[3]
        left = '`' + left[1].replace('`', '``') + '`' if left[0] == 'col' else to_sql(left)
        right = '`' + right[1].replace('`', '``') + '`' if right[0] == 'col' else to_sql(right)
        return f'({left} {expr[1]} {right})'
    name, args = expr[1], [to_sql(arg) for arg in expr[2]]
    arity = _ARITY.get(name)
    if arity is None or not arity[0] <= len(args) <= arity[1]:
        return f'{name}({", ".join(args)})'
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
    return f'({args[0]} LIKE {args[1]}' + (f' ESCAPE {args[2]})' if len(args) > 2 else ')')
