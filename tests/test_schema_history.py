"""The schema history: each DDL form, its effects, and schema_at(position)."""

import os

import pytest

from changeflow.schema.history import (
    DropColumn, DropTable, NeedsResync, RenameColumn, RenameTable, SchemaChanged, SchemaHistory,
    TemporaryTable, UnknownDdl, apply_ddl, data_loss)
from changeflow.schema.model import Column
from changeflow.schema.readers import read_schema_file

DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'schema', 'shop_dump.sql')
DB = 'cf_schema_shop'


@pytest.fixture(scope='module')
def initial():
    return read_schema_file(DUMP)


@pytest.fixture
def history(initial):
    return SchemaHistory(initial)


def ref(name):
    return (DB, name)


def kinds(effects):
    return [e.kind for e in effects]


def test_create_table_and_schema_at(history):
    effects = history.apply('CREATE TABLE tags (id INT PRIMARY KEY, label VARCHAR(20) NOT NULL '
                            "DEFAULT 'x')", DB, (100, 1))
    assert kinds(effects) == ['create-table']
    created = effects[0].schema
    assert created.primary_key == ('id',) and created.column('label').default == 'x'
    assert created.collation == 'utf8mb4_general_ci'  # the database's default, from the dump
    assert created.column('label').collation == 'utf8mb4_general_ci'
    history.apply('CREATE DATABASE IF NOT EXISTS other DEFAULT COLLATE latin1_bin', None, (101,))
    (effect,) = history.apply('CREATE TABLE other.t (s TEXT)', None, (102,))
    assert effect.schema.column('s')[-2:] == ('latin1_bin', 'latin1')
    assert history.apply('CREATE DATABASE IF NOT EXISTS other CHARSET utf8mb4', None, (103,)) == []
    assert history.current.database_default('other') == ('latin1', 'latin1_bin')
    (effect,) = history.apply('CREATE TABLE x (s TEXT)', None, (104,))
    assert effect.kind == 'unknown-ddl'  # no database selected: the name cannot be resolved
    assert history.schema_at((100, 1)).table(DB, 'tags') == created
    assert history.schema_at((99, 9)).table(DB, 'tags') is None
    assert history.current.table(DB, 'tags') == created


def test_create_table_like_copies_keys_not_foreign_keys_or_triggers(history, initial):
    (effect,) = history.apply('CREATE TABLE orders_copy LIKE orders', DB, (1,))
    copy = effect.schema
    original = initial.table(DB, 'orders')
    assert copy.columns == original.columns and copy.unique_keys == original.unique_keys
    assert copy.foreign_keys == () and copy.triggers == ()
    assert (copy.database, copy.name) == ref('orders_copy')


def test_create_table_select_of_plain_columns_needs_resync(history):
    effects = history.apply('CREATE TABLE emails AS SELECT id, email AS address FROM customers',
                            DB, (1,))
    assert kinds(effects) == ['create-table', 'needs-resync']
    table = effects[0].schema
    assert [(c.name, c.type, c.auto_increment) for c in table.columns] == [
        ('id', 'int unsigned', False), ('address', 'varchar(200)', False)]
    assert effects[1] == NeedsResync(ref('emails'), 'CREATE TABLE ... SELECT: rows come from the query')


def test_create_table_select_star_keeps_what_mariadb_keeps(history):
    (created, _) = history.apply('CREATE TABLE c2 SELECT * FROM customers', DB, (1,))
    table = created.schema
    assert table.column('id')[3:7] == ('0', 'literal', False, False)  # AUTO_INCREMENT dropped
    assert table.column('token')[3:5] == (None, 'none')  # an expression default is dropped
    assert table.column('created_at')[3:5] == ('current_timestamp', 'clock')
    assert table.column('updated_at').on_update_clock
    assert table.primary_key == () and table.indexes == ()
    (created, _) = history.apply('CREATE TABLE o2 SELECT * FROM orders', DB, (2,))
    assert created.schema.column('total')[2:9] == (True, None, 'null', False, False, None, False)


