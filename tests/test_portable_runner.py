"""The main job, unchanged, off the local runner: Beam's PortableRunner against
Beam's Python job service, with EXTERNAL SDK workers in another process and
another virtual environment that gets changeflow only through ``--setup_file``
staging (see portable_services.py). Every output must equal what the
FnApiRunner writes for the same job.

Jobs: the bundled example (all four sinks) and the ``ddl`` real-traffic
fixture with its schema (the schema timeline side input, the replica's DDL).
"""

import datetime
import decimal
import json
import os
import socket
import subprocess

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml

import real_traffic
from changeflow.config import load_config
from changeflow.io.dead_letter import read_dead_letters
from changeflow.pipelines import audit_sync
from portable_services import (
    ServiceFailed, run_with_timeout, start_job_service, start_worker_pool, worker_environment)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, 'examples', 'shop.yaml')
SETUP_FILE = os.path.join(ROOT, 'setup.py')
JOB_TIMEOUT = 60.0  # a job whose workers fail to start waits forever

# What the worker environment must and must not import: Beam, and pip's means
# to build the staged sdist offline (setuptools with a bdist_wheel command,
# which setuptools < 70.1 takes from the `wheel` package), but not changeflow.
WORKER_ENVIRONMENT_CHECK = '''
import importlib.metadata, importlib.util, sys
import apache_beam, setuptools
if not any(ep.name == 'bdist_wheel'
           for ep in importlib.metadata.entry_points(group='distutils.commands')):
    sys.exit("no bdist_wheel command: pip cannot build the staged package offline "
             "(install changeflow's test extra, which brings `wheel`)")
found = importlib.util.find_spec('changeflow')
if found is not None:
    sys.exit(f'changeflow is importable without staging: {found.origin}')
'''


def _listening(endpoint: str) -> bool:
    host, port = endpoint.rsplit(':', 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope='module')
def portable(tmp_path_factory):
    """(job service, worker pool), stopped at teardown with their workers."""
    work = str(tmp_path_factory.mktemp('portable'))
    bin_dir = worker_environment(os.path.join(work, 'worker-venv'))
    check = subprocess.run([os.path.join(bin_dir, 'python'), '-c', WORKER_ENVIRONMENT_CHECK],
                           cwd=work, capture_output=True, text=True)
    assert check.returncode == 0, f'worker environment unfit: {check.stderr[-2000:]}'
    try:
        job_service = start_job_service(work)
    except ServiceFailed as failure:
        pytest.skip(f"Beam's Python job service cannot start here: {failure}")
    try:
        pool = start_worker_pool(work, bin_dir)
    except BaseException:
        job_service.stop()
        raise
    yield job_service, pool
    for service in (pool, job_service):
        service.stop()
    for service in (pool, job_service):
        assert service.process.poll() is not None and not service.group_alive(), (
            f'{service.log}: processes left')
        assert not _listening(service.endpoint), f'{service.endpoint} still listening'


# ---------------------------------------------------------------------------
# The jobs, each written twice: once per runner, into its own folder.

def example_job(workdir: str) -> str:
    """examples/shop.yaml with its source made absolute and every output under
    ``workdir``."""
    with open(EXAMPLE, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['source']['path'] = os.path.normpath(
        os.path.join(os.path.dirname(EXAMPLE), raw['source']['path']))
    raw['sinks']['database']['url'] = f'sqlite:///{os.path.join(workdir, "replica.db")}'
    raw['sinks']['parquet']['path'] = os.path.join(workdir, 'backup')
    for rule in raw['sinks']['notify']:
        rule['to'] = 'file:' + os.path.join(workdir, os.path.basename(rule['to']))
    raw['dead_letter']['path'] = os.path.join(workdir, 'dead-letter')
    path = os.path.join(workdir, 'job.yaml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f, allow_unicode=True, sort_keys=False)
    return path


def ddl_schema_job(workdir: str) -> str:
    return real_traffic.write_job(os.path.join(real_traffic.APP, 'ddl'), workdir,
                                  'job-schema.yaml')


JOBS = {'example': example_job, 'ddl-schema': ddl_schema_job}


# ---------------------------------------------------------------------------
# Outputs in a form that compares across folders.

def _plain(value):
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    return value


def _sorted_rows(rows):
    return sorted(([_plain(v) for v in row] for row in rows), key=repr)


def replica(config) -> dict:
    """Every table of the replica, bookkeeping included, as sorted rows."""
    engine = sa.create_engine(config.database_url)
    try:
        with engine.connect() as conn:
            return {name: _sorted_rows(conn.execute(sa.text(f'SELECT * FROM "{name}"')))
                    for name in sa.inspect(conn).get_table_names()}
    finally:
        engine.dispose()


def dead_letters(config) -> list:
    """The dead letters without their rejection time."""
    return sorted((d.step, d.reason, d.detail, d.original, d.position)
                  for d in read_dead_letters(config.dead_letter_path))


def parquet_backup(config) -> dict:
    """Each Parquet file, by its path under the backup, as its rows."""
    if not config.parquet_path:
        return {}
    files = {}
    for root, _, names in os.walk(config.parquet_path):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, config.parquet_path)] = pq.read_table(path).to_pylist()
    return files


def notifications(config) -> dict:
    """Each notification file, by name, as its lines without ``id`` (which hashes
    the rule's target, here a path that differs per run), plus how many ids."""
    files = {}
    for rule in config.notify:
        path = rule.to[len('file:'):]
        with open(path, encoding='utf-8') as f:
            records = [json.loads(line) for line in f if line.strip()]
        ids = {record.pop('id') for record in records}
        files[os.path.basename(path)] = (len(ids), sorted(records, key=repr))
    return files


def counters(result) -> dict:
    return {(c.key.step, c.key.metric.namespace, c.key.metric.name): c.committed
            for c in result.metrics().query()['counters']}


def outputs(config_path: str) -> dict:
    config = load_config(config_path)
    return {'replica': replica(config), 'dead_letters': dead_letters(config),
            'parquet': parquet_backup(config), 'notifications': notifications(config)}


# ---------------------------------------------------------------------------

@pytest.mark.parametrize('job', sorted(JOBS))
def test_job_on_the_portable_runner_equals_the_local_run(tmp_path, portable, job):
    job_service, pool = portable
    local_dir, portable_dir = tmp_path / 'local', tmp_path / 'portable'
    local_dir.mkdir()
    portable_dir.mkdir()
    local_config = JOBS[job](str(local_dir))
    portable_config = JOBS[job](str(portable_dir))

    local = audit_sync.run(['--config', local_config])
    remote = run_with_timeout(lambda: audit_sync.run([
        '--config', portable_config, '--runner=PortableRunner',
        f'--job_endpoint={job_service.endpoint}',
        '--environment_type=EXTERNAL', f'--environment_config={pool.endpoint}',
        f'--setup_file={SETUP_FILE}']), JOB_TIMEOUT, (job_service, pool))

    assert remote.state == 'DONE'
    expected, got = outputs(local_config), outputs(portable_config)
    config = load_config(local_config)
    assert any(rows for table, rows in expected['replica'].items()
               if not table.startswith('changeflow_')), 'no replica rows to compare'
    assert bool(expected['parquet']) == bool(config.parquet_path), 'no Parquet to compare'
    assert all(count for count, _ in expected['notifications'].values()), 'no notifications'
    for name in expected:
        assert got[name] == expected[name], f'{name} differ between the runners'
    assert counters(remote) == counters(local)
