"""changeflow.sql.types: MySQL and changeflow column type text, and the storage types."""

import datetime
import decimal
import doctest

import pyarrow as pa
import pytest
import sqlalchemy as sa

import changeflow.sql.types
from changeflow.config import ConfigError, TableSpec, parse_config
from changeflow.sql.types import (ColumnType, arrow_type, canonical_type, parse_type,
                                  sqlalchemy_type)

D = decimal.Decimal


@pytest.mark.parametrize('text, expected', [
    ('int', ColumnType('int')),
    ('INT(11) UNSIGNED', ColumnType('int', unsigned=True)),
    ('int unsigned', ColumnType('int', unsigned=True)),
    ('tinyint(1)', ColumnType('tinyint', length=1)),
    ('smallint', ColumnType('smallint')), ('mediumint', ColumnType('mediumint')),
    ('bigint unsigned', ColumnType('bigint', unsigned=True)),
    ('bigint(20) unsigned zerofill', ColumnType('bigint', unsigned=True)),
    ('decimal(10,2)', ColumnType('decimal', True, precision=10, scale=2)),
    ('DECIMAL(10, 2) unsigned', ColumnType('decimal', precision=10, scale=2, unsigned=True)),
    ('numeric(5)', ColumnType('decimal', True, precision=5, scale=0)),
    ('float(30)', ColumnType('double')), ('double', ColumnType('double')),
    ('double precision', ColumnType('double')), ('real', ColumnType('double')),
    ('char(3)', ColumnType('char', length=3)), ('varchar(20)', ColumnType('varchar', length=20)),
    ('varchar(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin',
     ColumnType('varchar', length=20, charset='utf8mb4', collation='utf8mb4_bin')),
    ('mediumtext', ColumnType('mediumtext')), ('longtext', ColumnType('longtext')),
    ('binary(4)', ColumnType('binary', length=4)), ('varbinary(16)', ColumnType('varbinary', length=16)),
    ('blob', ColumnType('blob')), ('tinyblob', ColumnType('tinyblob')),
    ('text(100)', ColumnType('tinytext')), ('blob(70000)', ColumnType('mediumblob')),
    ("enum('a','B')", ColumnType('enum', values=('a', 'B'))),
    ("ENUM('it''s','a,b', 'x) ')", ColumnType('enum', values=("it's", 'a,b', 'x)'))),
    ("set('x','y')", ColumnType('set', values=('x', 'y'))),
    ('year', ColumnType('year')), ('year(4)', ColumnType('year')), ('date', ColumnType('date', True)),
    ('time(3)', ColumnType('time', fsp=3)), ('datetime(6)', ColumnType('datetime', fsp=6)),
    ('timestamp', ColumnType('timestamp', fsp=0)), ('bit(8)', ColumnType('bit', length=8)),
    ('bit', ColumnType('bit', length=1)), ('json', ColumnType('json', True)),
    # changeflow's own names keep their meaning
    ('integer', ColumnType('integer', True)), ('string', ColumnType('string', True)),
    ('boolean', ColumnType('boolean', True)), ('bool', ColumnType('boolean', True)),
    ('decimal', ColumnType('decimal', True)), ('float', ColumnType('float', True)),
    ('text', ColumnType('text', True)), ('binary', ColumnType('binary', True)),
    ('datetime', ColumnType('datetime', True)), ('bigint', ColumnType('bigint', True)),
])
def test_parse_type(text, expected):
    assert parse_type(text) == expected
    assert parse_type(canonical_type(text)) == expected  # what a TableSpec keeps reads back


def test_mysql_meaning_of_bare_names():
    assert parse_type('datetime', mysql=True) == ColumnType('datetime', fsp=0)
    assert parse_type('float', mysql=True) == ColumnType('float')
    assert parse_type('text', mysql=True) == ColumnType('text')
    assert parse_type('decimal', mysql=True) == ColumnType('decimal', True, precision=10, scale=0)
    for text in ('datetime', 'float', 'text', 'binary', 'bigint'):
        canonical = canonical_type(text, mysql=True)
        assert parse_type(canonical) == parse_type(text, mysql=True), canonical


@pytest.mark.parametrize('text, message', [
    ('decimal(2,5)', 'scale'), ('nope', "unknown type 'nope'"), ('int4', "unknown type 'int4'"),
    ('varchar', 'needs one length'), ('int(3,2)', 'one argument'), ('enum()', 'at least one'),
    ('bit(65)', 'BIT width'), ('datetime(7)', 'fractional'), ('int frobnicate', 'frobnicate'),
    (5, 'is not text'), ('decimal(66)', 'precision'), ('varchar(10', 'unknown type'),
    ("set(a)", 'quoted'), ('boolean(3)', 'no arguments'), ('', 'unknown type'), ('decimal(0)', 'precision'),
])
def test_unknown_or_impossible_types_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_type(text)


