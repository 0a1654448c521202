"""Notifications about Changes, routed by rules to JSON-lines files or stdout.

A rule (a :class:`changeflow.config.NotifyRule`, or a mapping as in the YAML)::

    {'to': 'file:/var/changeflow/orders.jsonl',
     'when': {'table': 'shop.orders', 'op': ['insert', 'delete']}}

``to`` is ``scheme:address``: ``file:PATH`` (JSON lines) or ``stdout``; SNS
topics, SQS queues and webhooks (``sns:ARN``, ``sqs:URL``, ``https://...``)
are the :class:`NotificationWriter` subclasses of
:mod:`changeflow.io.messaging`, registered in :data:`WRITERS` under their
scheme, with the same rule shape plus the options they declare
(``template``, ``region``, ...) as keys of the rule.

``when`` (optional, every key optional): ``table`` is a 'database.table' name
or an ``fnmatch`` pattern ('shop.*'); ``op`` one OpKind value or a list of
them. A Change matches when its table matches and *any* of its ops is of a
listed kind. Kinds match exactly: a rule for 'insert' does not fire on
'replace', 'upsert' or 'insert_ignore', nor one for 'update' on 'upsert',
because from the change stream alone one cannot tell whether such a statement
inserted, updated or did nothing (that needs the replica's prior state); list
those kinds to be told about them. ``columns`` (column predicates such as
``{status: {to: shipped}}``) must all hold too: see
:mod:`changeflow.io.notify_columns`.

Each matching (rule target, Change) gives one JSON object; in a job
(``batched=True``) each Change is one *source op* (one statement's effect on
one row, :mod:`changeflow.transforms.shard_batches`), so each op is announced
once however runs over overlapping input coalesce::

    {"id": "...", "table": "shop.orders", "key": [1, 7], "op": "update",
     "version": "...", "event_time": "2026-11-22T14:16:18.000000Z",
     "values": {"status": "paid", "card": "***"}}

``op`` and ``version`` are the Change's last op's; ``old``, only where the
source tells it (a DynamoDB MODIFY's or REMOVE's old image, in
``NEW_AND_OLD_IMAGES`` and ``OLD_IMAGE`` streams), the row before it;
``values`` the literal values that op writes (see :func:`changeflow.sql.rowstate.op_columns`: an
UPDATE's literal assignments, an insert's or UPSERT's inserted values; computed
assignments are left out), rendered by
:func:`changeflow.io.json_records.json_value` (Decimal as text, bytes base64).
Columns in the TableSpec's ``redact`` (compared case-insensitively, as
MySQL compares column names), values and key parts alike, read
``"***"``. ``id`` is a hash of (table, key, version), not of where the
notification goes: two rules with the same target send one notification, and
a file moved to another path keeps its ids (nothing is sent again).

Delivery: ``file:`` appends a line per notification whose ``id`` is not yet in
the file. The file's ids are indexed in a SQLite file beside it (``PATH.ids``,
a cache: rebuilt from the file when missing or not this file's, so a file
moved without it keeps its ids); before every append, under an exclusive
``fcntl`` lock on the file, the lines appended since the index's offset are
indexed (a writer's own last few thousand are held by it until it indexes
them) and the batch's ids looked up; so re-running the same input, or
several workers of one machine, leave one line per id, and a worker's memory
does not grow with the file. The file must be on a local filesystem shared
by the workers that write it (a local or single-machine run).
``stdout`` prints every notification and is not idempotent: a re-run prints
again. SNS, SQS and webhooks send at most once per (target, id) by a ledger
in the job's state store, with retries and dead letters per notification:
see :mod:`changeflow.io.messaging`.

Runner support: any runner; writes are buffered per bundle (at most
``batch_size`` per target) and flushed before the bundle ends, each batch in
version order.
"""

import fcntl
import fnmatch
import functools
import hashlib
import logging
import operator
import os
import sqlite3
import sys
from typing import (Any, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Sequence, Set,
                    Tuple, Union)

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from changeflow.config import NotifyRule, TableSpec
from changeflow.io.json_records import dumps_json, iso_utc, json_value, loads_json
from changeflow.io.notify_columns import ColumnPredicate, columns_match, parse_columns
from changeflow.model import DEAD_LETTER_TAG, MARKER_KINDS, Change, OpKind, dead_letter
from changeflow.sql.rowstate import op_columns
from changeflow.transforms.guard import changes_original, guarded
from changeflow.transforms.runs import batch_changes, gc_paused

