"""DynamoDB stream records/s through decode (and conversion to Change) on one core.

    python bench/dynamodb_decode.py [--records 50000]

Builds Lambda-shaped stream records (NEW_AND_OLD_IMAGES MODIFYs of a
10-attribute item with a nested map and a string set) as JSON bytes, then
times :func:`changeflow.dynamodb.records.decode_source_record` alone and
followed by :func:`~changeflow.dynamodb.records.to_change`.
"""

import argparse
import json
import time

from changeflow.dynamodb.records import decode_source_record, to_change
from changeflow.model import SourceRecord

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--records', type=int, default=50_000)
    args = parser.parse_args(argv)
    inputs = list(records(args.records))
    start = time.perf_counter()
    decoded = [r for s in inputs for r in decode_source_record(s)]
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    changes = [to_change(r, ('id', 'title')) for s in inputs for r in decode_source_record(s)]
    both_s = time.perf_counter() - start
    assert len(decoded) == len(changes) == args.records and all(changes)
    print(f'{args.records} records: decode {args.records / decode_s:,.0f} records/s; '
          f'decode + to_change {args.records / both_s:,.0f} records/s')


if __name__ == '__main__':
    main()
