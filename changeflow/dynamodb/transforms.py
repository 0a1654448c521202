"""Beam transforms over :mod:`changeflow.dynamodb.records`: decode, then Changes.

Element-wise, any runner. Each has a dead-letter output (``DEAD_LETTER_TAG``):
one bad record becomes one DeadLetter and never fails the job or takes other
records with it.

Per record (the streaming form)::

    records, dead = sources | DecodeDynamoDBRecords()
    changes, dead_keys = records | DynamoDBChanges({'prod-Card': ('id', 'title')})

In coarse elements (the bounded job, :mod:`changeflow.pipelines.dynamodb_sync`):
:class:`StreamRecordsToShardRuns` takes chunks of SourceRecords and
:class:`ExportToShardRuns` a table's export, and both give runs of Changes per
(table, shard), the input of :func:`changeflow.pipelines.branches.write_branches`.
There, a record whose item does not fit its table's declared columns
(:mod:`changeflow.dynamodb.columns`) is dead-lettered and its row marked
diverged (a DIVERGE op), and one whose Keys do not match the configured key
marks the whole table: the replica says what it no longer knows.
"""

from typing import (
    Dict, FrozenSet, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union)

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from changeflow.config import ExportSeed, TableSpec
from changeflow.dynamodb.columns import ItemColumns, ItemMismatch
from changeflow.dynamodb.exports import STEP as EXPORT_STEP, data_file_items, read_summary
from changeflow.handlers.events import event_version, stream_event
from changeflow.dynamodb.records import (
    STEP, BadRecord, StreamRecord, decode_source_record, export_version, is_export_version,
    to_change)
from changeflow.io.json_records import dumps_json, json_value
from changeflow.io.sql import DEFAULT_SHARDS, shards_of
from changeflow.model import (
    DEAD_LETTER_TAG, Change, DeadLetter, SourceRecord, dead_letter, diverge_op)
from changeflow.transforms.connections import change_version
from changeflow.transforms.guard import describe_error, guarded
from changeflow.transforms.runs import batch_changes, make_batch, make_run

__all__ = ['DecodeDynamoDBRecords', 'DynamoDBChanges', 'StreamRecordsToShardRuns',
           'ExportToShardRuns', 'DropInitialState', 'EVENTS']

EVENTS = 'events'   # StreamRecordsToShardRuns' runs of handler events

_DeadLetterOutput = pvalue.TaggedOutput[Literal[DEAD_LETTER_TAG], DeadLetter]
_NAMESPACE = 'changeflow.dynamodb'


class _DecodeFn(beam.DoFn):
    def __init__(self, table: Optional[str]):
        self._table = table
        self._received = Metrics.counter(_NAMESPACE, 'records_received')
        self._decoded = Metrics.counter(_NAMESPACE, 'stream_records')
        self._ttl = Metrics.counter(_NAMESPACE, 'ttl_deletes')
        self._dead_lettered = Metrics.counter(_NAMESPACE, 'dead_lettered')

    def process(self, source: SourceRecord) -> Iterable[Union[StreamRecord, _DeadLetterOutput]]:
        self._received.inc()
        for out in decode_source_record(source, self._table):
            if isinstance(out, DeadLetter):
                self._dead_lettered.inc()
                yield pvalue.TaggedOutput(DEAD_LETTER_TAG, out)
            else:
                self._decoded.inc()
                if out.ttl_delete:
                    self._ttl.inc()
                yield out


class DecodeDynamoDBRecords(beam.PTransform):
    """PCollection[SourceRecord] -> main: StreamRecord, DEAD_LETTER_TAG: DeadLetter.

    Takes every form :func:`~changeflow.dynamodb.records.decode_source_record`
    does (the streams reader's records, ``dynamodb-jsonl`` lines, Lambda
    events, Kinesis destination records). ``table``: for inputs that do not
    name their table. Order within a source record is kept; nothing is
    deduplicated (the version guard downstream drops replays).
    """

    MAIN = 'stream_records'

    def __init__(self, table: Optional[str] = None):
        super().__init__()
        if table is not None and not (isinstance(table, str) and table):
            raise ValueError(f'table must be a table name, not {table!r}')
        self._table = table

    def expand(self, sources):
        return sources | 'DecodeStreamRecord' >> beam.ParDo(_DecodeFn(self._table)).with_outputs(
            DEAD_LETTER_TAG, main=self.MAIN)


