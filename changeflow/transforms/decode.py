"""Decode CloudWatch Logs subscription payloads into LogEvents.

CloudWatch Logs delivers each batch of log events to Kinesis (and Firehose to
S3) as gzip of a JSON envelope ``{"messageType", "owner", "logGroup",
"logStream", "subscriptionFilters", "logEvents": [{"id", "timestamp",
"message"}]}``; ``CONTROL_MESSAGE`` envelopes are health checks without data.
A record may hold several gzip members (one envelope each, as Firehose
concatenates them), be gzip inside gzip (Firehose compression on top), or be
plain JSON. Runs on any runner; element-wise.

Bounds: a record inflates to at most :data:`MAX_INFLATED_BYTES` (64 MiB)
in total, over all its gzip members and layers (a Kinesis record holds at
most 1 MiB, so a real payload is far below it). A record that inflates
beyond it (a gzip bomb: a few KB of nested gzip that expand to gigabytes) is
dead-lettered ``too-large`` after inflating at most that much, never whole.
Error messages quote values through a bounded ``repr`` (a deeply nested JSON
value in a wrongly typed field is described, not recursed into).
"""

import zlib
from typing import Iterable, Iterator, Literal, List, Optional, Tuple, Union

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from changeflow.model import DEAD_LETTER_TAG, DeadLetter, LogEvent, SourceRecord, dead_letter
from changeflow.transforms.guard import guarded, preview

__all__ = ['DecodeError', 'envelopes', 'decode_record', 'RecordDecoder', 'DecodeCloudWatchRecords',
           'inflate_gzip_member', 'GZIP_MAGIC', 'MAX_INFLATED_BYTES']

GZIP_MAGIC = b'\x1f\x8b'
# Gzip layers unwrapped at most (CloudWatch's own, plus Firehose's compression).
_MAX_GZIP_DEPTH = 3
_JSON_START = frozenset(b'{ \t\r\n')
_CHUNK = 1 << 16
_ID_TYPES = (str, int)  # AWS sends a 56-digit string, moto an int
# Most bytes one gzip member may inflate to (see the module docstring).
MAX_INFLATED_BYTES = 64 << 20


