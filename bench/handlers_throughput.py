"""Events/s through the handlers branch's DoFn (typing, ledger check and
record, one no-op handler), called directly on one shard batch, CPU seconds.

    PYTHONPATH=. python bench/handlers_throughput.py [--events N] [--handlers K] [--untyped]
"""

import argparse
import dataclasses
import decimal
import os
import tempfile
import time
from typing import Optional

from changeflow.dynamodb.records import DynamoMap
from changeflow.handlers import Handler
from changeflow.handlers.events import ChangeEvent, event_version
from changeflow.handlers.transforms import _HandleShardFn
from changeflow.transforms.runs import make_run


@dataclasses.dataclass(frozen=True)
class Card:
    __key__ = ('id', 'title')
    id: int
    title: str
    qty: int
    expiresAt: Optional[int] = None


def _events(n):
    return [ChangeEvent('prod-Card', (i, 't'), 'insert', None, DynamoMap((
        ('expiresAt', decimal.Decimal(1796119200 + i)), ('id', decimal.Decimal(i)),
        ('qty', decimal.Decimal(3)), ('title', 't'))), f'{i:017d}.{i:056d}', i, f'line{i}',
        b'{}') for i in range(n)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--events', type=int, default=50_000)
    parser.add_argument('--handlers', type=int, default=1)
    parser.add_argument('--untyped', action='store_true')
    args = parser.parse_args()
    element = (('prod-Card', 0), [make_run(_events(args.events), event_version)])
    with tempfile.TemporaryDirectory() as folder:
        url = f'sqlite:///{os.path.join(folder, "state.db")}'
        handlers = tuple(Handler(f'h{k}', 'prod-Card', lambda events: None)
                         for k in range(args.handlers))
        for label in ('first run (calls)', 'replay (ledger skips)'):
            fn = _HandleShardFn(handlers, {} if args.untyped else {'prod-Card': Card}, url)
            fn.setup()
            cpu, wall = time.process_time(), time.perf_counter()
            list(fn.process(element))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            fn.teardown()
            print(f'{label:24} {args.events:,} events x {args.handlers} handler(s): '
                  f'{args.events / cpu:,.0f} events/s CPU ({cpu:.2f} s CPU, {wall:.2f} s wall)')


if __name__ == '__main__':
    main()
