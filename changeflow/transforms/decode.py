"""Decode CloudWatch Logs subscription payloads into LogEvents.

CloudWatch Logs delivers each batch of log events to Kinesis (and Firehose to
S3) as gzip of a JSON envelope ``{"messageType", "owner", "logGroup",
"logStream", "subscriptionFilters", "logEvents": [{"id", "timestamp",
"message"}]}``; ``CONTROL_MESSAGE`` envelopes are health checks without data.
A record may hold several gzip members (one envelope each, as Firehose
concatenates them), be gzip inside gzip (Firehose compression on top), or be
plain JSON. Runs on any runner; element-wise.
"""

import zlib
from typing import Iterable, Iterator, Literal, List, Tuple, Union

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from changeflow.model import DEAD_LETTER_TAG, DeadLetter, LogEvent, SourceRecord, dead_letter

__all__ = ['DecodeError', 'envelopes', 'decode_record', 'DecodeCloudWatchRecords', 'inflate_gzip_member',
           'GZIP_MAGIC']

GZIP_MAGIC = b'\x1f\x8b'
# Gzip layers unwrapped at most (CloudWatch's own, plus Firehose's compression).
_MAX_GZIP_DEPTH = 3
_JSON_START = frozenset(b'{ \t\r\n')
_CHUNK = 1 << 16
_ID_TYPES = (str, int)  # AWS sends a 56-digit string, moto an int


class DecodeError(ValueError):
    """A record that is not a CloudWatch Logs payload.

    ``reason`` is one of 'bad-gzip', 'bad-json', 'bad-utf8', 'bad-envelope'.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


def inflate_gzip_member(data: bytes, offset: int = 0) -> Tuple[bytes, int]:
    """Decompress the one gzip member starting at ``data[offset]``.

    Returns (content, end offset of the member). Fed in chunks so that walking
    a file of many members stays linear (zlib copies whatever follows the
    member into ``unused_data``).

    Raises:
        DecodeError: 'bad-gzip' when no valid, complete member starts there.
    """
    if data[offset:offset + 2] != GZIP_MAGIC:
        raise DecodeError('bad-gzip', f'no gzip member at offset {offset}:'
                                      f' {data[offset:offset + 16]!r}')
    view = memoryview(data)
    inflater = zlib.decompressobj(wbits=31)
    parts = []
    position = offset
    try:
        while not inflater.eof and position < len(data):
            chunk = view[position:position + _CHUNK]
            parts.append(inflater.decompress(chunk))
            position += len(chunk)
    except zlib.error as e:
        raise DecodeError('bad-gzip', f'gzip member at offset {offset}: {e}') from None
    if not inflater.eof:
        raise DecodeError('bad-gzip', f'gzip member at offset {offset} is truncated')
    return b''.join(parts), position - len(inflater.unused_data)


def _payloads(data: bytes, depth: int = 0) -> Iterable[bytes]:
    """The JSON documents in ``data``: each innermost gzip member, or data itself."""
    if data[:2] != GZIP_MAGIC:
        yield data
        return
    if depth == _MAX_GZIP_DEPTH:
        raise DecodeError('bad-gzip', f'more than {_MAX_GZIP_DEPTH} nested gzip layers')
    offset = 0
    while offset < len(data):
        member, offset = inflate_gzip_member(data, offset)
        yield from _payloads(member, depth + 1)


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
        raise DecodeError('bad-envelope', f'{where}: {name!r} is {value!r:.80}, expected '
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
    new = tuple.__new__  # skips LogEvent's Python-level __new__ on this hot path
    for envelope in envelopes(record.data):
        message_type = _field(envelope, 'messageType', (str,), 'envelope')
        if message_type == 'CONTROL_MESSAGE':
            controls += 1
            continue
        if message_type != 'DATA_MESSAGE':
            raise DecodeError('bad-envelope', f'unknown messageType {message_type!r}')
        log_group = _field(envelope, 'logGroup', (str,), 'envelope')
        log_stream = _field(envelope, 'logStream', (str,), 'envelope')
        for i, event in enumerate(_field(envelope, 'logEvents', (list,), 'envelope')):
            if type(event) is not dict:
                raise DecodeError('bad-envelope', f'logEvents[{i}] is {event!r:.80}, not an object')
            message, event_id, timestamp = event.get('message'), event.get('id'), event.get('timestamp')
            if type(message) is not str or type(event_id) not in _ID_TYPES or type(timestamp) is not int:
                raise DecodeError('bad-envelope', f'logEvents[{i}] needs a str message, a str or int'
                                                  f' id and an int timestamp: {event!r:.200}')
            events.append(new(LogEvent, (message, log_group, log_stream, str(event_id), timestamp,
                                         base + str(len(events)))))
    return events, controls


_DeadLetterOutput = pvalue.TaggedOutput[Literal[DEAD_LETTER_TAG], DeadLetter]


class _DecodeRecordFn(beam.DoFn):
    def __init__(self):
        namespace = 'changeflow.decode'
        self._records_received = Metrics.counter(namespace, 'records_received')
        self._control_messages = Metrics.counter(namespace, 'control_messages')
        self._log_events = Metrics.counter(namespace, 'log_events')
        self._dead_lettered = Metrics.counter(namespace, 'dead_lettered')

    def process(self, record: SourceRecord) -> Iterable[Union[LogEvent, _DeadLetterOutput]]:
        self._records_received.inc()
        try:
            events, controls = _decode(record)
        except DecodeError as e:
            self._dead_lettered.inc()
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                'decode', e.reason, e.detail, record.data, record.position))
            return
        if controls:
            self._control_messages.inc(controls)
        self._log_events.inc(len(events))
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
