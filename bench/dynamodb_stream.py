"""DynamoDB stream records/s through decode and the replica sink, in CPU seconds.

    PYTHONPATH=. python bench/dynamodb_stream.py [--records 60000] [--items 10000]
                                                 [--batch 500] [--folder DIR] [--job]

Generates a table's stream as a ``dynamodb-jsonl`` archive holds it (one
Lambda-shaped NEW_AND_OLD_IMAGES record per line, as the live reader emits
them too): each of ``--items`` items is inserted, then modified (1 in 10 of
the MODIFYs a no-op: new image = old), and 1 in 8 records is a REMOVE (1 in 4
of those by TTL) followed by a new INSERT; seeded, so every run sees the same
records. Then, per stage, the CPU time of this process and records/s:

1. decode (:func:`changeflow.dynamodb.records.decode_source_record`);
2. decode + :func:`~changeflow.dynamodb.records.to_change` fitted to the
   declared columns (what the job's decode step does per record);
3. coalescing per item (:func:`changeflow.transforms.coalesce.coalesce_changes`)
   and the replica sink's write (``_Replica.write`` with the version guard,
   ``--batch`` rows per transaction, bench/database_sink.py's ``write_all``)
   into a fresh SQLite file; then the same changes again (a replay: all
   stale, what a re-read cycle costs);
4. with ``--job``: the whole DynamoDB job (:mod:`changeflow.pipelines.dynamodb_sync`,
   archive source, SQLite replica only) on the FnApiRunner, which runs in
   this process, so its CPU time is this process's (fixed cost included).

``--folder /dev/shm`` leaves the disk's fsync at COMMIT out of stage 3's wall time.
"""

import argparse
import collections
import json
import os
import random
import resource
import tempfile
import time

import yaml
from database_sink import write_all

from changeflow.config import TableSpec
from changeflow.dynamodb.columns import ItemColumns
from changeflow.dynamodb.records import decode_source_record, to_change
from changeflow.io.sql import _Replica, create_engine
from changeflow.model import SourceRecord
from changeflow.transforms.coalesce import coalesce_changes

TABLE = 'prod-Card'
ARN = f'arn:aws:dynamodb:us-east-1:123456789012:table/{TABLE}/stream/2026-12-01T10:00:00.000'
KEY = ('id', 'title')
COLUMNS = {'id': 'integer', 'title': 'string', 'qty': 'integer', 'price': 'decimal(10,2)',
           'active': 'boolean', 'note': 'string', 'tags': 'json', 'meta': 'json',
           'expiresAt': 'integer'}
TTL_IDENTITY = {'type': 'Service', 'principalId': 'dynamodb.amazonaws.com'}


def _image(i, qty):
    return {'id': {'N': str(i)}, 'title': {'S': f'card {i}'}, 'qty': {'N': str(qty)},
            'price': {'N': f'{qty % 997}.50'}, 'active': {'BOOL': qty % 2 == 0},
            'note': {'S': f'note {qty}'} if qty % 3 else {'NULL': True},
            'tags': {'SS': ['new', 'promo', f't{qty % 5}']},
            'meta': {'M': {'dims': {'L': [{'N': '8.5'}, {'N': str(qty)}]},
                           'seen': {'BOOL': False}}},
            'expiresAt': {'N': str(1796119200 + qty)}}


def stream_lines(n, items, seed=7):
    """``n`` stream records over ``items`` items; a Counter of their kinds."""
    rng = random.Random(seed)
    state = {}                          # item -> its qty, absent when removed
    kinds = collections.Counter()
    lines = []
    for number in range(1, n + 1):
        i = rng.randrange(items)
        body = {'ApproximateCreationDateTime': 1796119200 + number // 1000,
                'SequenceNumber': str(10 ** 20 + number), 'SizeBytes': 300,
                'Keys': {'id': {'N': str(i)}, 'title': {'S': f'card {i}'}},
                'StreamViewType': 'NEW_AND_OLD_IMAGES'}
        record = {'eventID': str(number), 'eventSource': 'aws:dynamodb', 'awsRegion': 'us-east-1',
                  'eventVersion': '1.1', 'eventSourceARN': ARN, 'dynamodb': body}
        old = state.get(i)
        if old is None:
            state[i] = qty = rng.randrange(1000)
            record['eventName'], body['NewImage'] = 'INSERT', _image(i, qty)
            kinds['insert'] += 1
        elif rng.random() < 1 / 8:
            record['eventName'], body['OldImage'] = 'REMOVE', _image(i, old)
            del state[i]
            if rng.random() < 1 / 4:
                record['userIdentity'] = TTL_IDENTITY
                kinds['ttl remove'] += 1
            else:
                kinds['remove'] += 1
        else:
            qty = old if rng.random() < 1 / 10 else old + 1
            kinds['no-op modify' if qty == old else 'modify'] += 1
            state[i] = qty
            record['eventName'] = 'MODIFY'
            body['OldImage'], body['NewImage'] = _image(i, old), _image(i, qty)
        lines.append(json.dumps(record, separators=(',', ':')).encode())
    return lines, kinds


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn):
    cpu, wall = _cpu(), time.perf_counter()
    out = fn()
    return out, _cpu() - cpu, time.perf_counter() - wall


