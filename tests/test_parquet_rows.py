"""The Parquet backup builds its files column by column; these tests hold it to
the row-by-row definition of a backup row (module docstring of
changeflow.io.parquet), written out here one dict per op and turned into a
table by ``pa.Table.from_pylist``: the same files, names, rows and dead letters
for random changes full of nulls, decimals, times, redacted, unknown and
malformed values."""

import collections
import datetime
import decimal
import hashlib
import io
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip('hypothesis', reason="needs hypothesis: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from changeflow.config import TableSpec  # noqa: E402
from changeflow.io import parquet  # noqa: E402
from changeflow.io.json_records import change_json, dumps_json, json_value  # noqa: E402
from changeflow.io.sql import shards_of  # noqa: E402
from changeflow.transforms import runs  # noqa: E402
from changeflow.transforms.runs import make_batch  # noqa: E402
from changeflow.model import DEAD_LETTER_TAG, Change, OpKind, RowOp, audit_version  # noqa: E402
from changeflow.sql import types  # noqa: E402
from changeflow.sql.coercion import BadValue, coercer  # noqa: E402
from changeflow.sql.expressions import col, lit, to_sql  # noqa: E402
from changeflow.sql.rowstate import op_columns  # noqa: E402

D = decimal.Decimal
DAY1 = int(datetime.datetime(2026, 11, 22, 23, 59, 59, tzinfo=datetime.timezone.utc)
           .timestamp()) * 1_000_000
COLUMNS = (('tenant_id', 'integer'), ('order_id', 'bigint'), ('total', 'decimal(10,2)'),
           ('rate', 'float'), ('note', 'text'), ('shipped', 'date'), ('updated_at', 'datetime'),
           ('paid', 'boolean'), ('blob', 'binary'), ('meta', 'json'), ('date', 'string'),
           ('status', 'string'))
ORDERS = TableSpec('shop.orders', ('tenant_id', 'order_id'), 'orders', COLUMNS,
                   redact=('Note', 'total'))
# The same target and Arrow schema, other coercion: status is an ENUM here.
ARCHIVE = TableSpec('shop.orders_archive', ('tenant_id', 'order_id'), 'orders',
                    COLUMNS[:-1] + (('status', "enum('new','paid')"),))
EVENTS = TableSpec('shop.events', ('id',), 'events')  # no columns: the 'values' JSON column
SPECS = (ORDERS, ARCHIVE, EVENTS)

GOOD = {  # values each column stores (after coercion), null included
    'tenant_id': [1, '42', ' 7 ', D('2.5'), True], 'order_id': [2, -3, '2.5', 2 ** 62],
    'total': [D('12.345'), '7', 0, -1.5, D('-0.005'), '523.45', '-0.50', '00000007.10'],
    'rate': [1.5, '0.1', 3, float('nan')],
    'note': ['naïve\nline', '', 5, D('1.50'), b'bytes', 0.25],
    'shipped': ['2026-11-22', 20261122, datetime.date(2026, 1, 2),
                datetime.datetime(2026, 1, 2, 23, 0, tzinfo=datetime.timezone.utc)],
    'updated_at': ['2026-11-22 14:16:18.250000', '2026-11-22T23:30:00-02:00',
                   datetime.datetime(2026, 1, 2, 3, 4, 5, 6), datetime.date(2026, 1, 2)],
    'paid': [0, 1, 2, 'true', '0.5'], 'blob': [b'\x00\xff', 'x'],
    'meta': ['{"a": [1, 2]}', 5, True], 'date': ['x', 'y'], 'status': ['paid', 'PAID ', 'new', 2],
}
class Opaque:
    """A value of no type a column takes, shown the same after the sink's
    pickling (an ``object()`` is shown by its address, which pickling changes)."""

    def __repr__(self):
        return 'Opaque()'


BAD = [2 ** 63, 'x', 'caf\udce9', '2026-02-30', 'NaN', D('99999999.995'), b'\xff', 128,
       float('inf'), Opaque(), '123456789.00']
NAMES = st.sampled_from(list(GOOD) + ['NOTE', 'Total'])


def values(name):
    """Mostly what the column stores, sometimes null, now and then a bad value."""
    return st.integers(0, 19).flatmap(lambda roll: st.sampled_from(BAD) if roll == 0 else (
        st.none() if roll < 4 else st.sampled_from(GOOD[name.lower()])))


def assignment(name):
    return st.integers(0, 19).flatmap(lambda roll: values(name).map(lit) if roll < 12 else (
        st.sampled_from(list(GOOD)).map(lambda other: ('bin', '+', col(other), lit(1)))
        if roll < 18 else st.sampled_from([('fn', 'CONCAT', (col('note'), lit('\udce9'))),
                                           ('bogus',)])))


def column(name_values):
    return NAMES.flatmap(lambda name: st.tuples(st.just(name), name_values(name)))


@st.composite
def ops(draw, query_id):
    kind = draw(st.sampled_from([OpKind.INSERT, OpKind.REPLACE, OpKind.UPSERT, OpKind.UPDATE,
                                 OpKind.DELETE, OpKind.INSERT_IGNORE]))
    values_ = ()
    if kind not in (OpKind.UPDATE, OpKind.DELETE):
        values_ = tuple(draw(st.lists(column(values), max_size=6)))
        if draw(st.integers(0, 19)) == 0:  # not declared, sometimes not UTF-8 either
            values_ += (draw(st.sampled_from([('colour', 'red'), ('col\udce9', 1)])),)
    assignments = ()
    if kind in (OpKind.UPDATE, OpKind.UPSERT):
        assignments = tuple(draw(st.lists(column(assignment), min_size=1, max_size=3)))
    version = audit_version(DAY1 + query_id, query_id, query_id, draw(st.integers(0, 2)))
    position = draw(st.sampled_from([f'audit.log#{query_id}'] * 19 + ['caf\udce9#1']))
    return RowOp(kind, version, values_, assignments, position)


@st.composite
def changes(draw):
    found = []
    for query_id in draw(st.lists(st.integers(1, 40), min_size=1, max_size=25)):
        table = draw(st.sampled_from(['shop.orders'] * 5 + [
            'shop.orders_archive', 'shop.orders_archive', 'shop.events', 'shop.other']))
        key = draw(st.sampled_from([(1, query_id)] * 6 + [
            (1, '7'), (D('2.50'), 3), (query_id,), ('\udce9',), ()]))
        time_us = draw(st.sampled_from([DAY1, DAY1, DAY1, DAY1 + 1, DAY1 + 1_000_000, None]))
        found.append(Change(table, key, tuple(draw(st.lists(ops(query_id), min_size=1,
                                                             max_size=3))), time_us))
    return found


class Rejected(Exception):
    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def row_of(change, op, spec, layout):
    """The backup row of one op as a dict, as the module docstring defines it;
    raises Rejected."""
    literals, computed = op_columns(op)
    for text in [change.table, op.version, op.position, *literals, *computed,
                 *(to_sql(expr) for expr in computed.values())]:
        try:
            text.encode('utf-8')
        except UnicodeEncodeError as error:
            raise Rejected('bad-value', f'{change.table}: text that is not UTF-8: {error}')
    row = {'source_table': change.table, 'op': op.kind.value, 'version': op.version,
           'event_time': change.event_time_us, 'position': op.position,
           'key': dumps_json(json_value(list(change.key))).decode(),
           'set_columns': list(dict.fromkeys(c for c, _ in op.values + op.assignments)),
           'computed': [(c, to_sql(expr)) for c, expr in computed.items()]}
    if not spec.columns:
        row['values'] = dumps_json({c: None if v is None else (
            json_value(v) if isinstance(json_value(v), str) else dumps_json(json_value(v)).decode())
            for c, v in literals.items()}).decode()
        return row
    declared = {name.lower(): (name, column_type) for name, column_type in spec.columns}
    given = dict(zip((k.lower() for k in spec.key), change.key)) if len(
        change.key) == len(spec.key) else {}
    for name, value in literals.items():
        if name.lower() not in declared:
            raise Rejected('unknown-column', f'{change.table} declares no column {name!r}')
        given[name.lower()] = value
    for field, (lowered, (name, column_type)) in zip(
            list(layout.schema)[len(parquet.METADATA_SCHEMA):], declared.items()):
        value = given.get(lowered)
        try:
            row[field.name] = None if value is None else stored(field.type, column_type, value)
        except BadValue as error:
            shown = '<redacted>' if lowered in {r.lower() for r in spec.redact} else f'{value!r:.100}'
            raise Rejected('bad-value', f'{change.table}.{name}: cannot store {shown} as '
                           f'{column_type}: {error}')
    return row


def stored(arrow, column_type, value):
    """The value a column of Arrow type ``arrow`` stores, as the module docstring
    says: the shared coercion at the Arrow decimal's scale, within int64 for an
    integer (not the sink's own coercers, which take shortcuts)."""
    shape = types.parse_type(column_type).shape
    if shape is not None:
        return shape.converter()(value)
    if pa.types.is_decimal(arrow):
        return coercer(f'decimal({arrow.precision},{arrow.scale})')(value)
    result = coercer(column_type)(value)
    if pa.types.is_int64(arrow) and not -2 ** 63 <= result < 2 ** 63:
        raise BadValue('out of the int64 range')
    return result


def expected_backup(changes, rows_per_file, shards=1):
    """(files: relative path -> table, dead letters: sorted (reason, position, detail, original)).
    A row's write shard: its row's shard in the replica among ``shards`` (0 without a key)."""
    specs = {spec.source: spec for spec in SPECS}
    partitions, letters = collections.defaultdict(list), []
    for change in changes:
        for op in change.ops:
            single = Change(change.table, change.key, (op,), change.event_time_us)
            spec = specs.get(change.table)
            if spec is None:
                letters.append(('unknown-table', op.position,
                                f'no TableSpec for {change.table!r}', single))
                continue
            if change.event_time_us is None:
                letters.append(('bad-change', op.position,
                                f'event time {change.event_time_us!r} has no date', single))
                continue
            layout = parquet._layout(spec)
            try:
                row = row_of(change, op, spec, layout)
            except Rejected as error:
                letters.append((error.reason, op.position, error.detail, single))
                continue
            except Exception as error:
                letters.append(('bad-change', op.position, f'{type(error).__name__}: {error}',
                                single))
                continue
            day = datetime.datetime.fromtimestamp(change.event_time_us / 1e6,
                                                  datetime.timezone.utc).date().isoformat()
            shard = next(iter(shards_of(change, shards)))[0][1] if change.key else 0
            partitions[f'table={spec.target}/date={day}', shard].append((row, layout.schema))
    files = {}
    for (directory, shard), rows in partitions.items():
        rows.sort(key=lambda entry: tuple(entry[0][k] for k in parquet._IDENTITY))
        for start in range(0, len(rows), rows_per_file):
            chunk = [row for row, _ in rows[start:start + rows_per_file]]
            identities = '\n'.join('\t'.join(row[k] for k in parquet._IDENTITY) for row in chunk)
            digest = hashlib.sha256(identities.encode()).hexdigest()[:16]
            name = (f'part-{chunk[0]["version"]}-{chunk[-1]["version"]}-{digest}-'
                    f'{shard}of{shards}.parquet')
            files[f'{directory}/{name}'] = pa.Table.from_pylist(chunk, schema=rows[0][1])
    return files, sorted((reason, position, detail, change_json(change))
                         for reason, position, detail, change in letters)


def written_backup(root, changes, rows_per_file, shards=1, batch=None):
    """The sink's DoFns called as the pipeline calls them: (files, dead letters).
    With ``batch``, each partition's ops come as a job's log batches do: one
    Change per op, ``batch`` Changes packed together."""
    layouts = {spec.source: parquet._layout(spec) for spec in SPECS}
    keyer = parquet._KeyByPartition({source: layout.target for source, layout in layouts.items()},
                                    shards)
    writer = parquet._WritePartitionFn(root, layouts, rows_per_file, shards)
    writer.setup()
    partitions = collections.defaultdict(list)
    for change in changes:
        for partition, keyed in keyer.process(change):
            partitions[partition].append(keyed)
    if batch:
        for partition, packed in partitions.items():
            single = [change._replace(ops=(op,)) for data in packed
                      for change in parquet.unpack(data) for op in change.ops]
            partitions[partition] = [parquet.pack(single[start:start + batch])
                                     for start in range(0, len(single), batch)]
    outputs = [output for element in partitions.items() for output in writer.process(element)]
    letters = [output.value for output in outputs if getattr(output, 'tag', '') == DEAD_LETTER_TAG]
    files = {}
    for output in outputs:
        if isinstance(output, parquet.WrittenFile):
            with open(output.path, 'rb') as f:
                files[os.path.relpath(output.path, root)] = f.read()
            assert pq.read_table(output.path).num_rows == output.records
    return files, sorted((letter.reason, letter.position, letter.detail, letter.original)
                         for letter in letters)


def unaddressed(letters):
    """Dead letters without the addresses of the object()s of BAD (the sink's
    copies, unpickled from its input, are other objects)."""
    return [tuple(re.sub(rb' at 0x[0-9a-f]+' if isinstance(part, bytes) else r' at 0x[0-9a-f]+',
                         b'' if isinstance(part, bytes) else '', part) for part in letter)
            for letter in letters]


def assert_same_backup(root, changes, rows_per_file, shards=1, row_group_rows=None, batch=None):
    """The files written are the expected ones, byte for byte; with
    ``row_group_rows``, the same rows and schema in row groups of that many."""
    expected_files, expected_letters = expected_backup(changes, rows_per_file, shards)
    files, letters = written_backup(str(root), changes, rows_per_file, shards, batch)
    assert unaddressed(letters) == unaddressed(expected_letters)
    assert sorted(files) == sorted(expected_files)
    for name, data in files.items():
        if row_group_rows:
            written = pq.ParquetFile(io.BytesIO(data))
            assert [written.metadata.row_group(i).num_rows
                    for i in range(written.num_row_groups)] == [
                min(row_group_rows, expected_files[name].num_rows - start)
                for start in range(0, expected_files[name].num_rows, row_group_rows)], name
            assert repr(written.read().to_pylist()) == repr(expected_files[name].to_pylist())
            assert written.schema_arrow == expected_files[name].schema, name
            continue
        expected = io.BytesIO()
        pq.write_table(expected_files[name], expected, compression='snappy')
        if data != expected.getvalue():  # repr: NaN equals NaN
            assert repr(pq.read_table(io.BytesIO(data)).to_pylist()) == repr(
                expected_files[name].to_pylist()), name
            assert pq.read_table(io.BytesIO(data)).schema == expected_files[name].schema, name
            pytest.fail(f'{name}: same rows, other bytes')


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(changes(), st.integers(1, 5), st.integers(1, 3))
def test_columns_hold_what_rows_define(tmp_path_factory, generated, rows_per_file, shards):
    assert_same_backup(tmp_path_factory.mktemp('backup'), generated, rows_per_file, shards)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(changes(), st.integers(1, 5), st.integers(1, 3), st.integers(2, 9))
def test_log_batches_hold_what_rows_define(tmp_path_factory, generated, rows_per_file, shards,
                                           batch):
    """Log batches of one-op Changes: a batch of one table whose values all
    take a column without a dead letter is built column by column
    (ops of several shapes, put back in arrival order), any other op by op;
    the same files and dead letters either way."""
    assert_same_backup(tmp_path_factory.mktemp('backup'), generated, rows_per_file, shards,
                       batch=batch)


def test_equal_assignments_of_unlike_literals(tmp_path):
    """Equal assignments of one log batch are rendered once, but only when
    equal means alike: 1, True, 1.0, Decimal('1.0') and Decimal('1.00') are
    equal and each keeps its own SQL text (and a literal UPDATE its value)."""
    unlike = [1, True, 1.0, D('1.0'), D('1.00'), 1, '1', '1']
    changes = []
    for n, value in enumerate(unlike, 1):
        plus = ('bin', '+', col('rate'), lit(value))
        for kind, assignments in ((OpKind.UPDATE, (('rate', plus),)),
                                  (OpKind.UPDATE, (('note', lit(value)),)),
                                  (OpKind.UPSERT, (('note', lit(value)),))):
            query = len(changes) + 1
            changes.append(Change('shop.orders', (1, n), (RowOp(
                kind, audit_version(DAY1, query, query, 0),
                (('tenant_id', 1), ('order_id', n)) if kind is OpKind.UPSERT else (),
                assignments, f'a#{query}'),), DAY1))
    assert_same_backup(tmp_path, changes, 100, batch=len(changes))
    files, _ = written_backup(str(tmp_path / 'again'), changes, 100, batch=len(changes))
    rows = [row for data in files.values() for row in pq.read_table(io.BytesIO(data)).to_pylist()]
    assert sorted({text for row in rows for _, text in row['computed']}) == [
        "'1'", "(`rate` + '1')", '(`rate` + 1)', '(`rate` + 1.0)', '(`rate` + 1.00)',
        '(`rate` + True)', '1', '1.0', '1.00', 'True']
    assert sorted({row['note'] for row in rows if row['note']}) == ['1', '1.0', '1.00']


def test_a_partition_of_every_kind_of_row(tmp_path, monkeypatch):
    """One fixed partition with every case the random one may miss; a file's
    identities hashed in several parts."""
    monkeypatch.setattr(parquet, '_HASHED_ROWS', 2)
    up = RowOp(OpKind.UPSERT, audit_version(DAY1, 2, 2, 0),
               (('tenant_id', 1), ('order_id', 2), ('total', '7'), ('NOTE', None)),
               (('total', ('bin', '+', col('total'), lit(1))), ('status', lit('paid'))), 'a#2')
    rows = [
        Change('shop.orders', (1, 1), (
            RowOp(OpKind.INSERT, audit_version(DAY1, 1, 1, 0), (
                ('tenant_id', 1), ('order_id', 1), ('total', D('12.345')), ('rate', 1.5),
                ('note', 'n'), ('shipped', '2026-11-22'), ('updated_at', '2026-11-22 10:00:00.5'),
                ('paid', 2), ('blob', b'\x00'), ('meta', '[1]'), ('date', 'x')), (), 'a#1'),
            RowOp(OpKind.UPDATE, audit_version(DAY1, 3, 3, 0), (), (
                ('note', lit(None)), ('paid', lit(0)), ('rate', ('bin', '*', col('rate'), lit(2)))),
                'a#3')), DAY1),
        Change('shop.orders', (1, 2), (up, up._replace(version=audit_version(DAY1, 4, 4, 0),
                                                        position='a#4')), DAY1),
        Change('shop.orders', (1, 5), (RowOp(OpKind.INSERT, audit_version(DAY1, 5, 5, 0), (
            ('total', '99999999.995'),), (), 'a#5'),), DAY1),                   # redacted, bad
        Change('shop.orders', (1, 6), (RowOp(OpKind.INSERT, audit_version(DAY1, 6, 6, 0), (
            ('status', 'paid'), ('colour', 'red')), (), 'a#6'),), DAY1),        # unknown column
        Change('shop.orders_archive', (1, 7), (RowOp(OpKind.INSERT, audit_version(DAY1, 7, 7, 0), (
            ('status', 'PAID '),), (), 'a#7'),), DAY1),                         # ENUM spelling
        Change('shop.orders_archive', (1, 8), (RowOp(OpKind.INSERT, audit_version(DAY1, 8, 8, 0), (
            ('status', 'gone'),), (), 'a#8'),), DAY1),                          # not a member
        Change('shop.orders', (1, 9), (RowOp(OpKind.DELETE, audit_version(DAY1, 9, 9, 0),
                                             position='a#9'),), DAY1),
        Change('shop.orders', (1, 10), (RowOp(OpKind.INSERT, audit_version(DAY1, 10, 10, 0), (
            ('shipped', '2026-02-30'), ('rate', 'x')), (), 'a#10'),), DAY1),  # two bad values
    ]
    assert_same_backup(tmp_path, rows, 3)
    files, letters = written_backup(str(tmp_path / 'again'), rows, 3)
    assert sorted((reason, position) for reason, position, *_ in letters) == [
        ('bad-value', 'a#10'), ('bad-value', 'a#5'), ('bad-value', 'a#8'),
        ('unknown-column', 'a#6')]
    assert ['<redacted>' in detail for _, _, detail, _ in letters] == [False, True, False, False]
    assert letters[0][2].startswith('shop.orders.rate:')  # the first bad value in column order
    written = [row for data in files.values() for row in pq.read_table(io.BytesIO(data)).to_pylist()]
    assert sorted(row['position'] for row in written) == ['a#1', 'a#2', 'a#3', 'a#4', 'a#7', 'a#9']
    archived = [row for row in written if row['source_table'] == 'shop.orders_archive']
    assert [row['status'] for row in archived] == ['paid']


def test_a_value_arrow_refuses_fails_only_its_file(tmp_path, monkeypatch):
    """Coerced values always fit their Arrow type; if one did not, the columns
    of the partition cannot be built at once, and each file is built alone,
    so only the file holding that value is dead-lettered ('write-failed')."""
    def coercer(arrow, column_type):
        coerce = original(arrow, column_type)
        return lambda value: object() if value == 'unwritable' else coerce(value)
    original = parquet._coercer
    monkeypatch.setattr(parquet, '_coercer', coercer)

    def insert(n, note):
        return RowOp(OpKind.INSERT, audit_version(DAY1, n, n, 0), (('note', note),), (), f'a#{n}')
    first = Change('shop.orders', (1, 1), (insert(1, 'fine'), insert(3, 'unwritable')), DAY1)
    rows = [first] + [Change('shop.orders', (1, n), (insert(n, 'fine'),), DAY1) for n in (2, 4, 5)]
    files, letters = written_backup(str(tmp_path), rows, 2)  # files: ops 1-2, 3-4, 5
    assert [(reason, position) for reason, position, *_ in letters] == [
        ('write-failed', 'a#3'), ('write-failed', 'a#4')]
    assert letters[0][3] == change_json(first._replace(ops=first.ops[1:]))
    assert sorted(row['position'] for data in files.values()
                  for row in pq.read_table(io.BytesIO(data)).to_pylist()) == ['a#1', 'a#2', 'a#5']


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(changes(), st.integers(1, 5), st.integers(1, 4))
def test_spilled_slices_hold_what_rows_define(tmp_path_factory, generated, rows_per_file,
                                              slice_rows):
    """A partition of more than ``_SLICE_ROWS`` rows, sorted a slice at a time
    and merged: the same files, names, rows and dead letters."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parquet, '_SLICE_ROWS', slice_rows)
        assert_same_backup(tmp_path_factory.mktemp('backup'), generated, rows_per_file)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(changes(), st.integers(1, 7), st.integers(1, 4), st.integers(1, 3), st.integers(1, 2))
def test_files_streamed_a_row_group_at_a_time(tmp_path_factory, generated, rows_per_file,
                                              slice_rows, row_group_rows, shards):
    """A file is written as the merge yields its rows, ``_ROW_GROUP_ROWS`` a
    row group: the same names and rows as one sort of them all."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parquet, '_SLICE_ROWS', slice_rows)
        patch.setattr(parquet, '_ROW_GROUP_ROWS', row_group_rows)
        assert_same_backup(tmp_path_factory.mktemp('backup'), generated, rows_per_file, shards,
                           row_group_rows)


def test_a_write_failing_mid_file(tmp_path, monkeypatch):
    """An error writing a file's second row group dead-letters that file's
    rows ('write-failed', the detail naming the file), leaving nothing of it
    under any name, and the other files are written; a crash there (an
    exception the writer does not catch) leaves no file under its final
    name, and the run again writes what a run without the crash writes."""
    monkeypatch.setattr(parquet, '_ROW_GROUP_ROWS', 2)
    calls = []

    class Failing(pq.ParquetWriter):
        def write_table(self, table, row_group_size=None):
            calls.append(table.num_rows)
            if len(calls) == failing_call:
                raise failure
            super().write_table(table, row_group_size=row_group_size)
    monkeypatch.setattr(parquet.pq, 'ParquetWriter', Failing)

    def insert(n):
        return RowOp(OpKind.INSERT, audit_version(DAY1, n, n, 0), (('note', 'n'),), (), f'a#{n}')
    changes = [Change('shop.orders', (1, n), (insert(n),), DAY1) for n in range(1, 10)]

    failing_call, failure = 0, None
    clean, clean_letters = written_backup(str(tmp_path / 'clean'), changes, 4)
    assert clean_letters == [] and len(clean) == 3 and calls == [2, 2, 2, 2, 1]

    calls.clear()
    failing_call, failure = 4, OSError('disk full')  # the 2nd row group of the 2nd file
    files, letters = written_backup(str(tmp_path / 'failed'), changes, 4)
    failed_name = sorted(clean)[1]
    assert sorted(files) == sorted(name for name in clean if name != failed_name)
    assert [(reason, position) for reason, position, *_ in letters] == [
        ('write-failed', f'a#{n}') for n in range(5, 9)]
    assert all(detail.endswith(f'{failed_name}: disk full') for _, _, detail, _ in letters)
    day = tmp_path / 'failed' / os.path.dirname(failed_name)
    assert sorted(os.listdir(day)) == sorted(os.path.basename(name) for name in files)

    calls.clear()
    failing_call, failure = 4, KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        written_backup(str(tmp_path / 'crashed'), changes, 4)
    day = tmp_path / 'crashed' / os.path.dirname(failed_name)
    assert [name for name in os.listdir(day) if not name.startswith('.')] == [
        os.path.basename(sorted(clean)[0])]
    failing_call = 0
    again, again_letters = written_backup(str(tmp_path / 'crashed'), changes, 4)
    assert again_letters == [] and sorted(again) == sorted(clean)[1:]
    assert all(again[name] == clean[name] for name in again)


@pytest.mark.parametrize('shards', [4, 3])
def test_a_log_batch_keeps_its_rows_write_shards(shards):
    """A log batch of a replica shard (among 16, as the job folds them) is
    keyed by the write shard each of its Changes has on its own (as a
    streaming job keys them); with write shards dividing 16, without
    hashing one again: the batch goes on whole, packed as it came."""
    def insert(n):
        return RowOp(OpKind.INSERT, audit_version(DAY1, n, n, 0), (), (), f'a#{n}')
    changes = [Change('shop.orders', (1, n), (insert(n),), DAY1) for n in range(60)]
    changes.append(Change('shop.orders', (), (insert(99),), DAY1))  # a whole-table op
    by_shard = collections.defaultdict(list)
    for change in changes:
        for (table, shard), copy in shards_of(change, 16):
            if change.key or shard == 0:  # the log takes a whole-table op from shard 0 only
                by_shard[shard].append(copy)
    layouts = {spec.source: parquet._layout(spec) for spec in SPECS}
    batched = parquet._KeyBatchByPartition(layouts, shards)
    batched.setup()
    single = parquet._KeyByPartition({source: layout.target for source, layout in layouts.items()},
                                     shards)
    expected = {change.ops[0].position: partition
                for change in changes for partition, _ in single.process(change)}
    assert len(set(expected.values())) == shards
    keyed = {}
    for shard, copies in sorted(by_shard.items()):
        batch = make_batch('shop.orders', shard, copies)
        outputs = list(batched.process(batch))
        if shards == 4:
            assert [data for _, data in outputs] == [batch[2]]
        for partition, data in outputs:
            keyed.update((change.ops[0].position, partition) for change in parquet.unpack(data))
    assert keyed == expected


def test_a_log_batch_of_several_partitions_is_split():
    """A batch is passed on whole only when all its Changes share one
    partition: one spanning midnight (its first and last Change on one day,
    one between them on the next), or holding a table of another target or
    none, is split Change by Change."""
    def change(n, time_us, table='shop.orders'):
        return Change(table, (1, n), (RowOp(OpKind.INSERT, audit_version(time_us, n, n, 0),
                                            (), (), f'a#{n}'),), time_us)
    layouts = {spec.source: parquet._layout(spec) for spec in SPECS}
    keyer = parquet._KeyBatchByPartition(layouts, 4)
    keyer.setup()

    def keyed(changes):
        return {partition: [c.ops[0].position for c in parquet.unpack(data)]
                for partition, data in keyer.process(make_batch('shop.orders', 0, changes))}
    assert keyed([change(1, DAY1), change(2, DAY1 + 1_000_000), change(3, DAY1)]) == {
        ('orders', '2026-11-22', 0): ['a#1', 'a#3'], ('orders', '2026-11-23', 0): ['a#2']}
    assert keyed([change(1, DAY1), change(2, DAY1, 'shop.events')]) == {
        ('orders', '2026-11-22', 0): ['a#1'], ('events', '2026-11-22', 0): ['a#2']}
    assert keyed([change(1, DAY1), change(2, DAY1, 'shop.other')]) == {
        ('orders', '2026-11-22', 0): ['a#1'], parquet._UNROUTABLE: ['a#2']}
    whole = make_batch('shop.orders', 4, [change(1, DAY1 - 10), change(2, DAY1)])
    assert list(keyer.process(whole)) == [(('orders', '2026-11-22', 0), whole[2])]


def test_a_log_batch_of_one_day_is_keyed_from_its_header(monkeypatch):
    """A batch of one table and day is keyed from its header's span, not
    decoded; one packed without a span (by an earlier version) is decoded
    and keyed the same, its ops counted alike."""
    def change(n, time_us):
        return Change('shop.orders', (1, n), (RowOp(OpKind.INSERT, audit_version(time_us, n, n, 0),
                                                    (), (), f'a#{n}'),), time_us)
    layouts = {spec.source: parquet._layout(spec) for spec in SPECS}
    changes = [change(1, DAY1 + 5), change(2, DAY1), change(3, DAY1 + 9)]
    spanned = make_batch('shop.orders', 6, changes)
    monkeypatch.setattr(runs, '_span', lambda records: b'')
    unspanned = make_batch('shop.orders', 6, changes)
    monkeypatch.undo()
    assert unspanned[2] != spanned[2]
    counted = []
    keyer = parquet._KeyBatchByPartition(layouts, 4)
    keyer.setup()
    keyer._received = type('Counter', (), {'inc': lambda self, n: counted.append(n)})()
    assert list(keyer.process(unspanned)) == [(('orders', '2026-11-22', 2), unspanned[2])]
    monkeypatch.setattr(runs.pickle, 'loads', None)
    assert list(keyer.process(spanned)) == [(('orders', '2026-11-22', 2), spanned[2])]
    assert counted == [3, 3]


def test_a_partition_merged_from_spilled_slices(tmp_path, monkeypatch):
    """Rows spilled in sorted slices of 7 (log batches of several Changes, in
    no version order, an identity repeated) make the files of one sort of
    them all, byte for byte; the same input again writes nothing; a
    bad-value and a write-failed dead letter of a spilled slice (a value
    Arrow refuses fails the last file: ops 100 and 200) carry their own
    op's Change."""
    def coercer(arrow, column_type):
        coerce = original(arrow, column_type)
        return lambda value: object() if value == 'unwritable' else coerce(value)
    original = parquet._coercer
    monkeypatch.setattr(parquet, '_coercer', coercer)
    real_merged, merged = parquet._merged, []

    def counted(slices):
        merged.append(len(slices))
        return real_merged(slices)
    monkeypatch.setattr(parquet, '_merged', counted)

    def insert(n, note='fine'):
        return RowOp(OpKind.INSERT, audit_version(DAY1, n, n, 0), (('note', note),), (), f'a#{n}')
    numbers = [(n * 37) % 101 for n in range(1, 101)]  # 1..100, shuffled
    changes = [Change('shop.orders', (1, n), (insert(n),), DAY1) for n in numbers]
    changes[60] = Change('shop.orders', (1, numbers[60]),
                         (insert(numbers[60]), insert(200, 'unwritable')), DAY1)
    changes[70] = Change('shop.orders', (1, numbers[70]), (RowOp(
        OpKind.INSERT, audit_version(DAY1, 300, 300, 0), (('shipped', '2026-02-30'),), (), 'a#300'),
        insert(numbers[70])), DAY1)
    changes.append(changes[3])  # the same op twice: two equal identities, both written
    batches = [changes[start:start + 3] for start in range(0, len(changes), 3)]
    layouts = {spec.source: parquet._layout(spec) for spec in SPECS}

    def write(root, slice_rows):
        monkeypatch.setattr(parquet, '_SLICE_ROWS', slice_rows)
        writer = parquet._WritePartitionFn(str(root), layouts, 10)
        writer.setup()
        outputs = list(writer.process((('orders', '2026-11-22', 0),
                                       [parquet.pack(batch) for batch in batches])))
        letters = [(o.value.reason, o.value.position, o.value.original) for o in outputs
                   if getattr(o, 'tag', '') == DEAD_LETTER_TAG]
        written = {}
        for output in outputs:
            if isinstance(output, parquet.WrittenFile):
                with open(output.path, 'rb') as f:
                    written[os.path.relpath(output.path, root)] = f.read()
        return written, letters

    whole, whole_letters = write(tmp_path / 'whole', 10 ** 6)
    sliced, sliced_letters = write(tmp_path / 'sliced', 7)
    # the rows, then the failed file's origins again; a slice also ends where batches
    # built column by column (_batch_table) and op by op (two batches of two-op Changes) meet
    assert merged == [5, 5, 14, 14]
    assert sorted(sliced) == sorted(whole) and len(whole) == 10
    assert all(sliced[name] == whole[name] for name in whole)
    assert sliced_letters == whole_letters
    assert sorted((reason, position) for reason, position, _ in sliced_letters) == [
        ('bad-value', 'a#300'), ('write-failed', 'a#100'), ('write-failed', 'a#200')]
    originals = {position: original for _, position, original in sliced_letters}
    assert originals['a#300'] == change_json(changes[70]._replace(ops=changes[70].ops[:1]))
    assert originals['a#200'] == change_json(changes[60]._replace(ops=changes[60].ops[1:]))
    assert originals['a#100'] == change_json(changes[numbers.index(100)])

    again, again_letters = write(tmp_path / 'sliced', 7)
    assert again == {} and sorted(os.listdir(tmp_path / 'sliced' / 'table=orders' /
                                             'date=2026-11-22')) == sorted(
        name.rsplit('/', 1)[-1] for name in whole)
    assert again_letters == sliced_letters  # the rows never written are dead-lettered again


def test_merged_slices_keep_ties_in_slice_order(monkeypatch):
    """Equal identities across slices come out as one stable sort would put
    them: slice by slice, whatever row of a round ends a slice's block."""
    monkeypatch.setattr(parquet, '_SLICE_ROWS', 2)  # a round: one row of each slice

    def piece(versions, tags):
        return pa.table({'version': versions, 'source_table': ['t'] * len(tags),
                         'key': ['k'] * len(tags), 'position': ['p'] * len(tags), 'tag': tags})
    slices = [piece(['1', '2', '2', '3'], ['a0', 'a1', 'a2', 'a3']),
              piece(['2', '2', '2'], ['b0', 'b1', 'b2'])]
    merged = [tag for table in parquet._merged(slices) for tag in table.column('tag').to_pylist()]
    assert merged == ['a0', 'a1', 'a2', 'b0', 'b1', 'b2', 'a3']
