"""DynamoDB's export to S3 (``DYNAMODB_JSON``) as a table's initial state.

An export is a folder ``<prefix>/AWSDynamoDB/<ExportId>/`` holding
``manifest-summary.json`` (the table ARN, ``exportTime``, ``itemCount``,
``outputFormat``, ``manifestFilesS3Key``), ``manifest-files.json`` (JSON
lines, one per data file: ``dataFileS3Key``, ``itemCount``, ``md5Checksum``,
``etag``) and ``data/*.json.gz`` (gzip'd JSON lines, one ``{"Item": {...}}``
per item). It is read locally or from ``s3://`` (boto3, default credential
chain, ``endpoint_url``). Keys in the manifests are bucket keys; each is
resolved relative to the folder of the ``manifest-summary.json`` given
(the part after ``AWSDynamoDB/<ExportId>/``), so a copied export still reads.

Items become the same :class:`~changeflow.dynamodb.records.StreamRecord`
as stream records: INSERTs with new images, versioned by
:func:`~changeflow.dynamodb.records.export_version` (before every stream
record created from the export time's second on), so seeding a replica from
an export and then reading the stream converges to the table whatever the
order. The checks are loud: a data file whose line count differs from its
manifest ``itemCount``, a total that differs from the summary's, or an
``md5Checksum`` (base64 MD5 of the data object's bytes) that does not match
raises :class:`ExportError`; a malformed item is a
:class:`~changeflow.dynamodb.records.BadRecord` for the caller to dead-letter.
"""

import base64
import gzip
import hashlib
import json
import os
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple, Union

from changeflow.dynamodb.records import (
    BadRecord, EventName, StreamRecord, item, export_version)
from changeflow.io.json_records import loads_json, parse_iso_utc
from changeflow.model import DeadLetter, dead_letter

__all__ = ['ExportFile', 'ExportSummary', 'ExportError', 'read_summary', 'export_records',
           'data_file_items', 'STEP']

STEP = 'read_dynamodb_export'


class ExportError(ValueError):
    """An export that is incomplete or not in the DYNAMODB_JSON format."""


class ExportFile(NamedTuple):
    location: str          # local path or s3:// URL, resolved
    item_count: int
    md5: Optional[str]     # base64 MD5 of the object


class ExportSummary(NamedTuple):
    table: str             # from tableArn
    export_arn: str
    export_time_us: int    # the point in time the export holds
    item_count: int
    files: Tuple[ExportFile, ...]


def _split_s3(url: str) -> Tuple[str, str]:
    bucket, _, key = url[len('s3://'):].partition('/')
    return bucket, key


class _Store:
    """Reads files from a local folder or S3."""

    def __init__(self, s3=None, endpoint_url=None):
        self._s3 = s3
        self._endpoint_url = endpoint_url

    def read(self, location: str) -> bytes:
        if location.startswith('s3://'):
            if self._s3 is None:
                import boto3
                self._s3 = boto3.client('s3', endpoint_url=self._endpoint_url)
            bucket, key = _split_s3(location)
            return self._s3.get_object(Bucket=bucket, Key=key)['Body'].read()
        with open(location, 'rb') as f:
            return f.read()


def _summary_location(location: str) -> str:
    if location.endswith('manifest-summary.json'):
        return location
    return location.rstrip('/') + '/manifest-summary.json'


def _resolve(folder: str, key: str) -> str:
    """A manifest key relative to the export's folder."""
    parts = key.split('/')
    for i in range(len(parts) - 2):
        if parts[i] == 'AWSDynamoDB':
            parts = parts[i + 2:]
            break
    relative = '/'.join(parts)
    if folder.startswith('s3://'):
        return f'{folder}/{relative}'
    return os.path.join(folder, *parts)


def read_summary(location: str, s3=None, endpoint_url: Optional[str] = None) -> ExportSummary:
    """The export's manifests: ``location`` is the export folder or its
    ``manifest-summary.json``, local or ``s3://``."""
    store = _Store(s3, endpoint_url)
    return _read_summary(store, _summary_location(location))


