"""The jobs translate for Dataflow (``--dry_run=True``: nothing is submitted,
nothing leaves the machine), batch through the CLI, whose summary copes with
a result without metrics, and streaming with the splittable reader."""

import os

import pytest

pytest.importorskip('apitools', reason='needs the Dataflow runner: pip install .[dataflow]')

from changeflow.pipelines import audit_sync  # noqa: E402
from test_audit_sync_e2e import AUDIT, write_config  # noqa: E402
from test_cli import run_cli  # noqa: E402
from test_kinesis_source import kinesis_config  # noqa: E402

# A project id of the valid form, a bucket name of the valid form (else the runner
# looks for a default bucket online), and no credentials looked up.
DATAFLOW = ['--runner=DataflowRunner', '--dry_run=True', '--project=changeflow-check',
            '--region=europe-west1', '--temp_location=gs://changeflow-check/tmp', '--no_auth']


def transform_names(result):
    return {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}


def test_the_batch_job_translates_and_the_cli_reports_no_counters(tmp_path, capsys):
    config = write_config(tmp_path, 'kinesis-jsonl', os.path.join(AUDIT, 'kinesis.jsonl'))
    code, out, err = run_cli(['run', config, *DATAFLOW], capsys)
    assert code == 0, err
    assert 'job DONE' in out and '(this runner reports no counters)' in out


def test_the_streaming_job_translates_with_the_splittable_reader(tmp_path):
    config = kinesis_config(tmp_path / 'stream', 'audit-stream', 'http://127.0.0.1:9')
    result = audit_sync.run(['--config', config, *DATAFLOW, '--streaming'])
    assert result.job.proto.type.name == 'JOB_TYPE_STREAMING'
    names = transform_names(result)
    assert {'ReadStream/ReadShards', 'Replay/ReplayInOrder',
            'WriteDatabase/WriteInVersionOrder'} <= names
    assert 'ReadKinesis/ReadToTip' not in names
