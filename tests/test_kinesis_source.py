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
from changeflow.io.kinesis_source import CommitCheckpoints, ReadKinesisToTip
from changeflow.io.shards import ShardPosition
from changeflow.pipelines import audit_sync
from changeflow.transforms.route import DATABASE, NOTIFY, PARQUET
from kinesis_servers import client, create_stream, kinesalite_endpoint, wait_active  # noqa: F401
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


def run_cycle(config_path, sinks=(DATABASE, PARQUET, NOTIFY)):
    """One catch-up cycle: the job, and its checkpoints committed after ``sinks``.
    Returns the counters, (namespace, name) -> value."""
    config = load_config(config_path)
    p = beam.Pipeline(options=audit_sync.pipeline_options([]))
    outputs = audit_sync.build_pipeline(p, config)
    # build_pipeline does not return the reader's end positions yet: take them from the graph.
    read = next(t for t in p.transforms_stack[0].parts if t.full_label == 'ReadKinesis')
    (read.outputs[ReadKinesisToTip.END]
     | CommitCheckpoints(config.checkpoints_url, config.job, config.source.stream,
                         [outputs[name] for name in sinks if name in outputs]))
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
