"""Divergence markers: a refused statement of a replicated table names what it
leaves stale (SqlChangeError.table/keys), the SQL stage emits DIVERGE changes
in its place, coalescing keeps them, and only the database branch gets them."""

import json

import apache_beam as beam
import pytest
import sqlalchemy as sa
from apache_beam.testing.util import assert_that, equal_to

from changeflow.model import (
    DEAD_LETTER_TAG, Change, OpKind, RowOp, audit_version, diverge_op, divergence)
from changeflow.io.sql import WriteToDatabase
from changeflow.metrics import counter_totals
from changeflow.sql.errors import SqlChangeError
from changeflow.sql.expressions import col, lit
from changeflow.sql.plans import StatementTranslator
from changeflow.sql.rowstate import RowState, apply_ops
from changeflow.transforms.coalesce import coalesce_changes, coalesce_ops
from changeflow.transforms.route import DATABASE, NOTIFY, PARQUET, RouteChanges
from changeflow.transforms.sql_changes import ExtractRowChanges
from changeflow.transforms.transactions import CommittedTransaction
from tests.audit_fixture import SHOP_TABLES, query_event
from tests.beam_helpers import local_pipeline
from tests.test_sql_sink import ORDERS_SOURCE, Replica, change, op, order_row, plus, version


def refusal(sql, database='shop'):
    with pytest.raises(SqlChangeError) as error:
        StatementTranslator(SHOP_TABLES).translate(sql, database)
    return error.value


def test_the_error_keeps_its_old_constructor():
    error = SqlChangeError('needs-lookup', 'why')
    assert (error.reason, error.detail, error.table, error.keys, error.tables) == (
        'needs-lookup', 'why', None, None, ())


@pytest.mark.parametrize('sql, reason, table, keys', [
    # the key is pinned, the value is not
    ('UPDATE orders SET note = NOW() WHERE tenant_id = 1 AND order_id = 5',
     'needs-lookup', 'shop.orders', ((1, 5),)),
    ('UPDATE orders SET note = UUID() WHERE tenant_id = 1 AND order_id IN (5, 6, 5)',
     'needs-lookup', 'shop.orders', ((1, 5), (1, 6))),
    ('UPDATE customers SET id = 9 WHERE id = 3', 'needs-lookup', 'shop.customers', ((3,),)),
    ('INSERT INTO customers (id, name) VALUES (1, USER()), (2, \'b\')',
     'needs-lookup', 'shop.customers', ((1,), (2,))),
    ("INSERT INTO customers (id, visits) VALUES (4, 1) ON DUPLICATE KEY UPDATE visits = RAND()",
     'needs-lookup', 'shop.customers', ((4,),)),
    # the rows cannot be named: the whole table
    ("UPDATE customers SET tier = 'x' WHERE name = 'a' LIMIT 1",
     'needs-lookup', 'shop.customers', None),
    ('UPDATE customers SET tier = NOW() WHERE visits > 3',
     'needs-lookup', 'shop.customers', None),
    ("INSERT INTO customers (name) VALUES ('auto')", 'needs-lookup', 'shop.customers', None),
    ('INSERT INTO customers (id, name) SELECT id, body FROM notes',
     'needs-lookup', 'shop.customers', None),
    ('INSERT INTO customers (id, name) VALUES (DEFAULT, \'d\')',
     'needs-lookup', 'shop.customers', None),
    ('DELETE FROM notes ORDER BY id LIMIT 5', 'needs-lookup', 'shop.notes', None),
    ('DELETE FROM notes WHERE id = ?', 'needs-lookup', 'shop.notes', None),
    ('UPDATE customers c JOIN notes n ON n.id = c.id SET c.tier = n.body',
     'needs-lookup', ('shop.customers', 'shop.notes'), None),
    ('DELETE n FROM notes n JOIN other o ON o.id = n.id', 'needs-lookup', 'shop.notes', None),
])
def test_a_refusal_names_the_table_and_the_rows_it_pins(sql, reason, table, keys):
    error = refusal(sql)
    assert (error.reason, error.table, error.keys) == (reason, table, keys)


def test_a_cached_refusal_names_each_statements_own_rows():
    translator = StatementTranslator(SHOP_TABLES)
    for order_id in (5, 6):
        with pytest.raises(SqlChangeError) as error:
            translator.translate(f'UPDATE orders SET note = NOW() '
                                 f'WHERE tenant_id = 1 AND order_id = {order_id}', 'shop')
        assert error.value.keys == ((1, order_id),)
    assert translator.shapes_compiled == 1