class DecodeError(ValueError):
    """A record that is not a CloudWatch Logs payload.

    ``reason`` is one of 'bad-gzip', 'bad-json', 'bad-utf8', 'bad-envelope',
    'too-large'.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


def inflate_gzip_member(data: bytes, offset: int = 0,
                        limit: int = MAX_INFLATED_BYTES) -> Tuple[bytes, int]:
    """Decompress the one gzip member starting at ``data[offset]``.

    Returns (content, end offset of the member). Fed in chunks so that walking
    a file of many members stays linear (zlib copies whatever follows the
    member into ``unused_data``), and never inflates more than ``limit`` + 1
    bytes.

    Raises:
        DecodeError: 'bad-gzip' when no valid, complete member starts there;
        'too-large' when its content exceeds ``limit`` bytes.
    """
    if data[offset:offset + 2] != GZIP_MAGIC:
        raise DecodeError('bad-gzip', f'no gzip member at offset {offset}:'
                                      f' {data[offset:offset + 16]!r}')
    view = memoryview(data)
    inflater = zlib.decompressobj(wbits=31)
    parts = []
    size = 0
    position = offset
    try:
        while not inflater.eof and position < len(data):
            chunk = view[position:position + _CHUNK]
            part = inflater.decompress(chunk, limit - size + 1)
            size += len(part)
            if size > limit:
                raise DecodeError('too-large', f'gzip member at offset {offset} inflates to more'
                                               f' than {limit:,} bytes')
            parts.append(part)
            position += len(chunk) - len(inflater.unconsumed_tail)
    except zlib.error as e:
        raise DecodeError('bad-gzip', f'gzip member at offset {offset}: {e}') from None
    if not inflater.eof:
        raise DecodeError('bad-gzip', f'gzip member at offset {offset} is truncated')
    return b''.join(parts), position - len(inflater.unused_data)


def _payloads(data: bytes, depth: int = 0,
              budget: Optional[List[int]] = None) -> Iterable[bytes]:
    """The JSON documents in ``data``: each innermost gzip member, or data itself.
    ``budget[0]``: bytes the record may still inflate to, over all its layers."""
    if budget is None:
        budget = [MAX_INFLATED_BYTES]
    if data[:2] != GZIP_MAGIC:
        yield data
        return
    if depth == _MAX_GZIP_DEPTH:
        raise DecodeError('bad-gzip', f'more than {_MAX_GZIP_DEPTH} nested gzip layers')
    offset = 0
    while offset < len(data):
        try:
            member, offset = inflate_gzip_member(data, offset, budget[0])
        except DecodeError as error:
            if error.reason == 'too-large':
                raise DecodeError('too-large', f'the record inflates to more than'
                                               f' {MAX_INFLATED_BYTES:,} bytes') from None
            raise
        budget[0] -= len(member)
        yield from _payloads(member, depth + 1, budget)


def _load_json(payload: bytes):
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        try:
            payload.decode('utf-8')
        except UnicodeDecodeError as u:
            raise DecodeError('bad-utf8', f'payload is not UTF-8: {u}') from None
        raise DecodeError('bad-json', f'{e}: {payload[:80]!r}') from None


def _field(mapping: dict, name: str, types, where: str):
    value = mapping.get(name)
    if not isinstance(value, types) or isinstance(value, bool):
        raise DecodeError('bad-envelope', f'{where}: {name!r} is {preview(value)}, expected '
                                          f'{" or ".join(t.__name__ for t in types)}')
    return value


def envelopes(data: bytes) -> Iterator[dict]:
    """The CloudWatch Logs envelopes in one record's bytes, CONTROL_MESSAGEs included.

    Raises:
        DecodeError: 'bad-gzip', 'bad-json', 'bad-utf8' or 'bad-envelope'.
    """
    if data[:2] != GZIP_MAGIC and data[:1] and data[0] not in _JSON_START:
        raise DecodeError('bad-gzip', f'neither gzip nor JSON: {data[:16]!r}')
    for payload in _payloads(data):
        envelope = _load_json(payload)
        if not isinstance(envelope, dict):
            raise DecodeError('bad-envelope', f'payload is a {type(envelope).__name__},'
                                              f' not an object')
        yield envelope


def decode_record(record: SourceRecord) -> List[LogEvent]:
    """The log events of one record, in order; [] for a CONTROL_MESSAGE.

    ``event_id`` is kept as a string (AWS sends 56 digits as a string, moto an
    int). Each event's position is ``record.position + '@' + index``, the index
    running over all envelopes in the record.

    Raises:
        DecodeError: 'bad-gzip', 'bad-json', 'bad-utf8' or 'bad-envelope'.
    """
    return _decode(record)[0]


def _decode(record: SourceRecord) -> Tuple[List[LogEvent], int]:
    """(the record's log events, how many CONTROL_MESSAGE envelopes it held)."""
    events = []
    controls = 0
    base = record.position + '@'
    for envelope in envelopes(record.data):
        message_type = _field(envelope, 'messageType', (str,), 'envelope')
        if message_type == 'CONTROL_MESSAGE':
            controls += 1
            continue
        if message_type != 'DATA_MESSAGE':
            raise DecodeError('bad-envelope', f'unknown messageType {preview(message_type)}')
        log_group = _field(envelope, 'logGroup', (str,), 'envelope')
        log_stream = _field(envelope, 'logStream', (str,), 'envelope')
        entries = _field(envelope, 'logEvents', (list,), 'envelope')
        if not _add_events(entries, log_group, log_stream, base, events):
            _add_checked_events(entries, log_group, log_stream, base, events)
    return events, controls


def _add_events(entries: list, log_group: str, log_stream: str, base: str,
                events: List[LogEvent]) -> bool:
    """Appends the LogEvents of an envelope whose entries are all as AWS writes
    them (a dict with a str message and id and an int timestamp); False, with
    ``events`` as it was, at the first that is not (then the checked loop reads
    them all: moto's int ids, or the error)."""
    new = tuple.__new__  # skips LogEvent's Python-level __new__ on this hot path
    append = events.append
    start = index = len(events)  # index: of the next event in the record
    try:
        for event in entries:
            message, event_id, timestamp = event['message'], event['id'], event['timestamp']
            if type(message) is not str or type(event_id) is not str or type(timestamp) is not int:
                raise TypeError
            append(new(LogEvent, (message, log_group, log_stream, event_id, timestamp,
                                  f'{base}{index}')))
            index += 1
    except (KeyError, TypeError):
        del events[start:]
        return False
    return True


def _add_checked_events(entries: list, log_group: str, log_stream: str, base: str,
                        events: List[LogEvent]) -> None:
    """Appends an envelope's LogEvents, or raises DecodeError naming the first bad entry."""
    new = tuple.__new__
    for i, event in enumerate(entries):
        if type(event) is not dict:
            raise DecodeError('bad-envelope', f'logEvents[{i}] is {preview(event)}, not an object')
        message, event_id, timestamp = event.get('message'), event.get('id'), event.get('timestamp')
        if type(message) is not str or type(event_id) not in _ID_TYPES or type(timestamp) is not int:
            raise DecodeError('bad-envelope', f'logEvents[{i}] needs a str message, a str or int'
                                              f' id and an int timestamp: {preview(event, 200)}')
        events.append(new(LogEvent, (message, log_group, log_stream, str(event_id), timestamp,
                                     base + str(len(events)))))


class RecordDecoder:
    """Decodes records as the decode step does, counting them: what every form
    of the stage shares (DecodeCloudWatchRecords, one element per event; the
    coarse data flow, one per record). Make it in a DoFn's ``__init__``."""

    def __init__(self):
        namespace = 'changeflow.decode'
        self._records_received = Metrics.counter(namespace, 'records_received')
        self._control_messages = Metrics.counter(namespace, 'control_messages')
        self._log_events = Metrics.counter(namespace, 'log_events')
        self._dead_lettered = Metrics.counter(namespace, 'dead_lettered')

    def decode(self, record: SourceRecord) -> Tuple[List[LogEvent], Optional[DeadLetter]]:
        """(the record's log events, None), or ([], its DeadLetter) when it
        cannot be decoded (its events are all or nothing)."""
        self._records_received.inc()
        try:
            events, controls = _decode(record)
        except DecodeError as e:
            self._dead_lettered.inc()
            return [], dead_letter('decode', e.reason, e.detail, record.data, record.position)
        if controls:
            self._control_messages.inc(controls)
        self._log_events.inc(len(events))
        return events, None


_DeadLetterOutput = pvalue.TaggedOutput[Literal[DEAD_LETTER_TAG], DeadLetter]


@guarded('decode', lambda record: record.data, lambda record: record.position)
class _DecodeRecordFn(beam.DoFn):
    def __init__(self):
        self._decoder = RecordDecoder()

    def process(self, record: SourceRecord) -> Iterable[Union[LogEvent, _DeadLetterOutput]]:
        events, dead = self._decoder.decode(record)
        if dead is not None:
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, dead)
        yield from events


class DecodeCloudWatchRecords(beam.PTransform):
    """PCollection[SourceRecord] -> main: LogEvent, DEAD_LETTER_TAG: DeadLetter.

    A record that cannot be decoded becomes one DeadLetter(step='decode',
    original=the record's raw bytes) without failing the pipeline or losing
    the other records; its events are all or nothing. Order within a record is
    kept; nothing is deduplicated (Kinesis redelivery is handled downstream).

    Example::

        events, dead = records | DecodeCloudWatchRecords()
    """

    MAIN = 'log_events'

    def expand(self, records):
        return records | 'DecodeRecord' >> beam.ParDo(_DecodeRecordFn()).with_outputs(
            DEAD_LETTER_TAG, main=self.MAIN)
