"""DynamoDB stream records, decoded exactly, and their row changes.

Input forms, all decoded to one :class:`StreamRecord`:

* boto3 ``dynamodbstreams.get_records`` records (``B`` values are bytes,
  ``ApproximateCreationDateTime`` a datetime);
* DynamoDB Streams **Lambda event JSON** ``{"Records": [...]}`` and archived
  stream records, one such record per line (``format: dynamodb-jsonl``; what
  :mod:`changeflow.io.dynamodb_streams` emits too): ``B`` is base64,
  ``ApproximateCreationDateTime`` epoch seconds (a number) or ISO-8601 text,
  the table comes from ``eventSourceARN``;
* the **Kinesis streaming destination** (JSON in a Kinesis record's ``Data``:
  ``tableName``, ``eventName``, ``dynamodb.Keys/NewImage/OldImage``,
  ``dynamodb.ApproximateCreationDateTime`` in microseconds, or milliseconds
  with the destination's default precision: told apart by magnitude, a
  microsecond time has 16 digits, a millisecond one 13).

AttributeValues are unmarshalled exactly: ``N`` -> :class:`decimal.Decimal`
(at most 38 significant digits, exponent within DynamoDB's range, never a
float), ``S`` -> str, ``B`` -> bytes, ``BOOL`` -> bool, ``NULL`` -> None,
``SS``/``NS``/``BS`` -> :class:`DynamoSet`, ``L`` -> tuple, ``M`` ->
:class:`DynamoMap`. Sets and maps are *sorted tuples*, not frozensets and
dicts: a frozenset of str pickles in hash order, which differs between
processes (``PYTHONHASHSEED``), so it would not key Beam state
deterministically; a sorted tuple pickles the same everywhere and stays
immutable and hashable. Distinct tuple subclasses keep a set and a map
apart from a list.

Versions (:func:`dynamodb_version`): the record's approximate creation time
in microseconds, then its sequence number, both zero-padded, e.g.
``01796143570975000.000...0001100000000017454423009``. Per item, records are
in sequence order within a shard and in time order across a shard's
lineage, so the version never sorts a later change of an item before an
earlier one (assuming, as AWS's own ordering advice for the Kinesis
destination does, that creation times of one item do not go backwards);
replays give the same version, so the replica's version guard drops them.
The time comes first because the sequence number alone does not order
everything one table can deliver: a child shard's sequence numbers are not
documented to exceed its parent's, the Kinesis destination has no stream
sequence number at all (its records may arrive out of order and twice; AWS
says to order them by ``ApproximateCreationDateTime``, and its Kinesis
sequence number only breaks ties), and an export (:func:`export_version`)
has only its export time. All DynamoDB versions of a table therefore share
one format and compare as strings, like :func:`changeflow.model.audit_version`
ones (74 characters; the replica's version column holds 80).

Views (``StreamViewType``) and what each supports downstream: ``NEW_IMAGE``
and ``NEW_AND_OLD_IMAGES`` give whole rows (replica, backup, handlers'
``new``); only ``NEW_AND_OLD_IMAGES`` gives a MODIFY's ``old`` and tells a
no-op MODIFY; ``OLD_IMAGE`` gives REMOVE's ``old``; ``KEYS_ONLY`` gives keys
only. An INSERT or MODIFY without a new image cannot update a replica: it
becomes a DIVERGE op (:func:`to_change`).
"""

import base64
import binascii
import datetime
import decimal
import enum
import re
from typing import Any, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from changeflow.io.json_records import dumps_json, loads_json
from changeflow.model import (
    Change, DeadLetter, OpKind, RowOp, SourceRecord, dead_letter, diverge_op)

__all__ = ['EventName', 'StreamViewType', 'DynamoSet', 'DynamoMap', 'StreamRecord', 'BadRecord',
           'attribute_value', 'item', 'table_from_arn', 'dynamodb_version', 'export_version',
           'is_export_version',
           'decode_record', 'decode_source_record', 'to_change', 'json_ready', 'is_ttl_position',
           'STEP', 'MAX_DIGITS', 'TTL_MARK']