class _ChangeFn(beam.DoFn):
    def __init__(self, keys: Mapping[str, Sequence[str]]):
        self._keys = {table: tuple(names) for table, names in keys.items()}
        self._changes = Metrics.counter(_NAMESPACE, 'changes')
        self._no_ops = Metrics.counter(_NAMESPACE, 'no_op_modifies')
        self._unconfigured = Metrics.counter(_NAMESPACE, 'unconfigured_table')
        self._dead_lettered = Metrics.counter(_NAMESPACE, 'dead_lettered')

    def process(self, record: StreamRecord) -> Iterable[Union[Change, _DeadLetterOutput]]:
        names = self._keys.get(record.table)
        if names is None:
            self._unconfigured.inc()
            return
        try:
            change = to_change(record, names)
        except BadRecord as e:
            self._dead_lettered.inc()
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                STEP, e.reason, e.detail, dumps_json({
                    'table': record.table, 'event': record.event.value, 'version': record.version,
                    'keys': {name: json_value(v) for name, v in record.keys}}),
                record.position))
            return
        if change is None:
            self._no_ops.inc()
            return
        self._changes.inc()
        yield change


class DynamoDBChanges(beam.PTransform):
    """PCollection[StreamRecord] -> main: Change, DEAD_LETTER_TAG: DeadLetter.

    ``keys``: table name -> key attribute names in key order. Records of
    other tables are counted (``unconfigured_table``) and dropped, as the
    audit path drops tables it is not configured for; no-op MODIFYs are
    counted and dropped; a record without a configured key attribute is a
    ``missing-key`` dead letter.
    """

    MAIN = 'changes'

    def __init__(self, keys: Mapping[str, Sequence[str]]):
        super().__init__()
        if not keys or any(not names for names in keys.values()):
            raise ValueError(f'keys must map each table to its key attributes, not {keys!r}')
        self._keys = keys

    def expand(self, records):
        return records | 'ToChange' >> beam.ParDo(_ChangeFn(self._keys)).with_outputs(
            DEAD_LETTER_TAG, main=self.MAIN)


# --- coarse elements: runs of Changes per (table, shard) ----------------------


class _ShardRunsFn(beam.DoFn):
    """Stream records -> Changes of the configured tables, bucketed per
    (table, shard) into runs; what does not fit is dead-lettered and marked."""

    def __init__(self, tables: Sequence[TableSpec], num_shards: int,
                 event_tables: FrozenSet[str] = frozenset(), old_images: bool = False):
        self._tables = tables
        self._num_shards = num_shards
        self._event_tables = event_tables
        self._old_images = old_images
        self._counters = {name: Metrics.counter(_NAMESPACE, name) for name in (
            'changes', 'no_op_modifies', 'unconfigured_table', 'dead_lettered',
            'rows_marked', 'tables_marked')}

    def setup(self):
        self._specs = {spec.source: (spec.key, ItemColumns(spec.columns) if spec.columns
                                     else None) for spec in self._tables}

    def _add(self, record: StreamRecord, original: bytes, buckets: Dict, step: str = STEP,
             events: Optional[Dict] = None):
        """Buckets the record's Change (and, for a table with handlers, its
        event in ``events``); yields the dead letter of one that does not fit."""
        entry = self._specs.get(record.table)
        if entry is None:
            self._counters['unconfigured_table'].inc()
            return
        try:
            change = to_change(record, *entry, old_image=self._old_images)
        except BadRecord as e:
            self._counters['dead_lettered'].inc()
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                step, e.reason, e.detail, original, record.position))
            row = e.key if isinstance(e, ItemMismatch) else ()  # () : the key does not fit
            self._counters['rows_marked' if row else 'tables_marked'].inc()
            change = Change(record.table, row, (diverge_op(
                record.version, e.reason, e.detail, record.position),), record.created_us)
        else:
            if change is None:
                self._counters['no_op_modifies'].inc()
                return
            self._counters['changes'].inc()
        for shard_key, copy in shards_of(change, self._num_shards):
            buckets.setdefault(shard_key, []).append(copy)
            if events is not None and change.key and record.table in self._event_tables:
                events.setdefault(shard_key, []).append(
                    stream_event(record, change.key, original))


