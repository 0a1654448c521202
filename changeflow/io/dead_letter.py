"""Dead letters to JSON-lines files (local or any Beam filesystem), and back.

Every step routes what it cannot process to a
:class:`~changeflow.model.DeadLetter`; :class:`WriteDeadLetters` stores them so
they can be inspected and replayed, and :func:`read_dead_letters` reads them
back.

Each line is a JSON object::

    {"step": "write_parquet", "reason": "bad-value", "detail": "...",
     "original_base64": "...", "position": "...", "time": "2026-11-22T14:16:18.123456Z"}

Files are ``{path}/dead-letter-{digest}.jsonl``. Per window, the letters are
sorted by (position, step, reason, detail, original) and cut into files of at
most ``records_per_file`` lines; ``digest`` is a hash of a file's lines
*without* their ``time`` (the processing time of the rejection), so re-running
the same input writes the same file names with the same letters in the same
order (only ``time`` differs) and never a second copy.

The module also holds the small pieces the file sinks share:
:func:`write_file` (atomic whole-file writes through Beam's ``FileSystems``, so
``s3://`` works with ``--s3_endpoint_url`` & co. from ``S3Options`` or the
boto3 default chain), :class:`WrittenFile`, and the JSON rendering of values
and Changes used in dead letters and notifications.

Runner support: any runner; the sink groups per window (one GroupByKey on a
single key: dead letters are expected to be rare).
"""

import base64
import datetime
import decimal
import hashlib
import json
import logging
import math
import os
import uuid
from typing import Any, Iterator, List, NamedTuple

import apache_beam as beam
import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from changeflow.expressions import to_sql
from changeflow.model import DEAD_LETTER_TAG, Change, DeadLetter

__all__ = ['WriteDeadLetters', 'read_dead_letters', 'WrittenFile', 'write_file',
           'json_value', 'dumps_json', 'loads_json', 'change_json', 'iso_utc', 'parse_iso_utc']

_LOG = logging.getLogger(__name__)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)
_STEP = 'write_dead_letters'


class WrittenFile(NamedTuple):
    """One file a sink wrote: its full path and how many records it holds."""
    path: str
    records: int


def write_file(path: str, data: bytes) -> None:
    """Writes ``data`` as the whole of ``path``, replacing it, never leaving a
    partial file under that name.

    Local paths: written to a hidden temporary name in the same directory, then
    renamed over ``path`` (atomic on POSIX). Object stores (``s3://``, ``gs://``):
    the object only appears when its upload completes, so it is created directly.
    """
    options = dict(mime_type='application/octet-stream',
                   compression_type=CompressionTypes.UNCOMPRESSED)
    if FileSystems.get_scheme(path) is not None:
        with FileSystems.create(path, **options) as f:
            f.write(data)
        return
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f'.{name}.{uuid.uuid4().hex}.tmp')
    with FileSystems.create(temporary, **options) as f:
        f.write(data)
    try:
        FileSystems.rename([temporary], [path])
    except Exception:
        FileSystems.delete([temporary])
        raise


def iso_utc(time_us: int) -> str:
    """Epoch microseconds as ISO 8601 UTC with microseconds and a ``Z``."""
    moment = _EPOCH + datetime.timedelta(microseconds=time_us)
    return moment.isoformat(timespec='microseconds').replace('+00:00', 'Z')


