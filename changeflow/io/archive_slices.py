"""A large archive read in slices: a backfill whose memory is bounded by a
slice, not by the archive, and that resumes where it stopped.

On the local runner every stage's output is held in memory until the next
stage has read it, so one run over a month of audit logs needs memory in
proportion to the month. With ``source.slice_mb`` the archive's files, in
path order (Firehose and CloudWatch exports name them by time), are read a
slice at a time: each slice is one catch-up cycle of the job, like a cycle of
``--follow`` on a stream (:mod:`changeflow.pipelines.follow`). A slice takes
files until they hold ``slice_mb`` (at least one file, never part of one);
every sink is written, then the checkpoint store records how many files are
done together with what the next slice needs: each connection's open
transaction and session settings, and the DDL so far. A crash replays the
slice being written into the idempotent sinks; the next run starts after the
last committed slice.

The last slice ends the input as a single run would: writes still open are
dead-lettered ('transaction-open-at-end'). Files added later are read by the
next run as new slices. Statements are replayed in the order of the slices:
one a later file holds that precedes what its connection already replayed is
dead-lettered ('after-lateness', never applied out of order).

The listing must keep the files already done as they were (their names
are kept as a hash): a file done that is gone, or a new file sorting before
the last one done, fails the slice (:class:`ArchiveChanged`) instead of
skipping or rereading files.
"""

import hashlib
import time

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from changeflow.io.archive import ReadArchive, ReadMatchedFiles
from changeflow.io.checkpoints import CheckpointStore
from changeflow.io.kinesis_source import ReadStreamToTip
from changeflow.io.shards import ShardPosition
from changeflow.model import DEAD_LETTER_TAG

__all__ = ['ReadArchiveSlice', 'ArchiveChanged', 'archive_key', 'input_ended', 'NAMESPACE',
           'FILES']

NAMESPACE = 'changeflow.read_archive_slices'
FILES = 'files'  # the one position of an archive in the checkpoint store: files done
_KEY_LENGTH = 400  # the checkpoint store's stream column


class ArchiveChanged(RuntimeError):
    """The files a sliced backfill already read are no longer the first of
    the listing: reading on would skip or reread files."""


def archive_key(path: str) -> str:
    """The archive's name in the checkpoint store: its path or glob (hashed
    when longer than the store's column)."""
    key = f'archive:{path}'
    if len(key) <= _KEY_LENGTH:
        return key
    return f'archive:sha256:{hashlib.sha256(path.encode()).hexdigest()}'


def _digest(files) -> str:
    """The names of the files done, as one hash: the next slice checks the
    listing still starts with exactly them."""
    return hashlib.sha256('\n'.join(m.path for m in files).encode()).hexdigest()


def input_ended(totals) -> bool:
    """Whether a slice's counter totals say the archive is read to its end:
    the slice was the last, or no file was left for it."""
    return bool(totals.get(f'{NAMESPACE}.final_slices')) or not totals.get(f'{NAMESPACE}.slices')


