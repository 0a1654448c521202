"""Catch-up cycles of a Kinesis source: audit lines through a CloudWatch Logs
subscription filter into Kinesis (moto's server), the job, checkpoints
committed after the sinks; resharding between and before cycles (kinesalite)."""

import base64
import gzip
import json
import os
import time
import uuid

import apache_beam as beam
import boto3
import pytest
import sqlalchemy as sa
import yaml
from apache_beam.testing.util import assert_that, equal_to

from changeflow.config import load_config
from changeflow.io.checkpoints import CheckpointStore
from changeflow.io.kinesis import Start
from changeflow.io.kinesis_source import CommitCheckpoints, KinesisReaders, ReadKinesisToTip
from changeflow.pipelines import audit_sync
from kinesis_servers import client, create_stream, wait_active
from test_audit_sync_e2e import (
    AUDIT, dead_letter_reasons, replica_tables, snapshot_outputs, write_config)

REGION = 'us-east-1'


def archive_batches():
    """The recorded fixture's audit lines, grouped as its Kinesis records group them."""
    with open(os.path.join(AUDIT, 'kinesis.jsonl'), encoding='utf-8') as f:
        payloads = [json.loads(gzip.decompress(base64.b64decode(json.loads(line)['Data'])))
                    for line in f]
    return [[event['message'] for event in payload['logEvents']] for payload in payloads]


class CloudWatchToKinesis:
    """A log group whose subscription filter delivers to a Kinesis stream (moto's server)."""

    def __init__(self, endpoint, shards=2):
        self.stream = f'audit-{uuid.uuid4().hex[:8]}'
        self.kinesis = client(endpoint)
        self.logs = boto3.client('logs', endpoint_url=endpoint, region_name=REGION,
                                 aws_access_key_id='testing', aws_secret_access_key='testing')
        create_stream(self.kinesis, self.stream, shards)
        self.arn = self.kinesis.describe_stream_summary(StreamName=self.stream)[
            'StreamDescriptionSummary']['StreamARN']
        self.group = f'/aws/rds/instance/{self.stream}/audit'
        self.logs.create_log_group(logGroupName=self.group)
        self.logs.create_log_stream(logGroupName=self.group, logStreamName='shop-db')
        self.logs.put_subscription_filter(
            logGroupName=self.group, filterName='to-kinesis', filterPattern='',
            destinationArn=self.arn, roleArn='arn:aws:iam::123456789012:role/cwl-to-kinesis')

    def put(self, lines):
        """One put_log_events call: one Kinesis record."""
        now_ms = int(time.time() * 1000)
        self.logs.put_log_events(logGroupName=self.group, logStreamName='shop-db', logEvents=[
            {'timestamp': now_ms, 'message': line} for line in lines])

    def last_sequences(self):
        """Shard id -> the sequence number of its last record, for shards holding any."""
        last = {}
        for shard in self.kinesis.list_shards(StreamName=self.stream)['Shards']:
            iterator = self.kinesis.get_shard_iterator(
                StreamName=self.stream, ShardId=shard['ShardId'],
                ShardIteratorType='TRIM_HORIZON')['ShardIterator']
            records = self.kinesis.get_records(ShardIterator=iterator)['Records']
            if records:
                last[shard['ShardId']] = records[-1]['SequenceNumber']
        return last


def kinesis_config(directory, stream, endpoint, **source):
    """The example job (test_audit_sync_e2e's) reading ``stream``, writing under ``directory``."""
    directory.mkdir(exist_ok=True)
    path = write_config(directory, 'kinesis-jsonl', os.path.join(AUDIT, 'kinesis.jsonl'))
    with open(path, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['source'] = {'type': 'kinesis', 'stream': stream, 'region': REGION,
                     'endpoint_url': endpoint, **source}
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f, allow_unicode=True)
    return path


def run_cycle(config_path):
    """One catch-up cycle: the job, its checkpoints committed after every sink.
    Returns the counters, (namespace, name) -> value."""
    config = load_config(config_path)
    p = beam.Pipeline(options=audit_sync.pipeline_options([]))
    audit_sync.build_pipeline(p, config)
    result = p.run()
    result.wait_until_finish()
    return counters(result)


def counters(result):
    totals = {}
    for counter in result.metrics().query()['counters']:
        key = (counter.key.metric.namespace, counter.key.metric.name)
        totals[key] = totals.get(key, 0) + counter.committed
    return totals


