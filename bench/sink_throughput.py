"""Sink throughput: the Parquet backup writer and the database sink, without and with Beam.

    python bench/sink_throughput.py [--events 200000] [--keys 20000] [--repeat 3]
                                    [--sink parquet|database|both] [--direct]

Inputs: the statements of bench/workload.py (half ``INSERT ... ON DUPLICATE
KEY UPDATE``, 40% updates, 10% deletes by key over ``--keys`` rows of one typed
table: integer, integer, decimal(10,2), string) translated into row changes
and coalesced per key, as the sinks receive them in a bounded run. Then:

* Parquet (changeflow/io/parquet.py), rows/s, one row per source op (what the
  job's Parquet branch gets: each shard's source ops in log batches): the
  sink's own two steps called directly as the job runs them (key each log
  batch by partition, then write each partition's files), in CPU seconds;
  the same again into the written backup (every row found held, nothing
  written); and the WriteParquetBackup transform on the FnApiRunner.
* Database (changeflow/io/sql.py), changes/s into a fresh SQLite file with
  the version guard: the sink's write called directly as the bounded job
  calls it (the changes split into 16 shards by ``shards_of``, one
  ``_write_ready`` per shard, so one transaction per shard), in CPU and wall
  seconds; the same changes replayed into that database (every op found
  stale); the streaming form's flush (version order, 500 changes per
  transaction), wall seconds; and the WriteToDatabase transform on the
  FnApiRunner.

Runs ``--repeat`` times and prints min / median / max of each rate
(``--direct``: the direct calls only, for an A/B of checkouts). The
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
from changeflow.transforms.runs import make_batch

ITEMS = TableSpec('shop.items', ('id',), 'items', (
    ('id', 'integer'), ('qty', 'integer'), ('price', 'decimal(10,2)'), ('note', 'string')))
START_US = 1795514400 * 1_000_000  # 2026-11-24 10:00 UTC, the workload's first second
SOURCE_CHUNKS = 16


def source_ops(events, keys):
    """The workload's statements as row changes, one Change per source op."""
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
    return [change for changes in by_row.values() for change in changes]


def coalesced_changes(events, keys):
    """The workload's statements as the database sink gets them: one Change per row."""
    by_row = collections.defaultdict(list)
    for change in source_ops(events, keys):
        by_row[change.table, change.key].append(change)
    return [coalesce_changes(changes) for changes in by_row.values()]


def log_batches(ops):
    """The source ops as the job's Parquet branch gets them: per shard, in version order."""
    shards = collections.defaultdict(list)
    for change in ops:
        for (_, shard), copy in sql.shards_of(change, 16):
            shards[shard].append(copy)
    return [make_batch(ITEMS.source, shard, sorted(changes, key=lambda c: c.ops[0].version))
            for shard, changes in sorted(shards.items())]


def parquet_direct(batches, folder):
    """(CPU seconds keying, CPU seconds writing, rows written) of the sink's DoFns called directly."""
    layouts = {ITEMS.source: parquet._layout(ITEMS)}
    keyer = parquet._KeyBatchByPartition(layouts)
    writer = parquet._WritePartitionFn(folder, layouts, 250_000)
    keyer.setup()
    writer.setup()
    started = time.process_time()
    partitions = collections.defaultdict(list)
    for batch in batches:
        for partition, packed in keyer.process(batch):
            partitions[partition].append(packed)
    keyed = time.process_time()
    written = sum(output.records for partition in partitions.items()
                  for output in writer.process(partition)
                  if isinstance(output, parquet.WrittenFile))
    return keyed - started, time.process_time() - keyed, written


def database_direct(changes, url, batch_size=500):
    """Seconds to apply ``changes`` as the streaming sink's flush does, batch by batch."""
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


def shard_batches(changes, num_shards=sql.DEFAULT_SHARDS):
    """``changes`` as the bounded job's database branch gets them: one list
    per shard (``shards_of``), in version order."""
    shards = collections.defaultdict(list)
    for change in changes:
        for (_, shard), copy in sql.shards_of(change, num_shards):
            shards[shard].append(copy)
    return [(shard, sorted(copies, key=lambda c: c.ops[0].version))
            for shard, copies in sorted(shards.items())]


