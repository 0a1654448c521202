"""The database sink: coalesced Changes materialised into replica tables.

Prerequisites: SQLAlchemy 2 and the DB-API driver of the target
(``pip install changeflow[postgres]`` for psycopg2, ``changeflow[mysql]`` for
PyMySQL; SQLite needs nothing). Tested against SQLite, PostgreSQL and MariaDB;
other SQLAlchemy dialects use generic (DELETE + INSERT) bookkeeping upserts.
Needs a runner with stateful processing and event-time timers; tested on the
FnApiRunner.

Exactly-once effect on an at-least-once runner comes from a version guard kept
in the target database itself, written in the same transaction as the rows:

* ``changeflow_row_versions(table_name, row_key, version, deleted)``, primary
  key ``(table_name, row_key)``: per replica row, the version of the newest op
  applied to it and whether that left the row deleted (a tombstone).
  ``row_key`` is the canonical JSON of the key values (``[1,"a"]``), or
  ``sha256:<hex>`` of it when longer than 512 characters, so the primary key
  stays inside MariaDB's 3072-byte index limit in utf8mb4.
* ``changeflow_table_versions(table_name, truncated_version)``: per replica
  table, the version of the newest TRUNCATE applied ('' when none).
* ``changeflow_diverged(table_name, row_key, version, reason, detail)``,
  primary key ``(table_name, row_key)``: the rows (``row_key`` as above) and
  whole tables (``row_key = ''``) no longer known to equal the source, with
  the version and reason of the newest mark: a DIVERGE op (a statement the
  SQL stage dead-lettered) or a change this sink dead-lettered. Later changes
  still apply; a mark stays until the row is repaired, or a TRUNCATE newer
  than the mark empties the table at the source and in the replica alike
  (older DIVERGE ops are then stale, as any older op is).

The prefix ``changeflow_`` is configurable; ``table_name`` is the replica
table name (``TableSpec.target``).
"""

import base64
import bisect
import collections
import datetime
import decimal
import functools
import hashlib
import json
import logging
import operator
import os
import re
import time
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import sqlalchemy as sa
from apache_beam import typehints
from apache_beam.metrics import Metrics
from apache_beam.coders import PickleCoder
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms import userstate
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.dialects import mysql, postgresql, sqlite

from changeflow.sql.coercion import INTEGER_RANGE, BadValue, coercer
from changeflow.config import TableSpec, display_url
from changeflow.sql.expressions import MissingColumn
from changeflow.io.json_records import change_json
from changeflow.io.sqlite import begin_immediate
from changeflow.model import DEAD_LETTER_TAG, Change, OpKind, dead_letter, divergence
from changeflow.sql.rowstate import ABSENT, RowState, apply_op
from changeflow.sql.types import parse_type, sqlalchemy_type
from changeflow.transforms.runs import batch_changes, gc_paused, make_batch
from changeflow.transforms.guard import changes_original, describe_error, guarded

__all__ = ['WriteToDatabase', 'WriteBatchesToDatabase', 'Divergence', 'read_divergence', 'replica_table', 'schema_table',
           'spec_json', 'read_followed_specs', 'bookkeeping_tables', 'create_engine', 'sql_type',
           'shards_of', 'DEFAULT_SHARDS']

_STEP = 'write_database'

_NAMESPACE = 'changeflow.write_database'
_TABLE_NAME_LENGTH = 128     # 512 bytes in utf8mb4
_ROW_KEY_LENGTH = 512        # 2048 bytes in utf8mb4: the primary key stays < 3072
_VERSION_LENGTH = 80         # audit versions are 67 characters
_KEYS_PER_SELECT = 500       # bound on the IN list of one SELECT
_MAX_STATEMENTS = 500        # compiled statements kept per table (and for the bookkeeping)
_BACKOFF_SECS = 0.2          # first retry delay; doubles per attempt
_MAX_BACKOFF_SECS = 10.0
_UNREACHABLE_BATCHES = 3     # consecutive batches that cannot reach the database: circuit opens
_CIRCUIT_OPEN_SECS = 60.0    # batches dead-lettered untried, then one probes the database
_DETAIL_LENGTH = 2000
_REASON_LENGTH = 64
_MISSING = object()
# coercer('integer') (and 'bigint') gives a plain int within INTEGER_RANGE back
# as it is: _Target.coerce_state tests that without the call.
_INTEGER = coercer('integer')
DEFAULT_SHARDS = 16          # parallel writers per table


def sql_type(declared: str) -> sa.types.TypeEngine:
    """The SQLAlchemy type of a TableSpec column type: :func:`changeflow.sql.types.sqlalchemy_type`
    (MySQL/MariaDB get DECIMAL(65,30) for an unqualified decimal, DATETIME(6),
    LONGTEXT and LONGBLOB; SQLite keeps decimals exact). ValueError if unknown."""
    return sqlalchemy_type(declared)


def _mysql_type(declared: Optional[str]) -> bool:
    """Whether a declared column type is MySQL type text (``int unsigned``,
    ``enum('a','b')``, ``datetime(0)``) rather than one of changeflow's names:
    its values are coerced by that text, as MySQL stores them."""
    return declared is not None and not parse_type(declared).changeflow


def _declared_coercer(declared: str) -> Callable[[Any], Any]:
    coerce = coercer(declared)
    if parse_type(declared).kind == 'json':
        return functools.partial(_json_document, coerce)
    return coerce


# ---------------------------------------------------------------------------
# Coercion of values to column types: changeflow.sql.coercion, by declared type.

# First match wins: Boolean and Float before Integer and Numeric.
_DECLARED_TYPES = (
    (sa.Boolean, 'boolean'), (sa.Float, 'float'), (sa.Integer, 'integer'),
    (sa.Numeric, 'decimal'), (sa.DateTime, 'datetime'), (sa.Date, 'date'),
    (sa.JSON, 'json'), (sa.String, 'string'),
    ((sa.LargeBinary, sa.BINARY, sa.VARBINARY), 'binary'),
)


def _declared_type(type_: sa.types.TypeEngine) -> Optional[str]:
    """The config.COLUMN_TYPES type whose values a column of ``type_`` (declared
    by _sql_type, or reflected) holds; None for the types changeflow does not
    declare. A NUMERIC with a scale is decimal(p,s) (p 65, MySQL's largest,
    when only the scale is known), one without is an exact decimal."""
    declared = next((name for types, name in _DECLARED_TYPES if isinstance(type_, types)), None)
    if declared == 'decimal' and type_.scale is not None:
        declared = f'decimal({type_.precision or max(65, type_.scale)},{type_.scale})'
    return declared


def _coercer(type_: sa.types.TypeEngine) -> Callable[[Any], Any]:
    """Function making a value fit a column of ``type_``; raises BadValue.

    String columns check their length; JSON columns get the document as Python
    objects (the type serialises them). Types changeflow does not declare
    (TIME, UUID, arrays, ...) pass values through for the driver to convert.
    """
    declared = _declared_type(type_)
    if declared is None:
        return _unchanged
    if declared == 'string':
        return coercer(declared, length=getattr(type_, 'length', None))
    if declared == 'json':
        return functools.partial(_json_document, coercer(declared))
    return coercer(declared)


def _unchanged(value):
    return value


def _json_document(coerce: Callable[[Any], str], value):
    text = coerce(value)
    try:
        return json.loads(text)
    except RecursionError:  # nested deeper than Python's parser goes
        raise BadValue('JSON nested too deeply') from None


def _key_part(value):
    if type(value) is int or type(value) is str:  # most keys: as they are, checked first
        return value
    if isinstance(value, decimal.Decimal):
        return format(value.normalize(), 'f')
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode('ascii')
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# json.dumps with these options, without making an encoder per call.
_KEY_JSON = json.JSONEncoder(ensure_ascii=False, separators=(',', ':')).encode


def _row_key(values: Sequence[Any]) -> str:
    """Canonical text of a row's (coerced) key values, as the bookkeeping stores it."""
    if len(values) == 1 and type(values[0]) is int:  # the JSON of the most common key
        text = f'[{values[0]}]'
    else:
        text = _KEY_JSON([_key_part(v) for v in values])
    if len(text) <= _ROW_KEY_LENGTH:
        return text
    return 'sha256:' + hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()


def shards_of(change: Change, num_shards: int) -> Iterable[Tuple[Tuple[str, int], Change]]:
    """(table, shard) keyed copies of a Change: one, by a stable hash of its key
    values, so every change of one row goes to the same shard on every worker
    and run; a whole-table op (TRUNCATE, DIVERGE) goes to every shard of its
    table, so each shard applies it in version order with its own rows'
    changes (shard 0 reports it). A tuple, not a generator: most changes
    have one copy, and it is made once per change of a job."""
    table, key = change.table, change.key
    if not key:
        return tuple(((table, shard), change) for shard in range(num_shards))
    if type(key) is tuple:
        for value in key:
            kind = type(value)
            if kind is not int and (kind is not str or len(value) > _MEMO_TEXT):
                break
        else:  # int and short str values: the hash by the key itself, once per row
            hashes = _ROW_HASHES.get(table)
            if hashes is None:
                hashes = _ROW_HASHES[table] = {}
            row_hash = hashes.get(key)
            if row_hash is None:
                row_hash = hashes[key] = _row_hash(table, key)
                _remembered()
            return (((table, row_hash % num_shards), change),)
    return (((table, _row_hash(table, key) % num_shards), change),)


# table -> key (of int and str values only: (True,) equals (1,) but is another
# row's text) -> its hash; every table's forgotten at once when _MEMO_KEYS are
# kept, so a job's memory stays bounded whatever its number of rows.
_ROW_HASHES: Dict[str, Dict[tuple, int]] = {}
_MEMO_KEYS = 1 << 16
_MEMO_TEXT = 64  # longer str key values are hashed each time, not kept
_memo_kept = 0


def _remembered() -> None:
    global _memo_kept
    _memo_kept += 1
    if _memo_kept >= _MEMO_KEYS:
        _ROW_HASHES.clear()
        _memo_kept = 0


_JSON_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')  # text json.dumps writes as it is


@functools.lru_cache(maxsize=1024)
def _plain_table(table: str) -> bool:
    """``table`` as json.dumps writes it (checked once per table, not per change)."""
    return _JSON_PLAIN.fullmatch(table) is not None


