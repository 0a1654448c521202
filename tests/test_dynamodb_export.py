"""DynamoDB's export to S3 (DYNAMODB_JSON): the recorded fixture, locally and through moto's S3."""

import decimal
import gzip
import os
import shutil
import uuid

import boto3
import pytest

from changeflow.dynamodb.exports import ExportError, export_records, read_summary
from changeflow.dynamodb.records import (
    EventName, StreamRecord, decode_record, dynamodb_version, export_version, to_change)
from changeflow.model import DeadLetter

EXPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'dynamodb', 'export')
FOLDER = os.path.join(EXPORT, 'AWSDynamoDB', '01764583200000-5e1f2a3b')
KEYS = ['id', 'title']
D = decimal.Decimal


def test_the_fixture_reads_as_the_tables_initial_state():
    summary = read_summary(FOLDER)
    assert summary.table == 'prod-Card' and summary.item_count == 3 and len(summary.files) == 3
    assert summary.export_time_us == 1796119200_123000
    records = list(export_records(os.path.join(FOLDER, 'manifest-summary.json'), KEYS))
    assert all(isinstance(r, StreamRecord) and r.event is EventName.INSERT for r in records)
    assert {r.version for r in records} == {export_version(summary.export_time_us)}
    rows = {r.keys.get('id'): r.new_image.as_dict() for r in records}
    assert rows[D(1)]['price'] == D('12.50') and rows[D(3)]['blob'] == b'\x00\xff'
    assert rows[D(3)]['big'] == D('12345678901234567890123456789012345678')
    change = to_change(records[1], KEYS)
    assert change.key == (2, 'second')
    assert dict(change.ops[0].values)['meta'] == {'dims': [8.5, 11, None], 'seen': True}


def test_seeding_then_the_stream_converges_whatever_the_order():
    export = [r for r in export_records(FOLDER, KEYS)]
    t = 1796119200_123000

    def stream(event, i, title, seq, created, new=None, old=None):
        body = {'SequenceNumber': str(seq), 'ApproximateCreationDateTime': created / 1e6,
                'Keys': {'id': {'N': str(i)}, 'title': {'S': title}},
                'StreamViewType': 'NEW_AND_OLD_IMAGES'}
        if new:
            body['NewImage'] = new
        if old:
            body['OldImage'] = old
        return decode_record({'eventName': event, 'dynamodb': body}, table='prod-Card')

    row2 = {'id': {'N': '2'}, 'title': {'S': 'second'}}
    records = export + [
        # Before the export (already in it): sorts before the export, changes nothing.
        stream('MODIFY', 1, 'first', 100, t - 2_000_000, new={'id': {'N': '1'}, 'title': {'S': 'first'},
                                                             'price': {'N': '1'}}, old=row2),
        # After it: a new price for 2, item 3 removed.
        stream('MODIFY', 2, 'second', 101, t + 500_000, new={**row2, 'price': {'N': '9'}}, old=row2),
        stream('REMOVE', 3, 'third', 102, t + 600_000, old={'id': {'N': '3'}, 'title': {'S': 'third'}}),
    ]
    expected = None
    for ordering in (records, records[::-1], records[2:] + records[:2]):
        state, versions = {}, {}
        for r in ordering:                        # the replica's version guard
            change = to_change(r, KEYS)
            if change.version <= versions.get(change.key, ''):
                continue
            versions[change.key] = change.version
            [op] = change.ops
            state[change.key] = None if op.kind.value == 'delete' else dict(op.values)
        live = {k: v for k, v in state.items() if v is not None}
        expected = expected or live
        assert live == expected
    assert set(expected) == {(1, 'first'), (2, 'second')}
    assert expected[(1, 'first')]['price'] == D('12.50')      # the export's, not the older record's
    assert expected[(2, 'second')]['price'] == D(9)
    assert dynamodb_version(t - 2_000_000, 100) < export[0].version < dynamodb_version(t, 1)


@pytest.fixture
def copy(tmp_path):
    target = tmp_path / 'export'
    shutil.copytree(FOLDER, target)
    return target


def test_a_truncated_data_file_is_loud(copy):
    data = sorted((copy / 'data').iterdir())[0]
    lines = gzip.decompress(data.read_bytes()).splitlines(keepends=True)
    data.write_bytes(gzip.compress(b''.join(lines[:-1])))
    with pytest.raises(ExportError, match='MD5 differs'):
        list(export_records(str(copy), KEYS))
    manifest = copy / 'manifest-files.json'
    manifest.write_text(manifest.read_text().replace('"md5Checksum": ', '"md5": '))  # no MD5
    with pytest.raises(ExportError, match='1 items, the manifest says 2'):
        list(export_records(str(copy), KEYS))


def test_summary_and_files_must_agree(copy):
    summary = copy / 'manifest-summary.json'
    summary.write_text(summary.read_text().replace('"itemCount": 3', '"itemCount": 4'))
    with pytest.raises(ExportError, match='hold 3 items, the summary says 4'):
        read_summary(str(copy))
    summary.write_text(summary.read_text().replace('"DYNAMODB_JSON"', '"ION"'))
    with pytest.raises(ExportError, match='only DYNAMODB_JSON'):
        read_summary(str(copy))


def test_a_bad_item_is_a_dead_letter_and_the_others_are_read(copy):
    data = sorted((copy / 'data').iterdir())[1]
    data.write_bytes(gzip.compress(b'{"Item": {"id": {"N": "4"}, "title": {"S": "x"}, "v": {"N": "1e999"}}}\n'))
    manifest = copy / 'manifest-files.json'
    manifest.write_text(manifest.read_text().replace('"md5Checksum": ', '"md5": '))
    out = list(export_records(str(copy), KEYS))
    letters = [o for o in out if isinstance(o, DeadLetter)]
    assert len(out) == 3 and len(letters) == 1
    assert letters[0].reason == 'bad-attribute-value' and 'Item.v' in letters[0].detail
    assert letters[0].original.startswith(b'{"Item"') and letters[0].position.endswith('.json.gz#1')


def test_reads_from_s3(moto_endpoint):
    s3 = boto3.client('s3', endpoint_url=moto_endpoint, region_name='us-east-1',
                      aws_access_key_id='testing', aws_secret_access_key='testing')
    bucket = f'cards-export-{uuid.uuid4().hex[:6]}'
    s3.create_bucket(Bucket=bucket)
    for root, _, files in os.walk(EXPORT):
        for name in files:
            path = os.path.join(root, name)
            s3.upload_file(path, bucket, 'cards/' + os.path.relpath(path, EXPORT).replace(os.sep, '/'))
    url = f's3://{bucket}/cards/AWSDynamoDB/01764583200000-5e1f2a3b'
    remote = list(export_records(url, KEYS, s3=s3))
    local = list(export_records(FOLDER, KEYS))
    assert [r.new_image for r in remote] == [r.new_image for r in local] and len(remote) == 3
    assert remote[0].position.startswith(f'{url}/data/')
