"""Everything a job writes, as one comparable snapshot: the replica's tables
(bookkeeping included), the Parquet rows, the notification lines and the dead
letters (without the time each was stamped). File names are left out: they
may change as long as they stay content-derived.

Recorded snapshots (tests/data/equivalence/*.json.gz) pin the outputs of the
jobs below as the pipeline made them before its data flow was reshaped for
throughput (issue 6); tests/test_equivalence.py runs the same jobs and
compares. The Parquet rows and notifications were recorded again when the
change log became one row and one notification per source op instead of per
coalesced change (replica and dead letters unchanged), and again when the
database sink began to apply each whole-table op at its own place in version
order (a row change between two of them had been skipped in silence: the
core fixture's SKU-005 is now deleted, as at the source; a refused whole-table
op is now one dead letter per run of its ops between two row changes instead
of one for it and every op after it).
The interleaved fixture's were recorded when it was added, with the fix of
the silent rows it found. Record again only for
an intended change of outputs:

    python tests/equivalence.py record
"""

import base64
import datetime
import decimal
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile

import sqlalchemy as sa
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN = os.path.join(HERE, 'data', 'equivalence')
sys.path.insert(0, os.path.join(ROOT, 'bench'))
sys.path.insert(0, HERE)

WORKLOAD_EVENTS = 20_000


def _value(value):
    if isinstance(value, bytes):
        return {'b64': base64.b64encode(value).decode()}
    if isinstance(value, (decimal.Decimal, datetime.date, datetime.datetime, datetime.time)):
        return {type(value).__name__: str(value)}
    if isinstance(value, float):
        return {'float': repr(value)}
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_value(v) for v in value]
    return value


def _rows(rows):
    return sorted(json.dumps(_value(list(row)), sort_keys=True, ensure_ascii=False)
                  for row in rows)


_NOTE_ID = re.compile(r'^\{"id":"[0-9a-f]{32}"')


def _normalized(data, workdir: str):
    """``data`` without what depends on where the job ran: the work directory
    and the checkout in positions, and notification ids (a hash of the target path and of the
    table, key and version the line holds)."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    for path, name in ((workdir, '<workdir>'), (os.path.realpath(workdir), '<workdir>'),
                       (ROOT, '<checkout>'), (os.path.realpath(ROOT), '<checkout>')):
        text = text.replace(path.rstrip('/'), name)
    data = json.loads(text)
    data['notifications'] = {name: sorted(_NOTE_ID.sub('{"id":"*"', line) for line in lines)
                             for name, lines in data['notifications'].items()}
    for part in ('parquet', 'dead_letters'):
        data[part].sort()
    return data


def _original(data: bytes) -> dict:
    """A dead letter's original as text where it is UTF-8 (positions inside it
    then normalise with the rest), else base64."""
    try:
        return {'text': data.decode('utf-8')}
    except UnicodeDecodeError:
        return {'b64': base64.b64encode(data).decode()}


def snapshot(config_path: str) -> dict:
    from changeflow.config import load_config
    from changeflow.io.dead_letter import read_dead_letters
    config = load_config(config_path)
    out = {'replica': {}, 'parquet': [], 'notifications': {}, 'dead_letters': []}
    if config.database_url:
        engine = sa.create_engine(config.database_url)
        try:
            with engine.connect() as conn:
                for name in sorted(sa.inspect(conn).get_table_names()):
                    columns = [c['name'] for c in sa.inspect(conn).get_columns(name)]
                    result = conn.execute(sa.text(f'SELECT * FROM "{name}"'))
                    out['replica'][name] = {'columns': columns, 'rows': _rows(result)}
        finally:
            engine.dispose()
    if config.parquet_path:
        import pyarrow.parquet as pq
        root = config.parquet_path
        for path in glob.glob(os.path.join(root, '**', '*.parquet'), recursive=True):
            table = pq.read_table(path, partitioning=None)
            partition = os.path.relpath(os.path.dirname(path), root)
            out['parquet'] += [json.dumps(_value({'partition': partition, **row}), sort_keys=True,
                                          ensure_ascii=False) for row in table.to_pylist()]
        out['parquet'].sort()
    for rule in config.notify:
        if rule.to.startswith('file:'):
            path = rule.to[len('file:'):]
            lines = open(path, encoding='utf-8').read().splitlines() if os.path.exists(path) else []
            out['notifications'][os.path.basename(path)] = sorted(lines)
    if os.path.isdir(config.dead_letter_path):
        out['dead_letters'] = sorted(json.dumps(
            [letter.step, letter.reason, letter.detail, _original(letter.original),
             letter.position], ensure_ascii=False)
            for letter in read_dead_letters(config.dead_letter_path))
    return out


def _fixture_job(name: str, job: str):
    def build(workdir: str) -> str:
        import real_traffic
        return real_traffic.write_job(os.path.join(HERE, 'data', 'app', name), workdir, job)
    return build


def _example_job(workdir: str) -> str:
    with open(os.path.join(ROOT, 'examples', 'shop.yaml'), encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['source']['path'] = os.path.join(ROOT, 'tests', 'data', 'audit', 'kinesis.jsonl')
    return _write(workdir, raw)


def _workload_job(workdir: str) -> str:
    from workload import TABLE, write_firehose_archive
    archive = os.path.join(workdir, 'archive.gz')
    write_firehose_archive(archive, WORKLOAD_EVENTS, keys=2_000, connections=8)
    raw = {'source': {'type': 'archive', 'format': 'firehose', 'path': archive},
           'tables': TABLE,
           'sinks': {'database': {'url': 'sqlite:///out/replica.db'},
                     'parquet': {'path': 'out/backup'},
                     'notify': [{'to': 'file:out/notifications.jsonl',
                                 'when': {'table': 'shop.items', 'op': 'delete'}}]},
           'dead_letter': {'path': 'out/dead-letter'}}
    return _write(workdir, raw)


def _write(workdir: str, raw: dict) -> str:
    path = os.path.join(workdir, 'job.yaml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f, allow_unicode=True, sort_keys=False)
    return path


FIXTURES = ('pymysql', 'orm', 'core', 'cli', 'schema_features', 'ddl', 'truncation', 'interleaved', 'bulk', 'bulk_ddl')
JOBS = {**{f'{name}-{job[:-5]}': _fixture_job(name, job) for name in FIXTURES
           for job in ('job.yaml', 'job-schema.yaml')},
        'example-shop': _example_job, 'workload-20k': _workload_job}


def run_job(name: str, workdir: str) -> dict:
    """Runs job ``name`` in ``workdir`` on the FnApiRunner; its snapshot."""
    from changeflow.pipelines import audit_sync
    config = JOBS[name](workdir)
    audit_sync.run(['--config', config])
    return _normalized(snapshot(config), workdir)


def golden(name: str) -> dict:
    with gzip.open(os.path.join(GOLDEN, f'{name}.json.gz'), 'rt', encoding='utf-8') as f:
        return json.load(f)


def record() -> None:
    os.makedirs(GOLDEN, exist_ok=True)
    for name in JOBS:
        workdir = tempfile.mkdtemp(prefix=f'equivalence-{name}-')
        try:
            data = run_job(name, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        with gzip.GzipFile(os.path.join(GOLDEN, f'{name}.json.gz'), 'wb', mtime=0) as f:
            f.write(json.dumps(data, sort_keys=True, ensure_ascii=False, indent=0).encode())
        print(name, {k: len(v) for k, v in data.items()})


if __name__ == '__main__':
    if sys.argv[1:] != ['record']:
        sys.exit(__doc__)
    record()
