"""Every grouping and state key of every job has a deterministic coder: on
Flink and Dataflow a key's encoding decides which group (and which state) an
element joins, and a pickled key may encode one value two ways."""

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from changeflow.config import load_config
from changeflow.handlers import Handlers
from changeflow.pipelines import audit_sync, dynamodb_sync
from test_dynamodb_live import live_job
from test_kinesis_source import kinesis_config
from test_streaming import DETERMINISTIC, grouping_key_coders, stateful_key_coders


def _recorder(events):
    """A handler (its events are not looked at: the job is only built)."""


def audit_job(folder):
    return kinesis_config(folder, 'audit-stream', 'http://127.0.0.1:9')


def dynamodb_job(folder):
    folder.mkdir()
    return live_job(folder, 'cards', 'sqlite://', 'cards', 'http://127.0.0.1:9')


@pytest.mark.parametrize('job, make, flags', [
    ('audit', audit_job, []), ('audit', audit_job, ['--streaming']),
    ('dynamodb', dynamodb_job, []), ('dynamodb', dynamodb_job, ['--streaming'])])
def test_every_key_has_a_deterministic_coder(tmp_path, job, make, flags):
    config = load_config(make(tmp_path / job))
    handlers = Handlers()
    handlers.on(config.tables[0].source, name='all')(_recorder)
    p = beam.Pipeline(options=PipelineOptions(flags))
    (audit_sync if job == 'audit' else dynamodb_sync).build_pipeline(p, config, handlers=handlers)
    keys = {**grouping_key_coders(p), **stateful_key_coders(p)}
    assert any('Coalesce' in name for name in keys) and any('Handl' in name for name in keys)
    assert {name: coders for name, coders in keys.items()
            if not set(coders) <= DETERMINISTIC} == {}
