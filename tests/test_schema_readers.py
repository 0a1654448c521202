"""The schema model and its readers: the committed mariadb-dump file, SHOW
CREATE text, and a live MariaDB's information_schema give one model."""

import os
import pickle

import pytest

from changeflow.schema import ddl
from changeflow.schema.ddl import DdlError
from changeflow.schema.model import Column, ForeignKey, Index, SourceSchema, Trigger
from changeflow.schema.readers import (
    read_information_schema, read_schema_file, read_schema_text)

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_DATA = os.path.join(HERE, 'data', 'schema')
DUMP = os.path.join(SCHEMA_DATA, 'shop_dump.sql')
SHOW_CREATE = os.path.join(SCHEMA_DATA, 'show_create.sql')
DB = 'cf_schema_shop'


@pytest.fixture(scope='module')
def dump():
    return read_schema_file(DUMP)


def test_dump_holds_every_table(dump):
    assert [t.name for t in dump.tables] == [
        'audit_trail', 'counters', 'customers', 'order_lines', 'orders', 'payments']
    assert all(t.database == DB for t in dump.tables)


def test_customers_columns_types_defaults_collations(dump):
    c = dump.table(DB, 'customers')
    general = dict(collation='utf8mb4_general_ci', charset='utf8mb4')
    assert c.columns == (
        Column('id', 'int unsigned', False, None, 'none', auto_increment=True),
        Column('email', 'varchar(200)', False, None, 'none',
               collation='utf8mb4_unicode_ci', charset='utf8mb4'),
        Column('name', 'varchar(100)', True, None, 'null', **general),
        Column('status', "enum('active','closed')", False, 'active', 'literal', **general),
        Column('flags', "set('vip','staff')", False, '', 'literal', **general),
        Column('country', 'char(2)', False, 'FR', 'literal', **general),
        Column('born', 'year', True, None, 'null'),
        Column('verified', 'tinyint(1)', False, '0', 'literal'),
        Column('perms', 'bit(8)', False, '5', 'literal'),  # b'101'
        Column('balance', 'decimal(10,2)', False, '0.00', 'literal'),
        Column('token', 'char(36)', False, 'UUID()', 'expression', **general),
        Column('created_at', 'timestamp', False, 'current_timestamp', 'clock'),
        Column('updated_at', 'timestamp', True, None, 'null', on_update_clock=True),
    )
    assert c.primary_key == ('id',)
    assert c.unique_keys == (('email',),)
    assert c.column('email').case_insensitive and not c.column('id').case_insensitive
    assert c.triggers == (Trigger(
        'customers_bd', 'BEFORE', 'DELETE',
        "INSERT INTO audit_trail (table_name, action, row_ref) "
        "VALUES ('customers', 'delete', OLD.email)", ((DB, 'audit_trail'),)),)


def test_orders_generated_columns_keys_foreign_keys_triggers(dump):
    o = dump.table(DB, 'orders')
    assert o.primary_key == ('tenant_id', 'order_id')
    assert o.column('order_id').type == 'bigint unsigned'
    total, label = o.column('total'), o.column('label')
    assert (total.generated, total.stored, total.default_kind) == ('`qty` * `price`', True, 'none')
    assert (label.generated, label.stored) == ("CONCAT('order-', `order_id`)", False)
    assert o.column('ordered_on')[3:5] == ('CURRENT_DATE', 'expression')
    changed = o.column('changed_at')
    assert (changed.default, changed.default_kind, changed.on_update_clock) == (
        'current_timestamp(6)', 'clock', True)
    assert o.indexes == (Index('ix_orders_customer', ('customer_id',), False),
                         Index('uq_orders_ext', ('tenant_id', 'ext_ref'), True))
    assert o.unique_keys == (('tenant_id', 'ext_ref'),)
    assert o.foreign_keys == (ForeignKey('fk_orders_customer', ('customer_id',), DB, 'customers',
                                         ('id',), 'SET NULL', 'CASCADE'),)
    assert [(t.name, t.timing, t.event, t.writes) for t in o.triggers] == [
        ('orders_bi', 'BEFORE', 'INSERT', ()),
        ('orders_au', 'AFTER', 'UPDATE', ((DB, 'audit_trail'),))]


