"""changeflow.sql.coercion: each declared type's accepted and refused values.

Cases marked "sql" or "parquet" are where the two sinks' former coercions
disagreed; the comment says which sink changed.
"""

import datetime
import doctest
import decimal
import math

import pyarrow as pa
import pytest
import sqlalchemy as sa

import changeflow.sql.coercion
from changeflow.sql.coercion import BadValue, coercer
from changeflow.io import parquet, sql

D = decimal.Decimal
UTC = datetime.timezone.utc
PLUS5 = datetime.timezone(datetime.timedelta(hours=5))


def accepts(column_type, value, expected, **kwargs):
    result = coercer(column_type, **kwargs)(value)
    assert result == expected and type(result) is type(expected), (value, result)


def refuses(column_type, value, message, **kwargs):
    with pytest.raises(BadValue, match=message):
        coercer(column_type, **kwargs)(value)


@pytest.mark.parametrize('value, expected', [
    (7, 7), (-7, -7), (True, 1), (False, 0), ('42', 42), (' 42\n', 42), (b'42', 42),
    (D('2.5'), 3), (D('-2.5'), -3), ('2.4', 2), (2.5, 3), (-0.5, -1),  # half away from zero
    ('1e3', 1000), (2 ** 64 - 1, 2 ** 64 - 1), (-2 ** 63, -2 ** 63),
])
def test_integer_accepts(value, expected):
    accepts('integer', value, expected)
    accepts('bigint', value, expected)


@pytest.mark.parametrize('value, message', [
    ('lots', 'not a number'), ('', 'not a number'), (b'\xff', 'not UTF-8'),
    ('NaN', 'not a finite number'), (float('inf'), 'not a finite number'),
    (datetime.date(2026, 1, 1), 'date is not a number'),
    # sql passed these to the driver: no MySQL integer column holds them.
    (2 ** 64, 'out of range'), (-2 ** 63 - 1, 'out of range'), ('1e30', 'out of range'),
    (D('1e1000000'), 'out of range'),
])
def test_integer_refuses(value, message):
    refuses('integer', value, message)


@pytest.mark.parametrize('column_type, value, expected', [
    ('decimal(10,2)', '12.345', D('12.35')), ('decimal(10,2)', '-12.345', D('-12.35')),
    ('decimal(10,2)', 7, D('7.00')), ('decimal(10,2)', 1.005, D('1.01')),  # the float's repr
    ('decimal(10,2)', True, D('1.00')), ('decimal(10,2)', b' 3.1 ', D('3.10')),
    ('decimal(5,2)', '999.994', D('999.99')), ('decimal(2,2)', '0.994', D('0.99')),
    ('decimal(2,2)', 0, D('0.00')), ('decimal(10,2)', '1e-999999', D('0.00')),
    ('DECIMAL(10, 2)', '1', D('1.00')), ('decimal(4)', '12.5', D('13')),
    ('decimal', '1.2300', D('1.2300')), ('decimal', 10 ** 70, D(10 ** 70)),  # exact
])
def test_decimal_accepts(column_type, value, expected):
    result = coercer(column_type)(value)
    assert result == expected and str(result) == str(expected)


@pytest.mark.parametrize('column_type, value, message', [
    ('decimal(5,2)', '1000', r'out of range for DECIMAL\(5,2\)'),
    ('decimal(5,2)', '999.995', 'out of range'),  # rounding carries into a 4th digit
    ('decimal(2,2)', '0.995', 'out of range'),
    # sql raised decimal.InvalidOperation (not a bad value) beyond 100 digits.
    ('decimal(10,2)', '1e200', 'out of range'),
    ('decimal(10,2)', 'ten', 'not a number'), ('decimal', 'Infinity', 'not a finite number'),
    ('decimal(10,2)', datetime.date(2026, 1, 1), 'date is not a number'),
])
def test_decimal_refuses(column_type, value, message):
    refuses(column_type, value, message)


@pytest.mark.parametrize('value, expected', [
    (0.25, 0.25), ('0.1', 0.1), (7, 7.0), (D('1.5'), 1.5), (True, 1.0), (b'2', 2.0),
])
def test_float_accepts(value, expected):
    accepts('float', value, expected)


