"""Sink throughput: the Parquet backup writer and the database sink, without and with Beam.

    python bench/sink_throughput.py [--events 200000] [--keys 20000] [--repeat 3]
                                    [--sink parquet|database|both]

Inputs: the statements of bench/workload.py (half ``INSERT ... ON DUPLICATE
KEY UPDATE``, 40% updates, 10% deletes by key over ``--keys`` rows of one typed
table: integer, integer, decimal(10,2), string) translated into row changes
and coalesced per key, as the sinks receive them in a bounded run. Then:

* Parquet (changeflow/io/parquet.py), rows/s, one row per op: the sink's own
  two steps called directly (key each op by partition, then group and write
  the partition's files), and the WriteParquetBackup transform on the
  FnApiRunner.
* Database (changeflow/io/sql.py), changes/s into a fresh SQLite file with
  the version guard: the sink's batch write called directly (changes in
  version order, 500 per transaction, as its flush does), the same changes
  replayed into that database (every op found stale), and the WriteToDatabase
  transform on the FnApiRunner.

Runs ``--repeat`` times and prints min / median / max of each rate. The
FnApiRunner figures are wall times of a whole pipeline, so they include its
start-up and the source; the wall time of the same pipeline without the sink
is printed as well.
"""

import argparse
import collections
import os
import pickle
import statistics
import tempfile
import time

import apache_beam as beam
from workload import write_firehose_archive

from changeflow.config import TableSpec
from changeflow.io import parquet, sql
from changeflow.model import Change, RowOp, audit_version
from changeflow.sql.plans import StatementTranslator
from changeflow.transforms.coalesce import coalesce_changes

ITEMS = TableSpec('shop.items', ('id',), 'items', (
    ('id', 'integer'), ('qty', 'integer'), ('price', 'decimal(10,2)'), ('note', 'string')))
START_US = 1795514400 * 1_000_000  # 2026-11-24 10:00 UTC, the workload's first second
SOURCE_CHUNKS = 16


def coalesced_changes(events, keys):
    """The workload's statements as the sinks get them: one Change per row."""
    with tempfile.TemporaryDirectory() as folder:
        statements = write_firehose_archive(os.path.join(folder, 'audit.gz'), events, keys=keys)
    translator = StatementTranslator([ITEMS])
    by_row = collections.defaultdict(list)
    for query_id, statement in enumerate(statements, 1):
        time_us = START_US + query_id // 1000 * 1_000_000  # the workload logs whole seconds
        for seq, row in enumerate(translator.translate(statement, 'shop').changes):
            op = RowOp(row.kind, audit_version(time_us, query_id, query_id, seq), row.values,
                       row.assignments, f'audit.gz#{query_id}', row.condition)
            by_row[row.table, row.key].append(Change(row.table, row.key, (op,), time_us))
    return [coalesce_changes(changes) for changes in by_row.values()]


def parquet_direct(changes, folder):
    """(seconds keying, seconds writing, rows written) of the sink's DoFns called directly."""
    layouts = {ITEMS.source: parquet._layout(ITEMS)}
    keyer = parquet._KeyByPartition({ITEMS.source: ITEMS.target})
    writer = parquet._WritePartitionFn(folder, layouts, 250_000)
    writer.setup()
    started = time.perf_counter()
    partitions = collections.defaultdict(list)
    for change in changes:
        for partition, single in keyer.process(change):
            partitions[partition].append(single)
    keyed = time.perf_counter()
    written = sum(output.records for partition in partitions.items()
                  for output in writer.process(partition)
                  if isinstance(output, parquet.WrittenFile))
    return keyed - started, time.perf_counter() - keyed, written