def test_a_refusal_naming_too_many_rows_names_its_table():
    ids = ', '.join(map(str, range(200)))
    error = refusal(f'UPDATE orders SET note = NOW() WHERE tenant_id IN ({ids}) '
                    f'AND order_id IN ({ids})')  # 40,000 rows
    assert (error.table, error.keys) == ('shop.orders', None)
    assert len(refusal(f'UPDATE orders SET note = NOW() WHERE tenant_id = 1 '
                       f'AND order_id IN ({ids})').keys) == 200


def test_refusals_of_no_replicated_table_name_none():
    assert refusal('CALL refresh_all()').tables == ()
    assert refusal('UPDATE orders SET note = ').tables == ()  # unparseable
    assert StatementTranslator(SHOP_TABLES).translate(
        'UPDATE other SET a = NOW() WHERE b = 1', 'shop').skipped == 'untracked-table'


def transaction(*sqls, first_query_id=500):
    template = query_event('DELETE FROM orders')
    return CommittedTransaction('vm', 1, tuple(
        template._replace(query_id=first_query_id + i, object=sql,
                          timestamp_us=template.timestamp_us + i)
        for i, sql in enumerate(sqls)))


def described(change):
    op = change.ops[0]
    return [change.table, change.key, op.kind.value, op.version,
            divergence(op) if op.kind == OpKind.DIVERGE else None]


def run_stage(*transactions):
    with local_pipeline() as p:
        result = p | beam.Create(list(transactions)) | ExtractRowChanges(SHOP_TABLES)
        changes = result['changes'] | 'Changes' >> beam.Map(described)
        dead = result[DEAD_LETTER_TAG] | 'Dead' >> beam.Map(lambda d: [d.reason, d.detail])
        yield changes, dead


def test_the_stage_marks_the_rows_of_a_refused_statement_in_its_version_place():
    """Row (1, 5) is updated, then refused (NOW()), then updated: the DIVERGE
    takes the version the refused update would have had, between the two."""
    txn = transaction(
        "UPDATE orders SET note = 'a' WHERE tenant_id = 1 AND order_id = 5",
        'UPDATE orders SET note = NOW() WHERE tenant_id = 1 AND order_id = 5',
        "UPDATE orders SET note = 'c' WHERE tenant_id = 1 AND order_id = 5",
        "UPDATE customers SET tier = NOW() WHERE visits > 10")
    t0 = txn.statements[0].timestamp_us
    first = audit_version(t0, 500, 500, 0)
    detail = 'non-deterministic function NOW()'
    for changes, dead in run_stage(txn):
        assert_that(changes, equal_to([
            ['shop.orders', (1, 5), 'update', first, None],
            ['shop.orders', (1, 5), 'diverge', audit_version(t0, 500, 501, 0),
             ('needs-lookup', detail)],
            ['shop.orders', (1, 5), 'update', audit_version(t0, 500, 502, 0), None],
            ['shop.customers', (), 'diverge', audit_version(t0 + 3, 503, 503, 0),
             ('needs-lookup', 'non-deterministic function NOW()')],
        ]), label='changes')
        assert_that(dead, equal_to([
            ['needs-lookup', detail + '; marked diverged: 1 row(s) of shop.orders'],
            ['needs-lookup', 'non-deterministic function NOW()'
                             '; marked diverged: table shop.customers'],
        ]), label='dead')


def test_an_uncastable_key_marks_the_table_and_an_unnamed_refusal_marks_nothing():
    txn = transaction(
        "INSERT INTO notes (id, body) VALUES (1, 'a'), ('two', 'b')",
        'CALL refresh_all()')
    t0 = txn.statements[0].timestamp_us
    for changes, dead in run_stage(txn):
        assert_that(changes | beam.Map(lambda c: c[:4]), equal_to([
            ['shop.notes', (), 'diverge', audit_version(t0, 500, 500, 0)]]), label='changes')
        assert_that(dead | beam.Map(lambda d: d[0]), equal_to(['bad-value', 'needs-lookup']),
                    label='dead')


def v(n):
    return audit_version(1_700_000_000_000_000, n, n, 0)


def inc(column):
    return (column, ('bin', '+', col(column), lit(1)))


def test_coalescing_never_folds_a_marker_away_nor_across_it():
    mark = diverge_op(v(2), 'needs-lookup', 'NOW()')
    insert = RowOp(OpKind.INSERT, v(1), (('id', 1), ('qty', 1)))
    update = RowOp(OpKind.UPDATE, v(3), (), (inc('qty'),))
    # A full-row op drops what came before it, but not the marker.
    assert coalesce_ops([insert, mark, RowOp(OpKind.DELETE, v(4))]) == (
        mark, RowOp(OpKind.DELETE, v(4)))
    assert coalesce_ops([mark, insert._replace(version=v(3))]) == (
        mark, insert._replace(version=v(3)))
    # Nothing folds across it; the ops around it still fold among themselves.
    ops = coalesce_ops([insert, mark, update, update._replace(version=v(5), assignments=(
        ('note', lit('x')),)), mark._replace(version=v(2))])
    assert [o.kind for o in ops] == [OpKind.INSERT, OpKind.DIVERGE, OpKind.UPDATE, OpKind.UPDATE]
    assert apply_ops(None, ops) == RowState(True, {'id': 1, 'qty': 2, 'note': 'x'}, True)
    # A truncate keeps the table's marker too.
    table_mark = Change('shop.orders', (), (mark,), 0)
    truncate = Change('shop.orders', (), (RowOp(OpKind.TRUNCATE, v(3)),), 0)
    assert coalesce_changes([table_mark, truncate]).ops == (mark, truncate.ops[0])


