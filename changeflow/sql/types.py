"""Column types: MySQL's type text and changeflow's own names, read once.

A TableSpec column type is either one of changeflow's names
(:data:`changeflow.config.COLUMN_TYPES`: integer, bigint, decimal, float,
string, text, boolean, date, datetime, binary, json, and ``decimal(p,s)``; a json
column with a declared shape, ``list<...>``, ``set<...>``, ``map<...>`` or
``struct<...>``, see :mod:`changeflow.sql.nested`) or a
MySQL column type as ``SHOW CREATE TABLE`` / ``information_schema.COLUMNS``
write it (``int(11) unsigned``, ``tinyint(1)``, ``varchar(20)``,
``enum('a','b')``, ``datetime(6)``, ...). :func:`parse_type` reads both into a
:class:`ColumnType`; the sinks ask it for their storage type
(:func:`sqlalchemy_type`, :func:`arrow_type`) and ``sql/coercion.py`` for the
value rules.

Where a name means one thing to changeflow and another to MySQL, the bare
name keeps changeflow's meaning, which holds every value of MySQL's: ``float``
is a double, ``decimal`` an exact number of any scale (MySQL's bare DECIMAL
is ``decimal(10,0)``; information_schema always writes it so), ``text`` and
``binary`` hold any length, ``datetime`` keeps microseconds.

Example::

    >>> parse_type("INT(11) UNSIGNED").kind, parse_type("int(11) unsigned").unsigned
    ('int', True)
    >>> parse_type("enum('a','B')").values
    ('a', 'B')
"""

import decimal
import math
import re
from typing import Any, NamedTuple, Optional, Tuple

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = ['ColumnType', 'parse_type', 'canonical_type', 'type_text', 'sqlalchemy_type',
           'arrow_type',
           'INTEGER_RANGES', 'ExactDecimal', 'ExactUnsignedBigInt']

CHANGEFLOW_TYPES = ('integer', 'bigint', 'decimal', 'float', 'string', 'text', 'boolean', 'date',
                    'datetime', 'binary', 'json')

# MySQL integer types: (signed range, unsigned range)
INTEGER_RANGES = {
    'tinyint': ((-2 ** 7, 2 ** 7 - 1), (0, 2 ** 8 - 1)),
    'smallint': ((-2 ** 15, 2 ** 15 - 1), (0, 2 ** 16 - 1)),
    'mediumint': ((-2 ** 23, 2 ** 23 - 1), (0, 2 ** 24 - 1)),
    'int': ((-2 ** 31, 2 ** 31 - 1), (0, 2 ** 32 - 1)),
    'bigint': ((-2 ** 63, 2 ** 63 - 1), (0, 2 ** 64 - 1)),
}
_TEXT_BYTES = {'tinytext': 255, 'text': 65535, 'mediumtext': 2 ** 24 - 1, 'longtext': 2 ** 32 - 1}
_BLOB_BYTES = {'tinyblob': 255, 'blob': 65535, 'mediumblob': 2 ** 24 - 1, 'longblob': 2 ** 32 - 1}
_ALIASES = {
    # (INT1..INT8 are not read: MySQL never writes them back, and config refuses 'int4')
    'integer': 'int', 'middleint': 'mediumint', 'dec': 'decimal',
    'numeric': 'decimal', 'fixed': 'decimal', 'real': 'double', 'double precision': 'double',
    'bool': 'boolean', 'character': 'char',
    'long varchar': 'mediumtext', 'long': 'mediumtext', 'long varbinary': 'mediumblob',
    'character varying': 'varchar', 'char varying': 'varchar', 'nchar': 'char',
    'national char': 'char', 'nvarchar': 'varchar', 'national varchar': 'varchar',
}
_MYSQL_KINDS = ({'decimal', 'float', 'double', 'char', 'varchar', 'binary', 'varbinary', 'enum',
                 'set', 'year', 'date', 'time', 'datetime', 'timestamp', 'bit', 'json',
                 'boolean'} | set(INTEGER_RANGES) | set(_TEXT_BYTES) | set(_BLOB_BYTES))


