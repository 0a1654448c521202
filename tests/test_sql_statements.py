"""The database sink's statements, compiled once per dialect and run with plain
tuples (changeflow.io.sql._Compiled), against SQLite, PostgreSQL and MariaDB:
they store and read back exactly what SQLAlchemy Core's statements do, report a
value its type refuses as Core does, and read many rows of a composite key in
padded chunks."""

import decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from changeflow.config import TableSpec
from changeflow.io import sql
from changeflow.io.sql import (_Item, _Plan, _Replica, _Target, _describe, create_engine,
                               replica_table)
from changeflow.model import Change, OpKind, RowOp, audit_version
from changeflow.sql.expressions import col, lit
from changeflow.sql.rowstate import ABSENT, RowState

D = decimal.Decimal
T0 = 1_795_000_000_000_000

TYPED = (('id', 'integer'), ('big', 'bigint'), ('amount', 'decimal(12,2)'), ('price', 'decimal'),
         ('ratio', 'float'), ('name', 'string'), ('body', 'text'), ('flag', 'boolean'),
         ('day', 'date'), ('at', 'datetime'), ('blob', 'binary'), ('doc', 'json'))

INSERTED = {
    'big': '9007199254740993', 'amount': '12345.675', 'price': '0.1000000000000000055511151231257827',
    'ratio': '0.1', 'name': "O'Brien, Zoë 🙂", 'body': 'line\nbreak\\', 'flag': 2,
    'day': '2026-11-01', 'at': '2026-11-01 10:20:30.123456+02:00', 'blob': b'\x00\xff',
    'doc': '{"a": [1, 2.5, "x"], "b": null}'}
UPDATED = {'amount': D('-0.5'), 'price': D('12.5'), 'flag': 0, 'name': None, 'doc': '[]'}


@pytest.fixture
def engine(database_url, table_prefix):
    engine = create_engine(database_url)
    yield engine
    with engine.begin() as conn:
        for name in sa.inspect(conn).get_table_names():
            if name.startswith(table_prefix):
                sa.Table(name, sa.MetaData()).drop(conn)
    engine.dispose()


def _typed_target(table_prefix, name):
    spec = TableSpec('shop.kinds', ('id',), table_prefix + name, TYPED)
    return _Target(spec, replica_table(spec, sa.MetaData()))


def _coerced(target, values):
    return {column: target.coerce(column, value) for column, value in values.items()}


def _stored(conn, table):
    """The rows as the driver returns them (no SQLAlchemy type processing);
    on SQLite with each value's storage class."""
    columns = list(table.columns)
    if conn.dialect.name == 'sqlite':
        columns += [sa.func.typeof(c) for c in table.columns]
    text = str(sa.select(*columns).compile(dialect=conn.dialect))
    return sorted(conn.exec_driver_sql(text).all(), key=lambda row: row[0])


def test_lean_statements_store_and_read_what_sqlalchemy_core_does(engine, table_prefix):
    lean, core = _typed_target(table_prefix, 'lean'), _typed_target(table_prefix, 'core')
    with engine.begin() as conn:
        for target in (lean, core):
            target.table.create(conn)
        first, second = _coerced(lean, INSERTED), _coerced(lean, UPDATED)
        plan = _Plan(lean)
        for key in (1, 2):
            plan.add((key,), ABSENT, RowState(True, dict(first), True))
        plan.execute(conn)
        plan = _Plan(lean)
        plan.add((2,), RowState(True, {'id': 2, **first}, False),
                 RowState(True, {'id': 2, **first, **second}, False))
        plan.add((1,), RowState(True, {}, False), ABSENT)
        plan.add((3,), ABSENT, RowState(True, {'id': 3}, True))
        plan.execute(conn)

        table = core.table
        conn.execute(table.insert(), [{'id': 1, **first}, {'id': 2, **first}])
        conn.execute(table.update().where(table.c.id == 2).values(second))
        conn.execute(table.delete().where(table.c.id == 1))
        conn.execute(table.insert(), [{'id': 3}])

        assert _stored(conn, lean.table) == _stored(conn, core.table)
        read = _Replica([], 'unused_')._current_rows(conn, lean, [(1,), (2,), (3,)])
        by_core = {f'[{row["id"]}]': dict(row)
                   for row in conn.execute(sa.select(core.table)).mappings()}
        assert read == by_core
        assert read['[2]']['amount'] == D('-0.50') and read['[2]']['name'] is None
        assert read['[3]']['amount'] is None


def test_plan_statements_bind_in_the_order_their_sql_renders(engine, table_prefix):
    """A plan groups an INSERT's or UPDATE's columns in the table's order, the
    order its VALUES and SET render: the driver's parameters need no
    reordering row by row."""
    target = _typed_target(table_prefix, 'order')
    with engine.begin() as conn:
        target.table.create(conn)
        plan = _Plan(target)
        plan.add((1,), ABSENT, RowState(True, {'name': 'a', 'ratio': 0.5, 'id': 1}, True))
        plan.execute(conn)
        plan = _Plan(target)
        plan.add((1,), RowState(True, {'id': 1, 'name': 'a', 'ratio': 0.5}, False),
                 RowState(True, {'id': 1, 'name': 'b', 'ratio': 0.25}, False))
        plan.execute(conn)
        written = [compiled for shape, compiled in target.statements._compiled.items()
                   if shape[1] in ('insert', 'update')]
        assert len(written) == 2 and all(compiled._order is None for compiled in written)
        assert conn.execute(sa.select(target.table.c.name, target.table.c.ratio)).all() == [
            ('b', 0.25)]


class _Picky(sa.types.TypeDecorator):
    """Text its bind processor refuses: a value only the type, not the sink's
    coercion or the database, rejects."""
    impl = sa.String(20)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value == 'refused':
            raise ValueError('refused by its type')
        return value


