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

from changeflow.sql.expressions import ExpressionError, double_text
from changeflow.sql.literals import HexLiteral
from changeflow.sql.types import ColumnType, parse_type

__all__ = ['BadValue', 'coercer', 'INTEGER_RANGE']

_DECIMAL_TYPE = re.compile(r'decimal\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?', re.IGNORECASE)
INTEGER_RANGE = (-2 ** 63, 2 ** 64 - 1)   # BIGINT's lowest to BIGINT UNSIGNED's highest
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
      ('0.0000001', never '1E-7'), floats as MariaDB prints a DOUBLE ('6',
      '0.25', '1e20'). Dates use ISO text with a
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

    A MySQL column type (as :func:`changeflow.sql.types.parse_type` reads
    it) gets MySQL's rules for that type in strict mode (checked against
    MariaDB 10.11):

    * integer types: the integer rules above, within the type's range
      (TINYINT -128..127, INT UNSIGNED 0..4294967295, ...); TINYINT(1) keeps
      its integer (2 stays 2). A hexadecimal literal is its unsigned value.
    * ``decimal(p,s) unsigned``, ``float``, ``double``: as above; unsigned
      refuses a negative value.
    * ``char(n)``: text of at most n characters, trailing spaces removed (a
      CHAR reads back without them); ``varchar(n)``: at most n characters
      (spaces beyond n are cut, as MySQL cuts them with a note only);
      ``tinytext`` .. ``longtext``: at most their bytes in UTF-8.
    * ``binary(n)``: bytes padded with NUL to n; ``varbinary(n)``, blobs: at
      most n (their) bytes; a number is stored as its text.
    * ``enum(...)``: a member by value (case- and trailing-space-insensitive,
      stored with the declared spelling) or by 1-based index (a number, or a
      numeric string that is not a member); '' and 0 are refused.
    * ``set(...)``: comma-separated members, stored in declaration order
      without duplicates ('z,x,X' -> 'x,z'), or a bitmask number; an unknown
      member is refused.
    * ``year``: 1901..2155, or 0; two-digit years 1..69 -> 2001..2069 and
      70..99 -> 1970..1999 ('0' and '00' -> 2000, the number 0 stays 0).
    * ``datetime(n)``, ``timestamp(n)``: as ``datetime``, fractional seconds
      cut to n digits (MariaDB truncates); a TIMESTAMP is within
      1970-01-01 00:00:01 .. 2038-01-19 03:14:07 UTC. ``time(n)``: a
      timedelta within -838:59:59..838:59:59.
    * ``bit(n)``: an int below 2**n; bytes and text by their bytes ('5' is 53).

    Args:
        column_type: one of :data:`changeflow.config.COLUMN_TYPES`, or
            ``decimal(p)`` / ``decimal(p,s)``, or a MySQL column type; any
            case, spaces allowed.
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
        return _fixed_decimal(precision, scale)
    if kind in ('string', 'text'):
        return functools.partial(_string, length)
    if kind in _COERCERS:
        return _COERCERS[kind]
    try:
        parsed = parse_type(column_type)
    except ValueError:
        raise ValueError(f'unknown column type {column_type!r}; expected one of '
                         f'{sorted([*_COERCERS, "string", "text", "decimal"])}, decimal(p,s) '
                         f'or a MySQL column type') from None
    if parsed.changeflow:  # an alias of one of changeflow's names (bool)
        return coercer(parsed.kind)
    return _mysql_coercer(parsed)


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
    if type(value) is str:  # the common case (audit-log text): _text's test and strip, inline
        try:
            result = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            raise BadValue('not a number') from None
    elif isinstance(value, bool):
        result = decimal.Decimal(int(value))
    elif isinstance(value, HexLiteral):  # 0x41 is 65 in numeric context
        result = decimal.Decimal(int.from_bytes(value, 'big'))
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
    if type(value) is int or isinstance(value, int) and not isinstance(value, bool):
        result = value  # (a plain int, the common case, tested first)
    else:
        number = _number(value)
        if number.adjusted() > 19:  # beyond 2**64 (no huge int is made)
            raise BadValue('out of range for any MySQL integer type')
        result = int(_rounded(number))
    if not INTEGER_RANGE[0] <= result <= INTEGER_RANGE[1]:
        raise BadValue('out of range for any MySQL integer type')
    return result


def _fixed_decimal(precision: int, scale: int) -> Callable[[Any], decimal.Decimal]:
    """The coercer of DECIMAL(precision, scale); its quantum and context made
    once (a Context per value cost a third of the coercion)."""
    # Below 10**whole_digits: the result has at most precision + 1 digits (a carry).
    return functools.partial(_to_fixed_decimal, precision, scale,
                             decimal.Decimal(1).scaleb(-scale),
                             decimal.Context(prec=precision + 1, rounding=decimal.ROUND_HALF_UP))