class ColumnType(NamedTuple):
    """A column type, read. ``kind`` is MySQL's base type name ('int',
    'varchar', 'enum', ...) or changeflow's ('integer', 'string', 'boolean',
    ...) when the text was one of those; ``changeflow`` says which."""
    kind: str
    changeflow: bool = False
    length: Optional[int] = None      # CHAR/VARCHAR/BINARY/VARBINARY length, BIT width, TINYINT(1)
    precision: Optional[int] = None   # DECIMAL
    scale: Optional[int] = None       # DECIMAL
    unsigned: bool = False
    values: Tuple[str, ...] = ()      # ENUM / SET members, as declared
    fsp: Optional[int] = None         # TIME / DATETIME / TIMESTAMP fractional digits
    charset: Optional[str] = None
    collation: Optional[str] = None
    shape: Optional[Any] = None       # a json column's declared shape (changeflow.sql.nested)

    @property
    def integer_range(self) -> Optional[Tuple[int, int]]:
        ranges = INTEGER_RANGES.get(self.kind)
        return None if ranges is None else ranges[self.unsigned]


_HEAD = re.compile(r"\s*([a-z][a-z0-9 ]*?)\s*(?:\((.*)\))?([^()]*)\Z", re.I | re.S)
_MEMBER = re.compile(r"\s*'((?:[^'\\]|\\.|'')*)'\s*(,|\Z)", re.S)
_NUMBERS = re.compile(r'\s*(\d+)\s*(?:,\s*(\d+)\s*)?\Z')
_MODIFIERS = re.compile(r'(unsigned|signed|zerofill|binary|ascii|unicode|byte'
                        r'|(?:character\s+set|charset|collate)\s+(\w+))(?:\s+|\Z)', re.I)
_KNOWN = set(CHANGEFLOW_TYPES) | set(_ALIASES) | _MYSQL_KINDS


def parse_type(text: str, mysql: bool = False) -> ColumnType:
    """A column type's text read; ValueError naming the text when it is not a
    type changeflow knows, or its arguments are impossible (``decimal(2,5)``).

    With ``mysql``, a bare name that is also a MySQL type has MySQL's meaning
    (``datetime`` has no fractional seconds, ``float`` is single precision,
    ``text`` holds 65535 bytes): for type text read from a MySQL schema."""
    if not isinstance(text, str):
        raise ValueError(f'column type {text!r} is not text')
    if '<' in text and not mysql:
        from changeflow.sql.nested import parse_nested
        return ColumnType('json', True, shape=parse_nested(text))
    head = _HEAD.match(text)
    if not head:
        raise ValueError(f'unknown type {text!r}')
    words, arguments, tail = head.group(1).lower().split(), head.group(2), head.group(3)
    if arguments is None:  # 'int unsigned', 'double precision': the longest known name
        words = text.lower().split()
        size = next((n for n in range(len(words), 0, -1) if ' '.join(words[:n]) in _KNOWN), 1)
        words, tail = words[:size], ' '.join(words[size:])
    name = ' '.join(words)
    if name not in _KNOWN:
        raise ValueError(f'unknown type {text!r}')
    try:
        return _column_type(name, arguments, tail.strip(), mysql)
    except ValueError as error:
        raise ValueError(f'bad type {text!r}: {error}') from None