def test_compound_trigger_body_and_restrict_foreign_key(dump):
    lines = dump.table(DB, 'order_lines')
    (trigger,) = lines.triggers
    assert trigger.body.startswith('BEGIN\n') and trigger.body.endswith('END')
    assert trigger.writes == ((DB, 'audit_trail'), (DB, 'counters'))
    assert lines.foreign_keys[0][-2:] == ('CASCADE', 'CASCADE')
    payments = dump.table(DB, 'payments')
    assert payments.foreign_keys[0][-2:] == ('RESTRICT', 'RESTRICT')  # the dump omits RESTRICT
    assert payments.column('memo').default == "it's"


def test_show_create_text_gives_the_dump_model(dump):
    assert read_schema_file(SHOW_CREATE, DB).tables == dump.tables


def test_database_defaults_come_from_create_database(dump):
    assert dump.databases == ((DB, 'utf8mb4', 'utf8mb4_general_ci'),)
    schema = read_schema_text('CREATE DATABASE d CHARACTER SET latin1;\n'
                              'CREATE TABLE d.t (a VARCHAR(5), b CHAR(2) CHARACTER SET utf8mb4);')
    t = schema.table('d', 't')
    assert (t.charset, t.collation) == ('latin1', 'latin1_swedish_ci')
    assert t.column('a').collation == 'latin1_swedish_ci'
    assert t.column('b').collation == 'utf8mb4_general_ci'



def test_referencing_lists_child_foreign_keys(dump):
    children = dump.referencing(DB, 'customers')
    assert sorted((t.name, fk.name, fk.on_delete) for t, fk in children) == [
        ('orders', 'fk_orders_customer', 'SET NULL'),
        ('payments', 'fk_payments_customer', 'RESTRICT')]
    assert [t.name for t, _ in dump.referencing(DB, 'orders')] == ['order_lines']
    assert dump.referencing(DB, 'counters') == ()


def test_name_lookup_follows_lower_case_table_names(dump):
    assert dump.table(DB, 'Customers') is None  # 0: case-sensitive, as on Linux
    folded = SourceSchema(dump.tables, lower_case_table_names=1)
    assert folded.table('CF_SCHEMA_SHOP', 'Customers') == dump.table(DB, 'customers')
    assert dump.table(DB, 'customers').column('EMAIL').name == 'email'
    with pytest.raises(ValueError):
        SourceSchema((), lower_case_table_names=3)


def test_schema_is_immutable_and_pickles(dump):
    smaller = dump.without(DB, 'counters')
    assert dump.table(DB, 'counters') is not None and smaller.table(DB, 'counters') is None
    assert pickle.loads(pickle.dumps(dump)) == dump
    with pytest.raises(AttributeError):
        dump.table(DB, 'orders').name = 'x'


def test_unknown_statement_in_a_schema_file_is_an_error():
    with pytest.raises(DdlError, match='not a schema statement'):
        read_schema_text('CREATE TABLE a.t (id INT PRIMARY KEY);\nGRANT ALL ON a.* TO x;')
    with pytest.raises(DdlError, match="cannot read"):
        read_schema_text('CREATE TABLE a.t (id INT PRIMARY KEY WOBBLE);')
    with pytest.raises(DdlError, match='not qualified'):
        read_schema_text('CREATE TABLE t (id INT);')


def test_views_and_routines_are_skipped_and_drop_table_removes():
    schema = read_schema_text(
        'USE a;\nCREATE TABLE v (x INT);\nDROP TABLE IF EXISTS v;\n'
        '/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50001 VIEW `v` AS SELECT 1 AS `x` */;\n'
        'DELIMITER ;;\nCREATE PROCEDURE p() BEGIN SELECT 1; END ;;\nDELIMITER ;\n'
        'CREATE TABLE t (id INT NOT NULL, PRIMARY KEY (id));')
    assert [t.qualified for t in schema.tables] == ['a.t']


