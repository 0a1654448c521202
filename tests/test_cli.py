import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import apache_beam as beam
import pytest

from changeflow.cli import (RUN_DEAD_LETTERS, RUN_DONE, RUN_FAILED, RUN_SINK_UNAVAILABLE,
                            STATUS_DIVERGED, STATUS_ERROR, main)
from changeflow.config import ConfigError, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUDIT = os.path.join(ROOT, 'tests', 'data', 'audit')
EXAMPLE = os.path.join(ROOT, 'examples', 'shop.yaml')


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def example_job(tmp_path, url=None):
    """A copy of the example job under ``tmp_path``; ``url``: its replica instead of SQLite."""
    shutil.copytree(os.path.join(ROOT, 'examples'), tmp_path / 'examples',
                    ignore=shutil.ignore_patterns('out'))
    if not (tmp_path / 'tests').exists():
        shutil.copytree(AUDIT, tmp_path / 'tests' / 'data' / 'audit')
    config = tmp_path / 'examples' / 'shop.yaml'
    if url:
        config.write_text(config.read_text().replace('sqlite:///out/replica.db', url))
    return str(config)


def test_run_prints_a_summary_at_a_glance(tmp_path, capsys):
    config = example_job(tmp_path)
    code, out, _ = run_cli(['run', config], capsys)
    assert code == RUN_DONE == 0
    lines = out.splitlines()
    assert re.fullmatch(r'changeflow: job DONE in \d+\.\d s', lines[0])
    out_dir = tmp_path / 'examples' / 'out'
    assert lines[1:8] == [
        '  read          1 file: 15 records -> 101 events -> 26 statements -> 28 row changes'
        ' -> 13 rows changed',
        f'  replica       sqlite:///{out_dir}/replica.db: 15 changes -> 9 rows upserted,'
        f' 0 deleted, 2 ops already applied; 1 dead-lettered',
        f'  parquet       {out_dir}/backup: 28 rows in 9 files',  # a row per source op, a file
        # per (table, day, write shard)
        f'  notify        13 notifications to file:{out_dir}/notifications.jsonl,'
        f' file:{out_dir}/customer-changes.jsonl',
        f'  dead letters  6 in 1 file under {out_dir}/dead-letter',
        # Three refusals, the ALTER TABLE of customers, the statement cut at the log limit.
        '                sql_changes: needs-lookup 3, schema-change 1, truncated-statement 1',
        # UPDATE events ... WHERE kind LIKE: events is marked diverged (an INSERT
        # without its key), so the WHERE cannot be evaluated on the replica's rows
        '                write_database: needs-lookup 1']
    assert lines[8] == 'Diverged (changeflow status):'
    assert 'Counters:' not in out and 'changeflow.' not in out


def test_verbose_adds_every_counter_and_a_rerun_sends_nothing_twice(tmp_path, capsys):
    config = example_job(tmp_path)
    run_cli(['run', config], capsys)
    code, out, _ = run_cli(['run', config, '--verbose'], capsys)
    assert code == 0
    assert f'  notify        0 notifications to file:{tmp_path}' in out
    assert out.splitlines()[4].endswith(' (13 already sent)')
    counters = dict(line.split() for line in out.splitlines()
                    if line.startswith('  changeflow.'))
    assert counters['changeflow.sql_changes.dead_lettered'] == '5'
    assert counters['changeflow.parse_audit.dead_lettered'] == '0'
    assert counters['changeflow.dead_letters.sql_changes/needs-lookup'] == '3'
    assert out.index('Counters:') < out.index('Diverged (changeflow status):')


def test_dead_letters_exit_0_unless_asked_to_fail_on_them(tmp_path, capsys):
    config = example_job(tmp_path)
    assert run_cli(['run', config, '--fail-on-dead-letters'], capsys)[0] == RUN_DEAD_LETTERS == 4
    clean = tmp_path / 'clean.yaml'
    clean.write_text(open(config).read().replace('kinesis.jsonl', 'no-such-*.jsonl'))
    code, out, _ = run_cli(['run', str(clean), '--fail-on-dead-letters'], capsys)
    assert code == 0
    assert f'  dead letters  0 in 0 files under {tmp_path}/out/dead-letter' in out.splitlines()


def test_a_failed_job_exits_1_with_its_traceback_under_verbose(tmp_path, capsys):
    config = diverging_job(tmp_path)
    text = open(config).read().replace(  # a replica table to reflect, which does not exist
        '  shop.notes: {key: id, columns: {id: integer, body: text}}',
        '  shop.notes: {key: id, target: no_such_table}')
    with open(config, 'w') as f:
        f.write(text)
    code, out, err = run_cli(['run', config], capsys)
    assert code == RUN_FAILED == 1
    assert re.search(r"changeflow: job FAILED after \d+\.\d s: \w+: .*'no_such_table'", err)
    assert out == ''
    code, _, verbose = run_cli(['run', config, '--verbose'], capsys)
    assert code == 1
    # Beam logs the error where it happened (in a DoFn); --verbose adds the job's traceback.
    assert verbose.count('Traceback (most recent call') > err.count('Traceback (most recent call')