def _column_type(name, arguments, modifiers, mysql) -> ColumnType:
    fields = _modifiers(modifiers)
    if name in CHANGEFLOW_TYPES and not fields and (arguments is None or name == 'decimal') and (
            not mysql or name in ('integer', 'string', 'boolean') or arguments is not None):
        if arguments is not None:
            precision, scale = _numbers(arguments, 'precision', 'scale')
            _check_decimal(precision, scale)
            return ColumnType('decimal', True, precision=precision, scale=scale or 0)
        return ColumnType(name, True)
    kind = _ALIASES.get(name, name)
    if kind == 'boolean' and arguments is None:
        return ColumnType('boolean', True)  # BOOL
    if kind in ('enum', 'set'):
        if arguments is None:
            raise ValueError(f'{kind.upper()} needs its members')
        values = _members(arguments)
        if kind == 'set' and len(values) > 64:
            raise ValueError('a SET has at most 64 members')
        return ColumnType(kind, values=values, **_text_fields(fields))
    numbers = _numbers(arguments, 'length', 'scale') if arguments is not None else (None, None)
    first, second = numbers
    if kind in INTEGER_RANGES or kind == 'bit':
        if second is not None:
            raise ValueError('one argument expected')
        if kind == 'bit' and not 1 <= (first or 1) <= 64:
            raise ValueError('BIT width is 1 to 64')
        if kind == 'bit':
            return ColumnType(kind, length=1 if first is None else first)
        # A display width changes no value; only TINYINT(1) (BOOLEAN's spelling) is kept.
        return ColumnType(kind, length=1 if first == 1 else None,
                          unsigned=fields.get('unsigned', False))
    if kind == 'decimal':
        precision = 10 if first is None else first
        _check_decimal(precision, second or 0)
        unsigned = fields.get('unsigned', False)  # DECIMAL(p,s) is changeflow's decimal(p,s)
        return ColumnType('decimal', not unsigned, precision=precision, scale=second or 0,
                          unsigned=unsigned)
    if kind in ('float', 'double'):
        if first is not None and second is None and kind == 'float':
            kind = 'float' if first <= 24 else 'double'  # FLOAT(p)
            first = None
        if second is not None and second > first:
            raise ValueError('scale exceeds precision')
        return ColumnType(kind, precision=first, scale=second,
                          unsigned=fields.get('unsigned', False))
    if kind in ('time', 'datetime', 'timestamp'):
        if second is not None or (first or 0) > 6:
            raise ValueError('fractional seconds precision is 0 to 6')
        return ColumnType(kind, fsp=first or 0)
    if kind in ('char', 'binary'):
        return ColumnType(kind, length=1 if first is None else first, **_text_fields(fields))
    if kind in ('varchar', 'varbinary'):
        if first is None or second is not None:
            raise ValueError(f'{kind.upper()} needs one length')
        return ColumnType(kind, length=first, **_text_fields(fields))
    if arguments is not None and kind not in ('year', 'text', 'blob') or second is not None:
        raise ValueError('no arguments expected')
    if kind == 'year' and first not in (None, 4):
        raise ValueError('YEAR is YEAR(4)')
    if first is not None and kind in ('text', 'blob'):  # TEXT(M): the smallest that holds M bytes
        sizes = _TEXT_BYTES if kind == 'text' else _BLOB_BYTES
        kind = next((k for k, size in sizes.items() if first <= size), list(sizes)[-1])
    return ColumnType(kind, **_text_fields(fields))


def _modifiers(text: str) -> dict:
    fields = {}
    position = 0
    while position < len(text):
        match = _MODIFIERS.match(text, position)
        if not match:
            raise ValueError(f'unknown attribute {text[position:].split()[0]!r}')
        word = match.group(1).lower()
        if word == 'unsigned':
            fields['unsigned'] = True
        elif word.startswith(('character', 'charset')):
            fields['charset'] = match.group(2).lower()
        elif word.startswith('collate'):
            fields['collation'] = match.group(2).lower()
        elif word == 'binary':
            fields['collation'] = 'binary'
        position = match.end()
    return fields


def _text_fields(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k in ('charset', 'collation')}


def _numbers(arguments: str, *names) -> Tuple[Optional[int], Optional[int]]:
    match = _NUMBERS.match(arguments)
    if not match:
        raise ValueError(f'expected ({names[0]}) or ({names[0]},{names[1]})')
    return int(match.group(1)), None if match.group(2) is None else int(match.group(2))


def _check_decimal(precision: int, scale: Optional[int]) -> None:
    if not 1 <= precision <= 65:
        raise ValueError('DECIMAL precision is 1 to 65')
    if (scale or 0) > min(precision, 38):
        raise ValueError('DECIMAL scale is 0 to 38, at most the precision')


def _members(arguments: str) -> Tuple[str, ...]:
    values, position = [], 0
    while position < len(arguments):
        match = _MEMBER.match(arguments, position)
        if not match:
            raise ValueError('members are quoted strings')
        # MySQL removes the trailing spaces of ENUM and SET members
        values.append(re.sub(r"''|\\(.)", lambda m: m.group(1) or "'", match.group(1)).rstrip(' '))
        position = match.end()
    if not values:
        raise ValueError('at least one member')
    return tuple(values)


def canonical_type(text: str, mysql: bool = False) -> str:
    """The text a TableSpec keeps for a column type: changeflow's names as
    config always stored them ('decimal(10,2)', 'integer'), a
    MySQL type rewritten as MySQL writes it ('int(11) unsigned',
    "enum('a','B')", 'datetime(0)'); :func:`parse_type` reads it back to the
    same type. ``mysql`` as for :func:`parse_type`."""
    parsed = parse_type(text, mysql)
    if parsed.shape is not None:
        return parsed.shape.text()
    if parsed.changeflow and parsed.precision is not None:
        return f'decimal({parsed.precision},{parsed.scale})'
    if parsed.changeflow:
        return parsed.kind
    return type_text(parsed)