def _read_summary(store: _Store, summary_location: str) -> ExportSummary:
    folder = summary_location.rsplit('/', 1)[0] if '/' in summary_location else '.'
    try:
        summary = json.loads(store.read(summary_location))
        if summary.get('outputFormat', 'DYNAMODB_JSON') != 'DYNAMODB_JSON':
            raise ExportError(f'{summary_location}: outputFormat {summary["outputFormat"]!r}; '
                              f'only DYNAMODB_JSON is read')
        if summary.get('exportType', 'FULL_EXPORT') != 'FULL_EXPORT':
            raise ExportError(f'{summary_location}: exportType {summary["exportType"]!r}; '
                              f'only a FULL_EXPORT is a table\'s state')
        table = summary['tableArn'].rsplit(':table/', 1)[1].split('/', 1)[0]
        export_time_us = parse_iso_utc(summary['exportTime'].replace('Z', '+00:00'))
        files_location = _resolve(folder, summary['manifestFilesS3Key'])
        files = []
        for line in store.read(files_location).decode('utf-8').splitlines():
            if line.strip():
                entry = json.loads(line)
                files.append(ExportFile(_resolve(folder, entry['dataFileS3Key']),
                                        int(entry['itemCount']), entry.get('md5Checksum')))
        total = int(summary['itemCount'])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(f'{summary_location}: not a DynamoDB export manifest: '
                          f'{type(e).__name__}: {e}') from e
    if sum(f.item_count for f in files) != total:
        raise ExportError(f'{summary_location}: the data files hold '
                          f'{sum(f.item_count for f in files)} items, the summary says {total}')
    return ExportSummary(table, summary.get('exportArn', ''), export_time_us, total, tuple(files))


def export_records(location: str, key_names: Sequence[str], s3=None,
                   endpoint_url: Optional[str] = None
                   ) -> Iterator[Union[StreamRecord, DeadLetter]]:
    """Every item of the export as an INSERT StreamRecord (or a DeadLetter).

    ``key_names``: the table's key attributes (the manifests do not hold the
    key schema). Raises :class:`ExportError` for an incomplete export (see
    the module docstring) before yielding anything from the file at fault.
    """
    store = _Store(s3, endpoint_url)
    summary = _read_summary(store, _summary_location(location))
    for data_file in summary.files:
        for _, record in _file_items(store, summary, data_file, key_names):
            yield record


def data_file_items(summary: ExportSummary, data_file: ExportFile, key_names: Sequence[str],
                    s3=None, endpoint_url: Optional[str] = None
                    ) -> Iterator[Tuple[bytes, Union[StreamRecord, DeadLetter]]]:
    """(line, INSERT StreamRecord or DeadLetter) per item of one data file of
    ``summary`` (:func:`read_summary`), so that files can be read in
    parallel. Raises :class:`ExportError` before yielding anything when the
    file does not match its manifest."""
    yield from _file_items(_Store(s3, endpoint_url), summary, data_file, key_names)


def _file_items(store: _Store, summary: ExportSummary, data_file: ExportFile, key_names):
    version = export_version(summary.export_time_us)
    data = store.read(data_file.location)
    if data_file.md5 is not None and base64.b64encode(
            hashlib.md5(data).digest()).decode('ascii') != data_file.md5:
        raise ExportError(f'{data_file.location}: MD5 differs from the manifest\'s '
                          f'{data_file.md5}: the file is damaged or incomplete')
    lines = [line for line in gzip.decompress(data).split(b'\n') if line.strip()]
    if len(lines) != data_file.item_count:
        raise ExportError(f'{data_file.location}: {len(lines)} items, the manifest says '
                          f'{data_file.item_count}')
    for number, line in enumerate(lines, 1):
        position = f'{data_file.location}#{number}'
        try:
            yield line, _item_record(line, summary, key_names, version, position)
        except BadRecord as e:
            yield line, dead_letter(STEP, e.reason, e.detail, line, position)


def _item_record(line: bytes, summary: ExportSummary, key_names, version: str,
                 position: str) -> StreamRecord:
    try:
        document = loads_json(line)
    except ValueError as e:
        raise BadRecord('bad-json', f'not JSON: {e}') from None
    if not isinstance(document, dict) or not isinstance(document.get('Item'), dict):
        raise BadRecord('bad-record', 'an export line is {"Item": {...}}')
    image = item(document['Item'], 'Item')
    missing = [k for k in key_names if image.get(k, _MISSING) is _MISSING]
    if missing:
        raise BadRecord('missing-key', f'key attributes {missing} are not in the item')
    keys = type(image)(pair for pair in image if pair[0] in key_names)
    return StreamRecord(summary.table, EventName.INSERT, keys, None, image, None, '0', version,
                        summary.export_time_us, False, False, '', position, len(line))


_MISSING = object()
