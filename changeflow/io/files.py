"""Whole-file writes for the file sinks (Parquet backup, dead letters).

Files are written through Beam's ``FileSystems``, so any Beam filesystem
works: local paths, and ``s3://`` with ``--s3_endpoint_url`` & co. from
``S3Options`` or boto3's default chain.
"""

import os
import uuid
from typing import NamedTuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

__all__ = ['WrittenFile', 'write_file']


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