def database_direct(changes, url, batch_size=500):
    """Seconds to apply ``changes`` as the sink's flush does, batch by batch."""
    writer = sql._WriteDoFn(url, [ITEMS], batch_size, 0, 'changeflow_')
    writer.setup()
    items = [sql._Item(change, None, None)
             for change in sorted(changes, key=lambda change: change.ops[0].version)]
    started = time.perf_counter()
    for start in range(0, len(items), batch_size):
        outcome = writer._write(items[start:start + batch_size])
        if outcome.dead:
            raise RuntimeError(f'dead letters in the benchmark: {outcome.dead[:3]}')
    elapsed = time.perf_counter() - started
    writer.teardown()
    return elapsed


def pipeline_seconds(changes, sink=None):
    """Wall time of a FnApiRunner pipeline feeding ``changes`` to ``sink`` (or to
    nothing). The changes are read from pickle files by the pipeline: held in a
    closure, they would be pickled again at every stage of the job's graph."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, f'changes-{i}.pickle') for i in range(SOURCE_CHUNKS)]
        for i, path in enumerate(paths):
            with open(path, 'wb') as f:
                pickle.dump(changes[i::SOURCE_CHUNKS], f)
        started = time.perf_counter()
        with beam.Pipeline(runner='FnApiRunner') as p:
            source = p | beam.Create(paths) | beam.FlatMap(_read_pickle)
            if sink is not None:
                _ = source | sink
        return time.perf_counter() - started


def _read_pickle(path):
    with open(path, 'rb') as f:
        return pickle.load(f)


def spread(rates):
    low, middle, high = min(rates), statistics.median(rates), max(rates)
    return f'{middle:>10,.0f} /s median  (min {low:,.0f}, max {high:,.0f})'


def bench_parquet(changes, repeat):
    rows = sum(len(change.ops) for change in changes)
    direct, writing, runner, bare = [], [], [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as folder:
            keying, write, written = parquet_direct(changes, folder)
        assert written == rows, (written, rows)
        direct.append(rows / (keying + write))
        writing.append(rows / write)
    for _ in range(repeat):
        bare.append(pipeline_seconds(changes))
        with tempfile.TemporaryDirectory() as folder:
            runner.append(rows / pipeline_seconds(
                changes, parquet.WriteParquetBackup(folder, [ITEMS])))
    print(f'Parquet backup, {rows:,} rows ({len(changes):,} coalesced changes)')
    print(f'  key + write, no Beam      {spread(direct)}')
    print(f'  write step alone          {spread(writing)}')
    print(f'  FnApiRunner, wall time    {spread(runner)}')
    print(f'  (same pipeline without the sink: {statistics.median(bare):.2f} s median)')


def bench_database(changes, repeat):
    fresh, replayed, runner, bare = [], [], [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as folder:
            url = f'sqlite:///{folder}/replica.db'
            fresh.append(len(changes) / database_direct(changes, url))
            replayed.append(len(changes) / database_direct(changes, url))
    for _ in range(repeat):
        bare.append(pipeline_seconds(changes))
        with tempfile.TemporaryDirectory() as folder:
            runner.append(len(changes) / pipeline_seconds(
                changes, sql.WriteToDatabase(f'sqlite:///{folder}/replica.db', [ITEMS])))
    ops = sum(len(change.ops) for change in changes)
    print(f'Database sink (SQLite, version guard), {len(changes):,} changes ({ops:,} ops)')
    print(f'  fresh replica, no Beam    {spread(fresh)}')
    print(f'  replay (all stale)        {spread(replayed)}')
    print(f'  FnApiRunner, wall time    {spread(runner)}')
    print(f'  (same pipeline without the sink: {statistics.median(bare):.2f} s median)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=200_000)
    parser.add_argument('--keys', type=int, default=20_000)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--sink', choices=('parquet', 'database', 'both'), default='both')
    args = parser.parse_args()
    changes = coalesced_changes(args.events, args.keys)
    print(f'workload: {args.events:,} events over {args.keys:,} keys (bench/workload.py)')
    if args.sink in ('parquet', 'both'):
        bench_parquet(changes, args.repeat)
    if args.sink in ('database', 'both'):
        bench_database(changes, args.repeat)


if __name__ == '__main__':
    main()
