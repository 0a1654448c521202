"""Every configuration error is reported as ``bad configuration`` naming the
key, never as a traceback: table-driven, each case through the CLI."""

import copy
import datetime

import pytest
import yaml

from changeflow.cli import main
from changeflow.config import ConfigError, KinesisSourceConfig, load_config
from changeflow.io.kinesis import Start

BASE = {
    'source': {'type': 'archive', 'format': 'server-audit', 'path': 'audit.log'},
    'tables': {'shop.orders': {'key': ['id'], 'columns': {'id': 'integer', 'note': 'text',
                                                          'email': 'string'},
                               'redact': ['email']}},
    'window': {'seconds': 5},
    'sinks': {'database': {'url': 'sqlite:///out/r.db', 'batch_size': 10},
              'parquet': {'path': 'out/backup'}, 'notify': [{'to': 'file:out/n.jsonl'}]},
    'dead_letter': {'path': 'out/dl'},
    'audit': {'query_log_limit': 1024},
}
ORDERS = ('tables', 'shop.orders')

# (path to the value, the value, the key the error must name)
CASES = [
    (('sinks', 'database', 'batch_size'), 0, 'sinks.database.batch_size'),
    (('sinks', 'database', 'batch_size'), -5, 'sinks.database.batch_size'),
    (('sinks', 'database', 'batch_size'), 1.5, 'sinks.database.batch_size'),
    (('audit', 'query_log_limit'), -1, 'audit.query_log_limit'),
    (('audit', 'time_zone'), 'Mars/Olympus_Mons', 'audit.time_zone'),
    (('audit', 'server_version'), 10.11, 'audit.server_version'),
    (('audit', 'server_version'), 'ten', 'audit.server_version'),
    (('audit', 'rollback_on_timeout'), 'yes', 'audit.rollback_on_timeout'),
    (('audit', 'query_log_limit'), '1024', 'audit.query_log_limit'),
    ((*ORDERS, 'columns', 'note'), 'decimal(2,5)', 'tables.shop.orders.columns.note'),
    ((*ORDERS, 'columns', 'note'), 'decimal(66,2)', 'tables.shop.orders.columns.note'),
    ((*ORDERS, 'columns', 'note'), 'decimal(40,39)', 'tables.shop.orders.columns.note'),  # MariaDB: scale at most 38
    ((*ORDERS, 'columns', 'note'), 'decimal(0)', 'tables.shop.orders.columns.note'),
    ((*ORDERS, 'columns', 'note'), 'decimal(x)', 'tables.shop.orders.columns.note'),
    ((*ORDERS, 'columns', 'note'), 'decimal(10,2', 'tables.shop.orders.columns.note'),
    ((*ORDERS, 'columns', 'note'), 'string(20)', 'tables.shop.orders.columns.note'),
    ((*ORDERS, 'columns', 'note'), 5, 'tables.shop.orders.columns.note'),
    ((*ORDERS, 'columns', 'note'), None, 'tables.shop.orders.columns.note'),
    ((*ORDERS, 'columns', 'note'), {'type': 'text', 'default': [1, 2]},
     'tables.shop.orders.columns.note.default'),
    ((*ORDERS, 'columns', 'ID'), 'integer', 'tables.shop.orders.columns'),
    ((*ORDERS, 'columns', 7), 'integer', 'tables.shop.orders.columns'),
    (('tables', 7), {'key': ['id']}, 'tables.7'),
    (('tables', '.orders'), {'key': ['id']}, 'tables..orders'),
    (('tables', 'shop.'), {'key': ['id']}, 'tables.shop.'),
    (('tables', 'shop.x'), None, 'tables.shop.x'),
    (('tables', 'shop.other'), {'key': ['id'], 'target': 'orders'}, 'tables.shop.other.target'),
    ((*ORDERS, 'key'), ['id', 'ID'], 'tables.shop.orders.key'),
    ((*ORDERS, 'key'), [''], 'tables.shop.orders.key'),
    ((*ORDERS, 'key'), [['id']], 'tables.shop.orders.key'),
    ((*ORDERS, 'target'), '..', 'tables.shop.orders.target'),
    ((*ORDERS, 'target'), '.', 'tables.shop.orders.target'),
    ((*ORDERS, 'target'), '../escape', 'tables.shop.orders.target'),
    ((*ORDERS, 'target'), 'a/b', 'tables.shop.orders.target'),
    ((*ORDERS, 'target'), '', 'tables.shop.orders.target'),
    ((*ORDERS, 'target'), 5, 'tables.shop.orders.target'),
    ((*ORDERS, 'redact'), [1], 'tables.shop.orders.redact'),
    ((*ORDERS, 'redact'), ['nope'], 'tables.shop.orders.redact'),
    ((*ORDERS, 'redact'), 'email', 'tables.shop.orders.redact'),
    (('sinks', 'database', 'url'), 'not a url', 'sinks.database.url'),
    (('sinks', 'database', 'url'), '', 'sinks.database.url'),
    (('sinks', 'database', 'url'), '://x', 'sinks.database.url'),
    (('sinks', 'database', 'url'), 5, 'sinks.database.url'),
    (('window', 'seconds'), float('nan'), 'window.seconds'),
    (('window', 'seconds'), float('inf'), 'window.seconds'),
    (('window', 'seconds'), 0, 'window.seconds'),
    (('window', 'seconds'), True, 'window.seconds'),
    (('window',), 5, 'window'),
    (('sinks', 'notify'), [{'to': 'file:'}], 'sinks.notify[0].to'),
    (('sinks', 'notify'), [{'to': 'file: '}], 'sinks.notify[0].to'),
    (('sinks', 'notify'), [{'to': 5}], 'sinks.notify[0].to'),
    (('sinks', 'notify'), ['stdout'], 'sinks.notify[0]'),
    (('sinks', 'notify'), {'to': 'stdout'}, 'sinks.notify'),
    (('sinks', 'notify'), [{'to': 'stdout', 'when': {'op': 5}}], 'sinks.notify[0].when.op'),
    (('sinks', 'notify'), [{'to': 'stdout', 'when': {'op': [['insert']]}}],
     'sinks.notify[0].when.op'),
    (('sinks', 'notify'), [{'to': 'stdout', 'when': {'table': 5}}], 'sinks.notify[0].when.table'),
    (('sinks', 'parquet', 'path'), '', 'sinks.parquet.path'),
    (('sinks', 'parquet', 'path'), None, 'sinks.parquet.path'),
    (('sinks',), None, 'sinks'),
    (('dead_letter', 'path'), '', 'dead_letter.path'),
    (('source', 'path'), '', 'source.path'),
    (('source', 'path'), ['a'], 'source.path'),
    (('source', 'type'), ['archive'], 'source.type'),
    (('source', 'format'), ['kinesis-jsonl'], 'source.format'),
    (('source', 'format'), {'a': 1}, 'source.format'),
    (('audit', 'autocommit'), 'yes', 'audit.autocommit'),
    (('tables',), {}, 'tables'),
    (('tables',), [], 'tables'),
]


