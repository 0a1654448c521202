"""The DynamoDB job reading live: catch-up cycles of a table's stream on moto's
server (``source: {type: dynamodb}``) into a replica that must equal a final
scan, a second cycle that reads and changes nothing, later writes that
converge again, export seeding followed by the live stream, DynamoDB's Kinesis
streaming destination read live, and a checkpoint past the trim horizon that
fails the run loudly."""

import base64
import json
import time
import uuid

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError

from changeflow import cli
from changeflow.config import ConfigError, DynamoDBStreamSource, load_config
from changeflow.io import dynamodb_streams
from changeflow.io.checkpoints import CheckpointStore
from changeflow.io.dead_letter import read_dead_letters
from changeflow.io.kinesis import Start
from test_dynamodb_sync import (
    COLUMNS, KEY, bookkeeping, create_table, expected_row, key, kinesis_destination_lines,
    replica, run_job, scan, stream_lines, tree, write_export, write_workload)

REGION = 'us-east-1'


@pytest.fixture
def table(moto_endpoint):
    return create_table(moto_endpoint)


def live_job(tmp_path, name, database_url, target, endpoint, seed=None, **source):
    raw = {'source': {'type': 'dynamodb', 'table': name, 'region': REGION,
                      'endpoint_url': endpoint, **source},
           'job': 'cards-sync',
           'tables': {name: {'key': KEY, 'target': target, 'columns': COLUMNS}},
           'sinks': {'database': {'url': database_url}, 'parquet': {'path': 'out/backup'},
                     'notify': [{'to': 'file:out/notifications.jsonl'}]},
           'dead_letter': {'path': 'out/dead-letter'}}
    if seed is not None:
        raw['seed'] = seed
    path = tmp_path / 'job.yaml'
    path.write_text(yaml.safe_dump(raw), encoding='utf-8')
    return str(path)


def outputs(tmp_path, database_url, target):
    """Everything a cycle may change: replica rows, their versions, the backup, the notifications."""
    notes = tmp_path / 'out' / 'notifications.jsonl'
    return (replica(database_url, target), bookkeeping(database_url, target),
            tree(tmp_path / 'out' / 'backup'), notes.read_bytes() if notes.exists() else b'')


def read_counter(counters, name):
    return counters.get(f'changeflow.read_dynamodb_streams.{name}', 0)


def positions(config_path):
    config = load_config(config_path)
    store = CheckpointStore(config.checkpoints_url)
    try:
        return store.load(config.job, config.source.name).positions
    finally:
        store.engine.dispose()


def write_more(ddb, name):
    """After write_workload: an update, a delete, a transaction (put, delete): 4 records."""
    ddb.update_item(TableName=name, Key=key(2), UpdateExpression='SET qty = :q',
                    ExpressionAttributeValues={':q': {'N': '50'}})
    ddb.delete_item(TableName=name, Key=key(6))
    ddb.transact_write_items(TransactItems=[
        {'Put': {'TableName': name, 'Item': {**key(7), 'note': {'S': 'seven'}}}},
        {'Delete': {'TableName': name, 'Key': key(1)}}])


def test_catch_up_cycles_equal_a_scan_read_nothing_twice_and_converge_again(
        table, tmp_path, database_url, table_prefix, aws_env, capsys):
    name, ddb, streams = table
    write_workload(ddb, name)          # put, update, transact (put, update, delete), delete, ...
    target = f'{table_prefix}cards'
    config = live_job(tmp_path, name, database_url, target, aws_env)

    with pytest.raises(SystemExit) as exit_:
        cli.main(['run', config])
    assert exit_.value.code == 0
    read_line = next(line for line in capsys.readouterr().out.splitlines()
                     if line.strip().startswith('read'))
    assert read_line.split(None, 1)[1] == (
        f'{name}: 1 shard: 12 records -> 12 stream records -> 11 changes -> 6 rows changed '
        f'(1 no-op MODIFY dropped)')
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert sorted(expected) == [(1, 'card 1'), (2, 'card 2'), (6, 'card 6')]
    assert replica(database_url, target) == expected
    [(shard, position)] = positions(config).items()
    assert not position.finished and position.sequence == stream_sequences(ddb, streams, name)[-1]

    # A second cycle: nothing new on the stream, nothing read, nothing changed.
    state = outputs(tmp_path, database_url, target)
    counters = run_job(config)
    assert read_counter(counters, 'records') == 0
    assert counters.get('changeflow.read_dynamodb_streams.shards_committed', 0) == 0
    assert outputs(tmp_path, database_url, target) == state

    # More writes: the next cycle reads exactly them and converges again.
    write_more(ddb, name)
    counters = run_job(config)
    assert read_counter(counters, 'records') == 4
    assert counters['changeflow.read_dynamodb_streams.shards_committed'] == 1
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert sorted(expected) == [(2, 'card 2'), (7, 'card 7')]
    assert replica(database_url, target) == expected
    assert positions(config)[shard].sequence == stream_sequences(ddb, streams, name)[-1]
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []


