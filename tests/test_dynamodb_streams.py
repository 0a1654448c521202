"""The DynamoDB Streams reader against moto's server; faults through wrapper clients."""

import json
import uuid

import pytest

from changeflow.dynamodb.records import EventName, decode_source_record, to_change
from changeflow.io.dynamodb_streams import (
    DynamoDBStreamReader, TrimmedData, latest_stream_arn, record_json)
from changeflow.io.kinesis import Backoff, ReadError, Start
from changeflow.io.shards import ShardPosition
from kinesis_servers import Recording, error
from test_dynamodb_sync import clients, create_table


def raise_times(code, times):
    left = [times]

    def hook(kwargs):
        if left[0]:
            left[0] -= 1
            raise error(code)
    return hook


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def table(moto_endpoint):
    return create_table(moto_endpoint)


def key(i):
    return {'id': {'N': str(i)}, 'title': {'S': f't{i}'}}


def write_workload(ddb, name):
    """put, update, transact (put + update + delete), delete: 7 stream records."""
    ddb.put_item(TableName=name, Item={**key(1), 'qty': {'N': '1'}, 'tags': {'SS': ['a']}})
    ddb.put_item(TableName=name, Item={**key(2), 'qty': {'N': '5'}})
    ddb.update_item(TableName=name, Key=key(1), UpdateExpression='SET qty = qty + :one',
                    ExpressionAttributeValues={':one': {'N': '1'}})
    ddb.transact_write_items(TransactItems=[
        {'Put': {'TableName': name, 'Item': {**key(3), 'm': {'M': {'x': {'L': [{'N': '0.5'}]}}}}}},
        {'Update': {'TableName': name, 'Key': key(1), 'UpdateExpression': 'REMOVE tags'}},
        {'Delete': {'TableName': name, 'Key': key(2)}}])
    ddb.delete_item(TableName=name, Key=key(3))


def read(reader, arn, positions, start=Start()):
    batches = list(reader.read_to_tip(arn, positions, start))
    for b in batches:
        positions[b.shard_id] = b.position
    return [r for b in batches for r in b.records], batches


def replay(records, key_names=('id', 'title')):
    """The table a replica holds after applying the records' changes in version order."""
    state = {}
    decoded = [r for s in records for r in decode_source_record(s)]
    for record in sorted(decoded, key=lambda r: r.version):
        change = to_change(record, key_names)
        if change is None:
            continue
        [op] = change.ops
        if op.kind.value == 'delete':
            state.pop(change.key, None)
        else:
            state[change.key] = dict(op.values)
    return decoded, state


def scan(ddb, name):
    from changeflow.dynamodb.records import item, json_ready
    rows = {}
    for raw in ddb.scan(TableName=name)['Items']:
        image = item(raw)
        rows[(int(image.get('id')), image.get('title'))] = {n: json_ready(v) for n, v in image}
    return rows


def test_reads_every_write_to_the_tip_and_equals_a_scan(table):
    name, ddb, streams = table
    arn = latest_stream_arn(ddb, name)
    assert arn.startswith(f'arn:aws:dynamodb:us-east-1:123456789012:table/{name}/stream/')
    write_workload(ddb, name)
    reader = DynamoDBStreamReader(streams, limit=2, reads_per_second=1000)
    positions = {}
    records, batches = read(reader, arn, positions)
    assert all(len(b.records) <= 2 for b in batches)
    decoded, state = replay(records)
    assert [r.event for r in decoded] == [EventName.INSERT, EventName.INSERT, EventName.MODIFY,
                                          EventName.INSERT, EventName.MODIFY, EventName.REMOVE,
                                          EventName.REMOVE]
    assert {r.table for r in decoded} == {name}
    assert state == scan(ddb, name) and len(state) == 1
    first = records[0]
    assert first.source.startswith(f'{name}/stream/') and first.shard.startswith('shardId-')
    assert first.arrival_ms > 1_700_000_000_000
    [(shard, position)] = positions.items()
    assert position.sequence == records[-1].sequence and not position.finished
    assert reader.lag == {shard: None}


