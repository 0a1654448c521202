"""Predicates beyond the key pin (``WHERE id = ? AND version = ?``, ``AND
status = 'open'``, ``AND deleted_at IS NULL``): compiled into RowOp.condition,
applied only where they hold on the row, folded only where decidable; LIMIT
on named rows."""

import decimal

import apache_beam as beam
import pytest
import sqlalchemy as sa
from apache_beam.testing.util import assert_that, equal_to

from changeflow.config import TableSpec
from changeflow.model import Change, OpKind, RowOp, audit_version
from changeflow.sql.errors import SqlChangeError
from changeflow.sql.expressions import col, lit
from changeflow.sql.plans import StatementTranslator
from changeflow.sql.rowstate import ABSENT, RowState, apply_op, apply_ops
from changeflow.transforms.coalesce import CoalesceChanges, coalesce_changes, coalesce_ops
from changeflow.io.sql import WriteToDatabase
from changeflow.transforms.sql_changes import ExtractRowChanges
from changeflow.transforms.transactions import CommittedTransaction
from tests.audit_fixture import query_event
from tests.beam_helpers import local_pipeline

D = decimal.Decimal
ITEMS = TableSpec('shop.items', ('id',), 'items', (
    ('id', 'integer'), ('version', 'integer'), ('status', 'string'),
    ('deleted_at', 'datetime'), ('qty', 'integer')))


def translate(sql):
    return StatementTranslator([ITEMS]).translate(sql, 'shop').changes


def eq(column, value):
    return ('fn', '=', (col(column), lit(value)))


def test_the_where_beyond_the_key_becomes_the_ops_condition():
    (change,) = translate('UPDATE items SET status = \'x\', version = 4 '
                          'WHERE items.id = 5 AND items.version = 3')
    assert (change.key, change.condition) == ((5,), eq('version', 3))
    (change,) = translate("DELETE FROM items WHERE status = 'open' AND (id = 7 "
                          "AND deleted_at IS NULL)")
    assert (change.kind, change.key) == (OpKind.DELETE, (7,))
    assert change.condition == ('fn', 'AND', (eq('status', 'open'),
                                              ('fn', 'IS NULL', (col('deleted_at'),))))
    # A second constraint on the key is a condition on the pinned row.
    (change,) = translate('UPDATE items SET qty = 1 WHERE id = 5 AND id = 6')
    assert (change.key, change.condition) == ((5,), eq('id', 6))
    (change,) = translate('UPDATE items SET qty = 1 WHERE id = 5')
    assert change.condition is None
    changes = translate('UPDATE items SET qty = 1 WHERE id IN (1, 2) AND qty > version')
    assert [(c.key, c.condition) for c in changes] == [
        ((1,), ('fn', '>', (col('qty'), col('version'))))] + [
        ((2,), ('fn', '>', (col('qty'), col('version'))))]


@pytest.mark.parametrize('sql, keys, detail', [
    ('UPDATE items SET qty = 1 WHERE id = 5 AND deleted_at < NOW()', ((5,),), 'NOW'),
    ('DELETE FROM items WHERE id IN (1, 2) ORDER BY qty LIMIT 1', ((1,), (2,)),
     'LIMIT 1 of 2 named rows'),
    ('UPDATE items SET qty = 2 WHERE id = 3 AND qty IN (SELECT 1)', ((3,),), 'reads other rows'),
])
def test_a_condition_or_limit_that_cannot_be_reproduced_names_the_rows(sql, keys, detail):
    with pytest.raises(SqlChangeError) as error:
        translate(sql)
    assert (error.value.table, error.value.keys) == ('shop.items', keys)
    assert detail in error.value.detail


def test_a_limit_that_reaches_every_named_row_changes_nothing():
    assert [c.key for c in translate('DELETE FROM items WHERE id IN (1, 2) LIMIT 2')] == [
        (1,), (2,)]
    assert [c.key for c in translate('UPDATE items SET qty = 0 WHERE id = 4 LIMIT 1')] == [(4,)]
    assert translate('DELETE FROM items WHERE id = 4 LIMIT 0') == ()


ROW = RowState(True, {'id': 5, 'version': 3, 'status': 'open', 'deleted_at': None, 'qty': 1},
               False)


