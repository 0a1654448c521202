"""The DynamoDB job end to end: writes to a table with a stream on moto's server,
its stream records archived, the job run into a replica that must equal a final
scan, Parquet rows that must equal the coalesced changes, notifications, and
export seeding that converges to the table."""

import base64
import decimal
import gzip
import hashlib
import json
import os
import time
import uuid

import boto3
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from botocore.config import Config

from changeflow import cli
from changeflow.config import ConfigError, load_config
from changeflow.dynamodb.records import decode_record, is_ttl_position, item, json_ready
from changeflow.io.dead_letter import read_dead_letters
from changeflow.io.dynamodb_streams import record_json
from changeflow.metrics import counter_totals
from changeflow.pipelines import dynamodb_sync

D = decimal.Decimal
KEY = ['id', 'title']
COLUMNS = {'id': 'integer', 'title': 'string', 'qty': 'integer', 'price': 'decimal(12,4)',
           'active': 'boolean', 'note': 'string', 'blob': 'binary', 'tags': 'json',
           'nums': 'json', 'meta': 'json', 'items': 'json', 'label': 'json'}
TTL_IDENTITY = {'type': 'Service', 'principalId': 'dynamodb.amazonaws.com'}


def clients(endpoint):
    kw = dict(endpoint_url=endpoint, region_name='us-east-1', aws_access_key_id='testing',
              aws_secret_access_key='testing',
              config=Config(retries={'mode': 'standard', 'max_attempts': 1}))
    return boto3.client('dynamodb', **kw), boto3.client('dynamodbstreams', **kw)


@pytest.fixture
def table(moto_endpoint):
    return create_table(moto_endpoint)


def create_table(moto_endpoint, name=None, view='NEW_AND_OLD_IMAGES'):
    """A table keyed (id, title) with a stream of ``view``: (name, dynamodb
    client, streams client). The default name has '-' and '.', as the seed
    library's could not."""
    ddb, streams = clients(moto_endpoint)
    name = name or f'prod-Card.{uuid.uuid4().hex[:6]}'
    ddb.create_table(
        TableName=name, BillingMode='PAY_PER_REQUEST',
        KeySchema=[{'AttributeName': 'id', 'KeyType': 'HASH'},
                   {'AttributeName': 'title', 'KeyType': 'RANGE'}],
        AttributeDefinitions=[{'AttributeName': 'id', 'AttributeType': 'N'},
                              {'AttributeName': 'title', 'AttributeType': 'S'}],
        StreamSpecification={'StreamEnabled': True, 'StreamViewType': view})
    return name, ddb, streams


def key(i):
    return {'id': {'N': str(i)}, 'title': {'S': f'card {i}'}}


def write_workload(ddb, name):
    """Every kind of write and every attribute type; card 5's delete is the one
    the archive marks as TTL's."""
    ddb.put_item(TableName=name, Item={
        **key(1), 'qty': {'N': '1'}, 'price': {'N': '12.5'}, 'active': {'BOOL': True},
        'note': {'S': 'first'}, 'blob': {'B': b'\x00\xff'}, 'tags': {'SS': ['new', 'a']},
        'nums': {'NS': ['1', '2.5']}, 'meta': {'M': {'dims': {'L': [{'N': '8.5'}, {'NULL': True}]},
                                                      'seen': {'BOOL': False}}},
        'items': {'L': [{'S': 'x'}, {'N': '3'}]}, 'label': {'S': 'plain text'}})
    ddb.put_item(TableName=name, Item={**key(2), 'qty': {'N': '5'}, 'note': {'NULL': True}})
    ddb.put_item(TableName=name, Item={**key(4), 'qty': {'N': '9'}})
    ddb.update_item(TableName=name, Key=key(1),
                    UpdateExpression='SET qty = qty + :one, price = :p REMOVE note',
                    ExpressionAttributeValues={':one': {'N': '1'}, ':p': {'N': '0.0001'}})
    ddb.transact_write_items(TransactItems=[
        {'Put': {'TableName': name, 'Item': {**key(3), 'meta': {'M': {'x': {'L': [{'N': '0.5'}]}}}}}},
        {'Update': {'TableName': name, 'Key': key(2), 'UpdateExpression': 'ADD tags :t',
                    'ExpressionAttributeValues': {':t': {'SS': ['z']}}}},
        {'Delete': {'TableName': name, 'Key': key(4)}}])
    ddb.delete_item(TableName=name, Key=key(3))
    ddb.put_item(TableName=name, Item={**key(2), 'qty': {'N': '5'}, 'note': {'NULL': True},
                                       'tags': {'SS': ['z']}})  # identical: a no-op MODIFY
    ddb.put_item(TableName=name, Item={**key(5), 'qty': {'N': '0'}, 'active': {'BOOL': False}})
    ddb.delete_item(TableName=name, Key=key(5))
    ddb.put_item(TableName=name, Item={**key(6), 'price': {'N': '-99999999.9999'},
                                       'label': {'N': '7'}, 'blob': {'B': b''}})


