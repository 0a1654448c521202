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

import bisect
import functools
import gc
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from changeflow.config import TableSpec
from changeflow.io.sql import DEFAULT_SHARDS, shards_of
from changeflow.model import DEAD_LETTER_TAG, AuditEvent, SourceRecord, dead_letter
from changeflow.schema.model import SourceSchema
from changeflow.schema.timeline import ddl_position
from changeflow.sql.literals import DEFAULT_SERVER_VERSION
from changeflow.transforms.audit_log import AuditLineParser
from changeflow.transforms.decode import RecordDecoder
from changeflow.transforms.guard import guarded, internal_error, lines_original
from changeflow.transforms.runs import make_run, merge_runs, pack, typed_keys, unpack
from changeflow.transforms.sql_changes import ExtractRowChangesFn
from changeflow.transforms.transactions import (
    StatementClass, TransactionTracker, classify_statement, input_end_letters, session_order)

__all__ = ['ParseToConnectionRuns', 'ReplayConnections', 'ReplayConnectionFn', 'Carried',
           'carried_connections', 'carry_state', 'runs_original', 'runs_position', 'RUNS', 'DDL',
           'CARRY']

RUNS = 'runs'
DDL = 'ddl'
CARRY = 'carried'
_SESSION_OPS = frozenset({'QUERY', 'CONNECT', 'DISCONNECT'})
_FLUSH_CHANGES = 4096  # a connection's pending changes before they go out as runs
_HOLD_EVENTS = 5_000  # parsed session events held over a bundle's records


def _records_original(element):
    if isinstance(element, SourceRecord):
        return element.data
    return '\n'.join(event.message for event in element)


def _records_position(element):
    return element.position if isinstance(element, SourceRecord) else element[0].position


_YOUNG_COLLECTION = 50_000  # allocations between young collections (Python's default: 700)


@functools.cache
def _freeze_startup_heap() -> None:
    """Moves what the worker holds when its first DoFn starts (modules, the
    pipeline: ~220k objects) out of the garbage collector's reach, once per
    process: each full collection traversed them all again, and a job's runs
    (thousands of objects unpacked at a time) made one every few seconds: a
    fifth of a 50k-event job's CPU. Only what is cyclic garbage at that
    moment is kept for good. Young collections are made rarer too: a run
    unpacked, replayed and dropped between two of them is never traversed,
    where every 700 allocations promoted it towards the full collections
    (10-13% of a 50k-event job's CPU, measured interleaved). Once per process
    by the cache, not by ``gc.get_freeze_count()``, which counts the frozen
    objects one by one (30-60 ms in every cycle of ``--follow``)."""
    if gc.get_freeze_count() == 0:
        gc.freeze()
    threshold = gc.get_threshold()
    if threshold[0] and threshold[0] < _YOUNG_COLLECTION:
        gc.set_threshold(_YOUNG_COLLECTION, *threshold[1:])


@guarded('parse_audit', _records_original, _records_position)
class _ParseRecordFn(beam.DoFn):
    """SourceRecords (decoded) or chunks of LogEvents -> a run of session
    events per connection and arrival time for the records of a bundle (at
    most ``_HOLD_EVENTS`` events held), the committed DDL statements, dead
    letters."""

    def __init__(self, query_log_limit: int, server_version: int):
        self._server_version = server_version
        self._decoder = RecordDecoder()
        self._parser = AuditLineParser(query_log_limit)

    def setup(self):
        _freeze_startup_heap()

    def start_bundle(self):
        # A record holds ~2 events per connection when 50 interleave: their
        # runs are held across the bundle's records, per window and timestamp,
        # and go out as one run per connection every _HOLD_EVENTS events.
        self._held: Dict[tuple, List] = {}
        self._held_events = 0

    def finish_bundle(self):
        yield from self._release()

    def _release(self):
        held, self._held, self._held_events = self._held, {}, 0
        for (window, timestamp, connection, arrival_ms), events in held.items():
            try:
                run = make_run(events, session_order)
            except Exception as error:  # pylint: disable=broad-except
                # A defect: the held events are no one element's, so their lines
                # are the dead letter's original (not lost with the bundle's end).
                letter = internal_error('parse_audit', error, lines_original(events),
                                        f'connection {connection[0]}/{connection[1]}')
                yield TaggedOutput(DEAD_LETTER_TAG, WindowedValue(letter, timestamp, (window,)))
                continue
            yield WindowedValue((connection, (*run, arrival_ms)), timestamp, (window,))

    def process(self, element, window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam):
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
        arrival_ms = element.arrival_ms if isinstance(element, SourceRecord) else 0
        held = self._held
        for connection, session_events in by_connection.items():
            held.setdefault((window, timestamp, connection, arrival_ms), []).extend(session_events)
            self._held_events += len(session_events)
        if self._held_events >= _HOLD_EVENTS:
            yield from self._release()