__all__ = ['WriteNotifications', 'NotificationWriter', 'JsonLinesFileWriter',
           'StdoutWriter', 'WRITERS', 'REDACTED']

_STEP = 'write_notify'
_LOG = logging.getLogger(__name__)
REDACTED = '***'


class NotificationWriter:
    """Delivers notification lines to one target (``scheme:address``).

    One instance per target and DoFn instance: :meth:`open` in the DoFn's
    setup, :meth:`write` when a buffer is flushed, :meth:`close` at teardown.
    ``OPTIONS``: the rule keys besides ``to`` and ``when`` that the
    constructor takes as keywords; ``STATEFUL``: it takes ``state_url`` (the
    job's state store) too.
    """

    OPTIONS: FrozenSet[str] = frozenset()
    STATEFUL = False

    def __init__(self, address: str):
        """Checks ``address``; raises ValueError naming it when unusable."""
        self.address = address

    @classmethod
    def shown(cls, target: str) -> str:
        """``target`` as logs and dead letters show it (secrets masked)."""
        return target

    def message(self, change: Change, note_id: str, line: bytes, redact: FrozenSet[str],
                key_columns: Tuple[str, ...]) -> bytes:
        """The line to deliver for ``change`` (by default its notification line)."""
        return line

    def failures(self) -> Dict[str, Tuple[str, str]]:
        """The ids the last :meth:`write` failed to deliver -> (reason, detail)."""
        return {}

    def open(self) -> None:
        """Connects. If it raises, it is called again before each write until
        it succeeds; the notifications meanwhile are dead-lettered."""

    def write(self, batch: Sequence[Tuple[str, bytes]]) -> Set[str]:
        """Delivers (id, JSON line) pairs; returns the ids actually written
        (the others were already delivered). Raises if nothing is known to be
        written."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases what :meth:`open` acquired."""


