"""The bounded data flow's second half in coarse elements: each (table,
shard)'s runs of changes merged in version order and coalesced row by row
(:class:`changeflow.transforms.coalesce.ShardFolder`), then one batch per
shard to each branch.

A batch is ``(table, shard, packed changes)`` (:func:`changeflow.transforms.runs.make_batch`):
the shard's coalesced changes, its whole-table change first. The database branch gets every batch whole (each
shard applies a whole-table op to its own rows).

The change-log branches (Parquet, notifications) get the *source ops*
instead: every op as the SQL stage (or the DynamoDB decoder) made it, one
Change of one op with its own event time, in version order, a replayed
version of a row once, in *log batches* of at most ``LOG_BATCH`` ops, without
DIVERGE markers and with a whole-table op only from shard 0. A source op is
the same whatever else a run read, where a coalesced change is not (a run
that reads more folds more ops into one): so a Parquet row or a notification
per source op can be written exactly once across runs over overlapping
inputs (a crash-replayed catch-up, a backfill over a synced period).
"""

from typing import List, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from changeflow.model import DEAD_LETTER_TAG, MARKER_KINDS, Change
from changeflow.transforms.coalesce import ShardFolder
from changeflow.transforms.connections import change_version
from changeflow.transforms.guard import changes_original, guarded
from changeflow.transforms.route import BRANCHES, DATABASE
from changeflow.transforms.runs import (batch_counts, gc_paused, make_batch, merge_runs, typed_keys,
                                       unpack)

__all__ = ['FoldShards', 'RouteShardBatches', 'LOG_BATCH']

LOG_BATCH = 16_384  # source ops per log batch: a bounded buffer, few elements


def _shard_original(element):
    _, runs = element
    return changes_original([change for _, data in runs for change in unpack(data)])


@guarded('coalesce', _shard_original, lambda element: f'shard {element[0]!r}')
class _FoldShardFn(beam.DoFn):
    def __init__(self):
        self._rows = Metrics.counter('changeflow.coalesce', 'rows')
        self._folded = Metrics.counter('changeflow.coalesce', 'ops_folded')

    def process(self, element):
        (table, shard), runs = element
        with gc_paused():  # changes, folded rows and the log: many small objects, no cycles
            folder = ShardFolder()
            log: List[Change] = []
            for change in merge_runs(runs, change_version):
                new = folder.add(change)
                if not change.key and shard != 0:
                    continue  # the change log takes a whole-table op from shard 0 only
                for op in new:
                    if op.kind not in MARKER_KINDS:
                        log.append(change if len(change.ops) == 1 else change._replace(ops=(op,)))
                if len(log) >= LOG_BATCH:
                    yield TaggedOutput(FoldShards.LOG, make_batch(table, shard, log))
                    log = []
            if log:
                yield TaggedOutput(FoldShards.LOG, make_batch(table, shard, log))
            changes = folder.changes(table)
            self._rows.inc(sum(1 for change in changes if change.key))
            self._folded.inc(folder.ops_in - sum(len(change.ops) for change in changes))
            batch = make_batch(table, shard, changes)
            del folder, log, changes  # freed while paused: resumed, the collector would scan them
        yield batch


class FoldShards(beam.PTransform):
    """((table, shard), run of changes) -> ``MAIN``: (table, shard, coalesced
    changes), one per shard; ``LOG``: the shard's source ops in log batches
    (see the module docstring); DEAD_LETTER_TAG: a shard that could not be
    folded."""

    MAIN = 'batches'
    LOG = 'log'

    def expand(self, runs):
        return (runs
                | 'ShardTyped' >> typed_keys()
                | 'GroupShard' >> beam.GroupByKey()
                | 'Fold' >> beam.ParDo(_FoldShardFn()).with_outputs(
                    DEAD_LETTER_TAG, self.LOG, main=self.MAIN))


class _RouteBatchFn(beam.DoFn):
    """A batch (or log batch) to each of ``branches``, counting its changes."""

    def __init__(self, branches):
        self._branches = branches
        self._routed = {b: Metrics.counter('changeflow.route', f'to_{b}') for b in branches}

    def process(self, batch):
        _, shard, _ = batch
        changes, keyless = batch_counts(batch)  # read, not decoded: the sinks decode it
        for branch in self._branches:
            self._routed[branch].inc(
                changes - keyless if branch == DATABASE and shard != 0 else changes)
            yield TaggedOutput(branch, batch)


class RouteShardBatches(beam.PTransform):
    """``{FoldShards.MAIN: batches, FoldShards.LOG: log batches}`` -> one
    PCollection per branch: the database branch gets the coalesced batches,
    the change-log branches the log batches; each behind a Reshuffle so the
    runner never fuses two sinks into one stage (a sink's retried bundle
    re-runs alone)."""

    def __init__(self, branches: Sequence[str]):
        super().__init__()
        unknown = sorted(set(branches) - set(BRANCHES))
        if unknown:
            raise ValueError(f'unknown branch(es) {unknown}; known: {list(BRANCHES)}')
        self._branches = tuple(branches)

    def expand(self, folded):
        routed = {}
        logged = tuple(b for b in self._branches if b != DATABASE)
        if DATABASE in self._branches:
            routed[DATABASE] = (folded[FoldShards.MAIN] | 'RouteBatches' >> beam.ParDo(
                _RouteBatchFn((DATABASE,))).with_outputs(DATABASE))[DATABASE]
        if logged:
            log = folded[FoldShards.LOG] | 'RouteLog' >> beam.ParDo(
                _RouteBatchFn(logged)).with_outputs(*logged)
            routed.update((branch, log[branch]) for branch in logged)
        return {branch: routed[branch] | f'Isolate_{branch}' >> beam.Reshuffle()
                for branch in self._branches}