def test_only_the_database_branch_gets_markers():
    mark = diverge_op(v(2), 'needs-lookup', 'NOW()')
    insert = RowOp(OpKind.INSERT, v(1), (('id', 1),))
    changes = [Change('shop.notes', (1,), (insert, mark), 0),
               Change('shop.notes', (), (mark,), 0)]
    with local_pipeline() as p:
        routed = p | beam.Create(changes) | RouteChanges([DATABASE, PARQUET, NOTIFY])
        kinds = {branch: routed[branch] | f'Kinds{branch}' >> beam.Map(
            lambda c: (c.key, tuple(op.kind.value for op in c.ops))) for branch in routed}
        assert_that(kinds[DATABASE], equal_to([((1,), ('insert', 'diverge')),
                                               ((), ('diverge',))]), label='database')
        assert_that(kinds[PARQUET], equal_to([((1,), ('insert',))]), label='parquet')
        assert_that(kinds[NOTIFY], equal_to([((1,), ('insert',))]), label='notify')


# ---------------------------------------------------------------------------
# The replica keeps the marks (SQLite always; PostgreSQL and MariaDB where reachable).


@pytest.fixture
def replica(database_url, table_prefix):
    replica = Replica(database_url, table_prefix)
    yield replica
    replica.drop()


def mark(n, reason='needs-lookup', detail='NOW()'):
    return diverge_op(version(n), reason, detail, f'audit.log#{n}')


def write(replica, changes, tables, written, dead, **options):
    """Runs the sink; asserts the written changes' (key, op positions) and the
    dead letters' (reason, key, op positions); returns the counters."""
    def ops_of(change_):
        return [list(change_.key), [o.position for o in change_.ops]]

    def dead_of(letter):
        original = json.loads(letter.original)
        return [letter.reason, original['key'], [o['position'] for o in original['ops']]]

    pipeline = local_pipeline()
    out, letters = (pipeline | beam.Create(changes)
                    | WriteToDatabase(replica.url, tables,
                                      bookkeeping_prefix=replica.bookkeeping, **options))
    assert_that(out | 'Written' >> beam.Map(ops_of), equal_to(written), label='written')
    assert_that(letters | 'Dead' >> beam.Map(dead_of), equal_to(dead), label='dead')
    return counter_totals(pipeline.run(), 'changeflow.write_database')


def diverged(replica, spec):
    """{row_key: (version, reason)} of a replica table's marks."""
    with replica.engine.connect() as conn:
        return {key: (v, reason) for key, v, reason in conn.execute(sa.text(
            f'SELECT row_key, version, reason FROM {replica.bookkeeping}diverged'
            ' WHERE table_name = :t'), {'t': spec.target})}


def positions(*ns):
    return [f'audit.log#{n}' for n in ns]


def test_a_marked_row_keeps_its_changes_and_its_mark_under_replay(replica):
    spec = replica.orders()
    changes = [change((1,), op(OpKind.INSERT, 1, id=1, qty=1), mark(2),
                      op(OpKind.UPDATE, 3, [('qty', plus('qty', 1))])),
               change((2,), mark(4))]
    counters = write(replica, changes, [spec], [[[1], positions(1, 2, 3)], [[2], positions(4)]],
                     [])
    assert counters['rows_marked_diverged'] == 2
    expected = {'[1]': (version(2), 'needs-lookup'), '[2]': (version(4), 'needs-lookup')}
    assert diverged(replica, spec) == expected
    assert replica.rows(spec) == {(1,): order_row(1, qty=2)}
    # Replayed: nothing changes, nothing is counted again.
    counters = write(replica, changes, [spec], [[[1], positions(1, 2, 3)], [[2], positions(4)]],
                     [])
    assert counters.get('rows_marked_diverged', 0) == 0
    assert counters['ops_skipped_stale'] == 4
    # Later changes still apply; the row stays marked.
    write(replica, [change((1,), op(OpKind.UPDATE, 5, [('qty', plus('qty', 10))]))], [spec],
          [[[1], positions(5)]], [])
    assert replica.rows(spec) == {(1,): order_row(1, qty=12)}
    assert diverged(replica, spec) == expected