def _runs(buckets: Dict[Tuple[str, int], List[Change]]):
    for shard_key, changes in buckets.items():
        yield shard_key, make_run(changes, change_version)


def _chunk_original(chunk) -> bytes:
    return b'\n'.join(source.data for source in chunk)


def _chunk_position(chunk) -> str:
    return chunk[0].position if chunk else ''


@guarded(STEP, _chunk_original, _chunk_position)
class _StreamShardRunsFn(_ShardRunsFn):
    def __init__(self, tables, num_shards, kinesis: bool, event_tables=frozenset(),
                 old_images: bool = False):
        super().__init__(tables, num_shards, event_tables, old_images)
        self._kinesis = kinesis
        self._received = Metrics.counter(_NAMESPACE, 'records_received')
        self._decoded = Metrics.counter(_NAMESPACE, 'stream_records')
        self._ttl = Metrics.counter(_NAMESPACE, 'ttl_deletes')

    def process(self, chunk: Sequence[SourceRecord]):
        buckets: Dict = {}
        events: Dict = {}
        decoded = ttl = 0
        for source in chunk:
            for out in decode_source_record(source, kinesis=self._kinesis):
                if isinstance(out, DeadLetter):
                    self._counters['dead_lettered'].inc()
                    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, out)
                    continue
                decoded += 1
                ttl += out.ttl_delete
                yield from self._add(out, source.data, buckets, events=events)
        self._received.inc(len(chunk))
        self._decoded.inc(decoded)
        self._ttl.inc(ttl)
        yield from _runs(buckets)
        for shard_key, shard_events in events.items():
            yield pvalue.TaggedOutput(EVENTS, (shard_key, make_run(shard_events, event_version)))


class StreamRecordsToShardRuns(beam.PTransform):
    """PCollection of SourceRecord sequences (chunks) -> main: ((table, shard),
    run of Changes), DEAD_LETTER_TAG: DeadLetter.

    Each SourceRecord holds a stream record or a Lambda event in any form
    :func:`~changeflow.dynamodb.records.decode_source_record` takes. Records
    of tables not in ``tables`` are counted (``unconfigured_table``) and
    dropped, no-op MODIFYs too. Each record becomes one Change
    (:func:`~changeflow.dynamodb.records.to_change`, the item fitted to its
    table's declared columns when it declares them), sharded as the
    database sink shards (:func:`changeflow.io.sql.shards_of`); each chunk
    gives one run per (table, shard) it touches. A record that does not fit
    is dead-lettered (``original``: the SourceRecord's bytes) and marks its
    row ('unknown-attribute', 'attribute-type') or, when its Keys are not
    the configured key ('missing-key', 'key-mismatch'), its table.

    Args:
        tables: the replicated tables, by DynamoDB table name.
        kinesis: the SourceRecords' ``sequence`` is a Kinesis sequence number
            (the Kinesis destination's archives), not a line number.
        event_tables: tables with handlers: their records also go to the
            ``EVENTS`` output as runs of
            :class:`~changeflow.handlers.events.ChangeEvent` per (table,
            shard), with their images and event names (no-op MODIFYs and
            records whose Keys do not fit are not events).
        old_images: each op carries its record's old image as ``old``
            (:func:`~changeflow.dynamodb.records.to_change`), for
            notifications' old values; off, the runs hold new images only.
    """

    MAIN = 'runs'

    def __init__(self, tables: Sequence[TableSpec], kinesis: bool = False,
                 num_shards: int = DEFAULT_SHARDS, event_tables=(), old_images: bool = False):
        super().__init__()
        if not tables:
            raise ValueError('tables is empty')
        self._fn = _StreamShardRunsFn(tuple(tables), num_shards, kinesis,
                                      frozenset(event_tables), old_images)

    def expand(self, chunks):
        return chunks | 'ToShardRuns' >> beam.ParDo(self._fn).with_outputs(
            DEAD_LETTER_TAG, EVENTS, main=self.MAIN)