def update(n, condition=None, **values):
    return RowOp(OpKind.UPDATE, v(n), (), tuple((c, lit(x)) for c, x in values.items()), '',
                 condition)


def v(n):
    return audit_version(1_700_000_000_000_000, n, n, 0)


def test_an_op_applies_only_where_its_condition_holds():
    assert apply_op(ROW, update(1, eq('version', 3), version=4)).values['version'] == 4
    assert apply_op(ROW, update(1, eq('version', 2), version=4)) == ROW  # a lost update
    assert apply_op(ROW, update(1, eq('status', 'OPEN'), qty=0)).values['qty'] == 0  # _ci
    null = ('fn', '=', (col('deleted_at'), lit('2026-01-01')))
    assert apply_op(ROW, update(1, null, qty=0)) == ROW  # NULL is not true
    delete = RowOp(OpKind.DELETE, v(2), condition=('fn', 'IS NULL', (col('deleted_at'),)))
    assert apply_op(ROW, delete) == ABSENT
    assert apply_op(ROW, delete._replace(condition=eq('qty', 9))) == ROW
    assert apply_op(ABSENT, update(1, eq('version', 3), version=4)) == ABSENT


def test_conditional_ops_fold_only_where_the_condition_is_decided():
    insert = RowOp(OpKind.INSERT, v(1), (('id', 5), ('version', 1), ('qty', 1)))
    # Decided by the inserted values: true folds, false is dropped.
    assert coalesce_ops([insert, update(2, eq('version', 1), version=2, qty=5)]) == (
        insert._replace(version=v(2), values=(('id', 5), ('version', 2), ('qty', 5))),)
    assert coalesce_ops([insert, update(2, eq('version', 7), qty=5)]) == (
        insert._replace(version=v(2)),)
    delete = RowOp(OpKind.DELETE, v(3), condition=eq('qty', 1))
    assert coalesce_ops([insert, delete]) == (RowOp(OpKind.DELETE, v(3)),)
    # Not decided (the status is the table's default): kept, and nothing folds into it.
    undecided = update(2, eq('status', 'open'), qty=7)
    later = update(3, qty=8)
    assert coalesce_ops([insert, undecided, later]) == (insert, undecided, later)
    # A conditional DELETE does not make what came before irrelevant.
    assert coalesce_ops([update(1, qty=3), delete._replace(condition=eq('status', 'x'))]) == (
        update(1, qty=3), delete._replace(condition=eq('status', 'x')))


@pytest.mark.parametrize('start', [
    ABSENT, ROW, ROW._replace(values={**ROW.values, 'version': 2}),
    ROW._replace(values={**ROW.values, 'status': 'closed', 'qty': 4})])
def test_folding_conditional_ops_never_changes_the_result(start):
    ops = [update(1, eq('version', 3), version=4, qty=2),
           update(2, eq('version', 4), status='shipped'),
           RowOp(OpKind.DELETE, v(3), condition=eq('status', 'closed')),
           RowOp(OpKind.INSERT_IGNORE, v(4), (('id', 5), ('version', 1), ('status', 'new'),
                                               ('deleted_at', None), ('qty', 0))),
           update(5, eq('version', 1), version=2),
           update(6, ('fn', 'IS NULL', (col('deleted_at'),)), qty=9),
           update(7, eq('qty', 9), status='done')]
    for n in range(len(ops)):
        assert apply_ops(start, coalesce_ops(ops[n:])) == apply_ops(start, ops[n:]), n


# ---------------------------------------------------------------------------
# Through the SQL stage, coalescing and the database sink.

@pytest.fixture
def items(database_url, table_prefix):
    spec = ITEMS._replace(target=f'{table_prefix}items')
    engine = sa.create_engine(database_url)
    yield database_url, spec, table_prefix, engine
    with engine.begin() as conn:
        for name in sa.inspect(conn).get_table_names():
            if name.startswith(table_prefix):
                sa.Table(name, sa.MetaData()).drop(conn)
    engine.dispose()


def statements(*sqls, first=700):
    """A transaction per statement (autocommit), from query id ``first`` on."""
    template = query_event('DELETE FROM orders')
    return [CommittedTransaction('vm', 1, (template._replace(
        query_id=first + i, object=sql, database='shop',
        timestamp_us=template.timestamp_us + first + i),)) for i, sql in enumerate(sqls)]