def test_config_accepts_mysql_types_and_names_the_key_of_a_bad_one(tmp_path):
    def config(columns):
        (tmp_path / 'log').write_text('')
        return parse_config({
            'source': {'type': 'archive', 'format': 'server-audit', 'path': str(tmp_path / 'log')},
            'tables': {'shop.t': {'key': 'id', 'columns': columns}},
            'sinks': {}, 'dead_letter': {'path': str(tmp_path)}})
    spec, = config({'id': 'INT(11) UNSIGNED', 'e': "ENUM('a', 'B')", 'd': 'Decimal(10, 2)',
                    'n': {'type': 'varchar(5)', 'default': 'x'}}).tables
    assert spec.columns == (('id', 'int unsigned'), ('e', "enum('a','B')"),
                            ('d', 'decimal(10,2)'), ('n', 'varchar(5)'))
    for bad, message in (('decimal(2,5)', 'tables.shop.t.columns.id: bad type'),
                         ('int4', "tables.shop.t.columns.id: unknown type 'int4'"),
                         (7, 'tables.shop.t.columns.id')):
        with pytest.raises(ConfigError, match=message):
            config({'id': bad})


@pytest.mark.parametrize('text, arrow', [
    ('tinyint', pa.int8()), ('tinyint unsigned', pa.uint8()), ('tinyint(1)', pa.int8()),
    ('smallint unsigned', pa.uint16()), ('int', pa.int32()), ('bigint unsigned', pa.uint64()),
    ('decimal(10,2)', pa.decimal128(10, 2)), ('decimal(50,4) unsigned', pa.decimal256(50, 4)),
    ('float(10)', pa.float32()), ('double', pa.float64()), ("enum('a')", pa.string()),
    ("set('a')", pa.string()), ('char(2)', pa.string()), ('varbinary(3)', pa.binary()),
    ('blob', pa.binary()), ('year', pa.int16()), ('bit(3)', pa.uint64()), ('time', pa.duration('us')),
    ('datetime(3)', pa.timestamp('us')), ('timestamp', pa.timestamp('us')), ('json', pa.string()),
    # changeflow's names keep io/parquet's mapping
    ('integer', pa.int64()), ('decimal', pa.decimal128(38, 9)), ('float', pa.float64()),
    ('boolean', pa.bool_()), ('datetime', pa.timestamp('us')), ('binary', pa.binary()),
])
def test_arrow_types(text, arrow):
    assert arrow_type(text) == arrow


def test_existing_names_keep_their_sqlalchemy_types():
    mysql = sa.dialects.mysql.dialect()
    for name, expected in (('integer', 'INTEGER'), ('bigint', 'BIGINT'), ('float', 'DOUBLE'),
                           ('string', 'VARCHAR(255)'), ('text', 'LONGTEXT'), ('boolean', 'BOOL'),
                           ('date', 'DATE'), ('datetime', 'DATETIME(6)'), ('binary', 'LONGBLOB'),
                           ('decimal', 'DECIMAL(65, 30)'), ('decimal(10,2)', 'NUMERIC(10, 2)')):
        assert sqlalchemy_type(name).compile(dialect=mysql) == expected, name


def _round_trip(engine, rows):
    """Each (type text, value) stored in a column of that type and read back."""
    metadata = sa.MetaData()
    table = sa.Table('cf_expr_types', metadata, sa.Column('k', sa.Integer, primary_key=True),
                     *(sa.Column(f'c{i}', sqlalchemy_type(t)) for i, (t, _) in enumerate(rows)))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(table.insert(), {'k': 1, **{f'c{i}': v for i, (_, v) in enumerate(rows)}})
            stored = conn.execute(sa.select(table)).one()
    finally:
        metadata.drop_all(engine)
    return [stored[i + 1] for i in range(len(rows))]


ROUND_TRIPS = [
    ('decimal(30,2)', D('1234567890123456789012345678.91')),  # more digits than a double holds
    ('decimal', D('0.100000000000000000000000000001')),  # MySQL: DECIMAL(65,30)
    ('decimal(10,2) unsigned', D('12.50')),
    ('bigint unsigned', 2 ** 64 - 1), ('int unsigned', 2 ** 32 - 1), ('tinyint(1)', 2),
    ("enum('a','B')", 'B'), ("set('x','y')", 'x,y'), ('year', 2155), ('bit(8)', 255),
    ('varbinary(4)', b'\x00\xff'), ('char(3)', 'ab'),
]


def test_storage_types_hold_their_values_in_sqlite():
    stored = _round_trip(sa.create_engine('sqlite://'), ROUND_TRIPS)
    for (text, value), result in zip(ROUND_TRIPS, stored):
        assert result == value and type(result) is type(value), (text, result)


@pytest.mark.parametrize('url', ['postgresql+psycopg2://postgres@127.0.0.1:5432/test',
                                 'mysql+pymysql://root@127.0.0.1:3306/test'])
def test_storage_types_hold_their_values_in_servers(url):
    engine = sa.create_engine(url, connect_args={'connect_timeout': 2})
    try:
        engine.connect().close()
    except sa.exc.OperationalError as error:
        pytest.skip(f'{url} is not reachable: {str(error).splitlines()[0]}')
    stored = _round_trip(engine, ROUND_TRIPS)
    for (text, value), result in zip(ROUND_TRIPS, stored):
        assert result == value, (url, text, result)
    engine.dispose()