@pytest.mark.parametrize('value, message', [('x', 'not a number'), ([1], 'list is not')])
def test_float_refuses(value, message):
    refuses('float', value, message)


@pytest.mark.parametrize('value, expected', [
    (True, True), (False, False), (1, True), (0, False), ('1', True), ('0', False),
    ('true', True), (' FALSE ', False), (b'true', True), (D('1'), True), (-128, True),
    # sql accepted only 0, 1, true and false: MySQL's BOOLEAN is TINYINT(1).
    (2, True), (-1, True), ('2', True), (1.0, True), (D('0.5'), True),
    # parquet took any non-zero number as true: TINYINT(1) stores 0.4 as 0.
    (0.4, False), ('-0.4', False),
])
def test_boolean_accepts(value, expected):
    accepts('boolean', value, expected)


@pytest.mark.parametrize('value, message', [
    ('yes', 'not a boolean'), ('', 'not a boolean'), (float('nan'), 'not a finite number'),
    (datetime.date(2026, 1, 1), 'date is not a number'),
    # parquet accepted these: out of TINYINT's range, MySQL refuses them.
    (128, 'out of range'), ('-129', 'out of range'), (127.5, 'out of range'),
])
def test_boolean_refuses(value, message):
    refuses('boolean', value, message)


@pytest.mark.parametrize('value, expected', [
    ('2026-11-22', datetime.date(2026, 11, 22)), (' 2026-11-22 ', datetime.date(2026, 11, 22)),
    (b'2026-11-22', datetime.date(2026, 11, 22)),
    ('2026-11-22 14:16:18', datetime.date(2026, 11, 22)),
    (datetime.date(2026, 11, 22), datetime.date(2026, 11, 22)),
    (datetime.datetime(2026, 11, 22, 23, 59), datetime.date(2026, 11, 22)),
    # sql refused integers: MySQL reads 20261122 as a date.
    (20261122, datetime.date(2026, 11, 22)),
    # sql took the day in the value's zone: the UTC day, as for datetime columns.
    ('2026-11-22T01:00:00+05:00', datetime.date(2026, 11, 21)),
    (datetime.datetime(2026, 11, 22, 1, tzinfo=PLUS5), datetime.date(2026, 11, 21)),
])
def test_date_accepts(value, expected):
    accepts('date', value, expected)


@pytest.mark.parametrize('value, message', [
    ('2026-02-30', 'not a date'), ('0000-00-00', 'not a date'), ('yesterday', 'not a date'),
    (2026, 'not a date'), (True, 'bool is not a date'), (D('20261122'), 'Decimal is not a date'),
])
def test_date_refuses(value, message):
    refuses('date', value, message)


@pytest.mark.parametrize('value, expected', [
    ('2026-11-22 14:16:18.250000', datetime.datetime(2026, 11, 22, 14, 16, 18, 250000)),
    ('2026-11-22T14:16:18', datetime.datetime(2026, 11, 22, 14, 16, 18)),
    (b'2026-11-22 14:16:18', datetime.datetime(2026, 11, 22, 14, 16, 18)),
    ('2026-11-22 14:16:18+05:00', datetime.datetime(2026, 11, 22, 9, 16, 18)),
    ('2026-11-22T14:16:18Z', datetime.datetime(2026, 11, 22, 14, 16, 18)),
    ('2026-11-22', datetime.datetime(2026, 11, 22)),
    (datetime.date(2026, 11, 22), datetime.datetime(2026, 11, 22)),
    (datetime.datetime(2026, 11, 22, 1, tzinfo=PLUS5), datetime.datetime(2026, 11, 21, 20)),
])
def test_datetime_accepts(value, expected):
    accepts('datetime', value, expected)


@pytest.mark.parametrize('value, message', [
    ('2026-11-22 25:00:00', 'not a date-time'), ('soon', 'not a date-time'),
    (20261122141618, 'int is not a date-time'), (b'\xff', 'not UTF-8'),
])
def test_datetime_refuses(value, message):
    refuses('datetime', value, message)