def sync(url, spec, prefix, transactions):
    with local_pipeline() as p:
        changes = (p | beam.Create(transactions) | ExtractRowChanges([spec]))['changes']
        coalesced = changes | CoalesceChanges()
        coalesced[CoalesceChanges.MAIN] | WriteToDatabase(url, [spec], num_shards=2,
                                                          bookkeeping_prefix=f'{prefix}cf_')


def rows(engine, spec):
    with engine.connect() as conn:
        table = sa.Table(spec.target, sa.MetaData(), autoload_with=conn)
        return {r['id']: (r['version'], r['status'], r['qty'])
                for r in conn.execute(sa.select(table)).mappings()}


def test_optimistic_locking_and_soft_deletes_replicate_as_mysql_applies_them(items):
    url, spec, prefix, engine = items
    sync(url, spec, prefix, statements(
        "INSERT INTO items (id, version, status, qty) VALUES (1, 1, 'open', 1), "
        "(2, 1, 'open', 1), (3, 1, 'open', 1)"))
    # Each condition is read from the row as the ops before it left it, as
    # MySQL reads it from the source's (a later run: from the replica).
    sync(url, spec, prefix, statements(
        "UPDATE items SET version = 2, qty = qty + 1 WHERE id = 1 AND version = 1",
        "UPDATE items SET version = 2, qty = qty + 10 WHERE id = 1 AND version = 1",  # lost
        "UPDATE items SET status = 'closed' WHERE id = 2 AND status = 'OPEN'",
        "UPDATE items SET deleted_at = '2026-11-01 10:00:00' WHERE id = 3",
        "DELETE FROM items WHERE id = 3 AND deleted_at IS NULL",                      # no-op
        "DELETE FROM items WHERE id = 2 AND status = 'closed' AND version = 1", first=800))
    assert rows(engine, spec) == {1: (2, 'open', 2), 3: (1, 'open', 1)}


def test_a_diverged_rows_condition_is_read_from_the_replica_and_the_row_stays_marked(items):
    url, spec, prefix, engine = items
    sync(url, spec, prefix, statements(
        "INSERT INTO items (id, version, status, qty) VALUES (1, 1, 'open', 1)",
        'UPDATE items SET version = version + 1, qty = RAND() WHERE id = 1'))  # refused
    sync(url, spec, prefix, statements(
        'UPDATE items SET qty = 5, version = 3 WHERE id = 1 AND version = 1', first=800))
    # The replica still holds version 1 (the refused update never reached
    # it), so the op applies there; the row stays marked either way.
    assert rows(engine, spec) == {1: (3, 'open', 5)}
    with engine.connect() as conn:
        marks = conn.execute(sa.text(f'SELECT row_key, reason FROM {prefix}cf_diverged')).all()
    assert marks == [('[1]', 'needs-lookup')]


# ---------------------------------------------------------------------------
# WHERE that does not pin the key: one whole-table op, evaluated per shard.

def test_a_where_that_does_not_pin_the_key_is_one_whole_table_op():
    (change,) = translate("UPDATE items SET qty = qty + 1 WHERE status = 'open'")
    assert (change.key, change.kind, change.condition) == ((), OpKind.UPDATE, eq('status', 'open'))
    (change,) = translate('DELETE FROM items WHERE id BETWEEN 1 AND 5')
    assert (change.key, change.kind) == ((), OpKind.DELETE)
    assert change.condition == ('fn', 'BETWEEN', (col('id'), lit(1), lit(5)))
    (change,) = translate('DELETE FROM items')
    assert (change.key, change.condition) == ((), None)
    with pytest.raises(SqlChangeError) as error:
        translate("UPDATE items SET qty = 0 WHERE status = 'x' ORDER BY id LIMIT 1")
    assert (error.value.table, error.value.keys) == ('shop.items', None)
    assert 'LIMIT' in error.value.detail


def test_a_whole_table_write_after_earlier_writes_to_its_table_in_the_transaction_is_refused():
    template = query_event('DELETE FROM orders')
    txn = CommittedTransaction('vm', 1, tuple(template._replace(
        query_id=900 + i, object=sql, database='shop') for i, sql in enumerate([
            'UPDATE items SET qty = 1 WHERE id = 1',
            "DELETE FROM items WHERE status = 'x'"])))
    with local_pipeline() as p:
        result = p | beam.Create([txn]) | ExtractRowChanges([ITEMS])
        assert_that(result['changes'] | beam.Map(lambda c: [c.key, c.ops[0].kind.value]),
                    equal_to([[(1,), 'update'], [(), 'diverge']]), label='changes')