def _line(name, count, what, cpu, wall):
    return (f'  {name:<44}{count / cpu:>12,.0f} {what}/s CPU ({cpu * 1e6 / count:6.1f} us each),'
            f' wall {wall:6.2f} s')


def run_job(lines, folder):
    from changeflow.metrics import counter_totals
    from changeflow.pipelines import dynamodb_sync
    archive = os.path.join(folder, 'stream.jsonl')
    with open(archive, 'wb') as f:
        f.write(b'\n'.join(lines) + b'\n')
    config = os.path.join(folder, 'job.yaml')
    with open(config, 'w', encoding='utf-8') as f:
        yaml.safe_dump({
            'source': {'type': 'dynamodb-archive', 'format': 'dynamodb-jsonl', 'path': archive},
            'tables': {TABLE: {'key': list(KEY), 'columns': COLUMNS}},
            'sinks': {'database': {'url': f'sqlite:///{folder}/job-replica.db'}},
            'dead_letter': {'path': f'{folder}/dead-letter'}}, f)
    return counter_totals(dynamodb_sync.run(['--config', config]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--records', type=int, default=60_000)
    parser.add_argument('--items', type=int, default=10_000)
    parser.add_argument('--batch', type=int, default=500)
    parser.add_argument('--folder', help='where the replicas go (default: a temporary folder)')
    parser.add_argument('--job', action='store_true', help='also run the whole job (stage 4)')
    args = parser.parse_args(argv)

    lines, kinds = stream_lines(args.records, args.items)
    sources = [SourceRecord(line, 'stream.jsonl', '', str(n), 0) for n, line in enumerate(lines)]
    n = len(sources)
    print(f'{n:,} stream records over {args.items:,} items '
          f'({", ".join(f"{k} {v:,}" for k, v in kinds.most_common())}); '
          f'{sum(map(len, lines)) / n:,.0f} bytes each')

    decoded, cpu, wall = _timed(lambda: [r for s in sources for r in decode_source_record(s)])
    assert len(decoded) == n
    print(_line('1. decode', n, 'records', cpu, wall))
    columns = ItemColumns(tuple(COLUMNS.items()))

    def changes_of():
        return [to_change(r, KEY, columns) for s in sources for r in decode_source_record(s)]
    changes, cpu, wall = _timed(changes_of)
    changes = [c for c in changes if c is not None]  # no-op MODIFYs change nothing
    print(_line('2. decode + to_change (declared columns)', n, 'records', cpu, wall))
    through = cpu

    def coalesced():
        by_row = collections.defaultdict(list)
        for change in changes:
            by_row[change.key].append(change)
        return [coalesce_changes(row) for row in by_row.values()]
    rows, cpu, wall = _timed(coalesced)
    print(_line(f'3a. coalesce per item ({len(changes):,} changes)', len(changes), 'changes',
                cpu, wall))
    through += cpu
    spec = TableSpec(TABLE, KEY, 'cards', tuple(COLUMNS.items()))
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        engine = create_engine(f'sqlite:///{os.path.join(folder, "replica.db")}')
        replica = _Replica([spec], 'changeflow_')
        replica.prepare(engine)
        for name in ('3b. replica sink, fresh SQLite', '3c. replica sink, replay (all stale)'):
            (writing, _, _), cpu, wall = _timed(
                lambda: write_all(engine, replica, rows, args.batch))
            print(_line(f'{name} ({len(rows):,} rows)', len(rows), 'rows', cpu, wall)
                  + f'; {writing:.2f} s in write')
            if name.startswith('3b'):
                through += cpu
        engine.dispose()
        print(f'  stages 2 + 3a + 3b: {n / through:,.0f} stream records/s CPU '
              f'({through:.2f} CPU s for {n:,})')
        if args.job:
            counters, cpu, wall = _timed(lambda: run_job(lines, folder))
            written = counters.get('changeflow.write_database.rows_upserted', 0) + counters.get(
                'changeflow.write_database.rows_deleted', 0)
            print(_line(f'4. whole job, FnApiRunner ({written:,} rows written)', n, 'records',
                        cpu, wall))


if __name__ == '__main__':
    main()