def test_create_table_select_of_expressions_is_not_guessed(history):
    effects = history.apply('CREATE TABLE totals SELECT tenant_id, SUM(qty) AS n FROM orders '
                            'GROUP BY tenant_id', DB, (1,))
    assert effects == [NeedsResync(ref('totals'), 'CREATE TABLE ... SELECT: columns and rows '
                                                  'come from the query')]
    assert history.current.table(DB, 'totals') is None


def test_create_existing_table(history):
    assert history.apply('CREATE TABLE IF NOT EXISTS counters (x INT)', DB, (1,)) == []
    effects = history.apply('CREATE OR REPLACE TABLE counters (x INT)', DB, (2,))
    assert kinds(effects) == ['drop-table', 'create-table']
    assert history.current.table(DB, 'counters').column_names == ('x',)
    (unknown,) = history.apply('CREATE TABLE counters (y INT)', DB, (3,))
    assert unknown.kind == 'unknown-ddl' and unknown.table == ref('counters')


def test_add_columns_with_fill_values_positions_and_resyncs(history):
    effects = history.apply(
        "ALTER TABLE counters ADD COLUMN note VARCHAR(10) NOT NULL DEFAULT 'n/a' AFTER name, "
        "ADD hits INT NOT NULL FIRST, ADD (maybe TEXT, at DATETIME NOT NULL DEFAULT NOW()), "
        "ADD seq BIGINT AS (value + 1) STORED", DB, (5,))
    assert [(e.kind, getattr(e, 'column', None) and e.column.name, getattr(e, 'fill', None))
            for e in effects] == [
        ('add-column', 'note', 'n/a'), ('add-column', 'hits', '0'), ('add-column', 'maybe', None),
        ('add-column', 'at', None), ('needs-resync', None, None), ('add-column', 'seq', None),
        ('needs-resync', None, None)]
    assert 'evaluated for existing rows' in effects[4].reason
    table = history.current.table(DB, 'counters')
    assert table.column_names == ('hits', 'name', 'note', 'value', 'maybe', 'at', 'seq')
    assert table.column('note').collation == 'utf8mb4_general_ci'  # the table's default


def test_drop_column_leaves_keys_consistent(history):
    (effect,) = history.apply('ALTER TABLE orders DROP COLUMN ext_ref', DB, (1,))
    assert effect == DropColumn(ref('orders'), 'ext_ref')
    orders = history.current.table(DB, 'orders')
    assert orders.column('ext_ref') is None
    assert orders.unique_keys == (('tenant_id',),)  # MySQL shrinks the index
    assert history.apply('ALTER TABLE orders DROP COLUMN IF EXISTS ext_ref', DB, (2,)) == []


@pytest.mark.parametrize('old, new, lossy', [
    ('varchar(100)', 'varchar(200)', False), ('varchar(100)', 'varchar(50)', True),
    ('varchar(100)', 'text', False), ('varchar(10)', 'char(10)', True),
    ('int', 'bigint', False), ('bigint', 'int', True), ('int unsigned', 'int', True),
    ('int unsigned', 'bigint', False), ('int', 'int unsigned', True),
    ('int', 'decimal(12,2)', False), ('int', 'decimal(8,0)', True),
    ('decimal(10,2)', 'decimal(12,2)', False), ('decimal(10,2)', 'decimal(10,1)', True),
    ("enum('a','b')", "enum('a','b','c')", False), ("enum('a','b')", "enum('a')", True),
    ('datetime', 'datetime(6)', False), ('datetime(6)', 'datetime', True), ('date', 'datetime', False),
    ('float', 'double', False), ('double', 'float', True), ('varbinary(4)', 'blob', False),
    ('int', 'varchar(20)', True), ('bit(8)', 'bit(16)', False), ('bit(8)', 'bit(4)', True),
    ('tinyint(1)', 'tinyint', False), ('char(10)', 'varchar(10)', False),
])
def test_data_loss_of_type_changes(old, new, lossy):
    charset = dict(charset='utf8mb4', collation='utf8mb4_general_ci') if any(
        new.startswith(t) or old.startswith(t) for t in ('varchar', 'char', 'text', 'enum')) else {}
    a = Column('c', old, **(charset if not old.startswith(('int', 'big')) else {}))
    b = Column('c', new, **(charset if not new.startswith(('int', 'big')) else {}))
    assert (data_loss(a, b) is not None) == lossy


