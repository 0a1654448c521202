"""JSON rendering of values, Changes and times for the sinks' records (dead
letters, notifications, the Parquet backup's key and value columns).

Values keep every digit (Decimal as text, bytes as base64); text that was not
UTF-8 (lone surrogates from 'surrogateescape' decoding) is still written, as
``\\u`` escapes, and read back.
"""

import base64
import datetime
import decimal
import functools
import json
import math
from typing import Any

import orjson

from changeflow.sql.expressions import to_sql
from changeflow.model import Change

__all__ = ['json_value', 'dumps_json', 'loads_json', 'change_json', 'iso_utc', 'parse_iso_utc']

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)


@functools.lru_cache(maxsize=4096)
def iso_utc(time_us: int) -> str:
    """Epoch microseconds as ISO 8601 UTC with microseconds and a ``Z``.

    Cached: a log's events share their (whole-second) times, and building the
    text costs 3 us, once per notification."""
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
    :func:`changeflow.sql.expressions.to_sql` (``repr`` for a malformed one), so a
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
            **({} if op.condition is None else {'condition': _sql_text(op.condition)}),
            **({} if op.old is None else {'old': {c: json_value(v) for c, v in op.old}}),
        } for op in change.ops],
    })


def _sql_text(expr) -> str:
    try:
        return to_sql(expr)
    except (LookupError, TypeError, ValueError):
        return repr(expr)
