"""End to end: the recorded MariaDB audit log, in all three archive forms, into a
replica that must equal the source tables as MariaDB held them afterwards."""

import base64
import datetime
import decimal
import gzip
import json
import os
import pathlib
import shutil

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml

from changeflow.config import load_config
from changeflow.io.dead_letter import read_dead_letters
from changeflow.pipelines import audit_sync

AUDIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'audit')
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'examples', 'shop.yaml')

# What the recorded workload must leave in the dead-letter output: the
# statements a replica cannot reproduce, and the one cut at the log limit.
EXPECTED_DEAD_LETTERS = sorted([
    ('sql_changes', 'needs-lookup'),   # INSERT INTO events ... NOW() without its key
    ('write_database', 'needs-lookup'),  # UPDATE events ... WHERE kind LIKE, events diverged
    ('sql_changes', 'needs-lookup'),   # INSERT INTO events ... SELECT
    ('sql_changes', 'needs-lookup'),   # UPDATE events SET kind = ? (prepared)
    ('sql_changes', 'truncated-statement'),  # committed, cut at the log limit: events marked
    ('sql_changes', 'schema-change'),  # ALTER TABLE customers ADD COLUMN tier: customers marked
])


def write_config(tmp_path, fmt, source, database_url=None, prefix=''):
    """The example job, pointed at ``source`` and writing under ``tmp_path``."""
    with open(EXAMPLE, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['source'] = {'type': 'archive', 'format': fmt, 'path': source}
    raw['sinks']['database']['url'] = database_url or f'sqlite:///{tmp_path / "replica.db"}'
    for spec in raw['tables'].values():
        spec.setdefault('target', None)
    for name, spec in raw['tables'].items():
        spec['target'] = prefix + (spec['target'] or name.split('.', 1)[1])
    path = tmp_path / 'job.yaml'
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding='utf-8')
    return str(path)


def plain(value):
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def replica_tables(config_path):
    config = load_config(config_path)
    engine = sa.create_engine(config.database_url)
    tables = {}
    try:
        with engine.connect() as conn:
            for spec in config.tables:
                table = sa.Table(spec.target, sa.MetaData(), autoload_with=conn)
                order = [table.c[k] for k in spec.key]
                rows = conn.execute(sa.select(table).order_by(*order)).mappings().all()
                tables[spec.source] = [{k: plain(v) for k, v in row.items()} for row in rows]
    finally:
        engine.dispose()
    return tables


def drop_tables(config_path):
    config = load_config(config_path)
    engine = sa.create_engine(config.database_url)
    with engine.begin() as conn:
        for spec in config.tables:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS {spec.target}'))
    engine.dispose()


def run_job(config_path):
    return audit_sync.run(['--config', config_path])


def dead_letter_reasons(config_path):
    config = load_config(config_path)
    return sorted((d.step, d.reason) for d in read_dead_letters(config.dead_letter_path))


@pytest.mark.parametrize('fmt, name', [
    ('kinesis-jsonl', 'kinesis.jsonl'), ('firehose', 'firehose.gz'),
    ('server-audit', 'server_audit.log')])
def test_recorded_log_replicates_exactly_into_sqlite(tmp_path, expected_tables, fmt, name):
    config = write_config(tmp_path, fmt, os.path.join(AUDIT, name))
    run_job(config)
    assert replica_tables(config) == expected_tables
    assert dead_letter_reasons(config) == EXPECTED_DEAD_LETTERS
    # Rolled-back, failed and disconnected writes reach no branch at all.
    loaded = load_config(config)
    backup = str([pq.read_table(p).to_pylist()
                  for p in pathlib.Path(loaded.parquet_path).rglob('*.parquet')])
    notified = ''.join(pathlib.Path(rule.to[len('file:'):]).read_text(encoding='utf-8')
                       for rule in loaded.notify)
    for written in (backup, notified):
        assert 'rolled@back' not in written and 'never' not in written
        assert 'lost at disconnect' not in written and 'duplicate' not in written
    # What did happen is there, one row per source op (qty = qty + 1 as it was written).
    assert 'paid, thanks' in backup and "('qty', '(`qty` + 1)')" in backup


@pytest.mark.parametrize('server', ['postgres_url', 'mariadb_url'])
def test_recorded_log_replicates_exactly_into_servers(
        request, tmp_path, expected_tables, table_prefix, server):
    url = request.getfixturevalue(server)
    config = write_config(tmp_path, 'kinesis-jsonl', os.path.join(AUDIT, 'kinesis.jsonl'),
                          database_url=url, prefix=table_prefix)
    try:
        run_job(config)
        assert replica_tables(config) == expected_tables
    finally:
        drop_tables(config)


