"""Write hazards, classified from the committed mariadb-dump fixture."""

import os

import pytest

from changeflow.schema.hazards import Hazard, write_hazards
from changeflow.schema.readers import read_schema_file, read_schema_text

DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'schema', 'shop_dump.sql')
DB = 'cf_schema_shop'
AUDIT = (DB, 'audit_trail')


@pytest.fixture(scope='module')
def schema():
    return read_schema_file(DUMP)


def hazards(schema, table, kind, written=(), omitted=None, updated=None):
    return write_hazards(schema, schema.table(DB, table), kind, written, omitted, updated)


def reasons(found):
    return sorted(h.reason for h in found)


def test_a_plain_table_written_whole_has_no_hazard(schema):
    for kind in ('insert', 'replace', 'insert_ignore', 'upsert', 'update', 'delete', 'truncate'):
        assert hazards(schema, 'counters', kind, ('name', 'value')) == [], kind


def test_insert_omitting_defaults_into_a_table_with_a_before_trigger(schema):
    found = hazards(schema, 'orders', 'insert', ('tenant_id', 'order_id', 'price'))
    assert reasons(found) == ['clock-default', 'expression-default', 'generated-column',
                              'generated-column', 'trigger']
    (trigger,) = [h for h in found if h.reason == 'trigger']
    assert not trigger.rows_exact and trigger.affected_tables == ()
    assert 'orders_bi' in trigger.detail
    assert all(not h.rows_exact for h in found)
    assert any('changed_at' in h.detail for h in found if h.reason == 'clock-default')
    assert any('ordered_on' in h.detail for h in found if h.reason == 'expression-default')


def test_written_columns_have_no_default_hazard(schema):
    found = hazards(schema, 'orders', 'insert',
                    ('tenant_id', 'order_id', 'price', 'ORDERED_ON', 'changed_at'))
    assert reasons(found) == ['generated-column', 'generated-column', 'trigger']


def test_explicit_omitted_list_is_honoured(schema):
    found = hazards(schema, 'customers', 'insert', ('email',), omitted=('id',))
    assert reasons(found) == ['auto-increment']


def test_insert_omitting_auto_increment_clock_and_expression(schema):
    found = hazards(schema, 'customers', 'insert', ('email', 'name'))
    assert reasons(found) == ['auto-increment', 'clock-default', 'expression-default']
    assert [h.detail for h in found if h.reason == 'expression-default'] == [
        'cf_schema_shop.customers.token omitted: DEFAULT (UUID())']


@pytest.mark.parametrize('kind', ['upsert', 'replace', 'insert_ignore'])
def test_secondary_unique_key_on_conflicting_writes(schema, kind):
    written = [c.name for c in schema.table(DB, 'customers').columns]
    found = hazards(schema, 'customers', kind, written)
    (unique,) = [h for h in found if h.reason == 'secondary-unique-key']
    assert '(email)' in unique.detail and not unique.rows_exact
    assert 'secondary-unique-key' not in reasons(hazards(schema, 'customers', 'insert', written))


def test_replace_is_a_delete_too_triggers_and_cascades(schema):
    written = [c.name for c in schema.table(DB, 'customers').columns]
    found = hazards(schema, 'customers', 'replace', written)
    assert reasons(found) == ['cascade', 'secondary-unique-key', 'trigger']
    (cascade,) = [h for h in found if h.reason == 'cascade']
    assert cascade.rows_exact and cascade.affected_tables == ((DB, 'orders'),)
    assert 'SET NULL' in cascade.detail and 'REPLACE' in cascade.detail


def test_update_fires_after_trigger_and_on_update_clock(schema):
    found = hazards(schema, 'orders', 'update', ('note',))
    assert reasons(found) == ['on-update-clock', 'trigger']
    (trigger,) = [h for h in found if h.reason == 'trigger']
    assert trigger.rows_exact and trigger.affected_tables == (AUDIT,)
    assert reasons(hazards(schema, 'orders', 'update', ('note', 'Changed_At'))) == ['trigger']


def test_update_of_a_generated_columns_input(schema):
    found = hazards(schema, 'orders', 'update', ('qty', 'changed_at'))
    assert reasons(found) == ['generated-column', 'trigger']
    assert 'total' in [h for h in found if h.reason == 'generated-column'][0].detail


