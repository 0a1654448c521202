"""Database sink throughput: coalesced Changes written by ``_Replica.write`` into SQLite.

    python bench/database_sink.py [--workload sink|pipeline] [--keys 20000]
                                  [--statements 60000] [--batch 500] [--folder DIR]
                                  [--passes 3] [--profile FILE]

Translates statements of a typed 4-column table (integer key, integer,
decimal(10,2), string) into row changes, coalesces them per row as
CoalesceChanges does, and writes them with the version guard to a fresh SQLite
replica, ``--batch`` changes per transaction in version order, as the sink's
writer does (no Beam). Workloads: ``sink``, mostly upserts and inserts (50%
``INSERT ... ON DUPLICATE KEY UPDATE`` with the new values, 25% INSERT of a new
row, 10% UPDATE of literals, 10% UPDATE ``qty = qty + n``, 5% DELETE) over
``--keys`` rows; ``pipeline``, bench/workload.py's statements (half
``INSERT ... ON DUPLICATE KEY UPDATE qty = qty + VALUES(qty)``, 40% ``UPDATE
qty = qty + n``, 10% DELETE). Then a second pass: as many statements again,
newer, over the rows the first pass left; then a replay of the second pass
(every op already applied). Prints changes/s per pass, in ``_Replica.write``
and with BEGIN and COMMIT. The disk's fsync at COMMIT is most of the
difference: ``--folder /dev/shm`` leaves it out.

Run from the checkout root with ``PYTHONPATH=.`` so that its changeflow is the
one imported. ``--profile FILE`` writes a cProfile of the passes (pstats);
``--passes 0`` builds the changes and the replica only, so that an instruction
count of that (valgrind --tool=callgrind) can be subtracted from one of a run.
"""

import argparse
import collections
import cProfile
import os
import random
import tempfile
import time

from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from workload import TABLE
from workload import _statement as pipeline_statement

from changeflow.config import TableSpec
from changeflow.io.sql import _Item, _Replica, create_engine
from changeflow.model import Change, RowOp, audit_version
from changeflow.sql.plans import StatementTranslator
from changeflow.transforms.coalesce import coalesce_changes

T0 = 1_795_000_000_000_000
SPEC = TableSpec('shop.items', tuple(TABLE['shop.items']['key']), 'items',
                 tuple(TABLE['shop.items']['columns'].items()))
NOTES = ('restocked', "it''s back", 'comma, inside', 'ünïcode', 'plain')


class SinkStatements:
    """The ``sink`` workload's statements; INSERTs take keys above ``keys``, new each time."""

    def __init__(self, keys):
        self.keys = keys
        self.inserted = keys

    def __call__(self, rng):
        roll = rng.random()
        values = (f"{rng.randrange(100)}, '{rng.randrange(100000) / 100:.2f}', "
                  f"'{rng.choice(NOTES)}'")
        if roll < 0.25:
            self.inserted += 1
            return f'INSERT INTO items (id, qty, price, note) VALUES ({self.inserted}, {values})'
        key = rng.randrange(1, self.keys + 1)
        if roll < 0.75:
            return (f'INSERT INTO items (id, qty, price, note) VALUES ({key}, {values}) '
                    'ON DUPLICATE KEY UPDATE qty = VALUES(qty), price = VALUES(price), '
                    'note = VALUES(note)')
        if roll < 0.85:
            return (f"UPDATE items SET note = '{rng.choice(NOTES)}', "
                    f'price = {rng.randrange(100000) / 100:.2f} WHERE id = {key}')
        if roll < 0.95:
            return f'UPDATE items SET qty = qty + {rng.randrange(1, 9)} WHERE id = {key}'
        return f'DELETE FROM items WHERE id = {key}'


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
    parser.add_argument('--workload', choices=('sink', 'pipeline'), default='sink')
    parser.add_argument('--keys', type=int, default=20_000)
    parser.add_argument('--statements', type=int, default=60_000, help='per pass')
    parser.add_argument('--batch', type=int, default=500)
    parser.add_argument('--folder', help='where the replica file goes (default: a temporary '
                        'folder)')
    parser.add_argument('--passes', type=int, default=3, choices=range(4))
    parser.add_argument('--profile', help='write a cProfile of the passes to this file')
    args = parser.parse_args()

    if args.workload == 'sink':
        statement = SinkStatements(args.keys)
    else:
        def statement(rng):
            return pipeline_statement(rng, args.keys)
    rng = random.Random(11)
    first = coalesced_changes([statement(rng) for _ in range(args.statements)], 1)
    second = coalesced_changes([statement(rng) for _ in range(args.statements)],
                               args.statements + 1)
    kinds = collections.Counter('+'.join(op.kind.value for op in c.ops) for c in first)

    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        engine = create_engine(f'sqlite:///{os.path.join(folder, "replica.db")}')
        replica = _Replica([SPEC], 'changeflow_')
        replica.prepare(engine)
        passes = [('fresh replica', first), ('over existing rows', second),
                  ('replay (all stale)', second)][:args.passes]
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        seconds = [write_all(engine, replica, changes, args.batch) for _, changes in passes]
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        engine.dispose()

    print(f'workload {args.workload}: {args.statements:,} statements per pass over '
          f'{args.keys:,} keys; {len(first):,} coalesced changes in the first pass '
          f'({", ".join(f"{k} {n}" for k, n in kinds.most_common(5))}, ...), '
          f'{len(second):,} in the second; {args.batch} per transaction')
    print(f'{"":28}{"in _Replica.write":>26}{"with BEGIN/COMMIT":>30}')
    for (name, changes), (writing, total) in zip(passes, seconds):
        print(f'  {name:<26}{len(changes) / writing:>10,.0f} changes/s ({writing * 1e6 / len(changes):5.1f} us)'
              f'{len(changes) / total:>12,.0f} changes/s ({total * 1e6 / len(changes):5.1f} us)')


if __name__ == '__main__':
    main()
