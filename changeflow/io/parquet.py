"""Parquet backup of the change stream: a change log, one row per op.

Layout (Hive-style partitions, local directory or ``s3://``)::

    {path}/table={target}/date=YYYY-MM-DD/part-{first_version}-{last_version}-{hash}-{shard}of{shards}.parquet

``date`` is the UTC day of the Change's ``event_time_us``. In a job
(``batched=True``) the input is each shard's *source ops*, one Change per op
with the op's own time (:mod:`changeflow.transforms.shard_batches`), so a
row, its partition and its identity (source table, key, version) are the
same whatever else a run read. Rows are grouped per (target, date, write
shard) (and window, for a Change input), one writer per partition: the
write shard is the row's shard among ``shards`` (4) by a stable hash of its
table and key (:func:`changeflow.io.sql.shards_of`, the replica's shards),
so a day is written by as many workers, each row always by the same shard.

Written once per source op: before writing a partition, the writer lists its
files (its own write shard's, and those of another shard count or, written
before write shards, of none, ``part-{first}-{last}-{hash}.parquet``) and
reads the ``version``, ``source_table`` and ``key`` columns of those
whose version range (in the name) meets the new rows' range, and writes only
the rows no file holds, sorted by (version, source table, key, position) and
cut into files of at most ``rows_per_file`` rows, each named by its first and
last version and a hash of its rows' identities. The files are the ledger: a
file appears whole or not at all (:class:`changeflow.io.files.StagedFile`),
so a run after a crash, a backfill over a synced period or the same input
again adds exactly the ops the backup lacks. Cost: a listing per partition
written, and a read of three columns of each overlapping file, whose
identities (one text per row) are held while the partition is written.
Two jobs writing one path at once are not supported. Accumulating triggers
would repeat rows in later panes: use the default (discarding) trigger.

Columns of every file:

* ``source_table`` (string): the source table, 'database.table'. (Not called
  ``table``: the ``table=`` partition key would shadow it when the tree is read
  as a Hive-partitioned dataset.)
* ``op`` (string): the OpKind value; ``version`` (string); ``position`` (string).
* ``event_time`` (timestamp[us, UTC]): the Change's ``event_time_us``; all ops
  of one Change share it (RowOp carries no time of its own).
* ``key`` (string): the key values as a JSON array (see
  :func:`changeflow.io.json_records.json_value`).
* ``set_columns`` (list<string>): the columns the op sets.
* ``computed`` (map<string, string>): column -> SQL text of assignments that
  are not literals (``qty`` -> ```qty` + 1``), in terms of the row *before*
  the op (earlier assignments of the same statement substituted in). For an
  UPSERT it holds every ON DUPLICATE KEY UPDATE assignment, literal or not,
  since they only apply when the row existed.
* One nullable typed column per declared TableSpec column, holding the op's
  literal values (``values``, and an UPDATE's literal assignments), coerced to
  the declared type; key columns are filled from the Change's key on every op
  (``set_columns`` tells which columns the op actually set). A declared column
  named like a column above or a partition key (``table``, ``date``) is stored
  as ``col_{name}``. When a TableSpec declares no columns, ``values`` (string)
  holds a JSON object of every literal value as text instead.

Type mapping: integer, bigint -> int64 (MySQL's INT UNSIGNED exceeds int32);
decimal(p,s) -> decimal128(p,s) (decimal256 beyond 38 digits), bare decimal ->
decimal128(38,9); float -> float64; string, text, json -> string; boolean ->
bool; date -> date32; datetime -> timestamp[us] (no zone, as MySQL DATETIME);
binary -> binary; a nested type (a json column with a declared shape, see
:mod:`changeflow.sql.nested`): list<T> and set<T> -> list_(T) (a set's
elements distinct and sorted), map<T> -> map_(string, T), struct<...> ->
struct(...), their scalars as above, ``json`` parts as JSON text. Values are
coerced as MySQL stores them, by :func:`changeflow.sql.coercion.coercer`:
numbers round half away from zero to the column's scale (a bare decimal's is
9), numeric strings parse, a boolean is true for any non-zero number.
Integers must also fit int64, and a json column holds the document's text.
A nested column takes dicts and lists (DynamoDB's values, bytes as base64
text) or a JSON document's text, its decimals read exactly. A value that
does not fit is ``bad-value``.

Dead letters (step ``write_parquet``), one per op row, ``original`` the
single-op Change as JSON: ``bad-value`` (a value not coercible to its
column, or text that is not UTF-8; the other rows are still written),
``unknown-column`` (a literal value for a column the TableSpec does not
declare), ``unknown-table`` (a Change of a table not in ``tables``),
``bad-change`` (an event time with no date, an op that cannot be rendered),
``write-failed`` (the file could not be written).

Runner support: any runner. Files are written through Beam's ``FileSystems``:
``s3://`` uses ``S3Options`` (``--s3_endpoint_url`` ...) or boto3's default
chain. Memory does not grow with a partition: Changes cross the GroupByKey
packed (pickled and compressed, a log batch at a time) and the writer reads
the grouped values a batch at a time (a runner that pages large groups,
Dataflow's or Flink's, never holds them all; the FnApiRunner and the
DirectRunner do, packed). A log batch of one table's one-op Changes whose
values all fit their columns is built as Arrow columns at once (its ops
grouped by the columns they set, equal assignments rendered once, values
that need no coercion, such as ints, UTF-8 text and decimal text at the
column's scale, handed to Arrow whole); any other batch op by op, one Python
list per column. Rows are held ``_SLICE_ROWS`` (50,000) at a time (a batch
built at once may carry a slice beyond), a slice also ending where batches
of the two kinds meet; each slice becomes an
Arrow table sorted by identity, keeping per row its origin (batch, Change
and op index, not the Change) and, but for the last, is spilled to a local
temporary Arrow IPC file (under ``TMPDIR``) and read back memory-mapped. The
slices are merged in identity order about ``_SLICE_ROWS`` rows at a time,
and each file is written as the merge yields its rows, a row group of
``_ROW_GROUP_ROWS`` (65,536) at a time, to a staged file renamed (or, to an
object store, uploaded) once its last row is in, its name's versions and
hash computed as the rows stream by. A worker holds one slice's Python
rows, one merge round, one row group, and the identities of the
overlapping files of its shard (above); a partition smaller than a slice is
sorted in memory. Local disk: the partition's rows, as uncompressed Arrow,
and the file being written. A ``write-failed`` dead letter's Change is
unpacked again from the grouped values (only the batches of its file's
rows, found by merging the slices' identities again).
"""

import datetime
import decimal
import functools
import hashlib
import itertools
import mmap
import operator
import os
import re
import tempfile
from typing import (Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, NamedTuple,
                    Optional, Sequence, Tuple)

import apache_beam as beam
from apache_beam import typehints
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from changeflow.sql.coercion import BadValue, coercer
from changeflow.config import TableSpec
from changeflow.sql.expressions import to_sql
from changeflow.io.files import StagedFile, WrittenFile
from changeflow.io.json_records import change_json, dumps_json, json_value
from changeflow.io.sql import DEFAULT_SHARDS, shards_of
from changeflow.model import DEAD_LETTER_TAG, Change, OpKind, RowOp, dead_letter
from changeflow.sql import types
from changeflow.sql.rowstate import op_columns
from changeflow.transforms.runs import (Span, batch_changes, batch_span, gc_paused, pack,
                                       typed_keys, unpack)
from changeflow.transforms.guard import changes_original, guarded

__all__ = ['WriteParquetBackup', 'arrow_type', 'METADATA_SCHEMA']

_STEP = 'write_parquet'

METADATA_SCHEMA = pa.schema([
    pa.field('source_table', pa.string(), nullable=False),
    pa.field('op', pa.string(), nullable=False),
    pa.field('version', pa.string(), nullable=False),
    pa.field('event_time', pa.timestamp('us', tz='UTC'), nullable=False),
    pa.field('key', pa.string(), nullable=False),
    pa.field('position', pa.string(), nullable=False),
    pa.field('set_columns', pa.list_(pa.string()), nullable=False),
    pa.field('computed', pa.map_(pa.string(), pa.string()), nullable=False),
])
_RESERVED = frozenset(METADATA_SCHEMA.names) | {'table', 'date', 'values'}
_UNSAFE_IN_NAME = re.compile(r'[^A-Za-z0-9._-]')
_UNROUTABLE = ('', '', 0)
_FAILED = ('', 'failed', 0)  # dead letters of KeyByPartition, passed through WriteFiles
_INT64 = (-2 ** 63, 2 ** 63 - 1)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def arrow_type(column_type: str) -> pa.DataType:
    """The Arrow type of a TableSpec column type (:func:`changeflow.sql.types.arrow_type`:
    a bare 'decimal' is decimal128(38,9)); ValueError if unknown."""
    return types.arrow_type(column_type)


