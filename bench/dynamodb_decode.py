"""DynamoDB stream records/s through decode (and conversion to Change) on one core,
and through the whole DynamoDB job into an SQLite replica.

    python bench/dynamodb_decode.py [--records 50000] [--job]

Builds Lambda-shaped stream records (NEW_AND_OLD_IMAGES MODIFYs of a
10-attribute item with a nested map and a string set, one item each) as JSON
bytes, then times :func:`changeflow.dynamodb.records.decode_source_record`
alone, followed by :func:`~changeflow.dynamodb.records.to_change`, and
followed by ``to_change`` fitting the items to declared columns (what the
job does). ``--job`` also writes the records as a ``dynamodb-jsonl``
archive and runs :mod:`changeflow.pipelines.dynamodb_sync` on the local
FnApiRunner into SQLite (the replica sink alone), printing wall time,
records/s, rows written and the peak RSS of this process (the runner runs
the job in-process).
"""

import argparse
import json
import os
import resource
import tempfile
import time

import yaml

from changeflow.dynamodb.columns import ItemColumns
from changeflow.dynamodb.records import decode_source_record, to_change
from changeflow.metrics import counter_totals
from changeflow.model import SourceRecord

COLUMNS = {'id': 'integer', 'title': 'string', 'qty': 'integer', 'price': 'decimal(10,2)',
           'active': 'boolean', 'note': 'string', 'tags': 'json', 'blob': 'binary',
           'meta': 'json', 'expiresAt': 'integer'}

ARN = 'arn:aws:dynamodb:us-east-1:123456789012:table/prod-Card/stream/2026-12-01T10:00:00.000'


def _image(i, qty):
    return {'id': {'N': str(i)}, 'title': {'S': f'card {i}'}, 'qty': {'N': str(qty)},
            'price': {'N': '12.50'}, 'active': {'BOOL': True}, 'note': {'NULL': True},
            'tags': {'SS': ['new', 'promo', 'sale']}, 'blob': {'B': 'AAECAwQ='},
            'meta': {'M': {'dims': {'L': [{'N': '8.5'}, {'N': '11'}]}, 'seen': {'BOOL': False}}},
            'expiresAt': {'N': '1796119200'}}


def records(n):
    for i in range(n):
        yield SourceRecord(json.dumps({
            'eventID': str(i), 'eventName': 'MODIFY', 'eventSource': 'aws:dynamodb',
            'eventSourceARN': ARN, 'awsRegion': 'us-east-1',
            'dynamodb': {'ApproximateCreationDateTime': 1796119200 + i / 1000,
                         'SequenceNumber': str(100000000000000000000 + i), 'SizeBytes': 300,
                         'Keys': {'id': {'N': str(i)}, 'title': {'S': f'card {i}'}},
                         'NewImage': _image(i, 2), 'OldImage': _image(i, 1),
                         'StreamViewType': 'NEW_AND_OLD_IMAGES'}}).encode(),
            'bench', 'shardId-0', str(i), 0)


def run_job(inputs):
    from changeflow.pipelines import dynamodb_sync
    with tempfile.TemporaryDirectory() as folder:
        archive = os.path.join(folder, 'stream.jsonl')
        with open(archive, 'wb') as f:
            f.write(b'\n'.join(source.data for source in inputs))
        config = os.path.join(folder, 'job.yaml')
        with open(config, 'w') as f:
            yaml.safe_dump({
                'source': {'type': 'dynamodb-archive', 'format': 'dynamodb-jsonl',
                           'path': archive},
                'tables': {'prod-Card': {'key': ['id', 'title'], 'columns': COLUMNS}},
                'sinks': {'database': {'url': f'sqlite:///{folder}/replica.db'}},
                'dead_letter': {'path': f'{folder}/dead-letter'}}, f)
        start = time.perf_counter()
        result = dynamodb_sync.run(['--config', config])
        seconds = time.perf_counter() - start
    return seconds, counter_totals(result)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--records', type=int, default=50_000)
    parser.add_argument('--job', action='store_true',
                        help='also run the DynamoDB job on the records into SQLite')
    args = parser.parse_args(argv)
    inputs = list(records(args.records))
    start = time.perf_counter()
    decoded = [r for s in inputs for r in decode_source_record(s)]
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    changes = [to_change(r, ('id', 'title')) for s in inputs for r in decode_source_record(s)]
    both_s = time.perf_counter() - start
    columns = ItemColumns(tuple(COLUMNS.items()))
    start = time.perf_counter()
    fitted = [to_change(r, ('id', 'title'), columns)
              for s in inputs for r in decode_source_record(s)]
    fitted_s = time.perf_counter() - start
    assert len(decoded) == len(changes) == len(fitted) == args.records and all(fitted)
    print(f'{args.records} records: decode {args.records / decode_s:,.0f} records/s; '
          f'decode + to_change {args.records / both_s:,.0f} records/s; '
          f'decode + to_change fitted to columns {args.records / fitted_s:,.0f} records/s')
    if args.job:
        seconds, counters = run_job(inputs)
        rows = counters.get('changeflow.write_database.rows_upserted', 0)
        dead = sum(v for k, v in counters.items() if k.endswith('dead_lettered'))
        assert rows == args.records and not dead, counters
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f'job (dynamodb-jsonl -> SQLite replica, FnApiRunner): {seconds:.1f} s, '
              f'{args.records / seconds:,.0f} records/s, {rows:,} rows, '
              f'peak RSS {peak_mb:,.0f} MiB')


if __name__ == '__main__':
    main()