def records_read(totals):
    return totals.get(('changeflow.read_kinesis', 'records'), 0)


def checkpoint_rows(config_path):
    """The stored checkpoint rows as they are, update times included."""
    config = load_config(config_path)
    store = CheckpointStore(config.checkpoints_url)
    try:
        with store.engine.connect() as connection:
            return sorted(map(tuple, connection.execute(sa.select(store.shards)).all()))
    finally:
        store.engine.dispose()


def stored_positions(config_path):
    config = load_config(config_path)
    store = CheckpointStore(config.checkpoints_url)
    try:
        return store.load(config.job, config.source.name).positions
    finally:
        store.engine.dispose()


NEW_LINES = [
    "20261124 21:50:00,vm,app,127.0.0.1,40,0,CONNECT,shop,,0",
    "20261124 21:50:00,vm,app,127.0.0.1,40,900,WRITE,shop,notes,",
    "20261124 21:50:00,vm,app,127.0.0.1,40,900,QUERY,shop,"
    "'INSERT INTO notes (id, body) VALUES (10, \\'after the catch-up\\')',0",
    "20261124 21:50:01,vm,app,127.0.0.1,40,901,WRITE,shop,notes,",
    "20261124 21:50:01,vm,app,127.0.0.1,40,901,QUERY,shop,"
    "'UPDATE notes SET body = \\'read once\\' WHERE id = 2',0",
]


def test_catch_up_equals_the_archive_run_and_reads_each_record_once(
        tmp_path, moto_endpoint, aws_env, expected_tables):
    source = CloudWatchToKinesis(moto_endpoint)
    batches = archive_batches()
    for lines in batches:
        source.put(lines)
    archive = write_config(tmp_path, 'kinesis-jsonl', os.path.join(AUDIT, 'kinesis.jsonl'))
    audit_sync.run(['--config', archive])
    config = kinesis_config(tmp_path / 'kinesis', source.stream, moto_endpoint)

    first = run_cycle(config)
    assert records_read(first) == len(batches)
    assert replica_tables(config) == replica_tables(archive) == expected_tables
    assert dead_letter_reasons(config) == dead_letter_reasons(archive)
    positions = stored_positions(config)
    assert {shard: p.sequence for shard, p in positions.items()} == source.last_sequences()
    assert not any(p.finished for p in positions.values())

    # Caught up: nothing read, nothing written, the checkpoints untouched.
    outputs, rows = snapshot_outputs(tmp_path / 'kinesis', config), checkpoint_rows(config)
    again = run_cycle(config)
    assert records_read(again) == 0
    assert ('changeflow.read_kinesis', 'shards_committed') not in again
    assert checkpoint_rows(config) == rows
    assert snapshot_outputs(tmp_path / 'kinesis', config) == outputs

    # New lines: only they are read.
    source.put(NEW_LINES[:3])
    source.put(NEW_LINES[3:])
    third = run_cycle(config)
    assert records_read(third) == 2
    replica = replica_tables(config)
    assert replica.pop('shop.notes') == [{'id': 2, 'body': 'read once'},
                                         {'id': 10, 'body': 'after the catch-up'}]
    assert replica == {k: v for k, v in expected_tables.items() if k != 'shop.notes'}
    assert stored_positions(config) != positions
    assert {shard: p.sequence for shard, p in stored_positions(config).items()} == (
        source.last_sequences())


def payload(*lines, stream='shop-db'):
    """A CloudWatch Logs subscription record (gzip JSON) holding ``lines``."""
    now_ms = int(time.time() * 1000)
    return gzip.compress(json.dumps({
        'messageType': 'DATA_MESSAGE', 'owner': '123456789012',
        'logGroup': '/aws/rds/instance/shop-db/audit', 'logStream': stream,
        'subscriptionFilters': ['to-kinesis'],
        'logEvents': [{'id': str(now_ms * 1000 + i), 'timestamp': now_ms, 'message': line}
                      for i, line in enumerate(lines)]}).encode())


def hash_keys(kinesis, stream):
    """Shard id -> a hash key it owns, for the open shards."""
    return {s['ShardId']: s['HashKeyRange']['StartingHashKey']
            for s in kinesis.list_shards(StreamName=stream)['Shards']
            if 'EndingSequenceNumber' not in s['SequenceNumberRange']}


