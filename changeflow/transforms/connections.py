"""The bounded data flow's first half in coarse elements: records to
per-connection runs, and each connection's replay and translation into runs of
row changes per (table, shard).

One element per record through decode and parse (a CloudWatch payload holds
dozens to thousands of lines; a raw log is read in chunks of lines), one
shuffle of compressed runs per connection, and one element per flush of a
connection's changes into each (table, shard). The logic is the per-element
transforms' own (:class:`changeflow.transforms.decode.RecordDecoder`,
:class:`changeflow.transforms.audit_log.AuditLineParser`,
:class:`changeflow.transforms.transactions.TransactionTracker`, the SQL
stage's DoFn): only the element boundaries move, so the outputs are the same.
"""

import gc
from typing import Dict, List, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from changeflow.config import TableSpec
from changeflow.io.sql import DEFAULT_SHARDS, shards_of
from changeflow.model import DEAD_LETTER_TAG, SourceRecord
from changeflow.schema.model import SourceSchema
from changeflow.schema.timeline import ddl_position
from changeflow.sql.literals import DEFAULT_SERVER_VERSION
from changeflow.transforms.audit_log import AuditLineParser
from changeflow.transforms.decode import RecordDecoder
from changeflow.transforms.guard import guarded, lines_original
from changeflow.transforms.runs import make_run, merge_runs, unpack
from changeflow.transforms.sql_changes import ExtractRowChangesFn
from changeflow.transforms.transactions import (
    StatementClass, TransactionTracker, classify_statement, input_end_letters, session_order)

__all__ = ['ParseToConnectionRuns', 'ReplayConnections', 'RUNS', 'DDL']

RUNS = 'runs'
DDL = 'ddl'
_SESSION_OPS = frozenset({'QUERY', 'CONNECT', 'DISCONNECT'})
_FLUSH_CHANGES = 4096  # a connection's pending changes before they go out as runs


def _records_original(element):
    if isinstance(element, SourceRecord):
        return element.data
    return '\n'.join(event.message for event in element)


def _records_position(element):
    return element.position if isinstance(element, SourceRecord) else element[0].position


def _freeze_startup_heap() -> None:
    """Moves what the worker holds when its first DoFn starts (modules, the
    pipeline: ~220k objects) out of the garbage collector's reach, once per
    process: each full collection traversed them all again, and a job's runs
    (thousands of objects unpacked at a time) made one every few seconds: a
    fifth of a 50k-event job's CPU. Only what is cyclic garbage at that
    moment is kept for good."""
    if gc.get_freeze_count() == 0:
        gc.freeze()


@guarded('parse_audit', _records_original, _records_position)
class _ParseRecordFn(beam.DoFn):
    """A SourceRecord (decoded) or a chunk of LogEvents -> a run of session
    events per connection, the committed DDL statements, dead letters."""

    def __init__(self, query_log_limit: int, server_version: int):
        self._server_version = server_version
        self._decoder = RecordDecoder()
        self._parser = AuditLineParser(query_log_limit)

    def setup(self):
        _freeze_startup_heap()

    def process(self, element):
        if isinstance(element, SourceRecord):
            events, dead = self._decoder.decode(element)
            if dead is not None:
                yield TaggedOutput(DEAD_LETTER_TAG, dead)
                return
        else:
            events = element
        self._parser.reset()
        parsed, dead = self._parser.parse(events)
        for letter in dead:
            yield TaggedOutput(DEAD_LETTER_TAG, letter)
        by_connection: Dict[Tuple[str, int], List] = {}
        for event in parsed:
            operation = event.operation
            if operation == 'QUERY':
                if (not event.retcode and not event.truncated and classify_statement(
                        event.object, self._server_version)[0] == StatementClass.DDL):
                    yield TaggedOutput(DDL, (ddl_position(event.timestamp_us, event.query_id),
                                             event.database, event.object))
            elif operation not in _SESSION_OPS:
                continue
            by_connection.setdefault((event.serverhost, event.connection_id), []).append(event)
        self._parser.report()
        for connection, session_events in by_connection.items():
            yield connection, make_run(session_events, session_order)


class ParseToConnectionRuns(beam.PTransform):
    """PCollection[SourceRecord | tuple of LogEvent] -> ``RUNS``: ((serverhost,
    connection id), run of its session events sorted in statement order);
    ``DDL``: (position, database, sql) of each committed DDL statement, for
    :class:`changeflow.transforms.follow_schema.BuildSchemaTimeline`;
    DEAD_LETTER_TAG: records that cannot be decoded and lines that cannot be
    parsed, as DecodeCloudWatchRecords and ParseAuditLines make them."""

    def __init__(self, query_log_limit: int, server_version: int = DEFAULT_SERVER_VERSION):
        super().__init__()
        self._limit = query_log_limit
        self._server_version = server_version

    def expand(self, records):
        return records | 'ParseRecords' >> beam.ParDo(
            _ParseRecordFn(self._limit, self._server_version)).with_outputs(
                DEAD_LETTER_TAG, DDL, main=RUNS)


