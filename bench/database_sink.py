"""Database sink throughput: coalesced Changes written by ``_Replica.write`` into SQLite.

    python bench/database_sink.py [--keys 20000] [--statements 60000] [--batch 500]
                                  [--profile FILE]

Translates bench/workload.py's statements (half ``INSERT ... ON DUPLICATE KEY
UPDATE qty = qty + VALUES(qty)``, 40% ``UPDATE ... SET qty = qty + n``, 10%
DELETE by key, over ``--keys`` rows of a typed 4-column table) into row
changes, coalesces them per row as CoalesceChanges does, and writes them to a
fresh SQLite replica with the version guard, ``--batch`` changes per
transaction in version order, as the sink's writer does (no Beam). Then a
second pass: the same statements again with newer versions, over the rows the
first pass left; then a replay of the second pass (every op already applied).
Prints changes/s of each pass. ``--profile FILE``: cProfile of the passes'
writes into FILE (pstats).
"""

import argparse
import cProfile
import collections
import os
import random
import tempfile
import time

from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from workload import TABLE, _statement

from changeflow.config import TableSpec
from changeflow.io.sql import _Item, _Replica, create_engine
from changeflow.model import Change, RowOp, audit_version
from changeflow.sql.plans import StatementTranslator
from changeflow.transforms.coalesce import coalesce_changes

T0 = 1_795_000_000_000_000
SPEC = TableSpec('shop.items', tuple(TABLE['shop.items']['key']), 'items',
                 tuple(TABLE['shop.items']['columns'].items()))


def coalesced_changes(statements, first_query_id):
    """One Change per row touched by ``statements``, versioned in their order
    from ``first_query_id``; ops coalesced."""
    translator = StatementTranslator([SPEC])
    by_row = collections.defaultdict(list)
    for i, sql in enumerate(statements):
        query_id = first_query_id + i
        version = audit_version(T0 + query_id * 1000, query_id, query_id, 0)
        for row in translator.translate(sql, 'shop').changes:
            by_row[row.key].append(Change(row.table, row.key, (RowOp(
                row.kind, version, row.values, row.assignments, f'bench#{query_id}',
                row.condition),), T0 + query_id * 1000))
    return [coalesce_changes(changes) for changes in by_row.values()]


def write_all(engine, replica, changes, batch_size):
    """(seconds in _Replica.write, seconds with BEGIN and COMMIT) to write
    ``changes`` in version order, ``batch_size`` per transaction."""
    changes = sorted(changes, key=lambda c: c.first_version)
    timestamp, window = Timestamp(micros=0), GlobalWindow()
    items = [_Item(c, timestamp, window) for c in changes]
    writing = 0.0
    started = time.perf_counter()
    for start in range(0, len(items), batch_size):
        with engine.begin() as conn:
            began = time.perf_counter()
            outcome = replica.write(conn, items[start:start + batch_size], False)
            writing += time.perf_counter() - began
        assert not outcome.dead, outcome.dead[:1]
    return writing, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--keys', type=int, default=20_000)
    parser.add_argument('--statements', type=int, default=60_000)
    parser.add_argument('--batch', type=int, default=500)
    parser.add_argument('--profile', help='write a cProfile of the writes to this file')
    parser.add_argument('--passes', type=int, default=3, choices=range(4),
                        help='run only the first N passes (0: only build the changes and the '
                        'replica, so that an instruction count of that can be subtracted)')
    parser.add_argument('--folder', help='where the replica file goes (default: a temporary '
                        'folder; /dev/shm leaves out the disk\'s fsync at COMMIT)')
    args = parser.parse_args()

    rng = random.Random(11)
    statements = [_statement(rng, args.keys) for _ in range(args.statements)]
    first = coalesced_changes(statements, 1)
    second = coalesced_changes(statements, args.statements + 1)
    kinds = collections.Counter('+'.join(op.kind.value for op in c.ops) for c in first)

    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        engine = create_engine(f'sqlite:///{os.path.join(folder, "replica.db")}')
        replica = _Replica([SPEC], 'changeflow_')
        replica.prepare(engine)
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        passes = [('fresh replica', first), ('over existing rows', second),
                  ('replay (all stale)', second)][:args.passes]
        seconds = [write_all(engine, replica, changes, args.batch) for _, changes in passes]
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        engine.dispose()

    print(f'statements                  {args.statements:>10,} over {args.keys:,} keys')
    print(f'coalesced changes per pass  {len(first):>10,}  '
          f'({", ".join(f"{k} {n}" for k, n in kinds.most_common(6))})')
    print(f'batch (changes/transaction) {args.batch:>10,}')
    print(f'{"":28}{"_Replica.write":>24}{"with BEGIN/COMMIT":>30}')
    for (name, changes), (writing, total) in zip(passes, seconds):
        print(f'  {name:<26}{len(changes) / writing:>10,.0f} changes/s ({writing * 1e6 / len(changes):5.1f} us)'
              f'{len(changes) / total:>12,.0f} changes/s ({total * 1e6 / len(changes):5.1f} us)')


if __name__ == '__main__':
    main()
