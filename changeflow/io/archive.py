"""Read archived audit logs and DynamoDB stream records, for backfills and local runs.

Archive formats, each a file or glob on any Beam filesystem (local,
``s3://`` with Beam's ``S3Options``, ...). Audit logs:

* ``kinesis-jsonl``: one Kinesis record per line as ``aws kinesis get-records``
  prints it (``Data`` base64, ``SequenceNumber``, ``PartitionKey``,
  ``ApproximateArrivalTimestamp``, optional ``ShardId``), or a whole
  get-records response ``{"Records": [...]}`` per line -> SourceRecord.
* ``firehose``: what Firehose writes to S3 from a CloudWatch Logs
  subscription: concatenated gzip members, one payload each, possibly gzipped
  once more by Firehose compression -> one SourceRecord per member, holding the
  member's *compressed* bytes, exactly what Kinesis would have carried.
* ``server-audit``: a server_audit.log as the plugin writes it -> LogEvent per
  line (no decode step).

DynamoDB stream records (decoded by :mod:`changeflow.dynamodb.records`):

* ``dynamodb-jsonl``: one stream record per line in the Lambda shape (what
  :mod:`changeflow.io.dynamodb_streams` emits), or one Lambda event
  ``{"Records": [...]}`` per line -> SourceRecord per line, ``sequence`` its
  line number.
* ``lambda-event``: one Lambda event per file, formatted in any way ->
  SourceRecord per file.
* ``kinesis-destination``: DynamoDB's Kinesis streaming destination, as
  ``kinesis-jsonl`` lines (``Data``: the record's JSON) -> SourceRecord per
  Kinesis record, ``sequence`` its Kinesis sequence number.

Files are read whole by one worker each (they are not split); a Reshuffle
spreads the files.

Bounds: finding a firehose object's members is linear in its size: members
are inflated in 64 KiB steps without keeping their content, and after a
corrupt stretch the search for the next member reads at most 4 times the
object's size in failed attempts (a crafted tail of near-members would
otherwise make it quadratic), then dead-letters the rest as one stretch. The
outer gzip layer (Firehose compression) inflates to at most
:data:`MAX_OBJECT_BYTES` (512 MiB, four times Firehose's largest buffer);
outer members beyond it are dead-lettered ``too-large``. Arrival times must
fall between 1970 and 9999. Files are read as stored (no decompression by file name:
the gzip layers of the firehose format are detected from the content).
"""

import base64
import binascii
import datetime
import itertools
import math
import zlib
from typing import Iterable, Iterator, Optional, Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue, typehints
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics

from changeflow.model import DEAD_LETTER_TAG, LogEvent, SourceRecord, dead_letter
from changeflow.transforms.decode import GZIP_MAGIC, DecodeError, inflate_gzip_member
from changeflow.transforms.guard import guarded, internal_error, preview

__all__ = ['ReadArchive', 'ReadMatchedFiles', 'FORMATS', 'MAX_OBJECT_BYTES']

FORMATS = ('kinesis-jsonl', 'firehose', 'server-audit',
           'dynamodb-jsonl', 'lambda-event', 'kinesis-destination')

_STEP = 'read_archive'
_MEMBER_START = GZIP_MAGIC + b'\x08'  # gzip magic + deflate, what every member starts with
_CHUNK = 1 << 16
# Resyncing after a corrupt member reads at most this many times the data's size.
_RESYNC_FACTOR = 4
# Most bytes the outer gzip layer of one firehose object may inflate to.
MAX_OBJECT_BYTES = 512 << 20
# ApproximateArrivalTimestamp bounds: datetime's range, in epoch milliseconds.
_MIN_ARRIVAL_MS, _MAX_ARRIVAL_MS = 0, 253402300799999


class _ArchiveError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


@guarded(_STEP, lambda readable: readable.metadata.path, lambda readable: readable.metadata.path,
         buffered=False)
class _ReadFileFn(beam.DoFn):
    """Reads one archive file; counts are summed per file (a counter update
    costs ~0.5 µs, as much as reading a line)."""

    _unit = 'records'

    def __init__(self):
        namespace = 'changeflow.read_archive'
        self._files = Metrics.counter(namespace, 'files')
        self._emitted = Metrics.counter(namespace, self._unit)
        self._dead_lettered = Metrics.counter(namespace, 'dead_lettered')

    def process(self, readable: fileio.ReadableFile) -> Iterable:
        self._files.inc()
        emitted = dead = 0
        for output in self._read(readable.metadata.path, readable):
            if isinstance(output, pvalue.TaggedOutput):
                dead += 1
            else:
                emitted += 1
            yield output
        self._emitted.inc(emitted)
        self._dead_lettered.inc(dead)

    def _read(self, path: str, readable: fileio.ReadableFile) -> Iterator:
        raise NotImplementedError

    @staticmethod
    def _dead(reason: str, detail: str, original: bytes, position: str) -> pvalue.TaggedOutput:
        return pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            _STEP, reason, detail, original, position))


