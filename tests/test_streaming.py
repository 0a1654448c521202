"""The unbounded mode end to end on the local runner: audit lines through a
CloudWatch Logs subscription filter into Kinesis (moto's server), read by the
splittable DoFn until a test-only record count, replayed per connection in
state, windowed, written; the outputs equal the archive run's."""

import json
import os

import yaml

from changeflow.pipelines import audit_sync
from equivalence import snapshot
from test_audit_sync_e2e import AUDIT, dead_letter_reasons, replica_tables, write_config
from test_kinesis_source import CloudWatchToKinesis, archive_batches, counters, kinesis_config


def parquet_rows(config):
    """The Parquet rows without their source position (a file's line there,
    a shard's sequence number here)."""
    rows = [json.loads(row) for row in snapshot(config)['parquet']]
    return sorted(json.dumps({k: v for k, v in row.items() if k != 'position'}, sort_keys=True)
                  for row in rows)


RECORDER = """import json, os
def record(events):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'events.jsonl'), 'a') as f:
        for e in events:
            f.write(json.dumps([e.table, list(map(str, e.key)), e.version, e.kind]) + '\\n')
"""


def with_recorder(config_path, module):
    """The job with a handler of shop.orders that appends its events to
    events.jsonl beside it (``module``: the handler's module, one per job:
    a process imports a module once)."""
    folder = os.path.dirname(config_path)
    with open(os.path.join(folder, f'{module}.py'), 'w', encoding='utf-8') as f:
        f.write(RECORDER)
    with open(config_path, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['handlers'] = [{'name': 'recorder', 'table': 'shop.orders',
                        'function': f'{module}:record'}]
    raw['state'] = {'url': f'sqlite:///{folder}/state.db'}
    with open(config_path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f, allow_unicode=True)
    return config_path


def handled_events(config_path):
    with open(os.path.join(os.path.dirname(config_path), 'events.jsonl'), encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def test_unbounded_run_equals_the_archive_run(tmp_path, moto_endpoint, aws_env,
                                              expected_tables):
    source = CloudWatchToKinesis(moto_endpoint, shards=1)
    batches = archive_batches()
    for lines in batches:
        source.put(lines)
    archive = with_recorder(write_config(tmp_path, 'kinesis-jsonl',
                                         os.path.join(AUDIT, 'kinesis.jsonl')), 'archive_recorder')
    audit_sync.run(['--config', archive])
    config = with_recorder(kinesis_config(tmp_path / 'stream', source.stream, moto_endpoint),
                           'stream_recorder')

    result = audit_sync.run(['--config', config, '--streaming',
                             f'--stream_max_records={len(batches)}'])
    totals = counters(result)
    assert totals[('changeflow.read_stream', 'records')] == len(batches)
    assert ('changeflow.read_kinesis', 'records') not in totals    # not the catch-up reader
    assert replica_tables(config) == replica_tables(archive) == expected_tables
    assert dead_letter_reasons(config) == dead_letter_reasons(archive)
    assert parquet_rows(config) == parquet_rows(archive)
    assert snapshot(config)['notifications'] == snapshot(archive)['notifications']
    # The handler saw every change of shop.orders once, each row's in version order.
    streamed = handled_events(config)
    assert len(streamed) > 10
    assert sorted(streamed) == sorted(handled_events(archive))
    by_key = {}
    for table, key, version, _ in streamed:
        by_key.setdefault((table, tuple(key)), []).append(version)
    assert all(versions == sorted(versions) for versions in by_key.values())


DETERMINISTIC = {'beam:coder:string_utf8:v1', 'beam:coder:varint:v1', 'beam:coder:bytes:v1'}


def _key_coders(components, transform):
    """The coder URNs of ``transform``'s input key (its components' for a tuple)."""
    kv = components.coders[components.pcollections[
        next(iter(transform.inputs.values()))].coder_id]
    key = components.coders[kv.component_coder_ids[0]]
    return [key.spec.urn] if not key.component_coder_ids else [
        components.coders[c].spec.urn for c in key.component_coder_ids]


def stateful_key_coders(p):
    """Each stateful ParDo of ``p`` -> the coder URNs of its input's key."""
    from apache_beam.portability.api import beam_runner_api_pb2
    components = p.to_runner_api().components
    return {t.unique_name: _key_coders(components, t) for t in components.transforms.values()
            if t.spec.urn == 'beam:transform:pardo:v1'
            and beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).state_specs}


def grouping_key_coders(p):
    """Each GroupByKey of ``p`` -> the coder URNs of its input's key."""
    components = p.to_runner_api().components
    return {t.unique_name: _key_coders(components, t) for t in components.transforms.values()
            if t.spec.urn == 'beam:transform:group_by_key:v1'}


def test_every_state_key_of_the_streaming_job_has_a_deterministic_coder(tmp_path):
    """On Flink and Dataflow a key's encoding decides where its state lives."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from changeflow.config import load_config
    from changeflow.pipelines.streaming import build_streaming_pipeline
    config = load_config(kinesis_config(tmp_path, 'audit-stream', 'http://127.0.0.1:9'))
    p = beam.Pipeline(options=PipelineOptions(['--streaming']))
    build_streaming_pipeline(p, config)
    stateful = stateful_key_coders(p)
    assert set(stateful) == {'Replay/ReplayInOrder/ParDo(_ReplayStreamFn)',
                             'WriteDatabase/WriteInVersionOrder/ParDo(_WriteDoFn)'}
    assert all(set(coders) <= DETERMINISTIC for coders in stateful.values()), stateful