def put_to(kinesis, stream, hash_key, data):
    kinesis.put_record(StreamName=stream, Data=data, PartitionKey='p', ExplicitHashKey=hash_key)


def read_cycle(stream, store_url, endpoint, start=Start(), expected=None, sinks=()):
    """A cycle of the reader alone: records' data checked against ``expected``,
    end positions committed after the pipeline's ``sinks(records)`` outputs."""
    p = beam.Pipeline(options=audit_sync.pipeline_options([]))
    read = p | ReadKinesisToTip(stream, store_url, 'job', start, REGION, endpoint,
                                reads_per_second=100)
    records = read[ReadKinesisToTip.MAIN]
    if expected is not None:
        assert_that(records | beam.Map(lambda r: r.data), equal_to(expected))
    read[ReadKinesisToTip.END] | CommitCheckpoints(
        store_url, 'job', stream, [sink(records) for sink in sinks])
    p.run().wait_until_finish()


def test_latest_is_where_the_first_cycle_started_on_every_shard(tmp_path, moto_endpoint,
                                                                aws_env):
    kinesis = client(moto_endpoint)
    name = f'latest-{uuid.uuid4().hex[:8]}'
    create_stream(kinesis, name, shards=2)
    arn = kinesis.describe_stream_summary(StreamName=name)['StreamDescriptionSummary']['StreamARN']
    first, second = sorted(hash_keys(kinesis, name).items())
    for shard, key in (first, second):
        put_to(kinesis, name, key, b'before:' + shard.encode())
    time.sleep(1.05 - time.time() % 1)   # moto reads AT_TIMESTAMP in whole seconds
    store_url = f'sqlite:///{tmp_path / "checkpoints.db"}'
    read_cycle(arn, store_url, moto_endpoint, Start('latest'), expected=[])

    # Each shard is read from the first cycle's start, whenever its first record comes.
    put_to(kinesis, name, first[1], b'after:first')
    read_cycle(arn, store_url, moto_endpoint, Start('latest'), expected=[b'after:first'])
    put_to(kinesis, name, second[1], b'later:second')
    read_cycle(arn, store_url, moto_endpoint, Start('latest'), expected=[b'later:second'])
    read_cycle(arn, store_url, moto_endpoint, Start('latest'), expected=[])
    store = CheckpointStore(store_url)
    assert set(store.load('job', name).positions) == {first[0], second[0]}   # keyed by name
    started = store.start_time_ms('job', name, now_ms=0)
    assert 0 < time.time() * 1000 - started < 60_000
    store.engine.dispose()


class _FailOnWrite(beam.DoFn):
    def process(self, element):
        raise RuntimeError('the sink is down')


def failing_sink(records):
    """A sink some shuffles downstream, as the job's are, that fails on its first write."""
    for n in range(3):
        records = (records | f'Key{n}' >> beam.Map(lambda r: (r, None))
                   | f'Shuffle{n}' >> beam.GroupByKey())
    return records | beam.ParDo(_FailOnWrite())


def test_checkpoints_wait_for_every_sink(tmp_path, moto_endpoint, aws_env):
    kinesis = client(moto_endpoint)
    name = f'gate-{uuid.uuid4().hex[:8]}'
    create_stream(kinesis, name, shards=2)
    for shard, key in hash_keys(kinesis, name).items():
        put_to(kinesis, name, key, shard.encode())
    store_url = f'sqlite:///{tmp_path / "checkpoints.db"}'
    store = CheckpointStore(store_url)
    with pytest.raises(Exception, match='the sink is down'):
        read_cycle(name, store_url, moto_endpoint, sinks=[failing_sink, lambda r: r])
    assert store.load('job', name).positions == {}
    read_cycle(name, store_url, moto_endpoint, sinks=[lambda r: r])
    assert set(store.load('job', name).positions) == set(hash_keys(kinesis, name))
    store.engine.dispose()