def test_an_op_that_cannot_be_applied_keeps_the_rows_earlier_ops(replica):
    """Row 1's third op is a bad value: the first two are applied, the row is
    marked with the bad op's version, the dead letter holds ops 3 and 4."""
    spec = replica.orders()
    changes = [
        change((1,), op(OpKind.INSERT, 1, id=1, qty=1),
               op(OpKind.UPDATE, 2, [('qty', plus('qty', 1))]),
               op(OpKind.UPDATE, 3, [('qty', lit('lots'))]),
               op(OpKind.UPDATE, 4, [('qty', plus('qty', 10))])),
        change((2,), op(OpKind.INSERT, 5, id=2, colour='red')),
        change((3,), op(OpKind.INSERT, 6, id=3), op(OpKind.UPDATE, 7, [('qty', col('nope'))])),
        change((4,), op(OpKind.INSERT, 8, id=4, status=None)),  # NOT NULL: the database refuses
        change(('x',), op(OpKind.INSERT, 9, id='x')),  # the key cannot be an integer
        change((6,), op(OpKind.INSERT, 10, id=6)),
    ]
    write(replica, changes, [spec],
          [[[1], positions(1, 2)], [[3], positions(6)], [[6], positions(10)]],
          [['bad-value', [1], positions(3, 4)], ['unknown-column', [2], positions(5)],
           ['unknown-column', [3], positions(7)], ['database-rejected', [4], positions(8)],
           ['bad-value', ['x'], positions(9)]])
    assert replica.rows(spec) == {(1,): order_row(1, qty=2), (3,): order_row(3),
                                  (6,): order_row(6)}
    assert replica.versions(spec)[0] == {'[1]': (version(2), False), '[3]': (version(6), False),
                                         '[6]': (version(10), False)}
    assert diverged(replica, spec) == {
        '[1]': (version(3), 'bad-value'), '[2]': (version(5), 'unknown-column'),
        '[3]': (version(7), 'unknown-column'), '[4]': (version(8), 'database-rejected'),
        '': (version(9), 'bad-value')}


def test_a_whole_table_mark_reaches_every_shard_and_is_reported_once(replica):
    spec = replica.orders()
    table_mark = Change(ORDERS_SOURCE, (), (mark(3),), 0)
    changes = [change((k,), op(OpKind.INSERT, k, id=k)) for k in (1, 2, 4, 5)] + [table_mark]
    written = [[[k], positions(k)] for k in (1, 2, 4, 5)] + [[[], positions(3)]]
    counters = write(replica, changes, [spec], written, [], num_shards=4)
    assert counters['changes_received'] == 5
    assert counters['tables_marked_diverged'] == 1
    assert diverged(replica, spec) == {'': (version(3), 'needs-lookup')}
    assert set(replica.rows(spec)) == {(1,), (2,), (4,), (5,)}
    # A newer mark replaces the reason; an older replayed one does not.
    newer = Change(ORDERS_SOURCE, (), (mark(7, 'trigger', 'on orders'),), 0)
    counters = write(replica, [newer], [spec], [[[], positions(7)]], [], num_shards=4)
    assert counters['tables_marked_diverged'] == 1
    counters = write(replica, [table_mark], [spec], [[[], positions(3)]], [], num_shards=4)
    assert counters.get('tables_marked_diverged', 0) == 0
    assert diverged(replica, spec) == {'': (version(7), 'trigger')}


def test_a_truncate_clears_the_older_marks_of_the_rows_it_deletes(replica):
    """Marks older than a TRUNCATE go with the rows (gone at the source too);
    a row written after it keeps its mark; a late older mark is stale."""
    spec = replica.orders()
    write(replica, [change((1,), op(OpKind.INSERT, 1, id=1), mark(2)),
                    change((2,), op(OpKind.INSERT, 3, id=2), mark(4), op(OpKind.UPDATE, 9, [
                        ('qty', plus('qty', 1))])),
                    Change(ORDERS_SOURCE, (), (mark(5),), 0)], [spec],
          [[[1], positions(1, 2)], [[2], positions(3, 4, 9)], [[], positions(5)]], [])
    assert set(diverged(replica, spec)) == {'[1]', '[2]', ''}
    truncate = Change(ORDERS_SOURCE, (), (RowOp(OpKind.TRUNCATE, version(6),
                                                position='audit.log#6'),), 0)
    write(replica, [truncate, change((3,), mark(4)), change((4,), mark(7))], [spec],
          [[[], positions(6)], [[3], positions(4)], [[4], positions(7)]], [], num_shards=2)
    assert replica.rows(spec) == {(2,): order_row(2, qty=1)}
    assert diverged(replica, spec) == {'[2]': (version(4), 'needs-lookup'),
                                       '[4]': (version(7), 'needs-lookup')}
