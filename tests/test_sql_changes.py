import decimal

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from changeflow.model import DEAD_LETTER_TAG, OpKind
from changeflow.sql.literals import mask_literals
from changeflow.sql.plans import SqlChangeError, StatementTranslator
from changeflow.transforms.sql_changes import ExtractRowChanges
from changeflow.transforms.transactions import CommittedTransaction
from tests.audit_fixture import SHOP_TABLES, query_event
from tests.beam_helpers import local_pipeline


@pytest.fixture
def translator():
    return StatementTranslator(SHOP_TABLES)


def changes_of(translator, sql, database='shop'):
    return translator.translate(sql, database).changes


def test_mask_literals_masks_strings_numbers_and_drops_comments():
    shape, params = mask_literals(
        "INSERT INTO `t 1` (a, b2, c) VALUES ('it\\'s, \"x\"', -1.50, 0x4142) /* app */")
    assert shape == 'INSERT INTO `t 1` (a, b2, c) VALUES (\0, -\0, \0)  '
    assert params == ['it\'s, "x"', decimal.Decimal('1.50'), b'AB']


def test_mask_literals_keeps_doubled_quotes_and_backslash_escapes():
    _, params = mask_literals(r"SELECT 'O''Brien', 'C:\\temp\\new', 'a\nb', '100\%'")
    assert params == ["O'Brien", 'C:\\temp\\new', 'a\nb', '100\\%']


def test_recorded_multi_row_insert_keeps_awkward_values(translator):
    event = query_event('INSERT INTO orders (tenant_id, order_id, note, status')
    changes = changes_of(translator, event.object)
    assert [c.key for c in changes] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    notes = [dict(c.values)['note'] for c in changes]
    assert notes == ['it\'s a "quoted", comma\'d note', 'back\\slash C:\\temp\\new',
                     'line one\nline two\ttabbed\r\nend', '日本語のメモ、テスト', None]
    assert dict(changes[0].values)['amount'] == '10.50'  # PyMySQL sends decimals quoted
    assert all(c.kind == OpKind.INSERT for c in changes)


def test_update_with_expression_and_in_list(translator):
    event = query_event('qty = qty * 2')
    changes = changes_of(translator, event.object)
    assert [c.key for c in changes] == [(1, 2), (1, 3)]
    assert changes[0].kind == OpKind.UPDATE
    assert changes[0].assignments == (
        ('qty', ('bin', '*', ('col', 'qty'), ('lit', 2))),
        ('amount', ('bin', '+', ('col', 'amount'), ('lit', decimal.Decimal('0.25')))))


def test_on_duplicate_key_update_resolves_values_function(translator):
    event = query_event("VALUES (1, 3, 'dup', 1)")
    (change,) = changes_of(translator, event.object)
    assert change.kind == OpKind.UPSERT
    assert change.assignments == (('qty', ('bin', '+', ('col', 'qty'), ('lit', 1))),
                                  ('note', ('lit', 'dup')))


def test_replace_delete_truncate(translator):
    (replace,) = changes_of(translator, query_event('REPLACE INTO orders').object)
    assert replace.kind == OpKind.REPLACE and replace.key == (2, 1)
    (delete,) = changes_of(translator, query_event('DELETE FROM orders').object)
    assert delete.kind == OpKind.DELETE and delete.key == (2, 2)
    (truncate,) = changes_of(translator, query_event('TRUNCATE TABLE events').object)
    assert truncate.kind == OpKind.TRUNCATE and truncate.key == ()


@pytest.mark.parametrize('fragment, detail', [
    ("VALUES ('login', NOW())", 'AUTO_INCREMENT'),
    ('INSERT INTO events (kind) SELECT', 'INSERT ... SELECT'),
    ('UPDATE events SET kind = ?', 'prepared-statement'),
])
def test_recorded_statements_a_replica_cannot_reproduce_need_lookup(translator, fragment, detail):
    with pytest.raises(SqlChangeError) as error:
        translator.translate(query_event(fragment).object, 'shop')
    assert error.value.reason == 'needs-lookup'
    assert detail in error.value.detail