def parse_iso_utc(text: str) -> int:
    """Inverse of :func:`iso_utc`: epoch microseconds."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return (moment - _EPOCH) // _MICROSECOND


def json_value(value: Any) -> Any:
    """A column or key value as JSON can carry it without loss of digits.

    None, bool, int, str and finite floats stay; Decimal becomes its exact
    text ('12.50'); bytes become base64 text; dates and datetimes ISO text;
    sets sorted lists; anything else ``str(value)``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return format(value, 'f')
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode('ascii')
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted((json_value(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)


def dumps_json(obj: Any) -> bytes:
    """Compact JSON as UTF-8, for any str: text holding lone surrogates (bytes
    that were not UTF-8, decoded with 'surrogateescape') falls back to ASCII
    JSON with ``\\u`` escapes instead of failing."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return json.dumps(obj, ensure_ascii=True, separators=(',', ':')).encode('ascii')


def loads_json(data: bytes) -> Any:
    """Parses JSON, including what :func:`dumps_json` wrote with escaped lone
    surrogates (which orjson refuses); raises ValueError if it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def change_json(change: Change) -> bytes:
    """A Change as JSON text, for a dead letter's ``original``.

    Values go through :func:`json_value`; assignments are rendered with
    :func:`changeflow.expressions.to_sql` (``repr`` for a malformed one), so a
    rejected Change can always be described.
    """
    return dumps_json({
        'table': change.table,
        'key': json_value(change.key),
        'event_time_us': json_value(change.event_time_us),
        'ops': [{
            'kind': json_value(op.kind),
            'version': op.version,
            'position': op.position,
            'values': {c: json_value(v) for c, v in op.values},
            'assignments': [[c, _sql_text(e)] for c, e in op.assignments],
        } for op in change.ops],
    })


def _sql_text(expr) -> str:
    try:
        return to_sql(expr)
    except (LookupError, TypeError, ValueError):
        return repr(expr)


def _identity(letter: DeadLetter) -> bytes:
    """A letter's line without its rejection time: what names and orders files."""
    return dumps_json([letter.step, letter.reason, letter.detail,
                       base64.b64encode(letter.original).decode('ascii'), letter.position])


def _line(letter: DeadLetter) -> bytes:
    return dumps_json({
        'step': letter.step,
        'reason': letter.reason,
        'detail': letter.detail,
        'original_base64': base64.b64encode(letter.original).decode('ascii'),
        'position': letter.position,
        'time': iso_utc(letter.time_us),
    })


class _WriteDeadLetterFilesFn(beam.DoFn):
    """(key, letters) of one window -> files of sorted letters; letters whose
    file cannot be written go to DEAD_LETTER_TAG unchanged."""

    def __init__(self, path: str, records_per_file: int):
        self._path = path
        self._records_per_file = records_per_file
        namespace = f'changeflow.{_STEP}'
        self._received = Metrics.counter(namespace, 'received')
        self._written = Metrics.counter(namespace, 'written')
        self._dead_lettered = Metrics.counter(namespace, 'dead_lettered')
        self._files_written = Metrics.counter(namespace, 'files_written')

    def process(self, element):
        _, letters = element
        ordered = sorted(letters, key=lambda letter: (
            letter.position, letter.step, letter.reason, letter.detail, letter.original))
        self._received.inc(len(ordered))
        for start in range(0, len(ordered), self._records_per_file):
            chunk = ordered[start:start + self._records_per_file]
            digest = hashlib.sha256(b'\n'.join(_identity(letter) for letter in chunk))
            path = FileSystems.join(self._path, f'dead-letter-{digest.hexdigest()[:20]}.jsonl')
            try:
                write_file(path, b''.join(_line(letter) + b'\n' for letter in chunk))
            except Exception as error:  # the letters go out on DEAD_LETTER_TAG
                _LOG.error('could not write %d dead letters to %s: %s', len(chunk), path, error)
                self._dead_lettered.inc(len(chunk))
                for letter in chunk:
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
                continue
            self._written.inc(len(chunk))
            self._files_written.inc()
            yield WrittenFile(path, len(chunk))


@beam.typehints.with_input_types(DeadLetter)
class WriteDeadLetters(beam.PTransform):
    """Writes DeadLetters as JSON lines under ``path`` (local or ``s3://``...).

    Args:
        path: directory (or object prefix) for ``dead-letter-{digest}.jsonl``.
        records_per_file: most lines per file.

    Returns:
        A DoOutputsTuple: the main output (tag ``MAIN``, ``'written'``) has one
        :class:`WrittenFile` per file written; ``DEAD_LETTER_TAG`` has the
        letters that could not be written (unchanged, e.g. to log them), so a
        storage failure never fails the pipeline.

    Idempotence: a re-run over the same letters in the same windows rewrites
    the same files (see the module docstring); the letters' ``time`` in them is
    that of the re-run. Metrics (namespace ``changeflow.write_dead_letters``):
    received, written, dead_lettered, files_written.

    Example::

        errors = (parsed[DEAD_LETTER_TAG], written[DEAD_LETTER_TAG]) | beam.Flatten()
        errors | WriteDeadLetters('s3://bucket/dead-letters')
    """

    MAIN = 'written'

    def __init__(self, path: str, records_per_file: int = 100_000):
        super().__init__()
        if not path:
            raise ValueError(f'WriteDeadLetters needs a path, got {path!r}')
        if records_per_file < 1:
            raise ValueError(f'records_per_file must be positive, got {records_per_file!r}')
        self._path = path.rstrip('/') or path
        self._records_per_file = records_per_file

    def expand(self, letters):
        return (letters
                | 'KeyAll' >> beam.WithKeys('')
                | 'GroupPerWindow' >> beam.GroupByKey()
                | 'WriteFiles' >> beam.ParDo(
                    _WriteDeadLetterFilesFn(self._path, self._records_per_file)
                ).with_outputs(DEAD_LETTER_TAG, main=self.MAIN))


def read_dead_letters(path: str) -> Iterator[DeadLetter]:
    """Yields the DeadLetters stored under ``path`` (a directory or prefix
    written by :class:`WriteDeadLetters`, or one ``.jsonl`` file), file by file
    in name order, each file in line order."""
    pattern = path if path.endswith('.jsonl') else FileSystems.join(
        path.rstrip('/'), 'dead-letter-*.jsonl')
    files: List[str] = sorted(
        metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)
    for name in files:
        with FileSystems.open(name, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
        for line in data.splitlines():
            if not line.strip():
                continue
            record = loads_json(line)
            yield DeadLetter(record['step'], record['reason'], record['detail'],
                             base64.b64decode(record['original_base64']),
                             record['position'], parse_iso_utc(record['time']))