def stream_lines(ddb, streams, name):
    """Every stream record of the table, read with boto3, as dynamodb-jsonl lines."""
    arn = ddb.describe_table(TableName=name)['Table']['LatestStreamArn']
    lines = []
    for shard in streams.describe_stream(StreamArn=arn)['StreamDescription']['Shards']:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard['ShardId'],
                                              ShardIteratorType='TRIM_HORIZON')['ShardIterator']
        while iterator:
            response = streams.get_records(ShardIterator=iterator, Limit=1000)
            lines.extend(record_json(record, arn) for record in response['Records'])
            if not response['Records']:
                break  # moto's open shard never ends
            iterator = response.get('NextShardIterator')
    return lines


def mark_ttl(lines, i):
    """The REMOVE of card ``i`` as AWS writes a TTL delete (moto has no userIdentity)."""
    out = []
    for line in lines:
        record = json.loads(line)
        if record['eventName'] == 'REMOVE' and record['dynamodb']['Keys'] == key(i):
            record['userIdentity'] = TTL_IDENTITY
        out.append(json.dumps(record).encode())
    return out


def write_job(tmp_path, name, source, database_url, target, fmt='dynamodb-jsonl', seed=None,
              notify_when=None):
    raw = {'source': {'type': 'dynamodb-archive', 'format': fmt, 'path': str(source)},
           'tables': {name: {'key': KEY, 'target': target, 'columns': COLUMNS,
                             'redact': ['note']}},
           'sinks': {'database': {'url': database_url}, 'parquet': {'path': 'out/backup'},
                     'notify': [{'to': 'file:out/notifications.jsonl',
                                 **({'when': notify_when} if notify_when else {})}]},
           'dead_letter': {'path': 'out/dead-letter'}}
    if seed is not None:
        raw['seed'] = seed
    path = tmp_path / 'job.yaml'
    path.write_text(yaml.safe_dump(raw), encoding='utf-8')
    return str(path)


def run_job(config_path):
    result = dynamodb_sync.run(['--config', config_path])
    return counter_totals(result)


def scan(ddb, name):
    return {(int(image.get('id')), image.get('title')): image
            for image in (item(raw) for raw in ddb.scan(TableName=name)['Items'])}


def expected_row(image):
    """What the replica's row holds for an item, per declared column."""
    row = {}
    for column, declared in COLUMNS.items():
        value = image.get(column)
        if value is not None and declared == 'json':
            value = value if isinstance(value, str) else json_ready(value, nested=True)
        elif value is not None:
            value = json_ready(value)
            value = int(value) if declared == 'integer' else value
        row[column] = value
    return row


def replica(url, target):
    engine = sa.create_engine(url)
    try:
        table = sa.Table(target, sa.MetaData(), autoload_with=engine)
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(table))]
    finally:
        engine.dispose()
    out = {}
    for row in rows:
        for column, declared in COLUMNS.items():
            value = row[column]
            if value is None:
                continue
            if declared == 'json' and not isinstance(table.c[column].type, sa.JSON):
                value = json.loads(value)   # stored as text (MariaDB's LONGTEXT)
            elif declared == 'boolean':
                value = bool(value)
            elif declared == 'binary':
                value = bytes(value)
            row[column] = value
        out[(row['id'], row['title'])] = row
    return out