class JsonLinesFileWriter(NotificationWriter):
    """``file:PATH``: appends JSON lines whose id is not yet in the file.

    The ids are looked up in a SQLite index next to the file (``PATH.ids``),
    not held in memory: a worker's memory does not grow with the file. The
    file is the truth and the index a cache of its first ``offset`` bytes:
    both are updated under the file's lock, the index after the append, so
    a crash between them leaves it behind, never ahead; it is caught up
    from ``offset`` (lines appended by other writers, or before a crash) and
    rebuilt from the whole file when missing, unreadable, or describing
    another file (shorter than ``offset``, or other bytes before it).

    The index is updated every ``_INDEX_EVERY`` ids this writer appends (and
    at :meth:`close`), not at every write: an update of 500 random ids
    rewrites most of the index's pages, and its commit cost more than the
    rest of the write. Meanwhile the ids of its own lines since the index's
    offset are held (at most ``_INDEX_EVERY`` and a batch); another
    writer, or a restart after a crash, reads those lines from the file.
    """

    _CHUNK = 1 << 20   # bytes read at a time when catching up
    _INDEX_EVERY = 8192  # ids appended between updates of the index
    _TAIL = 64         # bytes before offset the index checks the file still has
    _LOOKUP = 500      # ids per query (SQLite's variable limit is 32766)

    def __init__(self, address: str):
        super().__init__(address)
        if not address:
            raise ValueError("a 'file:' target needs a path, as in 'file:/tmp/notes.jsonl'")
        self._file = None
        self._index: Optional[sqlite3.Connection] = None
        self._unindexed: Dict[str, None] = {}  # ids of this writer's lines past the index
        self._unindexed_span = (0, 0, b'')     # those lines' bytes: start, end, tail

    def open(self) -> None:
        self.close()
        directory = os.path.dirname(self.address)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._file = open(self.address, 'a+b')  # pylint: disable=consider-using-with
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            try:
                self._index = self._open_index()
            except sqlite3.DatabaseError:  # not a database (a torn or foreign file): rebuilt
                os.remove(self.address + '.ids')
                self._index = self._open_index()
            self._catch_up()
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def _open_index(self) -> sqlite3.Connection:
        index = sqlite3.connect(self.address + '.ids', isolation_level=None,
                                check_same_thread=False)
        try:
            index.executescript(
                'CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID;'
                'CREATE TABLE IF NOT EXISTS indexed (one INTEGER PRIMARY KEY CHECK (one = 0),'
                ' offset INTEGER NOT NULL, tail BLOB NOT NULL);'
                "INSERT OR IGNORE INTO indexed VALUES (0, 0, x'');")
        except sqlite3.DatabaseError:
            index.close()
            raise
        return index

    def _tail(self, offset: int) -> bytes:
        start = max(0, offset - self._TAIL)
        return os.pread(self._file.fileno(), offset - start, start)

    def _catch_up(self) -> int:
        """Indexes the ids of the lines appended since the index's offset (the
        whole file if the index is not this file's); returns the length of
        the unfinished last line, if any. Lines that are not notification
        objects are ignored."""
        index, fd = self._index, self._file.fileno()
        offset, tail = index.execute('SELECT offset, tail FROM indexed').fetchone()
        size = os.fstat(fd).st_size
        if size < offset or self._tail(offset) != tail:
            self._unindexed.clear()
            index.execute('BEGIN')
            index.execute('DELETE FROM ids')
            index.execute("UPDATE indexed SET offset = 0, tail = x''")
            index.execute('COMMIT')
            offset = 0
        if self._unindexed:
            if (offset, size, self._tail(size)) == self._unindexed_span:
                return 0  # the file past the index is this writer's lines alone
            self._unindexed.clear()  # another writer appended or indexed: read from the file
        rest = b''
        while offset + len(rest) < size:
            data = rest + os.pread(fd, self._CHUNK, offset + len(rest))
            complete = data.rfind(b'\n') + 1
            rest = data[complete:]
            if complete:
                self._indexed(_line_ids(data[:complete]), offset + complete)
                offset += complete
        return size - offset

    def _indexed(self, ids, offset: int) -> None:
        """Adds ``ids`` and moves the offset, in one transaction. Sorted first: the
        ids are hashes, and inserted in key order they fill the index's pages in
        turn instead of touching one at random per id."""
        index = self._index
        index.execute('BEGIN')
        index.executemany('INSERT OR IGNORE INTO ids VALUES (?)', zip(sorted(ids)))
        index.execute('UPDATE indexed SET offset = ?, tail = ?', (offset, self._tail(offset)))
        index.execute('COMMIT')

    def _known(self, ids: List[str]) -> Set[str]:
        known: Set[str] = set()
        for start in range(0, len(ids), self._LOOKUP):
            chunk = ids[start:start + self._LOOKUP]
            known.update(row[0] for row in self._index.execute(
                f'SELECT id FROM ids WHERE id IN ({",".join("?" * len(chunk))})', chunk))
        return known

    def write(self, batch):
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            unfinished = self._catch_up()
            unindexed = self._unindexed
            known = self._known([note_id for note_id in dict(batch) if note_id not in unindexed])
            fresh: Dict[str, bytes] = {}
            for note_id, line in batch:
                if note_id not in known and note_id not in unindexed and note_id not in fresh:
                    fresh[note_id] = line
            if fresh:
                data = (b'\n' if unfinished else b'') + b''.join(
                    line + b'\n' for line in fresh.values())
                fd = self._file.fileno()
                start = self._unindexed_span[0] if unindexed else os.fstat(fd).st_size
                self._file.write(data)
                self._file.flush()
                os.fsync(fd)
                end = os.fstat(fd).st_size
                unindexed.update(dict.fromkeys(fresh))
                self._unindexed_span = (start, end, self._tail(end))
                if unfinished or len(unindexed) >= self._INDEX_EVERY:
                    self._index_own_lines()  # after a torn line: indexed past it at once
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        return set(fresh)

    def _index_own_lines(self) -> None:
        """Adds the held ids of this writer's lines to the index (under the lock)."""
        self._indexed(self._unindexed, self._unindexed_span[1])
        self._unindexed.clear()

    def close(self) -> None:
        if self._index is not None:
            if self._unindexed:
                fcntl.flock(self._file, fcntl.LOCK_EX)
                try:
                    if self._catch_up() == 0 and self._unindexed:
                        self._index_own_lines()
                except (OSError, sqlite3.Error) as error:  # a cache: caught up at the next open
                    _LOG.warning('the id index of %s stays behind the file: %s',
                                 self.address, error)
                finally:
                    fcntl.flock(self._file, fcntl.LOCK_UN)
            self._index.close()
            self._index = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _line_ids(data: bytes) -> List[str]:
    """The ids of the notification objects among ``data``'s lines."""
    ids = []
    for line in data.splitlines():
        try:
            record = loads_json(line)
        except ValueError:
            continue  # a line someone else wrote or a torn write: not an id
        if isinstance(record, dict) and isinstance(record.get('id'), str):
            ids.append(record['id'])
    return ids