def write(tmp_path, raw):
    (tmp_path / 'audit.log').write_text('')
    path = tmp_path / 'job.yaml'
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def changed(path, value):
    raw = copy.deepcopy(BASE)
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return raw


def run_cli(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['run', str(path)])
    captured = capsys.readouterr()
    return exit_.value.code, captured.err


def test_the_base_config_is_valid(tmp_path):
    config = load_config(str(write(tmp_path, BASE)))
    assert config.tables[0].columns == (('id', 'integer'), ('note', 'text'), ('email', 'string'))


@pytest.mark.parametrize('path, value, key', CASES, ids=lambda v: repr(v)[:40])
def test_config_error_names_the_key_through_the_cli(tmp_path, capsys, path, value, key):
    config = write(tmp_path, changed(path, value))
    with pytest.raises(ConfigError) as raised:
        load_config(str(config))
    assert str(raised.value).startswith(f'{key}:'), str(raised.value)
    code, err = run_cli(config, capsys)
    assert code == 2 and err.startswith(f'changeflow: bad configuration: {key}:'), err
    assert 'Traceback' not in err and err.count('\n') == 1


@pytest.mark.parametrize('content, where', [
    (b'[1, 2]\n', 'config'),
    (b'source: [unclosed\n', 'job.yaml: not valid YAML'),
    (b'source: !!python/object:os.system {}\n', 'job.yaml: not valid YAML'),
    (b'\xff\xfe not utf-8\n', 'job.yaml: not UTF-8'),
    (b'', 'config'),
])
def test_a_file_that_is_no_config_is_named(tmp_path, capsys, content, where):
    (tmp_path / 'job.yaml').write_bytes(content)
    code, err = run_cli(tmp_path / 'job.yaml', capsys)
    assert code == 2 and where in err and 'Traceback' not in err, err