def bookkeeping(url, target):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(sa.text(
                'SELECT table_name, row_key, version, deleted FROM changeflow_row_versions '
                'WHERE table_name = :t'), {'t': target}))
    finally:
        engine.dispose()


def source_ops(lines):
    """(item, version) -> (op, new image) of every record that changed its item
    (a no-op MODIFY changes nothing): what the change-log sinks hold, one row
    or notification per source op."""
    ops = {}
    for record in (decode_record(json.loads(line)) for line in lines):
        if record.no_op:
            continue
        row = (int(record.keys.get('id')), record.keys.get('title'))
        ops[row, record.version] = (
            'delete' if record.event.value == 'REMOVE' else 'replace', record.new_image)
    return ops


def parquet_rows(path):
    rows = []
    for folder, _, files in os.walk(path):
        for name in sorted(files):
            rows.extend(pq.read_table(os.path.join(folder, name)).to_pylist())
    return rows


def tree(path):
    """Every file under path with its bytes."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), 'rb') as f:
                out[os.path.relpath(os.path.join(folder, name), path)] = f.read()
    return out


def test_replica_equals_a_scan_and_parquet_the_changes_and_a_rerun_changes_nothing(
        table, tmp_path, database_url, table_prefix):
    name, ddb, streams = table
    write_workload(ddb, name)
    lines = mark_ttl(stream_lines(ddb, streams, name), 5)
    archive = tmp_path / 'stream.jsonl'
    archive.write_bytes(b'\n'.join(lines) + b'\n')
    target = f'{table_prefix}cards'
    config = write_job(tmp_path, name, archive, database_url, target)

    counters = run_job(config)
    assert counters['changeflow.dynamodb.stream_records'] == len(lines) == 12
    assert counters['changeflow.dynamodb.no_op_modifies'] == 1
    assert counters['changeflow.dynamodb.ttl_deletes'] == 1
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert sorted(expected) == [(1, 'card 1'), (2, 'card 2'), (6, 'card 6')]
    assert replica(database_url, target) == expected

    # Parquet: one row per source op, the values as the record's new image holds them.
    ops = source_ops(lines)
    rows = parquet_rows(tmp_path / 'out' / 'backup')
    assert sorted((json.loads(r['key'])[0], r['op'], r['version']) for r in rows) == sorted(
        (row[0], op, version) for (row, version), (op, _) in ops.items())
    for r in rows:
        op, image = ops[tuple(json.loads(r['key'])), r['version']]
        assert r['source_table'] == name
        if op == 'replace':
            want = expected_row(image)
            got = {c: (json.loads(r[c]) if COLUMNS[c] == 'json' and r[c] is not None else r[c])
                   for c in COLUMNS}
            assert got == want
            assert sorted(r['set_columns']) == sorted(image.names())
    # TTL's delete (card 5) is told from the users' (cards 3 and 4) by its position.
    assert {json.loads(r['key'])[0] for r in rows if is_ttl_position(r['position'])} == {5}

    # Notifications: one per source op, redacted.
    notified = [json.loads(line) for line in
                (tmp_path / 'out' / 'notifications.jsonl').read_text().splitlines()]
    assert sorted((n['key'][0], n['op'], n['version']) for n in notified) == sorted(
        (row[0], op, version) for (row, version), (op, _) in ops.items())
    assert all(n['values'].get('note') in (None, '***') for n in notified)

    state = (replica(database_url, target), bookkeeping(database_url, target),
             tree(tmp_path / 'out' / 'backup'), (tmp_path / 'out' / 'notifications.jsonl').read_bytes())
    counters = run_job(config)
    # the replica gets one coalesced op per touched item, each stale on the rerun
    assert counters['changeflow.write_database.ops_skipped_stale'] == len({row for row, _ in ops})
    assert (replica(database_url, target), bookkeeping(database_url, target),
            tree(tmp_path / 'out' / 'backup'),
            (tmp_path / 'out' / 'notifications.jsonl').read_bytes()) == state
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []


def kinesis_destination_lines(lines):
    """The same records as DynamoDB's Kinesis streaming destination delivers them,
    archived as ``aws kinesis get-records`` lines (no stream sequence numbers)."""
    out = []
    for number, line in enumerate(lines, 1):
        record = json.loads(line)
        body = {k: v for k, v in record['dynamodb'].items()
                if k not in ('SequenceNumber', 'StreamViewType')}
        body['ApproximateCreationDateTime'] = round(body['ApproximateCreationDateTime'] * 1e6)
        data = {'awsRegion': 'us-east-1', 'eventID': record['eventID'],
                'eventName': record['eventName'], 'recordFormat': 'application/json',
                'tableName': record['eventSourceARN'].split(':table/')[1].split('/')[0],
                'dynamodb': body, 'eventSource': 'aws:dynamodb'}
        out.append(json.dumps({'SequenceNumber': f'4963{number:052d}',
                               'ApproximateArrivalTimestamp': 1796119200 + number,
                               'Data': base64.b64encode(json.dumps(data).encode()).decode(),
                               'PartitionKey': 'k', 'ShardId': 'shardId-000000000000'}).encode())
    return out


@pytest.mark.parametrize('fmt', ['lambda-event', 'kinesis-destination'])
def test_other_archive_forms_give_the_same_replica(table, tmp_path, sqlite_url, fmt):
    name, ddb, streams = table
    write_workload(ddb, name)
    lines = stream_lines(ddb, streams, name)
    archive = tmp_path / 'archive'
    if fmt == 'lambda-event':   # two events, pretty-printed
        for i, part in enumerate((lines[:5], lines[5:])):
            (tmp_path / f'event-{i}.json').write_text(json.dumps(
                {'Records': [json.loads(line) for line in part]}, indent=2))
        archive = tmp_path / 'event-*.json'
    else:
        archive.write_bytes(b'\n'.join(kinesis_destination_lines(lines)))
    run_job(write_job(tmp_path, name, archive, sqlite_url, 'cards', fmt=fmt))
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []
    assert replica(sqlite_url, 'cards') == {
        row: expected_row(image) for row, image in scan(ddb, name).items()}


def test_a_kinesis_destination_record_in_a_jsonl_archive_is_a_dead_letter(tmp_path, sqlite_url):
    """A file's line number is no sequence number: such a record cannot be versioned."""
    record = {'eventName': 'INSERT', 'tableName': 'prod-Card',
              'dynamodb': {'ApproximateCreationDateTime': 1796119200000000, 'Keys': key(1),
                           'NewImage': key(1)}}
    archive = tmp_path / 'stream.jsonl'
    archive.write_text(json.dumps(record) + '\n')
    run_job(write_job(tmp_path, 'prod-Card', archive, sqlite_url, 'cards'))
    [letter] = read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))
    assert (letter.step, letter.reason) == ('decode_dynamodb', 'bad-record')
    assert 'Kinesis sequence number' in letter.detail


