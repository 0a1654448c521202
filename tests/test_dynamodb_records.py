"""Decoding DynamoDB stream records (every input form) and their row changes."""

import datetime
import decimal
import json
import os
import pickle
import subprocess
import sys

import pytest

from changeflow.dynamodb.records import (
    BadRecord, DynamoMap, DynamoSet, EventName, StreamViewType, attribute_value,
    decode_record, decode_source_record, dynamodb_version, export_version, item, json_ready,
    is_ttl_position, table_from_arn, to_change)
from changeflow.model import Change, DeadLetter, OpKind, SourceRecord, divergence

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'dynamodb')
ARN = 'arn:aws:dynamodb:us-east-1:123456789012:table/prod-Card/stream/2026-12-01T10:00:00.000'
D = decimal.Decimal


def lambda_record(event='MODIFY', new=None, old=None, view='NEW_AND_OLD_IMAGES', seq='111',
                  keys=None, identity=None, created=1796119200):
    body = {'ApproximateCreationDateTime': created, 'SequenceNumber': seq,
            'Keys': keys if keys is not None else {'id': {'N': '1'}, 'title': {'S': 'a'}},
            'SizeBytes': 26, 'StreamViewType': view}
    if new is not None:
        body['NewImage'] = new
    if old is not None:
        body['OldImage'] = old
    record = {'eventID': 'e1', 'eventName': event, 'eventVersion': '1.1',
              'eventSource': 'aws:dynamodb', 'awsRegion': 'us-east-1', 'dynamodb': body,
              'eventSourceARN': ARN}
    if identity:
        record['userIdentity'] = identity
    return record


ROW = {'id': {'N': '1'}, 'title': {'S': 'a'}, 'qty': {'N': '3'}}


# -- AttributeValues ---------------------------------------------------------

def test_every_type_unmarshals_exactly():
    value = item({
        's': {'S': 'x'}, 'n': {'N': '0.1'}, 'big': {'N': '-1234567890123456789012345678901234567.8'},
        'tiny': {'N': '1E-130'}, 'b': {'B': 'AAH/'}, 'raw': {'B': b'\x00\x01'},
        't': {'BOOL': True}, 'z': {'NULL': True}, 'ss': {'SS': ['b', 'a']},
        'ns': {'NS': ['10', '9.5']}, 'bs': {'BS': ['AQ==', 'AA==']},
        'l': {'L': [{'N': '1'}, {'S': 'two'}, {'L': []}]},
        'm': {'M': {'k': {'M': {'deep': {'N': '7'}}}}}})
    got = value.as_dict()
    assert got['n'] == D('0.1') and isinstance(got['n'], D)
    assert got['big'] == D('-1234567890123456789012345678901234567.8')
    assert got['tiny'] == D('1E-130')
    assert got['b'] == b'\x00\x01\xff' and got['raw'] == b'\x00\x01'
    assert got['t'] is True and got['z'] is None
    assert got['ss'] == DynamoSet(('a', 'b')) and isinstance(got['ss'], DynamoSet)
    assert got['ns'] == DynamoSet((D('9.5'), D('10')))
    assert got['bs'] == DynamoSet((b'\x00', b'\x01'))
    assert got['l'] == (D(1), 'two', ())
    assert isinstance(got['m'], DynamoMap) and got['m'].get('k').get('deep') == D(7)
    assert value.names() == tuple(sorted(got))