@pytest.mark.parametrize('value, expected', [
    ("O'Brien, Zoë 🙂", "O'Brien, Zoë 🙂"), ('  padded ', '  padded '),  # text is not stripped
    ('caf\u00e9'.encode(), 'caf\u00e9'), (bytearray(b'x'), 'x'), (True, '1'), (False, '0'),
    (12, '12'), (D('12.50'), '12.50'), (0.25, '0.25'),
    # sql wrote str(Decimal): MySQL writes a DECIMAL's digits, never an exponent.
    (D('1E-7'), '0.0000001'), (D('1E+2'), '100'),
    (datetime.date(2026, 11, 22), '2026-11-22'),
    (datetime.datetime(2026, 11, 22, 14, 16, 18), '2026-11-22 14:16:18'),
])
def test_string_accepts(value, expected):
    accepts('string', value, expected)
    accepts('text', value, expected)


@pytest.mark.parametrize('value, message', [
    # sql passed lone surrogates (bytes that were not UTF-8) on to the driver.
    ('caf\udce9', 'not UTF-8'), (b'caf\xe9', 'not UTF-8'),
    ({'a': 1}, 'dict is not text'),
])
def test_string_refuses(value, message):
    refuses('string', value, message)


def test_string_length_counts_characters():
    accepts('string', 'Zoë🙂', 'Zoë🙂', length=4)
    refuses('string', 'Zoë🙂!', 'longer than 4 characters', length=4)
    accepts('text', 'x' * 10_000, 'x' * 10_000)


@pytest.mark.parametrize('value, expected', [
    (b'\x00\xff', b'\x00\xff'), (bytearray(b'\x01'), b'\x01'), (memoryview(b'ab'), b'ab'),
    ('café', 'café'.encode()),
])
def test_binary_accepts(value, expected):
    accepts('binary', value, expected)


@pytest.mark.parametrize('value, message', [
    ('caf\udce9', 'not UTF-8'), (5, 'int is not binary'), (D('1'), 'Decimal is not binary'),
])
def test_binary_refuses(value, message):
    refuses('binary', value, message)


@pytest.mark.parametrize('value, expected', [
    ('{"a": [1, 2]}', '{"a": [1, 2]}'),  # the document's text as given
    (b'[1,2.5]', '[1,2.5]'), ('"x"', '"x"'), (' null ', ' null '),
    (12, '12'), (0.25, '0.25'), (D('1.50'), '1.50'),
    # parquet stored '1': a bool is a JSON boolean, as in MySQL's JSON functions.
    (True, 'true'), (False, 'false'),
    # parquet refused documents (as a replica reads them back): their JSON text.
    ({'a': [1, 'é']}, '{"a":[1,"é"]}'), ([], '[]'),
])
def test_json_accepts(value, expected):
    accepts('json', value, expected)


@pytest.mark.parametrize('value, message', [
    ('{"a": }', 'not valid JSON'), ('x', 'not valid JSON'),
    # sql parsed these with json.loads; MySQL's JSON parser refuses them.
    ('NaN', 'not valid JSON'), ('[Infinity]', 'not valid JSON'), ('1e400', 'not valid JSON'),
    ('"\\udce9"', 'not valid JSON'), (float('nan'), 'not valid JSON'),
    ({'a': float('nan')}, 'not a JSON document'),
    (datetime.date(2026, 1, 1), 'date is not JSON'), ('caf\udce9', 'not UTF-8'),
])
def test_json_refuses(value, message):
    refuses('json', value, message)


@pytest.mark.parametrize('column_type, kwargs', [
    ('varchar', {}), ('decimal(2,3)', {}), ('decimal(0)', {}), ('decimal(1,', {}),
    ('integer', {'length': 10}),
])
def test_unknown_types_and_misused_length_are_refused(column_type, kwargs):
    with pytest.raises(ValueError) as raised:
        coercer(column_type, **kwargs)
    assert not isinstance(raised.value, BadValue)


def test_bad_value_is_a_value_error():
    assert issubclass(BadValue, ValueError)


def test_docstring_examples():
    assert doctest.testmod(changeflow.sql.coercion).failed == 0