@pytest.mark.parametrize('sql', [
    "UPDATE orders SET note = 'x' WHERE tenant_id = 1 LIMIT 1",          # key half pinned
    'UPDATE orders SET order_id = 5 WHERE tenant_id = 1 AND order_id = 1',  # key change
    'UPDATE orders SET qty = RAND() WHERE tenant_id = 1 AND order_id = 1',
    "UPDATE orders SET note = UUID() WHERE tenant_id = 1 AND order_id = 1",
    'UPDATE orders SET qty = @n WHERE tenant_id = 1 AND order_id = 1',
    'DELETE FROM orders LIMIT 10',
    'UPDATE orders o JOIN customers c ON c.id = o.tenant_id SET o.qty = 1 WHERE o.tenant_id = 1',
    'CALL refresh_orders()',
])
def test_unkeyable_or_non_deterministic_statements_need_lookup(translator, sql):
    with pytest.raises(SqlChangeError) as error:
        translator.translate(sql, 'shop')
    assert error.value.reason == 'needs-lookup'


def test_unparseable_sql_is_reported():
    with pytest.raises(SqlChangeError) as error:
        StatementTranslator(SHOP_TABLES).translate("INSERT INTO orders VALUES ((('", 'shop')
    assert error.value.reason in ('unparseable-sql', 'unsupported-sql')


def test_reads_ddl_and_other_tables_are_skipped(translator):
    assert translator.translate('SELECT * FROM orders', 'shop').skipped == 'read'
    assert translator.translate('ALTER TABLE orders ADD x INT', 'shop').skipped == 'ddl'
    assert translator.translate("INSERT INTO audit (id) VALUES (1)", 'shop').skipped == \
        'untracked-table'
    assert translator.translate("INSERT INTO orders (tenant_id, order_id) VALUES (1, 1)",
                                'other_db').skipped == 'untracked-table'


def test_qualified_names_and_backticks(translator):
    (change,) = changes_of(translator, "UPDATE `shop`.`orders` SET `note` = 'a,b' "
                                       'WHERE `order_id` = 2 AND `tenant_id` = 1', 'mysql')
    assert change.table == 'shop.orders' and change.key == (1, 2)


def test_insert_without_column_list_uses_declared_order(translator):
    (change,) = changes_of(translator, "INSERT INTO notes VALUES (5, 'five')")
    assert change.values == (('id', 5), ('body', 'five'))


def test_comments_do_not_make_new_shapes(translator):
    for i in range(5):
        translator.translate(f"/* request_id={i} */ DELETE FROM notes WHERE id = {i} -- by job {i}",
                             'shop')
    assert translator.shapes_compiled == 1


def test_one_parse_per_shape(translator):
    for i in range(50):
        translator.translate(f"UPDATE orders SET note = 'n{i}' WHERE tenant_id = {i} "
                             f'AND order_id = {i + 1}', 'shop')
    assert translator.shapes_compiled == 1


def test_a_statement_with_an_uncastable_key_is_dead_lettered_whole():
    """Row 1 is fine, row 2's key is not an integer: nothing of the statement is
    emitted (it is replayable whole) but a whole-table DIVERGE mark, the next
    statement still is."""
    template = query_event('DELETE FROM orders')
    bad = template._replace(query_id=900, object=(
        "INSERT INTO orders (tenant_id, order_id, note) VALUES (7, 1, 'a'), (7, 'two', 'b')"))
    good = template._replace(query_id=901, object=(
        "INSERT INTO orders (tenant_id, order_id, note) VALUES (7, 3, 'c')"))
    with local_pipeline() as p:
        result = (p | beam.Create([CommittedTransaction('vm', 1, (bad, good))])
                  | ExtractRowChanges(SHOP_TABLES))
        assert_that(result['changes'] | beam.Map(lambda c: (c.key, c.ops[0].kind.value)),
                    equal_to([((), 'diverge'), ((7, 3), 'insert')]), label='changes')
        assert_that(result[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.reason, d.position)),
                    equal_to([('bad-value', template.position)]), label='dead letters')


def test_statements_and_changes_counted_reach_the_metrics_at_the_end_of_the_bundle():
    """Counted as plain ints per statement and change, reported by finish_bundle."""
    template = query_event('DELETE FROM orders')
    statements = tuple(template._replace(query_id=900 + n, object=sql) for n, sql in enumerate((
        "INSERT INTO orders (tenant_id, order_id, note) VALUES (7, 1, 'a'), (7, 2, 'b')",
        'DELETE FROM customers WHERE id = 3')))
    pipeline = local_pipeline()
    _ = (pipeline | beam.Create([CommittedTransaction('vm', 1, statements),
                                 CommittedTransaction('vm', 2, statements[1:])])
         | ExtractRowChanges(SHOP_TABLES))
    result = pipeline.run()
    result.wait_until_finish()
    counted = {counter.key.metric.name: counter.committed
               for counter in result.metrics().query()['counters']
               if counter.key.metric.namespace == 'changeflow.sql_changes'}
    assert counted == {'statements_received': 3, 'row_changes': 4}
