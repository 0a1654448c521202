"""The bounded data flow's second half in coarse elements: each (table,
shard)'s runs of changes merged in version order and coalesced row by row
(:class:`changeflow.transforms.coalesce.ShardFolder`), then one batch per
shard to each branch.

A batch is ``(table, shard, packed changes)`` (:func:`changeflow.transforms.runs.make_batch`):
the shard's coalesced changes, its whole-table change first. The database branch gets every batch whole (each
shard applies a whole-table op to its own rows); the change-log branches
(Parquet, notifications) get the changes without DIVERGE markers and a
whole-table change only from shard 0, as RouteChanges gives them.
"""

from typing import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from changeflow.model import DEAD_LETTER_TAG, MARKER_KINDS
from changeflow.transforms.coalesce import ShardFolder
from changeflow.transforms.connections import change_version
from changeflow.transforms.guard import changes_original, guarded
from changeflow.transforms.route import BRANCHES, DATABASE
from changeflow.transforms.runs import batch_changes, make_batch, merge_runs, unpack

__all__ = ['FoldShards', 'RouteShardBatches']


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
        folder = ShardFolder()
        for change in merge_runs(runs, change_version):
            folder.add(change)
        changes = folder.changes(table)
        self._rows.inc(sum(1 for change in changes if change.key))
        self._folded.inc(folder.ops_in - sum(len(change.ops) for change in changes))
        yield make_batch(table, shard, changes)


class FoldShards(beam.PTransform):
    """((table, shard), run of changes) -> (table, shard, coalesced changes),
    one per shard, and DEAD_LETTER_TAG (a shard that could not be folded)."""

    MAIN = 'batches'

    def expand(self, runs):
        return (runs
                | 'GroupShard' >> beam.GroupByKey()
                | 'Fold' >> beam.ParDo(_FoldShardFn()).with_outputs(DEAD_LETTER_TAG,
                                                                    main=self.MAIN))


class _RouteBatchFn(beam.DoFn):
    def __init__(self, branches):
        self._branches = branches
        self._routed = {b: Metrics.counter('changeflow.route', f'to_{b}') for b in branches}

    def process(self, batch):
        table, shard, _ = batch
        changes = logged = logged_batch = None
        for branch in self._branches:
            if changes is None:
                changes = batch_changes(batch)
            if branch == DATABASE:
                self._routed[branch].inc(sum(1 for c in changes if c.key or shard == 0))
                yield TaggedOutput(branch, batch)
                continue
            if logged is None:
                logged = []
                for change in changes:
                    if not change.key and shard != 0:
                        continue
                    ops = tuple(op for op in change.ops if op.kind not in MARKER_KINDS)
                    if ops:
                        logged.append(change if len(ops) == len(change.ops)
                                      else change._replace(ops=ops))
            self._routed[branch].inc(len(logged))
            if logged:
                yield TaggedOutput(branch, logged_batch or (
                    logged_batch := make_batch(table, shard, logged)))


class RouteShardBatches(beam.PTransform):
    """Batches -> one tagged output per branch, each behind a Reshuffle so the
    runner never fuses two sinks into one stage (a sink's retried bundle
    re-runs alone)."""

    def __init__(self, branches: Sequence[str]):
        super().__init__()
        unknown = sorted(set(branches) - set(BRANCHES))
        if unknown:
            raise ValueError(f'unknown branch(es) {unknown}; known: {list(BRANCHES)}')
        self._branches = tuple(branches)

    def expand(self, batches):
        routed = batches | 'Route' >> beam.ParDo(_RouteBatchFn(self._branches)).with_outputs(
            *self._branches)
        return {branch: routed[branch] | f'Isolate_{branch}' >> beam.Reshuffle()
                for branch in self._branches}