def test_modify_widening_and_narrowing(history):
    effects = history.apply('ALTER TABLE customers MODIFY name VARCHAR(150) DEFAULT NULL', DB, (1,))
    assert kinds(effects) == ['modify-column']
    assert effects[0].column.type == 'varchar(150)'
    effects = history.apply('ALTER TABLE customers MODIFY COLUMN name VARCHAR(20)', DB, (2,))
    assert kinds(effects) == ['modify-column', 'needs-resync']
    assert 'varchar(150) -> varchar(20)' in effects[1].reason
    effects = history.apply('ALTER TABLE customers MODIFY name VARCHAR(20) NOT NULL', DB, (3,))
    assert kinds(effects) == ['modify-column', 'needs-resync'] and 'NULL' in effects[1].reason
    assert history.apply('ALTER TABLE customers MODIFY name VARCHAR(20) NOT NULL', DB, (4,)) == []


def test_change_renames_and_follows_referencing_foreign_keys(history):
    effects = history.apply('ALTER TABLE customers CHANGE id customer_no INT UNSIGNED NOT NULL '
                            'AUTO_INCREMENT', DB, (1,))
    assert effects == [RenameColumn(ref('customers'), 'id', 'customer_no')]
    schema = history.current
    assert schema.table(DB, 'customers').primary_key == ('customer_no',)
    assert schema.table(DB, 'orders').foreign_keys[0].ref_columns == ('customer_no',)
    effects = history.apply('ALTER TABLE customers CHANGE customer_no id BIGINT UNSIGNED NOT NULL '
                            'AUTO_INCREMENT FIRST', DB, (2,))
    assert kinds(effects) == ['rename-column', 'modify-column']


def test_rename_column(history):
    effects = history.apply('ALTER TABLE orders RENAME COLUMN tenant_id TO tenant', DB, (1,))
    assert effects == [RenameColumn(ref('orders'), 'tenant_id', 'tenant')]
    schema = history.current
    assert schema.table(DB, 'orders').primary_key == ('tenant', 'order_id')
    assert schema.table(DB, 'order_lines').foreign_keys[0].ref_columns == ('tenant', 'order_id')


def test_add_and_drop_keys(history):
    effects = history.apply('ALTER TABLE counters ADD UNIQUE KEY uq_value (value), '
                            'ADD INDEX (name, value)', DB, (1,))
    assert kinds(effects) == ['schema-changed', 'schema-changed']
    assert history.current.table(DB, 'counters').unique_keys == (('value',),)
    history.apply('ALTER TABLE counters DROP INDEX uq_value', DB, (2,))
    assert history.current.table(DB, 'counters').unique_keys == ()
    history.apply('ALTER TABLE payments DROP FOREIGN KEY fk_payments_customer', DB, (3,))
    assert history.current.referencing(DB, 'customers')[0][0].name == 'orders'
    history.apply('ALTER TABLE payments ADD CONSTRAINT fk_p FOREIGN KEY (customer_id) '
                  'REFERENCES customers (id) ON DELETE CASCADE', DB, (4,))
    fks = {fk.name: fk.on_delete for _, fk in history.current.referencing(DB, 'customers')}
    assert fks == {'fk_orders_customer': 'SET NULL', 'fk_p': 'CASCADE'}
    history.apply('CREATE UNIQUE INDEX uq_sku ON order_lines (sku)', DB, (5,))
    assert history.current.table(DB, 'order_lines').unique_keys == (('sku',),)
    assert kinds(history.apply('DROP INDEX uq_sku ON order_lines', DB, (6,))) == ['schema-changed']
    assert history.current.table(DB, 'order_lines').unique_keys == ()