# Both sinks coerce through this module: the same value gives the same result.
@pytest.mark.parametrize('declared, sql_type, arrow_type, value', [
    ('boolean', sa.Boolean(), pa.bool_(), 2),
    ('boolean', sa.Boolean(), pa.bool_(), 0.4),
    ('decimal(5,2)', sa.Numeric(5, 2), pa.decimal128(5, 2), '12.345'),
    ('date', sa.Date(), pa.date32(), 20261122),
    ('datetime', sa.DateTime(), pa.timestamp('us'), '2026-11-22T01:00:00+05:00'),
    ('string', sa.String(255), pa.string(), D('1E-7')),
    ('integer', sa.Integer(), pa.int64(), '-2.5'),
])
def test_the_sinks_agree(declared, sql_type, arrow_type, value):
    assert sql._coercer(sql_type)(value) == parquet._coercer(arrow_type, declared)(value)


@pytest.mark.parametrize('declared, sql_type, arrow_type, value', [
    ('boolean', sa.Boolean(), pa.bool_(), 128),
    ('decimal(5,2)', sa.Numeric(5, 2), pa.decimal128(5, 2), '999.995'),
    ('string', sa.String(255), pa.string(), 'caf\udce9'),
    ('json', sa.JSON(), pa.string(), 'NaN'),
])
def test_the_sinks_refuse_alike(declared, sql_type, arrow_type, value):
    with pytest.raises(BadValue):
        sql._coercer(sql_type)(value)
    with pytest.raises(BadValue):
        parquet._coercer(arrow_type, declared)(value)


def test_sink_specific_limits_stay_in_the_sinks():
    assert sql._coercer(sa.JSON())('{"a": [1]}') == {'a': [1]}  # objects for SQLAlchemy
    assert parquet._coercer(pa.string(), 'json')('{"a": [1]}') == '{"a": [1]}'
    assert sql._coercer(sa.BigInteger())(2 ** 63) == 2 ** 63  # the database checks
    with pytest.raises(BadValue, match='int64'):
        parquet._coercer(pa.int64(), 'bigint')(2 ** 63)
    with pytest.raises(BadValue, match='longer than 3'):
        sql._coercer(sa.String(3))('abcd')
    assert parquet._coercer(pa.string(), 'string')('abcd') == 'abcd'
    assert parquet._coercer(pa.decimal128(38, 9), 'decimal')('1.0000000005') == D('1.000000001')
    assert sql._coercer(sa.Numeric())('1.0000000005') == D('1.0000000005')
    assert sql._coercer(sa.Time())('10:00') == '10:00'  # undeclared types: the driver's


# MySQL column types: what MariaDB 10.11 stores in strict mode --------------
# (value as written in SQL, the value as Python passes it, what MariaDB holds).
# test_mysql_cases_match_live_mariadb stores each in a real column when the
# local MariaDB is reachable.

from changeflow.sql.literals import HexLiteral  # noqa: E402

