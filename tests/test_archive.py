"""ReadArchive on the recorded kinesis.jsonl, firehose.gz and server_audit.log.

Variants (CLI v1 output, get-records responses, CRLF, double gzip) and poison
files are derived from the recorded files in tmp_path, each next to its test.
"""

import base64
import datetime
import gzip
import json
import os

import apache_beam as beam
import boto3
import pytest
from apache_beam.testing.util import assert_that, equal_to
from beam_helpers import local_pipeline

from changeflow.io.archive import FORMATS, ReadArchive
from changeflow.metrics import counter_totals
from changeflow.model import DEAD_LETTER_TAG, LogEvent, SourceRecord
from changeflow.transforms.audit_log import ParseAuditLines, parse_audit_line
from changeflow.transforms.decode import DecodeCloudWatchRecords

FIRST_ARRIVAL_MS = 1795556448468  # record 1: "2026-11-24T21:40:48.468000+00:00"


@pytest.fixture(scope='module')
def kinesis_rows(audit_dir):
    with open(os.path.join(audit_dir, 'kinesis.jsonl')) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def members(kinesis_rows):
    """The gzip payloads in order; firehose.gz is exactly their concatenation."""
    return [base64.b64decode(row['Data']) for row in kinesis_rows]


@pytest.fixture(scope='module')
def lines(audit_dir):
    with open(os.path.join(audit_dir, 'server_audit.log'), encoding='utf-8') as f:
        return f.read().split('\n')[:-1]


def arrival_ms(row):
    when = datetime.datetime.fromisoformat(row['ApproximateArrivalTimestamp'])
    return int(when.timestamp() * 1000 + 0.5)


def strip(dead):
    return dead | 'StripDeadLetters' >> beam.Map(
        lambda d: (d.step, d.reason, d.original, d.position))


def run(pipeline):
    result = pipeline.run()
    result.wait_until_finish()
    return counter_totals(result, 'changeflow.read_archive')


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


# kinesis-jsonl

def test_kinesis_jsonl(audit_dir, kinesis_rows, members):
    path = os.path.join(audit_dir, 'kinesis.jsonl')
    assert arrival_ms(kinesis_rows[0]) == FIRST_ARRIVAL_MS
    pipeline = local_pipeline()
    records, dead = pipeline | ReadArchive('kinesis-jsonl', path)
    assert_that(records, equal_to([
        SourceRecord(data, path, '', row['SequenceNumber'], arrival_ms(row))
        for row, data in zip(kinesis_rows, members)]), label='records')
    assert_that(dead, equal_to([]), label='no dead letters')
    assert run(pipeline) == {'files': 1, 'records': 15, 'dead_lettered': 0}


def test_kinesis_jsonl_cli_v1_numbers_shard_ids_and_get_records_responses(
        tmp_path, kinesis_rows, members):
    # Recorded rows reshaped: row 1 as AWS CLI v1 prints it (epoch seconds) with
    # a ShardId; rows 2-3 as one whole get-records response; a blank line.
    v1 = {**kinesis_rows[0], 'ApproximateArrivalTimestamp': FIRST_ARRIVAL_MS / 1000,
          'ShardId': 'shardId-000000000001'}
    response = {'Records': kinesis_rows[1:3], 'NextShardIterator': 'AAAA', 'MillisBehindLatest': 0}
    path = write(tmp_path / 'v1.jsonl', '\n'.join(
        [json.dumps(v1), '', json.dumps(response), '']).encode())
    pipeline = local_pipeline()
    records, dead = pipeline | ReadArchive('kinesis-jsonl', path)
    assert_that(records, equal_to([
        SourceRecord(members[0], path, 'shardId-000000000001', '1', FIRST_ARRIVAL_MS),
        SourceRecord(members[1], path, '', '2', arrival_ms(kinesis_rows[1])),
        SourceRecord(members[2], path, '', '3', arrival_ms(kinesis_rows[2])),
    ]), label='records')
    assert_that(dead, equal_to([]), label='no dead letters')
    run(pipeline)


def test_kinesis_jsonl_poison_lines_are_dead_lettered(tmp_path, kinesis_rows, members):
    bad_base64 = json.dumps({**kinesis_rows[1], 'Data': kinesis_rows[1]['Data'][:-3] + '*=='})
    no_data = {k: v for k, v in kinesis_rows[3].items() if k != 'Data'}
    response = json.dumps({'Records': [kinesis_rows[2], no_data]})
    bad_time = json.dumps({**kinesis_rows[4], 'ApproximateArrivalTimestamp': 'yesterday'})
    text = [json.dumps(kinesis_rows[0]), '{"SequenceNumber": "2", "Data": ', bad_base64,
            response, bad_time, json.dumps(kinesis_rows[5])]
    path = write(tmp_path / 'poison.jsonl', ('\n'.join(text) + '\n').encode())
    pipeline = local_pipeline()
    records, dead = pipeline | ReadArchive('kinesis-jsonl', path)
    assert_that(records | 'Sequences' >> beam.Map(lambda r: (r.sequence, r.data)),
                equal_to([('1', members[0]), ('3', members[2]), ('6', members[5])]),
                label='good records')
    assert_that(strip(dead), equal_to([
        ('read_archive', 'bad-json', text[1].encode(), f'{path}:2'),
        ('read_archive', 'bad-base64', bad_base64.encode(), f'{path}:3'),
        ('read_archive', 'bad-record', json.dumps(no_data, separators=(',', ':')).encode(),
         f'{path}:4[1]'),
        ('read_archive', 'bad-record', bad_time.encode(), f'{path}:5'),
    ]), label='dead letters')
    assert run(pipeline) == {'files': 1, 'records': 3, 'dead_lettered': 4}


