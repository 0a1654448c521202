"""Audit-log values coerced to declared column types, as MySQL stores them.

This is the one definition of how a value (an audit-log literal: str, int,
Decimal, float, bytes; or a value read back from a replica: bool, date,
datetime, a JSON document) becomes the value of a column declared with one
of :data:`changeflow.config.COLUMN_TYPES`. Every sink that stores typed
values uses it (``io/sql.py`` for the replica, ``io/parquet.py`` for the
backup), so they store the same values and reject the same ones.

The rules are those of MySQL assigning a value to a column in strict mode.
The source database stored the value that way, so the copies must hold what
it holds. A value MySQL would refuse raises :class:`BadValue`. Limits of
storage rather than of the declared type (the int64 range of Parquet, a
VARCHAR length reflected from a replica, the JSON type of the replica's
driver) stay with the sinks.

Example::

    >>> coercer('decimal(5,2)')('12.345')
    Decimal('12.35')
    >>> coercer('boolean')(2)
    True
"""

import datetime
import decimal
import functools
import json
import re
from typing import Any, Callable, Optional

import orjson

__all__ = ['BadValue', 'coercer']

_DECIMAL_TYPE = re.compile(r'decimal\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?', re.IGNORECASE)
_INTEGER_RANGE = (-2 ** 63, 2 ** 64 - 1)   # BIGINT's lowest to BIGINT UNSIGNED's highest
_TINYINT_RANGE = (-128, 127)


class BadValue(ValueError):
    """A value the column cannot hold; the message says why, without the value."""


def coercer(column_type: str, *, length: Optional[int] = None) -> Callable[[Any], Any]:
    """The function that turns a value into one a ``column_type`` column holds.

    The function takes any value except None (SQL NULL fits every type:
    callers keep it as it is). It returns the Python value of the column and
    raises :class:`BadValue` if MySQL would refuse the value. Strings that
    are parsed are stripped first. Bytes count as UTF-8 text.

    * ``integer``, ``bigint`` -> int. Numbers and numeric text are rounded
      half away from zero, as MySQL rounds a fraction stored in an integer
      column ('2.5' -> 3, -2.5 -> -3). Values outside BIGINT..BIGINT UNSIGNED
      (-2**63 to 2**64-1) fit no MySQL integer column and are rejected. A sink
      with a narrower integer checks its own range.
    * ``decimal(p,s)`` (``decimal(p)`` is ``decimal(p,0)``) -> Decimal with
      exactly ``s`` places, rounded half away from zero as MySQL does. A value
      needing more than ``p - s`` digits before the point after rounding is
      out of range. MySQL refuses it in strict mode rather than clipping it.
    * ``decimal`` without precision -> the exact Decimal. The storage decides
      precision and scale: a sink that stores a fixed precision asks for
      ``decimal(p,s)``.
    * ``float`` -> float (text through Decimal, so '0.1' is the nearest double).
    * ``boolean`` -> bool. MySQL's BOOLEAN is TINYINT(1): any number is
      stored (rounded like an integer) and is true when non-zero, so 2 and
      '0.5' are true and 0.4 is false. A number outside TINYINT
      (-128 to 127) is out of range. The text 'true' / 'false' (any case) is
      accepted too.
    * ``date`` -> date, from 'YYYY-MM-DD' (ISO 8601, with or without a time),
      an integer YYYYMMDD (MySQL reads 20261122 as a date), a date, or a
      datetime. Like ``datetime``, a value with a time zone is converted to
      UTC first, so a date column holds the UTC day of such a value.
    * ``datetime`` -> naive datetime in UTC (MySQL DATETIME has no zone),
      from ISO 8601 text ('YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM]'), a
      datetime, or a date (at midnight).
    * ``string``, ``text`` -> str. Bytes are decoded as UTF-8, and numbers
      get their SQL text: 1/0 for booleans, Decimal in positional notation
      ('0.0000001', never '1E-7'), floats as repr. Dates use ISO text with a
      space before the time. Text that is not UTF-8 (a lone surrogate left
      by 'surrogateescape' decoding) is refused, as utf8mb4 refuses it. With
      ``length``, text longer than ``length`` characters is refused
      (VARCHAR(n) in strict mode).
    * ``binary`` -> bytes: bytes as they are, text as UTF-8.
    * ``json`` -> str, a JSON document's text as given. It must be valid
      JSON as MySQL's parser reads it: no NaN or Infinity, no lone surrogate
      escapes, no numbers beyond the double range. Numbers become their JSON
      text. A bool becomes true/false, and a dict or list (a document read
      back from a replica) becomes its JSON text. A sink that stores
      documents as objects parses this text.

    Args:
        column_type: one of :data:`changeflow.config.COLUMN_TYPES`, or
            ``decimal(p)`` / ``decimal(p,s)``; any case, spaces allowed.
        length: for ``string`` and ``text`` only: most characters stored.

    Raises:
        ValueError: ``column_type`` is unknown, a decimal's scale exceeds its
            precision, or ``length`` is given for another type.
    """
    kind = column_type.strip().lower()
    if length is not None and kind not in ('string', 'text'):
        raise ValueError(f'length applies to string and text columns, not {column_type!r}')
    match = _DECIMAL_TYPE.fullmatch(kind)
    if match:
        if match.group(1) is None:
            return _number
        precision, scale = int(match.group(1)), int(match.group(2) or 0)
        if precision < 1 or scale > precision:
            raise ValueError(f'bad decimal precision/scale in {column_type!r}')
        return functools.partial(_fixed_decimal, precision, scale)
    if kind in ('string', 'text'):
        return functools.partial(_string, length)
    if kind not in _COERCERS:
        raise ValueError(f'unknown column type {column_type!r}; expected one of '
                         f'{sorted([*_COERCERS, "string", "text", "decimal"])} or decimal(p,s)')
    return _COERCERS[kind]