def _lines(readable: fileio.ReadableFile) -> Iterator[Tuple[int, bytes]]:
    """(line number from 1, line without its `\\n` or `\\r\\n`), streaming."""
    with readable.open(mime_type='application/octet-stream',
                       compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for lineno, line in enumerate(f, 1):
            if line.endswith(b'\n'):
                line = line[:-1]
            if line.endswith(b'\r'):  # a CRLF file: the plugin escapes a CR inside a statement
                line = line[:-1]
            yield lineno, line


class _ReadServerAuditFn(_ReadFileFn):
    _unit = 'lines'

    def __init__(self, lines_per_element: int = 0):
        super().__init__()
        self._chunk = lines_per_element

    def process(self, readable: fileio.ReadableFile) -> Iterable:
        if not self._chunk:
            yield from super().process(readable)
            return
        chunk = []
        for output in super().process(readable):
            if isinstance(output, pvalue.TaggedOutput):
                yield output
                continue
            chunk.append(output)
            if len(chunk) >= self._chunk:
                yield tuple(chunk)
                chunk = []
        if chunk:
            yield tuple(chunk)

    def _read(self, path, readable):
        new = tuple.__new__  # skips LogEvent's Python-level __new__ on this hot path
        for lineno, line in _lines(readable):
            position = f'{path}:{lineno}'
            try:
                message = line.decode('utf-8')
            except UnicodeDecodeError as e:
                yield self._dead('bad-utf8', f'line {lineno} is not UTF-8: {e}',
                                 line.decode('utf-8', 'surrogateescape'), position)
                continue
            yield new(LogEvent, (message, '', path, str(lineno), 0, position))


def _arrival_ms(value) -> int:
    """ApproximateArrivalTimestamp: ISO-8601 (AWS CLI v2) or epoch seconds (v1)."""
    if value is None:
        return 0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (isinstance(value, int) or math.isfinite(value)) or not (
                _MIN_ARRIVAL_MS <= value * 1000 <= _MAX_ARRIVAL_MS):
            raise _ArchiveError('bad-record', f'ApproximateArrivalTimestamp {preview(value)} is not'
                                              f' a time between 1970 and 9999')
        return round(value * 1000)
    if isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise _ArchiveError('bad-record', f'ApproximateArrivalTimestamp {preview(value)}'
                                              f' is not ISO-8601') from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        try:
            millis = round(when.timestamp() * 1000)
        except (OverflowError, ValueError, OSError):  # year 1 in a zone west of UTC, ...
            millis = -1
        if not _MIN_ARRIVAL_MS <= millis <= _MAX_ARRIVAL_MS:
            raise _ArchiveError('bad-record', f'ApproximateArrivalTimestamp {preview(value)}'
                                              f' is not a time between 1970 and 9999')
        return millis
    raise _ArchiveError('bad-record', f'ApproximateArrivalTimestamp {preview(value)} is neither'
                                      f' a string nor a number')


def _kinesis_record(record, path: str) -> SourceRecord:
    if not isinstance(record, dict):
        raise _ArchiveError('bad-record', f'not a JSON object: {preview(record)}')
    data, sequence, shard = record.get('Data'), record.get('SequenceNumber'), record.get('ShardId', '')
    if not isinstance(data, str):
        raise _ArchiveError('bad-record', f'Data is {preview(data)}, expected a base64 string')
    if not isinstance(sequence, str) or not sequence:
        raise _ArchiveError('bad-record', f'SequenceNumber is {preview(sequence)},'
                                          f' expected a non-empty string')
    if not isinstance(shard, str):
        raise _ArchiveError('bad-record', f'ShardId is {preview(shard)}, expected a string')
    try:
        payload = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:  # ValueError: text that is not ASCII
        raise _ArchiveError('bad-base64', f'Data: {e}') from None
    return SourceRecord(payload, path, shard, sequence,
                        _arrival_ms(record.get('ApproximateArrivalTimestamp')))


def _json_form(record, line: bytes) -> bytes:
    """One record of a get-records line as JSON; the whole line if orjson
    cannot write it back (nested deeper than it goes)."""
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError:
        return line


class _ReadKinesisJsonlFn(_ReadFileFn):
    def _read(self, path, readable):
        for lineno, line in _lines(readable):
            if not line.strip():
                continue
            position = f'{path}:{lineno}'
            try:
                document = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                yield self._dead('bad-json', f'line {lineno}: {e}', line, position)
                continue
            if isinstance(document, dict) and isinstance(document.get('Records'), list):
                # A get-records response: each record is dead-lettered on its own.
                records = [(f'{position}[{i}]', record)
                           for i, record in enumerate(document['Records'])]
            else:
                records = [(position, document)]
            for record_position, record in records:
                try:
                    yield _kinesis_record(record, path)
                except _ArchiveError as e:
                    original = line if record is document else _json_form(record, line)
                    yield self._dead(e.reason, f'{record_position}: {e.detail}', original,
                                     record_position)
                except Exception as e:  # pylint: disable=broad-except
                    # A defect: this record alone is dead-lettered.
                    original = line if record is document else _json_form(record, line)
                    yield pvalue.TaggedOutput(DEAD_LETTER_TAG, internal_error(
                        _STEP, e, original, record_position))


class _BadMember(ValueError):
    """No valid, complete gzip member at an offset; ``consumed``: input bytes read to find out."""

    def __init__(self, detail: str, consumed: int):
        super().__init__(detail)
        self.detail = detail
        self.consumed = consumed


def _scan_member(data: bytes, offset: int, max_input: int = -1) -> Tuple[bytes, int]:
    """(first bytes of its content, end offset) of the gzip member at
    ``data[offset]``, inflated in bounded steps and not kept (memory stays
    constant, whatever the member inflates to); reads at most ``max_input``
    bytes of input when that is not -1.

    Raises:
        _BadMember: no valid, complete member there (or not within max_input).
    """
    if data[offset:offset + 2] != GZIP_MAGIC:
        raise _BadMember(f'no gzip member at offset {offset}: {data[offset:offset + 16]!r}', 2)
    stop = len(data) if max_input < 0 else min(len(data), offset + max_input)
    view = memoryview(data)
    inflater = zlib.decompressobj(wbits=31)
    head = b''
    position = offset
    try:
        while not inflater.eof and position < stop:
            chunk = view[position:min(position + _CHUNK, stop)]
            position += len(chunk)
            while chunk and not inflater.eof:
                out = inflater.decompress(chunk, _CHUNK)
                if len(head) < len(_MEMBER_START):
                    head += out[:len(_MEMBER_START)]
                chunk = inflater.unconsumed_tail
    except zlib.error as e:
        raise _BadMember(f'gzip member at offset {offset}: {e}', position - offset) from None
    if not inflater.eof:
        raise _BadMember(f'gzip member at offset {offset} is truncated', position - offset)
    return head, position - len(inflater.unused_data)


def _gzip_members(data: bytes) -> Iterator[Tuple[int, int, Optional[bytes], str]]:
    """(start, end, first bytes of content, '') per gzip member of data, in
    order, and (start, end, None, error) per corrupt stretch: from a member
    that does not inflate up to the next offset where a member does (or the
    end). Linear in ``len(data)``: the failed attempts of resyncing read at
    most _RESYNC_FACTOR times the data's bytes in all, then the rest of the
    data is one corrupt stretch."""
    budget = _RESYNC_FACTOR * len(data) + _CHUNK
    offset = 0
    while offset < len(data):
        try:
            head, end = _scan_member(data, offset)
        except _BadMember as e:
            budget -= e.consumed
            resume, budget = _next_member(data, offset + 1, budget)
            detail = e.detail if budget > 0 else (
                f'{e.detail}; the rest of the data is not searched for members'
                f' (resync read {_RESYNC_FACTOR}x its size)')
            yield offset, resume, None, detail
            offset = resume
            continue
        yield offset, end, head, ''
        offset = end


def _next_member(data: bytes, start: int, budget: int) -> Tuple[int, int]:
    """(offset of the next valid member after start, or len(data); budget left)."""
    candidate = data.find(_MEMBER_START, start)
    while candidate != -1 and budget > 0:
        try:
            _scan_member(data, candidate, budget)
            return candidate, budget
        except _BadMember as e:
            budget -= e.consumed
            candidate = data.find(_MEMBER_START, candidate + 1)
    return len(data), budget


class _ReadFirehoseFn(_ReadFileFn):
    def _read(self, path, readable):
        with readable.open(mime_type='application/octet-stream',
                           compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
        members = _gzip_members(data)
        first = next(members, None)
        if first is None:
            return
        members = itertools.chain([first], members)
        if first[2] is not None and first[2][:3] == _MEMBER_START:
            # Firehose compression on top: the object gzips the concatenated members.
            inner, room = [], MAX_OBJECT_BYTES
            for k, (start, end, head, error) in enumerate(members):
                position = f'{path}#outer{k:010d}'
                if head is None:
                    yield self._dead('bad-gzip', f'outer gzip bytes {start}-{end}: {error}',
                                     data[start:end], position)
                    continue
                try:
                    content, _ = inflate_gzip_member(data, start, room)
                except DecodeError as e:
                    yield self._dead(e.reason, f'outer gzip bytes {start}-{end}: {e.detail}'
                                               f' (at most {MAX_OBJECT_BYTES:,} bytes per object)',
                                     data[start:end], position)
                    continue
                room -= len(content)
                inner.append(content)
            data = b''.join(inner)
            members = _gzip_members(data)
        for index, (start, end, head, error) in enumerate(members):
            sequence = f'{index:010d}'
            if head is None:
                yield self._dead('bad-gzip', f'bytes {start}-{end}: {error}', data[start:end],
                                 f'{path}#{sequence}')
            else:
                yield SourceRecord(data[start:end], path, '', sequence, 0)


class _ReadJsonLinesFn(_ReadFileFn):
    """Each non-blank line as it is: the decoder dead-letters what is not JSON."""

    def _read(self, path, readable):
        for lineno, line in _lines(readable):
            if line.strip():
                yield SourceRecord(line, path, '', str(lineno), 0)


class _ReadWholeFileFn(_ReadFileFn):
    def _read(self, path, readable):
        with readable.open(mime_type='application/octet-stream',
                           compression_type=CompressionTypes.UNCOMPRESSED) as f:
            yield SourceRecord(f.read(), path, '', '1', 0)


_READERS = {'kinesis-jsonl': _ReadKinesisJsonlFn, 'firehose': _ReadFirehoseFn,
            'server-audit': _ReadServerAuditFn, 'dynamodb-jsonl': _ReadJsonLinesFn,
            'lambda-event': _ReadWholeFileFn, 'kinesis-destination': _ReadKinesisJsonlFn}


class ReadArchive(beam.PTransform):
    """Read archived audit logs or stream records: ``p | ReadArchive(fmt, path)``.

    Args:
        fmt: one of FORMATS (see the module docstring).
        path: a file or glob; a glob may match nothing, a plain path must exist.

    Returns a DoOutputsTuple: the main output (tag ``ReadArchive.MAIN``:
    SourceRecord for every format but 'server-audit', LogEvent for
    'server-audit', or tuples of ``lines_per_element`` LogEvents when given) and DEAD_LETTER_TAG: DeadLetter(step='read_archive') for a
    line that is not JSON, bad base64, a corrupt gzip stretch, a line that is
    not UTF-8. A bad line or member never fails the pipeline nor loses the
    rest of its file. Nothing is ordered or deduplicated: ``sequence`` (member
    index, zero-padded) and ``position`` (``path:lineno``) say where each
    element came from.

    Example::

        records, dead = p | ReadArchive('firehose', 's3://bucket/audit/2026/11/*/*')
        events, dead2 = records | DecodeCloudWatchRecords()
    """

    MAIN = 'records'

    def __init__(self, fmt: str, path: str, lines_per_element: int = 0):
        super().__init__()
        self._read = ReadMatchedFiles(fmt, lines_per_element)
        if not isinstance(path, str) or not path:
            raise ValueError(f'path must be a non-empty file path or glob, got {path!r}')
        self._path = path

    def expand(self, pbegin):
        return pbegin | 'MatchFiles' >> fileio.MatchFiles(self._path) | self._read


class ReadMatchedFiles(beam.PTransform):
    """FileMetadata (what ``fileio.MatchFiles`` emits) -> ReadArchive's outputs:
    the files spread over workers and each read whole in format ``fmt``."""

    def __init__(self, fmt: str, lines_per_element: int = 0):
        super().__init__()
        if fmt not in _READERS:
            raise ValueError(f'unknown archive format {fmt!r}; expected one of {FORMATS}')
        self._fmt = fmt
        self._lines_per_element = lines_per_element

    def expand(self, files):
        if self._fmt == 'server-audit':
            reader = _ReadServerAuditFn(self._lines_per_element)
            main_type = typehints.Tuple[LogEvent, ...] if self._lines_per_element else LogEvent
        else:
            reader, main_type = _READERS[self._fmt](), SourceRecord
        return (files
                | 'SpreadFiles' >> beam.Reshuffle()
                | 'ReadMatches' >> fileio.ReadMatches(
                    compression=CompressionTypes.UNCOMPRESSED)
                | f'Read[{self._fmt}]' >> beam.ParDo(reader)
                .with_output_types(main_type).with_outputs(DEAD_LETTER_TAG, main=ReadArchive.MAIN))
