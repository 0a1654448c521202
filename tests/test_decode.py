"""decode_record and DecodeCloudWatchRecords on the recorded CloudWatch -> Kinesis payloads.

Poison records are derived from the recorded ones (cut, corrupted, re-encoded),
each built next to the assertion that uses it.
"""

import base64
import gzip
import json
import os
import random

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to
from beam_helpers import local_pipeline

from changeflow.metrics import counter_totals
from changeflow.model import DEAD_LETTER_TAG, LogEvent, SourceRecord
from changeflow.transforms.decode import (
    DecodeCloudWatchRecords,
    DecodeError,
    decode_record,
)

LOG_GROUP = '/aws/rds/instance/shop-db/audit'
LOG_STREAM = 'shop-db.audit.log.0.2026-11-24-00-00.0.0'
SHARD = 'shardId-000000000000'

# The health check AWS sends to a new subscription (documented shape).
CONTROL_MESSAGE = {
    'messageType': 'CONTROL_MESSAGE', 'owner': 'CloudwatchLogs', 'logGroup': '',
    'logStream': '', 'subscriptionFilters': [],
    'logEvents': [{'id': '', 'timestamp': 1795556448000,
                   'message': 'CWL CONTROL MESSAGE: Checking health of destination Kinesis stream.'}]}


@pytest.fixture(scope='module')
def lines(audit_dir):
    with open(os.path.join(audit_dir, 'server_audit.log'), encoding='utf-8') as f:
        return f.read().split('\n')[:-1]


@pytest.fixture(scope='module')
def records(audit_dir):
    """The recorded Kinesis records as SourceRecords, in sequence order."""
    with open(os.path.join(audit_dir, 'kinesis.jsonl')) as f:
        rows = [json.loads(row) for row in f]
    return [SourceRecord(base64.b64decode(row['Data']), 'audit', SHARD, row['SequenceNumber'], 0)
            for row in rows]


@pytest.fixture(scope='module')
def firehose(audit_dir):
    with open(os.path.join(audit_dir, 'firehose.gz'), 'rb') as f:
        return f.read()


def envelope(record):
    return json.loads(gzip.decompress(record.data))


def with_data(record, data, sequence=None):
    return record._replace(data=data, sequence=sequence or record.sequence)


def test_every_kinesis_record_decodes_to_the_log_lines_in_order(records, lines):
    assert len(records) == 15
    messages = []
    for record in records:
        events = decode_record(record)
        raw = envelope(record)['logEvents']
        assert [e.message for e in events] == [r['message'] for r in raw]
        for index, event in enumerate(events):
            assert event.log_group == LOG_GROUP and event.log_stream == LOG_STREAM
            assert event.event_id == str(raw[index]['id'])  # moto sends an int: kept as str
            assert event.timestamp_ms == raw[index]['timestamp']
            assert event.position == f'audit/{SHARD}/{record.sequence}@{index}'
        messages.extend(e.message for e in events)
    assert messages == lines


def test_firehose_object_with_concatenated_members_decodes_as_one_record(firehose, lines):
    record = SourceRecord(firehose, 's3://bucket/audit.gz', '', '0', 0)
    events = decode_record(record)
    assert [e.message for e in events] == lines
    assert [e.position for e in events[:2]] == ['s3://bucket/audit.gz#0@0',
                                                's3://bucket/audit.gz#0@1']
    assert len({e.position for e in events}) == len(lines)


def test_gzip_inside_gzip_and_plain_json(records, firehose, lines):
    double = SourceRecord(gzip.compress(firehose), 'f', '', '0', 0)
    assert [e.message for e in decode_record(double)] == lines
    first = records[0]
    plain = with_data(first, gzip.decompress(first.data))
    assert decode_record(plain) == decode_record(first)


def test_aws_string_event_ids_are_kept(records):
    # The recorded envelope with ids as AWS sends them: 56-digit strings.
    doc = envelope(records[0])
    ids = [f'{37_000_000_000_000_000 + i:056d}' for i in range(len(doc['logEvents']))]
    for event, event_id in zip(doc['logEvents'], ids):
        event['id'] = event_id
    events = decode_record(with_data(records[0], gzip.compress(orjson.dumps(doc))))
    assert [e.event_id for e in events] == ids


def test_control_message_has_no_events(records):
    control = with_data(records[0], gzip.compress(json.dumps(CONTROL_MESSAGE).encode()))
    assert decode_record(control) == []