def test_split_statements_honours_delimiters_blocks_and_quotes():
    text = ("SET x = ';';\nDELIMITER ;;\nCREATE TRIGGER a BEFORE INSERT ON t FOR EACH ROW "
            "BEGIN SET NEW.a = 1; END ;;\nDELIMITER ;\n"
            "CREATE TRIGGER b AFTER INSERT ON t FOR EACH ROW BEGIN\n"
            "  IF NEW.a > 1 THEN UPDATE u SET n = CASE WHEN 1 THEN 2 END; END IF;\n"
            "  INSERT INTO w VALUES (';');\nEND;\nSELECT `;`; -- ; comment\nBEGIN;\nCOMMIT;")
    statements = ddl.split_statements(text)
    assert [ddl.leading_words(s, 1)[0] for s in statements] == ['SET', 'CREATE', 'CREATE', 'SELECT', 'BEGIN',
                                                   'COMMIT']
    assert statements[2].endswith('END')
    _, trigger, _, _ = ddl.parse_create_trigger(statements[2], 'd')
    assert trigger.writes == (('d', 'u'), ('d', 'w'))


def test_unwrap_comments_runs_executable_comments():
    assert ddl.unwrap_comments("/*!40101 SET NAMES utf8 */; -- x\nSELECT '/*' /* c */ ,1"
                               ).split() == ['SET', 'NAMES', 'utf8', ';', "SELECT", "'/*'", ',1']
    assert ddl.unwrap_comments('/*M!999999\\- enable the sandbox mode */ X').strip() == 'X'
    assert ddl.unwrap_comments('/*M!100100 A */ B').split() == ['A', 'B']


@pytest.mark.parametrize('text, normal', [
    ('INT(11)', 'int'), ('int(10) unsigned', 'int unsigned'), ('TINYINT(1)', 'tinyint(1)'),
    ('tinyint(4)', 'tinyint'), ('INTEGER', 'int'), ('BOOL', 'tinyint(1)'),
    ('bigint(20) UNSIGNED', 'bigint unsigned'), ('int(5) zerofill', 'int(5) unsigned zerofill'),
    ('DECIMAL(10, 2)', 'decimal(10,2)'), ('numeric', 'decimal(10,0)'), ('dec(5)', 'decimal(5,0)'),
    ('REAL', 'double'), ('double precision', 'double'), ('YEAR(4)', 'year'),
    ("ENUM('a', 'B c','d''e')", "enum('a','B c','d''e')"), ('VARCHAR( 20 )', 'varchar(20)'),
    ('serial', 'bigint unsigned'), ('datetime(6)', 'datetime(6)'), ('int signed', 'int'),
    ('CHAR', 'char(1)'), ('bit', 'bit(1)'), ('datetime(0)', 'datetime'),
])
def test_normalize_type(text, normal):
    assert ddl.normalize_type(text) == normal


@pytest.mark.parametrize('text', [
    'VARCHAR', 'varchar(10select)', 'decimal(a,b)', 'enum(a,b)', "set('a',)", 'int(', 'int)x'])
def test_types_with_wrong_arguments_are_refused(text):
    with pytest.raises(DdlError):
        ddl.parse_create_table(f'CREATE TABLE d.t (c {text})', None)


@pytest.mark.parametrize('text, expected', [
    (None, ('none', None)), ('NULL', ('null', None)), ("'active'", ('literal', 'active')),
    ("'it''s'", ('literal', "it's")), ('0.00', ('literal', '0.00')), ('-1', ('literal', '-1')),
    ("b'101'", ('literal', '5')), ('TRUE', ('literal', '1')), ("_utf8mb4'FR'", ('literal', 'FR')),
    ("('x')", ('literal', 'x')), ('current_timestamp()', ('clock', 'current_timestamp')),
    ('CURRENT_TIMESTAMP', ('clock', 'current_timestamp')), ('now(3)', ('clock', 'current_timestamp(3)')),
    ('localtimestamp', ('clock', 'current_timestamp')), ('uuid()', ('expression', 'UUID()')),
    ('(1 + 2)', ('expression', '1 + 2')),
    ('(current_timestamp() + interval 1 day)', ('expression', None)),
])
def test_classify_default(text, expected):
    kind, value = ddl.classify_default(text)
    assert kind == expected[0]
    if expected[1] is not None or kind != 'expression':
        assert value == expected[1]