def _runs_original(element):
    (serverhost, connection_id), runs = element
    return lines_original([event for _, data in runs for event in unpack(data)])


def _runs_position(element):
    (serverhost, connection_id), _ = element
    return f'connection {serverhost}/{connection_id}'


@guarded('transactions', _runs_original, _runs_position, buffered=False)
class _ReplayConnectionFn(beam.DoFn):
    """One connection's runs -> its committed transactions, translated, as
    runs of changes per (table, shard); dead letters of both steps."""

    def __init__(self, autocommit: bool, server_version: int, rollback_on_timeout: bool,
                 tables: Sequence[TableSpec], schema, time_zone: str, num_shards: int):
        self._tracker_args = (autocommit, server_version, rollback_on_timeout)
        self._translate = ExtractRowChangesFn(tables, schema, time_zone, server_version)
        self._num_shards = num_shards
        self._counters = {name: Metrics.counter('changeflow.transactions', name) for name in (
            'committed', 'rolled_back', 'failed', 'reads', 'ddl', 'session', 'duplicates',
            'transactions', 'open_at_end', 'unresolved')}

    def setup(self):
        self._translate.setup()

    def process(self, element, timeline=None):
        (serverhost, connection_id), runs = element
        tracker = TransactionTracker(serverhost, connection_id, *self._tracker_args)
        yield from self.replay(tracker, runs, timeline)
        yield from input_end_letters(tracker, self._counters['unresolved'],
                                     self._counters['open_at_end'])

    def replay(self, tracker: TransactionTracker, runs, timeline=None):
        """Feeds ``runs`` to ``tracker`` (a connection's, possibly holding an
        open transaction) and yields the committed changes' runs per (table,
        shard) and dead letters; the tracker's counts go to the counters and
        restart at 0."""
        buckets: Dict[Tuple[str, int], list] = {}
        pending = 0
        transactions = 0
        for event in merge_runs(runs, session_order):
            for transaction in tracker.feed(event):
                transactions += 1
                for out in self._translate.process(transaction, timeline):
                    if isinstance(out, TaggedOutput):
                        yield out
                        continue
                    for shard_key, change in shards_of(out, self._num_shards):
                        buckets.setdefault(shard_key, []).append(change)
                        pending += 1
            if pending >= _FLUSH_CHANGES:
                yield from _flush(buckets)
                pending = 0
        yield from _flush(buckets)
        self._counters['transactions'].inc(transactions)
        for name, count in tracker.counts.items():
            self._counters[name].inc(count)
            tracker.counts[name] = 0


def change_version(change) -> str:
    return change.ops[0].version


def _flush(buckets: Dict[Tuple[str, int], list]):
    for shard_key, changes in buckets.items():
        yield shard_key, make_run(changes, change_version)
    buckets.clear()


class ReplayConnections(beam.PTransform):
    """``RUNS`` of ParseToConnectionRuns -> ((table, shard), run of row changes
    sorted by version) and DEAD_LETTER_TAG.

    Each connection's events are merged in statement order and replayed
    (:class:`changeflow.transforms.transactions.TransactionTracker`); each
    committed transaction is translated as ExtractRowChanges does (with the
    schema timeline as a side input when given); its changes are bucketed
    by :func:`changeflow.io.sql.shards_of` (a whole-table change into every
    shard of its table) and go out every few thousand changes.
    """

    def __init__(self, tables: Sequence[TableSpec], schema: SourceSchema = None, *,
                 autocommit: bool = True, server_version: int = DEFAULT_SERVER_VERSION,
                 rollback_on_timeout: bool = False, time_zone: str = '+00:00',
                 num_shards: int = DEFAULT_SHARDS, timeline=None):
        super().__init__()
        self._fn = _ReplayConnectionFn(autocommit, server_version, rollback_on_timeout,
                                       tables, schema, time_zone, num_shards)
        self._timeline = timeline

    def expand(self, runs):
        side = {} if self._timeline is None else {
            'timeline': beam.pvalue.AsSingleton(self._timeline)}
        return (runs
                | 'GroupConnection' >> beam.GroupByKey()
                | 'ReplayAndTranslate' >> beam.ParDo(self._fn, **side).with_outputs(
                    DEAD_LETTER_TAG, main='changes'))