@pytest.mark.parametrize('bad, path, words', [
    ({'a': {'N': '1.5.2'}}, 'Item.a', 'decimal number'),
    ({'a': {'N': 1}}, 'Item.a', 'decimal number'),
    ({'a': {'N': 'NaN'}}, 'Item.a', 'decimal number'),
    ({'a': {'N': '1' * 39}}, 'Item.a', '39 significant digits'),
    ({'a': {'N': '1E+126'}}, 'Item.a', 'range'),
    ({'a': {'M': {'b': {'L': [{'N': '1'}, {'Q': 'x'}]}}}}, 'Item.a.b[1]', "unknown AttributeValue type 'Q'"),
    ({'a': {'S': 'x', 'N': '1'}}, 'Item.a', 'exactly one type'),
    ({'a': {'B': 'not base64!'}}, 'Item.a', 'not base64'),
    ({'a': {'BOOL': 'true'}}, 'Item.a', 'BOOL'),
    ({'a': {'NULL': False}}, 'Item.a', 'NULL must be true'),
    ({'a': {'SS': []}}, 'Item.a', 'non-empty'),
    ({'a': {'SS': ['x', 'x']}}, 'Item.a', 'duplicates'),
    ({'a': {'NS': ['1', 'x']}}, 'Item.a[1]', 'decimal number'),
    ({'a': {'L': {'N': '1'}}}, 'Item.a', 'L must be a list'),
])
def test_malformed_values_name_the_attribute_path(bad, path, words):
    with pytest.raises(BadRecord) as e:
        item(bad)
    assert e.value.reason == 'bad-attribute-value'
    assert e.value.detail.startswith(path + ':') and words in e.value.detail


def test_38_digits_pass_and_trailing_zeros_are_not_precision():
    assert attribute_value({'N': '9' * 38}) == D('9' * 38)
    assert attribute_value({'N': '1' + '0' * 60}) == D('1E60')
    assert attribute_value({'N': '-9.9999999999999999999999999999999999999E+125'}) < 0


def test_sets_and_maps_pickle_the_same_in_every_process():
    # frozensets of str would pickle in hash order, which PYTHONHASHSEED changes.
    code = ('import pickle,sys; from changeflow.dynamodb.records import item; '
            'sys.stdout.write(pickle.dumps(item({"s": {"SS": [str(i) for i in range(50)]}, '
            '"m": {"M": {str(i): {"N": str(i)} for i in range(20)}}}), 4).hex())')
    outputs = {subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                              env={**os.environ, 'PYTHONHASHSEED': seed}).stdout
               for seed in ('1', '2', '3')}
    assert len(outputs) == 1
    value = pickle.loads(bytes.fromhex(outputs.pop()))
    assert isinstance(value.get('s'), DynamoSet) and isinstance(value.get('m'), DynamoMap)


# -- the stream ARN ----------------------------------------------------------

@pytest.mark.parametrize('name', ['prod-Card', 'prod.Card_v2', 'Card', 'a-b.c_d-1'])
def test_table_names_with_dashes_and_dots(name):
    assert table_from_arn(f'arn:aws:dynamodb:eu-west-1:1:table/{name}/stream/2026-01-01T00:00:00.000') == name
    assert table_from_arn(f'arn:aws-cn:dynamodb:cn-north-1:1:table/{name}/stream/x') == name


@pytest.mark.parametrize('arn', ['arn:aws:kinesis:us-east-1:1:stream/x', 'table/prod-Card/stream/x',
                                 'arn:aws:dynamodb:us-east-1:1:table/a b/stream/x', None])
def test_other_arns_are_rejected(arn):
    with pytest.raises(BadRecord):
        table_from_arn(arn)


# -- records -----------------------------------------------------------------

def test_modify_decodes_keys_images_version_and_time():
    record = decode_record(lambda_record(new={**ROW, 'qty': {'N': '4'}}, old=ROW))
    assert record.table == 'prod-Card' and record.event is EventName.MODIFY
    assert record.keys == DynamoMap((('id', D(1)), ('title', 'a')))
    assert record.old_image.get('qty') == D(3) and record.new_image.get('qty') == D(4)
    assert record.view_type is StreamViewType.NEW_AND_OLD_IMAGES
    assert record.created_us == 1796119200_000000 and record.sequence == '111'
    assert record.version == dynamodb_version(1796119200_000000, '111')
    assert not record.no_op and not record.ttl_delete and record.size_bytes == 26


def test_versions_sort_like_time_then_sequence_and_exports_sort_before_the_stream():
    versions = [dynamodb_version(t, s) for t, s in [
        (1_000_000, '99'), (1_000_000, '100'), (1_000_001, '5'), (2_000_000, '4' * 40)]]
    assert versions == sorted(versions) and len({len(v) for v in versions}) == 1
    # An export at 10:00:00.123 sorts before every record created from 10:00:00 on ...
    export = export_version(1796119200_123000)
    assert export < dynamodb_version(1796119200_000000, '1')
    assert export < dynamodb_version(1796119200_123001, '1')
    # ... and after every record of the seconds before.
    assert export > dynamodb_version(1796119199_999999, '9' * 40)
    assert len(export) == len(versions[0]) <= 80     # the replica's version column


