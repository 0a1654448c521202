"""WriteDeadLetters / read_dead_letters: content-named files, re-runs, S3, failures."""

import datetime
import decimal
import json
import os
import re

import apache_beam as beam
import boto3
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from changeflow.io.dead_letter import BY_REASON_NAMESPACE, WriteDeadLetters, read_dead_letters
from changeflow.io.json_records import iso_utc, json_value, parse_iso_utc
from changeflow.metrics import counter_totals
from changeflow.model import DEAD_LETTER_TAG, DeadLetter, dead_letter
from tests.beam_helpers import local_pipeline

NAME = re.compile(r'^dead-letter-[0-9a-f]{20}\.jsonl$')
NOW = 1795356978_123456


def letters(time_us=NOW):
    return [
        DeadLetter('parse_audit', 'bad-line', 'no closing quote', b"20261122 14:16:18,vm,'x",
                   'audit.log#2', time_us),
        DeadLetter('decode', 'bad-gzip', 'not gzip', b'\x1f\x8b\x00\xff', 'stream/shard-0/7',
                   time_us + 1),
        DeadLetter('sql', 'needs-lookup', 'NOW() reads the clock near \udce9',
                   "UPDATE t SET x = NOW(), note = 'ü\n' WHERE id = 1".encode(), 'audit.log#1',
                   time_us + 2),
    ]


def run(path, elements, written=None, failed=None, options=None, **kwargs):
    """Runs the sink with checks of its outputs; returns its counters by name."""
    p = local_pipeline(options=options) if options else local_pipeline()
    result = p | beam.Create(elements) | WriteDeadLetters(path, **kwargs)
    if written is not None:
        assert_that(result.written | beam.Map(lambda f: f.records), written, label='Written')
    if failed is not None:
        assert_that(result[DEAD_LETTER_TAG], failed, label='NotWritten')
    outcome = p.run()
    outcome.wait_until_finish()
    return counter_totals(outcome, 'changeflow.write_dead_letters')


def test_lines_sorted_named_by_content_and_read_back(tmp_path):
    counters = run(str(tmp_path), letters(), written=equal_to([3]), failed=equal_to([]))
    assert counters == {'received': 3, 'written': 3, 'files_written': 1}
    (name,) = os.listdir(tmp_path)
    assert NAME.match(name)
    records = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    assert [r['position'] for r in records] == ['audit.log#1', 'audit.log#2', 'stream/shard-0/7']
    assert list(records[0]) == ['step', 'reason', 'detail', 'original_base64', 'position', 'time']
    assert records[1]['time'] == '2026-11-22T14:16:18.123456Z'
    assert sorted(read_dead_letters(str(tmp_path)), key=lambda l: l.position) == sorted(
        letters(), key=lambda l: l.position)
    assert list(read_dead_letters(str(tmp_path / name)))[0].original == letters()[2].original


def test_rerun_writes_the_same_file_whatever_the_rejection_time(tmp_path):
    run(str(tmp_path), letters())
    (name,) = os.listdir(tmp_path)
    before = (tmp_path / name).read_text().splitlines()
    run(str(tmp_path), letters(time_us=NOW + 60_000_000)[::-1])
    assert os.listdir(tmp_path) == [name]
    after = (tmp_path / name).read_text().splitlines()
    without_time = [{k: v for k, v in json.loads(line).items() if k != 'time'}
                    for line in before]
    assert [{k: v for k, v in json.loads(line).items() if k != 'time'}
            for line in after] == without_time
    assert json.loads(after[0])['time'] == '2026-11-22T14:17:18.123458Z'


def test_files_are_cut_and_unwritable_paths_return_the_letters(tmp_path):
    run(str(tmp_path / 'cut'), letters(), written=equal_to([2, 1]), records_per_file=2)
    assert len(os.listdir(tmp_path / 'cut')) == 2
    assert len(list(read_dead_letters(str(tmp_path / 'cut')))) == 3

    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    counters = run(str(blocker), letters(), written=equal_to([]), failed=equal_to(letters()))
    assert counters == {'received': 3, 'dead_lettered': 3}


def test_letters_written_are_counted_by_step_and_reason(tmp_path):
    """Summed over files (two of at most two lines); letters not written are not counted."""
    more = letters() + [letters()[0]._replace(position='audit.log#9')]
    for path, wanted in ((tmp_path / 'ok', {'parse_audit/bad-line': 2, 'decode/bad-gzip': 1,
                                           'sql/needs-lookup': 1}),
                         (tmp_path / 'a-file', {})):
        if path.name == 'a-file':
            path.write_text('')
        p = local_pipeline()
        _ = p | beam.Create(more) | WriteDeadLetters(str(path), records_per_file=2)
        outcome = p.run()
        outcome.wait_until_finish()
        assert counter_totals(outcome, BY_REASON_NAMESPACE) == wanted


def test_a_url_password_in_a_detail_is_masked():
    letter = dead_letter('write_database', 'database-error',
                         "cannot reach mysql+pymysql://cf:s3cr3t@db:3306/shop: refused", b'x', 'p')
    assert letter.detail == 'cannot reach mysql+pymysql://cf:***@db:3306/shop: refused'
    assert letter.original == b'x'


def test_s3_round_trip(aws_env):
    s3 = boto3.client('s3', endpoint_url=aws_env)
    s3.create_bucket(Bucket='errors')
    options = PipelineOptions([
        f'--s3_endpoint_url={aws_env}', '--s3_access_key_id=testing',
        '--s3_secret_access_key=testing', '--s3_region_name=us-east-1'])
    run('s3://errors/dead/', letters(), written=equal_to([3]), options=options)
    (key,) = [o['Key'] for o in s3.list_objects_v2(Bucket='errors')['Contents']]
    assert key.startswith('dead/') and NAME.match(key[len('dead/'):])
    body = s3.get_object(Bucket='errors', Key=key)['Body'].read()
    assert len(body.splitlines()) == 3
    assert sorted(read_dead_letters('s3://errors/dead')) == sorted(letters())


def test_json_helpers():
    assert parse_iso_utc(iso_utc(NOW)) == NOW
    assert iso_utc(0) == '1970-01-01T00:00:00.000000Z'
    assert orjson.dumps(json_value(
        [decimal.Decimal('1E+2'), b'\x00', datetime.date(2026, 1, 2), {3, 1}, float('nan')])
    ) == b'["100","AA==","2026-01-02",[1,3],"nan"]'