STEP = 'decode_dynamodb'
MAX_DIGITS = 38                     # DynamoDB's number precision
_MIN_EXPONENT, _MAX_EXPONENT = -130, 125   # 1E-130 .. 9.99...E+125, positive or negative
_SEQUENCE_DIGITS = 56               # DynamoDB: at most 40; Kinesis (destination): 56 in practice
_NUMBER = re.compile(r'[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z')
_ARN = re.compile(r'arn:aws[a-z-]*:dynamodb:[^:]*:[^:]*:table/([A-Za-z0-9_.-]{1,255})/stream/[^/]+\Z')
_TTL_PRINCIPAL = 'dynamodb.amazonaws.com'
TTL_MARK = '|ttl'                   # ends the position of a TTL delete's op (to_change)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)
_MICROSECOND_TIMES = 10 ** 14       # a time at or above this is in microseconds, below in ms


class EventName(str, enum.Enum):
    INSERT = 'INSERT'
    MODIFY = 'MODIFY'
    REMOVE = 'REMOVE'


class StreamViewType(str, enum.Enum):
    KEYS_ONLY = 'KEYS_ONLY'
    NEW_IMAGE = 'NEW_IMAGE'
    OLD_IMAGE = 'OLD_IMAGE'
    NEW_AND_OLD_IMAGES = 'NEW_AND_OLD_IMAGES'


_HAS_NEW = frozenset({StreamViewType.NEW_IMAGE, StreamViewType.NEW_AND_OLD_IMAGES})
_HAS_OLD = frozenset({StreamViewType.OLD_IMAGE, StreamViewType.NEW_AND_OLD_IMAGES})


class DynamoSet(tuple):
    """An SS, NS or BS value: its distinct elements, sorted."""
    __slots__ = ()

    def __repr__(self):
        return f'DynamoSet({tuple.__repr__(self)})'


class DynamoMap(tuple):
    """An M value or an item: (name, value) pairs sorted by name."""
    __slots__ = ()

    def get(self, name: str, default=None):
        for key, value in self:
            if key == name:
                return value
        return default

    def names(self) -> Tuple[str, ...]:
        return tuple(key for key, _ in self)

    def as_dict(self) -> dict:
        return dict(self)

    def __repr__(self):
        return f'DynamoMap({tuple.__repr__(self)})'


class StreamRecord(NamedTuple):
    """One change of one DynamoDB item, in any input form."""
    table: str
    event: EventName
    keys: DynamoMap                     # the key attributes
    old_image: Optional[DynamoMap]      # None when the view or event has none
    new_image: Optional[DynamoMap]
    view_type: Optional[StreamViewType]  # None: not told (Kinesis destination, exports)
    sequence: str                       # stream (or Kinesis) sequence number
    version: str                        # see dynamodb_version
    created_us: int                     # ApproximateCreationDateTime, epoch microseconds
    ttl_delete: bool                    # a REMOVE by DynamoDB's TTL, not by a user
    no_op: bool                         # a MODIFY whose new image equals the old one
    event_id: str
    position: str
    size_bytes: int                     # dynamodb.SizeBytes, 0 when absent


class BadRecord(ValueError):
    """A record that cannot be decoded.

    ``reason``: 'bad-json', 'bad-record' (a field missing or of the wrong
    type, an unknown eventName), 'bad-attribute-value' (the detail names the
    attribute path), 'missing-key'.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


class _BadValue(Exception):
    """A malformed value deep in an item; each level on the way out adds its
    path segment, so paths are only built for the rare bad value."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail
        self.segments: List[str] = []


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _number(text) -> decimal.Decimal:
    if type(text) is not str or not _NUMBER.match(text):
        raise _BadValue(f'N must be a decimal number as text, not {_short(text)}')
    number = decimal.Decimal(text)          # exact: construction does not round
    if len(text) <= MAX_DIGITS and 'e' not in text and 'E' not in text:
        return number   # at most 38 digits, magnitude within 1E-38 .. 1E+38: in range
    digits = number.as_tuple().digits
    if len(digits) > MAX_DIGITS:
        significant = len(digits)
        while significant > 1 and digits[significant - 1] == 0:
            significant -= 1
        if significant > MAX_DIGITS:
            raise _BadValue(f'N {text!r} has {significant} significant digits; '
                            f'DynamoDB keeps at most {MAX_DIGITS}')
    if number and not _MIN_EXPONENT <= number.adjusted() <= _MAX_EXPONENT:
        raise _BadValue(f'N {text!r} is outside DynamoDB\'s range 1E-130 .. 9.9E+125')
    return number


