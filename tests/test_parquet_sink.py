"""WriteParquetBackup: schema, values, partitions, names, idempotence, dead letters, S3."""

import datetime
import decimal
import io
import json
import os
import re

import apache_beam as beam
import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from changeflow.config import TableSpec
from changeflow.sql.expressions import col, lit
from changeflow.io.parquet import WriteParquetBackup, arrow_type
from changeflow.io.sql import shards_of
from changeflow.metrics import counter_totals
from changeflow.model import DEAD_LETTER_TAG, Change, OpKind, RowOp, audit_version
from changeflow.sql.rowstate import op_columns
from tests.beam_helpers import local_pipeline

UTC = datetime.timezone.utc
DAY1 = int(datetime.datetime(2026, 11, 22, 14, 16, 18, tzinfo=UTC).timestamp()) * 1_000_000
DAY2 = DAY1 + 86_400 * 1_000_000

ORDERS = TableSpec(
    source='shop.orders', key=('tenant_id', 'order_id'), target='orders',
    columns=(('tenant_id', 'integer'), ('order_id', 'bigint'), ('total', 'decimal(10,2)'),
             ('rate', 'float'), ('note', 'text'), ('shipped', 'date'),
             ('updated_at', 'datetime'), ('paid', 'boolean'), ('blob', 'binary'),
             ('meta', 'json'), ('date', 'string')),
    redact=('note',))
EVENTS = TableSpec(source='shop.events', key=('id',), target='events')

PART_NAME = re.compile(r'part-(?P<first>[0-9.]+)-(?P<last>[0-9.]+)-[0-9a-f]{16}'
                       r'-(?P<shard>[0-9]+)of(?P<shards>[0-9]+)\.parquet$')


def version(time_us, query_id, seq=0):
    return audit_version(time_us, query_id, query_id, seq)


def insert(query_id, time_us=DAY1, **values):
    return RowOp(OpKind.INSERT, version(time_us, query_id), tuple(values.items()), (),
                 f'audit.log#{query_id}')


def update(query_id, *assignments, time_us=DAY1):
    return RowOp(OpKind.UPDATE, version(time_us, query_id), (), tuple(assignments),
                 f'audit.log#{query_id}')


def order(order_id, *ops, time_us=DAY1):
    return Change('shop.orders', (1, order_id), tuple(ops), time_us)


def changes():
    return [
        order(1, insert(10, tenant_id=1, order_id=1, total=decimal.Decimal('12.345'),
                        rate=1.5, note='naïve\nline "two"', shipped='2026-11-22',
                        updated_at='2026-11-22 14:16:18.250000', paid=1,
                        blob=b'\x00\xff', meta='{"a": [1, 2]}', date='x'),
              update(11, ('total', ('bin', '+', col('total'), lit(1))), ('note', lit(None)),
                     ('paid', lit(0)))),
        order(2, insert(12, tenant_id=1, order_id=2, total=7, note=None, shipped=None)),
        order(3, insert(13, tenant_id=1, order_id=3, shipped='2026-02-30')),  # bad date
        order(4, RowOp(OpKind.DELETE, version(DAY2, 14), (), (), 'audit.log#14'), time_us=DAY2),
    ]


def run(path, elements, tables=(ORDERS,), options=None, written=None, letters=None, **kwargs):
    """Runs the sink; returns its counters by name.

    ``written`` / ``letters``: checks of the main / dead-letter output, run in
    the pipeline by assert_that (see :func:`files` and :func:`reasons`).
    """
    p = local_pipeline(options=options) if options else local_pipeline()
    result = p | beam.Create(elements) | WriteParquetBackup(path, tables, **kwargs)
    if written is not None:
        assert_that(result.written, written, label='Written')
    if letters is not None:
        assert_that(result[DEAD_LETTER_TAG], letters, label='DeadLetters')
    outcome = p.run()
    outcome.wait_until_finish()
    return counter_totals(outcome, 'changeflow.write_parquet')


def files(root, *expected):
    """A check of WrittenFiles: the sorted (partition directory, records) pairs,
    each path a part file under ``root``."""
    def check(written):
        assert all(PART_NAME.search(f.path) and f.path.startswith(root + '/') for f in written)
        assert sorted((os.path.dirname(f.path[len(root) + 1:]), f.records)
                      for f in written) == sorted(expected), written
    return check