def _shard_of(table: str, key: Sequence[Any], num_shards: int) -> int:
    """The shard of a row, from the canonical text of its key values: the
    same for the values a Change carries and for those read back from the
    replica, for the key types _ShardableKey accepts."""
    return _row_hash(table, key) % num_shards


def _row_hash(table: str, key: Sequence[Any]) -> int:
    """The 64-bit hash the shard of a row is taken from (see :func:`_shard_of`)."""
    parts = [str(value) if type(value) is int else str(_key_part(value)) for value in key]
    if _plain_table(table) and all(type(value) is int or _JSON_PLAIN.fullmatch(part)
                                   for value, part in zip(key, parts)):
        text = f'["{table}", ["' + '", "'.join(parts) + '"]]'  # as json.dumps writes it
    else:
        text = json.dumps([table, parts], ensure_ascii=False)
    digest = hashlib.blake2b(text.encode('utf-8', 'surrogatepass'), digest_size=8).digest()
    return int.from_bytes(digest, 'big')


# ---------------------------------------------------------------------------
# The replica: tables, bookkeeping, and how one batch is written.

class _Rejected(Exception):
    """A change the sink cannot apply; becomes a dead letter. ``index``: the
    position of the op that cannot be applied, among the ops tried."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.index = 0


class _Item(NamedTuple):
    """A buffered Change with the windowing it arrived in."""
    change: Change
    timestamp: Any
    window: Any
    reported: bool = True  # False for the copies of a whole-table op outside shard 0
    shard: int = 0


class _Outcome:
    """What writing some items did: applied and dead items, metric deltas.
    Merged into the batch's outcome only once its statements succeeded."""

    def __init__(self):
        self.applied: List[_Item] = []
        self.dead: List[Tuple[_Item, str, str]] = []
        self.counts: collections.Counter = collections.Counter()

    def merge(self, other: '_Outcome') -> None:
        self.applied.extend(other.applied)
        self.dead.extend(other.dead)
        self.counts.update(other.counts)

    @classmethod
    def all_dead(cls, items: Iterable[_Item], reason: str, detail: str) -> '_Outcome':
        outcome = cls()
        outcome.dead = [(item, reason, detail) for item in items]
        return outcome


class _Target:
    """One replica table: its SQLAlchemy Table, a coercer per column, and its
    statements, compiled once per dialect."""

    def __init__(self, spec: TableSpec, table: sa.Table):
        missing = [k for k in spec.key if k not in table.c]
        if missing:
            raise ValueError(f'key column(s) {missing} of {spec.source!r} are not columns '
                             f'of replica table {spec.target!r}')
        self.spec = spec
        self.name = spec.target
        self.table = table
        self.key_columns = [table.c[k] for k in spec.key]
        self.column_names = [c.name for c in table.columns]
        self._positions = {name: i for i, name in enumerate(self.column_names)}
        declared = dict(spec.columns)
        self.coercers = {c.name: (_declared_coercer(declared[c.name]) if _mysql_type(
            declared.get(c.name)) else _coercer(c.type), declared.get(c.name) or repr(c.type))
            for c in table.columns}
        self._coerce_functions = {column: entry[0] for column, entry in self.coercers.items()}
        self._key_coercers = [(k, self.coercers[k][0]) for k in spec.key]
        self._key_column = spec.key[0] if len(spec.key) == 1 else None
        self.redacted = frozenset(column.lower() for column in spec.redact)
        self.statements = _Statements()

    def coerce(self, column: str, value):
        if column not in self.coercers:
            raise _Rejected('unknown-column',
                            f'{column!r} is not a column of {self.name!r}')
        if value is None:
            return None
        coerce, _ = self.coercers[column]
        try:
            return coerce(value)
        except BadValue as exc:
            raise self._bad_value(column, value, exc) from None

    def _bad_value(self, column: str, value, exc: BadValue) -> _Rejected:
        shown = '<redacted>' if column.lower() in self.redacted else repr(value)
        return _Rejected('bad-value', f'column {column!r} of {self.name!r} '
                                      f'({self.coercers[column][1]}): {shown}: {exc}')

    def coerce_key(self, key: Tuple[Any, ...]) -> Tuple[Any, ...]:
        if len(key) == len(self._key_coercers) and None not in key:
            try:
                if self._key_column is not None:  # one key column, the common key
                    return (self._key_coercers[0][1](key[0]),)
                return tuple([coerce(value) for (_, coerce), value in zip(self._key_coercers, key)])
            except BadValue:
                pass  # the loop below names the column
        return self._coerce_key(key)

    def _coerce_key(self, key: Tuple[Any, ...]) -> Tuple[Any, ...]:
        if len(key) != len(self._key_coercers):
            raise _Rejected('bad-change', f'key {len(key)} values long; {self.name!r} '
                                          f'has key columns {list(self.spec.key)}')
        values, null = [], False
        for (column, coerce), value in zip(self._key_coercers, key):
            if value is None:
                null = True
            else:
                try:
                    value = coerce(value)
                except BadValue as exc:
                    raise self._bad_value(column, value, exc) from None
            values.append(value)
        if null:
            raise _Rejected('bad-value', f'NULL in the key of {self.name!r}')
        return tuple(values)

    def coerce_state(self, state: RowState, key: Tuple[Any, ...],
                     previous: RowState) -> RowState:
        """``state`` with the values an op set coerced (those it kept from
        ``previous``, already coerced or read from the table, stay as they
        are); a key column may not change. An op that changed the row made
        its values afresh (rowstate.apply_op), so they are coerced in place."""
        values, kept = state.values, previous.values
        if values is not kept:
            coercers = self._coerce_functions
            for column, value in values.items():
                if kept.get(column, _MISSING) is value:
                    continue
                coerce = coercers.get(column)
                if coerce is _INTEGER and type(value) is int and (
                        INTEGER_RANGE[0] <= value <= INTEGER_RANGE[1]):
                    continue  # what the coercer returns: the int itself
                if coerce is None or value is None:
                    coerced = self.coerce(column, value)
                else:
                    try:
                        coerced = coerce(value)
                    except BadValue as exc:
                        raise self._bad_value(column, value, exc) from None
                if coerced is not value:
                    values[column] = coerced  # an existing key: iterating stays valid
        if self._key_column is not None:  # one key column, the common key: no loop
            value = values.get(self._key_column, _MISSING)
            if value is not _MISSING and value != key[0]:
                raise self._key_changed(self._key_column)
        else:
            for column, expected in zip(self.spec.key, key):
                if column in values and values[column] != expected:
                    raise self._key_changed(column)
        return state

    def column_order(self, name: str) -> Tuple[int, str]:
        """Sort key of the table's column order: the order an INSERT's VALUES
        and an UPDATE's SET render columns in, so their parameters need no
        reordering."""
        return self._positions.get(name, len(self._positions)), name

    def _key_changed(self, column: str) -> _Rejected:
        return _Rejected('key-changed', f'the op sets key column {column!r} of '
                                        f'{self.name!r}; key updates are not replicated')

    def delete_statement(self, conn) -> '_Compiled':
        """DELETE of one row by key: parameters (key values)."""
        return self.statements.get(conn, ('delete',), lambda: self.table.delete().where(
            _by_key(self.key_columns, _binds([c.type for c in self.key_columns]))))

    def insert_statement(self, conn, columns: Tuple[str, ...]) -> '_Compiled':
        """INSERT of ``columns``: parameters (their values)."""
        table = self.table
        return self.statements.get(conn, ('insert', columns), lambda: table.insert().values(
            dict(zip([table.c[c] for c in columns], _binds([table.c[c].type for c in columns])))))

    def update_statement(self, conn, columns: Tuple[str, ...]) -> '_Compiled':
        """UPDATE of ``columns`` of one row by key: parameters (their values, key values)."""
        table, keys = self.table, self.key_columns

        def build():
            binds = _binds([table.c[c].type for c in columns] + [c.type for c in keys])
            return table.update().where(_by_key(keys, binds[len(columns):])).values(
                dict(zip([table.c[c] for c in columns], binds)))
        return self.statements.get(conn, ('update', columns), build)

    def select_statement(self, conn, count: int) -> '_Compiled':
        """SELECT of whole rows by key: parameters (the key values of ``count``
        rows, one after the other)."""
        table, keys = self.table, self.key_columns

        def build():
            binds = _binds([c.type for _ in range(count) for c in keys])
            if len(keys) == 1:
                return sa.select(table).where(keys[0].in_(binds))
            rows = [binds[i:i + len(keys)] for i in range(0, len(binds), len(keys))]
            if conn.dialect.tuple_in_values:  # SQLite: no (a, b) IN ((..), ..)
                return sa.select(table).where(sa.or_(*(_by_key(keys, row) for row in rows)))
            return sa.select(table).where(sa.tuple_(*keys).in_([sa.tuple_(*row) for row in rows]))
        return self.statements.get(conn, ('select', count), build)


class _Plan:
    """Row writes of one table, executed batched: DELETEs, INSERTs grouped by
    column set, UPDATEs grouped by the set of changed columns."""

    def __init__(self, target: _Target):
        self.target = target
        self._key_names = target.spec.key
        self._key_column = target._key_column
        self.deletes: List[Tuple[Any, ...]] = []
        self.inserts: List[Dict[str, Any]] = []
        self.updates: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []
        self.rows_deleted = 0

    def add(self, key: Tuple[Any, ...], base: RowState, state: RowState) -> None:
        """Make the row ``key`` go from ``base`` (as read) to ``state``."""
        if not state.exists:
            if base.exists:
                self.deletes.append(key)
                self.rows_deleted += 1
        elif state.replaced:
            # Exactly ``values``, other columns at their defaults: DELETE + INSERT.
            if base.exists:
                self.deletes.append(key)
            row = dict(state.values)
            if self._key_column is not None:  # one key column: no zip
                row[self._key_column] = key[0]
            else:
                row.update(zip(self._key_names, key))
            self.inserts.append(row)
        else:
            stored = base.values
            changed = {c: v for c, v in state.values.items()
                       if c not in stored or stored[c] != v}
            if changed:
                self.updates.append((key, changed))

    @property
    def rows_upserted(self) -> int:
        return len(self.inserts) + len(self.updates)

    def execute(self, conn: sa.Connection) -> None:
        target = self.target
        if self.deletes:
            target.delete_statement(conn).execute(conn, self.deletes)
        for columns, rows in _by_columns(self.inserts, _itself, target.column_order).items():
            target.insert_statement(conn, columns).execute(
                conn, list(map(_values_of(columns), rows)))
        for columns, updates in _by_columns(self.updates, _changed_columns,
                                            target.column_order).items():
            values_of = _values_of(columns)
            target.update_statement(conn, columns).execute(
                conn, [values_of(changed) + key for key, changed in updates])