def test_upsert_on_update_clock_follows_the_update_assignments(schema):
    columns = [c.name for c in schema.table(DB, 'customers').columns if c.generated is None]
    found = hazards(schema, 'customers', 'upsert', columns, updated=('name',))
    assert 'on-update-clock' in reasons(found)
    found = hazards(schema, 'customers', 'upsert', columns, updated=('name', 'updated_at'))
    assert 'on-update-clock' not in reasons(found)


def test_delete_with_before_delete_trigger_and_set_null_cascade(schema):
    found = hazards(schema, 'customers', 'delete')
    assert reasons(found) == ['cascade', 'trigger']
    trigger = [h for h in found if h.reason == 'trigger'][0]
    assert trigger.rows_exact and trigger.affected_tables == (AUDIT,)
    cascade = [h for h in found if h.reason == 'cascade'][0]
    assert cascade.affected_tables == ((DB, 'orders'),)  # payments is RESTRICT: not reached


def test_delete_cascades_to_child_rows(schema):
    (cascade,) = hazards(schema, 'orders', 'delete')
    assert cascade == Hazard(
        'cascade', 'cf_schema_shop.order_lines.fk_lines_order (tenant_id, order_id) references '
        'cf_schema_shop.orders ON DELETE CASCADE', ((DB, 'order_lines'),), True)


def test_key_update_cascades_only_when_referenced_columns_change(schema):
    found = hazards(schema, 'customers', 'update', ('id',))
    assert [h.affected_tables for h in found if h.reason == 'cascade'] == [((DB, 'orders'),)]
    assert 'cascade' not in reasons(hazards(schema, 'customers', 'update', ('name',)))


def test_truncate_fires_no_trigger(schema):
    assert hazards(schema, 'orders', 'truncate') == []


def test_after_insert_trigger_rows_exact_other_tables_not(schema):
    written = ('tenant_id', 'order_id', 'line_no', 'sku', 'amount')
    (trigger,) = hazards(schema, 'order_lines', 'insert', written)
    assert trigger.rows_exact
    assert trigger.affected_tables == (AUDIT, (DB, 'counters'))


def test_cascades_are_followed_transitively():
    schema = read_schema_text("""
        CREATE TABLE d.a (id INT PRIMARY KEY);
        CREATE TABLE d.b (id INT PRIMARY KEY, a_id INT,
          FOREIGN KEY (a_id) REFERENCES a (id) ON DELETE CASCADE);
        CREATE TABLE d.c (id INT PRIMARY KEY, b_id INT,
          FOREIGN KEY (b_id) REFERENCES b (id) ON DELETE SET NULL);
        CREATE TABLE d.e (id INT PRIMARY KEY, c_id INT,
          FOREIGN KEY (c_id) REFERENCES c (id) ON DELETE CASCADE);""")
    (cascade,) = write_hazards(schema, schema.table('d', 'a'), 'delete')
    assert cascade.affected_tables == (('d', 'b'), ('d', 'c'))  # c's rows are updated, not deleted


def test_unknown_kind_is_rejected(schema):
    with pytest.raises(ValueError, match='unknown write kind'):
        hazards(schema, 'orders', 'merge')


def test_trigger_writes_are_followed_through_nested_triggers_and_cascades():
    schema = read_schema_text("""
        CREATE TABLE d.a (id INT PRIMARY KEY);
        CREATE TABLE d.log (id INT PRIMARY KEY);
        CREATE TABLE d.stats (id INT PRIMARY KEY);
        CREATE TABLE d.detail (id INT PRIMARY KEY, stat INT,
          FOREIGN KEY (stat) REFERENCES stats (id) ON DELETE CASCADE);
        CREATE TRIGGER a_ad AFTER DELETE ON d.a FOR EACH ROW INSERT INTO log VALUES (OLD.id);
        CREATE TRIGGER log_ai AFTER INSERT ON d.log FOR EACH ROW DELETE FROM stats WHERE id = 1;
        """)
    (trigger,) = write_hazards(schema, schema.table('d', 'a'), 'delete')
    assert trigger.affected_tables == (('d', 'log'), ('d', 'stats'), ('d', 'detail'))
    assert 'also d.stats, d.detail' in trigger.detail