class StdoutWriter(NotificationWriter):
    """``stdout``: prints every line (not idempotent: a re-run prints again)."""

    def __init__(self, address: str):
        super().__init__(address)
        if address:
            raise ValueError(f"'stdout' takes no address, got {address!r}")

    def write(self, batch):
        sys.stdout.write(''.join(line.decode('utf-8') + '\n' for _, line in batch))
        sys.stdout.flush()
        return {note_id for note_id, _ in batch}


WRITERS: Dict[str, type] = {'file': JsonLinesFileWriter, 'stdout': StdoutWriter}

_OP_KINDS = frozenset(kind.value for kind in OpKind if kind not in MARKER_KINDS)


class _Rule(NamedTuple):
    target: str                  # 'scheme:address' as configured
    scheme: str
    address: str
    table: Optional[str]         # fnmatch pattern; None: any table
    ops: FrozenSet[str]          # OpKind values; empty: any op
    columns: Tuple[ColumnPredicate, ...] = ()   # all must hold
    options: Tuple[Tuple[str, Any], ...] = ()   # the writer's keyword arguments

    def matches_table(self, table: str) -> bool:
        return self.table is None or fnmatch.fnmatchcase(table, self.table)

    def fires(self, change: Change) -> bool:
        """Whether the change, of a table the rule matches, has an op of a listed
        kind and meets every column predicate."""
        if self.ops:
            for op in change.ops:
                if op.kind in self.ops:  # an OpKind hashes and compares as its str value
                    break
            else:
                return False
        return self.columns_hold(change)

    def columns_hold(self, change: Change) -> bool:
        """Whether the change meets every column predicate (the whole of
        :meth:`fires` for a rule already known to fire on its op's kind)."""
        return not self.columns or columns_match(self.columns, change)


def _parse_rule(rule: Union[NotifyRule, Mapping[str, Any]]) -> _Rule:
    columns = None
    if isinstance(rule, NotifyRule):
        columns = rule.columns
        rule = {'to': rule.to, 'when': {'table': rule.table, 'op': list(rule.ops)},
                **dict(rule.options)}
    if not isinstance(rule, Mapping):
        raise ValueError(f'a notification rule is a NotifyRule or a mapping with "to" and '
                         f'"when", got {rule!r}')
    target = rule.get('to')
    if not isinstance(target, str) or not target:
        raise ValueError(f'a notification rule needs a "to" target, got {target!r}')
    scheme, _, address = target.partition(':')
    if scheme not in WRITERS:
        raise ValueError(f'unknown notification target scheme {scheme!r} in {target!r}; '
                         f'known: {sorted(WRITERS)}')
    allowed = {'to', 'when'} | WRITERS[scheme].OPTIONS
    if set(rule) - allowed:
        raise ValueError(f'unknown notification rule keys {sorted(set(rule) - allowed)} for a '
                         f'{scheme!r} target; it takes {", ".join(sorted(allowed))}')
    options = tuple((key, rule[key]) for key in sorted(WRITERS[scheme].OPTIONS) if key in rule)
    WRITERS[scheme](address, **dict(options))  # validates the address and options
    when = rule.get('when') or {}
    if not isinstance(when, Mapping) or set(when) - {'table', 'op', 'columns'}:
        raise ValueError(f'"when" takes "table", "op" and "columns", got {when!r}')
    if columns is None:
        columns = parse_columns(when['columns']) if when.get('columns') is not None else ()
    table = when.get('table')
    if table is not None and (not isinstance(table, str) or not table):
        raise ValueError(f'"when.table" must be a table name, got {table!r}')
    ops = when.get('op') or ()
    ops = (ops,) if isinstance(ops, str) else tuple(ops)
    for op in ops:
        if op not in _OP_KINDS:
            raise ValueError(f'unknown op {op!r} in notification rule for {target!r}; '
                             f'known: {sorted(_OP_KINDS)}')
    return _Rule(target, scheme, address, table, frozenset(ops), tuple(columns), options)


