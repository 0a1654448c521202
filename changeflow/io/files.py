"""Whole-file writes for the file sinks (Parquet backup, dead letters).

Files are written through Beam's ``FileSystems``, so any Beam filesystem
works: local paths, and ``s3://`` with ``--s3_endpoint_url`` & co. from
``S3Options`` or boto3's default chain.
"""

import os
import shutil
import tempfile
import uuid
from typing import NamedTuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

__all__ = ['WrittenFile', 'write_file', 'StagedFile']


class WrittenFile(NamedTuple):
    """One file a sink wrote: its full path and how many records it holds."""
    path: str
    records: int


_OPTIONS = dict(mime_type='application/octet-stream',
                compression_type=CompressionTypes.UNCOMPRESSED)
_UPLOAD_CHUNK = 8 << 20


def write_file(path: str, data: bytes) -> None:
    """Writes ``data`` as the whole of ``path``, replacing it, never leaving a
    partial file under that name.

    Local paths: written to a hidden temporary name in the same directory, then
    renamed over ``path`` (atomic on POSIX). Object stores (``s3://``, ``gs://``):
    the object only appears when its upload completes, so it is created directly.
    """
    if FileSystems.get_scheme(path) is not None:
        with FileSystems.create(path, **_OPTIONS) as f:
            f.write(data)
        return
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f'.{name}.{uuid.uuid4().hex}.tmp')
    with FileSystems.create(temporary, **_OPTIONS) as f:
        f.write(data)
    try:
        FileSystems.rename([temporary], [path])
    except Exception:
        FileSystems.delete([temporary])
        raise


class StagedFile:
    """A file written in parts whose name is known only once it is complete
    (a name derived from its content): written to :attr:`path`, a local
    file, then :meth:`commit` makes it appear whole under its name, or
    :meth:`discard` drops it; a crash leaves nothing under a final name.

    Local directories: staged as a hidden temporary file in ``directory``
    (created if need be) and renamed (atomic on POSIX). Object stores: staged
    in a local temporary file (``TMPDIR``) and uploaded by parts at the
    commit, the object appearing when its upload completes.
    """

    def __init__(self, directory: str):
        self._local = FileSystems.get_scheme(directory) is None
        if self._local:
            os.makedirs(directory, exist_ok=True)
            self.path = os.path.join(directory, f'.staged-{uuid.uuid4().hex}.tmp')
            open(self.path, 'wb').close()
        else:
            handle, self.path = tempfile.mkstemp(prefix='changeflow-staged-', suffix='.tmp')
            os.close(handle)

    def commit(self, path: str) -> None:
        """The staged file (written and closed) as the whole of ``path``, replacing it."""
        try:
            if self._local:
                os.replace(self.path, path)
                return
            with open(self.path, 'rb') as source, FileSystems.create(path, **_OPTIONS) as target:
                shutil.copyfileobj(source, target, _UPLOAD_CHUNK)
        finally:
            self.discard()

    def discard(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)