def type_text(column: ColumnType) -> str:
    """MySQL's text of a (MySQL) column type."""
    kind, parts = column.kind, [column.kind]
    if kind in ('enum', 'set'):
        parts[0] += '(' + ','.join("'" + v.replace("'", "''") + "'" for v in column.values) + ')'
    elif kind == 'decimal' or kind in ('float', 'double') and column.precision is not None:
        parts[0] += f'({column.precision},{column.scale})'
    elif kind in ('time', 'datetime', 'timestamp'):
        parts[0] += f'({column.fsp})'  # 'datetime' alone is changeflow's (microseconds)
    elif kind == 'float':
        parts[0] += '(24)'  # 'float' alone is changeflow's (a double)
    elif column.length is not None:
        parts[0] += f'({column.length})'
    elif kind == 'bigint':
        parts[0] += '(20)'  # 'bigint' alone is changeflow's (any MySQL integer)
    elif kind == 'text':
        parts[0] += '(65535)'  # 'text' alone is changeflow's (any length)
    if column.unsigned:
        parts.append('unsigned')
    if column.charset:
        parts.append(f'character set {column.charset}')
    if column.collation:
        parts.append(f'collate {column.collation}')
    return ' '.join(parts)


# SQLAlchemy -------------------------------------------------------------------

class _SQLiteNumeric(sa.types.UserDefinedType):
    """SQLite's NUMERIC(p, s) column, with no processing of bound values."""
    cache_ok = True

    def __init__(self, precision: Optional[int], scale: Optional[int]):
        self.precision, self.scale = precision, scale

    def get_col_spec(self, **kw):
        return 'NUMERIC' if self.precision is None else f'NUMERIC({self.precision}, {self.scale})'


class ExactDecimal(sa.types.TypeDecorator):
    """A DECIMAL that SQLite keeps exact. SQLite has no exact decimal: its
    NUMERIC column turns numeric text into a REAL of 15 digits. A value the
    double holds exactly (its shortest repr is the value, as for every value
    of up to 15 digits) is bound as that REAL, as before, so other readers
    of the table see a number; a longer one as its exact text in a BLOB,
    which SQLite stores unconverted. Both read back as the same Decimal."""
    impl = sa.Numeric
    cache_ok = True

    def __init__(self, precision: Optional[int] = None, scale: Optional[int] = None):
        super().__init__()
        self.precision, self.scale = precision, scale

    def load_dialect_impl(self, dialect):
        return _SQLiteNumeric(self.precision, self.scale)

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        number = _exact(value, self.scale)
        scale = self.scale
        if scale is not None and scale <= _MYSQL_MAX_SCALE and number.adjusted() + scale < 15:
            # At most 15 digits (quantized: exponent -scale) and 1e-30 or more
            # (a double's normal range): the double holds it, as checked below.
            return float(number)
        double = float(number)
        if math.isfinite(double) and decimal.Decimal(repr(double)) == number:
            return double
        return format(number, 'f').encode('ascii')

    def process_result_value(self, value, dialect):
        return None if value is None else _exact(value, self.scale)


_EXACT_CONTEXT = decimal.Context(prec=100)
_MYSQL_MAX_SCALE = 30
_QUANTA = {}  # scale -> 10 ** -scale


def _exact(value, scale: Optional[int]) -> decimal.Decimal:
    if isinstance(value, bytes):
        value = value.decode('ascii')
    number = value if isinstance(value, decimal.Decimal) else decimal.Decimal(
        repr(value) if isinstance(value, float) else value)
    if scale is None:
        return number
    quantum = _QUANTA.get(scale)
    if quantum is None:
        quantum = _QUANTA[scale] = decimal.Decimal(1).scaleb(-scale)
    if (type(number) is decimal.Decimal and number.same_quantum(quantum)
            and number.adjusted() + scale < _EXACT_CONTEXT.prec):
        return number  # of the scale already (the sink's coercers make it so): quantize's result
    return number.quantize(quantum, context=_EXACT_CONTEXT)