def _itself(value):
    return value


def _changed_columns(update):
    return update[1]


def _by_columns(values, columns_of, order) -> Dict[Tuple[str, ...], list]:
    """``values`` grouped by the names of the columns they set, sorted by
    ``order`` (a key function), in order of first appearance."""
    groups: Dict[Tuple[str, ...], list] = {}
    names: Dict[Tuple[str, ...], Tuple[str, ...]] = {}  # as set -> sorted
    for value in values:
        columns = tuple(columns_of(value))
        group = names.get(columns)
        if group is None:
            group = names[columns] = tuple(sorted(columns, key=order))
            groups.setdefault(group, [])
        groups[group].append(value)
    return groups


@functools.lru_cache(maxsize=_MAX_STATEMENTS)
def _values_of(columns: Tuple[Any, ...]) -> Callable[[Any], Tuple[Any, ...]]:
    """Function giving the tuple of a row's values of ``columns`` (names of
    a dict's, positions of a tuple's): an itemgetter, which gives a bare
    value for one column."""
    get = operator.itemgetter(*columns)
    if len(columns) == 1:
        return lambda row: (get(row),)
    return get


class _Compiled:
    """A statement compiled once for a dialect, executed with plain tuples of
    values in the order of its bind parameters p0, p1, ...: each value goes
    through the bind processor SQLAlchemy would apply and the driver gets the
    text SQLAlchemy would send, without building a construct and a parameter
    dictionary per row (executing a construct costs several times the
    driver's executemany). An INSERT on a dialect that batches INSERTs into
    multi-row statements itself (insertmanyvalues: psycopg2) goes through
    SQLAlchemy, with the same parameters."""

    def __init__(self, statement, dialect):
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self._names = [f'p{i}' for i in range(len(compiled.binds))]
        if set(self._names) != set(compiled.binds):
            raise AssertionError(f'parameters other than p0, p1, ...: {sorted(compiled.binds)}')
        processors = [compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                      for name in self._names]
        self._processors = [(i, p) for i, p in enumerate(processors) if p is not None]
        self._order = None  # positional parameters in another order than p0, p1, ...
        if dialect.positional:
            order = [int(name[1:]) for name in compiled.positiontup]
            if order != list(range(len(self._names))):
                self._order = order
        self._statement = statement if (isinstance(statement, sa.Insert) and getattr(
            dialect, 'use_insertmanyvalues_wo_returning', False)) else None
        self._dialect = dialect
        self._columns = (list(statement.selected_columns)
                         if isinstance(statement, sa.Select) else [])
        self._results: Dict[tuple, list] = {}  # result processors by column type codes

    def _parameters(self, rows):
        """The driver's parameters of ``rows``: tuples for a positional
        paramstyle, dictionaries for a named one. Bind processors run column
        by column (a transposition, not a list per row)."""
        try:
            transposed = bool(self._processors and rows)
            if transposed:
                columns = list(zip(*rows))
                for i, process in self._processors:
                    columns[i] = map(process, columns[i])
                rows = zip(*columns)
            if not self._dialect.positional:
                names = self._names
                return [dict(zip(names, row)) for row in rows]
            order = self._order
            if order is not None:
                return [tuple([row[i] for i in order]) for row in rows]
            return list(rows) if transposed else list(map(tuple, rows))  # zip gave tuples
        except Exception as exc:  # a value the type rejects: as SQLAlchemy reports it
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> sa_exc.DBAPIError:
        return sa_exc.DBAPIError.instance(
            self.sql, None, exc, self._dialect.loaded_dbapi.Error,
            hide_parameters=True, dialect=self._dialect)

    def execute(self, conn: sa.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Executes the statement once per row of ``rows`` (executemany)."""
        if not rows:
            return
        if self._statement is not None:
            conn.execute(self._statement, [dict(zip(self._names, row)) for row in rows])
            return
        parameters = self._parameters(rows)
        conn.exec_driver_sql(self.sql, parameters if len(parameters) > 1 else parameters[0])

    def fetch(self, conn: sa.Connection, values: Sequence[Any]) -> List[Sequence[Any]]:
        """The rows a SELECT returns for ``values``, through the result
        processors of its columns' types."""
        result = conn.exec_driver_sql(self.sql, self._parameters([values])[0])
        codes = tuple(column[1] for column in result.cursor.description)
        processors = self._results.get(codes)
        if processors is None:
            processors = self._results[codes] = [
                (i, p) for i, p in enumerate(
                    c.type.dialect_impl(self._dialect).result_processor(self._dialect, code)
                    for c, code in zip(self._columns, codes)) if p is not None]
        try:  # the driver's tuples: a Row per row cost more than the query
            rows = result.cursor.fetchall()
        except Exception as exc:
            raise self._error(exc) from exc
        finally:
            result.close()
        if not processors or not rows:
            return rows
        columns = list(zip(*rows))
        for i, process in processors:
            columns[i] = map(process, columns[i])
        return list(zip(*columns))


class _Statements:
    """Compiled statements by dialect and shape, each built on first use; the
    oldest is dropped past _MAX_STATEMENTS (the sets of columns an UPDATE
    changes are as many as the data makes)."""

    def __init__(self):
        self._compiled: Dict[Tuple[Any, ...], _Compiled] = {}

    def get(self, conn: sa.Connection, shape: Tuple[Any, ...], build) -> _Compiled:
        key = (conn.dialect, *shape)
        compiled = self._compiled.get(key)
        if compiled is None:
            if len(self._compiled) >= _MAX_STATEMENTS:
                del self._compiled[next(iter(self._compiled))]
            compiled = self._compiled[key] = _Compiled(build(), conn.dialect)
        return compiled


def _binds(types) -> List[sa.BindParameter]:
    return [sa.bindparam(f'p{i}', type_=type_) for i, type_ in enumerate(types)]


def _select_size(count: int) -> int:
    """The number of keys a chunk of ``count`` is padded to (repeating the
    last), so that few IN lists of different lengths are compiled."""
    size = 1
    while size < count:
        size *= 2
    return min(size, _KEYS_PER_SELECT)


def _padded(values: Sequence, size: int) -> list:
    return list(values) + [values[-1]] * (size - len(values))


def _by_key(columns, binds) -> sa.ColumnElement:
    """WHERE clause matching one row by key, the values bound to ``binds``."""
    return sa.and_(*(c == b for c, b in zip(columns, binds)))


def _grouped(values, key_of) -> Dict[Any, list]:
    groups = collections.defaultdict(list)
    for value in values:
        groups[key_of(value)].append(value)
    return groups


def _chunks(values: Sequence, size: int = _KEYS_PER_SELECT):
    for start in range(0, len(values), size):
        yield values[start:start + size]


def bookkeeping_tables(metadata: sa.MetaData, prefix: str
                        ) -> Tuple[sa.Table, sa.Table, sa.Table]:
    # Binary collations: row keys compare exactly and versions bytewise everywhere.
    def text(length):
        return sa.String(length).with_variant(sa.String(length, collation='C'), 'postgresql')
    options = dict(mysql_charset='utf8mb4', mysql_collate='utf8mb4_bin')
    rows = sa.Table(
        f'{prefix}row_versions', metadata,
        sa.Column('table_name', text(_TABLE_NAME_LENGTH), primary_key=True),
        sa.Column('row_key', text(_ROW_KEY_LENGTH), primary_key=True),
        sa.Column('version', text(_VERSION_LENGTH), nullable=False),
        sa.Column('deleted', sa.Boolean(), nullable=False),
        **options)
    tables = sa.Table(
        f'{prefix}table_versions', metadata,
        sa.Column('table_name', text(_TABLE_NAME_LENGTH), primary_key=True),
        sa.Column('truncated_version', text(_VERSION_LENGTH), nullable=False),
        **options)
    diverged = sa.Table(
        f'{prefix}diverged', metadata,
        sa.Column('table_name', text(_TABLE_NAME_LENGTH), primary_key=True),
        sa.Column('row_key', text(_ROW_KEY_LENGTH), primary_key=True),  # '': the whole table
        sa.Column('version', text(_VERSION_LENGTH), nullable=False),
        sa.Column('reason', sa.String(_REASON_LENGTH), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        **options)
    return rows, tables, diverged


def schema_table(metadata: sa.MetaData, prefix: str) -> sa.Table:
    """``changeflow_schema(source, spec, position)``: the specs of a replica
    that follows the source's DDL (:mod:`changeflow.io.replica_schema`), one
    row per source table (``spec`` '' once dropped), and under source '' the
    position of the last DDL step applied."""
    return sa.Table(
        f'{prefix}schema', metadata,
        sa.Column('source', sa.String(_TABLE_NAME_LENGTH), primary_key=True),
        sa.Column('spec', sa.Text(), nullable=False),
        sa.Column('position', sa.String(_VERSION_LENGTH), nullable=False),
        mysql_charset='utf8mb4', mysql_collate='utf8mb4_bin')


def spec_json(spec: TableSpec) -> str:
    """What the sink needs of a spec, as JSON (the source schema is not kept)."""
    return json.dumps({'source': spec.source, 'key': spec.key, 'target': spec.target,
                       'columns': spec.columns, 'redact': spec.redact,
                       'defaults': spec.defaults}, sort_keys=True)


def _spec_of_json(text: str) -> TableSpec:
    raw = json.loads(text)
    return TableSpec(raw['source'], tuple(raw['key']), raw['target'],
                     tuple(map(tuple, raw['columns'])), tuple(raw['redact']),
                     tuple(map(tuple, raw['defaults'])))


def read_followed_specs(conn: sa.Connection, prefix: str
                        ) -> Optional[Tuple[Tuple[TableSpec, ...], Tuple[str, ...]]]:
    """(specs, dropped sources) the replica follows, or None when it does not
    follow DDL (no ``changeflow_schema`` rows)."""
    table = schema_table(sa.MetaData(), prefix)
    if not sa.inspect(conn).has_table(table.name):
        return None
    rows = [(source, spec) for source, spec in conn.execute(
        sa.select(table.c.source, table.c.spec)) if source]
    if not rows:
        return None
    return (tuple(_spec_of_json(spec) for _, spec in rows if spec),
            tuple(source for source, spec in rows if not spec))


def _split_target(target: str) -> Tuple[Optional[str], str]:
    schema, _, name = target.rpartition('.')
    return schema or None, name


def replica_table(spec: TableSpec, metadata: sa.MetaData) -> sa.Table:
    """The replica table of a spec with declared columns, as the sink creates it."""
    schema, name = _split_target(spec.target)
    defaults = dict(spec.defaults)
    return sa.Table(
        name, metadata,
        *(sa.Column(c, sql_type(t), primary_key=c in spec.key,
                    autoincrement=False,  # the source assigns keys
                    server_default=defaults.get(c))
          for c, t in spec.columns),
        schema=schema, mysql_charset='utf8mb4')


def _upsert(conn: sa.Connection, statements: _Statements, table: sa.Table,
            columns: Tuple[str, ...], rows: List[Tuple[Any, ...]], update: Sequence[str]) -> None:
    """Insert ``rows``, tuples of the values of ``columns`` (executemany); on a
    primary-key conflict overwrite the ``update`` columns, or keep the stored
    row when ``update`` is empty."""
    if not rows:
        return
    key = [c.name for c in table.primary_key]
    dialect = conn.dialect.name

    def values(names):
        return dict(zip([table.c[c] for c in names], _binds([table.c[c].type for c in names])))

    def build():
        if dialect in ('sqlite', 'postgresql'):
            insert = (sqlite.insert if dialect == 'sqlite' else postgresql.insert)(table).values(
                values(columns))
            return (insert.on_conflict_do_update(
                index_elements=key, set_={c: insert.excluded[c] for c in update})
                if update else insert.on_conflict_do_nothing(index_elements=key))
        insert = mysql.insert(table).values(values(columns))
        return insert.on_duplicate_key_update(
            {c: insert.inserted[c] for c in (update or key[:1])})
    if dialect in ('sqlite', 'postgresql', 'mysql', 'mariadb'):
        statements.get(conn, ('upsert', table, columns, tuple(update)), build).execute(conn, rows)
        return
    # Generic: in this transaction, remove the stored rows (or the new
    # ones, to keep the stored), then insert.
    at = [columns.index(k) for k in key]
    if update:
        statements.get(conn, ('delete', table), lambda: table.delete().where(_by_key(
            [table.c[k] for k in key], _binds([table.c[k].type for k in key])))).execute(
            conn, [tuple([row[i] for i in at]) for row in rows])
    else:
        stored = {tuple(r) for r in conn.execute(sa.select(*table.primary_key.columns))}
        rows = [row for row in rows if tuple([row[i] for i in at]) not in stored]
        if not rows:
            return
    statements.get(conn, ('insert', table, columns), lambda: table.insert().values(
        values(columns))).execute(conn, rows)


class _Replica:
    """The replica tables of one database and the transactional write of a batch."""

    def __init__(self, specs: Sequence[TableSpec], bookkeeping_prefix: str,
                 num_shards: int = 1):
        self._specs = {spec.source: spec for spec in specs}
        self._prefix = bookkeeping_prefix
        self._num_shards = num_shards
        self.targets: Dict[str, _Target] = {}
        self.dropped: Tuple[str, ...] = ()  # sources the followed DDL dropped
        self.prepared = False
        self._statements = _Statements()  # of the bookkeeping tables

    def prepare(self, engine: sa.Engine) -> None:
        """Create declared and bookkeeping tables, reflect the others.

        Raises ValueError when a table without declared columns does not exist.
        """
        metadata = sa.MetaData()
        self._rows, self._tables, self._diverged = bookkeeping_tables(metadata, self._prefix)
        created = [self._rows, self._tables, self._diverged]
        targets = {}
        with engine.begin() as conn:
            followed = read_followed_specs(conn, self._prefix)
            if followed is not None:  # the replica follows the source's DDL: its specs
                specs, self.dropped = followed
                self._specs = {spec.source: spec for spec in specs}
            for spec in self._specs.values():
                schema, name = _split_target(spec.target)
                if spec.columns:
                    table = replica_table(spec, metadata)
                    created.append(table)
                else:
                    try:
                        table = sa.Table(name, metadata, schema=schema or None,
                                         autoload_with=conn)
                    except sa_exc.NoSuchTableError:
                        raise ValueError(
                            f'replica table {spec.target!r} (for {spec.source!r}) does not exist '
                            f'in {engine.url.render_as_string(hide_password=True)}: create it, '
                            f'or declare its columns in the table spec') from None
                targets[spec.source] = _Target(spec, table)
            metadata.create_all(conn, tables=created, checkfirst=True)
        with engine.begin() as conn:
            _upsert(conn, self._statements, self._tables, _MARKER_COLUMNS,
                    [(t.name, '') for t in targets.values()], update=())
        self.targets = targets
        self.prepared = True

    def write(self, conn: sa.Connection, items: Sequence[_Item], isolate: bool) -> _Outcome:
        """Apply ``items`` in the transaction of ``conn``.

        With ``isolate``, each change runs in its own SAVEPOINT and a change
        the database rejects is dead-lettered alone ('database-rejected').
        The collector is paused: a batch allocates dicts and tuples by the
        hundred thousand, none in a cycle, and each of its collections would
        scan everything the worker holds.
        """
        with gc_paused():
            return self._write_items(conn, items, isolate)

    def _write_items(self, conn: sa.Connection, items: Sequence[_Item], isolate: bool) -> _Outcome:
        outcome = _Outcome()
        keyed: Dict[str, List[_Item]] = {}  # every table's, in order of first appearance
        whole = []
        for item in items:
            change = item.change
            group = keyed.get(change.table)
            if group is None:
                group = keyed[change.table] = []
            (group if change.key else whole).append(item)
        names = sorted({self.targets[table].name for table in keyed})
        truncating = {self.targets[i.change.table].name for i in whole}
        # Share-lock each table's truncate marker (exclusive when this batch
        # truncates the table), always in name order: keyed writers of one
        # table run concurrently, a TRUNCATE waits for them and they for it.
        truncated = {name: self._lock_table(conn, name, exclusive=name in truncating)
                     for name in names}
        whole.sort(key=lambda i: i.change.version)
        for item in whole:  # before the keyed changes: they see the new marker
            outcome.merge(self._guarded(conn, isolate, [item], self._table_ops, truncated))
        for table in sorted(keyed):
            if not keyed[table]:
                continue
            target = self.targets[table]
            batches = [[item] for item in keyed[table]] if isolate else [keyed[table]]
            for batch in batches:
                outcome.merge(self._guarded(conn, isolate, batch, self._write_rows,
                                            target, truncated[target.name]))
        return outcome

    def _guarded(self, conn, isolate, items, write, *args) -> _Outcome:
        if not isolate:
            return write(conn, items, *args)
        savepoint = conn.begin_nested()
        try:
            outcome = write(conn, items, *args)
        except _REJECTED as exc:
            savepoint.rollback()
            outcome = _Outcome.all_dead(items, 'database-rejected', _describe(exc))
            self._mark_dead(conn, outcome)
            return outcome
        savepoint.commit()
        return outcome

    def _lock_table(self, conn, name: str, exclusive: bool) -> str:
        tables = self._tables
        select = self._statements.get(conn, ('lock', exclusive), lambda: sa.select(
            tables.c.truncated_version).where(tables.c.table_name == _binds(
                [tables.c.table_name.type])[0]).with_for_update(read=not exclusive))
        rows = select.fetch(conn, (name,))
        version = rows[0][0] if rows else None
        if version is None:  # the marker row was removed since setup
            _upsert(conn, self._statements, self._tables, _MARKER_COLUMNS, [(name, '')], ())
            version = ''
        return version

    def _table_ops(self, conn, items: List[_Item], truncated: Dict[str, str]) -> _Outcome:
        """Whole-table ops newer than the table's last TRUNCATE, in order: a
        DIVERGE marks the table diverged; a TRUNCATE deletes the rows whose
        stored version is older than it (rows written after it survive), and
        their marks and the table's older ones (the rows are gone at the
        source too), and is recorded as the table's marker."""
        outcome = _Outcome()
        for item in items:
            target = self.targets[item.change.table]
            ops = item.change.ops
            if any(op.kind not in _TABLE_KINDS for op in ops):
                outcome.dead.append((item, 'bad-change', 'a change without a key must be a '
                                     'TRUNCATE, DIVERGE, UPDATE or DELETE'))
                continue
            refused = []
            for index, op in enumerate(ops):
                if op.version <= truncated[target.name]:
                    outcome.counts['ops_skipped_stale'] += 1
                elif op.kind == OpKind.DIVERGE:
                    self._record_marks(conn, [_diverged_row(target, '', op.version,
                                                            *divergence(op))], outcome.counts)
                elif op.kind == OpKind.TRUNCATE:
                    outcome.counts['rows_deleted'] += self._truncate(conn, target, op.version)
                    truncated[target.name] = op.version
                else:
                    refusal = self._table_write(conn, target, op, item, outcome)
                    if refusal is not None:
                        # Not applied here: the table is stale from this op on.
                        self._record_marks(conn, [_diverged_row(
                            target, '', op.version, 'needs-lookup', refusal[0])], outcome.counts)
                        refused.append((index, *refusal))
            if refused:
                # Every refusing shard says so (its rows are stale), each naming
                # itself; a refusal every shard makes alike is reported once.
                index, why, alike = refused[0]
                if item.reported or not alike:
                    outcome.dead.append((_with_ops(item, ops[index:]), 'needs-lookup', why))
                if index:
                    outcome.applied.append(_with_ops(item, ops[:index]))
            else:
                outcome.applied.append(item)
        return outcome

    def _table_write(self, conn, target: _Target, op, item: _Item, outcome: _Outcome
                     ) -> Optional[Tuple[str, bool]]:
        """An UPDATE or DELETE of the rows its condition holds for (all rows
        when None), applied to this shard's rows of the replica whose stored
        version is older than it (newer ones had it applied in their own
        Change). None when done; (why not, whether every shard refuses
        alike) when it cannot be: the table (or one of this shard's rows) is
        marked diverged, so the replica's rows are not known to be the
        source's, or the key type does not shard the same read back."""
        shard, shards = item.shard, self._num_shards
        where = f'{op.kind.value.upper()} of rows the WHERE does not name'
        if not _shardable(target):
            return (f'{where}: the key type of {target.name!r} does not read back as '
                    f'written, so its rows cannot be split among the shards'), True
        diverged = self._diverged
        marked = conn.scalars(sa.select(diverged.c.row_key).where(
            diverged.c.table_name == target.name, diverged.c.version < op.version)).all()

        def in_shard(row_key):  # the table's mark, or one of this shard's rows'
            return not row_key or row_key.startswith('sha256:') or _shard_of(
                item.change.table, json.loads(row_key), shards) == shard
        if any(in_shard(row_key) for row_key in marked):
            return (f'{where}: {target.name!r} is marked diverged, or rows of it (shard '
                    f'{shard} of {shards}) it may or may not hit at the source'), False
        rows = {}
        for row in conn.execute(sa.select(target.table)).mappings():
            key = tuple(row[c.name] for c in target.key_columns)
            if _shard_of(item.change.table, key, shards) == shard:
                rows[_row_key(key)] = (key, dict(row))
        stored = self._stored_versions(conn, target, list(rows))
        plan, versions, marks = _Plan(target), [], []
        for row_key, (key, values) in rows.items():
            if stored.get(row_key, '') >= op.version:
                continue
            base = RowState(True, values, False)
            try:
                _, state, _, rejection = self._apply_prefix(conn, target, key, base, [op])
            except _Rejected as exc:  # pragma: no cover - _apply_prefix reports it
                rejection = exc
            if rejection is not None:
                marks.append(_diverged_row(target, row_key, op.version, rejection.reason,
                                           rejection.detail))
                outcome.dead.append((_with_ops(item._replace(change=item.change._replace(
                    key=key)), [op]), rejection.reason, rejection.detail))
                continue
            if state != base:
                plan.add(key, base, state)
                versions.append((target.name, row_key, op.version, not state.exists))
        self._commit_plan(conn, plan, versions, marks, outcome.counts)
        return None

    def _commit_plan(self, conn, plan: _Plan, versions, marks, counts) -> None:
        """Executes ``plan`` and records, in the same transaction, the rows'
        versions and the marks its changes left."""
        plan.execute(conn)
        _upsert(conn, self._statements, self._rows, _VERSION_COLUMNS, versions,
                update=('version', 'deleted'))
        self._record_marks(conn, marks, counts)
        counts['rows_upserted'] += plan.rows_upserted
        counts['rows_deleted'] += plan.rows_deleted

    def _truncate(self, conn, target: _Target, version: str) -> int:
        """TRUNCATE at ``version``; returns the number of rows deleted."""
        rows = self._rows
        of_table = rows.c.table_name == target.name
        survivors = set(conn.scalars(sa.select(rows.c.row_key)
                                     .where(of_table, rows.c.version > version)))
        if survivors:
            doomed = [tuple(r) for r in conn.execute(sa.select(*target.key_columns))
                      if _row_key(tuple(r)) not in survivors]
            plan = _Plan(target)
            for key in doomed:
                plan.add(key, RowState(True, {}, False), ABSENT)
            plan.execute(conn)
            deleted = len(doomed)
        else:
            deleted = conn.execute(target.table.delete()).rowcount
        # Older marks go with their rows (a row written after the TRUNCATE
        # keeps its mark) and the table's own, but a schema the replica did
        # not follow (schema-change): emptying the rows does not mend that.
        diverged = self._diverged
        conn.execute(diverged.delete().where(
            diverged.c.table_name == target.name, diverged.c.version < version,
            diverged.c.row_key.not_in(sa.select(rows.c.row_key).where(
                of_table, rows.c.version > version)),
            sa.not_(sa.and_(diverged.c.row_key == '', diverged.c.reason == 'schema-change'))))
        conn.execute(rows.delete().where(of_table, rows.c.version < version))
        _upsert(conn, self._statements, self._tables, _MARKER_COLUMNS, [(target.name, version)],
                update=('truncated_version',))
        return max(deleted, 0)

    def _write_rows(self, conn, items: List[_Item], target: _Target,
                    truncated_version: str) -> _Outcome:
        """Apply keyed changes of one table; a second change of one row (from
        another window) waits for the next round."""
        outcome = _Outcome()
        pending = sorted(items, key=_first_version)
        while pending:
            rows, pending = self._distinct_rows(conn, target, pending, outcome)
            if rows:
                outcome.merge(self._write_round(conn, target, rows, truncated_version))
        return outcome

    def _distinct_rows(self, conn, target, items, outcome):
        """((item, key, row_key) of the first change of each row, the later
        changes). A change whose key cannot be coerced is dead-lettered and,
        its row being unnamed in the replica, marks the table diverged."""
        rows, seen, later = [], set(), []
        for item in items:
            try:
                key = target.coerce_key(item.change.key)
            except _Rejected as exc:
                outcome.dead.append((item, exc.reason, exc.detail))
                self._record_marks(conn, [_diverged_row(
                    target, '', item.change.first_version, exc.reason, exc.detail)], outcome.counts)
                continue
            row_key = _row_key(key)
            if row_key in seen:
                later.append(item)
            else:
                seen.add(row_key)
                rows.append((item, key, row_key))
        return rows, later

    def _write_round(self, conn, target: _Target, rows, truncated_version: str) -> _Outcome:
        outcome = _Outcome()
        stored = self._stored_versions(conn, target, [row_key for _, _, row_key in rows])
        newer_ops, stale_ops, to_read = [], 0, []
        for item, key, row_key in rows:
            ops = item.change.ops
            guard = stored.get(row_key, '')
            if guard < truncated_version:
                guard = truncated_version
            newer = [op for op in ops if op.version > guard]
            stale_ops += len(ops) - len(newer)
            newer_ops.append((item, key, row_key, newer))
            if newer:
                to_read.append(key)
        outcome.counts['ops_skipped_stale'] += stale_ops
        # Only the rows with ops to apply are read.
        current = self._current_rows(conn, target, to_read)
        plan = _Plan(target)
        versions, marks, applied_items, name = [], [], outcome.applied, target.name
        for item, key, row_key, newer in newer_ops:
            if not newer:
                applied_items.append(item)
                continue
            row = current.get(row_key)
            base = ABSENT if row is None else _row_state((True, row, False))
            base, state, applied, rejection = self._apply_prefix(conn, target, key, base, newer)
            for op in applied:
                if op.kind == _DIVERGE:
                    marks.append(_diverged_row(target, row_key, op.version, *divergence(op)))
            if applied:
                plan.add(key, base, state)
                versions.append((name, row_key, applied[-1].version, not state.exists))
                if rejection is None:
                    applied_items.append(item)
                else:
                    ops = item.change.ops
                    outcome.applied.append(_with_ops(
                        item, ops[:len(ops) - len(newer) + len(applied)]))
            if rejection is not None:
                # The row keeps the ops before the bad one, and is marked stale.
                bad = newer[len(applied)]
                marks.append(_diverged_row(target, row_key, bad.version, rejection.reason,
                                           rejection.detail))
                outcome.dead.append((_with_ops(item, newer[len(applied):]), rejection.reason,
                                     rejection.detail))
        self._commit_plan(conn, plan, versions, marks, outcome.counts)
        return outcome

    def _apply_prefix(self, conn, target: _Target, key, base: RowState, ops):
        """(row as stored before the final write, state, the ops applied, the
        rejection of the first op that cannot be, or None): as many of ``ops``
        as apply, in order."""
        try:
            base, state = self._apply(conn, target, key, base, ops)
            return base, state, ops, None
        except _Rejected as exc:
            rejection = exc
        applied = ops[:rejection.index]
        if applied:
            base, state = self._apply(conn, target, key, base, applied)
        else:
            state = base
        return base, state, applied, rejection

    def _record_marks(self, conn, marks: List[Dict[str, str]], counts) -> None:
        """Record ``marks`` (rows or tables diverged) where newer than the
        stored mark, so a replay changes nothing; count those in ``counts``.
        A table's schema-change mark is kept under newer marks of other
        reasons: only it says that a TRUNCATE does not mend the table."""
        newest: Dict[Tuple[str, str], Dict[str, str]] = {}
        for mark in marks:
            seen = newest.get((mark['table_name'], mark['row_key']))
            if seen is None or _replaces(mark, seen['version'], seen['reason']):
                newest[(mark['table_name'], mark['row_key'])] = mark
        if not newest:
            return
        diverged, stored = self._diverged, {}
        for table_name, group in _grouped(newest, lambda k: k[0]).items():
            for chunk in _chunks([row_key for _, row_key in group]):
                stored.update(((table_name, k), (v, reason)) for k, v, reason in conn.execute(
                    sa.select(diverged.c.row_key, diverged.c.version, diverged.c.reason).where(
                        diverged.c.table_name == table_name, diverged.c.row_key.in_(chunk))))
        fresh = [mark for k, mark in newest.items() if _replaces(mark, *stored.get(k, ('', '')))]
        _upsert(conn, self._statements, diverged, _MARK_COLUMNS,
                [tuple([mark[c] for c in _MARK_COLUMNS]) for mark in fresh],
                update=('version', 'reason', 'detail'))
        for mark in fresh:
            counts['rows_marked_diverged' if mark['row_key'] else 'tables_marked_diverged'] += 1

    def _mark_dead(self, conn, outcome: _Outcome) -> None:
        """Mark the rows (or tables) of changes the database rejected, in a
        SAVEPOINT of their own: the rejection already undid their writes."""
        marks = []
        for item, reason, detail in outcome.dead:
            target = self.targets[item.change.table]
            try:
                row_key = _row_key(target.coerce_key(item.change.key)) if item.change.key else ''
            except _Rejected:
                row_key = ''
            marks.append(_diverged_row(target, row_key, item.change.first_version, reason,
                                       detail))
        savepoint = conn.begin_nested()
        try:
            self._record_marks(conn, marks, outcome.counts)
        except sa_exc.StatementError:
            savepoint.rollback()
            logging.warning('%s: cannot mark %d rejected change(s) diverged', _STEP, len(marks))
            return
        savepoint.commit()

    def _apply(self, conn, target: _Target, key, base: RowState, ops) -> Tuple[RowState, RowState]:
        """(row as stored before the final write, state after ``ops``).

        When an op reads a column the state does not know (the row was
        inserted without it: it holds the default), the known state is written
        and read back, inside a SAVEPOINT so a later rejection undoes it.
        Raises _Rejected with ``index``, the position in ``ops`` of the op
        that cannot be applied.
        """
        savepoint = None
        index = 0
        try:
            state = base
            for index, op in enumerate(ops):
                previous = state
                try:
                    state = apply_op(previous, op)
                except MissingColumn:
                    if not previous.replaced:  # it holds every column of the table
                        raise
                    savepoint = savepoint or conn.begin_nested()
                    plan = _Plan(target)
                    plan.add(key, base, previous)
                    plan.execute(conn)
                    row = self._current_rows(conn, target, [key])[_row_key(key)]
                    base = previous = RowState(True, row, False)
                    state = apply_op(previous, op)
                state = target.coerce_state(state, key, previous)
        except MissingColumn as exc:
            rejection = _Rejected('unknown-column', f'{exc.args[0]!r} is not a column of '
                                                    f'{target.name!r}')
        except _Rejected as exc:
            rejection = exc
        except (ArithmeticError, TypeError, ValueError) as exc:
            rejection = _Rejected('bad-expression', f'{type(exc).__name__}: {exc}')
        else:
            if savepoint is not None:
                savepoint.commit()
            return base, state
        if savepoint is not None:
            savepoint.rollback()
        rejection.index = index
        raise rejection

    def _stored_versions(self, conn, target: _Target, row_keys: List[str]) -> Dict[str, str]:
        rows, stored = self._rows, {}
        for chunk in _chunks(row_keys):
            size = _select_size(len(chunk))

            def build():
                binds = _binds([rows.c.table_name.type] + [rows.c.row_key.type] * size)
                return sa.select(rows.c.row_key, rows.c.version).where(
                    rows.c.table_name == binds[0], rows.c.row_key.in_(binds[1:]))
            select = self._statements.get(conn, ('versions', size), build)
            stored.update(select.fetch(conn, (target.name, *_padded(chunk, size))))
        return stored

    def _current_rows(self, conn, target: _Target, keys: List[Tuple[Any, ...]]
                      ) -> Dict[str, Dict[str, Any]]:
        """The stored rows of ``keys``, by row key (of their values as read)."""
        names = target.column_names
        key_of = _values_of(tuple(names.index(c.name) for c in target.key_columns))
        current = {}
        for chunk in _chunks(keys):
            size = _select_size(len(chunk))
            select = target.select_statement(conn, size)
            for row in select.fetch(conn, [v for key in _padded(chunk, size) for v in key]):
                current[_row_key(key_of(row))] = dict(zip(names, row))
        return current


# Columns of the bookkeeping rows the sink writes, in the order it passes their values.
_VERSION_COLUMNS = ('table_name', 'row_key', 'version', 'deleted')
_MARKER_COLUMNS = ('table_name', 'truncated_version')
_MARK_COLUMNS = ('table_name', 'row_key', 'version', 'reason', 'detail')

_DIVERGE = OpKind.DIVERGE  # a module constant: a lookup on the Enum class costs more
_row_state = functools.partial(tuple.__new__, RowState)  # RowState(...) without a Python call
_new_item = functools.partial(tuple.__new__, _Item)  # likewise _Item(...)


def _first_version(item: _Item) -> str:
    return item.change.ops[0].version


def _replaces(mark: Dict[str, str], version: str, reason: str) -> bool:
    """Whether ``mark`` takes the place of a stored mark of ``version`` and
    ``reason``: when newer, and not over a table's schema-change mark."""
    return mark['version'] > version and not (
        reason == 'schema-change' and not mark['row_key'] and mark['reason'] != 'schema-change')


def _table_ops_apart(ready):
    """(micros, Change) pairs with each whole-table Change cut where a keyed
    change of its table starts after one of its ops and at or before the
    next (a row's first op may be a whole-table op's copy). The write applies a
    whole-table Change at its first op's place in version order: one holding
    ``UPDATE ... WHERE done`` at v1 and at v3 would apply both before a keyed
    change at v2, which would then be skipped as older than its row (a loss
    in silence, found where the row's earlier ops were in an earlier run)."""
    if all(change.key or len(change.ops) < 2 for _, change in ready):
        return ready
    starts: Dict[str, List[str]] = {}  # table -> its keyed changes' first versions, sorted
    for _, change in ready:
        if change.key and change.ops:
            starts.setdefault(change.table, []).append(change.ops[0].version)
    for versions in starts.values():
        versions.sort()
    apart = []
    for micros, change in ready:
        versions = starts.get(change.table)
        if change.key or len(change.ops) < 2 or not versions:
            apart.append((micros, change))
            continue
        part = [change.ops[0]]
        for op in change.ops[1:]:
            after = bisect.bisect_right(versions, part[-1].version)
            if after < len(versions) and versions[after] <= op.version:
                apart.append((micros, change._replace(ops=tuple(part))))
                part = []
            part.append(op)
        apart.append((micros, change._replace(ops=tuple(part))))
    return apart


def _ready_order(ready) -> Tuple[str, bool]:
    """Where a (micros, Change) pair is written: at its first version ('' if
    it has no ops); a row's Change before a whole-table one of the same
    version (the row's first op is that TRUNCATE's or DELETE's copy, and the
    whole-table op must then find the row's newer version)."""
    change = ready[1]
    return (change.ops[0].version if change.ops else '', not change.key)


# What a write raises when the database (or its driver, binding a value:
# sqlite3 for an int beyond 64 bits) refuses a change: that change alone is
# dead-lettered ('database-rejected') and its row marked.
_REJECTED = (sa_exc.StatementError, OverflowError)
_TABLE_KINDS = frozenset({OpKind.TRUNCATE, OpKind.DIVERGE, OpKind.UPDATE, OpKind.DELETE})
_ROW_WRITES = frozenset({OpKind.UPDATE, OpKind.DELETE})

# Key types whose values read back from the replica hash to the same shard
# as the values a Change carries (_shard_of): integers, exact decimals, strings.
_SHARDABLE_KEY_TYPES = (sa.Integer, sa.Numeric, sa.String)


def _shardable(target: _Target) -> bool:
    return all(isinstance(c.type, _SHARDABLE_KEY_TYPES) and not isinstance(c.type, sa.Float)
               and not isinstance(c.type, (sa.LargeBinary, sa.Enum))
               for c in target.key_columns)


def _diverged_row(target: _Target, row_key: str, version: str, reason: str, detail: str
          ) -> Dict[str, str]:
    """A changeflow_diverged row; ``row_key`` '' for the whole table."""
    return {'table_name': target.name, 'row_key': row_key, 'version': version,
            'reason': reason[:_REASON_LENGTH], 'detail': detail[:_DETAIL_LENGTH]}


def _with_ops(item: _Item, ops) -> _Item:
    return item._replace(change=item.change._replace(ops=tuple(ops)))


def _describe(exc: BaseException) -> str:
    """Error text without bound parameters (the engine hides them too)."""
    text = f'{type(exc).__name__}: {getattr(exc, "orig", None) or exc}'
    return text[:_DETAIL_LENGTH]


def _is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: lost or refused connections, deadlocks, lock
    timeouts (all OperationalError in psycopg2, PyMySQL and sqlite3)."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError,
                        sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def create_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)
    if engine.dialect.name == 'sqlite':
        database = engine.url.database
        if database and database != ':memory:' and not database.startswith('file:'):
            # A new replica file's folder may not exist yet (sqlite will not make
            # it); if it cannot be made, connecting reports the error.
            try:
                os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
            except OSError:
                pass
        begin_immediate(engine)
    return engine


# ---------------------------------------------------------------------------
# Reading the marks back (``changeflow status``).

class Divergence(NamedTuple):
    """What a replica's bookkeeping records as diverged.

    ``tables``: (table, version, reason) per whole-table mark; ``rows``:
    (table, reason, count of rows) per table and reason; by table name.
    """
    tables: Tuple[Tuple[str, str, str], ...]
    rows: Tuple[Tuple[str, str, int], ...]

    def __bool__(self) -> bool:
        return bool(self.tables or self.rows)


def read_divergence(url: str, bookkeeping_prefix: str = 'changeflow_') -> Divergence:
    """The diverged tables and rows recorded in the replica at ``url`` (none
    when the sink has not written there yet). Raises SQLAlchemyError when the
    database cannot be read."""
    engine = sa.create_engine(url, hide_parameters=True)
    database = engine.url.database
    if engine.dialect.name == 'sqlite' and database and database != ':memory:' and (
            not database.startswith('file:') and not os.path.exists(database)):
        engine.dispose()
        return Divergence((), ())  # not written yet; reading would create the file
    try:
        diverged = bookkeeping_tables(sa.MetaData(), bookkeeping_prefix)[2]
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(diverged.name):
                return Divergence((), ())
            c = diverged.c
            tables = conn.execute(sa.select(c.table_name, c.version, c.reason)
                                  .where(c.row_key == '').order_by(c.table_name)).all()
            rows = conn.execute(
                sa.select(c.table_name, c.reason, sa.func.count())
                .where(c.row_key != '').group_by(c.table_name, c.reason)
                .order_by(c.table_name, c.reason)).all()
    finally:
        engine.dispose()
    return Divergence(tuple(map(tuple, tables)), tuple((t, r, int(n)) for t, r, n in rows))


# ---------------------------------------------------------------------------
# Beam.

_BUFFER = userstate.BagStateSpec('changes', PickleCoder())
_DUE = userstate.ReadModifyWriteStateSpec('due', PickleCoder())  # the timer's time
_FLUSH = userstate.TimerSpec('flush', TimeDomain.WATERMARK)


class _DatabaseWriter:
    """What both forms of the sink share: the engine and replica, and how a
    shard's ready changes are written in version order."""

    def __init__(self, url, tables, batch_size, max_retries, bookkeeping_prefix,
                 num_shards=1, follows_schema=False):
        self._url = url
        self._follows_schema = follows_schema
        self._num_shards = num_shards
        self._tables = tuple(tables)
        self._known = {spec.source for spec in tables}
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._bookkeeping_prefix = bookkeeping_prefix
        self._counters = {name: Metrics.counter(_NAMESPACE, name) for name in (
            'changes_received', 'rows_upserted', 'rows_deleted', 'ops_skipped_stale',
            'changes_dead_lettered', 'rows_marked_diverged', 'tables_marked_diverged',
            'batches_committed', 'batch_retries', 'changes_of_dropped_tables',
            'batches_unreachable', 'circuit_opened', 'batches_not_tried')}
        self._engine = None
        self._replica = None
        self._unreachable = 0        # consecutive batches that could not reach the database
        self._open_until = None      # time.monotonic() until which batches are not tried
        self._last_unreachable = ''  # the error that opened the circuit

    def setup(self):
        self._engine = create_engine(self._url)
        self._replica = _Replica(self._tables, self._bookkeeping_prefix, self._num_shards)
        if self._follows_schema:
            return  # the specs are the replica's, once ApplyReplicaSchema has run
        try:
            self._replica.prepare(self._engine)
        except sa_exc.SQLAlchemyError as exc:
            # The database may come back: prepare again before the first write.
            logging.warning('%s: cannot prepare replica tables yet (%s); retrying at the '
                            'first batch', _STEP, self._hide_password(_describe(exc)))

    def _write_ready(self, ready, shard: int, batch_size: Optional[int] = None,
                     applied: Optional[list] = None):
        """Applies one shard's ready (micros, Change) pairs in version order,
        ``batch_size`` per transaction (default: the sink's). With ``applied``,
        the Changes applied go there instead of out as WindowedValues."""
        batch_size = batch_size or self._batch_size
        emit = functools.partial(self._emit, applied=applied)
        window, timestamps = GlobalWindow(), {}  # one Timestamp per time, not per change
        ready = _table_ops_apart(ready)
        ready.sort(key=_ready_order)
        if not self._replica.prepared:
            try:
                self._replica.prepare(self._engine)
            except sa_exc.SQLAlchemyError:
                pass  # the first batch prepares again, with retries
        # A replica that follows DDL knows its tables once reachable; until then every
        # change goes to the write, which dead-letters it for the outage.
        known = (set(self._replica.targets) if self._replica.prepared
                 else None if self._follows_schema else self._known)
        batch: List[_Item] = []
        for micros, change in ready:
            timestamp = timestamps.get(micros)
            if timestamp is None:
                timestamp = timestamps[micros] = Timestamp(micros=micros)
            item = _new_item((change, timestamp, window, bool(change.key) or shard == 0, shard))
            if change.table in self._replica.dropped:
                # Older than the DROP TABLE that the replica followed: gone with the table.
                if item.reported:
                    self._counters['changes_of_dropped_tables'].inc()
                continue
            if known is not None and change.table not in known:
                yield from emit(_Outcome.all_dead(
                    [item], 'unknown-table',
                    f'{change.table!r} is not one of the tables given to WriteToDatabase'))
                continue
            if not change.ops:
                yield from emit(_Outcome.all_dead([item], 'bad-change', 'no ops'))
                continue
            if not item.reported or (not change.key and any(
                    op.kind in _ROW_WRITES for op in change.ops)):
                # A whole-table op's copy, applied here in its place and reported
                # by shard 0 (whichever copy runs first deletes the rows or
                # marks the table, so count those); or one that writes this
                # shard's rows, which must see every older change applied.
                if batch:
                    yield from emit(self._write(batch))
                    batch = []
                outcome = self._write([item])
                if item.reported:
                    yield from emit(outcome)
                    continue
                for name in ('rows_deleted', 'rows_upserted', 'rows_marked_diverged',
                             'tables_marked_diverged'):
                    self._counters[name].inc(outcome.counts.get(name, 0))
                outcome.applied, outcome.counts = [], collections.Counter()
                yield from emit(outcome)  # its own rows' dead letters
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                yield from emit(self._write(batch))
                batch = []
        if batch:
            yield from emit(self._write(batch))

    def teardown(self):
        if self._engine is not None:
            self._engine.dispose()

    def _write(self, items: List[_Item]) -> _Outcome:
        """One transaction for ``items``, retried on transient errors; never raises.

        A circuit breaker spares a database that is plainly down: after
        ``_UNREACHABLE_BATCHES`` consecutive batches that could not reach it
        (transient errors, retries exhausted, before their transaction began),
        batches are dead-lettered untried ('sink-unavailable') for
        ``_CIRCUIT_OPEN_SECS``; then one batch probes it, without retries."""
        probing = self._open_until is not None
        if probing and time.monotonic() < self._open_until:
            self._counters['batches_not_tried'].inc()
            return _Outcome.all_dead(items, 'sink-unavailable', self._unavailable_detail())
        attempt, isolate = 0, False
        while True:
            connected = False
            try:
                if not self._replica.prepared:
                    self._replica.prepare(self._engine)
                with self._engine.begin() as conn:
                    connected = True
                    self._reached()
                    outcome = self._replica.write(conn, items, isolate)
                outcome.counts['batches_committed'] += 1
                return outcome
            except sa_exc.SQLAlchemyError as exc:
                # Preparing may also fail on a race with another worker's CREATE TABLE.
                retry = _is_transient(exc) or not self._replica.prepared
                if retry and attempt < (0 if probing else self._max_retries):
                    attempt += 1
                    self._counters['batch_retries'].inc()
                    time.sleep(min(_BACKOFF_SECS * 2 ** (attempt - 1), _MAX_BACKOFF_SECS))
                    continue
                if connected and not isolate and isinstance(exc, sa_exc.StatementError):
                    isolate = True  # find the changes the database rejects
                    continue
                if not connected and _is_transient(exc):
                    self._not_reached(exc)
                return _Outcome.all_dead(items, 'database-error', _describe(exc))
            except ValueError as exc:  # a replica table vanished, or is not as configured
                return _Outcome.all_dead(items, 'database-error', str(exc))
            except Exception as exc:  # pylint: disable=broad-except
                if isinstance(exc, OverflowError) and connected and not isolate:
                    isolate = True  # a value the driver cannot bind: as the database rejecting it
                    continue
                # A defect, not data: keep the changes replayable, keep the branch alive.
                if len(items) > 1:  # each change on its own: only the one that trips it is dead
                    outcome = _Outcome()
                    for item in items:
                        outcome.merge(self._write([item]))
                    return outcome
                logging.exception('%s: unexpected error writing %d changes', _STEP, len(items))
                return _Outcome.all_dead(items, 'internal-error', describe_error(exc))

    def _not_reached(self, exc: BaseException) -> None:
        """A batch could not reach the database: opens the circuit at the
        ``_UNREACHABLE_BATCHES``-th in a row (again after a failed probe)."""
        self._counters['batches_unreachable'].inc()
        self._unreachable += 1
        if self._unreachable < _UNREACHABLE_BATCHES:
            return
        if self._open_until is None:
            self._counters['circuit_opened'].inc()
            logging.warning('%s: %d batches in a row could not reach %s; dead-lettering the '
                            'next ones untried (sink-unavailable) for %g s', _STEP,
                            self._unreachable, display_url(self._url), _CIRCUIT_OPEN_SECS)
        self._last_unreachable = self._hide_password(_describe(exc))
        self._open_until = time.monotonic() + _CIRCUIT_OPEN_SECS

    def _reached(self) -> None:
        if self._open_until is not None:
            logging.warning('%s: %s is reachable again', _STEP, display_url(self._url))
        self._unreachable, self._open_until = 0, None

    def _unavailable_detail(self) -> str:
        return (f'not tried: {self._unreachable} batches in a row could not reach '
                f'{display_url(self._url)} (last: {self._last_unreachable})')

    def _hide_password(self, text: str) -> str:
        """``text`` without the URL's password, should an error quote it."""
        password = make_url(self._url).password
        return text.replace(str(password), '***') if password else text

    def _emit(self, outcome: _Outcome, applied: Optional[list] = None):
        for name, count in outcome.counts.items():
            self._counters[name].inc(count)
        if applied is not None:
            applied.extend([item.change for item in outcome.applied])
        else:
            for item in outcome.applied:
                yield WindowedValue(item.change, item.timestamp, (item.window,))
        self._counters['changes_dead_lettered'].inc(len(outcome.dead))
        for item, reason, detail in outcome.dead:
            ops = item.change.ops
            letter = dead_letter(_STEP, reason, self._hide_password(detail),
                                 change_json(item.change),
                                 ops[-1].position if ops else '')
            yield TaggedOutput(DEAD_LETTER_TAG,
                               WindowedValue(letter, item.timestamp, (item.window,)))


@guarded(_STEP, lambda element: changes_original(element[1]),
         lambda element: element[1].ops[-1].position, buffered=False)
class _WriteDoFn(_DatabaseWriter, beam.DoFn):
    """Writes (table, shard) keyed Changes as the watermark passes them; see WriteToDatabase."""

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                buffer=beam.DoFn.StateParam(_BUFFER), due=beam.DoFn.StateParam(_DUE),
                flush=beam.DoFn.TimerParam(_FLUSH)):
        (_, shard), change = element
        if change.key or shard == 0:  # a whole-table op arrives once per shard
            self._counters['changes_received'].inc()
        buffer.add((timestamp.micros, change))
        earliest = due.read()
        if earliest is None or timestamp.micros < earliest:
            due.write(timestamp.micros)
            flush.set(timestamp)

    @userstate.on_timer(_FLUSH)
    def flush_due(self, fired=beam.DoFn.TimestampParam, shard_key=beam.DoFn.KeyParam,
                  buffer=beam.DoFn.StateParam(_BUFFER), due=beam.DoFn.StateParam(_DUE),
                  flush=beam.DoFn.TimerParam(_FLUSH)):
        """The watermark passed ``fired``: every change of this shard timestamped
        up to it has arrived (changes are timestamped at the end of their
        window), and earlier ones were flushed before. Apply them in version
        order, ``batch_size`` per transaction; keep the rest for a later timer."""
        ready, later = [], []
        for micros, change in buffer.read():
            (ready if micros <= fired.micros else later).append((micros, change))
        buffer.clear()
        due.clear()
        for micros, change in later:
            buffer.add((micros, change))
        if later:
            earliest = min(micros for micros, _ in later)
            due.write(earliest)
            flush.set(Timestamp(micros=earliest))
        yield from self._write_ready(ready, shard_key[1])


