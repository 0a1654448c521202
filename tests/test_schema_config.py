"""Config with a schema: `schema: {file}` / `source_db: {url}`, tables by
name or pattern, keys, columns and defaults from the schema."""

import os
import shutil

import pytest

from changeflow.config import ConfigError, TableSpec, display_url, load_config, parse_config

HERE = os.path.dirname(os.path.abspath(__file__))
DUMP = os.path.join(HERE, 'data', 'schema', 'shop_dump.sql')
DB = 'cf_schema_shop'


@pytest.fixture
def base(tmp_path):
    (tmp_path / 'audit.log').write_text('')
    shutil.copy(DUMP, tmp_path / 'schema.sql')
    return tmp_path


def config(base, tables, **extra):
    raw = {'source': {'type': 'archive', 'format': 'server-audit', 'path': 'audit.log'},
           'tables': tables, 'sinks': {}, 'dead_letter': {'path': 'dead'},
           'schema': {'file': 'schema.sql'}}
    raw.update(extra)
    return parse_config(raw, str(base))


def by_source(job):
    return {spec.source: spec for spec in job.tables}


def test_a_list_of_names_takes_keys_columns_and_defaults_from_the_schema(base):
    job = config(base, [f'{DB}.orders', f'{DB}.customers'])
    orders, customers = job.tables
    assert orders.key == ('tenant_id', 'order_id') and orders.target == 'orders'
    assert orders.columns[:3] == (('tenant_id', 'int'), ('order_id', 'bigint(20) unsigned'),
                                  ('customer_id', 'int unsigned'))
    assert [c for c, _ in orders.columns] == list(orders.schema.column_names)
    assert dict(customers.columns)['status'] == "enum('active','closed')"
    assert dict(customers.defaults) == {'status': 'active', 'flags': '', 'country': 'FR',
                                        'verified': '0', 'perms': '5', 'balance': '0.00'}
    assert 'token' not in dict(customers.defaults)  # an expression: not a literal default
    assert orders.schema == job.schema.table(DB, 'orders')
    assert job.schema is not None and len(job.schema.tables) == 6


def test_a_mapping_may_override_key_target_columns_redact(base):
    job = config(base, {f'{DB}.customers': {'target': 'clients', 'redact': ['EMAIL']},
                        f'{DB}.counters': None,
                        f'{DB}.orders': {'columns': {'tenant_id': 'integer', 'order_id': 'bigint',
                                                     'note': {'type': 'text', 'default': 'x'}}},
                        f'{DB}.payments': {'key': 'ID'}})
    specs = by_source(job)
    customers = specs[f'{DB}.customers']
    assert (customers.target, customers.redact) == ('clients', ('email',))
    orders = specs[f'{DB}.orders']
    assert orders.columns == (('tenant_id', 'integer'), ('order_id', 'bigint'), ('note', 'text'))
    assert orders.defaults == (('note', 'x'),) and orders.key == ('tenant_id', 'order_id')
    assert orders.schema is not None
    assert specs[f'{DB}.payments'].key == ('id',)
    assert specs[f'{DB}.counters'].key == ('name',)


def test_patterns_expand_against_the_schema_and_explicit_names_win(base):
    job = config(base, {f'{DB}.*': {'redact': ['email']},
                        f'{DB}.orders': {'target': 'all_orders'}})
    specs = by_source(job)
    assert sorted(specs) == [f'{DB}.{t}' for t in (
        'audit_trail', 'counters', 'customers', 'order_lines', 'orders', 'payments')]
    assert specs[f'{DB}.orders'].target == 'all_orders'
    assert specs[f'{DB}.customers'].redact == ('email',)
    assert specs[f'{DB}.counters'].redact == ()
    assert [s.source for s in config(base, [f'{DB}.order*']).tables] == [
        f'{DB}.order_lines', f'{DB}.orders']
    # config order is kept: a pattern adds the tables not named elsewhere, where it stands
    assert [s.source for s in config(base, [f'{DB}.payments', f'{DB}.order*',
                                            f'{DB}.orders']).tables] == [
        f'{DB}.payments', f'{DB}.order_lines', f'{DB}.orders']


def test_lower_case_table_names_setting(base):
    with pytest.raises(ConfigError, match='missing required key'):
        config(base, ['CF_SCHEMA_SHOP.Orders'])
    job = config(base, ['CF_SCHEMA_SHOP.Orders'],
                 schema={'file': 'schema.sql', 'lower_case_table_names': 1})
    assert job.tables[0].key == ('tenant_id', 'order_id')
    assert job.schema.lower_case_table_names == 1