class ExactUnsignedBigInt(sa.types.TypeDecorator):
    """BIGINT UNSIGNED where the database has no 64-bit unsigned integer:
    NUMERIC(20,0) in PostgreSQL; in SQLite (whose INTEGER stops at 2**63 - 1)
    an INTEGER, with the values beyond it as their text in a BLOB; read back as int."""
    impl = sa.Numeric(20, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == 'sqlite':
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.Numeric(20, 0))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if dialect.name == 'sqlite':
            return int(value) if int(value) < 2 ** 63 else str(int(value)).encode('ascii')
        return decimal.Decimal(int(value))

    def process_result_value(self, value, dialect):
        return None if value is None else int(value)


_MYSQL = ('mysql', 'mariadb')


def _exact_numeric(precision=None, scale=None) -> sa.types.TypeEngine:
    base = sa.Numeric(precision, scale) if precision is not None else sa.Numeric()
    if precision is None:
        base = base.with_variant(mysql.DECIMAL(65, 30), *_MYSQL)
    return base.with_variant(ExactDecimal(precision, scale), 'sqlite')


def _changeflow_sqlalchemy_type(column: ColumnType) -> sa.types.TypeEngine:
    kind = column.kind
    if kind == 'decimal':
        return _exact_numeric(column.precision, column.scale)
    return {
        'integer': lambda: sa.Integer(),
        'bigint': lambda: sa.BigInteger(),
        'float': lambda: sa.Double(),
        'string': lambda: sa.String(255),
        'text': lambda: sa.Text().with_variant(mysql.LONGTEXT(), *_MYSQL),
        'boolean': lambda: sa.Boolean(),
        'date': lambda: sa.Date(),
        'datetime': lambda: sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL),
        'binary': lambda: sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL),
        'json': lambda: sa.JSON(none_as_null=True),
    }[kind]()


def sqlalchemy_type(column) -> sa.types.TypeEngine:
    """The replica column type: one that holds every value of ``column`` in
    each database (a TableSpec type text, or a parsed :class:`ColumnType`).

    DECIMAL stays exact in SQLite (:class:`ExactDecimal`, never REAL); BIGINT
    UNSIGNED fits everywhere (:class:`ExactUnsignedBigInt`); an unsigned type
    gets the next wider signed type outside MySQL; ENUM and SET are strings;
    TINYINT(1) is an integer (not a boolean); BIT(n) an integer; YEAR a
    small integer; TIMESTAMP a DATETIME (the replica holds UTC)."""
    if isinstance(column, str):
        column = parse_type(column)
    if column.changeflow:
        return _changeflow_sqlalchemy_type(column)
    kind = column.kind
    if kind in INTEGER_RANGES:
        return _integer_type(kind, column.unsigned, column.length)
    if kind == 'bit':  # its value as an integer
        if column.length == 64:
            return _integer_type('bigint', True, None)
        return sa.BigInteger().with_variant(mysql.BIT(column.length), *_MYSQL)
    if kind == 'decimal':
        return sa.Numeric(column.precision, column.scale).with_variant(
            mysql.DECIMAL(column.precision, column.scale, unsigned=column.unsigned), *_MYSQL
        ).with_variant(ExactDecimal(column.precision, column.scale), 'sqlite')
    if kind == 'float':
        return sa.Float().with_variant(mysql.FLOAT(unsigned=column.unsigned), *_MYSQL)
    if kind == 'double':
        return sa.Double().with_variant(mysql.DOUBLE(unsigned=column.unsigned), *_MYSQL)
    if kind in ('char', 'varchar'):
        type_ = sa.String(column.length)
        mysql_type = (mysql.CHAR if kind == 'char' else mysql.VARCHAR)(
            column.length, charset=column.charset, collation=column.collation)
        return type_.with_variant(mysql_type, *_MYSQL)
    if kind in _TEXT_BYTES:
        mysql_type = {'tinytext': mysql.TINYTEXT, 'text': mysql.TEXT,
                      'mediumtext': mysql.MEDIUMTEXT}.get(kind, mysql.LONGTEXT)
        return sa.Text().with_variant(mysql_type(charset=column.charset,
                                                 collation=column.collation), *_MYSQL)
    if kind in ('binary', 'varbinary'):
        mysql_type = (mysql.BINARY if kind == 'binary' else mysql.VARBINARY)(column.length)
        return sa.LargeBinary().with_variant(mysql_type, *_MYSQL)
    if kind in _BLOB_BYTES:
        mysql_type = {'tinyblob': mysql.TINYBLOB, 'blob': mysql.BLOB,
                      'mediumblob': mysql.MEDIUMBLOB, 'longblob': mysql.LONGBLOB}[kind]
        return sa.LargeBinary().with_variant(mysql_type(), *_MYSQL)
    if kind == 'enum':
        return sa.String(max(len(v) for v in column.values))
    if kind == 'set':
        return sa.String(max(1, sum(len(v) + 1 for v in column.values) - 1))
    if kind == 'year':
        return sa.SmallInteger().with_variant(mysql.YEAR(), *_MYSQL)
    if kind == 'date':
        return sa.Date()
    if kind == 'time':
        return sa.Time().with_variant(mysql.TIME(fsp=column.fsp), *_MYSQL)
    if kind in ('datetime', 'timestamp'):
        return sa.DateTime().with_variant(mysql.DATETIME(fsp=column.fsp), *_MYSQL)
    return sa.JSON(none_as_null=True)  # json