def test_rename_table_list_and_swap(history):
    effects = history.apply('RENAME TABLE customers TO clients, counters TO tallies', DB, (1,))
    assert effects == [RenameTable(ref('customers'), ref('clients')),
                       RenameTable(ref('counters'), ref('tallies'))]
    schema = history.current
    assert schema.table(DB, 'customers') is None and schema.table(DB, 'clients') is not None
    assert schema.table(DB, 'orders').foreign_keys[0].ref_table == 'clients'
    history.apply('RENAME TABLE clients TO tmp, tallies TO clients, tmp TO tallies', DB, (2,))
    assert history.current.table(DB, 'clients').column_names == ('name', 'value')


def test_rename_from_an_unknown_table_needs_resync(history):
    effects = history.apply('RENAME TABLE counters TO counters_old, _counters_new TO counters',
                            DB, (1,))
    assert kinds(effects) == ['rename-table', 'rename-table', 'needs-resync']
    assert effects[2].table == ref('counters')
    assert history.current.table(DB, 'counters') is None


def test_alter_rename_to_other_database(history):
    effects = history.apply('ALTER TABLE counters RENAME TO archive.counters', DB, (1,))
    assert effects == [RenameTable(ref('counters'), ('archive', 'counters'))]
    assert history.current.table('archive', 'counters').database == 'archive'


def test_drop_tables(history):
    effects = history.apply('DROP TABLE IF EXISTS counters, `payments`, nothing_here', DB, (1,))
    assert effects == [DropTable(ref('counters')), DropTable(ref('payments')),
                       DropTable(ref('nothing_here'))]
    assert history.current.table(DB, 'payments') is None
    assert history.apply('DROP TEMPORARY TABLE IF EXISTS t1', DB, (2,)) == [
        TemporaryTable(ref('t1'), True)]


def test_truncate_changes_no_schema(history, initial):
    assert history.apply('TRUNCATE TABLE orders', DB, (1,)) == []
    assert history.current == initial


def test_create_and_drop_trigger(history):
    effects = history.apply(
        'CREATE DEFINER=`root`@`localhost` TRIGGER counters_bu BEFORE UPDATE ON counters '
        'FOR EACH ROW BEGIN SET NEW.value = NEW.value + 1; INSERT INTO audit_trail (table_name, '
        "action) VALUES ('counters', 'u'); END", DB, (1,))
    assert effects == [SchemaChanged(ref('counters'), 'BEFORE UPDATE trigger counters_bu created')]
    (trigger,) = history.current.table(DB, 'counters').triggers
    assert trigger.writes == (ref('audit_trail'),)
    assert kinds(history.apply('DROP TRIGGER IF EXISTS counters_bu', DB, (2,))) == [
        'schema-changed']
    assert history.current.table(DB, 'counters').triggers == ()
    assert history.apply('DROP TRIGGER IF EXISTS counters_bu', DB, (3,)) == []


def test_temporary_table_is_reported(history):
    assert history.apply('CREATE TEMPORARY TABLE orders (id INT)', DB, (1,)) == [
        TemporaryTable(ref('orders'), False)]


def test_unknown_ddl_is_never_silent(history, initial):
    (effect,) = history.apply('ALTER TABLE orders FROBNICATE everything', DB, (1,))
    assert effect.kind == 'unknown-ddl' and effect.table == ref('orders')
    (effect,) = history.apply('CREATE VIEW v AS SELECT * FROM orders', DB, (2,))
    assert effect.kind == 'unknown-ddl'
    (effect,) = history.apply('ALTER TABLE nowhere ADD COLUMN x INT', DB, (3,))
    assert effect == UnknownDdl(ref('nowhere'), 'ALTER TABLE of a table the schema does not hold')
    assert history.current == initial


def test_a_bad_clause_leaves_the_whole_alter_unapplied(history, initial):
    (effect,) = history.apply('ALTER TABLE orders ADD COLUMN x INT, DROP COLUMN no_such', DB, (1,))
    assert effect.kind == 'unknown-ddl' and 'no_such' in effect.detail
    assert history.current.table(DB, 'orders') == initial.table(DB, 'orders')