def write_export(location, name, items, export_time, s3=None):
    """A DYNAMODB_JSON export as DynamoDB writes it: ``AWSDynamoDB/<id>/`` with
    manifest-summary.json, manifest-files.json and gzip'd data files, two items a file.
    Returns the export's folder."""
    export_id = f'{int(export_time * 1000):014d}-{uuid.uuid4().hex[:8]}'
    prefix = f'AWSDynamoDB/{export_id}'
    files, manifest = {}, []
    for n in range(0, max(len(items), 1), 2):
        data = gzip.compress(b''.join(json.dumps({'Item': i}).encode() + b'\n'
                                      for i in items[n:n + 2]))
        data_key = f'{prefix}/data/{uuid.uuid4().hex[:26]}.json.gz'
        files[data_key] = data
        manifest.append({'itemCount': len(items[n:n + 2]), 'dataFileS3Key': data_key,
                         'md5Checksum': base64.b64encode(hashlib.md5(data).digest()).decode(),
                         'etag': hashlib.md5(data).hexdigest()})
    files[f'{prefix}/manifest-files.json'] = ''.join(json.dumps(m) + '\n' for m in manifest).encode()
    when = time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(export_time)) + (
        f'.{int(export_time * 1000) % 1000:03d}Z')
    files[f'{prefix}/manifest-summary.json'] = json.dumps({
        'version': '2020-06-30', 'exportArn': f'arn:aws:dynamodb:us-east-1:123456789012:table/'
                                              f'{name}/export/{export_id}',
        'startTime': when, 'endTime': when, 'tableArn': f'arn:aws:dynamodb:us-east-1:'
                                                        f'123456789012:table/{name}',
        'tableId': str(uuid.uuid4()), 'exportTime': when, 's3Bucket': 'b', 's3Prefix': None,
        's3SseAlgorithm': 'AES256', 'manifestFilesS3Key': f'{prefix}/manifest-files.json',
        'billedSizeBytes': 0, 'itemCount': len(items), 'outputFormat': 'DYNAMODB_JSON',
        'exportType': 'FULL_EXPORT'}).encode()
    for data_key, data in files.items():
        if s3 is not None:
            bucket, _, root = location[len('s3://'):].partition('/')
            s3.put_object(Bucket=bucket, Key=f'{root}/{data_key}', Body=data)
        else:
            path = os.path.join(location, data_key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(data)
    return f'{location}/{prefix}'


@pytest.mark.parametrize('where', ['local', 's3'])
def test_seeding_from_an_export_then_the_stream_converges_to_the_table(
        table, tmp_path, sqlite_url, where, aws_env):
    name, ddb, streams = table
    for i in (1, 2, 3, 4):
        ddb.put_item(TableName=name, Item={**key(i), 'qty': {'N': str(i)}})
    time.sleep(1.1)                 # the export's second holds none of those writes
    export_time = time.time()
    s3 = None
    location = str(tmp_path / 'exports')
    if where == 's3':
        s3 = boto3.client('s3', region_name='us-east-1')
        bucket = f'exports-{uuid.uuid4().hex[:8]}'
        s3.create_bucket(Bucket=bucket)
        location = f's3://{bucket}/tables'
    export = write_export(location, name, [i for i in ddb.scan(TableName=name)['Items']],
                          export_time, s3)
    ddb.update_item(TableName=name, Key=key(2), UpdateExpression='SET qty = :q',
                    ExpressionAttributeValues={':q': {'N': '20'}})
    ddb.delete_item(TableName=name, Key=key(3))
    ddb.transact_write_items(TransactItems=[
        {'Put': {'TableName': name, 'Item': {**key(5), 'qty': {'N': '5'}}}},
        {'Delete': {'TableName': name, 'Key': key(4)}}])
    after = [line for line in stream_lines(ddb, streams, name)
             if json.loads(line)['dynamodb']['ApproximateCreationDateTime'] >= int(export_time)]
    assert len(after) == 4          # the stream from the export on
    archive = tmp_path / 'stream.jsonl'
    archive.write_bytes(b'\n'.join(after))
    config = write_job(tmp_path, name, archive, sqlite_url, 'cards', seed={'export': export})
    counters = run_job(config)
    assert counters['changeflow.dynamodb.export_items'] == 4
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert sorted(expected) == [(1, 'card 1'), (2, 'card 2'), (5, 'card 5')]
    assert replica(sqlite_url, 'cards') == expected
    # Seeded items are the table's state, not changes: only the stream's are notified.
    notified = [json.loads(line) for line in
                (tmp_path / 'out' / 'notifications.jsonl').read_text().splitlines()]
    assert sorted((n['key'][0], n['op']) for n in notified) == [
        (2, 'replace'), (3, 'delete'), (4, 'delete'), (5, 'replace')]
    # The backup holds each source op: the seed's items (1 to 4) and the stream's.
    rows = parquet_rows(tmp_path / 'out' / 'backup')
    assert sorted((json.loads(r['key'])[0], r['op']) for r in rows) == [
        (1, 'replace'), (2, 'replace'), (2, 'replace'), (3, 'delete'), (3, 'replace'),
        (4, 'delete'), (4, 'replace'), (5, 'replace')]
    run_job(config)
    assert replica(sqlite_url, 'cards') == expected
    assert len((tmp_path / 'out' / 'notifications.jsonl').read_text().splitlines()) == 4


def test_an_export_that_does_not_match_its_manifest_marks_the_table(tmp_path, sqlite_url):
    export = write_export(str(tmp_path / 'exports'), 'prod-Card',
                          [{**key(1), 'qty': {'N': '1'}}, {**key(2)}, {**key(3)}], 1796119200.5)
    first = json.loads((tmp_path / 'exports').joinpath(export.split('/exports/')[1],
                                                      'manifest-files.json').read_text()
                       .splitlines()[0])['dataFileS3Key']            # items 1 and 2
    (tmp_path / 'exports' / first).write_bytes(gzip.compress(b'{"Item": {}}\n'))
    archive = tmp_path / 'stream.jsonl'
    archive.write_text('')
    run_job(write_job(tmp_path, 'prod-Card', archive, sqlite_url, 'cards',
                      seed={'export': export}))
    [letter] = read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))
    assert (letter.step, letter.reason) == ('seed_dynamodb', 'bad-export')
    assert 'MD5' in letter.detail
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        marks = conn.execute(sa.text('SELECT table_name, row_key, reason FROM '
                                     'changeflow_diverged')).all()
        count = conn.execute(sa.text('SELECT COUNT(*) FROM cards')).scalar()
    assert marks == [('cards', '', 'bad-export')]
    assert count == 1               # the other file's item; the table is known to lack some