def _integer_type(kind: str, unsigned: bool, width: Optional[int]) -> sa.types.TypeEngine:
    mysql_type = {'tinyint': mysql.TINYINT, 'smallint': mysql.SMALLINT,
                  'mediumint': mysql.MEDIUMINT, 'int': mysql.INTEGER,
                  'bigint': mysql.BIGINT}[kind](display_width=width, unsigned=unsigned)
    if kind == 'bigint' and unsigned:
        return sa.BigInteger().with_variant(mysql_type, *_MYSQL).with_variant(
            ExactUnsignedBigInt(), 'postgresql', 'sqlite')
    high = INTEGER_RANGES[kind][unsigned][1]
    base = (sa.SmallInteger() if high <= 2 ** 15 - 1 else sa.Integer() if high <= 2 ** 31 - 1
            else sa.BigInteger())
    return base.with_variant(mysql_type, *_MYSQL)


# Arrow ----------------------------------------------------------------------

_ARROW_INTEGERS = {'tinyint': (pa.int8(), pa.uint8()), 'smallint': (pa.int16(), pa.uint16()),
                   'mediumint': (pa.int32(), pa.uint32()), 'int': (pa.int32(), pa.uint32()),
                   'bigint': (pa.int64(), pa.uint64())}


def arrow_type(column) -> pa.DataType:
    """The Parquet (Arrow) type that holds every value of ``column``.

    changeflow's names keep their mapping (a bare 'decimal' is
    decimal128(38,9)); MySQL integers get their width and sign, DECIMAL(p,s)
    decimal128/256, ENUM/SET/CHAR/TEXT strings, BINARY/BLOB binary, YEAR
    int16, BIT(n) uint64, TIME duration(us), DATETIME/TIMESTAMP timestamp(us)."""
    if isinstance(column, str):
        column = parse_type(column)
    if column.shape is not None:
        return column.shape.arrow()
    kind = column.kind
    if kind == 'decimal':
        if column.changeflow and column.precision is None:
            return pa.decimal128(38, 9)
        return (pa.decimal128 if column.precision <= 38 else pa.decimal256)(
            column.precision, column.scale)
    if column.changeflow:
        return {
            'integer': pa.int64(), 'bigint': pa.int64(), 'float': pa.float64(),
            'string': pa.string(), 'text': pa.string(), 'json': pa.string(),
            'boolean': pa.bool_(), 'date': pa.date32(), 'datetime': pa.timestamp('us'),
            'binary': pa.binary(),
        }[kind]
    if kind in _ARROW_INTEGERS:
        return _ARROW_INTEGERS[kind][column.unsigned]
    if kind == 'bit':
        return pa.uint64()
    if kind == 'float':
        return pa.float32()
    if kind == 'double':
        return pa.float64()
    if kind in ('binary', 'varbinary') or kind in _BLOB_BYTES:
        return pa.binary()
    if kind == 'year':
        return pa.int16()
    if kind == 'date':
        return pa.date32()
    if kind == 'time':
        return pa.duration('us')  # MySQL TIME is -838:59:59 to 838:59:59, not a time of day
    if kind in ('datetime', 'timestamp'):
        return pa.timestamp('us')
    return pa.string()  # char, varchar, text, enum, set, json