class Workload:
    """Autocommit statements on shop.notes, one Kinesis record each, from four
    connections; a connection's records share a partition key (one shard at a time)."""

    connections = (60, 61, 62, 63)

    def __init__(self, kinesis, stream):
        self.kinesis = kinesis
        self.stream = stream
        self.query_id = 1000
        self.second = 0
        self.rows = {}
        self.records = 0

    def statement(self, connection, sql):
        self.query_id += 1
        at = f'20261124 22:{self.second // 60:02d}:{self.second % 60:02d}'
        quoted = sql.replace("'", "\\'")
        lines = (f'{at},vm,app,127.0.0.1,{connection},{self.query_id},WRITE,shop,notes,',
                 f"{at},vm,app,127.0.0.1,{connection},{self.query_id},QUERY,shop,'{quoted}',0")
        self.kinesis.put_record(StreamName=self.stream, Data=payload(*lines),
                                PartitionKey=f'connection-{connection}')
        self.records += 1

    def phase(self, body, delete=()):
        """Each connection writes its two rows: inserted first, then updated to ``body``."""
        self.second += 1
        for n, connection in enumerate(self.connections):
            for row in (2 * n + 100, 2 * n + 101):
                if row in delete:
                    self.statement(connection, f'DELETE FROM notes WHERE id = {row}')
                    self.rows.pop(row, None)
                elif row in self.rows:
                    self.statement(connection, f"UPDATE notes SET body = '{body}' WHERE id = {row}")
                    self.rows[row] = body
                else:
                    self.statement(connection, f"INSERT INTO notes (id, body) VALUES ({row}, '{body}')")
                    self.rows[row] = body

    def expected_notes(self):
        return [{'id': 2, 'body': 'short note'}] + [
            {'id': row, 'body': body} for row, body in sorted(self.rows.items())]


def open_shards(kinesis, stream):
    return sorted(hash_keys(kinesis, stream))


def split(kinesis, stream, shard_id):
    shard = next(s for s in kinesis.list_shards(StreamName=stream)['Shards']
                 if s['ShardId'] == shard_id)
    low, high = (int(shard['HashKeyRange'][k]) for k in ('StartingHashKey', 'EndingHashKey'))
    kinesis.split_shard(StreamName=stream, ShardToSplit=shard_id,
                        NewStartingHashKey=str((low + high) // 2))
    wait_active(kinesis, stream)


def test_resharding_between_and_within_catch_ups_loses_and_repeats_nothing(
        request, tmp_path, aws_env, expected_tables):
    """The recorded fixture, then a workload while shards split and merge: a
    cycle's backlog spans three generations of shards, later cycles resume in
    the children; every record is read once and the replica is exact."""
    endpoint = request.getfixturevalue('kinesalite_endpoint')
    kinesis = client(endpoint)
    stream = f'reshard-{uuid.uuid4().hex[:8]}'
    create_stream(kinesis, stream, shards=2)
    for lines in archive_batches():
        kinesis.put_record(StreamName=stream, Data=payload(*lines), PartitionKey='shop-db')
    work = Workload(kinesis, stream)
    config = kinesis_config(tmp_path, stream, endpoint)
    read = []

    def cycle():
        read.append(records_read(run_cycle(config)))
        replica = replica_tables(config)
        assert replica.pop('shop.notes') == work.expected_notes()
        assert replica == {k: v for k, v in expected_tables.items() if k != 'shop.notes'}

    work.phase('v0')
    cycle()
    first, second = open_shards(kinesis, stream)
    split(kinesis, stream, first)                       # the backlog: parent, children, merged
    work.phase('v1')
    children = [s for s in open_shards(kinesis, stream) if s != second]
    kinesis.merge_shards(StreamName=stream, ShardToMerge=children[0],
                         AdjacentShardToMerge=children[1])
    wait_active(kinesis, stream)
    work.phase('v2')
    cycle()
    split(kinesis, stream, second)
    work.phase('v3', delete=(100, 107))
    cycle()
    cycle()                                             # caught up

    assert read[-1] == 0
    assert sum(read) == len(archive_batches()) + work.records
    listing = {s['ShardId']: s for s in kinesis.list_shards(StreamName=stream)['Shards']}
    assert len(listing) == 7
    positions = stored_positions(config)
    assert all(positions[s].finished for s in (first, second, *children))
    merged = next(s for s, d in listing.items() if d.get('AdjacentParentShardId'))
    assert set(positions[merged].parents) == set(children)


def test_the_kinesis_client_is_made_once_per_process(aws_env):
    """Each --follow cycle's read sets up anew; the boto3 client it opens is kept."""
    first, second = (KinesisReaders(REGION, 'http://127.0.0.1:1') for _ in range(2))
    first.setup()
    second.setup()
    assert first.reader()._client is second.reader()._client
    other = KinesisReaders(REGION, 'http://127.0.0.1:2')
    other.setup()
    assert other.reader()._client is not first.reader()._client