def test_an_error_quoting_the_url_shows_no_password(tmp_path, capsys, monkeypatch):
    from changeflow.pipelines import audit_sync
    url = 'mysql+pymysql://cf:s3cr3t@127.0.0.1:1/test'

    def failing(argv):
        raise RuntimeError(f'cannot reach {url}\nlogin cf with s3cr3t')
    monkeypatch.setattr(audit_sync, 'run', failing)
    code, out, err = run_cli(['run', diverging_job(tmp_path, url), '--verbose'], capsys)
    assert code == RUN_FAILED
    assert 'cannot reach mysql+pymysql://cf:***@127.0.0.1:1/test' in err
    assert 'login cf with ***' in err and 's3cr3t' not in out + err


def test_a_config_with_an_unparseable_url_names_the_key_not_the_password(tmp_path, capsys):
    code, _, err = run_cli(['run', diverging_job(tmp_path, 'mysql+pymysql://cf:s3cr3t@db:port/x')],
                           capsys)
    assert code == STATUS_ERROR
    assert 'sinks.database.url: not an SQLAlchemy URL' in err and 's3cr3t' not in err


def test_log_records_lose_passwords_and_beams_optional_dependency_notices(capsys):
    import logging
    from changeflow import cli
    terminal = cli._terminal()
    terminal.passwords.add('hunter2')
    try:
        logging.getLogger('changeflow.test').warning(
            'cannot reach %s as cf/%s', 'postgresql://cf:hunter2@db/x', 'hunter2')
        beam_file = os.path.join(os.path.dirname(beam.__file__), 'io', 'gcp', '__init__.py')
        for level, text in ((logging.WARNING, 'apitools not found, and bigquery ...'),
                            (logging.ERROR, 'apitools not found: a real error')):
            terminal.handle(logging.LogRecord('root', level, beam_file, 1, text, None, None))
    finally:
        terminal.passwords.discard('hunter2')
    err = capsys.readouterr().err
    assert 'cannot reach postgresql://cf:***@db/x as cf/***' in err and 'hunter2' not in err
    assert 'bigquery' not in err and 'apitools not found: a real error' in err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_an_unreachable_replica_is_given_up_while_the_other_sinks_complete(tmp_path, capsys):
    """The replica on a closed port, its URL with a password: the job gives the
    database up after three batches (not every batch with retries), writes
    Parquet and notifications as with a working replica, says the replica was
    unavailable and exits 3; no password, and no library noise, anywhere."""
    url = f'postgresql+psycopg2://cf:s3cr3t@127.0.0.1:{_closed_port()}/test'
    config = example_job(tmp_path, url)
    job = subprocess.run([sys.executable, '-m', 'changeflow', 'run', config, '--verbose'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, 'PYTHONPATH': ROOT})
    assert job.returncode == RUN_SINK_UNAVAILABLE == 3, job.stderr
    out = job.stdout
    assert ('                UNAVAILABLE: 3 batches could not reach the database, '
            '42 more not tried (dead letters: sink-unavailable)') in out.splitlines()
    counters = dict(line.split() for line in out.splitlines() if line.startswith('  changeflow.'))
    assert counters['changeflow.write_database.batch_retries'] == '9'  # 3 batches, 3 retries each
    assert counters['changeflow.dead_letters.write_database/sink-unavailable'] == '43'
    assert 'apitools' not in job.stderr
    out_dir = tmp_path / 'examples' / 'out'
    written = {path: path.read_bytes() for path in out_dir.rglob('*') if path.is_file()}
    assert not [str(path) for path, data in written.items() if b's3cr3t' in data]
    assert 's3cr3t' not in out + job.stderr and 'cf:***@127.0.0.1' in out

    shutil.move(out_dir, tmp_path / 'outage')
    with open(config) as f:  # the same job, in the same place, with a working replica
        text = f.read().replace(url, 'sqlite:///out/replica.db')
    with open(config, 'w') as f:
        f.write(text)
    assert run_cli(['run', config], capsys)[0] == 0
    expected = out_dir
    for name in ('backup', 'notifications.jsonl', 'customer-changes.jsonl'):
        ours = sorted(p for p in (tmp_path / 'outage' / name).rglob('*') if p.is_file()) or [
            tmp_path / 'outage' / name]
        theirs = sorted(p for p in (expected / name).rglob('*') if p.is_file()) or [expected / name]
        assert [p.relative_to(tmp_path / 'outage') for p in ours] == [
            p.relative_to(expected) for p in theirs]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ours, theirs)), name


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
    (('sinks', 'notify'), [{'to': 'sms:+15550100'}],
     "sinks.notify[0].to: 'sms:+15550100' is not supported"),
    (('sinks', 'notify'), [{'to': 'sns:topic'}], "sinks.notify[0]: an 'sns:' target needs a topic ARN"),
    (('sinks', 'notify'), [{'to': 'https://hooks.example.com/services/T0/SECRET', 'template': '{x}'}],
     'sinks.notify[0]: template field {x} is not one of'),
    (('sinks', 'notify'), [{'to': 'stdout', 'when': {'columns': {'status': {'into': 'x'}}}}],
     "sinks.notify[0].when.columns.status: expected 'changed'"),
    (('state',), {'url': 'nope'}, 'state.url: not an SQLAlchemy URL'),
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