def test_decimal_types_are_normalised(tmp_path):
    raw = changed((*ORDERS, 'columns'), {'id': 'integer', 'note': 'DECIMAL( 10 )',
                                         'email': 'decimal(65, 30)'})
    config = load_config(str(write(tmp_path, raw)))
    assert dict(config.tables[0].columns) == {'id': 'integer', 'note': 'decimal(10,0)',
                                              'email': 'decimal(65,30)'}


def test_redact_is_case_insensitive_against_declared_columns(tmp_path):
    config = load_config(str(write(tmp_path, changed((*ORDERS, 'redact'), ['EMAIL']))))
    assert config.tables[0].redact == ('EMAIL',)


def test_the_command_itself_prints_one_line_and_no_traceback(tmp_path):
    import os
    import subprocess
    import sys
    config = write(tmp_path, changed(('window', 'seconds'), float('nan')))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, '-m', 'changeflow', 'run', str(config)], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PYTHONPATH': root})
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith('changeflow: bad configuration: window.seconds:')
    assert 'Traceback' not in done.stderr


@pytest.mark.parametrize('version, number', [('10.11.6', 101106), ('8.0.36', 80036),
                                             ('10.6', 100600)])
def test_the_server_version_is_numbered_as_executable_comments_number_it(
        tmp_path, version, number):
    raw = changed(('audit',), {'server_version': version, 'rollback_on_timeout': True,
                               'time_zone': 'Europe/Paris'})
    config = load_config(str(write(tmp_path, raw)))
    assert (config.server_version, config.rollback_on_timeout, config.time_zone) == (
        number, True, 'Europe/Paris')


# --- a Kinesis source and its checkpoints -------------------------------------

ARN = 'arn:aws:kinesis:eu-west-1:123456789012:stream/shop-audit'
KINESIS = {**BASE, 'source': {'type': 'kinesis', 'stream': 'shop-audit', 'region': 'eu-west-1',
                              'endpoint_url': 'http://127.0.0.1:4567', 'start': 'trim_horizon'}}

KINESIS_CASES = [
    (('source', 'stream'), 'shop audit', 'source.stream'),
    (('source', 'stream'), '', 'source.stream'),
    (('source', 'stream'), 'x' * 129, 'source.stream'),
    (('source', 'stream'), 5, 'source.stream'),
    (('source', 'region'), 'Ireland', 'source.region'),
    (('source', 'region'), 5, 'source.region'),
    (('source', 'format'), 'kinesis-jsonl', 'source.format'),
    (('source', 'format'), None, 'source.format'),
    (('source', 'endpoint_url'), '127.0.0.1:4567', 'source.endpoint_url'),
    (('source', 'endpoint_url'), 'ftp://127.0.0.1', 'source.endpoint_url'),
    (('source', 'endpoint_url'), 4567, 'source.endpoint_url'),
    (('source', 'start'), 'earliest', 'source.start'),
    (('source', 'start'), {'at_timestamp': '2026-12-01T10:00:00'}, 'source.start'),  # no zone
    (('source', 'start'), {'at_timestamp': datetime.datetime(2026, 12, 1, 10)}, 'source.start'),
    (('source', 'start'), {'at_timestamp': 'yesterday'}, 'source.start'),
    (('source', 'start'), {'at_timestamp': 1796119200}, 'source.start'),
    (('source', 'start'), {'at': '2026-12-01T10:00:00Z'}, 'source.start'),
    (('source', 'path'), 'audit.log', 'source'),
    (('source', 'stream_arn'), ARN, 'source'),                  # and stream: one of the two
    (('source',), {'type': 'kinesis'}, 'source'),
    (('source',), {'type': 'kinesis', 'stream_arn': 'arn:aws:kinesis:eu-west-1:12:stream/a'},
     'source.stream_arn'),
    (('source',), {'type': 'kinesis', 'stream_arn': 'shop-audit'}, 'source.stream_arn'),
    (('source',), {'type': 'kinesis', 'stream_arn': ARN, 'region': 'us-east-1'}, 'source.region'),
    (('source',), {'type': 'kafka', 'stream': 'shop-audit'}, 'source.type'),
    (('job',), 'shop job', 'job'),
    (('job',), '', 'job'),
    (('job',), '-shop', 'job'),
    (('job',), 'j' * 129, 'job'),
    (('job',), 5, 'job'),
    (('checkpoints',), {'url': 'not a url'}, 'checkpoints.url'),
    (('checkpoints',), {'url': 5}, 'checkpoints.url'),
    (('checkpoints',), {'path': 'c.db'}, 'checkpoints'),
    (('checkpoints',), 'sqlite:///c.db', 'checkpoints'),
]