class ParseToConnectionRuns(beam.PTransform):
    """PCollection[SourceRecord | tuple of LogEvent] -> ``RUNS``: ((serverhost,
    connection id), run of its session events sorted in statement order, with
    the record's arrival time: ``(first key, packed events, arrival ms)``);
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


def runs_original(element):
    """A connection's grouped runs as dead-letter bytes: its audit lines."""
    (serverhost, connection_id), values = element
    events = []
    for value in values:
        if isinstance(value, Carried):
            events.extend(value.pending_events())
        else:
            events.extend(unpack(value[1]))
    return lines_original(events)


def runs_position(element):
    """Where a connection's grouped runs come from, for a dead letter."""
    (serverhost, connection_id), _ = element
    return f'connection {serverhost}/{connection_id}'


class Carried(NamedTuple):
    """One connection's replay state from a stream's catch-up cycle to the
    next, committed with the checkpoints (:func:`carry_state`)."""
    tracker: Optional[dict] = None        # TransactionTracker.snapshot(): open writes, settings
    held: Tuple[tuple, ...] = ()          # runs the reorder buffer held back, not yet replayed
    last: Optional[AuditEvent] = None     # the last event replayed

    def pending_events(self) -> List[AuditEvent]:
        """Its open writes and held-back events (for a dead letter)."""
        events = [AuditEvent(*fields) for fields in (self.tracker or {}).get('pending', ())]
        for run in self.held:
            events.extend(unpack(run[1]))
        return events


def carried_connections(state) -> List[Tuple[Tuple[str, int], Carried]]:
    """A committed checkpoint state (None before the first) -> the connections
    it carries, as ReplayConnections' ``carried`` elements."""
    connections = []
    for entry in (state or {}).get('connections', ()):
        held = tuple((*make_run([AuditEvent(*fields) for fields in events], session_order),
                      arrival_ms) for arrival_ms, events in entry['held'])
        last = None if entry['last'] is None else AuditEvent(*entry['last'])
        connections.append(((entry['serverhost'], entry['connection_id']),
                            Carried(entry['tracker'], held, last)))
    return connections


def carry_state(carried: Sequence[Tuple[Tuple[str, int], Carried]]) -> Optional[dict]:
    """ReplayConnections' ``CARRY`` output, all of it -> the checkpoint state
    (plain JSON, in a stable order: an unchanged state encodes the same;
    None when no connection is carried)."""
    if not carried:
        return None
    connections = []
    for (serverhost, connection_id), value in sorted(carried, key=lambda item: item[0]):
        held = sorted(value.held, key=lambda run: (run[0], run[2]))
        connections.append({
            'serverhost': serverhost, 'connection_id': connection_id, 'tracker': value.tracker,
            'held': [[arrival_ms, [list(event) for event in unpack(data)]]
                     for _, data, arrival_ms in held],
            'last': None if value.last is None else list(value.last)})
    return {'connections': connections}