def test_identical_images_are_a_no_op_and_types_count():
    assert decode_record(lambda_record(new=ROW, old=ROW)).no_op
    # BOOL true equals N 1 in Python, but it is a change in DynamoDB.
    flip = decode_record(lambda_record(new={**ROW, 'qty': {'BOOL': True}}, old={**ROW, 'qty': {'N': '1'}}))
    assert not flip.no_op
    as_map = decode_record(lambda_record(
        new={**ROW, 'x': {'M': {'a': {'N': '1'}}}}, old={**ROW, 'x': {'L': [{'L': [{'S': 'a'}, {'N': '1'}]}]}}))
    assert not as_map.no_op
    assert to_change(decode_record(lambda_record(new=ROW, old=ROW)), ['id', 'title']) is None


def test_ttl_deletes_are_told_from_user_deletes():
    service = {'type': 'Service', 'principalId': 'dynamodb.amazonaws.com'}
    assert decode_record(lambda_record('REMOVE', old=ROW, identity=service)).ttl_delete
    assert not decode_record(lambda_record('REMOVE', old=ROW)).ttl_delete
    assert not decode_record(lambda_record(
        'REMOVE', old=ROW, identity={'type': 'Service', 'principalId': 'other.amazonaws.com'})).ttl_delete
    # Downstream, the DELETE's position (Parquet's position column) says which.
    [by_ttl] = to_change(decode_record(lambda_record('REMOVE', old=ROW, identity=service)),
                         ['id', 'title']).ops
    [by_user] = to_change(decode_record(lambda_record('REMOVE', old=ROW)), ['id', 'title']).ops
    assert by_ttl.kind is by_user.kind is OpKind.DELETE
    assert is_ttl_position(by_ttl.position) and not is_ttl_position(by_user.position)


def test_boto3_records_name_their_table_through_the_reader():
    record = lambda_record('INSERT', new={**ROW, 'b': {'B': b'\x00'}})
    del record['eventSourceARN']
    record['dynamodb']['ApproximateCreationDateTime'] = datetime.datetime(
        2026, 12, 1, 10, 0, 0, 250000, tzinfo=datetime.timezone.utc)
    decoded = decode_record(record, table='prod-Card')
    assert decoded.table == 'prod-Card' and decoded.created_us == 1796119200_250000
    assert decoded.new_image.get('b') == b'\x00'
    with pytest.raises(BadRecord):
        decode_record(record)          # no ARN and no table


def test_kinesis_destination_records():
    payload = {'awsRegion': 'us-east-1', 'eventID': 'k1', 'eventName': 'INSERT',
               'userIdentity': None, 'recordFormat': 'application/json', 'tableName': 'prod-Card',
               'dynamodb': {'ApproximateCreationDateTime': 1796119200123456,
                            'Keys': {'id': {'N': '1'}, 'title': {'S': 'a'}},
                            'NewImage': ROW, 'SizeBytes': 40},
               'eventSource': 'aws:dynamodb'}
    seq = '49590338271490256608559692538361571095921575989136588898'
    source = SourceRecord(json.dumps(payload).encode(), 'ddb-changes', 'shardId-000000000000', seq, 0)
    [record] = decode_source_record(source)
    assert record.table == 'prod-Card' and record.created_us == 1796119200_123456
    assert record.sequence == seq and record.version == dynamodb_version(1796119200_123456, seq)
    assert record.view_type is None and record.new_image == item(ROW)
    # Millisecond precision (the destination's default) is read as such.
    payload['dynamodb']['ApproximateCreationDateTime'] = 1796119200123
    [record] = decode_source_record(source._replace(data=json.dumps(payload).encode()))
    assert record.created_us == 1796119200_123000