def database_shards(shards, url, num_shards=sql.DEFAULT_SHARDS):
    """(CPU seconds, wall seconds) to write ``shards`` as the bounded job's
    _WriteBatchFn does: one ``_write_ready`` per shard, the whole shard in
    one transaction."""
    writer = sql._WriteDoFn(url, [ITEMS], 500, 0, 'changeflow_', num_shards=num_shards)
    writer.setup()
    started, wall = time.process_time(), time.perf_counter()
    for shard, changes in shards:
        applied = []
        dead = list(writer._write_ready([(0, change) for change in changes], shard,
                                        len(changes), applied))
        if dead:
            raise RuntimeError(f'dead letters in the benchmark: {dead[:3]}')
    cpu, wall = time.process_time() - started, time.perf_counter() - wall
    writer.teardown()
    return cpu, wall


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


def bench_parquet(ops, repeat, direct_only=False):
    rows = len(ops)
    batches = log_batches(ops)
    direct, writing, held, runner, bare = [], [], [], [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as folder:
            keying, write, written = parquet_direct(batches, folder)
            assert written == rows, (written, rows)
            direct.append(rows / (keying + write))
            writing.append(rows / write)
            keying, write, written = parquet_direct(batches, folder)
            assert written == 0, written
            held.append(rows / (keying + write))
    for _ in range(0 if direct_only else repeat):
        bare.append(pipeline_seconds(ops))
        with tempfile.TemporaryDirectory() as folder:
            runner.append(rows / pipeline_seconds(
                ops, parquet.WriteParquetBackup(folder, [ITEMS])))
    print(f'Parquet backup, {rows:,} rows (source ops, {len(batches)} log batches), CPU time')
    print(f'  key + write, no Beam      {spread(direct)}')
    print(f'  write step alone          {spread(writing)}')
    print(f'  again, all rows held      {spread(held)}')
    if runner:
        print(f'  FnApiRunner, wall time    {spread(runner)}')
        print(f'  (same pipeline without the sink: {statistics.median(bare):.2f} s median)')


def bench_database(changes, repeat, direct_only=False):
    shards = shard_batches(changes)
    rates = collections.defaultdict(list)
    runner, bare = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as folder:
            url = f'sqlite:///{folder}/replica.db'
            for pass_ in ('fresh', 'replay'):
                cpu, wall = database_shards(shards, url)
                rates[pass_, 'cpu'].append(len(changes) / cpu)
                rates[pass_, 'wall'].append(len(changes) / wall)
        with tempfile.TemporaryDirectory() as folder:
            url = f'sqlite:///{folder}/replica.db'
            for pass_ in ('fresh', 'replay'):
                rates[pass_, 'batches'].append(len(changes) / database_direct(changes, url))
    for _ in range(0 if direct_only else repeat):
        bare.append(pipeline_seconds(changes))
        with tempfile.TemporaryDirectory() as folder:
            runner.append(len(changes) / pipeline_seconds(
                changes, sql.WriteToDatabase(f'sqlite:///{folder}/replica.db', [ITEMS])))
    ops = sum(len(change.ops) for change in changes)
    print(f'Database sink (SQLite, version guard), {len(changes):,} changes ({ops:,} ops)')
    print(f'  {len(shards)} shards, a transaction each (the bounded job), no Beam')
    print(f'    fresh replica, CPU      {spread(rates["fresh", "cpu"])}')
    print(f'    fresh replica, wall     {spread(rates["fresh", "wall"])}')
    print(f'    replay (all stale), CPU {spread(rates["replay", "cpu"])}')
    print(f'    replay, wall            {spread(rates["replay", "wall"])}')
    print('  500 per transaction (the streaming flush), no Beam, wall time')
    print(f'    fresh replica           {spread(rates["fresh", "batches"])}')
    print(f'    replay (all stale)      {spread(rates["replay", "batches"])}')
    if runner:
        print(f'  FnApiRunner, wall time    {spread(runner)}')
        print(f'  (same pipeline without the sink: {statistics.median(bare):.2f} s median)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=200_000)
    parser.add_argument('--keys', type=int, default=20_000)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--sink', choices=('parquet', 'database', 'both'), default='both')
    parser.add_argument('--direct', action='store_true',
                        help='time the direct calls only, not the FnApiRunner pipelines')
    args = parser.parse_args()
    print(f'workload: {args.events:,} events over {args.keys:,} keys (bench/workload.py)')
    if args.sink in ('parquet', 'both'):
        bench_parquet(source_ops(args.events, args.keys), args.repeat, args.direct)
    if args.sink in ('database', 'both'):
        bench_database(coalesced_changes(args.events, args.keys), args.repeat, args.direct)


if __name__ == '__main__':
    main()