def _binary(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _BadValue(f'B is not base64: {_short(value)}') from None
    raise _BadValue(f'B must be bytes or base64 text, not {type(value).__name__}')


def _string(value) -> str:
    if type(value) is not str:
        raise _BadValue(f'S must be text, not {type(value).__name__}')
    return value


def _in(segment: str, error: _BadValue) -> _BadValue:
    error.segments.append(segment)
    return error


def _set(tag: str, values) -> DynamoSet:
    if not isinstance(values, (list, tuple)) or not values:
        raise _BadValue(f'{tag} must be a non-empty list, not {_short(values)}')
    element = _ELEMENTS[tag]
    elements = []
    for i, v in enumerate(values):
        try:
            elements.append(element(v))
        except _BadValue as e:
            raise _in(f'[{i}]', e)
    distinct = sorted(set(elements))
    if len(distinct) != len(elements):
        raise _BadValue(f'{tag} holds duplicates: {_short(values)}')
    return DynamoSet(distinct)


_ELEMENTS = {'SS': _string, 'NS': _number, 'BS': _binary}


def _value(value) -> Any:
    if type(value) is not dict and not isinstance(value, Mapping) or len(value) != 1:
        raise _BadValue(f'an AttributeValue is an object with exactly one type, not {_short(value)}')
    for tag, inner in value.items():
        if tag == 'S':
            return _string(inner)
        if tag == 'N':
            return _number(inner)
        if tag == 'M':
            return _map(inner)
        if tag == 'BOOL':
            if type(inner) is not bool:
                raise _BadValue(f'BOOL must be true or false, not {_short(inner)}')
            return inner
        if tag == 'NULL':
            if inner is not True:
                raise _BadValue(f'NULL must be true, not {_short(inner)}')
            return None
        if tag == 'L':
            if not isinstance(inner, (list, tuple)):
                raise _BadValue(f'L must be a list, not {type(inner).__name__}')
            out = []
            for i, v in enumerate(inner):
                try:
                    out.append(_value(v))
                except _BadValue as e:
                    raise _in(f'[{i}]', e)
            return tuple(out)
        if tag == 'B':
            return _binary(inner)
        if tag in _ELEMENTS:
            return _set(tag, inner)
        raise _BadValue(f'unknown AttributeValue type {tag!r}')


def _map(attributes) -> DynamoMap:
    if type(attributes) is not dict and not isinstance(attributes, Mapping):
        raise _BadValue(f'must be a map of attributes, not {type(attributes).__name__}')
    pairs = []
    for name, v in attributes.items():
        if type(name) is not str:
            raise _BadValue(f'attribute name {name!r} is not text')
        try:
            pairs.append((name, _value(v)))
        except _BadValue as e:
            raise _in(f'.{name}', e)
    pairs.sort(key=_first)
    return DynamoMap(pairs)


def _first(pair):
    return pair[0]


def _bad_record(path: str, error: _BadValue) -> BadRecord:
    return BadRecord('bad-attribute-value', f'{path}{"".join(reversed(error.segments))}: '
                                            f'{error.detail}')


def attribute_value(value: Mapping, path: str = 'value') -> Any:
    """One AttributeValue (``{"N": "100"}``) as a Python value.

    Raises:
        BadRecord: 'bad-attribute-value', naming the attribute's path from
        ``path`` (``NewImage.a.b[2]``).
    """
    try:
        return _value(value)
    except _BadValue as e:
        raise _bad_record(path, e) from None


def item(attributes: Mapping, path: str = 'Item') -> DynamoMap:
    """A map of attribute name -> AttributeValue (an item, a key, an M)."""
    try:
        return _map(attributes)
    except _BadValue as e:
        raise _bad_record(path, e) from None


def table_from_arn(arn: str) -> str:
    """The table of a stream ARN ``arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL``.

    NAME may hold letters, digits, ``_``, ``-`` and ``.`` (``prod-Card``).
    """
    match = _ARN.match(arn) if isinstance(arn, str) else None
    if not match:
        raise BadRecord('bad-record', f'not a DynamoDB stream ARN: {_short(arn)}')
    return match.group(1)


def dynamodb_version(created_us: int, sequence) -> str:
    """Version of a stream record: creation time (µs), then the sequence number."""
    number = int(sequence)
    if created_us < 0 or number < 0 or len(str(number)) > _SEQUENCE_DIGITS:
        raise BadRecord('bad-record', f'sequence number {_short(sequence)} or time '
                                      f'{created_us} out of range')
    return f'{created_us:017d}.{number:0{_SEQUENCE_DIGITS}d}'


def export_version(export_time_us: int) -> str:
    """Version of an item read from an export taken at ``export_time_us``.

    It sorts before every stream record created at or after the export
    time: the export time is cut to its whole second (AWS rounds stream
    records' times down to the second) and its sequence part is all zeros
    (no record has sequence number 0). Records of that second from before
    the export sort after it too; applying them again is harmless, as they
    are followed by every later change of their item.
    """
    return f'{export_time_us // 1_000_000 * 1_000_000:017d}.{0:0{_SEQUENCE_DIGITS}d}'


def is_export_version(version: str) -> bool:
    """Whether a version is an export's (:func:`export_version`): the item
    was in the table's initial state, no stream record changed it (no
    stream record has sequence number 0)."""
    return version.endswith(_EXPORT_SEQUENCE)


_EXPORT_SEQUENCE = '.' + '0' * _SEQUENCE_DIGITS


def _field(mapping: Mapping, name: str, types, where: str):
    value = mapping.get(name)
    if not isinstance(value, types):
        raise BadRecord('bad-record', f'{where}{name} is missing or not '
                                      f'{getattr(types, "__name__", types)}: {_short(value)}')
    return value


def _time_us(value, kinesis: bool) -> int:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return (value - _EPOCH) // _MICROSECOND
    if isinstance(value, str):
        try:
            return _time_us(datetime.datetime.fromisoformat(value.replace('Z', '+00:00')), kinesis)
        except ValueError:
            pass
    elif isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool) \
            and value >= 0:
        if kinesis:
            return int(value) if value >= _MICROSECOND_TIMES else int(value) * 1000
        return round(value * 1_000_000)
    raise BadRecord('bad-record', f'dynamodb.ApproximateCreationDateTime is not a time: '
                                  f'{_short(value)}')


