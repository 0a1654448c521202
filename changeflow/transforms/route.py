"""Fans coalesced changes out to independent sink branches.

DIVERGE markers (:data:`changeflow.model.MARKER_KINDS`) go to the database
branch only: they are about the replica, and a change log (Parquet) or a
notification records what the source did.
"""

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from changeflow.model import DEAD_LETTER_TAG, MARKER_KINDS
from changeflow.transforms.guard import changes_original, guarded

__all__ = ['DATABASE', 'PARQUET', 'NOTIFY', 'BRANCHES', 'RouteChanges']

DATABASE = 'database'
PARQUET = 'parquet'
NOTIFY = 'notify'
BRANCHES = (DATABASE, PARQUET, NOTIFY)


@guarded('route', changes_original, lambda change: change.ops[-1].position)
class _RouteFn(beam.DoFn):
    def __init__(self, branches):
        self._branches = branches
        self._routed = {b: Metrics.counter('changeflow.route', f'to_{b}') for b in branches}

    def process(self, change):
        source_ops = None
        for branch in self._branches:
            routed = change
            if branch != DATABASE:
                if source_ops is None:
                    source_ops = tuple(op for op in change.ops if op.kind not in MARKER_KINDS)
                if not source_ops:
                    continue
                if len(source_ops) != len(change.ops):
                    routed = change._replace(ops=source_ops)
            self._routed[branch].inc()
            yield TaggedOutput(branch, routed)


class RouteChanges(beam.PTransform):
    """PCollection[Change] -> one tagged output per branch, and DEAD_LETTER_TAG.

    Each branch starts with a Reshuffle, so the runner does not fuse the sinks
    into one stage: a sink whose bundle fails and is retried re-runs alone,
    never the others (no duplicate notifications because a backup failed).
    The sinks themselves catch their own errors into dead letters.
    """

    def __init__(self, branches):
        super().__init__()
        unknown = sorted(set(branches) - set(BRANCHES))
        if unknown:
            raise ValueError(f'unknown branch(es) {unknown}; known: {list(BRANCHES)}')
        self._branches = tuple(branches)

    def expand(self, changes):
        routed = changes | 'Route' >> beam.ParDo(_RouteFn(self._branches)).with_outputs(
            DEAD_LETTER_TAG, *self._branches)
        return {DEAD_LETTER_TAG: routed[DEAD_LETTER_TAG],
                **{branch: routed[branch] | f'Isolate_{branch}' >> beam.Reshuffle()
                   for branch in self._branches}}
