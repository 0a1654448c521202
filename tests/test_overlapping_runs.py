"""Runs over overlapping inputs into the same outputs write each source op once.

A run over the first half of an archive, then a run over the whole archive
into the same replica, Parquet backup and notification file (what a
crash-replayed catch-up that re-reads more, or a backfill over a synced
period, does): the Parquet backup holds each (table, key, version, op) once,
each notification id and each (table, key, version, op) is announced once,
and all three equal those of a single run over the whole archive.
"""

import glob
import json
import os

import pyarrow.parquet as pq
import sqlalchemy as sa
import yaml

from changeflow.io.dead_letter import read_dead_letters
from changeflow.pipelines import audit_sync

HERE = os.path.dirname(os.path.abspath(__file__))
ORM = os.path.join(HERE, 'data', 'app', 'orm')


def _job(workdir, archive, raw):
    """A job reading ``archive`` into outputs under ``workdir`` (shared by its runs)."""
    raw = {**raw, 'source': {**raw['source'], 'path': archive},
           'sinks': {'database': {'url': f'sqlite:///{workdir}/replica.db'},
                     'parquet': {'path': f'{workdir}/backup'},
                     'notify': [{'to': f'file:{workdir}/notes.jsonl'}]},
           'dead_letter': {'path': f'{workdir}/dead-letter'}}
    path = os.path.join(workdir, f'job-{os.path.basename(archive)}.yaml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return path


def _outputs(workdir):
    """(Parquet identities, notification lines, replica rows) under ``workdir``."""
    identities = []
    for path in glob.glob(f'{workdir}/backup/**/*.parquet', recursive=True):
        table = pq.read_table(path, columns=['source_table', 'key', 'version', 'op'],
                              partitioning=None)
        identities += [tuple(row.values()) for row in table.to_pylist()]
    with open(f'{workdir}/notes.jsonl', encoding='utf-8') as f:
        notes = [json.loads(line) for line in f]
    engine = sa.create_engine(f'sqlite:///{workdir}/replica.db')
    with engine.connect() as connection:
        replica = {name: sorted(map(tuple, connection.execute(sa.text(f'SELECT * FROM "{name}"'))))
                   for name in sa.inspect(connection).get_table_names()}
    engine.dispose()
    return identities, notes, replica


def _assert_half_then_whole_equals_whole(tmp_path, half, whole, raw):
    once, twice = tmp_path / 'once', tmp_path / 'twice'
    once.mkdir()
    twice.mkdir()
    audit_sync.run(['--config', _job(str(once), whole, raw)])
    audit_sync.run(['--config', _job(str(twice), half, raw)])
    audit_sync.run(['--config', _job(str(twice), whole, raw)])
    want_rows, want_notes, want_replica = _outputs(str(once))
    rows, notes, replica = _outputs(str(twice))

    assert len(rows) == len(set(rows)), 'a source op backed up twice'
    assert sorted(rows) == sorted(want_rows)
    ids = [note['id'] for note in notes]
    meanings = [(n['table'], json.dumps(n['key']), n['version'], n['op']) for n in notes]
    assert len(ids) == len(set(ids)) and len(meanings) == len(set(meanings)), 'announced twice'
    assert sorted(notes, key=lambda n: n['id']) == sorted(want_notes, key=lambda n: n['id'])
    assert replica == want_replica
    return once, twice


def test_half_then_whole_of_a_generated_workload(tmp_path):
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'bench'))
    from workload import TABLE, write_firehose_archive
    half, whole = str(tmp_path / 'half.gz'), str(tmp_path / 'whole.gz')
    # The same seed: the half archive's statements are the whole one's first half.
    write_firehose_archive(half, 2_000, keys=300, connections=4)
    write_firehose_archive(whole, 4_000, keys=300, connections=4)
    _assert_half_then_whole_equals_whole(
        tmp_path, half, whole, {'source': {'type': 'archive', 'format': 'firehose'},
                                'tables': TABLE})


def test_half_then_whole_of_recorded_orm_traffic(tmp_path):
    """Real ORM traffic (transactions, optimistic locking, cascades), cut in
    the middle of a transaction; the schema's job."""
    with open(os.path.join(ORM, 'server_audit.log'), encoding='utf-8') as f:
        lines = f.readlines()
    cut = len(lines) // 2  # then on to a COMMIT that ends a write: cut just before it
    while not (",'COMMIT'," in lines[cut] and any(
            f"QUERY,cf_app_orm,'{verb}" in lines[cut - 1] for verb in ('INSERT', 'UPDATE'))):
        cut += 1
    half, whole = tmp_path / 'half.log', tmp_path / 'whole.log'
    half.write_text(''.join(lines[:cut]), encoding='utf-8')
    whole.write_text(''.join(lines), encoding='utf-8')
    with open(os.path.join(ORM, 'job-schema.yaml'), encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['schema']['file'] = os.path.join(ORM, raw['schema']['file'])
    once, twice = _assert_half_then_whole_equals_whole(tmp_path, str(half), str(whole), raw)

    open_at_end = [letter for letter in read_dead_letters(str(twice / 'dead-letter'))
                   if letter.reason == 'transaction-open-at-end']
    assert open_at_end, 'the cut should leave a transaction open at the half run\'s end'
    assert not [letter for letter in read_dead_letters(str(once / 'dead-letter'))
                if letter.reason == 'transaction-open-at-end']
