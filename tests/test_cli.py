import base64
import json
import os
import shutil

import pytest

from changeflow.cli import STATUS_DIVERGED, STATUS_ERROR, main
from changeflow.config import ConfigError, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUDIT = os.path.join(ROOT, 'tests', 'data', 'audit')
EXAMPLE = os.path.join(ROOT, 'examples', 'shop.yaml')


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_run_prints_outputs_and_counters(tmp_path, capsys):
    shutil.copytree(os.path.join(ROOT, 'examples'), tmp_path / 'examples',
                    ignore=shutil.ignore_patterns('out'))
    shutil.copytree(AUDIT, tmp_path / 'tests' / 'data' / 'audit')
    code, out, _ = run_cli(['run', str(tmp_path / 'examples' / 'shop.yaml')], capsys)
    assert code == 0
    assert 'job DONE' in out
    assert 'dead letters  ' + str(tmp_path / 'examples' / 'out' / 'dead-letter') in out
    counters = dict(line.split() for line in out.splitlines()
                    if line.startswith('  changeflow.'))
    # Three refusals, the statement cut at the log limit, and the ALTER TABLE of customers.
    assert counters['changeflow.sql_changes.dead_lettered'] == '5'
    assert counters['changeflow.parse_audit.dead_lettered'] == '0'
    # UPDATE events ... WHERE kind LIKE: events is marked diverged (an INSERT
    # without its key), so the WHERE cannot be evaluated on the replica's rows
    assert counters['changeflow.write_database.changes_dead_lettered'] == '1'


def test_run_rejects_a_bad_config_naming_the_key(tmp_path, capsys):
    config = tmp_path / 'job.yaml'
    config.write_text(open(EXAMPLE).read()
                      .replace('../tests/data/audit/', AUDIT + '/')
                      .replace('window: {seconds: 5}', 'window: {second: 5}'))
    code, _, err = run_cli(['run', str(config)], capsys)
    assert code == 2
    assert "window: unknown key(s) 'second'" in err


def first_record_line():
    with open(os.path.join(AUDIT, 'kinesis.jsonl')) as f:
        return next(line for line in f if 'H4sI' in line)


@pytest.mark.parametrize('form', ['jsonl', 'base64', 'get-records', 'raw'])
def test_inspect_reads_every_form_of_a_record(tmp_path, capsys, form):
    line = first_record_line()
    data = base64.b64decode(json.loads(line)['Data'])
    content = {'jsonl': line.encode(), 'base64': base64.b64encode(data),
               'get-records': json.dumps({'Records': [json.loads(line)]}).encode(),
               'raw': data}[form]
    path = tmp_path / 'record'
    path.write_bytes(content)
    code, out, _ = run_cli(['inspect', str(path)], capsys)
    assert code == 0
    assert 'DATA_MESSAGE' in out and 'logGroup=/aws/rds/instance/shop-db/audit' in out
    assert 'QUERY root@127.0.0.1' in out


def test_inspect_shows_row_changes_with_a_config(tmp_path, capsys):
    lines = open(os.path.join(AUDIT, 'kinesis.jsonl')).read()
    path = tmp_path / 'all.jsonl'
    path.write_text(lines)
    code, out, _ = run_cli(['inspect', str(path), '--config', EXAMPLE], capsys)
    assert code == 1  # the record with the statement cut at the log limit
    assert "change: update shop.orders key=(1, 2) set: qty=(`qty` + 1)" in out
    assert 'dead letter: truncated-statement' in out
    assert 'dead letter: needs-lookup' in out


def test_inspect_reports_undecodable_input(tmp_path, capsys):
    path = tmp_path / 'bad'
    path.write_bytes(b'\x1f\x8b\x08garbage')
    code, out, _ = run_cli(['inspect', str(path)], capsys)
    assert code == 1
    assert 'undecodable: bad-gzip' in out


MINIMAL = {
    'source': {'type': 'archive', 'format': 'server-audit', 'path': 'audit.log'},
    'tables': {'shop.orders': {'key': ['tenant_id', 'order_id']}},
    'sinks': {'database': {'url': 'sqlite:///out/r.db'}},
    'dead_letter': {'path': 'out/dl'},
}


def with_change(path, value):
    raw = json.loads(json.dumps(MINIMAL))
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return raw


def test_config_defaults_and_relative_paths(tmp_path):
    (tmp_path / 'audit.log').write_text('')
    config = parse_config(MINIMAL, str(tmp_path))
    assert config.source.path == str(tmp_path / 'audit.log')
    assert config.database_url == f'sqlite:///{tmp_path}/out/r.db'
    assert config.tables[0].target == 'orders'
    assert config.window_seconds == 5 and config.query_log_limit == 1024