def _coercer(arrow: pa.DataType, column_type: str) -> Callable[[Any], Any]:
    """The coercion of a declared column stored as ``arrow``: a decimal at the
    Arrow type's precision and scale (a bare 'decimal' is decimal128(38,9)),
    an integer within int64, a nested type's lists, maps and structs
    (:mod:`changeflow.sql.nested`). Raises BadValue. An int already within
    int64, and ASCII text for a string, are taken as they are (what the
    coercion returns for them) without a call into it."""
    shape = types.parse_type(column_type).shape
    if shape is not None:
        return shape.converter()
    if pa.types.is_decimal(arrow):
        return _decimal_coercer(arrow.precision, arrow.scale)
    coerce = coercer(column_type)
    if pa.types.is_int64(arrow):
        within = functools.partial(_within_int64, coerce)
        if coerce is not _PLAIN_INTEGER:
            return within

        def integer(value, low=_INT64[0], high=_INT64[1]):
            return value if type(value) is int and low <= value <= high else within(value)
        return integer
    if column_type.strip().lower() in ('string', 'text'):  # coercer's own test of a plain string
        def text(value):
            return value if type(value) is str and value.isascii() else coerce(value)
        return text
    return coerce


def _decimal_coercer(precision: int, scale: int) -> Callable[[Any], Any]:
    """DECIMAL(precision, scale)'s coercion; text that already has the scale's
    digits and fits (what a log mostly holds: '523.45') is its Decimal as it
    is, the value the coercion's rounding returns for it."""
    coerce = coercer(f'decimal({precision},{scale})')
    exact = _exact_decimal(precision, scale)

    def fixed(value):
        return decimal.Decimal(value) if type(value) is str and exact(value) else coerce(value)
    return fixed


def _decimal_pattern(precision: int, scale: int) -> str:
    """The regular expression of decimal text that already has the scale's digits and fits."""
    whole = precision - scale
    return (f'-?[0-9]{{1,{whole}}}' + (f'\\.[0-9]{{{scale}}}' if scale else '')
            if whole else f'-?0\\.[0-9]{{{scale}}}')


def _exact_decimal(precision: int, scale: int) -> Callable[[str], Any]:
    """The full match of :func:`_decimal_pattern`."""
    return re.compile(_decimal_pattern(precision, scale)).fullmatch


def _column_coercer(arrow: pa.DataType, column_type: str,
                    coerce: Callable[[Any], Any]) -> Callable[[List[Any]], pa.Array]:
    """A declared column's values (None for NULL) as its Arrow array, the
    values :func:`_coercer`'s ``coerce`` gives them: a column whose values
    need no coercion (ints within int64, UTF-8 text for a string, decimal text
    at the column's scale) goes to Arrow at once, any other value by value.
    Raises what ``coerce`` or Arrow raises."""
    def each(values):
        return pa.array([None if value is None else coerce(value) for value in values], arrow)

    def present(values):
        return [value for value in values if value is not None] if None in values else values

    if types.parse_type(column_type).shape is not None:
        return each
    if pa.types.is_decimal(arrow):
        # matched by Arrow (RE2, whose $ is the text's end): a full match, as Python's
        exact = f'^(?:{_decimal_pattern(arrow.precision, arrow.scale)})$'

        def decimals(values):
            if set(map(type, present(values))) <= {str}:
                texts = pa.array(values, pa.string())
                if pc.all(pc.match_substring_regex(texts, exact)).as_py() is not False:  # None: no text
                    return texts.cast(arrow)
            return each(values)
        return decimals
    if pa.types.is_int64(arrow) and coercer(column_type) is _PLAIN_INTEGER:
        def integers(values):  # Arrow refuses an int beyond int64
            if set(map(type, present(values))) <= {int}:
                return pa.array(values, arrow)
            return each(values)
        return integers
    if column_type.strip().lower() in ('string', 'text'):
        def texts(values):
            given = present(values)
            if set(map(type, given)) <= {str} and _utf8('\0'.join(given)):
                return pa.array(values, arrow)
            return each(values)
        return texts
    return each


def _utf8(text: str) -> bool:
    try:
        text.encode('utf-8')
        return True
    except UnicodeEncodeError:
        return False


_PLAIN_INTEGER = coercer('integer')  # integer and bigint: any MySQL integer, then int64's range


def _within_int64(coerce: Callable[[Any], int], value) -> int:
    result = coerce(value)
    if not _INT64[0] <= result <= _INT64[1]:
        raise BadValue('out of the int64 range')
    return result


class _Column(NamedTuple):
    source: str            # the column's name at the source
    name: str              # its Parquet column name
    column_type: str


class _Layout(NamedTuple):
    """How one source table's ops become rows of its target's files."""
    target: str
    key: Tuple[str, ...]
    columns: Tuple[_Column, ...]   # empty: values go to the 'values' JSON column
    schema: pa.Schema
    redacted: FrozenSet[str] = frozenset()  # lower-cased: never shown in a dead letter's detail


def _layout(spec: TableSpec) -> _Layout:
    if not spec.target or '/' in spec.target:
        raise ValueError(f'{spec.source}: target {spec.target!r} cannot name a partition')
    columns = []
    fields = list(METADATA_SCHEMA)
    for source, column_type in spec.columns:
        name = f'col_{source}' if source.lower() in _RESERVED else source
        try:
            arrow = arrow_type(column_type)
        except ValueError as error:
            raise ValueError(f'{spec.source}.{source}: {error}') from None
        columns.append(_Column(source, name, column_type))
        fields.append(pa.field(name, arrow, nullable=True))
    if not columns:
        fields.append(pa.field('values', pa.string(), nullable=True))
    names = [field.name for field in fields]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f'{spec.source}: Parquet column names clash: {clashes}')
    return _Layout(spec.target, tuple(spec.key), tuple(columns), pa.schema(fields),
                   frozenset(column.lower() for column in spec.redact))


class _Plan(NamedTuple):
    """How one layout's declared columns take an op's values: the values of
    ``layout.columns[i]`` go to slot ``i``."""
    slots: Dict[str, int]                 # lower-cased source name -> slot (MySQL
                                          # column names are case-insensitive)
    key_slots: Tuple[Optional[int], ...]  # the slot of each key column, None if undeclared
    coercers: Tuple[Callable[[Any], Any], ...]
    redacted: Tuple[bool, ...]
    arrays: Tuple[Callable[[List[Any]], pa.Array], ...]  # a slot's values, coerced, as Arrow


def _plan(layout: _Layout) -> _Plan:
    slots = {column.source.lower(): slot for slot, column in enumerate(layout.columns)}
    arrows = [layout.schema.field(column.name).type for column in layout.columns]
    coercers = tuple(_coercer(arrow, column.column_type)
                     for arrow, column in zip(arrows, layout.columns))
    return _Plan(
        slots, tuple(slots.get(name.lower()) for name in layout.key), coercers,
        tuple(column.source.lower() in layout.redacted for column in layout.columns),
        tuple(_column_coercer(arrow, column.column_type, coerce)
              for arrow, column, coerce in zip(arrows, layout.columns, coercers)))