# firehose

def test_firehose(audit_dir, members):
    path = os.path.join(audit_dir, 'firehose.gz')
    with open(path, 'rb') as f:
        assert f.read() == b''.join(members)
    pipeline = local_pipeline()
    records, dead = pipeline | ReadArchive('firehose', path)
    # Each member's compressed bytes, exactly what Kinesis carried.
    assert_that(records, equal_to([SourceRecord(data, path, '', f'{n:010d}', 0)
                                   for n, data in enumerate(members)]), label='records')
    assert_that(dead, equal_to([]), label='no dead letters')
    assert run(pipeline) == {'files': 1, 'records': 15, 'dead_lettered': 0}


def test_firehose_compressed_again_and_globbed(tmp_path, members):
    # Firehose compression on top of the CloudWatch gzip: the object is
    # gzip(concatenated members). A glob reads it with a plain copy.
    plain = write(tmp_path / 'plain-1.gz', b''.join(members))
    double = write(tmp_path / 'double-1.gz', gzip.compress(b''.join(members)))
    pipeline = local_pipeline()
    records, dead = pipeline | ReadArchive('firehose', str(tmp_path / '*-1.gz'))
    assert_that(records, equal_to(
        [SourceRecord(data, plain, '', f'{n:010d}', 0) for n, data in enumerate(members)]
        + [SourceRecord(data, double, '', f'{n:010d}', 0) for n, data in enumerate(members)]),
        label='records')
    assert_that(dead, equal_to([]), label='no dead letters')
    assert run(pipeline) == {'files': 2, 'records': 30, 'dead_lettered': 0}