def snapshot_outputs(tmp_path, config_path):
    """Every output file's bytes, plus the replica and its bookkeeping rows."""
    config = load_config(config_path)
    files = {}
    for root in (config.parquet_path, config.dead_letter_path,
                 *(rule.to[len('file:'):] for rule in config.notify)):
        paths = [root] if os.path.isfile(root) else [
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
        for path in paths:
            with open(path, 'rb') as f:
                files[os.path.relpath(path, tmp_path)] = f.read()
    engine = sa.create_engine(config.database_url)
    with engine.connect() as conn:
        bookkeeping = {
            name: sorted(map(tuple, conn.execute(sa.text(f'SELECT * FROM {name}')).all()))
            for name in sa.inspect(conn).get_table_names() if name.startswith('changeflow_')}
    engine.dispose()
    return files, replica_tables(config_path), bookkeeping


def test_rerunning_the_same_input_changes_nothing(tmp_path):
    config = write_config(tmp_path, 'kinesis-jsonl', os.path.join(AUDIT, 'kinesis.jsonl'))
    run_job(config)
    first = snapshot_outputs(tmp_path, config)
    assert first[0] and first[2], 'the job wrote no files or no bookkeeping'
    run_job(config)
    second = snapshot_outputs(tmp_path, config)
    assert second[1] == first[1]
    assert second[2] == first[2]
    # The sink's dead letters are not all repeated: what a later TRUNCATE made
    # stale is skipped (the WHERE ... LIKE on events, refused the first time).
    assert sorted(n for n in second[0] if 'dead-letter' not in n) == sorted(
        n for n in first[0] if 'dead-letter' not in n)
    for name, content in first[0].items():
        if 'dead-letter' in name:  # dead letters carry their rejection time
            continue
        assert second[0][name] == content, f'{name} changed on the re-run'


def kinesis_line(data: bytes, sequence: str) -> str:
    return json.dumps({'SequenceNumber': sequence, 'PartitionKey': 'p',
                       'ApproximateArrivalTimestamp': '2026-11-24T21:40:31+00:00',
                       'Data': base64.b64encode(data).decode()})


def envelope(*messages):
    return json.dumps({'messageType': 'DATA_MESSAGE', 'owner': '123456789012',
                       'logGroup': '/aws/rds/instance/shop-db/audit', 'logStream': 'shop-db',
                       'subscriptionFilters': ['f'],
                       'logEvents': [{'id': str(i), 'timestamp': 1, 'message': m}
                                     for i, m in enumerate(messages)]}).encode()


def test_poison_records_are_dead_lettered_and_good_ones_still_sync(tmp_path, expected_tables):
    good = open(os.path.join(AUDIT, 'kinesis.jsonl'), encoding='utf-8').read().splitlines()
    line = "20261124 21:40:48,vm,app,127.0.0.1,99,{qid},QUERY,shop,'{sql}',0"
    poison = {
        'bad-gzip': gzip.compress(envelope('x'))[:-9] + b'garbage!!',
        'bad-json': gzip.compress(b'{"messageType": "DATA_MESSAGE", "logEvents": [')
        ,
        'bad-utf8': gzip.compress(b'{"messageType": "DATA_MESSAGE", "message": "\xff\xfe"}'),
        'malformed-line': gzip.compress(envelope(
            "20261124 21:40:48,vm,app,127.0.0.1,99,5000,QUERY,shop,'UPDATE orders SET")),
        'unparseable-sql': gzip.compress(envelope(line.format(
            qid=5001, sql="UPDATE orders SET note = \\'a\\' WHERE tenant_id = = 1"))),
    }
    lines = good + [kinesis_line(data, f'9{i:03d}') for i, data in enumerate(poison.values())]
    source = tmp_path / 'mixed.jsonl'
    source.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    config = write_config(tmp_path, 'kinesis-jsonl', str(source))
    run_job(config)
    assert replica_tables(config) == expected_tables
    dead = {d.reason: d for d in read_dead_letters(load_config(config).dead_letter_path)}
    for reason in poison:
        assert reason in dead, f'{reason} not dead-lettered: {sorted(dead)}'
    for reason in ('bad-gzip', 'bad-json', 'bad-utf8'):
        assert dead[reason].original == poison[reason], reason
    assert dead['unparseable-sql'].original.startswith(b'20261124 21:40:48,vm,app')


def test_quickstart_example_runs_from_a_copy(tmp_path):
    """The README's example config, as shipped, runs and writes every output."""
    examples = tmp_path / 'examples'
    shutil.copytree(os.path.dirname(EXAMPLE), examples, ignore=shutil.ignore_patterns('out'))
    shutil.copytree(AUDIT, tmp_path / 'tests' / 'data' / 'audit')
    config = str(examples / 'shop.yaml')
    run_job(config)
    out = examples / 'out'
    assert (out / 'replica.db').exists()
    assert any((out / 'backup').rglob('*.parquet'))
    assert (out / 'notifications.jsonl').read_text().count('\n') >= 1
    assert any((out / 'dead-letter').iterdir())