def _to_fixed_decimal(precision: int, scale: int, quantum: decimal.Decimal,
                      context: decimal.Context, value) -> decimal.Decimal:
    number = _number(value)
    whole_digits = precision - scale
    if not number.is_zero() and number.adjusted() >= whole_digits:
        raise BadValue(f'out of range for DECIMAL({precision},{scale})')
    result = context.quantize(number, quantum)  # number.quantize(quantum, context=context)
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
        if not value.isascii():  # ASCII is UTF-8 (a flag of the str: no encoding made)
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
        try:
            result = double_text(value)  # as MariaDB prints a DOUBLE: 6.0 is '6'
        except ExpressionError:
            raise BadValue('not a finite number') from None
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
    if isinstance(value, float) and value != value or value in (float('inf'), float('-inf')):
        raise BadValue('not valid JSON')
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


# MySQL column types -----------------------------------------------------------

def _mysql_coercer(column: ColumnType) -> Callable[[Any], Any]:
    kind = column.kind
    if column.integer_range is not None:
        return functools.partial(_ranged_integer, kind.upper() + (' UNSIGNED' if column.unsigned
                                                                  else ''), column.integer_range)
    if kind == 'decimal':  # DECIMAL(p,s) UNSIGNED (a signed one is changeflow's decimal(p,s))
        return functools.partial(_unsigned, _fixed_decimal(column.precision, column.scale))
    if kind in ('float', 'double'):
        return functools.partial(_unsigned, _float) if column.unsigned else _float
    if kind in ('char', 'varchar'):
        return functools.partial(_characters, column.length, kind == 'char')
    if kind in _TEXT_BYTES:
        return functools.partial(_text_bytes, _TEXT_BYTES[kind])
    if kind in ('binary', 'varbinary') or kind in _BLOB_BYTES:
        size = column.length if kind in ('binary', 'varbinary') else _BLOB_BYTES[kind]
        return functools.partial(_bytes_of, size, kind == 'binary')
    if kind == 'enum':
        return functools.partial(_enum, column.values)
    if kind == 'set':
        return functools.partial(_set, column.values)
    if kind == 'year':
        return _year
    if kind == 'date':
        return _date
    if kind in ('datetime', 'timestamp'):
        return functools.partial(_fractional, column.fsp, kind == 'timestamp')
    if kind == 'time':
        return functools.partial(_time, column.fsp)
    if kind == 'bit':
        return functools.partial(_bit, column.length)
    return _json


_TEXT_BYTES = {'tinytext': 255, 'text': 65535, 'mediumtext': 2 ** 24 - 1, 'longtext': 2 ** 32 - 1}
_BLOB_BYTES = {'tinyblob': 255, 'blob': 65535, 'mediumblob': 2 ** 24 - 1, 'longblob': 2 ** 32 - 1}
_TIMESTAMP_RANGE = (datetime.datetime(1970, 1, 1, 0, 0, 1),
                    datetime.datetime(2038, 1, 19, 3, 14, 7, 999999))
_TIME_LIMIT = datetime.timedelta(hours=838, minutes=59, seconds=59)
_TIME = re.compile(r'(-)?(?:(\d+) )?(\d+):(\d\d)(?::(\d\d)(?:\.(\d{1,6})\d*)?)?\Z')


def _ranged_integer(name: str, bounds, value) -> int:
    result = _integer(value)
    if not bounds[0] <= result <= bounds[1]:
        raise BadValue(f'out of range for {name} ({bounds[0]} to {bounds[1]})')
    return result


def _unsigned(coerce, value):
    result = coerce(value)
    if result < 0:
        raise BadValue('out of range for an UNSIGNED column (negative)')
    return result


def _characters(length: int, fixed: bool, value) -> str:
    """CHAR(n) / VARCHAR(n): spaces beyond n are cut (MySQL notes it, even in
    strict mode); other characters beyond n are refused; a CHAR loses its
    trailing spaces."""
    text = _string(None, value)
    if len(text) > length:
        if text[length:].strip(' '):
            raise BadValue(f'longer than {length} characters')
        text = text[:length]
    return text.rstrip(' ') if fixed else text


def _text_bytes(size: int, value) -> str:
    text = _string(None, value)
    if len(text) * 4 > size and len(text.encode('utf-8')) > size:
        raise BadValue(f'longer than {size} bytes')
    return text


def _bytes_of(size: int, pad: bool, value) -> bytes:
    """BINARY(n) (padded with NUL to n), VARBINARY(n), BLOB: a number is its text."""
    if isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool):
        value = _string(None, value)
    elif isinstance(value, bool):
        value = str(int(value))
    data = _binary(value)
    if len(data) > size:
        raise BadValue(f'longer than {size} bytes')
    return data.ljust(size, b'\0') if pad else data


