"""The whole audit-sync job on the local FnApiRunner: events/s and peak memory.

    python bench/pipeline_throughput.py [--events 200000] [--workload upserts|mixed]
                                        [--connections 1] [--baseline]
                                        [--files N --slice-mb MB]

Workloads: ``upserts`` (bench/workload.py: half INSERT ... ON DUPLICATE KEY
UPDATE, 40% updates and 10% deletes by key over 20k rows of one table, in a
Firehose archive) or ``mixed`` (bench/parse_throughput.py's two tables and six
statement shapes, as kinesis-jsonl). Runs the job into SQLite, local Parquet
and a JSONL notification file, and prints wall time, events/s, the job's key
counters and the peak RSS of this process (the FnApiRunner runs the job
in-process). ``--baseline`` also times bench/naive_sync.py on the same archive
in the same run and prints the ratio. ``--files N`` writes the upserts archive
as N Firehose objects; with ``--slice-mb`` the job reads them a slice at a
time (``source.slice_mb``), as ``changeflow run`` does, and the peak RSS is
the largest slice's.
"""

import argparse
import base64
import json
import os
import resource
import tempfile
import time

import yaml
from naive_sync import naive_sync
from parse_throughput import TABLES, make_records
from workload import TABLE as UPSERT_TABLE
from workload import write_firehose_archive

from changeflow.metrics import counter_totals
from changeflow.pipelines import audit_sync


def write_archive(path, records):
    with open(path, 'w') as f:
        for i, record in enumerate(records):
            f.write(json.dumps({'SequenceNumber': str(i), 'PartitionKey': 'db-1',
                                'ApproximateArrivalTimestamp': 1795000000 + i,
                                'Data': base64.b64encode(record.data).decode()}) + '\n')


def write_config(folder, archive, archive_format, tables, notify_table, slice_mb=None):
    config = {
        'source': {'type': 'archive', 'format': archive_format, 'path': archive},
        'job': 'bench',
        'tables': tables,
        'sinks': {'database': {'url': f'sqlite:///{folder}/replica.db'},
                  'parquet': {'path': f'{folder}/backup'},
                  'notify': [{'to': f'file:{folder}/notifications.jsonl',
                              'when': {'table': notify_table, 'op': 'upsert'}}]},
        'dead_letter': {'path': f'{folder}/dead-letter'},
    }
    if slice_mb is not None:
        config['source']['slice_mb'] = slice_mb
    path = os.path.join(folder, 'job.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(config, f)
    return path


def run_sliced(config_path):
    """The job a slice at a time, as ``changeflow run`` runs it; its counters."""
    from changeflow.config import load_config
    from changeflow.pipelines.follow import FINISHED
    ended = audit_sync.slice_follower(load_config(config_path), poll_seconds=0,
                                      status_seconds=3600).run()
    if ended.ended != FINISHED:
        raise RuntimeError(f'the sliced run ended {ended.ended}: {ended.error}')
    print(f'slices                 {ended.cycles:>12,}')
    return ended.totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=200_000)
    parser.add_argument('--per-record', type=int, default=100)
    parser.add_argument('--workload', choices=('upserts', 'mixed'), default='upserts')
    parser.add_argument('--connections', type=int, default=1,
                        help='client connections of the upserts workload')
    parser.add_argument('--baseline', action='store_true',
                        help='also time the naive hand-written sync on the same archive')
    parser.add_argument('--files', type=int, default=1,
                        help='Firehose objects the upserts archive is written as')
    parser.add_argument('--slice-mb', type=float, default=None,
                        help='read the archive in slices of this many MiB (source.slice_mb)')
    args = parser.parse_args()
    if args.files > 1 and args.baseline:
        parser.error('--baseline reads one archive file: leave --files at 1')
    with tempfile.TemporaryDirectory() as folder:
        if args.workload == 'upserts':
            archive = os.path.join(folder, 'audit.gz' if args.files == 1 else 'audit')
            write_firehose_archive(archive, args.events, connections=args.connections,
                                   per_record=args.per_record, files=args.files)
            if args.files > 1:
                archive = os.path.join(archive, '*.gz')
            config = write_config(folder, archive, 'firehose', UPSERT_TABLE, 'shop.items',
                                  args.slice_mb)
        else:
            records, _ = make_records(args.events, args.per_record)
            archive = os.path.join(folder, 'audit.jsonl')
            write_archive(archive, records)
            tables = {spec.source: {'key': list(spec.key), 'target': spec.target,
                                    'columns': dict(spec.columns)} for spec in TABLES}
            config = write_config(folder, archive, 'kinesis-jsonl', tables, 'shop.customers')
        started = time.perf_counter()
        if args.slice_mb is None:
            counters = counter_totals(audit_sync.run(['--config', config]))
        else:
            counters = run_sliced(config)
        elapsed = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.baseline and args.workload == 'upserts':
            started = time.perf_counter()
            naive_sync(archive, os.path.join(folder, 'naive.db'), [
                'CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER, price NUMERIC, '
                'note TEXT)'])
            naive_elapsed = time.perf_counter() - started
    print(f'workload               {args.workload} ({args.connections} connection(s))')
    print(f'events                 {args.events:>12,}')
    for name in ('changeflow.sql_changes.row_changes', 'changeflow.coalesce.rows',
                 'changeflow.write_database.rows_upserted', 'changeflow.write_database.rows_deleted',
                 'changeflow.write_parquet.written', 'changeflow.write_notify.written'):
        print(f'{name.split(".", 1)[1]:<22} {counters.get(name, 0):>12,}')
    print(f'wall time              {elapsed:>12.1f} s (FnApiRunner, one process, '
          f'SQLite + Parquet + JSONL sinks)')
    print(f'throughput             {args.events / elapsed:>12,.0f} events/s end to end')
    print(f'peak RSS               {peak_mb:>12,.0f} MiB (before the baseline ran)')
    if args.baseline and args.workload == 'upserts':
        print(f'naive sync             {args.events / naive_elapsed:>12,.0f} events/s '
              f'(bench/naive_sync.py, same archive)')
        print(f'changeflow / naive     {naive_elapsed / elapsed:>12.2f} x')


if __name__ == '__main__':
    main()
