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
order (only ``time`` differs) and never a second copy. Files are written
whole with :func:`changeflow.io.files.write_file` (``s3://`` works with
``--s3_endpoint_url`` & co. from ``S3Options`` or the boto3 default chain).

Runner support: any runner; the sink groups per window (one GroupByKey on a
single key: dead letters are expected to be rare).
"""

import base64
import collections
import hashlib
import logging
from typing import Iterator, List

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from changeflow.io.files import WrittenFile, write_file
from changeflow.io.json_records import dumps_json, iso_utc, loads_json, parse_iso_utc
from changeflow.model import DEAD_LETTER_TAG, DeadLetter
from changeflow.transforms.guard import guarded

__all__ = ['WriteDeadLetters', 'read_dead_letters', 'BY_REASON_NAMESPACE']

_LOG = logging.getLogger(__name__)
_STEP = 'write_dead_letters'
BY_REASON_NAMESPACE = 'changeflow.dead_letters'  # counters 'step/reason' of the letters written


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


@guarded(_STEP, lambda element: b'\n'.join(map(_line, element[1])), buffered=False)
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
            for (step, reason), count in collections.Counter(
                    (letter.step, letter.reason) for letter in chunk).items():
                Metrics.counter(BY_REASON_NAMESPACE, f'{step}/{reason}').inc(count)
            yield WrittenFile(path, len(chunk))


@beam.typehints.with_input_types(DeadLetter)
class WriteDeadLetters(beam.PTransform):
    """Writes DeadLetters as JSON lines under ``path`` (local or ``s3://``...).

    Args:
        path: directory (or object prefix) for ``dead-letter-{digest}.jsonl``.
        records_per_file: most lines per file.

    Returns:
        A DoOutputsTuple: the main output (tag ``MAIN``, ``'written'``) has one
        :class:`~changeflow.io.files.WrittenFile` per file written;
        ``DEAD_LETTER_TAG`` has the letters that could not be written
        (unchanged, e.g. to log them), so a storage failure never fails the
        pipeline.

    Idempotence: a re-run over the same letters in the same windows rewrites
    the same files (see the module docstring); the letters' ``time`` in them is
    that of the re-run. Metrics (namespace ``changeflow.write_dead_letters``):
    received, written, dead_lettered, files_written; and per step and reason
    of the letters written, ``changeflow.dead_letters`` ``'step/reason'``
    (e.g. ``'write_database/sink-unavailable'``).

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