_AS_IS = frozenset({int, str, bool, type(None)})  # what json_value returns unchanged
_KIND_VALUES = {kind: kind.value for kind in OpKind}


def _notification(target: str, change: Change, redact: FrozenSet[str],
                  key_columns: Tuple[str, ...]) -> Tuple[str, bytes]:
    """(id, JSON line) of ``change`` for ``target``."""
    # json_value called only for the values it changes: most are ints and text.
    key = [part if type(part) in _AS_IS else json_value(part) for part in change.key]
    # The row and version alone: a file moved elsewhere (a new target path) keeps its ids.
    last = change.ops[-1]
    note_id = hashlib.sha256(dumps_json([change.table, key, last.version])).hexdigest()[:32]
    if redact and len(key_columns) == len(key):
        key = [REDACTED if column.lower() in redact else value
               for column, value in zip(key_columns, key)]
    literals, _ = op_columns(last)
    if redact:
        values = {column: REDACTED if column.lower() in redact else json_value(value)
                  for column, value in literals.items()}
    else:
        values = {column: value if type(value) in _AS_IS else json_value(value)
                  for column, value in literals.items()}
    note = {'id': note_id, 'table': change.table, 'key': key, 'op': _KIND_VALUES[last.kind],
            'version': last.version, 'event_time': iso_utc(change.event_time_us),
            'values': values}
    if last.old is not None:
        note['old'] = {column: REDACTED if column.lower() in redact else json_value(value)
                       for column, value in last.old}
    return note_id, dumps_json(note)


class _Pending(NamedTuple):
    version: str
    note_id: str
    line: bytes
    position: str
    timestamp: Any
    window: Any


_VERSION_AND_ID = operator.itemgetter(0, 1)  # a _Pending's order in its batch
_new_pending = functools.partial(tuple.__new__, _Pending)  # without NamedTuple's Python __new__


def _notify_original(element):
    return changes_original(element if isinstance(element, Change) else batch_changes(element))


def _notify_position(element):
    if isinstance(element, Change):
        return element.ops[-1].position
    return f'shard {element[0]}/{element[1]}'


