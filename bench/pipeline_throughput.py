"""The whole audit-sync job on the local FnApiRunner: events/s and peak memory.

    python bench/pipeline_throughput.py [--events 200000] [--per-record 100]

Writes a kinesis-jsonl archive of generated payloads (the same generator as
bench/parse_throughput.py) to a temporary folder, runs the job into SQLite,
local Parquet and a JSONL notification file, and prints wall time, events/s,
the job's key counters and the peak RSS of this process (the FnApiRunner runs
the job in-process).
"""

import argparse
import base64
import json
import os
import resource
import tempfile
import time

import yaml
from parse_throughput import TABLES, make_records

from changeflow.metrics import counter_totals
from changeflow.pipelines import audit_sync


def write_archive(path, records):
    with open(path, 'w') as f:
        for i, record in enumerate(records):
            f.write(json.dumps({'SequenceNumber': str(i), 'PartitionKey': 'db-1',
                                'ApproximateArrivalTimestamp': 1795000000 + i,
                                'Data': base64.b64encode(record.data).decode()}) + '\n')


def write_config(folder, archive):
    config = {
        'source': {'type': 'archive', 'format': 'kinesis-jsonl', 'path': archive},
        'tables': {spec.source: {'key': list(spec.key), 'target': spec.target,
                                 'columns': dict(spec.columns)} for spec in TABLES},
        'sinks': {'database': {'url': f'sqlite:///{folder}/replica.db'},
                  'parquet': {'path': f'{folder}/backup'},
                  'notify': [{'to': f'file:{folder}/notifications.jsonl',
                              'when': {'table': 'shop.customers', 'op': 'upsert'}}]},
        'dead_letter': {'path': f'{folder}/dead-letter'},
    }
    path = os.path.join(folder, 'job.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(config, f)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=200_000)
    parser.add_argument('--per-record', type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        records, _ = make_records(args.events, args.per_record)
        archive = os.path.join(folder, 'audit.jsonl')
        write_archive(archive, records)
        config = write_config(folder, archive)
        started = time.perf_counter()
        result = audit_sync.run(['--config', config])
        elapsed = time.perf_counter() - started
        counters = counter_totals(result)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'events                 {args.events:>12,}  ({len(records):,} Kinesis records)')
    for name in ('changeflow.sql_changes.row_changes', 'changeflow.coalesce.rows',
                 'changeflow.write_database.rows_upserted', 'changeflow.write_database.rows_deleted',
                 'changeflow.write_parquet.written', 'changeflow.write_notify.written'):
        print(f'{name.split(".", 1)[1]:<22} {counters.get(name, 0):>12,}')
    print(f'wall time              {elapsed:>12.1f} s (FnApiRunner, one process, '
          f'SQLite + Parquet + JSONL sinks)')
    print(f'throughput             {args.events / elapsed:>12,.0f} events/s end to end')
    print(f'peak RSS               {peak_mb:>12,.0f} MiB')


if __name__ == '__main__':
    main()