def _batch_original(batch):
    return changes_original(batch_changes(batch))


def _batch_position(batch):
    return f'shard {batch[0]}/{batch[1]}'


@guarded(_STEP, _batch_original, _batch_position, buffered=False)
class _WriteBatchFn(_DatabaseWriter, beam.DoFn):
    """Writes one shard's coalesced changes (a bounded run: all of them at
    once, so no state or timers); see WriteBatchesToDatabase."""

    def process(self, batch, timestamp=beam.DoFn.TimestampParam, schema_applied=None):
        table, shard, _ = batch
        changes = batch_changes(batch)
        self._counters['changes_received'].inc(sum(1 for c in changes if c.key or shard == 0))
        micros = timestamp.micros
        applied = []
        # One transaction for the whole batch: a COMMIT (an fsync) per 500 changes
        # capped a real disk near 7.6k changes/s. Crash safety is the same: each
        # transaction is atomic and the version guard skips what a replay finds applied.
        yield from self._write_ready([(micros, change) for change in changes], shard,
                                     len(changes), applied)
        yield make_batch(table, shard, applied)


@typehints.with_input_types(Change)
class WriteToDatabase(beam.PTransform):
    """Applies coalesced Changes to replica tables through SQLAlchemy Core.

    Input: PCollection[Change], one per (table, key) and window, ops in version
    order. Output: a DoOutputsTuple whose main output (tag ``MAIN``,
    ``'written'``) holds the Changes applied or found already applied, and
    whose DEAD_LETTER_TAG output holds a DeadLetter(step='write_database',
    original=the Change as JSON) per Change that could not be.

    Per row, only ops newer than the version stored for the row (and than the
    table's last TRUNCATE) are applied, in order, with rowstate.apply_op,
    starting from the row as the replica holds it: a replayed or older change
    never overwrites a newer one, and a delete leaves a tombstone so a late
    older insert stays ignored. The final state is written as a DELETE (row
    gone), DELETE + INSERT (row replaced: exactly its values, other columns at
    the target's defaults) or an UPDATE of the changed columns; the versions go
    to the bookkeeping tables (see the module docstring) in the same
    transaction. A TRUNCATE deletes the rows whose stored version is older than
    it and raises the table's marker. A DIVERGE op changes no row: it records
    the row (or, without a key, the table) in ``changeflow_diverged``. An
    UPDATE or DELETE without a key (a WHERE that does not name its rows) is
    applied by each shard, in its version place (alone in its transaction),
    to its own rows of the replica whose stored version is older (a row
    whose Change spans it carries it as its own op, from CoalesceChanges),
    where its condition holds; a shard where the table or one of its rows is
    marked diverged, or whose key type does not read back as written
    (integer, decimal and string keys do), does not apply it: it
    dead-letters it ('needs-lookup') and marks the table.

    Values are coerced to the column types as MySQL stores them
    (:func:`changeflow.sql.coercion.coercer`: '2026-11-01' to a date, '10.50' to a
    Decimal of the column's scale, a number to a boolean true when non-zero;
    a reflected type is read as the declared type it holds, and types
    changeflow does not declare go to the driver as they are); a value that
    does not fit dead-letters its change ('bad-value', column named), and so does an op
    naming a column the target lacks ('unknown-column'), an expression that
    cannot be evaluated ('bad-expression'), an op changing a key column
    ('key-changed') and a change of a table not in ``tables``
    ('unknown-table'). The other changes of the batch commit. Such an op
    does not take the row's earlier ops with it: the ops before it are
    applied, the row is marked diverged with the bad op's version and
    reason, and the dead letter holds that op and the ones after it. A change
    the database rejects, or whose key cannot be coerced, is dead-lettered
    whole and marks its row (its table, for a bad key) diverged.

    Ordering, batching and concurrency: each change is keyed by (table,
    stable hash of its key values modulo ``num_shards``) and buffered in a
    stateful DoFn per shard (across windows: changes keep their timestamp,
    the end of the window they were coalesced in). When the watermark passes
    a change's timestamp (an event-time timer), every change up to it has
    arrived and every earlier one was flushed before, so the ready changes
    are written sorted by version, ``batch_size`` per transaction. One row's changes therefore reach the database in version
    order across windows, in a stream as in a bounded run (where the only
    flush comes at the end of the input). The runner processes a key on one
    worker at a time, so one row is never written by two workers at once,
    while the shards of a table are written in parallel. TRUNCATE, which
    touches every shard of its table, is serialised by row locks on the
    table's marker: keyed batches share-lock it, a TRUNCATE locks it
    exclusively.

    Errors: transient ones (lost connection, deadlock) retry the batch
    ``max_retries`` times with exponential backoff; then every change of the
    batch is dead-lettered ('database-error'). When the database rejects a
    statement (constraint, data error), the batch is redone with a SAVEPOINT
    per change, so only the rejected changes are dead-lettered
    ('database-rejected'). A database that is plainly down is not retried
    batch after batch: once three batches in a row could not reach it (their
    retries spent), the following ones are dead-lettered at once
    ('sink-unavailable') for a minute, then one batch, without retries,
    probes whether it is back (the count is per worker). The step never
    raises for data or database errors, so it never fails or re-runs other
    branches.

    Caveats:

    * A TRUNCATE is sent to every shard of its table and applied there in
      version order with that shard's changes (within a batch, TRUNCATEs are
      applied first); shard 0's copy is the one reported. A row change that
      spans a TRUNCATE carries it as a DELETE op (CoalesceChanges adds it).
    * An INSERT that omits columns leaves them at the target's defaults:
      declare the source's defaults in the TableSpec (or create the table
      with them) to replicate them exactly.

    Metrics (namespace 'changeflow.write_database'): changes_received,
    rows_upserted, rows_deleted, ops_skipped_stale, changes_dead_lettered,
    rows_marked_diverged, tables_marked_diverged (marks newly recorded),
    batches_committed, batch_retries, batches_unreachable (batches that could
    not reach the database), circuit_opened, batches_not_tried (while open).

    Example::

        written, dead = changes | WriteToDatabase(
            'postgresql+psycopg2://replica@db/shop',
            [TableSpec('shop.orders', ('tenant_id', 'order_id'), 'orders')])

    Args:
        url: SQLAlchemy URL of the replica database. Prefer a URL without a
            password (the driver's own configuration: .pgpass, option files).
        tables: the replicated tables. A spec with ``columns`` gets its table
            created when missing; one without must name an existing table
            (setup raises ValueError naming table and URL otherwise).
        batch_size: changes per transaction.
        max_retries: retries of a batch after a transient error.
        num_shards: parallel writers per table.
        bookkeeping_prefix: prefix of the bookkeeping tables' names.
        schema_timeline: a PCollection of one SchemaTimeline: the replica then
            follows the source's DDL (:mod:`changeflow.io.replica_schema`),
            and writes with the specs it recorded; changes of tables it
            dropped are skipped (``changes_of_dropped_tables``).
    """
    MAIN = 'written'

    def __init__(self, url: str, tables: Sequence[TableSpec], batch_size: int = 500,
                 max_retries: int = 3, *, num_shards: int = DEFAULT_SHARDS,
                 bookkeeping_prefix: str = 'changeflow_', schema_timeline=None):
        super().__init__()
        if not url or not isinstance(url, str):
            raise ValueError(f'url must be a SQLAlchemy URL, got {url!r}')
        tables = tuple(tables)
        if not tables:
            raise ValueError('tables is empty')
        sources = [spec.source for spec in tables]
        if len(set(sources)) != len(sources):
            raise ValueError(f'a source table is listed twice: {sources}')
        for spec in tables:
            _check_spec(spec)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f'max_retries must be an integer >= 0, got {max_retries!r}')
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f'num_shards must be a positive integer, got {num_shards!r}')
        if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', bookkeeping_prefix):
            raise ValueError(f'bookkeeping_prefix must be an SQL identifier, '
                             f'got {bookkeeping_prefix!r}')
        self._url = url
        self._tables = tables
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._num_shards = num_shards
        self._bookkeeping_prefix = bookkeeping_prefix
        self._schema_timeline = schema_timeline

    def _after_schema(self) -> dict:
        """The side input that holds the writes back until the replica has the
        log's schema (a side input is ready before its consumer runs); {}
        when the replica does not follow DDL."""
        if self._schema_timeline is None:
            return {}
        from changeflow.io.replica_schema import ApplyReplicaSchema
        applied = self._schema_timeline | 'FollowSchema' >> ApplyReplicaSchema(
            self._url, self._bookkeeping_prefix)
        return {'schema_applied': beam.pvalue.AsSingleton(applied)}

    def expand(self, changes):
        after = self._after_schema()
        return (
            changes
            | 'KeyByShard' >> beam.FlatMap(
                lambda change, num_shards, schema_applied=None: shards_of(change, num_shards),
                self._num_shards, **after).with_output_types(
                typehints.Tuple[typehints.Tuple[str, int], typehints.Any])
            # One buffer per shard across windows, so timers fire in timestamp order.
            | 'AcrossWindows' >> beam.WindowInto(beam_window.GlobalWindows())
            | 'WriteInVersionOrder' >> beam.ParDo(_WriteDoFn(
                self._url, self._tables, self._batch_size, self._max_retries,
                self._bookkeeping_prefix, self._num_shards,
                self._schema_timeline is not None)).with_outputs(
                    DEAD_LETTER_TAG, main=self.MAIN))