def _same(a, b) -> bool:
    """Equality that also compares types: BOOL true is not N 1, L is not M."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _ttl(identity) -> bool:
    return (isinstance(identity, Mapping) and identity.get('type') == 'Service'
            and identity.get('principalId') == _TTL_PRINCIPAL)


def decode_record(record: Mapping, table: Optional[str] = None, position: str = '',
                  kinesis_sequence: Optional[str] = None) -> StreamRecord:
    """One stream record (boto3, Lambda/archived JSON, Kinesis destination).

    ``table``: for boto3 records, which do not name their table (the reader
    knows it); otherwise it comes from ``eventSourceARN`` or ``tableName``.
    ``kinesis_sequence``: the Kinesis record's sequence number, for the
    Kinesis destination form (its records carry no stream sequence number).

    Raises:
        BadRecord: with a reason for the dead letter.
    """
    if not isinstance(record, (dict, Mapping)):
        raise BadRecord('bad-record', f'a stream record is an object, not {_short(record)}')
    body = _field(record, 'dynamodb', Mapping, '')
    kinesis = 'tableName' in record and 'SequenceNumber' not in body
    try:
        event = EventName(record.get('eventName'))
    except ValueError:
        raise BadRecord('bad-record', f'unknown eventName {_short(record.get("eventName"))}') from None
    if kinesis:
        table = _field(record, 'tableName', str, '')
        if kinesis_sequence is None:
            raise BadRecord('bad-record', 'a Kinesis destination record needs its Kinesis '
                                          'sequence number')
        sequence = kinesis_sequence
    else:
        if 'eventSourceARN' in record or table is None:
            table = table_from_arn(record.get('eventSourceARN'))
        sequence = _field(body, 'SequenceNumber', str, 'dynamodb.')
    if not str(sequence).isdigit():
        raise BadRecord('bad-record', f'sequence number is not decimal: {_short(sequence)}')
    created_us = _time_us(body.get('ApproximateCreationDateTime'), kinesis)
    view = body.get('StreamViewType')
    try:
        view = StreamViewType(view) if view is not None else None
    except ValueError:
        raise BadRecord('bad-record', f'unknown StreamViewType {_short(view)}') from None
    if not body.get('Keys'):
        raise BadRecord('missing-key', 'dynamodb.Keys is missing or empty')
    keys = item(body['Keys'], 'Keys')
    old = item(body['OldImage'], 'OldImage') if body.get('OldImage') is not None else None
    new = item(body['NewImage'], 'NewImage') if body.get('NewImage') is not None else None
    if view in _HAS_NEW and event is not EventName.REMOVE and new is None:
        raise BadRecord('bad-record', f'{event.value} in a {view.value} stream without NewImage')
    if view in _HAS_OLD and event is not EventName.INSERT and old is None:
        raise BadRecord('bad-record', f'{event.value} in a {view.value} stream without OldImage')
    size = body.get('SizeBytes', 0)
    return StreamRecord(
        table, event, keys, old, new, view, str(sequence), dynamodb_version(created_us, sequence),
        created_us, event is EventName.REMOVE and _ttl(record.get('userIdentity')),
        event is EventName.MODIFY and old is not None and old == new and _same(old, new),
        str(record.get('eventID', '')), position or f'{table}/{sequence}',
        size if isinstance(size, int) else 0)


def _records_of(document) -> List[Mapping]:
    if isinstance(document, Mapping) and 'Records' in document and 'dynamodb' not in document:
        records = document['Records']
        if not isinstance(records, list):
            raise BadRecord('bad-record', 'Records is not a list')
        return records
    return [document]


def decode_source_record(source: SourceRecord, table: Optional[str] = None,
                         kinesis: bool = True) -> Iterator[Union[StreamRecord, DeadLetter]]:
    """The stream records in one SourceRecord's JSON, each decoded or dead-lettered.

    ``source.data`` holds one stream record (a line of a ``dynamodb-jsonl``
    archive, a record of the streams reader, a Kinesis destination record)
    or a Lambda event ``{"Records": [...]}``. ``kinesis``: ``source.sequence``
    is a Kinesis sequence number, which a Kinesis destination record needs
    as its own; False for files, whose ``sequence`` is a line number (a
    Kinesis destination record there is a 'bad-record'). A record that fails becomes a
    DeadLetter (step ``decode_dynamodb``) without taking the others with it;
    its ``original`` is the whole input when it holds one record, else that
    record's JSON.
    """
    try:
        records = _records_of(loads_json(source.data))
    except ValueError as e:
        reason = e.reason if isinstance(e, BadRecord) else 'bad-json'
        detail = e.detail if isinstance(e, BadRecord) else f'not JSON: {e}'
        yield dead_letter(STEP, reason, detail, source.data, source.position)
        return
    single = len(records) == 1
    for index, record in enumerate(records):
        position = source.position if single else f'{source.position}@{index}'
        try:
            yield decode_record(record, table, position, source.sequence if kinesis else None)
        except BadRecord as e:
            original = source.data if single else dumps_json(record)
            yield dead_letter(STEP, e.reason, e.detail, original, position)


def _json_number(number: decimal.Decimal):
    if number == number.to_integral_value():
        return int(number)
    as_float = float(number)
    return as_float if decimal.Decimal(repr(as_float)) == number else format(number, 'f')


def json_ready(value, nested: bool = False) -> Any:
    """A decoded value as a replica column value.

    Top-level scalars stay as decoded (Decimal, str, bytes, bool, None); M
    and L become dicts and lists that ``json.dumps`` takes, as do sets
    (sorted lists). Inside them a number is an int when integral, else a
    float when the float's shortest text is the same number, else its exact
    text (a JSON float would lose digits); bytes are base64 text.
    """
    if isinstance(value, DynamoMap):
        return {name: json_ready(v, True) for name, v in value}
    if isinstance(value, tuple):          # L and DynamoSet
        return [json_ready(v, True) for v in value]
    if nested and isinstance(value, decimal.Decimal):
        return _json_number(value)
    if nested and isinstance(value, bytes):
        return base64.b64encode(value).decode('ascii')
    return value


def to_change(record: StreamRecord, key_names: Sequence[str], columns=None,
              old_image: bool = False) -> Optional[Change]:
    """The record as one Change for the replica, or None for a no-op MODIFY.

    ``key_names``: the table's key attributes in key order (hash, then range);
    a record whose Keys name other attributes as well belongs to a table
    keyed otherwise ('key-mismatch': its changes would merge distinct items).
    ``columns``: the table's declared columns, a
    :class:`changeflow.dynamodb.columns.ItemColumns`: the new image must fit
    them (else :class:`~changeflow.dynamodb.columns.ItemMismatch`, carrying
    the row's ``key``), and the values are theirs; None: every attribute as
    :func:`json_ready` gives it.
    Number keys become ints when integral, else their exact text: Beam's
    deterministic coder cannot encode a Decimal in a GroupByKey key (the
    job would fail), and Decimal('1') and Decimal('1.0') are one DynamoDB
    key but encode differently. The sink coerces them by column type.
    INSERT or MODIFY with a new image -> a REPLACE of the whole row with the
    new image's attributes; REMOVE (a user's or TTL's) -> DELETE; INSERT or
    MODIFY without a new image (``KEYS_ONLY``, ``OLD_IMAGE`` views) -> a
    DIVERGE op: the row is no longer known to equal the table.
    ``old_image``: the REPLACE's or DELETE's ``old`` is the record's old image
    (``NEW_AND_OLD_IMAGES``, ``OLD_IMAGE``), valued as ``values`` are (fitted
    to ``columns`` where it fits them, else as :func:`json_ready` gives it),
    for notifications' old values; otherwise None.

    Raises:
        BadRecord: 'missing-key' when a key attribute is not in the record's
        Keys, 'key-mismatch' when the Keys hold others.
    """
    if record.no_op:
        return None
    if len(record.keys) > len(key_names):
        raise BadRecord('key-mismatch', f'Keys {list(record.keys.names())} name attributes '
                                        f'beyond the configured key {list(key_names)}')
    key = []
    for name in key_names:
        value = record.keys.get(name, _MISSING)
        if value is _MISSING:
            raise BadRecord('missing-key', f'key attribute {name!r} is not in Keys '
                                           f'{list(record.keys.names())}')
        key.append(_key_value(value))
    old = _old_values(record.old_image, columns) if old_image else None
    if record.event is EventName.REMOVE:
        op = RowOp(OpKind.DELETE, record.version, position=record.position + (
            TTL_MARK if record.ttl_delete else ''), old=old)
    elif record.new_image is not None:
        if columns is None:
            values = tuple((name, json_ready(v)) for name, v in record.new_image)
        else:
            try:
                values = columns.values(record.new_image)
            except BadRecord as e:
                e.key = tuple(key)
                raise
        op = RowOp(OpKind.REPLACE, record.version, values, position=record.position, old=old)
    else:
        view = record.view_type.value if record.view_type else 'unknown'
        op = diverge_op(record.version, 'no-new-image',
                        f'{record.event.value} in a {view} stream carries no new image',
                        record.position)
    return Change(record.table, tuple(key), (op,), record.created_us)


def _old_values(image: Optional[DynamoMap], columns):
    if image is None:
        return None
    if columns is not None:
        try:
            return columns.values(image)
        except BadRecord:
            pass  # an old state that did not fit (its row is marked): shown as it was
    return tuple((name, json_ready(v)) for name, v in image)


def is_ttl_position(position: str) -> bool:
    """Whether an op's position (a Parquet row's ``position``) is a TTL delete's."""
    return position.endswith(TTL_MARK)


def _key_value(value):
    if isinstance(value, decimal.Decimal):
        if value == value.to_integral_value():
            return int(value)
        return format(value.normalize(), 'f')
    return value


_MISSING = object()