def test_a_value_its_type_refuses_is_reported_as_sqlalchemy_reports_it(engine, table_prefix):
    table = sa.Table(table_prefix + 'picky', sa.MetaData(),
                     sa.Column('id', sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column('code', _Picky()))
    target = _Target(TableSpec('shop.picky', ('id',), table.name), table)
    with engine.begin() as conn:
        table.create(conn)
        plan = _Plan(target)
        plan.add((1,), ABSENT, RowState(True, {'code': 'refused'}, True))
        with pytest.raises(sa_exc.StatementError) as lean:
            with conn.begin_nested():
                plan.execute(conn)
        with pytest.raises(sa_exc.StatementError) as core:
            with conn.begin_nested():
                conn.execute(table.insert(), [{'id': 1, 'code': 'refused'}])
    assert type(lean.value) is type(core.value)
    assert isinstance(lean.value.orig, ValueError)
    assert _describe(lean.value) == _describe(core.value) == (
        'StatementError: refused by its type')


def version(n):
    return audit_version(T0 + n * 1_000_000, n, n, 0)


def test_many_rows_of_a_composite_key_are_read_in_padded_chunks(engine, table_prefix):
    """More rows than one SELECT reads, in a number no chunk size matches:
    every stored row is found (an UPDATE of a row not found changes nothing)."""
    spec = TableSpec('shop.lines', ('order_id', 'line'), table_prefix + 'lines', (
        ('order_id', 'integer'), ('line', 'string'), ('qty', 'integer')))
    sink = _Replica([spec], table_prefix + 'cf_')
    sink.prepare(engine)

    def write(changes):
        with engine.begin() as conn:
            outcome = sink.write(conn, [_Item(c, None, None) for c in changes], False)
        assert not outcome.dead
        return outcome
    keys = [(n // 3, f"l-{n % 3}'é") for n in range(700)]
    write([Change('shop.lines', key, (RowOp(OpKind.INSERT, version(1), (
        ('order_id', key[0]), ('line', key[1]), ('qty', 1))),), 0) for key in keys])
    updates = [Change('shop.lines', key, (RowOp(OpKind.UPDATE, version(2), (), (
        ('qty', ('bin', '+', col('qty'), lit(n))),)),), 0)
        for n, key in enumerate(keys[:650] + [(9999, 'none')])]
    write(updates)
    replayed = write(updates)
    assert replayed.counts['ops_skipped_stale'] == len(updates)
    with engine.connect() as conn:
        table = sink.targets['shop.lines'].table
        stored = {(r.order_id, r.line): r.qty for r in conn.execute(sa.select(table))}
    assert stored == {key: 1 + n if n < 650 else 1 for n, key in enumerate(keys)}


def test_stale_changes_are_counted_and_returned_applied_in_their_place(engine, table_prefix):
    """A round reads only the rows with ops to apply; the stale ones are
    returned applied where they came, and the bookkeeping is unchanged."""
    spec = TableSpec('shop.items', ('id',), table_prefix + 'items', (
        ('id', 'integer'), ('qty', 'integer')))
    sink = _Replica([spec], table_prefix + 'cf_')
    sink.prepare(engine)
    changes = [Change('shop.items', (n,), (RowOp(OpKind.INSERT, version(n), (
        ('id', n), ('qty', n))),), 0) for n in range(1, 4)]
    with engine.begin() as conn:
        sink.write(conn, [_Item(c, None, None) for c in changes[1:]], False)
    with engine.begin() as conn:
        outcome = sink.write(conn, [_Item(c, None, None) for c in changes], False)
    assert [i.change.key for i in outcome.applied] == [(1,), (2,), (3,)]
    assert outcome.counts['ops_skipped_stale'] == 2
    assert outcome.counts['rows_upserted'] == 1
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f'SELECT row_key, version FROM {table_prefix}cf_row_versions ORDER BY row_key').all()
    assert [tuple(r) for r in rows] == [('[1]', version(1)), ('[2]', version(2)),
                                        ('[3]', version(3))]



def test_the_compiled_statements_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(sql, '_MAX_STATEMENTS', 2)
    table = sa.Table('t', sa.MetaData(), sa.Column('id', sa.Integer, primary_key=True))
    statements, built = sql._Statements(), []
    engine = sa.create_engine('sqlite://')
    with engine.connect() as conn:
        for shape in 'abaca':
            statements.get(conn, (shape,), lambda: built.append(shape) or sa.select(table))
    assert built == ['a', 'b', 'c', 'a']  # 'c' dropped 'a', the oldest; 'a' then dropped 'b'


def test_an_op_reading_a_column_left_at_its_default_sees_the_stored_default(engine, table_prefix):
    """INSERT without qty, then qty = qty + 2 in the same Change: the sink
    writes the inserted row and reads it back (the default), in a SAVEPOINT."""
    spec = TableSpec('shop.items', ('id',), table_prefix + 'defaults', (
        ('id', 'integer'), ('qty', 'integer'), ('note', 'string')), defaults=(('qty', '5'),))
    sink = _Replica([spec], table_prefix + 'cf_')
    sink.prepare(engine)
    change = Change('shop.items', (1,), (
        RowOp(OpKind.INSERT, version(1), (('id', 1), ('note', 'x'))),
        RowOp(OpKind.UPDATE, version(2), (), (('qty', ('bin', '+', col('qty'), lit(2))),))), 0)
    with engine.begin() as conn:
        outcome = sink.write(conn, [_Item(change, None, None)], False)
    assert not outcome.dead and outcome.counts['rows_upserted'] == 1
    with engine.connect() as conn:
        table = sink.targets['shop.items'].table
        assert [tuple(r) for r in conn.execute(sa.select(table))] == [(1, 7, 'x')]