def changed_kinesis(path, value):
    raw = copy.deepcopy(KINESIS)
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize('path, value, key', KINESIS_CASES, ids=lambda v: repr(v)[:40])
def test_kinesis_config_error_names_the_key_through_the_cli(tmp_path, capsys, path, value, key):
    config = write(tmp_path, changed_kinesis(path, value))
    with pytest.raises(ConfigError) as raised:
        load_config(str(config))
    assert str(raised.value).startswith(f'{key}:'), str(raised.value)
    code, err = run_cli(config, capsys)
    assert code == 2 and err.startswith(f'changeflow: bad configuration: {key}:'), err


def test_an_archive_source_keeps_no_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="^checkpoints: only a stream source"):
        load_config(str(write(tmp_path, changed(('checkpoints',), {'url': 'sqlite:///c.db'}))))


def test_a_kinesis_source_defaults_to_the_config_file_for_job_and_checkpoints(tmp_path):
    config = load_config(str(write(tmp_path, KINESIS)))
    assert config.source == KinesisSourceConfig(
        'kinesis', 'cloudwatch-audit', 'shop-audit', 'eu-west-1', 'http://127.0.0.1:4567',
        Start('trim_horizon'))
    assert config.job == 'job'
    assert config.checkpoints_url == f'sqlite:///{tmp_path}/job.checkpoints.db'


def test_a_kinesis_source_by_arn_with_its_own_job_and_store(tmp_path):
    raw = {**KINESIS, 'source': {'type': 'kinesis', 'stream_arn': ARN, 'format': 'cloudwatch-audit',
                                 'start': {'at_timestamp': '2026-12-01T10:00:00Z'}},
           'job': 'shop-sync', 'checkpoints': {'url': 'sqlite:///state/c.db'}}
    config = load_config(str(write(tmp_path, raw)))
    assert (config.source.stream, config.source.name, config.source.region) == (
        ARN, 'shop-audit', 'eu-west-1')
    assert config.source.start == Start('at_timestamp', 1796119200000)
    assert (config.job, config.checkpoints_url) == ('shop-sync', f'sqlite:///{tmp_path}/state/c.db')
    raw['job'] = 'other'
    del raw['checkpoints']
    assert load_config(str(write(tmp_path, raw))).checkpoints_url == (
        f'sqlite:///{tmp_path}/other.checkpoints.db')


def test_a_kinesis_source_needs_a_job_name_the_file_name_cannot_give(tmp_path):
    path = tmp_path / 'shop job.yaml'
    path.write_text(yaml.safe_dump(KINESIS))
    with pytest.raises(ConfigError, match='^job: a stream source needs a job name'):
        load_config(str(path))
    raw = {**KINESIS, 'job': 'shop'}
    path.write_text(yaml.safe_dump(raw))
    assert load_config(str(path)).job == 'shop'