def test_table_options_and_engines(history):
    assert history.apply('ALTER TABLE orders ENGINE=InnoDB ROW_FORMAT=DYNAMIC, '
                         'AUTO_INCREMENT = 5, ALGORITHM=INPLACE, LOCK=NONE', DB, (1,)) == []
    (effect,) = history.apply('ALTER TABLE orders ENGINE=BLACKHOLE', DB, (2,))
    assert effect == NeedsResync(ref('orders'), 'ENGINE=BLACKHOLE')
    assert kinds(history.apply('ALTER TABLE orders CONVERT TO CHARACTER SET latin1', DB, (3,))) == [
        'needs-resync']
    assert history.current.table(DB, 'orders').column('note').charset == 'latin1'


def test_executable_comments_are_applied(history):
    effects = history.apply('ALTER TABLE counters /*!50100 ADD COLUMN z INT */', DB, (1,))
    assert kinds(effects) == ['add-column']


def test_drop_database_drops_its_tables(history):
    effects = history.apply('DROP DATABASE cf_schema_shop', None, (1,))
    assert len(effects) == 6 and all(isinstance(e, DropTable) for e in effects)
    assert len(history.current) == 0


def test_positions_out_of_order_and_replays(history):
    history.apply('ALTER TABLE counters ADD COLUMN b INT', DB, (20, 1))
    history.apply('ALTER TABLE counters ADD COLUMN c INT', DB, (30, 1))
    # a late statement from before both: the later ones are re-applied after it
    assert kinds(history.apply('ALTER TABLE counters ADD COLUMN a INT', DB, (10, 1))) == [
        'add-column']
    assert history.schema_at((10, 1)).table(DB, 'counters').column_names == ('name', 'value', 'a')
    assert history.schema_at((25, 0)).table(DB, 'counters').column_names == (
        'name', 'value', 'a', 'b')
    assert history.current.table(DB, 'counters').column_names == ('name', 'value', 'a', 'b', 'c')
    # replaying the same statement at the same position changes nothing
    again = history.apply('ALTER TABLE counters ADD COLUMN b INT', DB, (20, 1))
    assert kinds(again) == ['add-column'] and len(history) == 3
    with pytest.raises(ValueError, match='already holds'):
        history.apply('ALTER TABLE counters ADD COLUMN d INT', DB, (20, 1))


def test_apply_ddl_never_raises(initial):
    for sql in ('', 'ALTER TABLE', 'CREATE TABLE (', 'RENAME TABLE a', 'DROP TABLE',
                "ALTER TABLE orders ADD COLUMN x ENUM('", 'CREATE TABLE t (id INT)',
                'ALTER TABLE cf_schema_shop.orders MODIFY note VARCHAR(10SELECT)',
                'CREATE TABLE d.t (c INT)x)'):
        schema, effects = apply_ddl(initial, sql, None)
        assert schema == initial
        assert [e.kind for e in effects] == ['unknown-ddl'], sql
        assert not effects[0].detail.startswith('internal error'), effects[0].detail


def _mutations(seed_texts, count, seed=5):
    """Deterministic mutations of real DDL: deleted, inserted and cut characters."""
    import random

    rnd = random.Random(seed)
    pieces = list("()'`\",;.=-+*/ \n\\") + ['SELECT', 'KEY', 'DEFAULT', 'NULL', 'AS', 'ON', '/*!',
                                            '*/', 'BEGIN', 'END', 'DELIMITER ;;', 'FIRST']
    for _ in range(count):
        chars = list(rnd.choice(seed_texts))
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randint(0, len(chars))
            roll = rnd.random()
            if roll < 0.4 and chars:
                del chars[min(i, len(chars) - 1)]
            elif roll < 0.8:
                chars.insert(i, rnd.choice(pieces))
            else:
                del chars[i:rnd.randint(i, len(chars))]
        yield ''.join(chars)