@pytest.mark.parametrize('tables, extra, message', [
    ([f'{DB}.nope'], {}, rf'tables.{DB}.nope: missing required key\(s\) key and is not in the schema'),
    ([f'{DB}.zz*'], {}, 'the pattern matches no table'),
    ({f'{DB}.*': {'target': 'x'}}, {}, r"unknown key\(s\) 'target'"),
    ({f'{DB}.*': {'redact': ['nope']}}, {}, 'no table it matches has a column'),
    ({f'{DB}.orders': {'key': 'nope'}}, {}, "has no column 'nope'"),
    ({f'{DB}.orders': {'redact': ['nope']}}, {}, "redact: .* has no column 'nope'"),
    ({f'{DB}.orders': {'wat': 1}}, {}, r"unknown key\(s\) 'wat'"),
    ({f'{DB}.orders': {}, f'{DB}.order_lines': {'target': 'orders'}}, {}, 'several tables'),
    ([f'{DB}.orders', f'{DB}.orders'], {}, 'named more than once'),
    ({'cf_schema_shop.orders': {}, 'CF_SCHEMA_SHOP.ORDERS': {}},
     {'schema': {'file': 'schema.sql', 'lower_case_table_names': 1}}, 'named more than once'),
    ({f'{DB}.*': {'redact': 'email'}}, {}, 'redact: expected a list'),
    ([3], {}, r'tables\[0\]: expected a database.table name'),
    ({3: {}}, {}, 'a table name as a string'),
    (['orders'], {}, 'name tables as database.table'),
    ([f'{DB}.orders'], {'schema': None}, 'a list of names needs a schema'),
    ({f'{DB}.*': {}}, {'schema': {}}, 'a pattern needs a schema'),
    ([f'{DB}.orders'], {'schema': {'file': 'missing.sql'}}, 'schema.file: .*missing.sql does not exist'),
    ([f'{DB}.orders'], {'schema': {'file': 'schema.sql', 'lower_case_table_names': 3}},
     'expected 0, 1 or 2'),
    ([f'{DB}.orders'], {'schema': {'path': 'x'}}, r"schema: unknown key\(s\) 'path'"),
    ([f'{DB}.orders'], {'source_db': {'url': 'not a url'}}, 'source_db.url: not an SQLAlchemy URL'),
    ([f'{DB}.orders'], {'source_db': {}}, r'source_db: missing required key\(s\) url'),
])
def test_errors_name_the_key(base, tables, extra, message):
    with pytest.raises(ConfigError, match=message):
        config(base, tables, **extra)


def test_a_table_without_a_primary_key_uses_a_not_null_unique_key(base):
    (base / 'schema.sql').write_text(
        'CREATE TABLE d.a (x INT NOT NULL, y INT, UNIQUE KEY (y), UNIQUE KEY (x));\n'
        'CREATE TABLE d.b (y INT, UNIQUE KEY (y));')
    assert config(base, ['d.a']).tables[0].key == ('x',)
    with pytest.raises(ConfigError, match='tables.d.b: d.b has no primary key'):
        config(base, ['d.b'])


def test_a_bad_schema_file_names_the_key(base):
    (base / 'schema.sql').write_text('CREATE TABLE d.a (x INT WOBBLE);')
    with pytest.raises(ConfigError, match=r"schema.file: .*schema.sql: .*cannot read"):
        config(base, ['d.a'])


def test_without_a_schema_nothing_changes(base):
    job = config(base, {'shop.orders': {'key': 'id'}}, schema=None)
    assert job.tables == (TableSpec('shop.orders', ('id',), 'orders'),)
    assert job.schema is None and job.source_db_url is None


def test_display_url_hides_the_password():
    assert display_url('mysql+pymysql://app:s3cret@db:3306/shop') == \
        'mysql+pymysql://app:***@db:3306/shop'
    assert display_url('not a url') == '<unparseable URL>'
    assert display_url(None) is None


def test_an_unreachable_source_db_is_a_config_error_without_the_password(base):
    url = 'mysql+pymysql://app:s3cret@127.0.0.1:1/shop?connect_timeout=2'
    with pytest.raises(ConfigError) as error:
        config(base, [f'{DB}.orders'], schema=None, source_db={'url': url})
    message = str(error.value)
    assert message.startswith('source_db.url: cannot read the schema from mysql+pymysql://app:***@')
    assert 's3cret' not in message


def test_schema_read_from_source_db_equals_the_dump(base, mariadb_schema_shop):
    job = config(base, [f'{DB}.*'], schema=None, source_db={'url': mariadb_schema_shop})
    assert job.source_db_url == mariadb_schema_shop
    assert job.schema == config(base, [f'{DB}.*']).schema
    assert [s.source for s in job.tables] == [s.source for s in config(base, [f'{DB}.*']).tables]


def test_load_config_resolves_the_schema_file_next_to_the_config(base):
    (base / 'job.yaml').write_text(
        'source: {type: archive, format: server-audit, path: audit.log}\n'
        f'schema: {{file: schema.sql}}\ntables: [{DB}.counters]\nsinks: {{}}\n'
        'dead_letter: {path: dead}\n')
    job = load_config(str(base / 'job.yaml'))
    assert job.tables[0].columns == (('name', 'varchar(30)'), ('value', 'bigint(20)'))