class _BadRow(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _check_utf8(texts: List[str], table: str) -> None:
    """Raises _BadRow if a text is not UTF-8 (a lone surrogate); one encode of
    them all, then text by text to name the first that fails."""
    try:
        if _utf8('\0'.join(texts)):
            return
    except TypeError:  # not all texts: found one by one below
        pass
    try:
        for text in texts:
            text.encode('utf-8')
    except UnicodeEncodeError as error:
        raise _BadRow('bad-value', f'{table}: text that is not UTF-8: {error}') from None


class _PartitionRows:
    """The backup rows of one partition, kept in arrival order.

    :meth:`add` turns one op into its row's values, or raises (_BadRow, or
    any error of a malformed op) before storing any of them, so a rejected op
    leaves no trace; :meth:`table` builds the Arrow columns at once. Lists of
    set columns and computed assignments repeat from row to row: each
    distinct one is built once and taken by index, and its texts (like the
    table and column names) are checked for UTF-8 once. Rows hold plain
    values only (no Change), so a large partition leaves the garbage
    collector little to scan: one tuple of the metadata columns per row
    (:data:`_ROW_FIELDS`), turned into columns when the table is built, and
    the declared columns as one list each.
    """

    def __init__(self, layout: _Layout):
        self.schema = layout.schema
        self.count = 0
        self.origins: List[Tuple[int, int, int]] = []  # per row: its batch's, Change's, op's index
        self._rows: List[tuple] = []  # per row: its _ROW_FIELDS
        self._arrays: Optional[Dict[str, pa.Array]] = None  # _rows' columns, once built
        self._set_columns: Dict[Tuple[str, ...], int] = {}
        self._computed: Dict[Tuple[Tuple[str, str], ...], int] = {}
        self._utf8: set = set()  # table and column names found UTF-8
        self._declared = bool(layout.columns)
        if self._declared:  # grown in steps, so an op pays only for the columns it sets
            self._typed: List[List[Any]] = [[] for _ in layout.columns]
        else:
            self._values: List[str] = []

    def add(self, change: Change, op: RowOp, origin: Tuple[int, int, int], key_text: Optional[str],
            layout: _Layout, plan: _Plan) -> str:
        """Stores the row of ``op``; returns the Change's key as JSON (``key_text``,
        or rendered when None) for its next op."""
        table, values, assignments = change.table, op.values, op.assignments
        literals, computed = op_columns(op) if assignments else (dict(values), {})
        pairs = tuple(zip(computed, map(to_sql, computed.values()))) if computed else ()
        computed_index = self._computed.get(pairs)
        if computed_index is None or not self._known_utf8(table, op, literals):
            _check_utf8([table, op.version, op.position, *literals, *computed,
                         *(text for _, text in pairs)], table)
            self._utf8.add(table)
            self._utf8.update(literals)
        kind = op.kind
        if type(kind) is not OpKind:  # an OpKind is its value's text
            kind = kind.value
        if key_text is None:
            key_text = _key_text(change.key)
        if not assignments:
            set_columns = tuple(literals)
        elif kind is OpKind.UPSERT:  # literals: its values; computed: every assignment
            set_columns = tuple({**literals, **computed})
        else:
            set_columns = _set_columns(values, assignments)
        set_columns_index = self._set_columns.get(set_columns)
        if set_columns_index is None:
            set_columns_index = self._set_columns.setdefault(set_columns, len(self._set_columns))
        if computed_index is None:
            computed_index = self._computed.setdefault(pairs, len(self._computed))
        if self._declared:
            typed = self._coerced(change, literals, layout, plan)
        else:
            text = dumps_json({column: None if value is None else _as_text(value)
                               for column, value in literals.items()}).decode('utf-8')
        row = self.count
        self.count = row + 1
        self._arrays = None
        self.origins.append(origin)
        self._rows.append((table, kind, op.version, change.event_time_us, key_text, op.position,
                           set_columns_index, computed_index))
        if self._declared:
            columns = self._typed
            if row == len(columns[0]):
                for column in columns:
                    column.extend([None] * max(row, 64))
            for slot, value in typed:
                columns[slot][row] = value
        else:
            self._values.append(text)
        return key_text

    def _known_utf8(self, table: str, op: RowOp, literals: Dict[str, Any]) -> bool:
        """Whether the row's texts are known to be UTF-8 (its computed
        assignments' were checked with them): the table and column names seen
        before, an ASCII version and position. False for anything else, even
        not text: :func:`_check_utf8` reports it."""
        try:
            return (table in self._utf8 and self._utf8.issuperset(literals)
                    and op.version.isascii() and op.position.isascii())
        except Exception:  # pylint: disable=broad-except
            return False

    @staticmethod
    def _coerced(change: Change, literals: Dict[str, Any], layout: _Layout,
                 plan: _Plan) -> List[Tuple[int, Any]]:
        """(slot, coerced value) of every value the op gives, key columns from
        the Change's key; raises _BadRow for the first value, in column order,
        that cannot be stored."""
        key = change.key
        given: Dict[Optional[int], Any] = (dict(zip(plan.key_slots, key))
                                           if len(key) == len(layout.key) else {})
        given.pop(None, None)  # key columns not declared
        slots = plan.slots
        try:  # every name lower-cased, as a log mostly has them: at once
            given.update(zip(map(slots.__getitem__, literals), literals.values()))
        except KeyError:
            for name, value in literals.items():
                slot = slots.get(name)
                if slot is None:
                    slot = slots.get(name.lower())
                    if slot is None:
                        raise _BadRow('unknown-column',
                                      f'{change.table} declares no column {name!r}') from None
                given[slot] = value
        coercers = plan.coercers
        typed = []
        try:  # as given; the column order only matters for the error reported
            for slot, value in given.items():
                if value is not None:
                    typed.append((slot, coercers[slot](value)))
            return typed
        except Exception:  # pylint: disable=broad-except
            pass
        typed = []
        for slot in sorted(given):
            value = given[slot]
            if value is None:
                continue
            try:
                typed.append((slot, coercers[slot](value)))
            except BadValue as error:
                column = layout.columns[slot]
                shown = '<redacted>' if plan.redacted[slot] else f'{value!r:.100}'
                raise _BadRow('bad-value', f'{change.table}.{column.source}: cannot store '
                              f'{shown} as {column.column_type}: {error}') from None
        return typed

    def _array(self, name: str) -> pa.Array:
        """A metadata column (of :data:`_ROW_FIELDS`) of every row as Arrow,
        kept until a row is added: the identities and the table share it."""
        if self._arrays is None:
            self._arrays = {}
        array = self._arrays.get(name)
        if array is None:
            field = _ROW_FIELDS.index(name)
            kind = pa.int32() if name in ('set_columns', 'computed') else METADATA_SCHEMA.field(
                name).type
            array = pa.array(list(map(operator.itemgetter(field), self._rows)), kind)
            self._arrays[name] = array
        return array

    def origin_arrays(self) -> List[pa.Array]:
        """Per row, its batch's, Change's and op's index: one array each."""
        columns = list(zip(*self.origins)) or [(), (), ()]
        return [pa.array(column, pa.int64()) for column in columns]

    def identities(self) -> pa.Table:
        """The columns that order the rows and name the files."""
        return pa.table([self._array(name) for name in _IDENTITY], names=_IDENTITY)

    def table(self, rows: Optional[List[int]] = None) -> pa.Table:
        """The rows (all, or those at ``rows``, in that order) as an Arrow table."""
        def metadata(name, kind):
            if rows is None:
                return self._array(name)
            field = _ROW_FIELDS.index(name)
            return pa.array([self._rows[row][field] for row in rows], kind)

        def distinct(interned, field):
            return pa.array([list(value) for value in interned], type=field.type).take(
                metadata(field.name, pa.int32()))

        arrays = []
        for field in METADATA_SCHEMA:
            if field.name == 'set_columns':
                arrays.append(distinct(self._set_columns, field))
            elif field.name == 'computed':
                arrays.append(distinct(self._computed, field))
            else:
                arrays.append(metadata(field.name, field.type))
        declared = self._typed if self._declared else [self._values]
        for values, field in zip(declared, list(self.schema)[len(METADATA_SCHEMA):]):
            picked = values[:self.count] if rows is None else [values[row] for row in rows]
            arrays.append(pa.array(picked, type=field.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)


class _ColumnarRows:
    """The backup rows of whole log batches built column by column
    (:func:`_batch_table`), kept in arrival order: the counterpart of
    :class:`_PartitionRows` for batches that need no check or coercion value
    by value. Its tables are built, so Arrow never refuses one of its rows."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.count = 0
        self._tables: List[pa.Table] = []
        self._batches: List[Tuple[int, int]] = []  # per table: its batch's index, rows

    def add(self, table: pa.Table, batch: int) -> None:
        self._tables.append(table)
        self._batches.append((batch, table.num_rows))
        self.count += table.num_rows

    def identities(self) -> pa.Table:
        return self.table().select(list(_IDENTITY))

    def table(self, rows: Optional[List[int]] = None) -> pa.Table:
        """The rows (all, or those at ``rows``, in that order) as an Arrow table."""
        table = pa.concat_tables(self._tables)
        return table if rows is None else table.take(pa.array(rows, pa.int64()))

    def origin_arrays(self) -> List[pa.Array]:
        """Per row, its batch's, Change's and op's index (one op per Change)."""
        return [pa.array(np.repeat([batch for batch, _ in self._batches],
                                   [rows for _, rows in self._batches])),
                pa.array(np.concatenate([np.arange(rows) for _, rows in self._batches])),
                pa.array(np.zeros(self.count, np.int64))]


_TABLE_OF = operator.attrgetter('table')
_OPS_OF = operator.attrgetter('ops')
_KEY_OF = operator.attrgetter('key')
_TIME_OF = operator.attrgetter('event_time_us')
_KIND_OF = operator.attrgetter('kind')
_VERSION_OF = operator.attrgetter('version')
_POSITION_OF = operator.attrgetter('position')


class _Shape(NamedTuple):
    """The ops of a batch that set the same columns the same way."""
    rows: List[int]                  # their indices in the batch
    values: List[tuple]              # per op, its literal values (a column given twice:
                                     # twice, the last one stored)
    texts: List[tuple]               # per op, its computed assignments' SQL texts


def _batch_table(changes: List[Change], layouts: Dict[str, _Layout],
                 plans: Dict[str, _Plan]) -> Optional[pa.Table]:
    """The rows of a log batch's Changes as one Arrow table in arrival order,
    built column by column: what :meth:`_PartitionRows.add` makes of them op
    by op. None (nothing to undo) when any of them needs the op-by-op path:
    Changes of several tables or of several ops, a table without declared
    columns, a value dead-lettered or turned into a row's value only by
    checks of its own, anything malformed."""
    try:
        tables = set(map(_TABLE_OF, changes))
        if len(tables) != 1:
            return None
        table, = tables
        layout = layouts.get(table)
        if layout is None or not layout.columns:
            return None
        plan = plans[table]
        ops_of = list(map(_OPS_OF, changes))
        if set(map(type, ops_of)) != {tuple} or set(map(len, ops_of)) != {1}:
            return None
        ops = list(map(_FIRST, ops_of))
        keys = list(map(_KEY_OF, changes))
        if (set(map(type, ops)) != {RowOp} or set(map(type, keys)) != {tuple}
                or set(map(len, keys)) != {len(layout.key)}):
            return None
        kinds = list(map(_KIND_OF, ops))
        versions, positions = list(map(_VERSION_OF, ops)), list(map(_POSITION_OF, ops))
        if (set(map(type, kinds)) != {OpKind} or set(map(type, versions)) != {str}
                or set(map(type, positions)) != {str} or type(table) is not str
                or not _utf8('\0'.join([table, *versions, *positions]))):
            return None
        shapes = _shapes(ops)
        if shapes is None:
            return None
        return _shaped_table(layout, plan, table, changes, keys, kinds, versions, positions,
                             shapes)
    except Exception:  # pylint: disable=broad-except  # the op-by-op path reports it
        return None


def _shapes(ops: List[RowOp]) -> Optional[Dict[tuple, _Shape]]:
    """The ops by (literal columns, computed columns, set columns; the last
    () for an op without assignments and None for an UPSERT, whose set
    columns follow from the others): per op,
    :func:`changeflow.sql.rowstate.op_columns` and the computed assignments'
    SQL texts, as :meth:`_PartitionRows.add` takes them, those of equal
    assignments found once (:func:`_exact`), an op's values as it gives them
    when no assignment adds a literal; None if a text is not UTF-8."""
    shapes: Dict[tuple, _Shape] = {}
    texts_seen: List[str] = []
    upsert = OpKind.UPSERT
    known: Tuple[Dict[tuple, tuple], ...] = ({}, {})  # exact assignments -> their _assigned,
    # of other ops and of UPSERTs
    for row, op in enumerate(ops):
        assignments, values = op.assignments, op.values
        if assignments:
            is_upsert = op.kind is upsert
            exact = _exact(assignments)
            found = known[is_upsert].get(assignments) if exact else None
            if found is None:
                found = _assigned(op, is_upsert)
                texts_seen += found[2]
                if exact:
                    known[is_upsert][assignments] = found
            assigned_literals, computed, texts, set_columns = found
            if values and not is_upsert:
                set_columns = _set_columns(values, assignments)
            if assigned_literals:
                literals = dict(values)
                literals.update(assigned_literals)
                names, literal_values = tuple(literals), tuple(literals.values())
            else:
                names, literal_values = zip(*values) if values else ((), ())
            key = (names, computed, set_columns)  # an UPSERT's: None
        else:
            texts = ()
            names, literal_values = zip(*values) if values else ((), ())
            key = (names, (), ())
        shape = shapes.get(key)
        if shape is None:
            shape = shapes[key] = _Shape([], [], [])
        rows, shape_values, shape_texts = shape
        rows.append(row)
        shape_values.append(literal_values)
        shape_texts.append(texts)
    if not _utf8('\0'.join(texts_seen)):
        return None
    return shapes


_EXACT_LITERALS = (int, str)  # types whose equal values are alike (unlike 1 and True, 1.0 and 1.00)


def _exact(assignments) -> bool:
    """Whether every assignment equal to these is alike, for :func:`_assigned`
    to give the same: each a literal or a binary operation on columns and
    literals, every literal an int or a str."""
    for _, expr in assignments:
        if expr[0] == 'bin':
            if type(expr[1]) is not str:
                return False
            for operand in expr[2:]:
                if operand[0] != 'col' and (operand[0] != 'lit'
                                            or type(operand[1]) not in _EXACT_LITERALS):
                    return False
        elif expr[0] != 'lit' or type(expr[1]) not in _EXACT_LITERALS:
            return False
    return True


def _assigned(op: RowOp, upsert: bool) -> Tuple[tuple, tuple, tuple, Optional[tuple]]:
    """What an op's assignments add to its row, as :func:`op_columns` and
    :func:`to_sql` make it: (the literal assignments' (column, value), the
    computed columns, their SQL texts, the set columns of an op without
    values, None for an UPSERT)."""
    literals, computed = op_columns(op._replace(values=()))
    return (tuple(literals.items()), tuple(computed), tuple(map(to_sql, computed.values())),
            None if upsert else _set_columns((), op.assignments))


def _shaped_table(layout: _Layout, plan: _Plan, table: str, changes: List[Change],
                  keys: List[tuple], kinds: List[OpKind], versions: List[str],
                  positions: List[str], shapes: Dict[tuple, _Shape]) -> Optional[pa.Table]:
    """:func:`_batch_table`'s table from the batch's ops by shape: the
    declared columns and ``computed`` built shape after shape, then put back
    in arrival order."""
    count = len(changes)
    order = list(itertools.chain.from_iterable(shape.rows for shape in shapes.values()))
    arrival = None if len(shapes) == 1 else pa.array(np.argsort(order, kind='stable'))
    slots_by_shape, set_columns = [], []
    for (literals, computed, fixed), shape in shapes.items():
        if not _utf8('\0'.join([*literals, *computed])):
            return None
        slots = {}
        for index, name in enumerate(literals):
            slot = plan.slots.get(name)
            if slot is None:
                slot = plan.slots.get(name.lower())
                if slot is None:
                    return None  # unknown-column
            slots[slot] = index
        slots_by_shape.append(slots)
        if fixed == ():  # no assignments: its values' columns, each once
            columns = dict.fromkeys(literals)
        elif fixed is None:  # an UPSERT: its values', then its assignments' columns
            columns = dict.fromkeys(literals + computed)
        else:
            columns = fixed
        set_columns.append(list(columns))
    key_positions = {slot: position for position, slot in enumerate(plan.key_slots)
                     if slot is not None}
    shaped_keys = [keys[row] for row in order]

    def in_arrival(array):
        return array if arrival is None else array.take(arrival)

    declared = []
    for slot, convert in enumerate(plan.arrays):
        position = key_positions.get(slot)
        values: List[Any] = []
        start = 0
        for slots, shape in zip(slots_by_shape, shapes.values()):
            index = slots.get(slot)
            if index is not None:
                values.extend(map(operator.itemgetter(index), shape.values))
            elif position is not None:
                values.extend(map(operator.itemgetter(position),
                                  shaped_keys[start:start + len(shape.rows)]))
            else:
                values.extend(itertools.repeat(None, len(shape.rows)))
            start += len(shape.rows)
        declared.append(in_arrival(convert(values)))
    shape_of = np.empty(count, np.int32)
    for number, shape in enumerate(shapes.values()):
        shape_of[shape.rows] = number
    computed_names = [computed for _, computed, _ in shapes]
    sizes = np.repeat([len(names) for names in computed_names],
                      [len(shape.rows) for shape in shapes.values()])
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
    names = list(itertools.chain.from_iterable(
        names * len(shape.rows) for names, shape in zip(computed_names, shapes.values())))
    entries = list(itertools.chain.from_iterable(itertools.chain.from_iterable(
        shape.texts for shape in shapes.values())))
    computed = in_arrival(pa.MapArray.from_arrays(offsets, pa.array(names, pa.string()),
                                                  pa.array(entries, pa.string())))
    metadata = {
        'source_table': pa.array([table] * count, pa.string()),
        'op': pa.array(kinds, pa.string()),
        'version': pa.array(versions, pa.string()),
        'event_time': pa.array(list(map(_TIME_OF, changes)), METADATA_SCHEMA.field(
            'event_time').type),
        'key': _key_texts(keys),
        'position': pa.array(positions, pa.string()),
        'set_columns': pa.array(set_columns, pa.list_(pa.string())).take(pa.array(shape_of)),
        'computed': computed,
    }
    return pa.Table.from_arrays([metadata[name] for name in METADATA_SCHEMA.names] + declared,
                                schema=layout.schema)


def _key_texts(keys: List[tuple]) -> pa.Array:
    """The keys as JSON arrays (:func:`_key_text`): keys of one integer within
    int64 written by Arrow."""
    if set(map(len, keys)) == {1}:
        values = list(map(_FIRST, keys))
        if (set(map(type, values)) == {int} and _INT64[0] <= min(values)
                and max(values) <= _INT64[1]):
            return pc.binary_join_element_wise(
                '[', pa.array(values, pa.int64()).cast(pa.string()), ']', '')
    return pa.array(list(map(_key_text, keys)), pa.string())


# A row's metadata as _PartitionRows holds it: set_columns and computed are indices.
_ROW_FIELDS = ('source_table', 'op', 'version', 'event_time', 'key', 'position',
               'set_columns', 'computed')
_KEY_INTEGERS = (-2 ** 63, 2 ** 64 - 1)  # what orjson writes as it is


def _key_text(key) -> str:
    """A Change's key as a JSON array (see :func:`json_value`); a tuple of
    integers written directly, as orjson writes them."""
    if type(key) is tuple:
        parts = []
        for value in key:
            if type(value) is not int or not _KEY_INTEGERS[0] <= value <= _KEY_INTEGERS[1]:
                break
            parts.append(str(value))
        else:
            return '[' + ','.join(parts) + ']'
    return dumps_json(json_value(list(key))).decode('utf-8')


_FIRST = operator.itemgetter(0)


def _set_columns(values, assignments) -> Tuple[str, ...]:
    """The columns an op sets, each once, in order: its values', then its assignments'."""
    try:
        return tuple(dict.fromkeys(map(_FIRST, values + assignments)))
    except Exception:  # pylint: disable=broad-except  # not tuples of pairs
        return tuple(dict.fromkeys([column for column, _ in (*values, *assignments)]))


_IDENTITY = ('version', 'source_table', 'key', 'position')  # the order of a partition's rows
_HASHED_ROWS = 65_536  # identities joined into one text at a time, far below Arrow's 2 GiB
_SLICE_ROWS = 50_000  # a partition's rows held as Python values at once, and merged at once
_ORIGIN_COLUMNS = ('__changeflow_batch', '__changeflow_change', '__changeflow_op')
_FAILED_COLUMN = '__changeflow_refused'  # after the origins: the row's error, if Arrow refused it


def _as_text(value) -> str:
    rendered = json_value(value)
    return rendered if isinstance(rendered, str) else dumps_json(rendered).decode('utf-8')


def _utc_day(time_us: int) -> str:
    return (_EPOCH + datetime.timedelta(microseconds=time_us)).date().isoformat()


@guarded(_STEP, changes_original, lambda change: change.ops[-1].position)
class _KeyByPartition(beam.DoFn):
    """Change -> (partition, packed [Change]): all ops of a Change share its
    table, key and time, so its rows share a partition (target, day, write
    shard). Never raises: a Change that has no partition is keyed
    _UNROUTABLE and rejected after the grouping, where every dead letter of
    this sink comes from."""

    def __init__(self, targets: Dict[str, str], shards: int = 1):
        self._targets = targets
        self._shards = shards
        self._received = Metrics.counter(f'changeflow.{_STEP}', 'received')

    def process(self, change: Change):
        self._received.inc(len(change.ops))
        if change.ops:
            # Packed here: Beam's coder encodes a NamedTuple field by field and
            # pickles its class with every one, at twice the cost or more.
            yield _partition(change, self._targets, self._shards), pack([change])


def _partition(change: Change, targets: Dict[str, str], shards: int,
               shard: Optional[int] = None) -> Tuple[str, str, int]:
    """(target, day, write shard), the write shard ``shard`` when known."""
    target = targets.get(change.table)
    try:
        day = _utc_day(change.event_time_us) if target else None
    except (ArithmeticError, ValueError, TypeError):
        return _UNROUTABLE
    if not day:
        return _UNROUTABLE
    return target, day, _write_shard(change, shards) if shard is None else shard


def _write_shard(change: Change, shards: int) -> int:
    """The write shard of a Change's rows: its row's shard among ``shards``
    (:func:`changeflow.io.sql.shards_of`, a stable hash of the table and key
    values, the same in every run, process and runner), 0 for a whole-table
    op and for a key that cannot be hashed (whose ops the writer
    dead-letters). Part of the file format: a writer reads only the files of
    its own shard of the same count."""
    if shards == 1 or not change.key:
        return 0
    try:
        return next(iter(shards_of(change, shards)))[0][1]
    except Exception:  # pylint: disable=broad-except
        return 0


def _single(change: Change, op: RowOp) -> Change:
    """The Change of one op: the original of that op's dead letter."""
    return Change(change.table, change.key, (op,), change.event_time_us)


class _FollowedLayouts:
    """The layouts of the configured tables, and of the tables the log's DDL
    renamed, created or altered when a schema timeline is given."""

    def _current(self, timeline):
        if timeline is None:
            return self._layouts, self._plans
        if timeline is not self._timeline:
            self._timeline = timeline
            self._followed = {**self._layouts, **{
                spec.source: _layout(spec) for spec in timeline.all_specs if spec.columns}}
            self._followed_plans = {source: _plan(layout)
                                    for source, layout in self._followed.items()}
        return self._followed, self._followed_plans

    def setup(self):
        self._plans = {source: _plan(layout) for source, layout in self._layouts.items()}
        self._timeline = None


@guarded(_STEP, lambda batch: changes_original(batch_changes(batch)),
         lambda batch: f'shard {batch[0]}/{batch[1]}')
class _KeyBatchByPartition(_FollowedLayouts, beam.DoFn):
    """A log batch (table, shard, packed source ops) -> (partition, packed
    Changes) per (target, day, write shard) it touches. When the write
    shards divide the batches' shards (``fold_shards``), a batch's rows all
    have its shard's write shard (the shard modulo ``shards``; a whole-table
    op only comes in shard 0's): none is hashed again, and a batch of one
    table and day goes on packed as it came, found so from its header
    (:func:`changeflow.transforms.runs.batch_span`) without decoding it."""

    def __init__(self, layouts: Dict[str, _Layout], shards: int = 1,
                 fold_shards: int = DEFAULT_SHARDS):
        self._layouts = layouts
        self._shards = shards
        self._fold_shards = fold_shards
        self._received = Metrics.counter(f'changeflow.{_STEP}', 'received')

    def process(self, batch, timeline=None):
        layouts, _ = self._current(timeline)
        with gc_paused():  # a batch's Changes: many small objects, no cycles, freed by then
            return self._keyed(batch, layouts)

    def _keyed(self, batch, layouts) -> List[Tuple[Tuple[str, str, int], bytes]]:
        targets = {source: layout.target for source, layout in layouts.items()}
        shard = batch[1] % self._shards if self._fold_shards % self._shards == 0 else None
        span = batch_span(batch)
        changes = batch_changes(batch) if span is None else None  # no span: from the Changes
        self._received.inc(span.ops if span is not None
                           else sum(map(len, map(_OPS_OF, changes))))
        if shard is not None:
            partition = (_span_partition(span, targets, shard) if span is not None
                         else _one_partition(changes, targets, shard))
            if partition is not None:
                return [(partition, batch[2])]  # one partition: packed as it came
        if changes is None:
            changes = batch_changes(batch)
        by_partition: Dict[Tuple[str, str, int], List[Change]] = {}
        for change in changes:
            if change.ops:
                by_partition.setdefault(_partition(change, targets, self._shards, shard),
                                        []).append(change)
        if len(by_partition) == 1 and sum(map(len, by_partition.values())) == len(changes):
            return [(next(iter(by_partition)), batch[2])]  # one partition: packed as it came
        return [(partition, pack(changes)) for partition, changes in sorted(by_partition.items())]


def _span_partition(span: Span, targets: Dict[str, str],
                    shard: int) -> Optional[Tuple[str, str, int]]:
    """:func:`_one_partition` from a batch's :class:`~changeflow.transforms.runs.Span`."""
    target = targets.get(span.table)
    if not target or span.opless:
        return None
    try:
        day = _utc_day(span.earliest_us)
        return (target, day, shard) if _utc_day(span.latest_us) == day else None
    except (ArithmeticError, ValueError, TypeError):  # each Change's own partition tells
        return None


def _one_partition(changes: List[Change], targets: Dict[str, str],
                   shard: int) -> Optional[Tuple[str, str, int]]:
    """The partition of every Change when they all have one (ops, one
    target, their earliest and latest time on one day) and their write
    shard is ``shard``, found without a day per Change; None otherwise."""
    try:
        found = {targets.get(table) for table in set(map(_TABLE_OF, changes))}
        times = list(map(_TIME_OF, changes))
        if (len(found) != 1 or None in found or set(map(type, times)) != {int}
                or 0 in set(map(len, map(_OPS_OF, changes)))):
            return None
        target, = found
        day = _utc_day(min(times))
        return (target, day, shard) if target and _utc_day(max(times)) == day else None
    except Exception:  # pylint: disable=broad-except  # each Change's own partition tells
        return None


def _grouped_original(element):
    partition, values = element
    if partition == _FAILED:
        return b''
    return changes_original([change for data in values for change in unpack(data)])


@guarded(_STEP, _grouped_original, lambda element: '/'.join(map(str, element[0])),
         buffered=False)
class _WritePartitionFn(_FollowedLayouts, beam.DoFn):
    """(partition, packed Changes) -> Parquet files of the rows the backup
    does not hold yet, and dead letters."""

    def __init__(self, path: str, layouts: Dict[str, _Layout], rows_per_file: int,
                 shards: int = 1):
        self._path = path
        self._layouts = layouts
        self._rows_per_file = rows_per_file
        self._shards = shards
        namespace = f'changeflow.{_STEP}'
        self._written = Metrics.counter(namespace, 'written')
        self._skipped_existing = Metrics.counter(namespace, 'skipped_existing')
        self._dead_lettered = Metrics.counter(namespace, 'dead_lettered')
        self._files_written = Metrics.counter(namespace, 'files_written')
        self._files_read = Metrics.counter(namespace, 'files_read')

    def process(self, element, timeline=None):
        partition, values = element
        if partition == _FAILED:
            yield from (beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter) for letter in values)
            return
        layouts, plans = self._current(timeline)
        with gc_paused():  # a slice's Changes and rows: many small objects, no cycles
            outputs = list(self._write_partition(partition, values, layouts, plans))
        yield from outputs

    def _write_partition(self, partition, values: Iterable[bytes], layouts, plans):
        """The grouped values are read a packed batch at a time; every
        ``_SLICE_ROWS`` rows become a sorted slice spilled to a local file
        (none for a smaller partition), and the slices are merged into files."""
        if partition == _UNROUTABLE:
            for data in values:
                for change in unpack(data):
                    for op in change.ops:
                        if change.table in layouts:
                            yield self._reject(_single(change, op), 'bad-change',
                                               f'event time {change.event_time_us!r} has no date')
                        else:
                            yield self._reject(_single(change, op), 'unknown-table',
                                               f'no TableSpec for {change.table!r}')
            return
        held = _Held(functools.partial(self._partition_files, partition), self._files_read)
        slices: List[pa.Table] = []
        errors: List[Exception] = []  # of the rows Arrow refused, by their _FAILED_COLUMN value
        maps: List[mmap.mmap] = []  # of the spilled slices
        rows = None  # the slice being filled: _ColumnarRows or _PartitionRows
        with tempfile.TemporaryDirectory(prefix='changeflow-parquet-') as spill:
            for batch, data in enumerate(values):
                changes = unpack(data)
                built = _batch_table(changes, layouts, plans)
                if built is not None:
                    if rows is not None and type(rows) is not _ColumnarRows:
                        if rows.count:
                            slices.append(self._sorted_slice(rows, held, errors, spill, maps))
                        rows = None
                    if rows is None:
                        rows = _ColumnarRows(built.schema)
                    rows.add(built, batch)
                    if rows.count >= _SLICE_ROWS:
                        slices.append(self._sorted_slice(rows, held, errors, spill, maps))
                        rows = None
                    continue
                if type(rows) is _ColumnarRows:
                    slices.append(self._sorted_slice(rows, held, errors, spill, maps))
                    rows = None
                for index, change in enumerate(changes):
                    layout, plan = layouts[change.table], plans[change.table]
                    if rows is None:
                        rows = _PartitionRows(layout)
                    key_text = None
                    for number, op in enumerate(change.ops):
                        try:
                            key_text = rows.add(change, op, (batch, index, number), key_text,
                                                layout, plan)
                        except _BadRow as error:
                            yield self._reject(_single(change, op), error.reason, error.detail)
                        except Exception as error:  # a malformed op: dead-lettered, the others written
                            yield self._reject(_single(change, op), 'bad-change',
                                               f'{type(error).__name__}: {error}')
                    if rows.count >= _SLICE_ROWS:
                        slices.append(self._sorted_slice(rows, held, errors, spill, maps))
                        rows = _PartitionRows(layout)
            if rows is not None and rows.count:
                slices.append(self._sorted_slice(rows, held, errors, None, maps))
            slices = [piece for piece in slices if piece.num_rows]
            if slices:
                yield from self._write_files(partition, slices, errors, values, maps)

    def _sorted_slice(self, rows: '_PartitionRows', held: '_Held', errors: List[Exception],
                      spill: Optional[str], maps: List[mmap.mmap]) -> pa.Table:
        """The rows no file holds yet, sorted by identity (stably: ties in
        arrival order), with their origins (_ORIGIN_COLUMNS) and, for a row
        Arrow refuses, the index of its error in ``errors`` (its columns
        null); spilled to ``spill`` and read back memory-mapped (the map
        added to ``maps``) when given."""
        identities = rows.identities()
        fresh = held.fresh(identities)
        if fresh is not None:
            self._skipped_existing.inc(rows.count - len(fresh))
            identities = identities.take(fresh)
        order = pc.sort_indices(identities, sort_keys=[(name, 'ascending') for name in _IDENTITY])
        if fresh is not None:
            order = fresh.take(order)
        try:
            table = rows.table().take(order)
            failed = pa.nulls(len(order), pa.int32())
        except Exception:  # pylint: disable=broad-except
            table, failed = _refused_apart(rows, order.to_pylist(), errors)
        for name, values in zip(_ORIGIN_COLUMNS, rows.origin_arrays()):
            table = table.append_column(name, values.take(order))
        table = table.append_column(_FAILED_COLUMN, failed)
        if spill is None or not table.num_rows:
            return table
        path = os.path.join(spill, f'{len(maps)}.arrow')
        with pa.OSFile(path, 'wb') as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        with open(path, 'rb') as f:
            maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        return pa.ipc.open_file(pa.py_buffer(maps[-1])).read_all()

    def _write_files(self, partition, slices: List[pa.Table], errors: List[Exception],
                     values: Iterable[bytes], maps: List[mmap.mmap]):
        """Streams the merged slices into files of ``rows_per_file`` rows, each
        written a row group at a time as the merge yields its rows and named
        once its last row is in (:class:`_PartFile`). The rows of a file that
        failed are dead-lettered after the merge, their origins found by
        merging the slices' identities again. The pages of the spilled slices
        a merge round read are let go after it (they stay in the page cache,
        out of the worker's RSS)."""
        directory = self._directory(partition)
        failed: List[Tuple[int, int, str]] = []  # (first row in merged order, rows, detail)
        done = 0  # rows in the files finished
        part = None
        for piece in _merged(slices):
            for mapped in maps:
                mapped.madvise(mmap.MADV_DONTNEED)
            start = 0
            while start < piece.num_rows:
                if part is None:
                    part = _PartFile(directory, errors)
                taken = min(piece.num_rows - start, self._rows_per_file - part.rows)
                part.add(piece.slice(start, taken))
                start += taken
                if part.rows == self._rows_per_file:
                    yield from self._finish(part, partition, done, failed)
                    done, part = done + part.rows, None
        if part is not None:
            yield from self._finish(part, partition, done, failed)
        ranges = [(first, rows) for first, rows, _ in failed]
        for (_, _, detail), origins in zip(failed, _failed_origins(slices, ranges)):
            for change in _originals(values, origins):
                yield self._reject(change, 'write-failed', detail)

    def _finish(self, part: '_PartFile', partition, first: int,
                failed: List[Tuple[int, int, str]]):
        """The file complete under its name, or (if it could not be written,
        or holds a row Arrow refused) its rows noted in ``failed``."""
        path = FileSystems.join(self._directory(partition), part.name(partition[2], self._shards))
        error = part.commit(path)
        if error is not None:
            failed.append((first, part.rows, f'{path}: {error}'))
            return
        self._written.inc(part.rows)
        self._files_written.inc()
        yield WrittenFile(path, part.rows)

    def _directory(self, partition) -> str:
        target, day, _ = partition
        return FileSystems.join(self._path, f'table={target}', f'date={day}')

    def _partition_files(self, partition) -> List[str]:
        """The files of the partition that may hold rows of its write shard:
        its own, and those of another shard count or of no shard (written
        before write shards), whose keys may be any."""
        _, _, shard = partition
        pattern = FileSystems.join(self._directory(partition), 'part-*.parquet')
        paths = sorted(meta.path for meta in FileSystems.match([pattern])[0].metadata_list)
        return [path for path in paths if _may_hold(path, shard, self._shards)]

    def _reject(self, change: Change, reason: str, detail: str):
        self._dead_lettered.inc()
        return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            _STEP, reason, detail, change_json(change), change.ops[0].position))