class _NextSliceFn(beam.DoFn):
    """The archive's glob -> the files of its next slice (FileMetadata), then
    (tag END) the files-done position to commit and (tag CYCLE) the cycle:
    the state committed with the last slice, ``final`` when no file is left
    after this slice, ``archive`` the slice's end (for the committed state)."""

    def __init__(self, store_url: str, job: str, key: str, slice_bytes: int):
        self._store_url = store_url
        self._job = job
        self._key = key
        self._slice_bytes = slice_bytes
        self._counters = {name: Metrics.counter(NAMESPACE, name) for name in (
            'slices', 'final_slices', 'files', 'bytes')}
        self._files_left = Metrics.gauge(NAMESPACE, 'files_left')

    def setup(self):
        self._store = CheckpointStore(self._store_url)

    def process(self, pattern: str):
        started_ms = time.time_ns() // 1_000_000
        checkpoint = self._store.load(self._job, self._key)
        position = checkpoint.positions.get(FILES)
        done = 0 if position is None else int(position.sequence)
        archive = (checkpoint.state or {}).get('archive')
        files = sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path)
        if done:
            last = archive['last'] if archive else None
            if len(files) < done or _digest(files[:done]) != (archive or {}).get('digest'):
                found = files[done - 1].path if len(files) >= done else f'{len(files)} files'
                raise ArchiveChanged(
                    f'{pattern}: {done} files were read in slices up to {last}, but the '
                    f'listing now has {found} there: files done were removed or a new file '
                    f'sorts before them. Restore the files, or start the backfill again '
                    f'under another job name.')
        end, size = done, 0
        while end < len(files) and (end == done or size < self._slice_bytes):
            size += files[end].size_in_bytes
            end += 1
        for metadata in files[done:end]:
            yield metadata
        final = end == len(files)
        if end > done:
            archive = {'files': end, 'last': files[end - 1].path,
                       'digest': _digest(files[:end])}
            yield pvalue.TaggedOutput(ReadStreamToTip.END,
                                      (FILES, ShardPosition(str(end), False, ())))
            self._counters['slices'].inc()
            self._counters['final_slices'].inc(final)
            self._counters['files'].inc(end - done)
            self._counters['bytes'].inc(size)
        self._files_left.set(len(files) - end)
        yield pvalue.TaggedOutput(ReadStreamToTip.CYCLE, {
            'state': checkpoint.state, 'read_started_ms': started_ms, 'final': final,
            'archive': archive})

    def teardown(self):
        self._store.engine.dispose()


class ReadArchiveSlice(beam.PTransform):
    """The next slice of an archive: ``p | ReadArchiveSlice(fmt, path, ...)``.

    Args:
        fmt, path, lines_per_element: as :class:`~changeflow.io.archive.ReadArchive`'s.
        slice_bytes: the files of a slice hold at least this many bytes (the
            last slice less); a larger file is a slice of its own.
        store_url, job: the checkpoint store and the job's name in it.

    Returns what :class:`~changeflow.io.kinesis_source.ReadStreamToTip`
    returns, so the job runs a slice as a stream's catch-up cycle: ``MAIN``
    and ``DEAD_LETTER_TAG`` as ReadArchive's, ``END`` the files-done position
    for :class:`~changeflow.io.kinesis_source.CommitCheckpoints` (none when
    no file was left), ``CYCLE`` one dict (``state``, ``read_started_ms``,
    ``final``, ``archive``). Metrics (namespace ``changeflow.read_archive_slices``):
    counters slices, final_slices, files, bytes; a gauge files_left (after
    this slice).
    """

    MAIN = ReadArchive.MAIN
    END = ReadStreamToTip.END
    CYCLE = ReadStreamToTip.CYCLE

    def __init__(self, fmt: str, path: str, slice_bytes: int, store_url: str, job: str,
                 lines_per_element: int = 0):
        super().__init__()
        if not slice_bytes > 0 or not store_url or not job:
            raise ValueError(f'{type(self).__name__} needs slice_bytes > 0, a store URL and a '
                             f'job name, got {slice_bytes!r}, {store_url!r}, {job!r}')
        self._path = path
        self._fn = _NextSliceFn(store_url, job, archive_key(path), slice_bytes)
        self._read = ReadMatchedFiles(fmt, lines_per_element)

    def expand(self, pbegin):
        sliced = (pbegin
                  | 'Archive' >> beam.Create([self._path])
                  | 'NextSlice' >> beam.ParDo(self._fn).with_outputs(
                      self.END, self.CYCLE, main='files'))
        read = sliced['files'] | 'ReadSlice' >> self._read
        return {self.MAIN: read[self.MAIN], DEAD_LETTER_TAG: read[DEAD_LETTER_TAG],
                self.END: sliced[self.END], self.CYCLE: sliced[self.CYCLE]}
