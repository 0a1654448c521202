"""Beam transforms over :mod:`changeflow.dynamodb.records`: decode, then Changes.

Element-wise, any runner. Each has a dead-letter output (``DEAD_LETTER_TAG``):
one bad record becomes one DeadLetter and never fails the job or takes other
records with it.

Example::

    records, dead = sources | DecodeDynamoDBRecords()
    changes, dead_keys = records | DynamoDBChanges({'prod-Card': ('id', 'title')})
"""

from typing import Iterable, Literal, Mapping, Optional, Sequence, Union

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from changeflow.dynamodb.records import (
    STEP, BadRecord, StreamRecord, decode_source_record, to_change)
from changeflow.io.json_records import dumps_json, json_value
from changeflow.model import DEAD_LETTER_TAG, Change, DeadLetter, SourceRecord, dead_letter

__all__ = ['DecodeDynamoDBRecords', 'DynamoDBChanges']

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