def test_column_definitions_from_application_ddl():
    created = ddl.parse_create_table(
        "CREATE TABLE IF NOT EXISTS s.t (id SERIAL, a INT, b VARCHAR(10) BINARY NOT NULL, "
        "c varchar(5) as (upper(b)) PERSISTENT, d INT REFERENCES s.u (id) ON DELETE CASCADE, "
        "e int unique, f TEXT CHARACTER SET latin1, UNIQUE (a, b), KEY (a), "
        "FOREIGN KEY (a) REFERENCES u (x) ON UPDATE SET NULL) ENGINE=InnoDB "
        "DEFAULT CHARSET=utf8mb4", None)
    t = created.table
    assert created.if_not_exists and created.select is None
    assert t.column('id')[1:7] == ('bigint unsigned', False, None, 'none', False, True)
    assert t.column('b').collation == 'utf8mb4_bin'
    assert (t.column('c').generated, t.column('c').stored) == ('UPPER(`b`)', True)
    assert t.column('f')[-2:] == ('latin1_swedish_ci', 'latin1')
    assert [(i.name, i.columns, i.unique) for i in t.indexes] == [
        ('id', ('id',), True), ('e', ('e',), True), ('a', ('a', 'b'), True), ('a_2', ('a',), False),
        ('d', ('d',), False)]
    assert [(f.name, f.columns, f.ref_database, f.ref_table, f.on_delete, f.on_update)
            for f in t.foreign_keys] == [
        ('t_ibfk_1', ('d',), 's', 'u', 'CASCADE', 'RESTRICT'),
        ('t_ibfk_2', ('a',), 's', 'u', 'RESTRICT', 'SET NULL')]
    assert t.primary_key == ()


def test_create_table_select_and_like_are_recognised():
    ctas = ddl.parse_create_table('CREATE TABLE a.c AS SELECT * FROM a.t', None)
    assert ctas.select == 'SELECT * FROM a.t' and ctas.table.columns == ()
    ctas = ddl.parse_create_table('CREATE TABLE a.c (x INT) ENGINE=InnoDB SELECT 1 AS y', None)
    assert ctas.select == 'SELECT 1 AS y' and ctas.table.column_names == ('x',)
    like = ddl.parse_create_table('CREATE TABLE a.c LIKE b.t', None)
    assert like.like == ('b', 't') and like.table is None
    assert ddl.parse_create_table('CREATE TABLE a.c (LIKE t)', 'a').like == ('a', 't')


def test_information_schema_equals_the_dump(mariadb_schema_shop, dump):
    """The live database the dump was made from reads back as the same model."""
    sqlalchemy = pytest.importorskip('sqlalchemy')
    engine = sqlalchemy.create_engine(mariadb_schema_shop)
    try:
        live = read_information_schema(engine, [DB])
    finally:
        engine.dispose()
    assert live.lower_case_table_names == 0
    for table in dump.tables:
        assert live.table(DB, table.name) == table, table.name
    assert live == dump


def test_trigger_writes_cover_replace_delete_and_multi_table_update():
    _, trigger, _, _ = ddl.parse_create_trigger(
        'CREATE TRIGGER t AFTER DELETE ON d.a FOR EACH ROW BEGIN '
        'REPLACE INTO log (x) VALUES (REPLACE(OLD.x, 1, 2)); DELETE FROM other.b WHERE id = 1; '
        'UPDATE c JOIN e ON c.id = e.id SET c.n = 1; '
        'INSERT INTO f VALUES (1) ON DUPLICATE KEY UPDATE n = 2; CALL p(1); END', None)
    assert trigger.writes == (('d', 'log'), ('other', 'b'), ('d', 'c'), ('d', 'e'), ('d', 'f'))
    assert trigger.calls == ('d.p',)


def test_table_default_collation_is_kept(dump):
    assert (dump.table(DB, 'orders').collation, dump.table(DB, 'orders').charset) == (
        'utf8mb4_general_ci', 'utf8mb4')


def test_object_kind_comes_from_the_first_object_word():
    schema = read_schema_text('CREATE TABLE d.t (`trigger` INT, `view` INT);\n'
                              'CREATE DEFINER=`u`@`h` TRIGGER d.tr BEFORE INSERT ON d.t '
                              'FOR EACH ROW SET NEW.`trigger` = 1;')
    assert schema.table('d', 't').column_names == ('trigger', 'view')
    assert schema.table('d', 't').triggers[0].name == 'tr'