def _hold_back(runs: List[tuple], cutoff_ms: int) -> Tuple[List[tuple], Tuple[tuple, ...]]:
    """(runs to replay, runs held back): from the first event (in statement
    order) of a run that arrived after ``cutoff_ms`` on, every event is held,
    so a statement arriving later on another shard still goes in its place."""
    recent = [run[0] for run in runs if run[2] > cutoff_ms]
    if not recent:
        return runs, ()
    hold_from = min(recent)
    replay, held = [], []
    for run in runs:
        if run[0] >= hold_from:
            held.append(run)
            continue
        events = unpack(run[1])
        keys = [session_order(event) for event in events]
        cut = bisect.bisect_left(keys, hold_from)
        if cut == len(events):
            replay.append(run)
            continue
        replay.append((keys[0], pack(events[:cut]), run[2]))
        held.append((keys[cut], pack(events[cut:]), run[2]))
    return replay, tuple(held)


@guarded('transactions', runs_original, runs_position, buffered=False)
class ReplayConnectionFn(beam.DoFn):
    """One connection's runs -> its committed transactions, translated, as
    runs of changes per (table, shard); dead letters of both steps; in a
    stream's cycle (``lateness_ms`` not None), the connection's state to carry."""

    def __init__(self, autocommit: bool, server_version: int, rollback_on_timeout: bool,
                 tables: Sequence[TableSpec], schema, time_zone: str, num_shards: int,
                 lateness_ms: Optional[int] = None):
        self._tracker_args = (autocommit, server_version, rollback_on_timeout)
        self._translate = ExtractRowChangesFn(tables, schema, time_zone, server_version)
        self._num_shards = num_shards
        self._lateness_ms = lateness_ms
        self._counters = {name: Metrics.counter('changeflow.transactions', name) for name in (
            'committed', 'rolled_back', 'failed', 'reads', 'ddl', 'session', 'duplicates',
            'transactions', 'open_at_end', 'unresolved', 'carried_connections',
            'carried_open', 'held_back', 'late')}
        # The counts replay makes per connection, as plain ints until finish_bundle:
        # a Beam counter's inc costs a metrics-container lookup per call.
        self._tallies = dict.fromkeys(('transactions', 'committed', 'rolled_back', 'failed',
                                       'reads', 'ddl', 'session', 'duplicates'), 0)

    def setup(self):
        self._translate.setup()

    def finish_bundle(self):
        tallies = self._tallies
        for name, count in tallies.items():
            if count:
                self._counters[name].inc(count)
                tallies[name] = 0
        self._translate.report_counts()

    def process(self, element, timeline=None, cycle=None):
        (serverhost, connection_id), values = element
        carried, runs = Carried(), []
        for value in values:
            if isinstance(value, Carried):
                carried = value
            else:
                runs.append(value)
        runs.extend(carried.held)
        held = ()
        if self._lateness_ms and not cycle.get('final'):
            runs, held = _hold_back(runs, cycle['read_started_ms'] - self._lateness_ms)
        tracker = TransactionTracker(serverhost, connection_id, *self._tracker_args).restore(
            carried.tracker)
        last = yield from self.replay(tracker, runs, timeline, carried.last)
        if self._lateness_ms is None or cycle.get('final'):  # the input ends here
            yield from input_end_letters(tracker, self._counters['unresolved'],
                                         self._counters['open_at_end'])
            return
        yield from input_end_letters(tracker, self._counters['unresolved'])
        snapshot = tracker.snapshot()
        if snapshot is not None or held:
            self._counters['carried_connections'].inc()
            self._counters['carried_open'].inc(len(tracker.open_statements()))
            self._counters['held_back'].inc(bool(held))
            yield TaggedOutput(CARRY, ((serverhost, connection_id), Carried(snapshot, held, last)))

    def replay(self, tracker: TransactionTracker, runs, timeline=None, last=None):
        """Feeds ``runs`` to ``tracker`` (a connection's, possibly holding an
        open transaction) and yields the committed changes' runs per (table,
        shard) and dead letters; the tracker's counts go to the counters and
        restart at 0 (reported at finish_bundle). ``last``: the event a previous
        cycle replayed last (an earlier one arriving now came too late). Returns
        the last event replayed."""
        replayed_to = None if last is None else session_order(last)
        buckets: Dict[Tuple[str, int], list] = {}
        pending = 0
        transactions = 0
        feed, translate, num_shards = tracker.feed, self._translate.process, self._num_shards
        for event in merge_runs(runs, session_order):
            if replayed_to is not None:  # events before the first new one came too late
                if session_order(event) < replayed_to:
                    yield self._late(event, last)
                    continue
                replayed_to = None
            last = event
            for transaction in feed(event):
                transactions += 1
                for out in translate(transaction, timeline):
                    if isinstance(out, TaggedOutput):
                        yield out
                        continue
                    for shard_key, change in shards_of(out, num_shards):
                        bucket = buckets.get(shard_key)
                        if bucket is None:
                            bucket = buckets[shard_key] = []
                        bucket.append(change)
                        pending += 1
            if pending >= _FLUSH_CHANGES:
                yield from _flush(buckets)
                pending = 0
        yield from _flush(buckets)
        tallies = self._tallies
        tallies['transactions'] += transactions
        for name, count in tracker.counts.items():
            tallies[name] += count
            tracker.counts[name] = 0
        return last

    def _late(self, event: AuditEvent, last: AuditEvent):
        self._counters['late'].inc()
        return TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            'transactions', 'after-lateness',
            f'connection {event.serverhost}/{event.connection_id}: this statement (query id '
            f'{event.query_id}) arrived after its connection was replayed to query id '
            f'{last.query_id}: later than the allowed lateness (or delivered twice)',
            event.line, event.position))


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

    A bounded input dead-letters the writes still open at its end
    ('transaction-open-at-end'). A stream's catch-up cycle instead passes
    ``carried`` (the last cycle's ``CARRY`` output, restored by
    :func:`carried_connections`) and ``cycle`` (a singleton dict whose
    ``read_started_ms`` is when the cycle's read began): each connection
    continues from its carried state, and ``CARRY`` holds what to carry
    into the next cycle (open writes, session settings, held-back events),
    for :func:`carry_state`; a cycle marked ``final`` (an archive's last
    slice) ends the input as a bounded one does. With ``lateness_seconds`` > 0 the cycle is a
    reorder buffer: a connection's events from the first that arrived less
    than the lateness before the read began are held back, so an earlier
    statement arriving later (another shard, ``distribution: Random``)
    is still replayed in its place; one arriving after its connection was
    replayed past it is dead-lettered ('after-lateness').
    """

    def __init__(self, tables: Sequence[TableSpec], schema: SourceSchema = None, *,
                 autocommit: bool = True, server_version: int = DEFAULT_SERVER_VERSION,
                 rollback_on_timeout: bool = False, time_zone: str = '+00:00',
                 num_shards: int = DEFAULT_SHARDS, timeline=None, carried=None, cycle=None,
                 lateness_seconds: float = 0.0):
        super().__init__()
        if (carried is None) != (cycle is None):
            raise ValueError('ReplayConnections: give both carried and cycle (a stream\'s '
                             'cycle) or neither (a bounded input)')
        if not lateness_seconds >= 0:
            raise ValueError(f'lateness_seconds must be 0 or more, not {lateness_seconds!r}')
        lateness_ms = None if carried is None else round(lateness_seconds * 1000)
        self._fn = ReplayConnectionFn(autocommit, server_version, rollback_on_timeout,
                                       tables, schema, time_zone, num_shards, lateness_ms)
        self._timeline = timeline
        self._carried = carried
        self._cycle = cycle

    def expand(self, runs):
        side = {} if self._timeline is None else {
            'timeline': beam.pvalue.AsSingleton(self._timeline)}
        if self._carried is not None:
            runs = (runs, self._carried) | 'WithCarried' >> beam.Flatten()
            side['cycle'] = beam.pvalue.AsSingleton(self._cycle)
        return (runs
                | 'ConnectionTyped' >> typed_keys()
                | 'GroupConnection' >> beam.GroupByKey()
                | 'ReplayAndTranslate' >> beam.ParDo(self._fn, **side).with_outputs(
                    DEAD_LETTER_TAG, CARRY, main='changes'))