@guarded(_STEP, _notify_original, _notify_position, buffered=False)
class _NotifyFn(beam.DoFn):
    """Change (or a shard batch) -> notification lines written (main) and DeadLetters."""

    def __init__(self, rules: Tuple[_Rule, ...], tables: Dict[str, Tuple[FrozenSet[str],
                                                                       Tuple[str, ...]]],
                 batch_size: int, batched: bool = False, state_url: Optional[str] = None):
        self._batched = batched
        self._state_url = state_url
        self._rules = rules
        self._tables = tables
        self._batch_size = batch_size
        namespace = f'changeflow.{_STEP}'
        self._received = Metrics.counter(namespace, 'received')
        self._written = Metrics.counter(namespace, 'written')
        self._skipped_existing = Metrics.counter(namespace, 'skipped_existing')
        self._dead_lettered = Metrics.counter(namespace, 'dead_lettered')

    def setup(self):
        self._timeline = self._followed = None
        self._table_rules: Dict[str, Tuple[_Rule, ...]] = {}
        self._kind_rules: Dict[Tuple[str, Any], Tuple[_Rule, ...]] = {}
        self._messages: Dict[str, Any] = {}  # the writers' own message(): the others take the line
        self._writers: Dict[str, NotificationWriter] = {}
        self._unopened: Set[str] = set()
        for rule in self._rules:
            if rule.target not in self._writers:
                writer = WRITERS[rule.scheme]
                state = {'state_url': self._state_url} if writer.STATEFUL else {}
                writer = self._writers[rule.target] = writer(rule.address, **dict(rule.options),
                                                             **state)
                if type(writer).message is not NotificationWriter.message:
                    self._messages[rule.target] = writer.message
                try:
                    writer.open()
                except Exception as error:  # retried at each flush, dead-lettered there
                    _LOG.warning('cannot open notification target %s yet: %s',
                                 writer.shown(rule.target), error)
                    self._unopened.add(rule.target)

    def start_bundle(self):
        self._pending: Dict[str, List[_Pending]] = {target: [] for target in self._writers}

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam, timeline=None):
        tables = self._tables
        if timeline is not None:  # tables renamed or created by the log's DDL, redact kept
            if timeline is not self._timeline:
                self._timeline = timeline
                self._followed = {**self._tables, **table_info(timeline.all_specs)}
            tables = self._followed
        with gc_paused():  # the batch's changes and notes: many small objects, no cycles
            changes = batch_changes(element) if self._batched else (element,)
            if changes:
                self._received.inc(len(changes))
            kind_rules = self._kind_rules
            for change in changes:
                ops = change.ops
                if len(ops) == 1 and kind_rules.get((change.table, ops[0].kind)) == ():
                    continue  # no rule fires on this (table, kind): most of a log batch
                outputs = self._notify(change, timestamp, window, tables)
                if outputs:
                    yield from outputs
            del changes  # freed while paused: resumed, the collector would scan every one

    def _rules_of_kind(self, table: str, kind) -> Tuple[_Rule, ...]:
        """The rules of ``table`` that fire on an op of ``kind`` if their column
        predicates hold: a single-op Change (every one of a log batch) is
        matched by one lookup."""
        rules = self._kind_rules.get((table, kind))
        if rules is None:
            rules = self._kind_rules[table, kind] = tuple(
                rule for rule in self._rules_of(table) if not rule.ops or kind in rule.ops)
        return rules

    def _rules_of(self, table: str) -> Tuple[_Rule, ...]:
        """The rules whose table pattern matches ``table`` (matched once per name)."""
        rules = self._table_rules.get(table)
        if rules is None:
            rules = self._table_rules[table] = tuple(
                rule for rule in self._rules if rule.matches_table(table))
        return rules

    def _notify(self, change: Change, timestamp, window, tables) -> Sequence:
        """Buffers the change's notifications; returns what to emit now (its dead
        letter, or what the flushes of full buffers output)."""
        try:
            single = len(change.ops) == 1
            rules = (self._rules_of_kind(change.table, change.ops[0].kind) if single
                     else self._rules_of(change.table))
            if not rules:
                return ()
            notes = {}
            note = None  # one (id, line) for every target: neither depends on it
            for rule in rules:
                if rule.target not in notes and (
                        rule.columns_hold(change) if single else rule.fires(change)):
                    if note is None:
                        redact, key_columns = tables.get(change.table, (frozenset(), ()))
                        note = _notification(rule.target, change, redact, key_columns)
                    note_id, line = note
                    message = self._messages.get(rule.target)
                    notes[rule.target] = note_id, line if message is None else message(
                        change, note_id, line, redact, key_columns)
        except Exception as error:  # a malformed Change: dead-lettered, not retried
            self._dead_lettered.inc()
            return [beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                _STEP, 'bad-change', f'{type(error).__name__}: {error}', repr(change),
                change.ops[-1].position if change.ops else ''))]
        outputs = []
        for target, (note_id, line) in notes.items():
            pending = self._pending[target]
            last = change.ops[-1]
            pending.append(_new_pending((last.version, note_id, line, last.position,
                                         timestamp, window)))
            if len(pending) >= self._batch_size:
                outputs.extend(self._flush(target))
        return outputs

    def finish_bundle(self):
        for target in self._pending:
            yield from self._flush(target)

    def _flush(self, target: str):
        batch = sorted(self._pending[target], key=_VERSION_AND_ID)
        self._pending[target] = []
        if not batch:
            return
        writer = self._writers[target]
        try:
            if target in self._unopened:
                writer.open()
                self._unopened.discard(target)
            written = writer.write([(p.note_id, p.line) for p in batch])
        except Exception as error:  # every notification of the batch is dead-lettered
            self._dead_lettered.inc(len(batch))
            for pending in batch:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, WindowedValue(dead_letter(
                    _STEP, 'write-failed',
                    f'{writer.shown(target)}: {type(error).__name__}: {error}',
                    pending.line, pending.position), pending.timestamp, [pending.window]))
            return
        failed = writer.failures()
        lines = []
        skipped = 0
        for pending in batch:
            if pending.note_id in failed:  # the writer says why (rejected, retries exhausted)
                reason, detail = failed[pending.note_id]
                self._dead_lettered.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, WindowedValue(dead_letter(
                    _STEP, reason, f'{writer.shown(target)}: {detail}', pending.line,
                    pending.position), pending.timestamp, [pending.window]))
            elif pending.note_id in written:
                written.discard(pending.note_id)
                if self._batched:
                    lines.append(pending.line.decode('utf-8'))
                else:
                    self._written.inc()
                    yield WindowedValue(pending.line.decode('utf-8'), pending.timestamp,
                                        [pending.window])
            else:
                skipped += 1
        if skipped:
            self._skipped_existing.inc(skipped)
        if lines:
            self._written.inc(len(lines))
            yield WindowedValue(tuple(lines), batch[-1].timestamp, [batch[-1].window])

    def teardown(self):
        for target, writer in self._writers.items():
            if target not in self._unopened:
                writer.close()


