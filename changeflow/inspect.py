"""``changeflow inspect``: what one Kinesis record holds, layer by layer.

Accepts the record as raw bytes (gzip or JSON), base64 of them, an ``aws
kinesis get-records`` response, a Lambda Kinesis event, or one record per line
as the kinesis-jsonl archive format stores them. Prints each CloudWatch Logs
envelope, every audit event parsed from it and, given table specs, the row
changes each statement would become (transactions are not replayed: one record
rarely holds a whole one).
"""

import base64
import binascii
from typing import Iterator, Sequence, TextIO, Tuple

import orjson

from changeflow.config import TableSpec
from changeflow.sql.expressions import to_sql
from changeflow.io.json_records import iso_utc
from changeflow.transforms.audit_log import AuditLineError, parse_audit_line
from changeflow.transforms.decode import GZIP_MAGIC, DecodeError, envelopes
from changeflow.sql.plans import SqlChangeError, StatementTranslator
from changeflow.transforms.transactions import StatementClass, classify_statement

__all__ = ['records_in', 'inspect_input']


def _from_json(document) -> Iterator[Tuple[str, bytes]]:
    if isinstance(document, dict) and isinstance(document.get('Records'), list):
        for record in document['Records']:
            yield from _from_json(record.get('kinesis', record) if isinstance(record, dict)
                                  else record)
        return
    if isinstance(document, dict) and ('Data' in document or 'data' in document):
        data = document.get('Data', document.get('data'))
        label = document.get('SequenceNumber', document.get('sequenceNumber', 'record'))
        yield str(label), base64.b64decode(data, validate=True)
        return
    if isinstance(document, dict) and 'messageType' in document:
        yield 'envelope', orjson.dumps(document)
        return
    raise ValueError('JSON is neither a get-records response, a Kinesis record, '
                     'nor a CloudWatch Logs envelope')


def records_in(data: bytes) -> Iterator[Tuple[str, bytes]]:
    """(label, record bytes) for every Kinesis record found in ``data``."""
    stripped = data.strip()
    if stripped[:2] == GZIP_MAGIC or data[:2] == GZIP_MAGIC:
        yield 'record', data
        return
    if stripped[:1] in (b'{', b'['):
        try:
            yield from _from_json(orjson.loads(stripped))
            return
        except orjson.JSONDecodeError:
            lines = [line for line in stripped.splitlines() if line.strip()]
            if len(lines) < 2:
                raise
            for line in lines:  # kinesis-jsonl: one record per line
                yield from _from_json(orjson.loads(line))
            return
    try:
        decoded = base64.b64decode(b''.join(stripped.split()), validate=True)
    except binascii.Error:
        raise ValueError('input is neither gzip, JSON nor base64') from None
    yield 'record (base64)', decoded


def _show_values(pairs, show=lambda v: repr(v)) -> str:
    return ', '.join(f'{column}={show(value)}' for column, value in pairs)


def inspect_input(data: bytes, out: TextIO, tables: Sequence[TableSpec] = (),
                  query_log_limit: int = 1024) -> bool:
    """Prints what ``data`` holds to ``out``; False if any layer failed to decode."""
    translator = StatementTranslator(tables) if tables else None
    ok = True
    try:
        records = list(records_in(data))
    except (ValueError, orjson.JSONDecodeError) as error:
        print(f'cannot read input: {error}', file=out)
        return False
    for label, record in records:
        print(f'== {label}: {len(record)} bytes', file=out)
        try:
            for envelope in envelopes(record):
                ok &= _show_envelope(envelope, out, translator, query_log_limit)
        except DecodeError as error:
            print(f'   undecodable: {error.reason}: {error.detail}', file=out)
            ok = False
    return ok


def _show_envelope(envelope: dict, out: TextIO, translator, query_log_limit: int) -> bool:
    events = envelope.get('logEvents') or []
    print(f"   {envelope.get('messageType')}  owner={envelope.get('owner')}  "
          f"logGroup={envelope.get('logGroup')}  logStream={envelope.get('logStream')}  "
          f"filters={envelope.get('subscriptionFilters')}  events={len(events)}", file=out)
    ok = True
    for event in events:
        stamp = iso_utc(int(event.get('timestamp', 0)) * 1000)
        print(f"   - event {event.get('id')} at {stamp}", file=out)
        try:
            audit = parse_audit_line(event.get('message', ''), '', query_log_limit)
        except AuditLineError as error:
            print(f'     dead letter: {error.reason}: {error.detail}', file=out)
            ok = False
            continue
        print(f'     {audit.operation} {audit.username}@{audit.host} on {audit.serverhost} '
              f'conn={audit.connection_id} query={audit.query_id} db={audit.database} '
              f'retcode={audit.retcode}', file=out)
        if audit.operation != 'QUERY':
            print(f'     object: {audit.object}', file=out)
            continue
        print(f'     sql: {audit.object}', file=out)
        kind, _ = classify_statement(audit.object)
        if kind != StatementClass.WRITE or translator is None:
            print(f'     class: {kind}', file=out)
            continue
        try:
            translation = translator.translate(audit.object, audit.database)
        except SqlChangeError as error:
            print(f'     dead letter: {error.reason}: {error.detail}', file=out)
            continue
        if translation.skipped:
            print(f'     skipped: {translation.skipped}', file=out)
        for change in translation.changes:
            print(f'     change: {change.kind.value} {change.table} key={change.key}'
                  + (f' values: {_show_values(change.values)}' if change.values else '')
                  + (f' set: {_show_values(change.assignments, to_sql)}'
                     if change.assignments else ''), file=out)
    return ok