def test_resumes_after_the_checkpoint_and_reads_only_new_records(table):
    name, ddb, streams = table
    arn = latest_stream_arn(ddb, name)
    ddb.put_item(TableName=name, Item=key(1))
    positions = {}
    first, _ = read(DynamoDBStreamReader(streams, reads_per_second=1000), arn, positions)
    assert len(first) == 1
    assert read(DynamoDBStreamReader(streams, reads_per_second=1000), arn, positions)[0] == []
    ddb.put_item(TableName=name, Item={**key(1), 'qty': {'N': '2'}})
    ddb.delete_item(TableName=name, Key=key(1))
    recording = Recording(streams)
    again, _ = read(DynamoDBStreamReader(recording, reads_per_second=1000), arn, positions)
    assert [r.sequence for r in again] == [str(int(first[0].sequence) + n) for n in (1, 2)]
    [iterator] = recording.named('get_shard_iterator')
    assert iterator['ShardIteratorType'] == 'AFTER_SEQUENCE_NUMBER'
    assert iterator['SequenceNumber'] == first[0].sequence


def test_latest_and_resolved_latest(table):
    name, ddb, streams = table
    arn = latest_stream_arn(ddb, name)
    ddb.put_item(TableName=name, Item=key(1))
    reader = DynamoDBStreamReader(streams, reads_per_second=1000)
    assert read(reader, arn, {}, Start('latest'))[0] == []
    # Resolved once (and persisted), 'latest' keeps its point across cycles:
    # records created in that second or after are read, earlier ones are not.
    import time
    time.sleep(1.1)
    start = Start('latest').resolved(int(time.time() * 1000))
    ddb.put_item(TableName=name, Item=key(2))
    records, _ = read(reader, arn, {}, start)
    assert [r.event.value + str(r.keys.get('id')) for s in records
            for r in decode_source_record(s)] == ['INSERT2']


def test_describe_stream_is_paged_and_its_rate_limit_backed_off():
    class Listing:
        def __init__(self, n):
            self.shards = [{'ShardId': f'shardId-{i:020d}-abcdef{i:02d}',
                            'SequenceNumberRange': {'StartingSequenceNumber': str(100 + i)}}
                           for i in range(n)]

        def describe_stream(self, StreamArn, Limit=100, ExclusiveStartShardId=None):
            ids = [s['ShardId'] for s in self.shards]
            start = ids.index(ExclusiveStartShardId) + 1 if ExclusiveStartShardId else 0
            page = self.shards[start:start + Limit]
            description = {'StreamArn': StreamArn, 'Shards': page}
            if start + Limit < len(self.shards):
                description['LastEvaluatedShardId'] = page[-1]['ShardId']
            return {'StreamDescription': description}

    clock = Clock()
    client = Recording(Listing(7), describe_stream=raise_times('LimitExceededException', 2))
    reader = DynamoDBStreamReader(client, page_size=3, clock=clock, sleep=clock.sleep)
    shards = reader.list_shards('arn:aws:dynamodb:us-east-1:1:table/t/stream/x')
    assert [s['ShardId'] for s in shards] == [s['ShardId'] for s in Listing(7).shards]
    starts = [kw.get('ExclusiveStartShardId') for kw in client.named('describe_stream')]
    assert starts == [None, None, None, shards[2]['ShardId'], shards[5]['ShardId']]
    assert reader.throttled == 2 and clock.now > 0


def test_get_records_throttling_is_backed_off(table):
    name, ddb, streams = table
    arn = latest_stream_arn(ddb, name)
    write_workload(ddb, name)
    clock = Clock()
    client = Recording(streams, get_records=raise_times('LimitExceededException', 3))
    reader = DynamoDBStreamReader(client, clock=clock, sleep=clock.sleep,
                                  backoff=Backoff(base_s=1, cap_s=4))
    records, _ = read(reader, arn, {})
    assert len(records) == 7 and reader.throttled == 3 and clock.now > 0
    stubborn = Recording(streams, get_records=raise_times('LimitExceededException', 100))
    with pytest.raises(ReadError, match='throttled'):
        read(DynamoDBStreamReader(stubborn, clock=clock, sleep=clock.sleep,
                                  backoff=Backoff(max_attempts=4)), arn, {})