def _text(value, what: str) -> str:
    """``value`` as text to parse: str or UTF-8 bytes, stripped."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode('utf-8').strip()
        except UnicodeDecodeError:
            raise BadValue('bytes are not UTF-8 text') from None
    raise BadValue(f'{type(value).__name__} is not {what}')


def _number(value) -> decimal.Decimal:
    """``value`` as an exact, finite Decimal (a float by its shortest repr)."""
    if isinstance(value, bool):
        result = decimal.Decimal(int(value))
    elif isinstance(value, (int, decimal.Decimal)):
        result = decimal.Decimal(value)
    elif isinstance(value, float):
        result = decimal.Decimal(repr(value))
    else:
        try:
            result = decimal.Decimal(_text(value, 'a number'))
        except decimal.InvalidOperation:
            raise BadValue('not a number') from None
    if not result.is_finite():
        raise BadValue('not a finite number')
    return result


def _rounded(number: decimal.Decimal) -> decimal.Decimal:
    return number.to_integral_value(rounding=decimal.ROUND_HALF_UP)  # half away from zero


def _integer(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        result = value
    else:
        number = _number(value)
        if number.adjusted() > 19:  # beyond 2**64 (no huge int is made)
            raise BadValue('out of range for any MySQL integer type')
        result = int(_rounded(number))
    if not _INTEGER_RANGE[0] <= result <= _INTEGER_RANGE[1]:
        raise BadValue('out of range for any MySQL integer type')
    return result


def _fixed_decimal(precision: int, scale: int, value) -> decimal.Decimal:
    number = _number(value)
    whole_digits = precision - scale
    if not number.is_zero() and number.adjusted() >= whole_digits:
        raise BadValue(f'out of range for DECIMAL({precision},{scale})')
    # Below 10**whole_digits: the result has at most precision + 1 digits (a carry).
    result = number.quantize(decimal.Decimal(1).scaleb(-scale), rounding=decimal.ROUND_HALF_UP,
                             context=decimal.Context(prec=precision + 1))
    if not result.is_zero() and result.adjusted() >= whole_digits:  # 99.995 -> 100.00
        raise BadValue(f'out of range for DECIMAL({precision},{scale})')
    return result


def _float(value) -> float:
    return value if isinstance(value, float) else float(_number(value))


def _boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, bytes, bytearray)):
        text = _text(value, 'a boolean').lower()
        if text in ('true', 'false'):
            return text == 'true'
        try:
            number = _number(text)
        except BadValue:
            raise BadValue('not a boolean (a number, true or false)') from None
    else:
        number = _number(value)
    stored = _rounded(number)  # what TINYINT(1) holds
    if not _TINYINT_RANGE[0] <= stored <= _TINYINT_RANGE[1]:
        raise BadValue('out of range for BOOLEAN (TINYINT(1): -128 to 127)')
    return stored != 0


def _datetime(value) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        result = value
    elif isinstance(value, datetime.date):
        return datetime.datetime(value.year, value.month, value.day)
    else:
        text = _text(value, 'a date-time')
        try:
            result = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise BadValue('not a date-time (YYYY-MM-DD HH:MM:SS[.ffffff])') from None
    if result.tzinfo is not None:
        result = result.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return result


def _date(value) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return _datetime(value).date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # YYYYMMDD
    text = _text(value, 'a date')
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return _datetime(text).date()
    except BadValue:
        raise BadValue('not a date (YYYY-MM-DD)') from None


def _string(length: Optional[int], value) -> str:
    if isinstance(value, str):
        try:
            value.encode('utf-8')
        except UnicodeEncodeError:
            raise BadValue('text that is not UTF-8 (a lone surrogate)') from None
        result = value
    elif isinstance(value, (bytes, bytearray)):
        try:
            result = bytes(value).decode('utf-8')
        except UnicodeDecodeError:
            raise BadValue('bytes are not UTF-8 text') from None
    elif isinstance(value, bool):
        result = str(int(value))
    elif isinstance(value, int):
        result = str(value)
    elif isinstance(value, decimal.Decimal):
        result = format(value, 'f')
    elif isinstance(value, float):
        result = repr(value)
    elif isinstance(value, datetime.datetime):
        result = value.isoformat(sep=' ')
    elif isinstance(value, datetime.date):
        result = value.isoformat()
    else:
        raise BadValue(f'{type(value).__name__} is not text')
    if length is not None and len(result) > length:
        raise BadValue(f'longer than {length} characters')
    return result


def _json(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value, ensure_ascii=False, separators=(',', ':'), allow_nan=False)
        except (TypeError, ValueError):
            raise BadValue('not a JSON document') from None
    if isinstance(value, datetime.date):
        raise BadValue(f'{type(value).__name__} is not JSON')
    text = _string(None, value)
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadValue('not valid JSON') from None
    return text


def _binary(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode('utf-8')
        except UnicodeEncodeError:
            raise BadValue('text that is not UTF-8 (a lone surrogate)') from None
    raise BadValue(f'{type(value).__name__} is not binary')


_COERCERS = {
    'integer': _integer, 'bigint': _integer, 'float': _float, 'boolean': _boolean,
    'date': _date, 'datetime': _datetime, 'binary': _binary, 'json': _json,
}