def test_a_whole_table_op_folds_into_the_rows_it_falls_between():
    row = [Change('shop.items', (1,), (RowOp(OpKind.INSERT, v(1), (('id', 1), ('qty', 1),
                                                                   ('status', 'open'))),), 0),
           Change('shop.items', (1,), (update(5, qty=7),), 0)]
    table_update = update(3, eq('status', 'open'), qty=2, status='seen')
    merged = coalesce_changes(row, (table_update, update(9, qty=0)))  # 9: after the row's ops
    assert apply_ops(None, merged.ops).values == {'id': 1, 'qty': 7, 'status': 'seen'}
    assert merged.ops[-1].version == v(5)
    table = Change('shop.items', (), (table_update, RowOp(OpKind.TRUNCATE, v(2))), 0)
    assert coalesce_changes([table]).ops == (RowOp(OpKind.TRUNCATE, v(2)), table_update)


def marks(engine, prefix):
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text(
            f'SELECT row_key, reason FROM {prefix}cf_diverged')).all())


def test_where_over_the_whole_table_replicates_per_shard_in_version_order(items):
    url, spec, prefix, engine = items
    sync(url, spec, prefix, statements(
        "INSERT INTO items (id, version, status, qty) VALUES " + ', '.join(
            f"({i}, 1, '{'open' if i % 2 else 'closed'}', {i})" for i in range(1, 9))))
    # Row 1's and 3's changes straddle the whole-table ops (expressions: not
    # folded): they carry them in place, and the shards skip them.
    sync(url, spec, prefix, statements(
        "UPDATE items SET qty = qty + 99 WHERE id = 1",           # before: 100 + 1
        "UPDATE items SET qty = qty + 1 WHERE status = 'open'",   # rows 1, 3, 5, 7
        "UPDATE items SET qty = qty * 2 WHERE id IN (1, 3)",      # after: doubled
        'DELETE FROM items WHERE id BETWEEN 6 AND 7', first=750))
    expected = {1: (1, 'open', 202), 2: (1, 'closed', 2), 3: (1, 'open', 8),
                4: (1, 'closed', 4), 5: (1, 'open', 6), 8: (1, 'closed', 8)}
    assert rows(engine, spec) == expected
    # In a later run, over the replica's rows; a replay changes nothing.
    later = statements("UPDATE items SET status = 'done', version = version + 1 "
                       "WHERE qty > 5 AND status = 'open'", 'DELETE FROM items WHERE qty < 3',
                       first=800)
    for _ in range(2):
        sync(url, spec, prefix, later)
        assert rows(engine, spec) == {1: (2, 'done', 202), 3: (2, 'done', 8),
                                      4: (1, 'closed', 4), 5: (2, 'done', 6),
                                      8: (1, 'closed', 8)}
    assert marks(engine, prefix) == []


def test_a_row_change_between_two_whole_table_ops_applies_between_them(items):
    """Row 1 is in the replica from an earlier run; this run's row change
    (version 2) falls between two whole-table updates (1 and 3) and touches no
    other op of its row, so none of them is carried in the row's change. Each
    whole-table op applies at its own place: the row change is not skipped as
    older than the second (it was, in silence, when both applied together
    before it)."""
    url, spec, prefix, engine = items
    sync(url, spec, prefix, statements(
        "INSERT INTO items (id, version, status, qty) VALUES (1, 1, 'open', 1), "
        "(2, 1, 'open', 1)"))
    sync(url, spec, prefix, statements(
        "UPDATE items SET qty = qty + 10 WHERE status = 'open'",
        "UPDATE items SET version = 2, status = 'seen' WHERE id = 1 AND version = 1",
        "UPDATE items SET qty = qty + 100 WHERE status = 'open'", first=800))
    assert rows(engine, spec) == {1: (2, 'seen', 11), 2: (1, 'open', 111)}
    assert marks(engine, prefix) == []