def test_an_expired_iterator_is_renewed_after_the_last_record(table):
    name, ddb, streams = table
    arn = latest_stream_arn(ddb, name)
    write_workload(ddb, name)
    calls = [0]

    def expire_second(kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise error('ExpiredIteratorException')
    client = Recording(streams, get_records=expire_second)
    reader = DynamoDBStreamReader(client, limit=3, reads_per_second=1000)
    records, _ = read(reader, arn, {})
    assert len(records) == 7 and len({r.sequence for r in records}) == 7 and reader.renewed == 1
    renewal = client.named('get_shard_iterator')[1]
    assert renewal == {'StreamArn': arn, 'ShardId': records[0].shard,
                       'ShardIteratorType': 'AFTER_SEQUENCE_NUMBER',
                       'SequenceNumber': records[2].sequence}


@pytest.mark.parametrize('call', ['get_shard_iterator', 'get_records'])
def test_a_checkpoint_past_the_trim_horizon_is_data_loss(table, call):
    name, ddb, streams = table
    arn = latest_stream_arn(ddb, name)
    write_workload(ddb, name)
    positions = {}
    records, _ = read(DynamoDBStreamReader(streams, reads_per_second=1000), arn, positions)
    client = Recording(streams, **{call: raise_times('TrimmedDataAccessException', 1)})
    with pytest.raises(TrimmedData) as e:
        read(DynamoDBStreamReader(client, reads_per_second=1000), arn, positions)
    assert e.value.shard_id == records[-1].shard and e.value.sequence == records[-1].sequence
    assert records[-1].shard in str(e.value) and records[-1].sequence in str(e.value)


def test_a_stream_without_its_table_stream_is_refused(moto_endpoint):
    ddb, _ = clients(moto_endpoint)
    name = f'plain-{uuid.uuid4().hex[:6]}'
    ddb.create_table(TableName=name, BillingMode='PAY_PER_REQUEST',
                     KeySchema=[{'AttributeName': 'id', 'KeyType': 'HASH'}],
                     AttributeDefinitions=[{'AttributeName': 'id', 'AttributeType': 'S'}])
    with pytest.raises(ValueError, match='no stream enabled'):
        latest_stream_arn(ddb, name)


def test_children_are_read_after_their_closed_parent():
    """Lineage through the shared core: a closed parent is drained before its child."""
    arn = 'arn:aws:dynamodb:us-east-1:1:table/prod-Card/stream/x'

    def rec(seq, i):
        return {'eventName': 'INSERT', 'eventID': seq,
                'dynamodb': {'SequenceNumber': seq, 'Keys': key(i), 'NewImage': key(i),
                             'StreamViewType': 'NEW_AND_OLD_IMAGES',
                             'ApproximateCreationDateTime': 1796119200 + int(seq) / 1000}}

    class Lineage:
        shards = [{'ShardId': 'child', 'ParentShardId': 'parent',
                   'SequenceNumberRange': {'StartingSequenceNumber': '20'}},
                  {'ShardId': 'parent', 'SequenceNumberRange': {
                      'StartingSequenceNumber': '10', 'EndingSequenceNumber': '11'}}]
        data = {'parent': [rec('10', 1), rec('11', 1)], 'child': [rec('20', 1)]}

        def describe_stream(self, StreamArn, **kw):
            return {'StreamDescription': {'Shards': self.shards}}

        def get_shard_iterator(self, StreamArn, ShardId, ShardIteratorType, **kw):
            return {'ShardIterator': f'{ShardId}:0'}

        def get_records(self, ShardIterator, Limit):
            shard, at = ShardIterator.split(':')
            records = self.data[shard][int(at):int(at) + Limit]
            end = int(at) + len(records)
            closed = shard == 'parent' and end == len(self.data[shard])
            return {'Records': records, 'NextShardIterator': None if closed else f'{shard}:{end}'}

    reader = DynamoDBStreamReader(Lineage(), limit=1, reads_per_second=1000)
    positions = {}
    records, _ = read(reader, arn, positions)
    assert [(r.shard, r.sequence) for r in records] == [('parent', '10'), ('parent', '11'),
                                                        ('child', '20')]
    assert positions['parent'] == ShardPosition('11', True, ()) and not positions['child'].finished


def test_record_json_is_the_lambda_shape():
    import datetime
    raw = {'eventID': 'e', 'eventName': 'INSERT', 'SequenceNumber': '5',
           'dynamodb': {'SequenceNumber': '5', 'Keys': {'id': {'B': b'\x00'}},
                        'ApproximateCreationDateTime': datetime.datetime(
                            2026, 12, 1, 10, 0, 0, 123456, tzinfo=datetime.timezone.utc)}}
    import json
    out = json.loads(record_json(raw, 'arn:aws:dynamodb:us-east-1:1:table/t/stream/x'))
    assert out['eventSourceARN'].endswith('table/t/stream/x') and 'SequenceNumber' not in out
    assert out['dynamodb']['Keys'] == {'id': {'B': 'AA=='}}
    assert round(out['dynamodb']['ApproximateCreationDateTime'] * 1e6) == 1796119200_123456


def test_the_sqlite_replica_equals_a_scan(table, sqlite_url):
    """Reader -> decode -> Change -> the existing database sink: the replica equals the table."""
    import apache_beam as beam
    import sqlalchemy as sa
    from changeflow.config import TableSpec
    from changeflow.io.sql import WriteToDatabase
    from tests.beam_helpers import local_pipeline

    name, ddb, streams = table
    write_workload(ddb, name)
    ddb.put_item(TableName=name, Item={**key(5), 'tags': {'SS': ['z', 'y']}})
    ddb.put_item(TableName=name, Item={**key(4), 'qty': {'N': '7'}, 'b': {'B': b'\x00\xff'}})
    ddb.put_item(TableName=name, Item={**key(4), 'qty': {'N': '7'}, 'b': {'B': b'\x00\xff'}})  # no-op
    records, _ = read(DynamoDBStreamReader(streams, reads_per_second=1000), latest_stream_arn(ddb, name), {})
    decoded = [r for s in records for r in decode_source_record(s)]
    assert sum(r.no_op for r in decoded) == 1
    changes = [c for c in (to_change(r, ('id', 'title')) for r in decoded) if c is not None]
    spec = TableSpec(name, ('id', 'title'), 'cards', (
        ('id', 'integer'), ('title', 'string'), ('qty', 'integer'), ('tags', 'json'),
        ('m', 'json'), ('b', 'binary')))
    pipeline = local_pipeline()
    _, dead = (pipeline | beam.Create(changes)
               | 'ByRow' >> beam.Map(lambda c: ((c.table, c.key), c)) | beam.GroupByKey()
               | beam.FlatMapTuple(lambda _, cs: sorted(cs, key=lambda c: c.version))
               | WriteToDatabase(sqlite_url, [spec]))
    from apache_beam.testing.util import assert_that, equal_to
    assert_that(dead, equal_to([]), label='no dead letters')
    pipeline.run().wait_until_finish()
    with sa.create_engine(sqlite_url).connect() as conn:
        rows = {(r.id, r.title): r for r in conn.execute(sa.text('SELECT * FROM cards'))}
    expected = scan(ddb, name)
    assert set(expected) == set(rows)
    for row_key, item in expected.items():
        row = rows[row_key]
        assert row.qty == (int(item['qty']) if 'qty' in item else None)
        assert (json.loads(row.m) if row.m else None) == item.get('m')
        assert row.b == item.get('b')
        assert (json.loads(row.tags) if row.tags else None) == item.get('tags')


def test_a_keys_only_modify_marks_the_replica_row_diverged(sqlite_url):
    """A KEYS_ONLY stream cannot update a row: the sink records it as diverged."""
    import apache_beam as beam
    import sqlalchemy as sa
    from changeflow.config import TableSpec
    from changeflow.dynamodb.records import decode_record
    from changeflow.io.sql import WriteToDatabase
    from tests.beam_helpers import local_pipeline

    def record(event, seq, new=None):
        body = {'SequenceNumber': seq, 'ApproximateCreationDateTime': 1796119200 + int(seq),
                'Keys': key(1), 'StreamViewType': 'NEW_IMAGE' if new else 'KEYS_ONLY'}
        if new:
            body['NewImage'] = new
        return decode_record({'eventName': event, 'dynamodb': body}, table='cards-src')

    changes = [to_change(record('INSERT', '1', {**key(1), 'qty': {'N': '1'}}), ('id', 'title')),
               to_change(record('MODIFY', '2'), ('id', 'title'))]
    spec = TableSpec('cards-src', ('id', 'title'), 'cards', (
        ('id', 'integer'), ('title', 'string'), ('qty', 'integer')))
    pipeline = local_pipeline()
    _ = (pipeline | beam.Create([((c.table, c.key), c) for c in changes]) | beam.GroupByKey()
         | beam.FlatMapTuple(lambda _, cs: sorted(cs, key=lambda c: c.version))
         | WriteToDatabase(sqlite_url, [spec]))
    pipeline.run().wait_until_finish()
    with sa.create_engine(sqlite_url).connect() as conn:
        marks = conn.execute(sa.text('SELECT table_name, row_key, reason FROM changeflow_diverged')).all()
        rows = conn.execute(sa.text('SELECT id, title, qty FROM cards')).all()
    assert marks == [('cards', '[1,"t1"]', 'no-new-image')]
    assert rows == [(1, 't1', 1)]