def test_a_missing_source_file_is_named_but_an_empty_glob_is_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r'source.path: .*audit.log does not exist'):
        parse_config(MINIMAL, str(tmp_path))
    assert parse_config(with_change(('source', 'path'), 'logs/*.log'), str(tmp_path))


@pytest.mark.parametrize('path, value, message', [
    (('sinks', 'databse'), {}, "sinks: unknown key(s) 'databse'"),
    (('source', 'format'), 'csv', "source.format: 'csv' is not one of"),
    (('tables', 'shop.orders', 'key'), 5, 'tables.shop.orders.key: expected a column name'),
    (('tables', 'orders'), {'key': 'id'}, 'tables.orders: name tables as database.table'),
    (('tables', 'shop.orders', 'columns'), {'tenant_id': 'int4'},
     "tables.shop.orders.columns.tenant_id: unknown type 'int4'"),
    (('window',), {'seconds': -1}, 'window.seconds: must be positive'),
    (('sinks', 'notify'), [{'to': 'sns:topic'}], "sinks.notify[0].to: 'sns:topic' is not supported"),
    (('sinks', 'notify'), [{'to': 'stdout', 'when': {'op': 'create'}}],
     "sinks.notify[0].when.op: unknown op 'create'"),
    (('audit',), {'autocommit': 'yes'}, 'audit.autocommit: expected true/false'),
])
def test_config_errors_name_the_key(tmp_path, path, value, message):
    (tmp_path / 'audit.log').write_text('')
    with pytest.raises(ConfigError) as error:
        parse_config(with_change(path, value), str(tmp_path))
    assert message in str(error.value)


DIVERGING_LOG = '\n'.join(
    f"20261122 14:16:{10 + n:02d},vm,app,localhost,7,{20 + n},QUERY,shop,'{sql}',0"
    for n, sql in enumerate([
        "INSERT INTO orders (id, note, qty) VALUES "
        "(1, \\'a\\', 1), (2, \\'b\\', 2), (3, \\'c\\', 3)",
        'UPDATE orders SET note = NOW() WHERE id = 1',        # refused: row 1 marked
        "UPDATE orders SET qty = \\'lots\\' WHERE id = 2",     # the sink refuses: row 2 marked
        "UPDATE notes SET body = \\'x\\' WHERE body = \\'y\\' LIMIT 1",  # the table marked
        "INSERT INTO orders (id, note) VALUES (4, \\'d\\')",
    ])) + '\n'


def diverging_job(tmp_path, url='sqlite:///out/replica.db'):
    (tmp_path / 'audit.log').write_text(DIVERGING_LOG)
    config = tmp_path / 'job.yaml'
    config.write_text(f"""
source: {{type: archive, format: server-audit, path: audit.log}}
tables:
  shop.orders: {{key: id, columns: {{id: integer, note: text, qty: integer}}}}
  shop.notes: {{key: id, columns: {{id: integer, body: text}}}}
sinks:
  database: {{url: "{url}"}}
dead_letter: {{path: out/dead-letter}}
""")
    return str(config)


def test_status_and_the_run_summary_list_diverged_tables_and_rows(tmp_path, capsys):
    config = diverging_job(tmp_path)
    code, out, _ = run_cli(['status', config], capsys)
    assert (code, out.splitlines()[-1]) == (0, '  nothing diverged')  # no replica yet
    code, out, _ = run_cli(['run', config], capsys)
    assert code == 0
    listed = ['  table notes: whole table, needs-lookup at version ',
              '  table orders: 2 row(s) diverged (bad-value 1, needs-lookup 1)']
    summary = out[out.index('Diverged (changeflow status):'):].splitlines()[1:]
    assert [line[:len(want)] for line, want in zip(summary, listed)] == listed
    code, out, _ = run_cli(['status', config], capsys)
    assert code == STATUS_DIVERGED == 1
    assert out.splitlines()[1:] == summary
    assert out.splitlines()[0] == f'changeflow: replica sqlite:///{tmp_path}/out/replica.db'


def test_status_never_prints_a_password_and_reports_errors(tmp_path, capsys):
    config = diverging_job(tmp_path, 'mysql+pymysql://cf:s3cr3t@127.0.0.1:1/test')
    code, out, err = run_cli(['status', config], capsys)
    assert code == STATUS_ERROR == 2
    assert 'cannot read the replica mysql+pymysql://cf:***@127.0.0.1:1/test' in err
    assert 's3cr3t' not in out + err
    without_database = tmp_path / 'no-db.yaml'
    without_database.write_text(open(config).read().replace(
        "  database: {url: \"mysql+pymysql://cf:s3cr3t@127.0.0.1:1/test\"}\n",
        '  parquet: {path: out/backup}\n'))
    code, _, err = run_cli(['status', str(without_database)], capsys)
    assert code == STATUS_ERROR and 'no database sink' in err