MYSQL8_DUMP = """-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!50503 SET NAMES utf8mb4 */;
SET @MYSQLDUMP_TEMP_LOG_BIN = @@SESSION.SQL_LOG_BIN;
SET @@SESSION.SQL_LOG_BIN= 0;
SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '';
CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci */ /*!80016 DEFAULT ENCRYPTION='N' */;
USE `shop`;
DROP TABLE IF EXISTS `items`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!50503 SET character_set_client = utf8mb4 */;
CREATE TABLE `items` (
  `id` int unsigned NOT NULL AUTO_INCREMENT,
  `sku` varchar(20) COLLATE utf8mb4_bin NOT NULL,
  `token` char(36) NOT NULL DEFAULT (uuid()),
  `flag` tinyint(1) NOT NULL DEFAULT '0',
  `price` decimal(10,2) NOT NULL DEFAULT '0.00',
  `created` timestamp NULL DEFAULT CURRENT_TIMESTAMP,
  `changed` datetime(3) DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  `doubled` decimal(12,2) GENERATED ALWAYS AS ((`price` * 2)) VIRTUAL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `sku` (`sku`)
) ENGINE=InnoDB AUTO_INCREMENT=5 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci;
/*!40101 SET character_set_client = @saved_cs_client */;
DROP TABLE IF EXISTS `v_items`;
/*!50001 DROP VIEW IF EXISTS `v_items`*/;
SET @saved_cs_client     = @@character_set_client;
/*!50503 SET character_set_client = utf8mb4 */;
/*!50001 CREATE VIEW `v_items` AS SELECT 1 AS `id`*/;
SET character_set_client = @saved_cs_client;
/*!50001 DROP VIEW IF EXISTS `v_items`*/;
/*!50001 CREATE ALGORITHM=UNDEFINED */
/*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */
/*!50001 VIEW `v_items` AS select `items`.`id` AS `id` from `items` */;
SET @@SESSION.SQL_LOG_BIN = @MYSQLDUMP_TEMP_LOG_BIN;
"""


def test_a_mysql8_dump_reads_too():
    items = read_schema_text(MYSQL8_DUMP).table('shop', 'items')
    assert (items.collation, items.charset) == ('utf8mb4_0900_ai_ci', 'utf8mb4')
    assert [(c.name, c.type, c.default_kind, c.default) for c in items.columns] == [
        ('id', 'int unsigned', 'none', None), ('sku', 'varchar(20)', 'none', None),
        ('token', 'char(36)', 'expression', 'UUID()'), ('flag', 'tinyint(1)', 'literal', '0'),
        ('price', 'decimal(10,2)', 'literal', '0.00'),
        ('created', 'timestamp', 'clock', 'current_timestamp'),
        ('changed', 'datetime(3)', 'clock', 'current_timestamp(3)'),
        ('doubled', 'decimal(12,2)', 'none', None)]
    assert items.column('sku').collation == 'utf8mb4_bin'
    assert items.column('token').collation == 'utf8mb4_0900_ai_ci'
    assert items.column('changed').on_update_clock
    assert items.column('doubled').generated == '`price` * 2'
    assert items.unique_keys == (('sku',),)


def test_mysql8_information_schema_rows_read_by_mysql_rules():
    from changeflow.schema.readers import _column

    def row(name, default, nullable, type_, extra, generation=None, charset=None, collation=None):
        return ('d', 't', name, default, nullable, type_, charset, collation, extra, generation)

    assert _column(row('s', 'active', 'NO', "enum('active','x')", '', None, 'utf8mb4',
                       'utf8mb4_0900_ai_ci'), False)[2:5] == (False, 'active', 'literal')
    assert _column(row('c', 'CURRENT_TIMESTAMP', 'YES', 'timestamp',
                       'DEFAULT_GENERATED on update CURRENT_TIMESTAMP'), False)[3:6] == (
        'current_timestamp', 'clock', True)
    assert _column(row('u', 'uuid()', 'NO', 'char(36)', 'DEFAULT_GENERATED'), False)[3:5] == (
        'UUID()', 'expression')
    assert _column(row('n', None, 'YES', 'int', ''), False)[3:5] == (None, 'null')
    generated = _column(row('g', None, 'YES', 'decimal(12,2)', 'VIRTUAL GENERATED',
                            '(`price` * 2)'), False)
    assert (generated.generated, generated.stored, generated.default_kind) == (
        '`price` * 2', False, 'none')