_SEED_STEP = 'seed_dynamodb'
_MARKS = 'marks'    # the runs of whole-table marks of seeds that cannot be read
_EXPORTED = 'exported'  # (table, export version) of each export read


class _SeedFiles:
    """S3 clients per endpoint, made once per DoFn instance."""

    def __init__(self):
        self._clients = {}

    def client(self, seed: ExportSeed):
        if not seed.export.startswith('s3://'):
            return None
        if seed.endpoint_url not in self._clients:
            import boto3
            self._clients[seed.endpoint_url] = boto3.client('s3', endpoint_url=seed.endpoint_url)
        return self._clients[seed.endpoint_url]


def _unreadable(seed: ExportSeed, detail: str, version: str, where: str):
    """The dead letter of a seed that cannot be read, and the whole-table mark
    (in every shard) that says the replica lacks part of its initial state."""
    letter = dead_letter(_SEED_STEP, 'bad-export', detail, where, where)
    mark = Change(seed.table, (), (diverge_op(version, 'bad-export', detail, where),), 0)
    return letter, mark


@guarded(_SEED_STEP, lambda seed: seed.export, lambda seed: seed.export, buffered=False)
class _ListExportFilesFn(beam.DoFn):
    """ExportSeed -> (seed, summary, data file) per data file; MARKS: the runs
    of a whole-table mark when the export cannot be read or is another table's."""

    def __init__(self, num_shards: int):
        self._num_shards = num_shards

    def setup(self):
        self._files = _SeedFiles()

    def process(self, seed: ExportSeed):
        try:
            summary = read_summary(seed.export, s3=self._files.client(seed))
            if summary.table != seed.table:
                raise ValueError(f'the export is of table {summary.table!r}, not '
                                 f'{seed.table!r}')
        except Exception as error:  # anything unread leaves the replica short of items
            letter, mark = _unreadable(seed, describe_error(error), export_version(0),
                                       seed.export)
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            buckets: Dict = {}
            for shard_key, copy in shards_of(mark, self._num_shards):
                buckets.setdefault(shard_key, []).append(copy)
            for run in _runs(buckets):
                yield pvalue.TaggedOutput(_MARKS, run)
            return
        yield pvalue.TaggedOutput(_EXPORTED, (seed.table, export_version(summary.export_time_us)))
        for data_file in summary.files:
            yield seed, summary, data_file



@guarded(_SEED_STEP, lambda element: element[2].location,
         lambda element: element[2].location)
class _ExportFileRunsFn(_ShardRunsFn):
    """(seed, summary, data file) -> runs of its items' Changes, dead letters;
    a file that does not match its manifest marks its table."""

    def __init__(self, tables, num_shards):
        super().__init__(tables, num_shards)
        self._items = Metrics.counter(_NAMESPACE, 'export_items')

    def setup(self):
        super().setup()
        self._files = _SeedFiles()

    def process(self, element):
        seed, summary, data_file = element
        key_names = self._specs[seed.table][0]
        buckets: Dict = {}
        try:
            items = list(data_file_items(summary, data_file, key_names,
                                         s3=self._files.client(seed)))
        except Exception as error:  # a damaged or missing file: its items are unknown
            letter, mark = _unreadable(seed, describe_error(error),
                                       export_version(summary.export_time_us),
                                       data_file.location)
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            items = []
            for shard_key, copy in shards_of(mark, self._num_shards):
                buckets.setdefault(shard_key, []).append(copy)
        for line, record in items:
            if isinstance(record, DeadLetter):
                self._counters['dead_lettered'].inc()
                yield pvalue.TaggedOutput(DEAD_LETTER_TAG, record)
                continue
            yield from self._add(record, line, buckets, EXPORT_STEP)
        self._items.inc(len(items))
        yield from _runs(buckets)