_NAME_VERSION = re.compile(r'[0-9A-Za-z.]{1,100}')
_FILE_NAME = re.compile(r'part-([0-9A-Za-z.]{1,100})-([0-9A-Za-z.]{1,100})-[0-9a-f]{16}'
                        r'(?:-[0-9]+of[0-9]+)?\.parquet')
_SHARD_IN_NAME = re.compile(r'-([0-9]+)of([0-9]+)\.parquet$')
_HELD = ('version', 'source_table', 'key')  # a source op's identity in the backup
_ROW_GROUP_ROWS = 65_536  # rows of a file written (and held as Arrow) at once


def _name_part(version: str) -> str:
    return version if _NAME_VERSION.fullmatch(version) else '_'


def _may_hold(path: str, shard: int, shards: int) -> bool:
    """Whether the file at ``path`` may hold rows of write shard ``shard`` of ``shards``."""
    match = _SHARD_IN_NAME.search(path)
    return match is None or int(match.group(2)) != shards or int(match.group(1)) == shard


class _PartFile:
    """One file of a partition's rows, filled in identity order as the merge
    yields them: written ``_ROW_GROUP_ROWS`` rows (a row group) at a time to
    a staged file (:class:`changeflow.io.files.StagedFile`), its name's first
    and last version and hash of its rows' identities kept as they come, and
    put under that name by :meth:`commit`. After its first failure (a row
    Arrow refused, or an error writing) its rows are only hashed, so the
    failed file is still named."""

    def __init__(self, directory: str, errors: List[Exception]):
        self.rows = 0
        self._directory = directory
        self._errors = errors  # of the rows Arrow refused, by their _FAILED_COLUMN value
        self._refused: Optional[Exception] = None  # the first refused row's error
        self._failure: Optional[Exception] = None  # the error writing
        self._digest = hashlib.sha256()
        self._first = self._last = ''
        self._pending: List[pa.Table] = []  # rows not yet in a row group
        self._pending_rows = 0
        self._staged: Optional[StagedFile] = None
        self._writer: Optional[pq.ParquetWriter] = None

    def add(self, rows: pa.Table) -> None:
        """The next rows of the file (with their origin and refusal columns)."""
        if not rows.num_rows:
            return
        self._hash(rows)
        versions = rows.column('version')
        if not self.rows:
            self._first = versions[0].as_py()
        self._last = versions[-1].as_py()
        self.rows += rows.num_rows
        refused = rows.column(_FAILED_COLUMN).drop_null()
        if len(refused) and self._refused is None:
            self._refused = self._errors[refused[0].as_py()]
            self._abandon()
        if self._failed():
            return
        self._pending.append(rows.select(range(rows.num_columns - len(_ORIGIN_COLUMNS) - 1)))
        self._pending_rows += rows.num_rows
        while self._pending_rows >= _ROW_GROUP_ROWS and not self._failed():
            self._write_group(_ROW_GROUP_ROWS)

    def name(self, shard: int, shards: int) -> str:
        return (f'part-{_name_part(self._first)}-{_name_part(self._last)}-'
                f'{self._digest.hexdigest()[:16]}-{shard}of{shards}.parquet')

    def commit(self, path: str) -> Optional[Exception]:
        """The file complete under ``path``; or, if it failed, its error (a
        refused row's first), nothing left under any name."""
        if not self._failed():
            try:
                if self._pending_rows:
                    self._write_group(self._pending_rows)
                if not self._failed():
                    self._writer.close()
                    self._writer = None
                    self._staged.commit(path)
                    self._staged = None
            except Exception as error:  # pylint: disable=broad-except
                self._fail(error)
        return self._refused or self._failure

    def _hash(self, rows: pa.Table) -> None:
        """The identities of ``rows`` into the digest, one per line, tab-separated
        (joined by Arrow, ``_HASHED_ROWS`` at a time), lines after those of
        the rows before."""
        for start in range(0, rows.num_rows, _HASHED_ROWS):
            part = rows.slice(start, _HASHED_ROWS)
            lines = pc.binary_join_element_wise(
                *(part.column(name).combine_chunks() for name in _IDENTITY), '\t')
            text = pc.binary_join(pa.ListArray.from_arrays(
                pa.array([0, len(lines)], pa.int32()), lines), '\n')[0]
            self._digest.update(b'\n' if self.rows or start else b'')
            self._digest.update(text.as_buffer())

    def _write_group(self, count: int) -> None:
        rows = pa.concat_tables(self._pending)
        self._pending = [rows.slice(count)] if count < rows.num_rows else []
        self._pending_rows -= count
        try:
            group = rows.slice(0, count).combine_chunks()
            if self._writer is None:
                self._staged = StagedFile(self._directory)
                self._writer = pq.ParquetWriter(self._staged.path, group.schema,
                                                compression='snappy')
            self._writer.write_table(group, row_group_size=count)
        except Exception as error:  # pylint: disable=broad-except
            self._fail(error)

    def _failed(self) -> bool:
        return self._refused is not None or self._failure is not None

    def _fail(self, error: Exception) -> None:
        if self._failure is None:
            self._failure = error
        self._abandon()

    def _abandon(self) -> None:
        """Drops what was written and the rows not yet written."""
        self._pending, self._pending_rows = [], 0
        writer, staged, self._writer, self._staged = self._writer, self._staged, None, None
        try:
            if writer is not None:
                writer.close()
        except Exception:  # pylint: disable=broad-except
            pass  # the staged file is dropped: what it holds no longer matters
        if staged is not None:
            staged.discard()