def test_a_whole_table_op_a_row_change_folds_in_stays_after_the_rows_first_op(items):
    """Row 1's change folds the second whole-table update in (its condition is
    false on the row as the change left it): the change still sorts at its
    first statement's place, so that update reaches row 1 after the change,
    which has it, and is skipped there (it closed the row first at the source).
    Merged into the first op, the change sorted after it and the update hit
    row 1 while it was still open, in silence: found by the interleaved
    fixture."""
    url, spec, prefix, engine = items
    sync(url, spec, prefix, statements(
        "INSERT INTO items (id, version, status, qty) VALUES (1, 1, 'open', 10), "
        "(2, 1, 'open', 1)"))
    sync(url, spec, prefix, statements(
        "UPDATE items SET qty = qty + 1 WHERE status = 'open'",
        "UPDATE items SET status = 'closed' WHERE id = 1",
        "UPDATE items SET qty = qty + 100 WHERE status = 'open'",
        'UPDATE items SET version = 5 WHERE id = 1', first=800))
    assert rows(engine, spec) == {1: (5, 'closed', 11), 2: (1, 'open', 102)}


def test_a_row_change_that_starts_with_a_truncate_precedes_the_whole_table_ops_from_it(items):
    """Row 1 is written before and after a TRUNCATE: its change starts with the
    TRUNCATE's copy (a DELETE of the same version), so it is applied before the
    whole-table ops from that version on, and the update after it finds the row
    inserted again (it found none, in silence: found by an interleaved variant
    with TRUNCATE TABLE)."""
    url, spec, prefix, engine = items
    sync(url, spec, prefix, statements(
        "INSERT INTO items (id, version, status, qty) VALUES (1, 1, 'open', 1), "
        "(2, 1, 'open', 1)"))
    sync(url, spec, prefix, statements(
        "UPDATE items SET qty = qty + 1 WHERE status = 'open'",
        'UPDATE items SET qty = 7 WHERE id = 1',
        'TRUNCATE TABLE items',
        "UPDATE items SET qty = qty + 1 WHERE status = 'open'",
        "INSERT INTO items (id, version, status, qty) VALUES (1, 1, 'open', 5) "
        'ON DUPLICATE KEY UPDATE qty = qty + 1',
        "UPDATE items SET qty = qty * 10 WHERE status = 'open'", first=800))
    assert rows(engine, spec) == {1: (1, 'open', 50)}


def test_a_truncate_keeps_the_mark_of_ddl_the_replica_did_not_follow(items):
    """Without a schema an ALTER TABLE is not followed: the table is marked
    (schema-change). A later TRUNCATE empties the table at the source and in
    the replica, but the replica still lacks the column, so the mark stays
    (it went with the TRUNCATE's older marks, and the rows written after it
    differed in silence: found by the streaming job on a bulk variant with DDL),
    also under a newer table mark of another reason, which does not replace it."""
    url, spec, prefix, engine = items
    sync(url, spec, prefix, statements(
        "INSERT INTO items (id, version, status, qty) VALUES (1, 1, 'open', 1)",
        'ALTER TABLE items ADD COLUMN extra INT NOT NULL DEFAULT 7',
        "UPDATE items SET qty = 0 WHERE status = 'x' LIMIT 1",  # a newer table mark
        'TRUNCATE TABLE items',
        "INSERT INTO items (id, version, status, qty) VALUES (2, 1, 'open', 2)"))
    assert ('', 'schema-change') in marks(engine, prefix)
    assert rows(engine, spec) == {2: (1, 'open', 2)}


def test_where_over_a_table_with_diverged_rows_is_dead_lettered_and_marks_the_table(items):
    url, spec, prefix, engine = items
    sync(url, spec, prefix, statements(
        "INSERT INTO items (id, version, status, qty) VALUES (1, 1, 'open', 1), "
        "(2, 1, 'open', 1)",
        'UPDATE items SET qty = RAND() WHERE id = 2'))  # row 2 marked
    sync(url, spec, prefix, statements(
        "UPDATE items SET qty = 9 WHERE status = 'open'",
        "UPDATE items SET qty = 0 WHERE status = 'x' LIMIT 1", first=800))
    assert ('', 'needs-lookup') in marks(engine, prefix)
    assert ('[2]', 'needs-lookup') in marks(engine, prefix)
    # The shard of row 2 refused (its rows stay as they were); another may
    # have applied it to row 1: every row differing from the source is marked.
    assert rows(engine, spec)[2] == (1, 'open', 1)