def _index(value, count: int) -> Optional[int]:
    """A number used as an ENUM index / SET bitmask (truncated, as MariaDB does); None if text."""
    if isinstance(value, (str, bytes, bytearray)) and not isinstance(value, HexLiteral):
        return None
    number = _number(value)
    if number.adjusted() > 20:
        raise BadValue('out of range')
    return int(number)


def _member_key(text: str) -> str:
    return text.rstrip(' ').casefold()


def _enum(members, value) -> str:
    keys = {_member_key(m): m for m in reversed(members)}
    index = _index(value, len(members))
    if index is None:
        text = _text(value, 'an ENUM member')
        text = value if isinstance(value, str) else text
        member = keys.get(_member_key(text))
        if member is not None:
            return member
        try:  # a numeric string that is not a member is an index
            index = int(decimal.Decimal(text.strip()))
        except (decimal.InvalidOperation, ValueError):
            raise BadValue('not a member of the ENUM') from None
    if not 1 <= index <= len(members):
        raise BadValue(f'ENUM index out of range (1 to {len(members)})')
    return members[index - 1]


def _set(members, value) -> str:
    index = _index(value, len(members))
    if index is None:
        text = value if isinstance(value, str) else _text(value, 'SET members')
        if text == '':
            return ''
        keys = {_member_key(m): i for i, m in reversed(list(enumerate(members)))}
        chosen = set()
        for part in text.split(','):
            position = keys.get(_member_key(part))
            if position is None:
                if part.strip().isdigit() and ',' not in text:
                    return _set(members, int(part.strip()))
                raise BadValue('not a member of the SET')
            chosen.add(position)
    else:
        if not 0 <= index < 2 ** len(members):
            raise BadValue('SET bitmask out of range')
        chosen = {i for i in range(len(members)) if index >> i & 1}
    return ','.join(members[i] for i in sorted(chosen))


def _year(value) -> int:
    text = value.strip() if isinstance(value, str) else None
    if isinstance(value, (bytes, bytearray)) and not isinstance(value, HexLiteral):
        text = _text(value, 'a year')
    number = _integer(value)
    if text is not None and len(text.lstrip('+')) <= 2 and 0 <= number <= 99:
        return 2000 + number if number < 70 else 1900 + number  # '0' and '00' are 2000
    if 1 <= number <= 69:
        return 2000 + number
    if 70 <= number <= 99:
        return 1900 + number
    if number == 0 or 1901 <= number <= 2155:
        return number
    raise BadValue('out of range for YEAR (1901 to 2155)')


def _fractional(fsp: int, timestamp: bool, value) -> datetime.datetime:
    result = _datetime(value)
    cut = 10 ** (6 - fsp)
    result = result.replace(microsecond=result.microsecond // cut * cut)
    if timestamp and not _TIMESTAMP_RANGE[0] <= result <= _TIMESTAMP_RANGE[1]:
        raise BadValue('out of range for TIMESTAMP '
                       '(1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC)')
    return result


def _time(fsp: int, value) -> datetime.timedelta:
    if isinstance(value, datetime.timedelta):
        result = value
    elif isinstance(value, datetime.time):
        result = datetime.timedelta(hours=value.hour, minutes=value.minute, seconds=value.second,
                                    microseconds=value.microsecond)
    else:
        match = _TIME.match(_text(value, 'a time'))
        if not match:
            raise BadValue('not a time ([-][D ]HH:MM[:SS[.ffffff]])')
        sign, days, hours, minutes, seconds, fraction = match.groups()
        if int(minutes) > 59 or int(seconds or 0) > 59:
            raise BadValue('not a time ([-][D ]HH:MM[:SS[.ffffff]])')
        result = datetime.timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes),
                                    seconds=int(seconds or 0),
                                    microseconds=int((fraction or '0').ljust(6, '0')))
        result = -result if sign else result
    cut = 10 ** (6 - fsp)
    micros = abs(result) // datetime.timedelta(microseconds=1) // cut * cut
    result = datetime.timedelta(microseconds=micros) * (-1 if result < datetime.timedelta(0) else 1)
    if abs(result) > _TIME_LIMIT + datetime.timedelta(microseconds=999999):
        raise BadValue('out of range for TIME (-838:59:59 to 838:59:59)')
    return result


def _bit(width: int, value) -> int:
    """BIT(n): a number as it is, a (binary) string by its bytes ('5' is 0x35)."""
    if isinstance(value, (str, bytes, bytearray)):
        data = _binary(value)
        result = int.from_bytes(data, 'big')
    else:
        result = _integer(value)
    if not 0 <= result < 2 ** width:
        raise BadValue(f'out of range for BIT({width})')
    return result