def _read_identities(path: str) -> pa.Table:
    if FileSystems.get_scheme(path) is None:
        return pq.read_table(path, columns=list(_HELD), partitioning=None)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return pq.read_table(pa.BufferReader(f.read()), columns=list(_HELD))


def _identity_text(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(
        *(table.column(name).combine_chunks() for name in _HELD), '\t')


class _Held:
    """The identities the files of one partition hold, read as the slices
    need them: a file only once, only its identity columns, and only when its
    version range (in its name) meets a slice's."""

    def __init__(self, paths: Callable[[], List[str]], files_read):
        self._paths = paths
        self._unread: Optional[List[str]] = None
        self._files_read = files_read
        self._texts: Optional[pa.Array] = None

    def fresh(self, identities: pa.Table) -> Optional[pa.Array]:
        """The indices of the rows whose (version, source table, key) no file
        of the partition holds, or None when no file read so far may hold any."""
        if self._unread is None:
            self._unread = self._paths()
        versions = identities.column('version')
        low, high = pc.min(versions).as_py(), pc.max(versions).as_py()
        unread, texts = [], [] if self._texts is None else [self._texts]
        for path in self._unread:
            match = _FILE_NAME.match(path.rsplit('/', 1)[-1])
            if match and (match.group(1) > high or match.group(2) < low):
                unread.append(path)
                continue
            self._files_read.inc()
            texts.append(_identity_text(_read_identities(path)))
        self._unread = unread
        if not texts:
            return None
        self._texts = pa.concat_arrays(texts)
        mine = _identity_text(identities)
        return pc.indices_nonzero(pc.invert(pc.is_in(mine, value_set=self._texts)))


def _refused_apart(rows: _PartitionRows, picked: List[int],
                   errors: List[Exception]) -> Tuple[pa.Table, pa.Array]:
    """The rows at ``picked`` as a table when Arrow refuses some of them, and
    per row the index in ``errors`` of its error or null: a refused row is
    found by halving and kept as a row of nulls but its identity, so only its
    file fails."""
    kept: List[pa.Table] = []
    failed: List[Optional[int]] = [None] * len(picked)

    def build(start, stop):
        try:
            kept.append(rows.table(picked[start:stop]))
        except Exception as error:  # pylint: disable=broad-except
            if stop - start == 1:
                failed[start] = len(errors)
                errors.append(error)
                return
            middle = (start + stop) // 2
            build(start, middle)
            build(middle, stop)

    build(0, len(picked))
    take, count = [], 0
    for index in failed:
        take.append(None if index is not None else count)
        count += index is None
    table = (pa.concat_tables(kept) if kept else rows.schema.empty_table()).take(
        pa.array(take, pa.int64()))
    identities = rows.identities().take(pa.array(picked, pa.int64()))
    for name in _IDENTITY:  # a refused row's too: they sort, cut and name its file
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name),
                                 identities.column(name))
    return table, pa.array(failed, pa.int32())


