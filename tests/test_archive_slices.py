"""An archive read in slices (``source.slice_mb``): a cycle per slice of its
files with the connections' open transactions carried between them writes
what one run over the whole archive writes, resumes after a stop, refuses a
listing that changed under it, and ends the input as one run does."""

import json
import os

import pytest
import yaml

import equivalence
import real_traffic
from changeflow import cli
from changeflow.config import ConfigError, load_config
from changeflow.io.archive_slices import archive_key
from changeflow.io.checkpoints import CheckpointStore
from changeflow.io.dead_letter import read_dead_letters
from changeflow.pipelines import audit_sync, follow
from test_real_traffic import SILENT_TODAY

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = 1e-6  # slice_mb: every file a slice of its own


def split_lines(source: str, folder: str, parts: int) -> str:
    """``source``'s lines as ``parts`` files in path order; their glob."""
    with open(source, 'rb') as f:
        lines = f.read().splitlines(keepends=True)
    os.makedirs(folder, exist_ok=True)
    size = -(-len(lines) // parts)
    for index in range(parts):
        with open(os.path.join(folder, f'audit-{index:03d}.log'), 'wb') as f:
            f.writelines(lines[index * size:(index + 1) * size])
    return os.path.join(folder, 'audit-*.log')


def job_over(config_path: str, archive: str, slice_mb=None, job='backfill') -> str:
    with open(config_path, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['source']['path'] = archive
    raw['job'] = job
    if slice_mb is not None:
        raw['source']['slice_mb'] = slice_mb
    with open(config_path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f, allow_unicode=True, sort_keys=False)
    return config_path


def run_sliced(config_path: str, max_cycles=None) -> follow.FollowResult:
    """What ``changeflow run`` does for a sliced archive, returning the result."""
    return audit_sync.slice_follower(load_config(config_path), poll_seconds=0,
                                     max_cycles=max_cycles).run()


def outputs(config_path: str, workdir: str) -> dict:
    return equivalence._normalized(equivalence.snapshot(config_path), workdir)


def fixture_pair(tmp_path, fixture: str, job: str, parts: int):
    """The fixture's log split into ``parts`` files; (one run's outputs, the
    sliced run's outputs, the sliced run's result)."""
    folder = os.path.join(HERE, 'data', 'app', fixture)
    runs = {}
    for mode in ('whole', 'sliced'):
        workdir = str(tmp_path / mode)
        os.makedirs(workdir)
        archive = split_lines(os.path.join(folder, 'server_audit.log'),
                              str(tmp_path / 'archive'), parts)
        config = job_over(real_traffic.write_job(folder, workdir, job), archive,
                          TINY if mode == 'sliced' else None)
        if mode == 'whole':
            audit_sync.run(['--config', config])
        else:
            runs['result'] = run_sliced(config)
        runs[mode] = outputs(config, workdir)
    return runs['whole'], runs['sliced'], runs['result']


def row_letters(letters):
    """Dead letters but the database sink's refusals of whole-table ops
    (``DELETE ... WHERE qty = 0`` on a table with rows marked diverged): which
    shard refuses which run of them depends on the marks the batches before
    left, so a slice's refusals are grouped otherwise than one run's. The
    replica's marks, compared with the rest of the replica, are the same."""
    kept = []
    for letter in letters:
        step, reason, _, original, _ = json.loads(letter)
        whole_table = original.get('text', '').startswith('{"table"') and json.loads(
            original['text'])['key'] == []
        if not (step == 'write_database' and reason == 'needs-lookup' and whole_table):
            kept.append(letter)
    return kept


@pytest.mark.parametrize('fixture,job,open_across', [
    ('pymysql', 'job.yaml', True), ('orm', 'job.yaml', True),
    ('ddl', 'job-schema.yaml', False), ('truncation', 'job.yaml', False)])
def test_slices_write_what_one_run_writes(tmp_path, fixture, job, open_across):
    whole, sliced, result = fixture_pair(tmp_path, fixture, job, parts=5)
    assert result.ended == follow.FINISHED and result.cycles == 5
    assert result.totals['changeflow.read_archive_slices.final_slices'] == 1
    assert result.totals['changeflow.transactions.carried_connections'] > 0
    if open_across:  # transactions were open across a slice's end
        assert result.totals['changeflow.transactions.carried_open'] > 0
    for part in ('replica', 'parquet', 'notifications'):
        assert sliced[part] == whole[part], f'{fixture}: {part} differs'
    assert row_letters(sliced['dead_letters']) == row_letters(whole['dead_letters'])


@pytest.mark.parametrize('fixture,job', [
    (fixture, job) for fixture in real_traffic.FIXTURES for job in ('job.yaml', 'job-schema.yaml')
    if (fixture, job) not in SILENT_TODAY])
def test_no_row_of_a_sliced_run_differs_silently_from_the_source(tmp_path, fixture, job):
    """The fixture's log in four files, read a slice each, against the
    source's final tables: every row equals the source's or is marked
    diverged with a dead letter saying why (as one run's, test_real_traffic).
    Slices change which rows a refused whole-table write leaves behind (the
    marks the batches before left differ), so this, not equality with one
    run, is what holds for the fixtures whose tables get marked."""
    folder = os.path.join(HERE, 'data', 'app', fixture)
    workdir = str(tmp_path / 'sliced')
    os.makedirs(workdir)
    archive = split_lines(os.path.join(folder, 'server_audit.log'), str(tmp_path / 'archive'), 4)
    config = job_over(real_traffic.write_job(folder, workdir, job), archive, TINY)
    result = run_sliced(config)
    assert result.ended == follow.FINISHED and result.cycles == 4
    report = real_traffic.compare(folder, config)
    assert report.totals['silent'] == 0, report.format()


def workload_job(workdir: str, files: int, slice_mb=None) -> str:
    from workload import TABLE, write_firehose_archive
    write_firehose_archive(os.path.join(workdir, 'archive'), 6_000, keys=500, connections=8,
                           files=files)
    raw = {'source': {'type': 'archive', 'format': 'firehose', 'path': 'archive/*.gz'},
           'job': 'workload', 'tables': TABLE,
           'sinks': {'database': {'url': 'sqlite:///out/replica.db'},
                     'parquet': {'path': 'out/backup'},
                     'notify': [{'to': 'file:out/notifications.jsonl',
                                 'when': {'table': 'shop.items', 'op': 'delete'}}]},
           'dead_letter': {'path': 'out/dead-letter'}}
    if slice_mb is not None:
        raw['source']['slice_mb'] = slice_mb
    return equivalence._write(workdir, raw)


def test_a_stopped_backfill_resumes_and_a_finished_one_reads_nothing(tmp_path):
    whole_dir, sliced_dir = str(tmp_path / 'whole'), str(tmp_path / 'sliced')
    os.makedirs(whole_dir), os.makedirs(sliced_dir)
    whole = workload_job(whole_dir, files=4)
    audit_sync.run(['--config', whole])
    # each file ~27 KB: two files per slice of 0.05 MiB
    sliced = workload_job(sliced_dir, files=4, slice_mb=0.05)
    first = run_sliced(sliced, max_cycles=1)  # stopped after the first slice
    assert first.ended == follow.STOPPED
    assert first.totals['changeflow.read_archive_slices.files'] == 2
    rest = run_sliced(sliced)
    assert rest.ended == follow.FINISHED and rest.cycles == 1
    assert rest.totals['changeflow.read_archive_slices.files'] == 2
    assert outputs(sliced, sliced_dir) == outputs(whole, whole_dir)
    again = run_sliced(sliced)  # nothing left: nothing read, nothing written
    assert again.ended == follow.FINISHED
    assert not again.totals.get('changeflow.read_archive_slices.slices')
    assert not again.totals.get('changeflow.parse_audit.events_parsed')
    assert outputs(sliced, sliced_dir) == outputs(whole, whole_dir)
    # Every slice replayed (its checkpoints lost, as after crashes before each
    # commit): the sinks absorb it, outputs unchanged.
    os.remove(os.path.join(sliced_dir, 'workload.checkpoints.db'))
    replayed = run_sliced(sliced)
    assert replayed.ended == follow.FINISHED and replayed.cycles == 2
    assert outputs(sliced, sliced_dir) == outputs(whole, whole_dir)


AUDIT = '20261201 10:00:{second:02d},db-1,app,10.0.0.7,{conn},{qid},QUERY,shop,{sql},0\n'


def write_log(path: str, statements) -> None:
    """(second, connection, query id, SQL) as server_audit lines."""
    with open(path, 'w', encoding='utf-8') as f:
        for second, conn, qid, sql in statements:
            quoted = "'" + sql.replace('\\', '\\\\').replace("'", "\\'") + "'"
            f.write(AUDIT.format(second=second, conn=conn, qid=qid, sql=quoted))


def small_job(workdir: str, slice_mb=TINY) -> str:
    raw = {'source': {'type': 'archive', 'format': 'server-audit', 'path': 'logs/*.log',
                      'slice_mb': slice_mb},
           'job': 'small',
           'tables': {'shop.notes': {'key': 'id', 'columns': {'id': 'integer', 'body': 'text'}}},
           'sinks': {'database': {'url': 'sqlite:///replica.db'}},
           'dead_letter': {'path': 'dead-letter'}}
    os.makedirs(os.path.join(workdir, 'logs'), exist_ok=True)
    return equivalence._write(workdir, raw)


def replica_rows(workdir: str):
    import sqlalchemy as sa
    engine = sa.create_engine(f'sqlite:///{workdir}/replica.db')
    with engine.connect() as conn:
        rows = conn.execute(sa.text('SELECT id, body FROM notes ORDER BY id')).all()
    engine.dispose()
    return [tuple(row) for row in rows]


def reasons(workdir: str):
    return sorted(letter.reason for letter in read_dead_letters(f'{workdir}/dead-letter'))


def test_a_transaction_spans_slices_and_one_open_at_the_end_is_dead_lettered(tmp_path):
    workdir = str(tmp_path)
    config = small_job(workdir)
    write_log(f'{workdir}/logs/a.log', [
        (1, 7, 1, 'BEGIN'), (1, 7, 2, "INSERT INTO notes (id, body) VALUES (1, 'one')"),
        (1, 8, 1, "INSERT INTO notes (id, body) VALUES (3, 'autocommit')")])
    write_log(f'{workdir}/logs/b.log', [
        (2, 7, 3, "UPDATE notes SET body = 'uno' WHERE id = 1"), (2, 7, 4, 'COMMIT'),
        (2, 8, 2, 'BEGIN'), (2, 8, 3, "INSERT INTO notes (id, body) VALUES (2, 'open')")])
    result = run_sliced(config)
    assert result.ended == follow.FINISHED and result.cycles == 2
    assert result.totals['changeflow.transactions.carried_open'] == 1
    assert replica_rows(workdir) == [(1, 'uno'), (3, 'autocommit')]
    assert reasons(workdir) == ['transaction-open-at-end']


def test_a_statement_a_later_slice_holds_out_of_order_goes_in_its_place_or_is_dead_lettered(
        tmp_path):
    """Connection 7 has nothing open: its late upsert is translated and the
    version guard puts it before the newer insert (skipped as older). Connection
    8 carries an open transaction: a statement older than what it replayed
    would change the transaction's content, so it is dead-lettered."""
    workdir = str(tmp_path)
    config = small_job(workdir)
    write_log(f'{workdir}/logs/a.log', [
        (5, 7, 10, "INSERT INTO notes (id, body) VALUES (1, 'new')"),
        (5, 8, 20, 'BEGIN'), (5, 8, 21, "INSERT INTO notes (id, body) VALUES (5, 'in tx')")])
    write_log(f'{workdir}/logs/b.log', [
        (4, 7, 9, "INSERT INTO notes (id, body) VALUES (1, 'old') "
                  "ON DUPLICATE KEY UPDATE body = 'old'"),
        (4, 8, 19, "INSERT INTO notes (id, body) VALUES (6, 'late')"),
        (6, 7, 11, "INSERT INTO notes (id, body) VALUES (2, 'later')"),
        (6, 8, 22, 'COMMIT')])
    run_sliced(config)
    assert replica_rows(workdir) == [(1, 'new'), (2, 'later'), (5, 'in tx')]
    assert reasons(workdir) == ['after-lateness']


def test_a_bad_line_in_a_slice_is_dead_lettered_and_the_rest_goes_through(tmp_path):
    workdir = str(tmp_path)
    config = small_job(workdir)
    write_log(f'{workdir}/logs/a.log', [(1, 7, 1, "INSERT INTO notes (id, body) VALUES (1, 'a')")])
    with open(f'{workdir}/logs/b.log', 'wb') as f:
        f.write(b'20261201 10:00:02,db-1,app,10.0.0.7,7,2,QUERY,shop,\'\xff\xfe\',0\n')
    write_log(f'{workdir}/logs/c.log', [(3, 7, 3, "INSERT INTO notes (id, body) VALUES (3, 'c')")])
    assert run_sliced(config).ended == follow.FINISHED
    assert replica_rows(workdir) == [(1, 'a'), (3, 'c')]
    [letter] = read_dead_letters(f'{workdir}/dead-letter')
    assert letter.reason == 'bad-utf8' and letter.position.endswith('b.log:1')


def test_a_listing_that_changed_under_the_backfill_fails_it(tmp_path):
    workdir = str(tmp_path)
    config = small_job(workdir)
    for name, qid in (('b.log', 1), ('c.log', 2), ('d.log', 3)):
        write_log(f'{workdir}/logs/{name}', [
            (qid, 7, qid, f"INSERT INTO notes (id, body) VALUES ({qid}, '{name}')")])
    assert run_sliced(config, max_cycles=2).ended == follow.STOPPED  # b and c done
    write_log(f'{workdir}/logs/a.log', [(0, 7, 0, "INSERT INTO notes (id, body) VALUES (9, 'x')")])
    failed = run_sliced(config)
    assert failed.ended == follow.FAILED
    assert 'a new file sorts before them' in str(failed.error)
    assert replica_rows(workdir) == [(1, 'b.log'), (2, 'c.log')]  # nothing more written
    os.remove(f'{workdir}/logs/b.log')  # one done gone, one new before: c is still second
    assert run_sliced(config).ended == follow.FAILED
    os.remove(f'{workdir}/logs/a.log')  # a file done is gone
    assert run_sliced(config).ended == follow.FAILED
    assert replica_rows(workdir) == [(1, 'b.log'), (2, 'c.log')]
    store = CheckpointStore(f'sqlite:///{workdir}/small.checkpoints.db')
    done = store.load('small', archive_key(load_config(config).source.path))
    assert done.positions['files'].sequence == '2' and done.state['archive']['files'] == 2


def test_the_cli_reads_every_slice_and_says_so(tmp_path, capsys):
    workdir = str(tmp_path)
    config = small_job(workdir)
    for second in range(3):
        write_log(f'{workdir}/logs/{second}.log', [
            (second, 7, second + 1, f"INSERT INTO notes (id, body) VALUES ({second}, 'x')")])
    with pytest.raises(SystemExit) as ended:
        cli.main(['run', config, '--status-seconds', '0'])
    assert ended.value.code == cli.RUN_DONE
    captured = capsys.readouterr()
    assert '3 slices' in captured.out and 'finished' in captured.out
    assert '3 rows changed (a row once per slice it changes in, 3 slices)' in captured.out
    status = [line for line in captured.err.splitlines() if ': slice ' in line]
    assert [line.split(': slice ')[1].split(',')[0] for line in status] == [
        '1 (2 files left)', '2 (1 files left)', '3 (0 files left)']
    assert replica_rows(workdir) == [(0, 'x'), (1, 'x'), (2, 'x')]
    with pytest.raises(SystemExit) as ended:
        cli.main(['run', config, '--follow'])
    assert ended.value.code == cli.STATUS_ERROR


@pytest.mark.parametrize('value,message', [
    (0, 'must be a positive number'), (-1, 'must be a positive number'),
    ('64', 'expected a number of megabytes'), (float('inf'), 'must be a positive number')])
def test_slice_mb_is_checked(tmp_path, value, message):
    workdir = str(tmp_path)
    config = small_job(workdir, slice_mb=value)
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_a_sliced_archive_keeps_checkpoints_under_its_job(tmp_path):
    workdir = str(tmp_path)
    config = load_config(small_job(workdir, slice_mb=64))
    assert config.source.slice_bytes == 64 << 20
    assert config.checkpoints_url == f'sqlite:///{workdir}/small.checkpoints.db'
