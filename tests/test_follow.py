"""``changeflow run --follow``: catch-up cycles in one process, against moto's
server through a real CloudWatch Logs subscription filter; killed with SIGKILL
at seeded random moments while lines keep arriving and restarted, it leaves
what an uninterrupted run of the same lines leaves."""

import collections
import glob
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
import yaml

from changeflow.config import load_config
from changeflow.io.dead_letter import read_dead_letters
from changeflow.pipelines import audit_sync
from test_audit_sync_e2e import replica_tables
from test_kinesis_source import CloudWatchToKinesis, stored_positions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLS = 20
SEED = 20261201


def follow_config(directory, stream, endpoint, job):
    """A job of shop.notes: replica, Parquet, a notification per change, dead
    letters. moto's subscription filter puts each call's record under a random
    partition key, as ``distribution: Random`` does: a connection's statements
    spread over both shards, so the job needs the reorder buffer."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = {
        'source': {'type': 'kinesis', 'stream': stream, 'region': 'us-east-1',
                   'endpoint_url': endpoint, 'lateness_seconds': 1},
        'job': job,
        'tables': {'shop.notes': {'key': 'id', 'columns': {'id': 'integer', 'body': 'text'}}},
        'sinks': {'database': {'url': 'sqlite:///replica.db'},
                  'parquet': {'path': 'backup'},
                  'notify': [{'to': 'file:notifications.jsonl'}]},
        'dead_letter': {'path': 'dead-letter'},
    }
    path = directory / 'job.yaml'
    path.write_text(yaml.safe_dump(raw), encoding='utf-8')
    return str(path)


class Writer(threading.Thread):
    """Three connections' transactions (BEGIN, writes, COMMIT or ROLLBACK) and
    autocommit writes, interleaved, a few statements per put_log_events call
    and a pause between calls, so transactions straddle cycles and kills.
    As a server would allow: a connection writes only rows committed and not
    locked by another's open transaction, or rows it inserted itself. The
    statements come from a seeded generator; ``stop`` commits every open
    transaction and ends the thread."""

    connections = (80, 81, 82)

    def __init__(self, source, seed):
        super().__init__(daemon=True)
        self.source = source
        self.rng = random.Random(seed)
        self.query_id = 5000
        self.next_row = 1
        self.committed = []                              # rows every connection sees
        self.open = {c: None for c in self.connections}  # connection -> {row: 'insert'|'write'}
        self.stopping = threading.Event()
        self.puts = 0
        self.error = None

    def line(self, connection, operation, obj):
        second = 1_795_600_000 + self.query_id // 20
        at = time.strftime('%Y%m%d %H:%M:%S', time.gmtime(second))
        return f'{at},vm,app,127.0.0.1,{connection},{self.query_id},{operation},shop,{obj}'

    def statement(self, connection, sql, write=True):
        self.query_id += 1
        quoted = sql.replace("'", "\\'")
        lines = [self.line(connection, 'WRITE', 'notes,')] if write else []
        return lines + [self.line(connection, 'QUERY', f"'{quoted}',0")]

    def write(self, connection):
        mine = self.open[connection]
        locked = {row for c, rows in self.open.items() if c != connection and rows for row in rows}
        free = [row for row in self.committed if row not in locked]
        if mine:
            free += [row for row, how in mine.items() if how == 'insert']
        body = f"'q{self.query_id + 1}'"
        if not free or self.rng.random() < 0.4:
            row, self.next_row = self.next_row, self.next_row + 1
            if mine is None:
                self.committed.append(row)
            else:
                mine[row] = 'insert'
            return self.statement(connection, f'INSERT INTO notes (id, body) VALUES ({row}, {body})')
        row = self.rng.choice(free)
        if self.rng.random() < 0.1:
            if mine is None:
                self.committed.remove(row)
            else:
                mine[row] = 'delete'
            return self.statement(connection, f'DELETE FROM notes WHERE id = {row}')
        if mine is not None:
            mine.setdefault(row, 'write')
        return self.statement(connection, f'UPDATE notes SET body = {body} WHERE id = {row}')

    def end(self, connection, sql):
        rows, self.open[connection] = self.open[connection], None
        if sql == 'COMMIT':
            self.committed += [row for row, how in rows.items() if how == 'insert']
            self.committed = [row for row in self.committed if rows.get(row) != 'delete']
        return self.statement(connection, sql, write=False)

    def step(self, connection):
        draw = self.rng.random()
        if self.open[connection] is None:
            if draw < 0.5:
                self.open[connection] = {}
                return self.statement(connection, 'BEGIN', write=False)
            return self.write(connection)
        if draw < 0.15:
            return self.end(connection, 'ROLLBACK' if self.rng.random() < 0.2 else 'COMMIT')
        return self.write(connection)

    def run(self):
        try:
            while not self.stopping.is_set():
                lines = []
                for _ in range(self.rng.randint(1, 4)):
                    lines += self.step(self.rng.choice(self.connections))
                self.source.put(lines)
                self.puts += 1
                time.sleep(self.rng.uniform(0.02, 0.12))
            ends = [self.end(c, 'COMMIT') for c in self.connections
                    if self.open[c] is not None]
            self.source.put([line for end in ends for line in end] or
                            self.statement(80, 'SELECT 1', write=False))
        except Exception as error:  # pylint: disable=broad-except
            self.error = error

    def stop(self):
        self.stopping.set()
        self.join()
        assert self.error is None, self.error


FOLLOW = ('--follow', '--poll-seconds', '0.2', '--status-seconds', '0.5')


def start_follow(config, log_path, env):
    with open(log_path, 'wb') as log:
        return subprocess.Popen([sys.executable, '-m', 'changeflow', 'run', config, *FOLLOW],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


class ForkServer:
    """tests/fork_server.py: follow runs started without paying the imports each time."""

    def __init__(self, env):
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, 'tests', 'fork_server.py')], env=env, cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, *words):
        self.process.stdin.write(' '.join(map(str, words)) + '\n')
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait(30)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


def log_text(path):
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return f.read()
    except FileNotFoundError:  # not yet opened by the child
        return ''


@pytest.fixture(scope='module')
def crashed_and_reference(moto_endpoint, tmp_path_factory):
    """The follow job killed KILLS times and restarted while the writer
    writes, then caught up and stopped by SIGTERM; and the reference job,
    one uninterrupted catch-up of the same stream."""
    tmp = tmp_path_factory.mktemp('follow')
    env = {**os.environ, 'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing',
           'AWS_DEFAULT_REGION': 'us-east-1', 'PYTHONPATH': ROOT}
    source = CloudWatchToKinesis(moto_endpoint)
    config = follow_config(tmp / 'follow', source.stream, moto_endpoint, 'followed')
    rng = random.Random(SEED)
    forks = ForkServer(env)
    writer = Writer(source, SEED)
    writer.start()
    logs, statuses = [], []
    try:
        for n in range(KILLS):
            log = tmp / f'run-{n}.log'
            logs.append(log)
            pid = forks.ask('start', log, 'run', config, *FOLLOW)
            try:
                if rng.random() < 0.75:  # while following: from its first cycle's end on
                    wait_for(lambda: ': cycle ' in log_text(log), 120, 'a first cycle')
                    time.sleep(rng.uniform(0.0, 1.5))
                else:                    # while starting, or in its first cycle
                    time.sleep(rng.uniform(0.2, 2.0))
            finally:
                os.kill(pid, signal.SIGKILL)
                statuses.append(forks.ask('wait', pid))
    finally:
        writer.stop()
        forks.close()
    assert statuses == [-signal.SIGKILL] * KILLS
    last = tmp / 'last.log'
    process = start_follow(config, last, env)
    try:
        wait_for(lambda: {s: p.sequence for s, p in stored_positions(config).items()}
                 == source.last_sequences(), 120, 'the follow run to catch up')
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(60)
    reference = follow_config(tmp / 'reference', source.stream, moto_endpoint, 'reference')
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        audit_sync.run(['--config', reference])
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    return {'follow': config, 'reference': reference, 'status': status,
            'last_log': log_text(last), 'logs': [log_text(p) for p in logs],
            'writer': writer}


def test_a_follow_run_killed_at_random_moments_leaves_the_replica_of_an_uninterrupted_run(
        crashed_and_reference):
    run = crashed_and_reference
    assert run['status'] == 0, run['last_log']
    assert 'SIGTERM: stopping after this cycle' in run['last_log']
    assert 'changeflow: followed' in run['last_log']
    replica = replica_tables(run['follow'])
    assert replica == replica_tables(run['reference'])
    assert len(replica['shop.notes']) > 50
    assert run['writer'].puts > 100
    # Killed while following, not only while starting: most kills came after a cycle.
    assert sum(': cycle ' in log for log in run['logs']) >= KILLS // 2
    for config in (run['follow'], run['reference']):
        assert [d.reason for d in read_dead_letters(load_config(config).dead_letter_path)] == []


def parquet_ops(config_path):
    """The Parquet backup's rows as a multiset of (table, key, version, op)."""
    rows = collections.Counter()
    for path in glob.glob(os.path.join(load_config(config_path).parquet_path, '**', '*.parquet'),
                          recursive=True):
        table = pq.read_table(path, columns=['source_table', 'key', 'version', 'op'])
        rows.update(zip(*(table.column(c).to_pylist() for c in table.column_names)))
    return rows


def notifications(config_path):
    """The notifications sent, as a multiset of their JSON objects."""
    path = load_config(config_path).notify[0].to[len('file:'):]
    with open(path, encoding='utf-8') as f:
        return collections.Counter(json.dumps(json.loads(line), sort_keys=True) for line in f)


def test_the_parquet_backup_of_a_killed_follow_run_holds_each_op_once(crashed_and_reference):
    run = crashed_and_reference
    assert parquet_ops(run['follow']) == parquet_ops(run['reference'])


def test_a_killed_follow_run_sends_each_notification_once(crashed_and_reference):
    run = crashed_and_reference
    assert notifications(run['follow']) == notifications(run['reference'])


def test_follow_needs_a_stream_source(tmp_path):
    from tests.test_audit_sync_e2e import AUDIT, write_config
    config = write_config(tmp_path, 'kinesis-jsonl', os.path.join(AUDIT, 'kinesis.jsonl'))
    done = subprocess.run([sys.executable, '-m', 'changeflow', 'run', config, '--follow'],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, 'PYTHONPATH': ROOT})
    assert done.returncode == 2
    assert '--follow needs a stream source (source.type: kinesis or dynamodb)' in done.stderr