MYSQL_STORES = [
    ("enum('a','B')", "'b'", 'b', 'B'), ("enum('a','B')", "'A '", 'A ', 'a'),
    ("enum('a','B')", '2', 2, 'B'), ("enum('a','B')", "'2'", '2', 'B'),
    ("enum('a','B')", '1.6', D('1.6'), 'a'), ("enum('0','1','2')", '2', 2, '1'),
    ("enum('0','1','2')", "'2'", '2', '2'), ("enum('0','1','2')", "'3'", '3', '2'),
    ("enum('a ','b')", "'a'", 'a', 'a'),
    ("set('x','y','z')", "'z,x,X'", 'z,x,X', 'x,z'), ("set('x','y','z')", "''", '', ''),
    ("set('x','y','z')", '5', 5, 'x,z'), ("set('x','y','z')", "'3'", '3', 'x,y'),
    ("set('x','y','z')", '0', 0, ''),
    ('year', '0', 0, 0), ('year', "'0'", '0', 2000), ('year', "'00'", '00', 2000),
    ('year', '69', 69, 2069), ('year', '70', 70, 1970), ('year', "'69'", '69', 2069),
    ('year', '99', 99, 1999), ('year', '1901', 1901, 1901), ('year', '2155', 2155, 2155),
    ('year', "'2024'", '2024', 2024), ('year', '2024.6', D('2024.6'), 2025),
    ('datetime(0)', "'2024-01-01 10:00:00.6'", '2024-01-01 10:00:00.6',
     datetime.datetime(2024, 1, 1, 10, 0)),
    ('datetime(1)', "'2024-01-01 10:00:00.66'", '2024-01-01 10:00:00.66',
     datetime.datetime(2024, 1, 1, 10, 0, 0, 600000)),
    ('bit(8)', '255', 255, 255), ('bit(8)', "'5'", '5', 53), ('bit(8)', '0x41', HexLiteral(b'A'), 65),
    ("bit(8)", "b'101'", 5, 5), ('bit(16)', "'ab'", 'ab', 0x6162),
    ('char(3)', "'ab '", 'ab ', 'ab'), ('char(3)', "'ab   '", 'ab   ', 'ab'),
    ('varchar(3)', "'ab    '", 'ab    ', 'ab '), ('binary(4)', "'ab'", 'ab', b'ab\0\0'),
    ('varbinary(10)', '5', 5, b'5'), ('varchar(5)', '0x41', HexLiteral(b'A'), 'A'),
    ('varchar(5)', '12.50', D('12.50'), '12.50'), ('text', '12.5e0', 12.5, '12.5'),
    ('varchar(10)', '1e20', 1e20, '1e20'), ('varchar(10)', '6e0', 6.0, '6'),
    ('tinyint(1)', '2', 2, 2), ('int unsigned', '4294967295', 4294967295, 4294967295),
    ('decimal(5,2)', '1.005', D('1.005'), D('1.01')), ('decimal(5,2)', '-1.005', D('-1.005'), D('-1.01')),
    ('decimal(5,2)', '0x41', HexLiteral(b'A'), D('65.00')), ('int', '0x41', HexLiteral(b'A'), 65),
    ('int', '2.5', D('2.5'), 3), ('tinyint', "' 12 '", ' 12 ', 12), ('float', '0.1', D('0.1'), 0.1),
    ('bigint unsigned', '18446744073709551615', 2 ** 64 - 1, 2 ** 64 - 1),
    ('time', "'838:59:59'", '838:59:59', datetime.timedelta(hours=838, minutes=59, seconds=59)),
    ('time', "'-10:00:00.5'", '-10:00:00.5', -datetime.timedelta(hours=10)),
    ('time(2)', "'1 02:03:04.567'", '1 02:03:04.567', datetime.timedelta(days=1, seconds=7384, microseconds=560000)),
    ('mediumint unsigned', '16777215', 16777215, 16777215), ('smallint', '-32768', -32768, -32768),
    ('char(2) character set utf8mb4', "'é '", 'é ', 'é'),
]

MYSQL_REFUSES = [
    ("enum('a','B')", '0', 0), ("enum('a','B')", "''", ''), ("enum('a','B')", '3', 3),
    ("enum('a','B')", "'c'", 'c'),
    ("set('x','y','z')", '8', 8), ("set('x','y','z')", "'x,w'", 'x,w'),
    ("set('x','y','z')", "'y, x'", 'y, x'),
    ('year', '1900', 1900), ('year', '2156', 2156), ('year', "'24x'", '24x'),
    ('timestamp', "'1969-12-31 23:59:59'", '1969-12-31 23:59:59'),
    ('timestamp', "'2038-01-19 03:14:08'", '2038-01-19 03:14:08'),
    ('bit(8)', '256', 256), ('char(3)', "'abcd'", 'abcd'), ('varbinary(2)', "'abc'", 'abc'),
    ('tinyint', '128', 128), ('tinyint unsigned', '-1', -1), ('decimal(5,2) unsigned', '-1', -1),
    ('int', "'12abc'", '12abc'), ('double unsigned', '-1', -1), ('time', "'839:00:00'", '839:00:00'),
    ('int unsigned', '4294967296', 4294967296), ('smallint', '32768', 32768),
    ('tinytext', 'REPEAT(\'é\', 128)', 'é' * 128),
]