def poison_records(records):
    """(record, reason) pairs, each derived from a recorded record."""
    first, second, third = records[0], records[1], records[2]
    payload = gzip.decompress(second.data)
    no_events = envelope(third)
    del no_events['logEvents']
    bad_timestamp = envelope(third)
    bad_timestamp['logEvents'][1]['timestamp'] = '2026-11-24T21:40:48Z'
    flipped = bytearray(first.data)
    flipped[len(flipped) // 2] ^= 0xFF  # inside the deflate stream
    return [
        (with_data(first, first.data[:len(first.data) // 2], 'p-cut-gzip'), 'bad-gzip'),
        (with_data(first, bytes(flipped), 'p-flipped-gzip'), 'bad-gzip'),
        (with_data(first, first.data + b'trailing junk', 'p-trailing'), 'bad-gzip'),
        (with_data(first, b'\x00\x01binary', 'p-not-gzip'), 'bad-gzip'),
        (with_data(second, gzip.compress(payload[:-40]), 'p-cut-json'), 'bad-json'),
        (with_data(second, gzip.compress(payload.replace(
            b'READ,mysql,column_stats', b'READ,mysql,column_\xffstats', 1)), 'p-latin1'),
         'bad-utf8'),
        (with_data(third, gzip.compress(orjson.dumps(no_events)), 'p-no-events'),
         'bad-envelope'),
        (with_data(third, gzip.compress(orjson.dumps(bad_timestamp)), 'p-str-ts'),
         'bad-envelope'),
        (with_data(third, gzip.compress(b'[1, 2]'), 'p-array'), 'bad-envelope'),
        (with_data(third, gzip.compress(orjson.dumps({**envelope(third), 'messageType': 'DATA'})),
                   'p-type'), 'bad-envelope'),
    ]


def test_poison_records_raise_decode_error_with_reason(records):
    for record, reason in poison_records(records):
        with pytest.raises(DecodeError) as e:
            decode_record(record)
        assert e.value.reason == reason, record.sequence
        assert e.value.detail


def test_any_corruption_is_a_decode_error_never_a_crash(records):
    # Seeded mutations of recorded records: cuts, byte flips, insertions, and
    # the same inside a valid gzip (so the JSON parser sees them).
    rng = random.Random(7)
    for _ in range(1500):
        record = rng.choice(records)
        data = bytearray(record.data if rng.random() < 0.5 else gzip.decompress(record.data))
        for _ in range(rng.randrange(1, 4)):
            if not data:
                break
            at = rng.randrange(len(data))
            kind = rng.randrange(3)
            if kind == 0:
                del data[at:]
            elif kind == 1:
                data[at] = rng.randrange(256)
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        data = bytes(data) if data[:2] == b'\x1f\x8b' else gzip.compress(bytes(data))
        try:
            events = decode_record(with_data(record, data))
        except DecodeError as e:
            assert e.reason in {'bad-gzip', 'bad-json', 'bad-utf8', 'bad-envelope'}
        else:
            assert all(isinstance(e, LogEvent) and isinstance(e.message, str) for e in events)


def test_decode_pipeline_routes_poison_and_keeps_good_records(records, lines):
    poison = poison_records(records)
    control = with_data(records[0], gzip.compress(json.dumps(CONTROL_MESSAGE).encode()),
                        'control')
    pipeline = local_pipeline()
    outputs = (pipeline
               | beam.Create(records + [record for record, _ in poison] + [control])
               | DecodeCloudWatchRecords())
    events = outputs[DecodeCloudWatchRecords.MAIN]

    def in_order(elements):
        ordered = sorted(elements, key=lambda e: (int(e.position.split('/')[-1].split('@')[0]),
                                                  int(e.position.split('@')[1])))
        return [[e.message for e in ordered]]

    assert_that(events | 'All' >> beam.combiners.ToList() | 'Order' >> beam.FlatMap(in_order),
                equal_to([lines]), label='log events in order')
    assert_that(
        outputs[DEAD_LETTER_TAG] | 'Strip' >> beam.Map(
            lambda d: (d.step, d.reason, d.original, d.position)),
        equal_to([('decode', reason, record.data, record.position) for record, reason in poison]),
        label='dead letters')
    result = pipeline.run()
    result.wait_until_finish()
    counters = counter_totals(result, 'changeflow.decode')
    assert counters == {'records_received': 15 + len(poison) + 1, 'control_messages': 1,
                        'log_events': 101, 'dead_lettered': len(poison)}