def test_firehose_corrupt_members_are_dead_lettered_and_reading_goes_on(tmp_path, members):
    # The recorded members with: member 5 damaged inside its deflate data, junk
    # between members 9 and 10, and the last member cut short.
    damaged = bytearray(members[5])
    damaged[len(damaged) // 2] ^= 0xFF
    junk = b'\x1f\x8b\x08 not a member \x1f\x8b'
    cut = members[14][:len(members[14]) // 2]
    chunks = [*members[:5], bytes(damaged), *members[6:10], junk, *members[10:14], cut]
    path = write(tmp_path / 'corrupt.gz', b''.join(chunks))
    pipeline = local_pipeline()
    records, dead = pipeline | ReadArchive('firehose', path)
    good = [n for n, chunk in enumerate(chunks) if n not in (5, 10, 15)]
    assert_that(records, equal_to([SourceRecord(chunks[n], path, '', f'{n:010d}', 0)
                                   for n in good]), label='good members')
    assert_that(strip(dead), equal_to([
        ('read_archive', 'bad-gzip', chunks[n], f'{path}#{n:010d}') for n in (5, 10, 15)]),
        label='dead letters')
    assert run(pipeline) == {'files': 1, 'records': 13, 'dead_lettered': 3}


def test_firehose_compressed_again_with_a_cut_outer_member(tmp_path, members):
    # Firehose compression on top, written as two outer gzip members (a valid
    # multi-member gzip of the concatenated CloudWatch members), the second cut
    # short: the first outer member's payloads come through, the cut one is
    # dead-lettered whole so it can be replayed.
    outer_first = gzip.compress(b''.join(members[:7]))
    outer_cut = gzip.compress(b''.join(members[7:]))[:-20]
    path = write(tmp_path / 'double-cut.gz', outer_first + outer_cut)
    pipeline = local_pipeline()
    records, dead = pipeline | ReadArchive('firehose', path)
    assert_that(records, equal_to([SourceRecord(data, path, '', f'{n:010d}', 0)
                                   for n, data in enumerate(members[:7])]), label='records')
    assert_that(strip(dead), equal_to([
        ('read_archive', 'bad-gzip', outer_cut, f'{path}#outer0000000001')]),
        label='dead letters')
    assert run(pipeline) == {'files': 1, 'records': 7, 'dead_lettered': 1}


def test_firehose_file_that_is_not_gzip(tmp_path, audit_dir):
    with open(os.path.join(audit_dir, 'server_audit.log'), 'rb') as f:
        text = f.read()
    path = write(tmp_path / 'wrong.gz', text)
    pipeline = local_pipeline()
    records, dead = pipeline | ReadArchive('firehose', path)
    assert_that(records, equal_to([]), label='no records')
    assert_that(strip(dead), equal_to([('read_archive', 'bad-gzip', text, f'{path}#0000000000')]),
                label='dead letters')
    run(pipeline)


# server-audit

def test_server_audit(audit_dir, lines):
    path = os.path.join(audit_dir, 'server_audit.log')
    pipeline = local_pipeline()
    events, dead = pipeline | ReadArchive('server-audit', path)
    assert_that(events, equal_to([
        LogEvent(text, '', path, str(n), 0, f'{path}:{n}') for n, text in enumerate(lines, 1)]),
        label='log events')
    assert_that(dead, equal_to([]), label='no dead letters')
    assert run(pipeline) == {'files': 1, 'lines': 101, 'dead_lettered': 0}


def test_server_audit_crlf_and_invalid_utf8(tmp_path, lines):
    # The recorded log with CRLF line ends, and line 15 ('Zoë', 'Ünïcode')
    # re-encoded as Latin-1, which is not UTF-8.
    raw = [text.encode('utf-8') for text in lines]
    raw[14] = lines[14].encode('latin-1')
    path = write(tmp_path / 'server_audit.log', b''.join(line + b'\r\n' for line in raw))
    pipeline = local_pipeline()
    events, dead = pipeline | ReadArchive('server-audit', path)
    assert_that(events | 'Messages' >> beam.Map(lambda e: (e.position, e.message)), equal_to([
        (f'{path}:{n}', text) for n, text in enumerate(lines, 1) if n != 15]),
        label='log events')
    assert_that(strip(dead), equal_to([('read_archive', 'bad-utf8', raw[14], f'{path}:15')]),
                label='dead letters')
    assert run(pipeline) == {'files': 1, 'lines': 100, 'dead_lettered': 1}


# all formats

def test_every_format_yields_the_same_audit_events(audit_dir, lines):
    # Line 91 is cut at the query log limit: it passes on marked truncated.
    expected = [parse_audit_line(text, keep_truncated=True)[:10] for text in lines]
    pipeline = local_pipeline()
    for fmt, name in (('kinesis-jsonl', 'kinesis.jsonl'), ('firehose', 'firehose.gz'),
                      ('server-audit', 'server_audit.log')):
        main, _ = pipeline | f'Read {fmt}' >> ReadArchive(fmt, os.path.join(audit_dir, name))
        if fmt != 'server-audit':
            main, _ = main | f'Decode {fmt}' >> DecodeCloudWatchRecords()
        events, dead = main | f'Parse {fmt}' >> ParseAuditLines()
        assert_that(events | f'Fields {fmt}' >> beam.Map(lambda e: e[:10]), equal_to(expected),
                    label=f'events from {fmt}')
        assert_that(dead | f'Reasons {fmt}' >> beam.Map(lambda d: d.reason),
                    equal_to([]), label=f'dead letters from {fmt}')
        assert_that(events | f'Cut {fmt}' >> beam.Filter(lambda e: e.truncated)
                    | f'Cut ids {fmt}' >> beam.Map(lambda e: e.query_id),
                    equal_to([parse_audit_line(lines[90], keep_truncated=True).query_id]),
                    label=f'truncated from {fmt}')
    run(pipeline)


def test_reads_from_s3(aws_env, members):
    s3 = boto3.client('s3')
    s3.create_bucket(Bucket='changeflow-archive')
    s3.put_object(Bucket='changeflow-archive', Key='audit/2026/11/24/part-1.gz',
                  Body=b''.join(members))
    pipeline = local_pipeline(argv=[
        '--s3_endpoint_url', aws_env, '--s3_region_name', 'us-east-1',
        '--s3_access_key_id', 'testing', '--s3_secret_access_key', 'testing'])
    records, dead = pipeline | ReadArchive('firehose', 's3://changeflow-archive/audit/*/*/*/*.gz')
    path = 's3://changeflow-archive/audit/2026/11/24/part-1.gz'
    assert_that(records, equal_to([SourceRecord(data, path, '', f'{n:010d}', 0)
                                   for n, data in enumerate(members)]), label='records')
    assert_that(dead, equal_to([]), label='no dead letters')
    run(pipeline)


def test_outputs_are_named():
    for fmt in FORMATS:
        outputs = beam.Pipeline() | ReadArchive(fmt, '/nonexistent/*')
        assert outputs[ReadArchive.MAIN] is not None and outputs[DEAD_LETTER_TAG] is not None


def test_unknown_format_and_empty_path_are_rejected():
    with pytest.raises(ValueError) as e:
        ReadArchive('parquet', '/tmp/x')
    assert "'parquet'" in str(e.value) and all(fmt in str(e.value) for fmt in FORMATS)
    with pytest.raises(ValueError, match='path'):
        ReadArchive('firehose', '')
