"""The per-event work between parsing and the shuffle per (table, shard),
without Beam: replay (TransactionTracker) and translation (the SQL stage's
DoFn, as the coarse replay calls it), in CPU microseconds per event.

    PYTHONPATH=. python bench/replay_throughput.py [--events 50000] [--passes 3]

The upsert workload (bench/workload.py) is decoded and parsed once; each
pass then feeds its events in statement order to a fresh tracker, translates
every committed transaction and buckets the changes by shard, as
``changeflow.transforms.connections`` does, 4,096 events at a time (the
outputs then dropped, as a flush drops them), and times each part alone.
Then the whole of ``ReplayConnectionFn.replay`` is timed on the same events as
the parse step hands them over (a run per CloudWatch record of 100 events): the
parts above plus merging the runs, bucketing and packing the changes' runs.
Prints the best pass. ``PYTHONPATH`` picks the checkout whose code is timed.
"""

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workload import TABLE, write_firehose_archive  # noqa: E402

from changeflow.config import TableSpec  # noqa: E402
from changeflow.io.sql import DEFAULT_SHARDS, shards_of  # noqa: E402
from changeflow.model import LogEvent  # noqa: E402
from changeflow.transforms.audit_log import AuditLineParser  # noqa: E402
from changeflow.sql.literals import DEFAULT_SERVER_VERSION  # noqa: E402
from changeflow.transforms.connections import ReplayConnectionFn  # noqa: E402
from changeflow.transforms.runs import make_run  # noqa: E402
from changeflow.transforms.sql_changes import ExtractRowChangesFn  # noqa: E402
from changeflow.transforms.transactions import TransactionTracker, session_order  # noqa: E402

_CHUNK = 4096  # events per timed chunk: a connection's flush (connections._FLUSH_CHANGES)
_PER_RECORD = 100  # events per run replayed: write_firehose_archive's per record


def _events(path):
    events = []
    with open(path, 'rb') as f:
        data = f.read()
    while data:
        inflater = zlib.decompressobj(wbits=31)
        payload = json.loads(inflater.decompress(data))
        data = inflater.unused_data
        events.extend(LogEvent(e['message'], payload['logGroup'], payload['logStream'], e['id'],
                               e['timestamp'], f'bench#{e["id"]}') for e in payload['logEvents'])
    parser = AuditLineParser(1024)
    parsed, dead = parser.parse(events)
    assert not dead
    return sorted(parsed, key=session_order)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=50_000)
    parser.add_argument('--passes', type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'audit.gz')
        write_firehose_archive(path, args.events)
        events = _events(path)
    tables = [TableSpec(source, tuple(spec['key']), source.split('.')[1],
                        tuple(spec['columns'].items())) for source, spec in TABLE.items()]
    runs = [(*make_run(events[start:start + _PER_RECORD], session_order), 0)
            for start in range(0, len(events), _PER_RECORD)]
    gc.collect()
    gc.freeze()  # the events, as a worker's startup heap is (connections._freeze_startup_heap)
    best = None
    best_replay = None
    for _ in range(args.passes):
        translate = ExtractRowChangesFn(tables)
        translate.setup()
        tracker = TransactionTracker('db-1', 1)
        feed_s = translate_s = shard_s = 0.0
        changes = 0
        for start in range(0, len(events), _CHUNK):  # a flush's worth at a time, then dropped
            started = time.process_time()
            transactions = [t for event in events[start:start + _CHUNK]
                            for t in tracker.feed(event)]
            fed = time.process_time()
            outputs = [out for transaction in transactions
                       for out in translate.process(transaction)]
            translated = time.process_time()
            changes += sum(1 for out in outputs for _ in shards_of(out, DEFAULT_SHARDS))
            sharded = time.process_time()
            feed_s += fed - started
            translate_s += translated - fed
            shard_s += sharded - translated
        result = (feed_s + translate_s + shard_s, feed_s, translate_s, shard_s)
        best = result if best is None or result[0] < best[0] else best
        replay = ReplayConnectionFn(True, DEFAULT_SERVER_VERSION, False, tables, None,
                                    '+00:00', DEFAULT_SHARDS)
        replay.setup()
        started = time.process_time()
        for _ in replay.replay(TransactionTracker('db-1', 1), runs):
            pass
        replay_s = time.process_time() - started
        best_replay = replay_s if best_replay is None else min(best_replay, replay_s)
    total, feed_s, translate_s, shard_s = best
    n = len(events)
    print(f'events                        {n:>10,}   changes {changes:,}')
    print(f'replay (TransactionTracker)   {feed_s * 1e6 / n:>10.2f} us/event')
    print(f'translate (SQL stage DoFn)    {translate_s * 1e6 / n:>10.2f} us/event')
    print(f'shards_of                     {shard_s * 1e6 / n:>10.2f} us/event')
    print(f'total                         {total * 1e6 / n:>10.2f} us/event '
          f'({n / total:,.0f} events/CPU-s; best of {args.passes})')
    print(f'ReplayConnectionFn.replay     {best_replay * 1e6 / n:>10.2f} us/event '
          f'(the above, merge and pack too; best of {args.passes})')


if __name__ == '__main__':
    main()