def stream_sequences(ddb, streams, name):
    return sorted((json.loads(line)['dynamodb']['SequenceNumber']
                   for line in stream_lines(ddb, streams, name)), key=int)


class _TrimmedAfterCheckpoint:
    """A streams client whose records before the trim horizon are gone: an
    iterator after a checkpoint fails as AWS's does 24 hours on."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def get_shard_iterator(self, **kwargs):
        if kwargs.get('ShardIteratorType') == 'AFTER_SEQUENCE_NUMBER':
            raise ClientError({'Error': {'Code': 'TrimmedDataAccessException',
                                         'Message': 'trimmed'}}, 'GetShardIterator')
        return self._client.get_shard_iterator(**kwargs)


def test_a_checkpoint_past_the_trim_horizon_fails_the_run_and_names_shard_and_sequence(
        table, tmp_path, sqlite_url, aws_env, capsys, monkeypatch):
    name, ddb, streams = table
    ddb.put_item(TableName=name, Item={**key(1), 'qty': {'N': '1'}})
    config = live_job(tmp_path, name, sqlite_url, 'cards', aws_env)
    run_job(config)
    [(shard, position)] = positions(config).items()
    ddb.put_item(TableName=name, Item={**key(2), 'qty': {'N': '2'}})
    state = outputs(tmp_path, sqlite_url, 'cards')

    real = dynamodb_streams.streams_client
    monkeypatch.setattr(dynamodb_streams, 'streams_client',
                        lambda *a, **kw: _TrimmedAfterCheckpoint(real(*a, **kw)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(['run', config])
    assert exit_.value.code == cli.RUN_FAILED
    err = capsys.readouterr().err
    assert 'job FAILED' in err and 'TrimmedData' in err, err
    assert shard in err and position.sequence in err and 'lost unread' in err
    assert positions(config) == {shard: position}           # nothing skipped past
    assert outputs(tmp_path, sqlite_url, 'cards') == state


def test_seeding_from_an_export_then_following_the_live_stream_converges(
        table, tmp_path, sqlite_url, aws_env):
    name, ddb, streams = table
    for i in (1, 2, 3, 4):
        ddb.put_item(TableName=name, Item={**key(i), 'qty': {'N': str(i)}})
    time.sleep(1.1)                 # the export's second holds none of those writes
    export = write_export(str(tmp_path / 'exports'), name, ddb.scan(TableName=name)['Items'],
                          time.time())
    ddb.update_item(TableName=name, Key=key(2), UpdateExpression='SET qty = :q',
                    ExpressionAttributeValues={':q': {'N': '20'}})
    ddb.delete_item(TableName=name, Key=key(3))
    ddb.transact_write_items(TransactItems=[
        {'Put': {'TableName': name, 'Item': {**key(5), 'qty': {'N': '5'}}}},
        {'Delete': {'TableName': name, 'Key': key(4)}}])
    config = live_job(tmp_path, name, sqlite_url, 'cards', aws_env, seed={'export': export})
    counters = run_job(config)
    assert counters['changeflow.dynamodb.export_items'] == 4
    assert read_counter(counters, 'records') == 8   # the whole stream, older records included
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert sorted(expected) == [(1, 'card 1'), (2, 'card 2'), (5, 'card 5')]
    assert replica(sqlite_url, 'cards') == expected
    # Only the stream's changes after the export are notified, each once.
    notified = [json.loads(line) for line in
                (tmp_path / 'out' / 'notifications.jsonl').read_text().splitlines()]
    assert sorted((n['key'][0], n['op']) for n in notified) == [
        (2, 'replace'), (3, 'delete'), (4, 'delete'), (5, 'replace')]
    ddb.put_item(TableName=name, Item={**key(6), 'qty': {'N': '6'}})
    counters = run_job(config)                      # the seed again, the stream from its checkpoint
    assert read_counter(counters, 'records') == 1
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert replica(sqlite_url, 'cards') == expected
    assert len((tmp_path / 'out' / 'notifications.jsonl').read_text().splitlines()) == 5


def kinesis_destination(ddb, streams, name) -> str:
    """A Kinesis stream holding the table's stream records as DynamoDB's
    Kinesis streaming destination puts them; its name."""
    kinesis = boto3.client('kinesis', region_name=REGION)
    stream = f'ddb-{uuid.uuid4().hex[:8]}'
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    for line in kinesis_destination_lines(stream_lines(ddb, streams, name)):
        kinesis.put_record(StreamName=stream, Data=base64.b64decode(json.loads(line)['Data']),
                           PartitionKey='k')
    return stream


def destination_job(config, stream, endpoint):
    """The job at ``config`` reading the Kinesis destination ``stream`` instead."""
    with open(config, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['source'] = {'type': 'kinesis', 'format': 'dynamodb-kinesis', 'stream': stream,
                     'region': REGION, 'endpoint_url': endpoint}
    with open(config, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f)
    return config


def test_the_kinesis_streaming_destination_read_live_gives_the_same_replica(
        table, tmp_path, sqlite_url, aws_env):
    """moto's DynamoDB cannot stream to Kinesis (HTTP 500): its stream records go
    to a Kinesis stream in the destination's shape, as DynamoDB would put them."""
    name, ddb, streams = table
    write_workload(ddb, name)
    config = destination_job(live_job(tmp_path, name, sqlite_url, 'cards', aws_env),
                             kinesis_destination(ddb, streams, name), aws_env)
    counters = run_job(config)
    assert counters['changeflow.read_kinesis.records'] == 12
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert replica(sqlite_url, 'cards') == expected
    assert run_job(config).get('changeflow.read_kinesis.records', 0) == 0
    assert replica(sqlite_url, 'cards') == expected