def _merged(slices: List[pa.Table]) -> Iterator[pa.Table]:
    """The rows of sorted slices in identity order, ties in slice order (one
    stable sort of them all), about ``_SLICE_ROWS`` at a time: each round
    sorts the next rows of every slice and yields those up to the least last
    row of a slice not exhausted (the first such slice's on a tie), before
    which no row left unread can sort."""
    if len(slices) == 1:
        yield slices[0]
        return
    block = max(1, _SLICE_ROWS // len(slices))
    done = [0] * len(slices)
    keys = [(name, 'ascending') for name in _IDENTITY]
    while True:
        ends = [min(piece.num_rows, start + block) for piece, start in zip(slices, done)]
        taken = [piece.slice(start, end - start) for piece, start, end in zip(slices, done, ends)]
        offsets = list(itertools.accumulate((piece.num_rows for piece in taken), initial=0))
        if not offsets[-1]:
            return
        rows = pa.concat_tables(taken)
        order = pc.sort_indices(rows.select(list(_IDENTITY)), sort_keys=keys)
        unfinished = [i for i, piece in enumerate(slices) if ends[i] < piece.num_rows]
        if unfinished:
            bound = min(unfinished, key=lambda i: (_identity(slices[i], ends[i] - 1), i))
            last = pc.index(order, pa.scalar(offsets[bound + 1] - 1, order.type)).as_py()
            order = order[:last + 1]
        counts = np.bincount(np.searchsorted(offsets[1:], order.to_numpy(), side='right'),
                             minlength=len(slices))
        done = [start + int(count) for start, count in zip(done, counts)]
        yield rows.take(order)


def _failed_origins(slices: List[pa.Table],
                    ranges: List[Tuple[int, int]]) -> Iterator[List[Tuple[int, int, int]]]:
    """The origins of the rows in each (first row, rows) range of the merged
    order (ranges in order, disjoint), from the slices' identity and origin
    columns merged again (as :func:`_merged` orders them by identity alone)."""
    ranges_left = iter(ranges)
    current = next(ranges_left, None)
    if current is None:
        return
    found: List[Tuple[int, int, int]] = []
    seen = 0
    columns = [*_IDENTITY, *_ORIGIN_COLUMNS]
    for piece in _merged([piece.select(columns) for piece in slices]):
        end = seen + piece.num_rows
        while current is not None:
            start, stop = current[0], current[0] + current[1]
            low, high = max(start, seen), min(stop, end)
            if low < high:
                part = piece.slice(low - seen, high - low)
                found.extend(zip(*(part.column(name).to_pylist() for name in _ORIGIN_COLUMNS)))
            if stop > end:
                break
            yield found
            found, current = [], next(ranges_left, None)
        if current is None:
            return
        seen = end


def _identity(table: pa.Table, row: int) -> Tuple[str, ...]:
    """A row's identity as Python compares it: as Arrow sorts UTF-8, by code point."""
    return tuple(table.column(name)[row].as_py() for name in _IDENTITY)


def _originals(values: Iterable[bytes], origins: List[Tuple[int, int, int]]) -> Iterator[Change]:
    """The single-op Change of each origin (batch, Change, op index), from the
    grouped values read again, only the batches named unpacked."""
    wanted = {batch for batch, _, _ in origins}
    unpacked: Dict[int, List[Change]] = {}
    for batch, data in enumerate(values):
        if batch in wanted:
            unpacked[batch] = unpack(data)
            if len(unpacked) == len(wanted):
                break
    for batch, index, number in origins:
        change = unpacked[batch][index]
        yield _single(change, change.ops[number])


@beam.typehints.with_input_types(Change)
class WriteParquetBackup(beam.PTransform):
    """Writes every op of a PCollection of Changes as a row of a Parquet change log.

    See the module docstring for layout, columns, types and dead letters.

    Args:
        path: root directory or prefix (local, ``s3://bucket/prefix``, ...).
        tables: the TableSpecs of the tables to back up; Changes of other
            tables are dead-lettered (``unknown-table``). Specs sharing a
            target must declare the same columns.
        rows_per_file: most rows per file (a partition of one window holding
            more is cut, deterministically, into several files).
        shards: write shards per (target, day): a row goes to the shard of a
            hash of its key, each shard's rows grouped (and written by a
            worker) on their own, in files of their own (``-{shard}of{shards}``
            in the name). Changing it is safe: a writer reads the files of
            any other shard count (and of none) for the rows it holds.
        batched: each input element is a log batch ``(table, shard, packed
            source ops)`` (:class:`changeflow.transforms.shard_batches.FoldShards`'s
            ``LOG`` output), as a job gives them.
        schema_timeline: a PCollection of one SchemaTimeline (batched input
            only): tables the log's DDL renamed, created or altered.

    Returns:
        A DoOutputsTuple: the main output (tag ``MAIN``, ``'written'``) has one
        :class:`~changeflow.io.files.WrittenFile` (path, rows) per file
        written; ``DEAD_LETTER_TAG`` has a DeadLetter per op row not written.

    Idempotence: a row already in a file of its partition (same source
    table, key and version) is not written again (see the module
    docstring). Metrics (namespace ``changeflow.write_parquet``, counting op
    rows): received, written, skipped_existing (already held),
    dead_lettered; and files_written, files_read (files checked for held rows).

    Example::

        backup = changes | WriteParquetBackup('s3://bucket/backup', specs)
        backup[DEAD_LETTER_TAG] | WriteDeadLetters('s3://bucket/dead-letters')
    """

    MAIN = 'written'

    def __init__(self, path: str, tables: Sequence[TableSpec], rows_per_file: int = 250_000,
                 *, batched: bool = False, schema_timeline=None, shards: int = 4):
        super().__init__()
        self._batched = batched
        self._schema_timeline = schema_timeline
        if schema_timeline is not None and not batched:
            raise ValueError('schema_timeline needs batched input')
        if not path:
            raise ValueError(f'WriteParquetBackup needs a path, got {path!r}')
        if rows_per_file < 1:
            raise ValueError(f'rows_per_file must be positive, got {rows_per_file!r}')
        if shards < 1:
            raise ValueError(f'shards must be positive, got {shards!r}')
        layouts: Dict[str, _Layout] = {}
        by_target: Dict[str, _Layout] = {}
        for spec in tables:
            if spec.source in layouts:
                raise ValueError(f'table {spec.source!r} is given twice')
            layout = _layout(spec)
            other = by_target.setdefault(spec.target, layout)
            if other.schema != layout.schema:
                raise ValueError(f'tables writing target {spec.target!r} declare '
                                 f'different columns ({spec.source!r})')
            layouts[spec.source] = layout
        if not layouts:
            raise ValueError('WriteParquetBackup needs at least one TableSpec')
        self._path = path.rstrip('/') or path
        self._layouts = layouts
        self._rows_per_file = rows_per_file
        self._shards = shards

    def expand(self, changes):
        side = {} if self._schema_timeline is None else {
            'timeline': beam.pvalue.AsSingleton(self._schema_timeline)}
        if self._batched:
            keyer = beam.ParDo(_KeyBatchByPartition(self._layouts, self._shards), **side)
        else:
            keyer = beam.ParDo(_KeyByPartition(
                {source: layout.target for source, layout in self._layouts.items()},
                self._shards))
        keyed = changes | 'KeyByPartition' >> keyer.with_outputs(DEAD_LETTER_TAG, main='keyed')
        failed = keyed[DEAD_LETTER_TAG] | 'FailedToKey' >> beam.Map(
            lambda letter: (_FAILED, [letter]))
        # (target, day, shard) keys with a deterministic coder: on Flink and Dataflow
        # a key's encoding decides where its group is (pickled, it may vary).
        partitioned = (keyed['keyed']
                       | 'PartitionTyped' >> typed_keys(typehints.Tuple[str, str, int], bytes)
                       | 'GroupByPartition' >> beam.GroupByKey())
        return ((partitioned, failed)
                | 'WithFailed' >> beam.Flatten()
                | 'WriteFiles' >> beam.ParDo(
                    _WritePartitionFn(self._path, self._layouts, self._rows_per_file,
                                      self._shards), **side
                ).with_outputs(DEAD_LETTER_TAG, main=self.MAIN))