def stream_record(event, i, seq, new=None, old=None, keys=None):
    body = {'SequenceNumber': str(seq), 'ApproximateCreationDateTime': 1796119200 + seq,
            'Keys': keys or key(i), 'StreamViewType': 'NEW_AND_OLD_IMAGES'}
    if new is not None:
        body['NewImage'] = new
    if old is not None:
        body['OldImage'] = old
    return json.dumps({'eventName': event, 'dynamodb': body, 'eventSourceARN':
                       'arn:aws:dynamodb:us-east-1:1:table/prod-Card/stream/x'})


def test_items_that_do_not_fit_their_columns_are_dead_lettered_and_marked(tmp_path, sqlite_url):
    """Never stored re-typed or rounded: the row is marked diverged, the attribute named."""
    lines = [
        stream_record('INSERT', 1, 1, new={**key(1), 'qty': {'N': '1'}}),
        stream_record('MODIFY', 1, 2, new={**key(1), 'qty': {'S': '2'}},
                      old={**key(1), 'qty': {'N': '1'}}),            # an integer column
        stream_record('INSERT', 2, 3, new={**key(2), 'qty': {'N': '2.5'}}),   # not integral
        stream_record('INSERT', 3, 4, new={**key(3), 'price': {'N': '1.00001'}}),  # 5 places
        stream_record('INSERT', 4, 5, new={**key(4), 'colour': {'S': 'red'}}),  # undeclared
        stream_record('INSERT', 5, 6, new={**key(5), 'qty': {'N': '3'}}),
    ]
    archive = tmp_path / 'stream.jsonl'
    archive.write_text('\n'.join(lines))
    run_job(write_job(tmp_path, 'prod-Card', archive, sqlite_url, 'cards'))
    letters = sorted((d.reason, d.detail) for d in read_dead_letters(
        str(tmp_path / 'out' / 'dead-letter')))
    assert [reason for reason, _ in letters] == ['attribute-type'] * 3 + ['unknown-attribute']
    assert any("'qty' is of type S" in detail for _, detail in letters)
    assert 'colour' in letters[3][1]
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        marks = conn.execute(sa.text('SELECT row_key, reason FROM changeflow_diverged '
                                     'ORDER BY row_key')).all()
        rows = conn.execute(sa.text('SELECT id, qty, price FROM cards ORDER BY id')).all()
    assert marks == [('[1,"card 1"]', 'attribute-type'), ('[2,"card 2"]', 'attribute-type'),
                     ('[3,"card 3"]', 'attribute-type'), ('[4,"card 4"]', 'unknown-attribute')]
    assert rows == [(1, 1, None), (5, 3, None)]    # row 1 keeps its last fitting state