@typehints.with_input_types(typehints.Tuple[str, int, bytes])
class WriteBatchesToDatabase(WriteToDatabase):
    """WriteToDatabase for a bounded run's coarse data flow: each input element
    is one shard's coalesced changes, ``(table, shard, changes)`` (from
    :class:`changeflow.transforms.shard_batches.FoldShards`, sharded as
    :func:`shards_of` shards), written in version order as WriteToDatabase
    writes a shard once the watermark has passed all of it; no state or
    timers. Each batch is one transaction (``batch_size`` does not split it).
    Same arguments and metrics; the main output has one batch
    ``(table, shard, packed changes applied or found applied)`` per input
    batch (:func:`changeflow.transforms.runs.batch_changes` reads it): packed,
    as Beam's coder would pickle each Change of a tuple on its own."""

    def expand(self, batches):
        return batches | 'WriteShards' >> beam.ParDo(_WriteBatchFn(
            self._url, self._tables, self._batch_size, self._max_retries,
            self._bookkeeping_prefix, self._num_shards, self._schema_timeline is not None),
            **self._after_schema()).with_outputs(DEAD_LETTER_TAG, main=self.MAIN)


def _check_spec(spec: TableSpec) -> None:
    if not spec.key:
        raise ValueError(f'table {spec.source!r} has no key columns')
    if not spec.target or len(spec.target) > _TABLE_NAME_LENGTH:
        raise ValueError(f'target of {spec.source!r} must be 1 to {_TABLE_NAME_LENGTH} '
                         f'characters, got {spec.target!r}')
    if spec.columns:
        declared = [name for name, _ in spec.columns]
        for _, type_ in spec.columns:
            sql_type(type_)  # raises ValueError for an unknown type
        missing = [k for k in spec.key if k not in declared]
        if missing:
            raise ValueError(f'key column(s) {missing} of {spec.source!r} are not among '
                             f'its declared columns {declared}')