def test_lambda_events_decode_each_record_and_dead_letter_only_the_bad_one():
    event = {'Records': [lambda_record('INSERT', new=ROW, seq='1'),
                         lambda_record('UPSERT', new=ROW, seq='2'),
                         lambda_record('INSERT', new={'id': {'N': 'x'}}, seq='3'),
                         lambda_record('REMOVE', old=ROW, seq='4', keys={})]}
    source = SourceRecord(json.dumps(event).encode(), 'lambda.json', '', '0', 0)
    out = list(decode_source_record(source))
    assert [type(o) for o in out] == [type(out[0]), DeadLetter, DeadLetter, DeadLetter]
    assert out[0].event is EventName.INSERT and out[0].position == 'lambda.json#0@0'
    assert [(o.reason, o.position) for o in out[1:]] == [
        ('bad-record', 'lambda.json#0@1'), ('bad-attribute-value', 'lambda.json#0@2'),
        ('missing-key', 'lambda.json#0@3')]
    assert 'UPSERT' in out[1].detail and 'NewImage.id' in out[2].detail
    assert json.loads(out[1].original)['dynamodb']['SequenceNumber'] == '2'


def test_bad_json_is_a_dead_letter_with_the_original_bytes():
    [letter] = decode_source_record(SourceRecord(b'{"Records": [', 'f.jsonl', '', '7', 0))
    assert isinstance(letter, DeadLetter) and letter.reason == 'bad-json'
    assert letter.original == b'{"Records": [' and letter.position == 'f.jsonl#7'
    assert letter.step == 'decode_dynamodb'


def test_views_must_carry_their_images():
    with pytest.raises(BadRecord, match='without NewImage'):
        decode_record(lambda_record('MODIFY', old=ROW))
    with pytest.raises(BadRecord, match='without OldImage'):
        decode_record(lambda_record('REMOVE'))
    with pytest.raises(BadRecord, match='StreamViewType'):
        decode_record(lambda_record('REMOVE', view='ALL'))


def test_the_recorded_moto_stream_decodes():
    with open(os.path.join(DATA, 'moto_stream.jsonl'), 'rb') as f:
        lines = f.read().splitlines()
    records = [r for i, line in enumerate(lines)
               for r in decode_source_record(SourceRecord(line, 'moto_stream.jsonl', '', str(i), 0))]
    assert [r.event.value for r in records] == ['INSERT', 'MODIFY', 'INSERT', 'MODIFY', 'REMOVE']
    assert {r.table for r in records} == {'prod-Card.v1'}
    first = records[0].new_image.as_dict()
    assert first['n'] == D('1.50') and first['b'] == b'\x00\x01' and first['ss'] == DynamoSet(('a', 'b'))
    assert first['m'] == DynamoMap((('x', (D(1), None)),))
    assert [r.version for r in records] == sorted(r.version for r in records)


# -- Changes -----------------------------------------------------------------

def test_changes_for_the_replica():
    insert = decode_record(lambda_record('INSERT', new={**ROW, 'm': {'M': {'p': {'N': '0.1'}, 'q': {
        'L': [{'N': '2'}, {'B': 'AP8='}, {'SS': ['y', 'x']}, {'N': '0.12345678901234567890123'}]}}},
        's': {'NS': ['2', '1']}}))
    change = to_change(insert, ['id', 'title'])
    assert isinstance(change, Change) and change.table == 'prod-Card'
    assert change.key == (1, 'a') and change.event_time_us == insert.created_us
    [op] = change.ops
    assert op.kind is OpKind.REPLACE and op.version == insert.version and op.position == insert.position
    values = dict(op.values)
    assert values['qty'] == D(3) and values['title'] == 'a'
    assert values['m'] == {'p': 0.1, 'q': [2, 'AP8=', ['x', 'y'], '0.12345678901234567890123']}
    assert values['s'] == [D(1), D(2)]
    json.dumps(values['m'])                           # JSON-ready for a json column

    [delete] = to_change(decode_record(lambda_record('REMOVE', old=ROW)), ['id', 'title']).ops
    assert delete.kind is OpKind.DELETE and delete.values == ()
    [delete] = to_change(decode_record(lambda_record('REMOVE', view='KEYS_ONLY')), ['id', 'title']).ops
    assert delete.kind is OpKind.DELETE