def test_records_given_twice_in_one_run_apply_once(tmp_path, sqlite_url):
    """Overlapping archives: a record's version is its identity, in one run as across runs."""
    lines = [stream_record('INSERT', 1, 1, new={**key(1), 'qty': {'N': '1'}}),
             stream_record('MODIFY', 1, 2, new={**key(1), 'qty': {'N': '2'}},
                           old={**key(1), 'qty': {'N': '1'}}),
             stream_record('REMOVE', 2, 3, old=key(2))]
    (tmp_path / 'a.jsonl').write_text('\n'.join(lines))
    (tmp_path / 'b.jsonl').write_text('\n'.join(lines[1:] + lines[:1]))
    versions = [decode_record(json.loads(line)).version for line in lines]
    counters = run_job(write_job(tmp_path, 'prod-Card', tmp_path / '*.jsonl', sqlite_url,
                                 'cards'))
    assert counters['changeflow.dynamodb.changes'] == 6
    assert counters['changeflow.write_database.rows_upserted'] == 1
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []
    with sa.create_engine(sqlite_url).connect() as conn:
        assert conn.execute(sa.text('SELECT id, qty FROM cards')).all() == [(1, 2)]
    rows = parquet_rows(tmp_path / 'out' / 'backup')
    assert sorted((json.loads(r['key'])[0], r['op'], r['version']) for r in rows) == [
        (1, 'replace', versions[0]), (1, 'replace', versions[1]), (2, 'delete', versions[2])]


