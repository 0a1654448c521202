"""The shard fold and the notification writer, called directly: CPU per change.

    PYTHONPATH=. python bench/notify_fold.py [--events 200000] [--keys 20000] [--repeat 3]
                                             [--part fold|notify|both] [--profile]

Inputs: the statements of bench/workload.py translated into source ops
(bench/sink_throughput.py), cut into runs per (table, shard) as the replay
step emits them (every 4,096 changes in version order, bucketed by
:func:`changeflow.io.sql.shards_of`, packed by ``make_run``).

* Fold (changeflow/transforms/shard_batches.py): each shard's runs through
  the job's fold DoFn (merge in version order, ``ShardFolder``, the log
  batches and the coalesced batch packed), in CPU microseconds per source op.
* Notifications (changeflow/io/notify.py): the fold's log batches through
  the job's notification DoFn with the job's rule (``file:``, table
  shop.items, op upsert, as bench/pipeline_throughput.py configures it) into
  a fresh file, in CPU microseconds per notification written; then the same
  batches again into that file (every id found in its index, nothing written).

Prints min / median / max of ``--repeat`` runs. ``--profile`` prints a
cProfile (CPU time) of one run of each part instead.
"""

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import tempfile
import time

from sink_throughput import ITEMS, source_ops

from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from changeflow.io import notify
from changeflow.io.sql import shards_of
from changeflow.model import DEAD_LETTER_TAG
from changeflow.transforms.connections import change_version
from changeflow.transforms.runs import make_run
from changeflow.transforms.shard_batches import FoldShards, _FoldShardFn

FLUSH = 4096  # changes per replay flush (changeflow/transforms/connections.py)


def shard_runs(ops):
    """((table, shard), [runs]) as the fold's GroupByKey hands them over."""
    ordered = sorted(ops, key=change_version)
    shards = {}
    for start in range(0, len(ordered), FLUSH):
        buckets = {}
        for change in ordered[start:start + FLUSH]:
            for shard_key, copy in shards_of(change, 16):
                buckets.setdefault(shard_key, []).append(copy)
        for shard_key, changes in buckets.items():
            shards.setdefault(shard_key, []).append(make_run(changes, change_version))
    return sorted(shards.items())


def fold(elements):
    """(CPU seconds, log batches, batches) of the fold DoFn over every shard."""
    fn = _FoldShardFn()
    logs, batches = [], []
    started = time.process_time()
    for element in elements:
        for output in fn.process(element):
            tag = getattr(output, 'tag', None)
            if tag == FoldShards.LOG:
                logs.append(output.value)
            elif tag == DEAD_LETTER_TAG:
                raise RuntimeError(f'dead letter in the benchmark: {output.value}')
            else:
                batches.append(output)
    return time.process_time() - started, logs, batches


def notify_file(logs, path):
    """(CPU seconds, lines written, dead letters) of the notification DoFn over ``logs``."""
    transform = notify.WriteNotifications(
        [{'to': f'file:{path}', 'when': {'table': ITEMS.source, 'op': 'upsert'}}], [ITEMS],
        batched=True)
    fn = notify._NotifyFn(transform._rules, transform._tables, transform._batch_size,
                          batched=True)
    written = dead = 0
    started = time.process_time()
    fn.setup()
    fn.start_bundle()
    outputs = [output for batch in logs for output in fn.process(batch, Timestamp(0), GlobalWindow())]
    outputs.extend(fn.finish_bundle())
    fn.teardown()
    elapsed = time.process_time() - started
    for output in outputs:
        if getattr(output, 'tag', None) == DEAD_LETTER_TAG:
            dead += 1
        else:
            written += len(output.value)
    return elapsed, written, dead


def spread(values, unit):
    return (f'{statistics.median(values):8.2f} {unit} median  '
            f'(min {min(values):.2f}, max {max(values):.2f})')


def profiled(call, *args):
    profile = cProfile.Profile(time.process_time)
    result = profile.runcall(call, *args)
    pstats.Stats(profile).sort_stats('tottime').print_stats(25)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=200_000)
    parser.add_argument('--keys', type=int, default=20_000)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--part', choices=('fold', 'notify', 'both'), default='both')
    parser.add_argument('--profile', action='store_true')
    args = parser.parse_args()
    ops = source_ops(args.events, args.keys)
    elements = shard_runs(ops)
    changes = len(ops)
    _, logs, _ = fold(elements)
    del ops[1:]  # the inputs are built: a worker holds its element alone, not the whole input
    gc.collect()
    gc.freeze()
    if args.profile:
        if args.part in ('fold', 'both'):
            profiled(fold, elements)
        if args.part in ('notify', 'both'):
            with tempfile.TemporaryDirectory() as folder:
                profiled(notify_file, logs, os.path.join(folder, 'notes.jsonl'))
        return
    folds, fresh, again = [], [], []
    for _ in range(args.repeat):
        if args.part in ('fold', 'both'):
            seconds, _, _ = fold(elements)
            folds.append(seconds * 1e6 / changes)
        if args.part in ('notify', 'both'):
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, 'notes.jsonl')
                seconds, written, dead = notify_file(logs, path)
                assert written and not dead, (written, dead)
                fresh.append(seconds * 1e6 / written)
                seconds, rewritten, dead = notify_file(logs, path)
                assert not rewritten and not dead, (rewritten, dead)
                again.append(seconds * 1e6 / written)
    print(f'{changes:,} source ops, {len(elements)} shards, {len(logs)} log batches')
    if folds:
        print(f'  fold, per source op            {spread(folds, "us")}')
    if fresh:
        print(f'  notifications, per one written {spread(fresh, "us")}  ({written:,} written)')
        print(f'  again, every id found          {spread(again, "us")}')


if __name__ == '__main__':
    main()