def reasons(*expected):
    """A check of dead letters: the sorted (reason, position) pairs."""
    def check(letters):
        assert sorted((l.reason, l.position) for l in letters) == sorted(expected), letters
        assert all(l.step == 'write_parquet' for l in letters)
    return check


def tree(root):
    """relative path -> bytes of every file under root."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            full = os.path.join(directory, name)
            with open(full, 'rb') as f:
                found[os.path.relpath(full, root)] = f.read()
    return found


def bad_date_letter(letters):
    reasons(('bad-value', 'audit.log#13'))(letters)
    (letter,) = letters
    assert 'shop.orders.shipped' in letter.detail and b'2026-02-30' in letter.original


def test_rows_schema_partitions_and_dead_letters(tmp_path):
    root = str(tmp_path)
    counters = run(root, changes(), shards=1, letters=bad_date_letter, written=files(
        root, ('table=orders/date=2026-11-22', 3), ('table=orders/date=2026-11-23', 1)))
    assert counters == {'received': 5, 'written': 4, 'dead_lettered': 1, 'files_written': 2}

    paths = sorted(tree(tmp_path))
    assert [os.path.dirname(f) for f in paths] == [
        'table=orders/date=2026-11-22', 'table=orders/date=2026-11-23']
    first = pq.read_table(tmp_path / paths[0])
    name = PART_NAME.search(paths[0])
    assert (name['first'], name['last']) == (version(DAY1, 10), version(DAY1, 12))
    assert (name['shard'], name['shards']) == ('0', '1')
    assert first.schema.field('event_time').type == pa.timestamp('us', tz='UTC')
    assert first.schema.field('total').type == pa.decimal128(10, 2)
    assert first.schema.field('computed').type == pa.map_(pa.string(), pa.string())
    assert first.schema.field('col_date').type == pa.string()  # 'date' is a partition key
    rows = first.to_pylist()
    assert [r['version'] for r in rows] == sorted(r['version'] for r in rows)
    inserted, updated, second = rows
    event_time = datetime.datetime(2026, 11, 22, 14, 16, 18, tzinfo=UTC)
    assert {k: inserted[k] for k in ('source_table', 'op', 'key', 'position')} == {
        'source_table': 'shop.orders', 'op': 'insert', 'key': '[1,1]',
        'position': 'audit.log#10'}
    assert inserted['event_time'] == event_time
    assert inserted['total'] == decimal.Decimal('12.35')  # MySQL rounds to the scale
    assert inserted['note'] == 'naïve\nline "two"'
    assert inserted['shipped'] == datetime.date(2026, 11, 22)
    assert inserted['updated_at'] == datetime.datetime(2026, 11, 22, 14, 16, 18, 250000)
    assert (inserted['paid'], inserted['blob'], inserted['rate']) == (True, b'\x00\xff', 1.5)
    assert (inserted['meta'], inserted['col_date']) == ('{"a": [1, 2]}', 'x')
    assert inserted['computed'] == []

    assert updated['op'] == 'update'
    assert updated['set_columns'] == ['total', 'note', 'paid']
    assert updated['computed'] == [('total', '(`total` + 1)')]
    assert (updated['tenant_id'], updated['order_id']) == (1, 1)  # from the key
    assert (updated['total'], updated['note'], updated['paid']) == (None, None, False)

    assert second['total'] == decimal.Decimal('7.00')
    assert second['note'] is None and second['shipped'] is None

    (deleted,) = pq.read_table(tmp_path / paths[1]).to_pylist()
    assert (deleted['op'], deleted['set_columns'], deleted['order_id']) == ('delete', [], 4)

    # The tree reads back as a Hive-partitioned dataset without shadowed columns.
    dataset = pq.read_table(root)
    assert dataset.num_rows == 4
    assert set(dataset.column('source_table').to_pylist()) == {'shop.orders'}
    assert set(dataset.column('table').to_pylist()) == {'orders'}


def test_rerun_rewrites_the_same_files(tmp_path):
    run(str(tmp_path), changes())
    before = tree(tmp_path)
    run(str(tmp_path), list(reversed(changes())))
    assert tree(tmp_path) == before


def row_shard(order_id, shards=4):
    """The replica's shard of an order's row."""
    ((_, shard), _), = shards_of(order(order_id), shards)
    return shard


def test_write_shards(tmp_path):
    """A day's rows go to write shards by a hash of their key, a file (and
    a writer) each; a writer reads its own shard's files, and those of
    another shard count or of none, so neither a rerun, nor another count,
    nor a tree written before shards writes a row twice. (Each key's ops
    span the versions of all, so every file's range meets every writer's.)"""
    ops = [order(n, insert(100 + n, tenant_id=1, order_id=n), insert(200 + n, order_id=n))
           for n in range(1, 9)]
    day = tmp_path / 'table=orders' / 'date=2026-11-22'
    counters = run(str(tmp_path), ops)
    assert counters['written'] == 16 and counters['files_written'] == 4
    for name in os.listdir(day):
        shard, shards = PART_NAME.search(name).group('shard', 'shards')
        keys = pq.read_table(day / name).column('order_id').to_pylist()
        assert shards == '4' and set(map(row_shard, keys)) == {int(shard)}
    before = tree(tmp_path)

    counters = run(str(tmp_path), ops)
    assert counters['skipped_existing'] == 16 and counters['files_read'] == 4  # its own only
    counters = run(str(tmp_path), ops, shards=2)
    assert counters['skipped_existing'] == 16 and counters['files_read'] == 8  # all of another count
    assert tree(tmp_path) == before
    for name in os.listdir(day):  # as named before write shards
        os.rename(day / name, day / re.sub(r'-[0-9]+of[0-9]+\.parquet$', '.parquet', name))
    counters = run(str(tmp_path), ops)
    assert counters['skipped_existing'] == 16 and counters['files_read'] == 16
    assert 'written' not in counters


def test_undeclared_columns_go_to_a_values_json_column(tmp_path):
    event = Change('shop.events', (5,), (
        RowOp(OpKind.UPSERT, version(DAY1, 20),
              (('id', 5), ('amount', decimal.Decimal('1.50')), ('raw', b'\x01'), ('gone', None)),
              (('amount', ('bin', '+', col('amount'), lit(1))), ('seen', lit(2))),
              'audit.log#20'),), DAY1)
    run(str(tmp_path), [event], tables=(EVENTS,), letters=reasons())
    (path,) = tree(tmp_path)
    (row,) = pq.read_table(tmp_path / path).to_pylist()
    assert row['values'] == '{"id":"5","amount":"1.50","raw":"AQ==","gone":null}'
    assert row['set_columns'] == ['id', 'amount', 'raw', 'gone', 'seen']
    # An UPSERT's update part only applies to an existing row: all of it is 'computed'.
    assert row['computed'] == [('amount', '(`amount` + 1)'), ('seen', '2')]


def test_windows_and_rows_per_file_split_files(tmp_path):
    ops = [order(n, insert(100 + n, tenant_id=1, order_id=n)) for n in range(5)]
    p = local_pipeline()
    written = (p
               | beam.Create(ops)
               | beam.Map(lambda c: window.TimestampedValue(c, 10 if c.key[1] < 3 else 100))
               | beam.WindowInto(window.FixedWindows(60))
               | WriteParquetBackup(str(tmp_path), [ORDERS], rows_per_file=2, shards=1))
    assert_that(written.written | beam.Map(lambda f: f.records), equal_to([2, 1, 2]),
                label='RecordsPerFile')
    p.run().wait_until_finish()
    names = sorted(os.listdir(tmp_path / 'table=orders' / 'date=2026-11-22'))
    spans = sorted((PART_NAME.search(n)['first'], PART_NAME.search(n)['last']) for n in names)
    assert spans == [(version(DAY1, 100), version(DAY1, 101)),
                     (version(DAY1, 102), version(DAY1, 102)),
                     (version(DAY1, 103), version(DAY1, 104))]


def test_unknown_table_column_and_unwritable_path(tmp_path):
    stray = Change('shop.other', (1,), (insert(30, id=1),), DAY1)
    extra = order(9, insert(31, tenant_id=1, order_id=9, colour='red'))
    timeless = order(10, insert(32, tenant_id=1, order_id=10), time_us=None)
    malformed = order(11, update(33, ('note', ('bogus',))))

    def described(letters):
        reasons(('unknown-table', 'audit.log#30'), ('unknown-column', 'audit.log#31'),
                ('bad-change', 'audit.log#32'), ('bad-change', 'audit.log#33'))(letters)
        originals = {l.position: json.loads(l.original) for l in letters}
        assert originals['audit.log#32']['event_time_us'] is None
        assert originals['audit.log#33']['ops'][0]['assignments'] == [['note', "('bogus',)"]]

    run(str(tmp_path), [stray, extra, timeless, malformed], letters=described)

    blocker = tmp_path / 'a-file'
    blocker.write_text('not a directory')
    counters = run(str(blocker), changes()[:2], written=files(str(blocker)), letters=reasons(
        ('write-failed', 'audit.log#10'), ('write-failed', 'audit.log#11'),
        ('write-failed', 'audit.log#12')))
    assert counters == {'received': 3, 'dead_lettered': 3}


def test_text_that_is_not_utf8(tmp_path):
    # Audit lines are decoded with 'surrogateescape': invalid bytes become lone surrogates.
    bad_note = order(5, insert(40, tenant_id=1, order_id=5, note='caf\udce9'))
    bad_computed = order(6, update(41, ('note', ('fn', 'CONCAT', (col('note'), lit('\udce9'))))))
    good = order(7, insert(42, tenant_id=1, order_id=7, note='café'))
    odd_key = Change('shop.events', ('\udce9',), (insert(43, id='\udce9', x='\udce9'),), DAY1)
    run(str(tmp_path), [bad_note, bad_computed, good, odd_key], tables=(ORDERS, EVENTS),
        letters=reasons(('bad-value', 'audit.log#40'), ('bad-value', 'audit.log#41')))
    orders = pq.read_table(str(tmp_path / 'table=orders')).to_pylist()
    assert [r['note'] for r in orders] == ['café']
    (event,) = pq.read_table(str(tmp_path / 'table=events')).to_pylist()
    assert (event['key'], event['values']) == ('["\\udce9"]', '{"id":"\\udce9","x":"\\udce9"}')


def test_op_columns_substitutes_earlier_assignments():
    op = update(1, ('a', lit(5)), ('b', ('bin', '+', col('a'), lit(1))),
                ('c', ('bin', '*', col('c'), col('a'))))
    literals, computed = op_columns(op)
    assert literals == {'a': 5, 'b': 6}
    assert computed == {'c': ('bin', '*', col('c'), lit(5))}


def test_specs_are_checked():
    assert arrow_type('decimal(40, 4)') == pa.decimal256(40, 4)
    assert arrow_type('DECIMAL') == pa.decimal128(38, 9)
    with pytest.raises(ValueError, match='money'):
        WriteParquetBackup('/tmp/x', [ORDERS._replace(columns=(('id', 'money'),))])
    with pytest.raises(ValueError, match='given twice'):
        WriteParquetBackup('/tmp/x', [ORDERS, ORDERS])
    with pytest.raises(ValueError, match='different columns'):
        WriteParquetBackup('/tmp/x', [ORDERS, EVENTS._replace(target='orders')])
    with pytest.raises(ValueError, match='clash'):
        WriteParquetBackup('/tmp/x', [EVENTS._replace(
            columns=(('key', 'string'), ('col_key', 'string')))])


def test_writes_to_s3(aws_env):
    s3 = boto3.client('s3', endpoint_url=aws_env)
    s3.create_bucket(Bucket='backup')
    options = PipelineOptions([
        f'--s3_endpoint_url={aws_env}', '--s3_access_key_id=testing',
        '--s3_secret_access_key=testing', '--s3_region_name=us-east-1'])
    root = 's3://backup/cdc'
    # Keys (1, 1) and (1, 2) fall in write shards 1 and 0 of 4 (see test_write_shards).
    expected = files(root, ('table=orders/date=2026-11-22', 2), ('table=orders/date=2026-11-22', 1),
                     ('table=orders/date=2026-11-23', 1))
    run(root, changes(), options=options, written=expected, letters=bad_date_letter)
    keys = sorted(o['Key'] for o in s3.list_objects_v2(Bucket='backup')['Contents'])
    assert [k.rsplit('/', 1)[0] for k in keys] == [
        'cdc/table=orders/date=2026-11-22', 'cdc/table=orders/date=2026-11-22',
        'cdc/table=orders/date=2026-11-23']
    body = s3.get_object(Bucket='backup', Key=keys[0])['Body'].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.column('order_id').to_pylist() == [1, 1]

    counters = run(root, changes(), options=options, written=files(root))  # all held already
    assert counters['skipped_existing'] == 4 and counters['files_read'] == 3
    again = sorted(o['Key'] for o in s3.list_objects_v2(Bucket='backup')['Contents'])
    assert again == keys
    assert s3.get_object(Bucket='backup', Key=keys[0])['Body'].read() == body