class WriteNotifications(beam.PTransform):
    """Sends a notification per Change and matching rule target.

    See the module docstring for rules, matching, the notification object and
    delivery guarantees.

    Args:
        rules: :class:`changeflow.config.NotifyRule` records, or mappings
            ``{'to': target, 'when': {'table': ..., 'op': ...}}`` as in the
            YAML; checked here (ValueError naming an unknown scheme, op or key).
        tables: TableSpecs whose ``redact`` columns (and key order) apply to
            notifications of their table; tables without one are not redacted.
        batch_size: notifications per target buffered before a write.
        schema_timeline: a PCollection of one SchemaTimeline: the tables the
            log's DDL renamed or created get their specs (and redaction) from it.
        batched: each input element is a log batch ``(table, shard, packed
            source ops)`` (the bounded data flow's); the main output then has
            one tuple of lines per write instead of one line per element.
        state_url: the state store (SQLAlchemy URL) of the ledgers of the
            targets that need one (SNS, SQS, webhooks); required with them.

    Returns:
        A DoOutputsTuple: the main output (tag ``MAIN``, ``'written'``) has each JSON
        line written (str, without newline); lines skipped because their id
        was already in a file are counted, not output. ``DEAD_LETTER_TAG`` has
        a DeadLetter (step ``write_notify``) per notification not delivered
        (``write-failed``, or the reason the target gave, ``original`` the
        JSON line) and per Change that
        could not be rendered (``bad-change``). Metrics (namespace
        ``changeflow.write_notify``): received (Changes), written,
        skipped_existing, dead_lettered.

    Example::

        notes = changes | WriteNotifications(
            [{'to': 'file:/tmp/orders.jsonl', 'when': {'table': 'shop.orders', 'op': 'delete'}}],
            tables=specs)
    """

    MAIN = 'written'

    def __init__(self, rules: Sequence[Union[NotifyRule, Mapping[str, Any]]],
                 tables: Sequence[TableSpec] = (),
                 batch_size: int = 500, schema_timeline=None, batched: bool = False,
                 state_url: Optional[str] = None):
        super().__init__()
        if isinstance(rules, Mapping) or not rules:
            raise ValueError(f'WriteNotifications needs a list of rules, got {rules!r}')
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size!r}')
        self._rules = tuple(_parse_rule(rule) for rule in rules)
        options = {}
        for rule in self._rules:
            if options.setdefault(rule.target, rule.options) != rule.options:
                raise ValueError(f'rules for {WRITERS[rule.scheme].shown(rule.target)!r} '
                                 f'give it different options; one target, one set of options')
            if WRITERS[rule.scheme].STATEFUL and state_url is None:
                raise ValueError(f'the {rule.scheme!r} target of a rule needs state_url: the '
                                 f'state store of its ledger (notifications sent)')
        self._state_url = state_url
        self._tables = table_info(tables)
        self._batch_size = batch_size
        self._schema_timeline = schema_timeline
        self._batched = batched

    def expand(self, changes):
        side = {} if self._schema_timeline is None else {
            'timeline': beam.pvalue.AsSingleton(self._schema_timeline)}
        return changes | 'Notify' >> beam.ParDo(
            _NotifyFn(self._rules, self._tables, self._batch_size, self._batched,
                      self._state_url), **side
        ).with_outputs(DEAD_LETTER_TAG, main=self.MAIN)


def table_info(specs: Sequence[TableSpec]) -> Dict[str, Tuple[FrozenSet[str], Tuple[str, ...]]]:
    """source -> (redacted columns, folded; key columns) of each spec."""
    return {spec.source: (frozenset(c.lower() for c in spec.redact), tuple(spec.key))
            for spec in specs}


# The message targets subclass NotificationWriter: they register themselves in WRITERS.
import changeflow.io.messaging  # noqa: E402,F401  pylint: disable=wrong-import-position