def config_of(tmp_path, **source):
    raw = {'source': {'type': 'dynamodb', **source},
           'tables': {'prod-Card': {'key': ['id']}},
           'sinks': {'database': {'url': 'sqlite:///r.db'}}, 'dead_letter': {'path': 'dl'}}
    path = tmp_path / 'cards.yaml'
    path.write_text(yaml.safe_dump(raw), encoding='utf-8')
    return load_config(str(path))


def test_config_of_a_live_dynamodb_source(tmp_path):
    config = config_of(tmp_path, table='prod-Card', start='latest')
    assert config.source == DynamoDBStreamSource('dynamodb', 'prod-Card', 'prod-Card', None,
                                                 None, Start('latest'))
    assert (config.job, config.checkpoints_url) == (
        'cards', f'sqlite:///{tmp_path}/cards.checkpoints.db')
    arn = 'arn:aws:dynamodb:eu-west-1:123456789012:table/prod-Card/stream/2026-12-01T10:00:00.000'
    config = config_of(tmp_path, stream_arn=arn)
    assert (config.source.stream, config.source.name, config.source.region) == (
        arn, 'prod-Card', 'eu-west-1')


@pytest.mark.parametrize('source, words', [
    ({}, 'by table'),
    ({'table': 'prod-Card', 'stream_arn': 'arn:x'}, 'one of the two'),
    ({'table': 'other-table'}, 'not among tables'),
    ({'table': 'prod-Card', 'start': {'at_timestamp': '2026-12-01T10:00:00Z'}}, 'no AT_TIMESTAMP'),
    ({'stream_arn': 'arn:aws:kinesis:eu-west-1:123456789012:stream/x'}, 'not a DynamoDB stream'),
    ({'table': 'prod-Card', 'region': 'nowhere'}, 'source.region'),
])
def test_config_errors_of_a_live_dynamodb_source(tmp_path, source, words):
    with pytest.raises(ConfigError, match=words):
        config_of(tmp_path, **source)


class _WritesBetweenCycles:
    """The follower's status output; after the first cycle's line it makes
    more writes, so the second cycle has new records to read."""

    def __init__(self, write):
        self.lines, self._write = [], write

    def write(self, text):
        if text.strip():
            self.lines.append(text)
            if len(self.lines) == 1:
                self._write()

    def flush(self):
        pass


def test_following_a_table_stream_reads_each_cycle_s_new_records_once(
        table, tmp_path, sqlite_url, aws_env):
    from changeflow.pipelines import audit_sync, dynamodb_sync, follow
    name, ddb, streams = table
    write_workload(ddb, name)
    config_path = live_job(tmp_path, name, sqlite_url, 'cards', aws_env)
    config = load_config(config_path)

    def more_writes():
        ddb.update_item(TableName=name, Key=key(2), UpdateExpression='SET qty = :q',
                        ExpressionAttributeValues={':q': {'N': '70'}})
        ddb.delete_item(TableName=name, Key=key(6))

    out = _WritesBetweenCycles(more_writes)
    follower = follow.Follower(
        config, audit_sync.pipeline_options([]), dynamodb_sync.build_pipeline, poll_seconds=0,
        status_seconds=0, out=out, max_cycles=3,
        read_namespace=dynamodb_sync.read_namespace(config))
    ended = follower.run()
    assert (ended.ended, ended.cycles) == (follow.STOPPED, 3)
    assert read_counter(ended.totals, 'records') == 12 + 2   # each record read once
    assert ended.totals['changeflow.read_dynamodb_streams.checkpoints_committed'] == 2
    assert 'cycle 1,' in out.lines[0] and 'checkpoint none yet' not in out.lines[0]
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert replica(sqlite_url, 'cards') == expected
    assert positions(config_path)  # committed where the cycles got to