class ExportToShardRuns(beam.PTransform):
    """PCollection[ExportSeed] -> main: ((table, shard), run of Changes),
    DEAD_LETTER_TAG: DeadLetter.

    Each seed's export (:mod:`changeflow.dynamodb.exports`, local or
    ``s3://`` through boto3's default chain) is read one data file per
    element; every item becomes a whole-row write versioned
    :func:`~changeflow.dynamodb.records.export_version`, so the stream's
    changes from the export time on apply after it and older ones before
    it. Items are fitted to the declared columns as stream records are. An
    export that cannot be read, is another table's, or has a data file that
    does not match its manifest (count, MD5) is dead-lettered
    ('bad-export') and its table marked diverged: the replica lacks items.
    """

    MAIN = 'runs'
    EXPORTED = _EXPORTED  # (table, export version) of each export read

    def __init__(self, tables: Sequence[TableSpec], num_shards: int = DEFAULT_SHARDS):
        super().__init__()
        if not tables:
            raise ValueError('tables is empty')
        self._tables = tuple(tables)
        self._num_shards = num_shards

    def expand(self, seeds):
        listed = seeds | 'ListExportFiles' >> beam.ParDo(
            _ListExportFilesFn(self._num_shards)).with_outputs(
                DEAD_LETTER_TAG, _MARKS, _EXPORTED, main='files')
        read = (listed['files']
                | 'SpreadFiles' >> beam.Reshuffle()
                | 'ReadExportFile' >> beam.ParDo(
                    _ExportFileRunsFn(self._tables, self._num_shards)).with_outputs(
                        DEAD_LETTER_TAG, main=self.MAIN))
        return {
            self.MAIN: (listed[_MARKS], read[self.MAIN]) | 'WithMarks' >> beam.Flatten(),
            self.EXPORTED: listed[_EXPORTED],
            DEAD_LETTER_TAG: ((listed[DEAD_LETTER_TAG], read[DEAD_LETTER_TAG])
                              | 'SeedDeadLetters' >> beam.Flatten()),
        }


def _without_initial_state(batch, exported=()):
    table, shard, _ = batch
    export = max((version for name, version in exported if name == table), default=None)
    changes = batch_changes(batch)
    kept = []
    for change in changes:
        ops = tuple(op for op in change.ops if not is_export_version(op.version)
                    and (export is None or op.version >= export))
        if ops:
            kept.append(change if len(ops) == len(change.ops) else change._replace(ops=ops))
    if len(kept) == len(changes) and all(a is b for a, b in zip(kept, changes)):
        yield batch
    elif kept:
        yield make_batch(table, shard, kept)


class DropInitialState(beam.PTransform):
    """Shard batches (:func:`changeflow.transforms.runs.make_batch`) without the
    ops of a seeded export, nor the stream's ops from before the export (the
    export holds their outcome): for notifications, which are about what
    changed since, not about the items a table held when it was exported.

    Args:
        exported: ExportToShardRuns' ``EXPORTED`` output, (table, export
            version) per export read.
    """

    def __init__(self, exported):
        super().__init__()
        self._exported = exported

    def expand(self, batches):
        return batches | 'DropExportOps' >> beam.FlatMap(
            _without_initial_state, exported=beam.pvalue.AsList(self._exported))