def test_mutated_ddl_never_raises_nor_hits_an_internal_error(initial):
    from changeflow.schema.ddl import DdlError
    from changeflow.schema.readers import read_schema_text

    seeds = open(DUMP).read().split(';') + [
        'ALTER TABLE orders ADD COLUMN x INT NOT NULL DEFAULT 5 AFTER qty, DROP INDEX '
        'uq_orders_ext, MODIFY note VARCHAR(10)', 'RENAME TABLE orders TO o2, customers TO c2',
        'CREATE TABLE t2 AS SELECT * FROM orders', 'DROP TABLE IF EXISTS a, b',
        'ALTER TABLE customers CHANGE id cid INT UNSIGNED NOT NULL, ADD CONSTRAINT fk FOREIGN KEY '
        '(cid) REFERENCES payments (id) ON DELETE CASCADE', 'CREATE INDEX i ON orders (qty, price)']
    for text in _mutations(seeds, 1500):
        schema, effects = apply_ddl(initial, text, DB)
        assert not any(getattr(e, 'detail', '').startswith('internal error') for e in effects), text
        try:
            read_schema_text(text, DB)
        except DdlError as error:
            assert 'internal error' not in str(error), text


def test_primary_key_columns_stay_not_null(history):
    history.apply('ALTER TABLE counters MODIFY name VARCHAR(40)', DB, (1,))
    assert not history.current.table(DB, 'counters').column('name').nullable
    history.apply('ALTER TABLE audit_trail DROP PRIMARY KEY, ADD PRIMARY KEY (id, row_ref)', DB,
                  (2,))
    table = history.current.table(DB, 'audit_trail')
    assert table.primary_key == ('id', 'row_ref')
    assert table.column('row_ref')[2:5] == (False, None, 'none')