def test_docstring_examples():
    assert doctest.testmod(changeflow.sql.types).failed == 0


def test_keys_of_mysql_types_are_cast_as_their_kind():
    from changeflow.config import TableSpec
    from changeflow.sql.plans import key_caster
    spec = TableSpec('s.t', ('a', 'b', 'c', 'd'), 't', (
        ('a', 'int(11) unsigned'), ('b', 'varchar(10)'), ('c', 'decimal(10,2)'), ('d', 'year')))
    assert key_caster(spec)(('5', 7, '1.50', '2024')) == (5, '7', D('1.50'), 2024)


def test_sqlite_keeps_long_decimals_exact_and_short_ones_numbers():
    engine = sa.create_engine('sqlite://')
    metadata = sa.MetaData()
    table = sa.Table('cf_expr_exact', metadata, sa.Column('k', sa.Integer, primary_key=True),
                     sa.Column('d', sqlalchemy_type('decimal(30,2)')),
                     sa.Column('u', sqlalchemy_type('bigint unsigned')))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{'k': 1, 'd': D('12345.68'), 'u': 5},
                                      {'k': 2, 'd': D('9007199254740993.01'), 'u': 2 ** 64 - 1}])
        kinds = conn.execute(sa.text('SELECT typeof(d), typeof(u) FROM cf_expr_exact ORDER BY k')).all()
        values = conn.execute(sa.select(table.c.d, table.c.u).order_by(table.c.k)).all()
    assert kinds == [('real', 'integer'), ('blob', 'blob')]  # REAL would be 9007199254740992
    assert values == [(D('12345.68'), 5), (D('9007199254740993.01'), 2 ** 64 - 1)]


@pytest.mark.parametrize('text, value, stored', [
    ("enum('a','B')", 'b', 'B'), ("enum('a','B')", 2, 'B'), ("set('x','y')", 'y,x', 'x,y'),
    ('year', '69', 2069), ('char(3)', 'ab ', 'ab'), ('bit(8)', '5', 53),
    ('datetime(0)', '2026-11-24 01:39:25.708948', datetime.datetime(2026, 11, 24, 1, 39, 25)),
    ('tinyint(1)', 2, 2), ('int unsigned', '7', 7), ('decimal(10,2) unsigned', '1.005',
                                                    D('1.01')),
])
def test_the_database_sink_stores_mysql_types_as_mysql_does(text, value, stored):
    """A column declared with MySQL type text is coerced by that text (ENUM by
    index and declared spelling, YEAR's two-digit years, CHAR's trailing
    spaces, DATETIME(0)'s cut fraction), not by its storage type."""
    from changeflow.io.sql import sql_type, _Target
    engine = sa.create_engine('sqlite://')
    metadata = sa.MetaData()
    table = sa.Table('cf_types_sink', metadata, sa.Column('k', sa.Integer, primary_key=True),
                     sa.Column('v', sql_type(text)))
    metadata.create_all(engine)
    target = _Target(TableSpec('shop.t', ('k',), 'cf_types_sink', (('k', 'integer'), ('v', text))),
                     table)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{'k': 1, 'v': target.coerce('v', value)}])
        assert conn.execute(sa.select(table.c.v)).scalar_one() == stored


@pytest.mark.parametrize('text, value', [
    ("enum('a','B')", 'b'), ("set('x','y')", 'y,x'), ('year', '69'), ('char(3)', 'ab '),
    ('binary(3)', 'a'), ('bit(8)', '5'), ('time(0)', '-10:00:00.5'), ('tinyint unsigned', 255),
    ('bigint unsigned', 2 ** 64 - 1), ('decimal(10,2) unsigned', '1.005'), ('float(10)', 0.5),
    ('datetime(3)', '2024-01-01 10:00:00.12345'), ('mediumblob', b'\x00'), ('json', '[1]'),
])
def test_parquet_stores_mysql_types(text, value):
    from changeflow.io import parquet
    from changeflow.sql.coercion import coercer
    arrow = arrow_type(text)
    coerced = parquet._coercer(arrow, text)(value)
    assert coerced == coercer(text)(value)
    assert pa.array([coerced], type=arrow).to_pylist() == [coerced]


@pytest.mark.parametrize('declared, given, cast', [
    ('integer', ('5',), (5,)), ('integer', (5,), (5,)), ('integer', (True,), (True,)),
    ('integer', ('1e2',), (100,)), ('integer', (), ()), ('integer', (None,), (None,)),
    ('varchar(10)', (7,), ('7',)), ('varchar(10)', ('x',), ('x',)),
    ('decimal(10,2)', ('1.50',), (D('1.50'),)),
])
def test_a_single_key_column_is_cast_as_its_kind(declared, given, cast):
    """The one-column fast path (a value already of its type passes as it is)
    casts as the general caster does."""
    from changeflow.config import TableSpec
    from changeflow.sql.plans import key_caster
    key = key_caster(TableSpec('s.t', ('a',), 't', (('a', declared),)))(given)
    assert key == cast and [type(v) for v in key] == [type(v) for v in cast]
