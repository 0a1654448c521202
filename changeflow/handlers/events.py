"""The events handlers receive, and the raw form they travel in.

A :class:`ChangeEvent` is one change of one item as the source told it
(plain values, so it packs into runs like Changes do); handlers get it typed
by its table's model as an :class:`InsertEvent`, :class:`ModifyEvent` or
:class:`RemoveEvent` (:func:`typed_event`).

DynamoDB stream records map one to one (INSERT, MODIFY, REMOVE, with the
images the stream's view carries: ``old`` is None where the view has no old
image). Audit-log changes (:func:`audit_events`) carry no old image, so their
``old`` is always None and ``new`` holds what the statement wrote: an INSERT
or INSERT IGNORE is an insert (its values; an INSERT IGNORE may have done
nothing), a REPLACE, an UPDATE or an INSERT ... ON DUPLICATE KEY UPDATE a
modify (REPLACE: the whole row; UPDATE and UPSERT: only the columns set to
literal values, named in ``written``, the others None or the model field's
default), a DELETE a remove (``old`` None, ``key`` set). Whole-table ops
(TRUNCATE) and DIVERGE markers are not row events: they are counted, not
delivered.

Change ids (:func:`change_id`) hash (table, key, version): the same on every
replay of the same input, and the same as the change's notification id.
"""

import dataclasses
import hashlib
from typing import Any, ClassVar, Generic, Iterator, NamedTuple, Optional, Tuple, TypeVar

from changeflow.io.json_records import change_json, dumps_json, json_value
from changeflow.model import Change, OpKind
from changeflow.sql.rowstate import op_columns

__all__ = ['INSERT', 'MODIFY', 'REMOVE', 'EVENT_KINDS', 'ChangeEvent', 'StreamEvent',
           'InsertEvent', 'ModifyEvent', 'RemoveEvent', 'change_id', 'event_version',
           'stream_event', 'audit_events', 'typed_event']

INSERT, MODIFY, REMOVE = 'insert', 'modify', 'remove'
EVENT_KINDS = (INSERT, MODIFY, REMOVE)
T = TypeVar('T')

_AUDIT_KINDS = {OpKind.INSERT: INSERT, OpKind.INSERT_IGNORE: INSERT, OpKind.REPLACE: MODIFY,
                OpKind.UPSERT: MODIFY, OpKind.UPDATE: MODIFY, OpKind.DELETE: REMOVE}


class ChangeEvent(NamedTuple):
    """One change of one item, untyped: images are (attribute, value) pairs."""
    table: str
    key: Tuple[Any, ...]
    kind: str                           # INSERT, MODIFY or REMOVE
    old: Optional[tuple]                # None: the source carries no old image
    new: Optional[tuple]
    version: str
    time_us: int
    position: str
    original: bytes                     # the source record (or Change JSON), for dead letters
    ttl: bool = False                   # a REMOVE by DynamoDB's TTL
    written: Optional[Tuple[str, ...]] = None   # audit UPDATE/UPSERT: the columns it set


def event_version(event: ChangeEvent) -> str:
    return event.version


def change_id(table: str, key, version: str) -> str:
    """The content-derived id of one change: stable across replays and restarts."""
    return hashlib.sha256(dumps_json([table, json_value(list(key)), version])).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class StreamEvent(Generic[T]):
    """What every event has: where it is from and which change it is."""
    table: str
    key: Tuple[Any, ...]
    change_id: str
    version: str
    time_us: int
    position: str

    kind: ClassVar[str] = ''


@dataclasses.dataclass(frozen=True)
class InsertEvent(StreamEvent[T]):
    """An item was created: ``new`` is it."""
    new: T = None
    kind: ClassVar[str] = INSERT


@dataclasses.dataclass(frozen=True)
class ModifyEvent(StreamEvent[T]):
    """An item changed: ``old`` (None when the source has no old image) and ``new``.
    ``written``: for an audit UPDATE or UPSERT, the columns ``new`` really holds."""
    old: Optional[T] = None
    new: T = None
    written: Optional[Tuple[str, ...]] = None
    kind: ClassVar[str] = MODIFY


@dataclasses.dataclass(frozen=True)
class RemoveEvent(StreamEvent[T]):
    """An item was deleted: ``old`` (None without an old image); ``ttl``: by
    DynamoDB's time to live, not by a user."""
    old: Optional[T] = None
    ttl: bool = False
    kind: ClassVar[str] = REMOVE


def stream_event(record, key: Tuple[Any, ...], original: bytes) -> ChangeEvent:
    """A decoded DynamoDB StreamRecord (:mod:`changeflow.dynamodb.records`) as an event."""
    kind = {'INSERT': INSERT, 'MODIFY': MODIFY, 'REMOVE': REMOVE}[record.event.value]
    return ChangeEvent(record.table, key, kind, record.old_image, record.new_image,
                       record.version, record.created_us, record.position, original,
                       record.ttl_delete)


def audit_events(change: Change) -> Iterator[ChangeEvent]:
    """The row events of one audit-log Change (see the module docstring);
    whole-table ops and markers give none."""
    if not change.key:
        return
    original = None
    for op in change.ops:
        kind = _AUDIT_KINDS.get(op.kind)
        if kind is None:
            continue
        if original is None:
            original = change_json(change)
        written = None
        if kind == REMOVE:
            new = None
        elif op.kind in (OpKind.INSERT, OpKind.INSERT_IGNORE, OpKind.REPLACE):
            new = tuple(op.values)
        else:
            literals, _ = op_columns(op)
            new = tuple(literals.items())
            written = tuple(literals)
        yield ChangeEvent(change.table, tuple(change.key), kind, None, new, op.version,
                          change.event_time_us, op.position, original, written=written)


def typed_event(event: ChangeEvent, old, new) -> StreamEvent:
    """The handler's view of ``event``, with ``old`` and ``new`` already typed."""
    common = dict(table=event.table, key=event.key,
                  change_id=change_id(event.table, event.key, event.version),
                  version=event.version, time_us=event.time_us, position=event.position)
    if event.kind == INSERT:
        return InsertEvent(new=new, **common)
    if event.kind == MODIFY:
        return ModifyEvent(old=old, new=new, written=event.written, **common)
    return RemoveEvent(old=old, ttl=event.ttl, **common)