LIVE_DB = 'cf_schema_hist'
LIVE_STEPS = [
    'CREATE TABLE a (id INT NOT NULL, name VARCHAR(20), PRIMARY KEY (id))',
    'CREATE TABLE b (id INT PRIMARY KEY, a_id INT, note TEXT, UNIQUE (note(10)), '
    'FOREIGN KEY (a_id) REFERENCES a (id) ON DELETE CASCADE) DEFAULT CHARSET=latin1',
    'ALTER TABLE a ADD COLUMN qty INT NOT NULL DEFAULT 3 AFTER id, '
    'ADD email VARCHAR(50) COLLATE utf8mb4_unicode_ci, ADD UNIQUE KEY (email)',
    "ALTER TABLE a MODIFY name VARCHAR(40) NOT NULL DEFAULT ''",
    'ALTER TABLE a CHANGE name full_name VARCHAR(40) NOT NULL',
    'ALTER TABLE a RENAME COLUMN qty TO quantity',
    'ALTER TABLE b ADD INDEX ix_note (note(5)), '
    'ADD CONSTRAINT fk2 FOREIGN KEY (id) REFERENCES a (id) ON UPDATE CASCADE',
    'ALTER TABLE b ADD COLUMN parent INT, '
    'ADD CONSTRAINT fk3 FOREIGN KEY (parent) REFERENCES b (id) ON DELETE SET NULL',
    'ALTER TABLE b DROP FOREIGN KEY fk2',
    'ALTER TABLE a DROP COLUMN email',
    'CREATE TABLE c LIKE a',
    'CREATE TABLE d AS SELECT id, full_name AS nm FROM a',
    'RENAME TABLE c TO c2, d TO d2',
    'ALTER TABLE c2 RENAME TO c3',
    'CREATE TRIGGER a_bi BEFORE INSERT ON a FOR EACH ROW SET NEW.quantity = NEW.quantity + 1',
    'CREATE TRIGGER a_ai AFTER INSERT ON a FOR EACH ROW '
    'INSERT INTO b (id, a_id) VALUES (NEW.id, NEW.id)',
    'DROP TRIGGER a_bi',
    'CREATE UNIQUE INDEX uq_nm ON d2 (nm)',
    'DROP INDEX uq_nm ON d2',
    'ALTER TABLE a ADD COLUMN t TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP '
    'ON UPDATE CURRENT_TIMESTAMP, ADD g INT AS (quantity * 2) STORED',
    'ALTER TABLE a ALTER COLUMN quantity SET DEFAULT 7',
    'ALTER TABLE a ALTER COLUMN quantity DROP DEFAULT',
    'ALTER TABLE b DROP PRIMARY KEY, ADD PRIMARY KEY (id, a_id)',
    'DROP TABLE IF EXISTS d2, nothere',
    'ALTER TABLE a CONVERT TO CHARACTER SET latin1',
    'ALTER TABLE a DEFAULT CHARSET = utf8mb4',
    'ALTER TABLE a ADD COLUMN z VARCHAR(5), ADD COLUMN e ENUM(\'x\',\'y\') NOT NULL',
    'ALTER DATABASE cf_schema_hist CHARACTER SET latin1',
    'CREATE TABLE e (s VARCHAR(3) PRIMARY KEY)',
    'CREATE TABLE f (id SERIAL, x INT NOT NULL, y INT UNIQUE, w VARCHAR(4) NOT NULL, KEY (x), '
    'UNIQUE (x, y), CONSTRAINT FOREIGN KEY (x) REFERENCES a (id)) DEFAULT CHARSET=utf8mb4',
    'ALTER TABLE f ADD COLUMN v INT FIRST, MODIFY w VARCHAR(8) NOT NULL AFTER v, '
    'CHANGE y yy BIGINT FIRST',
    'ALTER TABLE f ADD UNIQUE (v, yy), ADD UNIQUE (v), ADD INDEX (w, v), RENAME INDEX x TO x_idx',
    'ALTER TABLE f DROP COLUMN w',
    'CREATE TABLE g AS SELECT * FROM a',
    'RENAME TABLE f TO cf_schema_hist2.f',
    'CREATE TABLE cf_schema_hist.h (id INT UNSIGNED NOT NULL PRIMARY KEY, '
    'f_id BIGINT UNSIGNED, FOREIGN KEY fk_idx (f_id) REFERENCES cf_schema_hist2.f (id) '
    'ON DELETE SET NULL ON UPDATE CASCADE)',
]


def test_history_follows_a_live_mariadb(mariadb_url):
    """Each DDL run on MariaDB and applied to the history: after every step
    the history's schema equals the server's information_schema."""
    sqlalchemy = pytest.importorskip('sqlalchemy')
    from changeflow.schema.readers import read_information_schema

    engine = sqlalchemy.create_engine(mariadb_url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql('SET SESSION foreign_key_checks = 0')  # cross-database keys
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS {LIVE_DB}2')
            conn.exec_driver_sql(f'CREATE DATABASE {LIVE_DB}2')
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS {LIVE_DB}')
            conn.exec_driver_sql(f'CREATE DATABASE {LIVE_DB} CHARACTER SET utf8mb4 '
                                 f'COLLATE utf8mb4_general_ci')
            conn.exec_driver_sql(f'USE {LIVE_DB}')
            conn.exec_driver_sql('SET SESSION foreign_key_checks = 1')
            history = SchemaHistory(read_information_schema(conn, [LIVE_DB, LIVE_DB + '2']))
            for i, sql in enumerate(LIVE_STEPS):
                conn.exec_driver_sql(sql)
                effects = history.apply(sql, LIVE_DB, (i,))
                assert 'unknown-ddl' not in kinds(effects), (sql, effects)
                live = read_information_schema(conn, [LIVE_DB, LIVE_DB + '2'])
                for table in live.tables:
                    assert history.current.table(table.database, table.name) == table, sql
                assert history.current == live, sql
            conn.exec_driver_sql('SET SESSION foreign_key_checks = 0')
            conn.exec_driver_sql(f'DROP DATABASE {LIVE_DB}')
            conn.exec_driver_sql(f'DROP DATABASE {LIVE_DB}2')
    finally:
        engine.dispose()