@pytest.mark.parametrize('column_type, sql, value, stored', MYSQL_STORES)
def test_mysql_types_store_what_mariadb_stores(column_type, sql, value, stored):
    result = coercer(column_type)(value)
    assert result == stored and type(result) is type(stored), (value, result)


@pytest.mark.parametrize('column_type, sql, value', MYSQL_REFUSES)
def test_mysql_types_refuse_what_mariadb_refuses(column_type, sql, value):
    with pytest.raises(BadValue):
        coercer(column_type)(value)


def test_tinyint_1_is_an_integer_and_boolean_stays_a_bool():
    assert coercer('tinyint(1)')(5) == 5 and type(coercer('tinyint(1)')(1)) is int
    assert coercer('bool')(5) is True and coercer('boolean')(0) is False


def _mariadb():
    pymysql = pytest.importorskip('pymysql')
    try:
        return pymysql.connect(host='127.0.0.1', port=3306, user='root', database='test',
                               connect_timeout=2, charset='utf8mb4', autocommit=True)
    except pymysql.err.OperationalError as error:
        pytest.skip(f'MariaDB at 127.0.0.1:3306 is not reachable: {error}')


def _as_python(column_type, value):
    """A value as pymysql returns it, as changeflow's coercion holds it."""
    if column_type.startswith('bit') and isinstance(value, bytes):
        return int.from_bytes(value, 'big')
    return value


def test_mysql_cases_match_live_mariadb():
    import pymysql
    connection = _mariadb()
    wrong = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET sql_mode = DEFAULT, time_zone = '+00:00'")
            for column_type, text, _, stored in MYSQL_STORES + [c + (None,) for c in MYSQL_REFUSES]:
                cursor.execute('DROP TABLE IF EXISTS cf_expr_coercion')
                cursor.execute(f'CREATE TABLE cf_expr_coercion (v {column_type})')
                try:
                    cursor.execute(f'INSERT INTO cf_expr_coercion VALUES ({text})')
                except pymysql.err.MySQLError:
                    if stored is not None:
                        wrong.append((column_type, text, 'refused'))
                    continue
                cursor.execute('SELECT v FROM cf_expr_coercion')
                (server,), = cursor.fetchall()
                if stored is None or _as_python(column_type, server) != stored:
                    wrong.append((column_type, text, server))
            cursor.execute('DROP TABLE IF EXISTS cf_expr_coercion')
    finally:
        connection.close()
    assert not wrong, wrong


def test_exact_decimal_binds_a_value_of_its_scale_as_requantizing_it_would():
    """A Decimal already of the column's scale skips the re-quantizing; what
    is bound stays bit-identical (the float's sign and bits, or the BLOB)."""
    from changeflow.sql import types
    column = types.ExactDecimal(18, 2)
    dialect = sa.create_engine('sqlite://').dialect

    def reference(value):  # what binding did before, re-quantizing every value
        number = value if isinstance(value, decimal.Decimal) else decimal.Decimal(
            repr(value) if isinstance(value, float) else value)
        number = number.quantize(decimal.Decimal('0.01'), context=decimal.Context(prec=100))
        if number.adjusted() + 2 < 15:
            return float(number)
        double = float(number)
        if math.isfinite(double) and decimal.Decimal(repr(double)) == number:
            return double
        return format(number, 'f').encode('ascii')

    class Sub(decimal.Decimal):
        pass

    values = [decimal.Decimal(v) for v in (
        '1.50', '1.5', '1.555', '-0.00', '0E-2', '123456789012.34', '1234567890123.45',
        '1234567890123456.78', '1E+3', '7')] + [Sub('2.505'), 2, '3.14159', 0.1]
    for value in values:
        bound, expected = column.process_bind_param(value, dialect), reference(value)
        assert type(bound) is type(expected), value
        assert repr(bound) == repr(expected), value  # -0.0 and 0.0 told apart


def test_exact_decimal_does_not_requantize_a_value_of_its_scale():
    """quantize always makes a new Decimal: the value itself back means it was
    not quantized again."""
    from changeflow.sql import types
    column = types.ExactDecimal(12, 2)
    value = decimal.Decimal('-12.30')
    assert types._exact(value, 2) is value
    assert column.process_bind_param(value, None) == -12.3
