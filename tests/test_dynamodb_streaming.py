"""The unbounded DynamoDB job on the local runner: a table's stream (moto's
server) read by the splittable DoFn until a test-only record count, windowed
and written; its outputs equal the catch-up job's and the table's scan."""

import json
import time

import apache_beam as beam
import pytest
import yaml

from changeflow.config import load_config
from changeflow.handlers import Handlers
from changeflow.io.dead_letter import read_dead_letters
from changeflow.metrics import counter_totals
from changeflow.pipelines import audit_sync, dynamodb_sync
from test_dynamodb_live import destination_job, kinesis_destination, live_job, write_more
from test_dynamodb_sync import (
    create_table, expected_row, parquet_rows, replica, run_job, scan,
    stream_lines, write_workload)
from test_handlers_moto import _recorder
from test_streaming import DETERMINISTIC, stateful_key_coders

RECORDS = 16  # what write_workload puts on the stream, and four more writes


@pytest.fixture
def table(moto_endpoint):
    return create_table(moto_endpoint)


def streaming_run(config_path, handlers=None, records=RECORDS):
    config = load_config(config_path)
    p = beam.Pipeline(options=audit_sync.pipeline_options(
        ['--streaming', f'--stream_max_records={records}']))
    dynamodb_sync.build_pipeline(p, config, handlers=handlers)
    result = p.run()
    result.wait_until_finish()
    return counter_totals(result)


def outputs(folder):
    """The Parquet rows (files may split otherwise by window) and the notifications."""
    rows = sorted(json.dumps(row, sort_keys=True, default=str)
                  for row in parquet_rows(folder / 'out' / 'backup'))
    notes = sorted((folder / 'out' / 'notifications.jsonl').read_text().splitlines())
    return rows, notes


def events_by_key(path):
    got = {}
    for kind, k, version, *_ in map(json.loads, path.read_text().splitlines()):
        got.setdefault(tuple(k), []).append((version, kind))
    return got


def one_second_windows(config_path):
    raw = yaml.safe_load(open(config_path, encoding='utf-8'))
    raw['window'] = {'seconds': 1}
    with open(config_path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f)
    return config_path


def test_the_unbounded_run_equals_the_catch_up_run_and_a_scan(table, tmp_path, aws_env):
    name, ddb, streams = table
    write_workload(ddb, name)
    time.sleep(1.1)    # a second window: rows 1, 2 and 6 change in both
    write_more(ddb, name)
    created = [json.loads(line)['dynamodb']['ApproximateCreationDateTime']
               for line in stream_lines(ddb, streams, name)]
    assert len(created) == RECORDS and created[-1] - created[RECORDS - 5] >= 1
    (tmp_path / 'stream').mkdir()
    (tmp_path / 'catch-up').mkdir()
    streamed = one_second_windows(live_job(
        tmp_path / 'stream', name, f'sqlite:///{tmp_path}/stream.db', 'cards', aws_env))
    caught_up = live_job(tmp_path / 'catch-up', name, f'sqlite:///{tmp_path}/catch-up.db',
                         'cards', aws_env)
    handlers = Handlers()
    handlers.on(name, name='all')(_recorder(str(tmp_path / 'events.jsonl')))

    totals = streaming_run(streamed, handlers)
    assert totals['changeflow.read_stream.records'] == RECORDS
    assert 'changeflow.read_dynamodb_streams.records' not in totals   # not the catch-up reader
    run_job(caught_up)
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert sorted(expected) == [(2, 'card 2'), (7, 'card 7')]
    assert replica(f'sqlite:///{tmp_path}/stream.db', 'cards') == expected
    assert replica(f'sqlite:///{tmp_path}/catch-up.db', 'cards') == expected
    assert outputs(tmp_path / 'stream') == outputs(tmp_path / 'catch-up')
    assert len(outputs(tmp_path / 'stream')[0]) == RECORDS - 1     # the no-op MODIFY is no row
    for folder in ('stream', 'catch-up'):
        assert list(read_dead_letters(str(tmp_path / folder / 'out' / 'dead-letter'))) == []
    # The handler saw every event once, each key's in version order.
    events = events_by_key(tmp_path / 'events.jsonl')
    assert sum(map(len, events.values())) == RECORDS - 1
    assert all(e == sorted(e) for e in events.values())

    # Restarted from the trim horizon (no runner checkpoint): a replay changes
    # nothing and calls the handler for nothing again.
    before = (replica(f'sqlite:///{tmp_path}/stream.db', 'cards'), outputs(tmp_path / 'stream'))
    totals = streaming_run(streamed, handlers)
    assert totals['changeflow.handlers.already_done'] == RECORDS - 1
    assert (replica(f'sqlite:///{tmp_path}/stream.db', 'cards'),
            outputs(tmp_path / 'stream')) == before
    assert events_by_key(tmp_path / 'events.jsonl') == events


def test_the_unbounded_run_of_the_kinesis_destination_equals_a_scan(table, tmp_path, aws_env):
    name, ddb, streams = table
    write_workload(ddb, name)   # 12 records
    config = destination_job(
        live_job(tmp_path, name, f'sqlite:///{tmp_path}/r.db', 'cards', aws_env),
        kinesis_destination(ddb, streams, name), aws_env)
    assert load_config(config).source.format == 'dynamodb-kinesis'

    totals = streaming_run(config, records=12)
    assert totals['changeflow.read_stream.records'] == 12
    expected = {row: expected_row(image) for row, image in scan(ddb, name).items()}
    assert replica(f'sqlite:///{tmp_path}/r.db', 'cards') == expected
    assert list(read_dead_letters(str(tmp_path / 'out' / 'dead-letter'))) == []


def test_a_seeded_job_is_refused_in_streaming(tmp_path):
    config = live_job(tmp_path, 'cards', 'sqlite://', 'cards', 'http://127.0.0.1:9',
                      seed={'export': str(tmp_path)})
    p = beam.Pipeline(options=audit_sync.pipeline_options(['--streaming']))
    with pytest.raises(ValueError, match='does not seed from an export'):
        dynamodb_sync.build_pipeline(p, load_config(config))


def test_the_handlers_state_key_has_a_deterministic_coder(tmp_path):
    """On Flink and Dataflow a key's encoding decides where its state lives."""
    config = live_job(tmp_path, 'cards', 'sqlite://', 'cards', 'http://127.0.0.1:9')
    handlers = Handlers()
    handlers.on('cards', name='all')(_recorder(str(tmp_path / 'events.jsonl')))
    p = beam.Pipeline(options=audit_sync.pipeline_options(['--streaming']))
    dynamodb_sync.build_pipeline(p, load_config(config), handlers=handlers)
    stateful = stateful_key_coders(p)
    assert set(stateful) == {'Handlers/HandleInOrder/ParDo(_HandleInOrderFn)'}
    assert all(set(coders) <= DETERMINISTIC for coders in stateful.values()), stateful