@pytest.mark.parametrize('view, event', [('KEYS_ONLY', 'MODIFY'), ('KEYS_ONLY', 'INSERT'),
                                         ('OLD_IMAGE', 'MODIFY')])
def test_changes_without_a_new_image_diverge(view, event):
    old = ROW if view == 'OLD_IMAGE' else None
    [op] = to_change(decode_record(lambda_record(event, old=old, view=view)), ['id', 'title']).ops
    assert op.kind is OpKind.DIVERGE
    reason, detail = divergence(op)
    assert reason == 'no-new-image' and view in detail


def test_a_key_attribute_missing_from_keys():
    with pytest.raises(BadRecord) as e:
        to_change(decode_record(lambda_record('REMOVE', old=ROW)), ['id', 'sku'])
    assert e.value.reason == 'missing-key' and 'sku' in e.value.detail


def test_number_keys_are_coder_safe_and_canonical():
    keys = {'id': {'N': '1.50'}, 'title': {'S': 'a'}}
    assert to_change(decode_record(lambda_record('REMOVE', keys=keys, old=ROW)), ['id', 'title']).key == ('1.5', 'a')
    keys = {'id': {'N': '10.0'}, 'title': {'S': 'a'}}
    change = to_change(decode_record(lambda_record('REMOVE', keys=keys, old=ROW)), ['id', 'title'])
    assert change.key == (10, 'a') and type(change.key[0]) is int
    from apache_beam.coders import coders
    coders.FastPrimitivesCoder().as_deterministic_coder('GroupByKey').encode(('t', change.key))


def test_json_ready_keeps_top_level_values():
    assert json_ready(D('1.50')) == D('1.50') and json_ready(b'\x00') == b'\x00'
    assert json_ready(DynamoMap((('a', D('1E+2')),))) == {'a': 100}


# -- Beam transforms -----------------------------------------------------------

def test_decode_and_change_transforms_route_dead_letters():
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to
    from changeflow.dynamodb.transforms import DecodeDynamoDBRecords, DynamoDBChanges
    from changeflow.metrics import counter_totals
    from tests.beam_helpers import local_pipeline

    lines = [json.dumps(lambda_record('INSERT', new=ROW, seq='1')).encode(),
             b'not json',
             json.dumps(lambda_record('MODIFY', new=ROW, old=ROW, seq='2')).encode(),
             json.dumps(lambda_record('REMOVE', old=ROW, seq='3', identity={
                 'type': 'Service', 'principalId': 'dynamodb.amazonaws.com'})).encode(),
             json.dumps(lambda_record('REMOVE', old=ROW, seq='4', keys={'id': {'N': '1'}})).encode()]
    sources = [SourceRecord(line, 'a.jsonl', '', str(i), 0) for i, line in enumerate(lines)]
    pipeline = local_pipeline()
    records, bad = pipeline | beam.Create(sources) | DecodeDynamoDBRecords()
    changes, missing = records | DynamoDBChanges({'prod-Card': ('id', 'title')})
    assert_that(changes | beam.Map(lambda c: (c.key, c.ops[0].kind.value)),
                equal_to([((1, 'a'), 'replace'), ((1, 'a'), 'delete')]), label='changes')
    assert_that(bad | 'BadReasons' >> beam.Map(lambda d: (d.reason, d.position, d.original)),
                equal_to([('bad-json', 'a.jsonl#1', b'not json')]), label='bad')
    assert_that(missing | 'MissingReasons' >> beam.Map(lambda d: (d.reason, d.position, json.loads(d.original)['keys'])),
                equal_to([('missing-key', 'a.jsonl#4', {'id': '1'})]), label='missing')
    totals = counter_totals(pipeline.run(), 'changeflow.dynamodb')
    assert totals['records_received'] == 5 and totals['stream_records'] == 4
    assert totals['no_op_modifies'] == 1 and totals['ttl_deletes'] == 1 and totals['changes'] == 2
    assert totals['dead_lettered'] == 2