def test_reordered_records_and_a_later_replay_of_older_ones_never_regress_a_row(
        table, tmp_path, sqlite_url):
    """The version (creation time, then sequence number) orders each item's
    changes, whatever order the records come in; a later run of older records
    (a re-read, an overlapping archive) changes nothing."""
    name, ddb, streams = table
    write_workload(ddb, name)
    lines = stream_lines(ddb, streams, name)
    archive = tmp_path / 'stream.jsonl'
    archive.write_bytes(b'\n'.join(reversed(lines)))
    config = write_job(tmp_path, name, archive, sqlite_url, 'cards')
    run_job(config)
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert replica(sqlite_url, 'cards') == expected
    versions = bookkeeping(sqlite_url, 'cards')
    archive.write_bytes(b'\n'.join(lines[:len(lines) // 2]))
    counters = run_job(config)
    assert counters['changeflow.write_database.ops_skipped_stale'] > 0
    assert replica(sqlite_url, 'cards') == expected
    assert bookkeeping(sqlite_url, 'cards') == versions


def test_keys_other_than_the_configured_key_mark_the_table(tmp_path, sqlite_url):
    """A table keyed (id, title) configured as keyed by id alone would merge items."""
    lines = [stream_record('INSERT', 1, 1, new=key(1))]
    archive = tmp_path / 'stream.jsonl'
    archive.write_text('\n'.join(lines))
    config = write_job(tmp_path, 'prod-Card', archive, sqlite_url, 'cards')
    raw = yaml.safe_load(open(config))
    raw['tables']['prod-Card']['key'] = ['id']
    (tmp_path / 'job.yaml').write_text(yaml.safe_dump(raw))
    run_job(config)
    [letter] = read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))
    assert letter.reason == 'key-mismatch'
    with sa.create_engine(sqlite_url).connect() as conn:
        assert conn.execute(sa.text('SELECT table_name, row_key, reason FROM '
                                    'changeflow_diverged')).all() == [('cards', '', 'key-mismatch')]


def test_changeflow_run_dispatches_to_the_dynamodb_job(tmp_path, sqlite_url, capsys):
    archive = tmp_path / 'stream.jsonl'
    archive.write_text(stream_record('INSERT', 1, 1, new={**key(1), 'qty': {'N': '4'}}))
    config = write_job(tmp_path, 'prod-Card', archive, sqlite_url, 'cards')
    with pytest.raises(SystemExit) as exit_:
        cli.main(['run', config, '--verbose'])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert 'changeflow.dynamodb.changes' in out and 'nothing diverged' in out
    with sa.create_engine(sqlite_url).connect() as conn:
        assert conn.execute(sa.text('SELECT id, title, qty FROM cards')).all() == [
            (1, 'card 1', 4)]


def dynamodb_config(tmp_path, **changes):
    (tmp_path / 'stream.jsonl').write_text('')
    raw = {'source': {'type': 'dynamodb-archive', 'format': 'dynamodb-jsonl',
                      'path': 'stream.jsonl'},
           'tables': {'prod-Card.v1': {'key': ['id', 'title'], 'columns': {
               'id': 'integer', 'title': 'string'}}},
           'sinks': {'database': {'url': 'sqlite:///replica.db'}},
           'dead_letter': {'path': 'dead'}}
    for dotted, value in changes.items():
        where = raw
        *path, last = dotted.split('__')
        for part in path:
            where = where[part]
        where[last] = value
    path = tmp_path / 'job.yaml'
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_dynamodb_archive_is_not_read_in_slices(tmp_path):
    """slice_mb is the audit archives' alone: here it is refused, not ignored."""
    with pytest.raises(ConfigError, match="unknown key.*'slice_mb'"):
        load_config(dynamodb_config(tmp_path, source__slice_mb=1))


def test_config_of_a_dynamodb_job(tmp_path):
    config = load_config(dynamodb_config(tmp_path))
    assert config.source.type == 'dynamodb-archive' and config.source.seeds == ()
    [spec] = config.tables
    assert (spec.source, spec.key, spec.target) == ('prod-Card.v1', ('id', 'title'),
                                                   'prod-Card_v1')
    assert config.source.path == str(tmp_path / 'stream.jsonl')
    (tmp_path / 'export').mkdir()
    seeded = load_config(dynamodb_config(tmp_path, seed={'export': 'export'}))
    assert seeded.source.seeds[0].table == 'prod-Card.v1'
    assert seeded.source.seeds[0].export == str(tmp_path / 'export')


@pytest.mark.parametrize('changes, words', [
    ({'source__format': 'kinesis-jsonl'}, 'source.format'),
    ({'tables': {'ab': {'key': 'id'}}}, 'not a DynamoDB table name'),
    ({'tables': {'prod-Card': {'key': ['a', 'b', 'c']}}}, 'at most a range attribute'),
    ({'tables': {'t' * 200: {'key': 'id'}}}, 'set a shorter target'),
    ({'tables': {'prod-Card': {'key': 'id', 'columns': {'id': 'int unsigned'}}}},
     'tables.prod-Card.columns'),
    ({'seed': {'export': 'missing'}}, 'seed.export'),
    ({'seed': {'export': 'stream.jsonl', 'table': 'other'}}, 'seed.table'),
    ({'seed': {'export': 'stream.jsonl', 'endpoint_url': 'localhost:4566'}},
     'seed.endpoint_url'),
    ({'audit': {}}, "unknown key(s) 'audit'"),
])
def test_config_errors_name_the_key(tmp_path, changes, words):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(dynamodb_config(tmp_path, **changes))
    assert words in str(error.value)


def test_a_seed_names_its_table_when_there_are_several(tmp_path):
    tables = {'a-1': {'key': 'id'}, 'b-2': {'key': 'id'}}
    with pytest.raises(ConfigError, match='seed.table: name the table'):
        load_config(dynamodb_config(tmp_path, tables=tables, seed={'export': 'stream.jsonl'}))
    config = load_config(dynamodb_config(tmp_path, tables=tables, seed=[
        {'export': 'stream.jsonl', 'table': 'b-2'}]))
    assert [seed.table for seed in config.source.seeds] == ['b-2']
