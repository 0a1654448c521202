"""WriteToDatabase against SQLite, PostgreSQL and MariaDB: op semantics, the
version guard and tombstones, TRUNCATE, value coercion, dead letters,
idempotence under replay and reordering, an unreachable database."""

import datetime
import decimal
import json
import socket

import apache_beam as beam
import pytest
import sqlalchemy as sa
from apache_beam.testing.util import assert_that, equal_to

from changeflow.config import TableSpec
from changeflow.sql.expressions import col, lit
from changeflow.io import sql
from changeflow.io.sql import WriteToDatabase
from changeflow.metrics import counter_totals
from changeflow.model import Change, OpKind, RowOp, audit_version
from changeflow.transforms.runs import batch_changes, make_batch
from tests.beam_helpers import local_pipeline

D = decimal.Decimal
T0 = 1_795_000_000_000_000  # 2026-11-18, microseconds
ORDERS_SOURCE = 'shop.orders'


def version(n: int) -> str:
    """The version of the n-th statement: one second apart, query id n."""
    return audit_version(T0 + n * 1_000_000, n, n, 0)


def op(kind: OpKind, n: int, assignments=(), **values) -> RowOp:
    return RowOp(kind, version(n), tuple(values.items()), tuple(assignments), f'audit.log#{n}')


def change(key, *ops, table=ORDERS_SOURCE) -> Change:
    return Change(table, tuple(key), tuple(ops), T0)


def truncate(n: int, table=ORDERS_SOURCE) -> Change:
    return Change(table, (), (RowOp(OpKind.TRUNCATE, version(n), position=f'audit.log#{n}'),), 0)


def plus(column, amount):
    return ('bin', '+', col(column), lit(amount))


def run_sink(url, changes, tables, dead=(), **options):
    """Runs ``changes`` through WriteToDatabase; asserts the applied output
    (every change not in ``dead``) and the dead letters, given as (reason,
    position, text the detail must contain), each carrying its Change as JSON.
    Returns the counters by name."""
    dead = list(dead)
    wanted = {position: text for _, position, text in dead}
    applied = [(c.table, c.key) for c in changes if c.ops[-1].position not in wanted]
    pipeline = local_pipeline()
    # As CoalesceChanges delivers them: out of a GroupByKey, timestamped at the
    # end of the global window.
    written, dead_letters = (pipeline | beam.Create(changes)
                             | 'ByRow' >> beam.Map(lambda c: ((c.table, c.key), c))
                             | beam.GroupByKey()
                             | 'Changes' >> beam.FlatMapTuple(lambda _, changes: changes)
                             | WriteToDatabase(url, tables, **options))
    assert_that(written | 'AppliedKeys' >> beam.Map(lambda c: (c.table, c.key)),
                equal_to(applied), label='applied')
    assert_that(
        dead_letters | 'DeadReasons' >> beam.Map(
            lambda d, wanted: (d.reason, d.position,
                               d.step == 'write_database' and wanted[d.position] in d.detail
                               and json.loads(d.original)['ops'][-1]['position'] == d.position),
            wanted),
        equal_to([(reason, position, True) for reason, position, _ in dead]), label='dead')
    result = pipeline.run()
    return counter_totals(result, 'changeflow.write_database')


class Replica:
    """A test's tables in one database, dropped afterwards."""

    def __init__(self, url: str, prefix: str):
        self.url = url
        self.prefix = prefix
        self.bookkeeping = f'{prefix}cf_'
        self.engine = sa.create_engine(url)

    def orders(self, name='orders', rows=()) -> TableSpec:
        """An existing (reflected) orders table with server defaults, seeded
        with ``rows`` as a snapshot copy would leave them (no bookkeeping)."""
        metadata = sa.MetaData()
        table = sa.Table(
            self.prefix + name, metadata,
            sa.Column('id', sa.Integer, primary_key=True, autoincrement=False),
            sa.Column('note', sa.Text),
            sa.Column('status', sa.String(20), nullable=False, server_default='new'),
            sa.Column('qty', sa.Integer, nullable=False, server_default='0'),
            sa.Column('amount', sa.Numeric(10, 2)),
            sa.Column('ordered_on', sa.Date),
            mysql_charset='utf8mb4')
        with self.engine.begin() as conn:
            metadata.create_all(conn)
            if rows:
                conn.execute(table.insert(), list(rows))
        return TableSpec(ORDERS_SOURCE, ('id',), self.prefix + name)

    def run(self, changes, tables, dead=(), **options):
        return run_sink(self.url, changes, tables, dead, bookkeeping_prefix=self.bookkeeping,
                        **options)

    def rows(self, spec: TableSpec):
        """{key: row dict} of a replica table."""
        with self.engine.connect() as conn:
            table = sa.Table(spec.target, sa.MetaData(), autoload_with=conn)
            return {tuple(row[k] for k in spec.key): dict(row)
                    for row in conn.execute(sa.select(table)).mappings()}

    def versions(self, spec: TableSpec):
        """({row_key: (version, deleted)}, truncated_version) of a replica table."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                f'SELECT row_key, version, deleted FROM {self.bookkeeping}row_versions'
                ' WHERE table_name = :t'), {'t': spec.target}).all()
            truncated = conn.execute(sa.text(
                f'SELECT truncated_version FROM {self.bookkeeping}table_versions'
                ' WHERE table_name = :t'), {'t': spec.target}).scalar_one()
        return {key: (v, bool(deleted)) for key, v, deleted in rows}, truncated

    def snapshot(self, spec: TableSpec):
        rows = sorted(self.rows(spec).items())
        return rows, self.versions(spec)

    def drop(self):
        with self.engine.begin() as conn:
            for name in sa.inspect(conn).get_table_names():
                if name.startswith(self.prefix):
                    sa.Table(name, sa.MetaData()).drop(conn)
        self.engine.dispose()


@pytest.fixture
def replica(database_url, table_prefix):
    replica = Replica(database_url, table_prefix)
    yield replica
    replica.drop()


def order_row(id, note=None, status='new', qty=0, amount=None, ordered_on=None):
    return dict(id=id, note=note, status=status, qty=qty, amount=amount, ordered_on=ordered_on)


def test_insert_and_updates_with_literals_and_expressions(replica):
    spec = replica.orders(rows=[order_row(2, status='new', qty=5, amount=D('1.25'))])
    changes = [
        change((1,), op(OpKind.INSERT, 1, id=1, note='first', status='new', qty=1,
                        amount='10.50', ordered_on='2026-11-01'),
               op(OpKind.UPDATE, 2, [('status', lit('paid')), ('qty', plus('qty', 1))])),
        # Evaluated against the row the replica holds.
        change((2,), op(OpKind.UPDATE, 3, [
            ('qty', plus('qty', 1)),
            ('amount', ('bin', '*', col('amount'), lit(2))),
            ('note', ('fn', 'CONCAT', (lit('was '), col('status')))),
        ])),
        change((3,), op(OpKind.UPDATE, 4, [('qty', lit(7))])),  # no such row: a no-op
        # qty was left to its default: written, read back, then incremented.
        change((4,), op(OpKind.INSERT, 5, id=4, note='defaults'),
               op(OpKind.UPDATE, 6, [('qty', plus('qty', 1))])),
        # Two changes of one row in one batch (two windows), arriving newest first.
        change((5,), op(OpKind.UPDATE, 8, [('qty', plus('qty', 10))])),
        change((5,), op(OpKind.INSERT, 7, id=5, qty='3')),
    ]
    counters = replica.run(changes, [spec])
    assert replica.rows(spec) == {
        (1,): order_row(1, 'first', 'paid', 2, D('10.50'), datetime.date(2026, 11, 1)),
        (2,): order_row(2, 'was new', 'new', 6, D('2.50')),
        (4,): order_row(4, 'defaults', 'new', 1),
        (5,): order_row(5, qty=13),
    }
    versions, truncated = replica.versions(spec)
    assert versions == {'[1]': (version(2), False), '[2]': (version(3), False),
                        '[3]': (version(4), True), '[4]': (version(6), False),
                        '[5]': (version(8), False)}
    assert truncated == ''
    assert counters['changes_received'] == 6
    assert counters['rows_upserted'] == 5
    assert counters['rows_deleted'] == 0
    assert counters['batches_committed'] >= 1


def test_delete_leaves_a_tombstone_that_ignores_a_late_older_insert(replica):
    spec = replica.orders(rows=[order_row(3, qty=3)])
    replica.run([change((1,), op(OpKind.INSERT, 1, id=1), op(OpKind.DELETE, 3)),
                 change((2,), op(OpKind.INSERT, 1, id=2), op(OpKind.DELETE, 2)),
                 change((3,), op(OpKind.DELETE, 4))], [spec])
    assert replica.rows(spec) == {}
    assert replica.versions(spec)[0] == {
        '[1]': (version(3), True), '[2]': (version(2), True), '[3]': (version(4), True)}

    counters = replica.run([change((1,), op(OpKind.INSERT, 2, id=1, note='late')),
                            change((2,), op(OpKind.INSERT, 5, id=2, note='newer'))], [spec])
    assert replica.rows(spec) == {(2,): order_row(2, 'newer')}
    assert replica.versions(spec)[0] == {
        '[1]': (version(3), True), '[2]': (version(5), False), '[3]': (version(4), True)}
    assert counters['ops_skipped_stale'] == 1
    assert counters['rows_upserted'] == 1


def test_replace_resets_omitted_columns_to_defaults(replica):
    spec = replica.orders(rows=[order_row(1, 'old', 'shipped', 9, D('5.00'),
                                          datetime.date(2026, 1, 2))])
    counters = replica.run([change((1,), op(OpKind.REPLACE, 1, id=1, note='replaced')),
                            change((2,), op(OpKind.REPLACE, 2, id=2, qty=4))], [spec])
    assert replica.rows(spec) == {(1,): order_row(1, 'replaced'), (2,): order_row(2, qty=4)}
    assert counters['rows_upserted'] == 2


def test_insert_ignore_and_upsert_on_existing_and_missing_rows(replica):
    spec = replica.orders(rows=[order_row(1, 'kept', qty=5), order_row(3, 'counted', qty=5)])
    counters = replica.run([
        change((1,), op(OpKind.INSERT_IGNORE, 1, id=1, note='ignored', qty=100)),
        change((2,), op(OpKind.INSERT_IGNORE, 2, id=2, note='inserted')),
        change((3,), op(OpKind.UPSERT, 3, [('qty', plus('qty', 10))], id=3, qty=1)),
        change((4,), op(OpKind.UPSERT, 4, [('qty', plus('qty', 10))], id=4, qty=1)),
    ], [spec])
    assert replica.rows(spec) == {
        (1,): order_row(1, 'kept', qty=5), (2,): order_row(2, 'inserted'),
        (3,): order_row(3, 'counted', qty=15), (4,): order_row(4, qty=1)}
    assert counters['rows_upserted'] == 3  # row 1 is untouched
    assert replica.versions(spec)[0]['[1]'] == (version(1), False)


def test_truncate_deletes_older_rows_and_keeps_later_ones(replica):
    spec = replica.orders(rows=[order_row(9, 'snapshot row')])
    replica.run([change((1,), op(OpKind.INSERT, 1, id=1)),
                 change((2,), op(OpKind.INSERT, 2, id=2)),
                 change((3,), op(OpKind.INSERT, 6, id=3, note='after the truncate'))], [spec])

    counters = replica.run([
        truncate(5),
        change((4,), op(OpKind.INSERT, 4, id=4, note='before the truncate')),
        change((5,), op(OpKind.INSERT, 7, id=5, note='later insert')),
    ], [spec])
    assert replica.rows(spec) == {(3,): order_row(3, 'after the truncate'),
                                  (5,): order_row(5, 'later insert')}
    assert replica.versions(spec) == (
        {'[3]': (version(6), False), '[5]': (version(7), False)}, version(5))
    assert counters['rows_deleted'] == 3  # rows 1, 2 and the snapshot row 9
    assert counters['ops_skipped_stale'] == 1

    # A replayed (older) truncate is ignored; a newer one empties the table.
    counters = replica.run([truncate(3), truncate(8)], [spec], batch_size=1)
    assert replica.rows(spec) == {}
    assert replica.versions(spec) == ({}, version(8))
    assert counters['ops_skipped_stale'] == 1


def test_updates_after_a_truncate_find_no_row_whatever_shard_they_land_in(replica):
    """The TRUNCATE reaches every shard, so no shard applies a later UPDATE to a
    row the TRUNCATE removed, whichever shard is flushed first."""
    spec = replica.orders(rows=[order_row(i, 'snapshot row') for i in range(1, 21)])
    replica.run([truncate(10)]
                + [change((i,), op(OpKind.UPDATE, 12, [('note', lit('after'))]))
                   for i in range(1, 21)]
                + [change((30,), op(OpKind.INSERT, 15, id=30, note='new'))], [spec])
    assert replica.rows(spec) == {(30,): order_row(30, 'new')}


def test_values_round_trip_exactly(replica):
    spec = TableSpec('shop.kinds', ('id',), replica.prefix + 'kinds', (
        ('id', 'integer'), ('big', 'bigint'), ('amount', 'decimal(12,2)'),
        ('price', 'decimal'), ('ratio', 'float'), ('name', 'string'), ('body', 'text'),
        ('flag', 'boolean'), ('day', 'date'), ('at', 'datetime'), ('blob', 'binary'),
        ('doc', 'json')))
    body = 'line one\nline two\ttab\r\nback\\slash \'quoted\' "double" 日本語'
    changes = [
        change((1,), op(OpKind.INSERT, 1, id=1, big='9007199254740993', amount='12345.67',
                        price='1234.5', ratio='0.25', name="O'Brien, Zoë 🙂", body=body,
                        flag=1, day='2026-11-01', at='2026-11-01 10:20:30.123456',
                        blob=b'\x00\xff\n', doc='{"a": [1, 2.5, "x"]}'),
               op(OpKind.UPDATE, 2, [('amount', plus('amount', D('0.01')))]), table='shop.kinds'),
        change(('2',), op(OpKind.INSERT, 3, id='2', flag=0, amount=D('0.05'), day='2026-02-28'),
               op(OpKind.UPDATE, 4, [('amount', ('bin', '*', col('amount'), lit(3))),
                                     ('flag', lit('1'))]), table='shop.kinds'),
    ]
    replica.run(changes, [spec])
    rows = replica.rows(spec)

    def normal(row):  # MariaDB reflects JSON as LONGTEXT and BOOLEAN as TINYINT
        doc = row['doc']
        return {**row, 'doc': json.loads(doc) if isinstance(doc, str) else doc,
                'flag': None if row['flag'] is None else bool(row['flag'])}
    assert normal(rows[(1,)]) == {
        'id': 1, 'big': 9007199254740993, 'amount': D('12345.68'), 'price': D('1234.5'),
        'ratio': 0.25, 'name': "O'Brien, Zoë 🙂", 'body': body, 'flag': True,
        'day': datetime.date(2026, 11, 1),
        'at': datetime.datetime(2026, 11, 1, 10, 20, 30, 123456),
        'blob': b'\x00\xff\n', 'doc': {'a': [1, 2.5, 'x']}}
    assert normal(rows[(2,)]) == {
        'id': 2, 'big': None, 'amount': D('0.15'), 'price': None, 'ratio': None, 'name': None,
        'body': None, 'flag': True, 'day': datetime.date(2026, 2, 28), 'at': None,
        'blob': None, 'doc': None}
    assert str(rows[(1,)]['amount']) == '12345.68'


def test_bad_values_are_dead_lettered_and_the_rest_of_the_batch_commits(replica):
    spec = replica.orders()._replace(redact=('qty',))
    changes = [
        change((1,), op(OpKind.INSERT, 1, id=1, note='good')),
        change((2,), op(OpKind.INSERT, 2, id=2, ordered_on='2026-13-45')),
        change((3,), op(OpKind.INSERT, 3, id=3, qty='lots')),
        change((4,), op(OpKind.INSERT, 4, id=4, status=None)),  # NOT NULL: the database refuses
        change((5,), op(OpKind.INSERT, 5, id=5, colour='red')),
        change((6,), op(OpKind.INSERT, 6, id=6, note='also good')),
        change((8,), op(OpKind.INSERT, 8, id=8, qty='secret')),
        change((7,), op(OpKind.INSERT, 7, id=7), table='shop.unknown'),
    ]
    counters = replica.run(changes, [spec], dead=[
        ('bad-value', 'audit.log#2', 'ordered_on'),
        ('bad-value', 'audit.log#3', "column 'qty' of"),
        ('bad-value', 'audit.log#8', '<redacted>: not a number'),
        ('database-rejected', 'audit.log#4', 'Error'),
        ('unknown-column', 'audit.log#5', 'colour'),
        ('unknown-table', 'audit.log#7', 'shop.unknown'),
    ])
    assert replica.rows(spec) == {(1,): order_row(1, 'good'), (6,): order_row(6, 'also good')}
    assert set(replica.versions(spec)[0]) == {'[1]', '[6]'}
    assert counters['changes_dead_lettered'] == 6


def test_integers_beyond_bigint_and_bigint_unsigned_are_bad_values(replica):
    """An int the replica would not store as it is, in an integer column, is
    dead-lettered, as the coercer refuses it (the sink tests ints in range inline)."""
    spec = replica.orders()
    changes = [
        change((1,), op(OpKind.INSERT, 1, id=1, qty=2 ** 64)),
        change((2,), op(OpKind.INSERT, 2, id=2, qty=-2 ** 63 - 1)),
        change((3,), op(OpKind.INSERT, 3, id=3, qty=7)),
    ]
    replica.run(changes, [spec], dead=[
        ('bad-value', 'audit.log#1', "column 'qty' of"),
        ('bad-value', 'audit.log#2', "column 'qty' of"),
    ])
    assert replica.rows(spec) == {(3,): order_row(3, qty=7)}


def test_an_int_the_replica_column_cannot_hold_is_rejected_and_its_row_marked(replica):
    """BIGINT UNSIGNED's largest value fits the coercer's integer range but no
    signed column: SQLite's driver cannot even bind it (OverflowError, not a
    database error), PostgreSQL and MariaDB refuse it. Either way that change
    alone is dead-lettered and its row marked diverged; the batch's others commit."""
    spec = replica.orders()
    changes = [change((1,), op(OpKind.INSERT, 1, id=1, qty=2 ** 64 - 1)),
               change((2,), op(OpKind.INSERT, 2, id=2, qty=5))]
    replica.run(changes, [spec], dead=[('database-rejected', 'audit.log#1', "")])
    assert replica.rows(spec) == {(2,): order_row(2, qty=5)}
    with replica.engine.connect() as conn:
        marked = conn.execute(sa.text(
            f'SELECT row_key, reason FROM {replica.bookkeeping}diverged')).all()
    assert [tuple(row) for row in marked] == [('[1]', 'database-rejected')]


def test_replay_and_another_arrival_order_leave_identical_tables(replica):
    notes = (('id', 'integer'), ('body', 'text'))
    seed = [order_row(10, 'seeded', qty=1), order_row(11, 'seeded', qty=2),
            order_row(12, 'seeded', qty=3)]

    def specs(name):
        return [replica.orders(name + '_orders', seed),
                TableSpec('shop.notes', ('id',), f'{replica.prefix}{name}_notes', notes)]
    changes = [
        change((10,), op(OpKind.UPDATE, 1, [('qty', plus('qty', 1))]),
               op(OpKind.UPDATE, 9, [('note', ('fn', 'CONCAT', (col('note'), lit('!'))))])),
        change((11,), op(OpKind.DELETE, 2)),
        change((12,), op(OpKind.REPLACE, 3, id=12, note='replaced'),
               op(OpKind.UPDATE, 4, [('qty', plus('qty', 5))])),
        change((13,), op(OpKind.INSERT, 5, id=13, amount='1.10'),
               op(OpKind.UPSERT, 6, [('amount', plus('amount', 1))], id=13)),
        change((14,), op(OpKind.UPDATE, 7, [('qty', lit(1))])),
        change((1,), op(OpKind.INSERT, 1, id=1, body='gone'), table='shop.notes'),
        change((2,), op(OpKind.INSERT, 2, id=2, body='gone'), op(OpKind.DELETE, 4),
               op(OpKind.INSERT, 8, id=2, body='back'), table='shop.notes'),
        truncate(5, table='shop.notes'),
        change((3,), op(OpKind.INSERT, 6, id=3, body='kept'), table='shop.notes'),
    ]
    first = specs('a')
    replica.run(changes, first)
    before = [replica.snapshot(spec) for spec in first]
    assert before[0][0] == [
        ((10,), order_row(10, 'seeded!', qty=2)),
        ((12,), order_row(12, 'replaced', qty=5)),
        ((13,), order_row(13, amount=D('2.10')))]
    assert before[1][0] == [((2,), {'id': 2, 'body': 'back'}), ((3,), {'id': 3, 'body': 'kept'})]

    counters = replica.run(changes, first)
    assert [replica.snapshot(spec) for spec in first] == before
    assert counters['ops_skipped_stale'] == sum(len(c.ops) for c in changes)
    assert counters.get('rows_upserted', 0) == counters.get('rows_deleted', 0) == 0

    second = specs('b')
    reordered = changes[::-1]
    replica.run(reordered[:4], second, batch_size=1)
    replica.run(reordered[4:], second, batch_size=1)

    assert [replica.snapshot(spec) for spec in second] == before


def test_a_change_straddling_the_stored_version_applies_only_newer_ops(replica):
    spec = replica.orders()
    replica.run([change((1,), op(OpKind.INSERT, 1, id=1, qty=1),
                        op(OpKind.UPDATE, 2, [('qty', plus('qty', 1))]))], [spec])
    counters = replica.run([change((1,), op(OpKind.UPDATE, 2, [('qty', plus('qty', 1))]),
                                   op(OpKind.UPDATE, 3, [('qty', plus('qty', 10))]))], [spec])
    assert replica.rows(spec) == {(1,): order_row(1, qty=12)}
    assert replica.versions(spec)[0] == {'[1]': (version(3), False)}
    assert counters['ops_skipped_stale'] == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_one_rows_changes_over_several_windows_apply_in_version_order(replica):
    """Order-dependent updates of one row, coalesced in six 5-second windows and
    fed to the sink in reverse: the result is that of version order."""
    spec = replica.orders()
    steps = [change([1], op(OpKind.INSERT, 1, id=1, qty=1, note='a'))]
    for n in range(2, 7):  # qty = qty * 2, then qty = qty + n: order matters
        steps.append(change([1], op(OpKind.UPDATE, n, [('qty', ('bin', '*', col('qty'), lit(2))),
                                                       ('qty', plus('qty', n))])))
    pipeline = local_pipeline()
    written, _ = (pipeline
                  | beam.Create(list(reversed(steps)))
                  | beam.Map(lambda c: beam.window.TimestampedValue(
                      c, int(c.ops[0].version[:17]) / 1e6 + 5 * int(c.ops[0].version[-27:-7])))
                  | beam.WindowInto(beam.window.FixedWindows(5))
                  | WriteToDatabase(replica.url, [spec],
                                    bookkeeping_prefix=replica.bookkeeping, batch_size=1))
    assert_that(written | beam.Map(lambda c: c.key), equal_to([(1,)] * 6))
    pipeline.run()
    qty = 1
    for n in range(2, 7):
        qty = qty * 2 + n
    assert replica.rows(spec)[(1,)]['qty'] == qty


@pytest.mark.parametrize('url', [
    'postgresql+psycopg2://postgres@127.0.0.1:{port}/test',
    'mysql+pymysql://root:@127.0.0.1:{port}/test',
    'sqlite:////dev/null/replica.db',
])
def test_an_unreachable_database_dead_letters_the_changes_and_the_pipeline_finishes(url):
    spec = TableSpec(ORDERS_SOURCE, ('id',), 'orders', (('id', 'integer'), ('note', 'text')))
    changes = [change((1,), op(OpKind.INSERT, 1, id=1)), change((2,), op(OpKind.DELETE, 2))]
    counters = run_sink(
        url.format(port=_closed_port()), changes, [spec], max_retries=1,
        dead=[('database-error', 'audit.log#1', 'OperationalError'),
              ('database-error', 'audit.log#2', 'OperationalError')])
    assert counters['batch_retries'] >= 1
    assert counters['changes_dead_lettered'] == 2


def _orders_inserts(count):
    spec = TableSpec(ORDERS_SOURCE, ('id',), 'orders', (('id', 'integer'), ('note', 'text')))
    return spec, [change((n,), op(OpKind.INSERT, n, id=n)) for n in range(1, count + 1)]


def test_a_database_that_stays_unreachable_opens_the_circuit():
    """Three batches in a row cannot reach the database (each retried): the
    rest are dead-lettered untried, saying why, without the URL's password."""
    spec, changes = _orders_inserts(8)
    url = f'postgresql+psycopg2://cf:s3cr3t@127.0.0.1:{_closed_port()}/test'
    tried = [('database-error', f'audit.log#{n}', 'Connection refused') for n in (1, 2, 3)]
    untried = [('sink-unavailable', f'audit.log#{n}',
                'not tried: 3 batches in a row could not reach postgresql+psycopg2://cf:***@')
               for n in range(4, 9)]
    counters = run_sink(url, changes, [spec], dead=tried + untried, max_retries=2,
                        batch_size=1, num_shards=1)
    assert {name: counters[name] for name in (
        'batches_unreachable', 'batch_retries', 'circuit_opened', 'batches_not_tried',
        'changes_dead_lettered')} == {
        'batches_unreachable': 3, 'batch_retries': 6, 'circuit_opened': 1,
        'batches_not_tried': 5, 'changes_dead_lettered': 8}


def test_once_open_time_is_over_each_batch_probes_the_database_without_retries(monkeypatch):
    monkeypatch.setattr(sql, '_CIRCUIT_OPEN_SECS', 0.0)
    spec, changes = _orders_inserts(6)
    url = f'postgresql+psycopg2://cf@127.0.0.1:{_closed_port()}/test'
    counters = run_sink(url, changes, [spec], max_retries=2, batch_size=1, num_shards=1, dead=[
        ('database-error', f'audit.log#{n}', 'Connection refused') for n in range(1, 7)])
    assert (counters['batches_unreachable'], counters['batch_retries'],
            counters['circuit_opened'], counters.get('batches_not_tried', 0)) == (6, 6, 1, 0)


class _Clock:
    """time for the sink: monotonic() as set, sleep() returns at once."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, _):
        pass


def test_the_circuit_closes_when_a_probe_reaches_the_database(tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(sql, 'time', clock)
    folder = tmp_path / 'replica'
    folder.write_text('')  # a file where the database's folder goes: sqlite cannot open it
    spec, changes = _orders_inserts(11)
    writer = sql._DatabaseWriter(f'sqlite:///{folder}/replica.db', [spec], batch_size=1,
                                 max_retries=1, bookkeeping_prefix='cf_')
    writer.setup()

    def write(n):
        outcome = writer._write([sql._Item(changes[n - 1], None, None)])
        return [reason for _, reason, _ in outcome.dead] or ['applied'] * len(outcome.applied)

    assert [write(n) for n in (1, 2, 3)] == [['database-error']] * 3
    assert write(4) == ['sink-unavailable']
    folder.unlink()
    folder.mkdir()  # the database is back, but the circuit is open
    clock.now = sql._CIRCUIT_OPEN_SECS - 1
    assert write(5) == ['sink-unavailable']
    clock.now = sql._CIRCUIT_OPEN_SECS
    assert [write(6), write(7)] == [['applied'], ['applied']]
    writer._engine.dispose()
    folder.rename(tmp_path / 'kept')
    folder.write_text('')  # gone again: it takes three batches in a row anew to open
    assert [write(n) for n in (8, 9, 10, 11)] == [['database-error']] * 3 + [['sink-unavailable']]
    writer.teardown()
    engine = sa.create_engine(f'sqlite:///{tmp_path}/kept/replica.db')
    with engine.connect() as conn:
        assert conn.execute(sa.text('SELECT id FROM orders ORDER BY id')).all() == [(6,), (7,)]
    engine.dispose()


def test_a_missing_reflected_table_fails_setup_naming_table_and_url(sqlite_url):
    pipeline = local_pipeline()
    _ = (pipeline | beam.Create([change((1,), op(OpKind.INSERT, 1, id=1))])
         | WriteToDatabase(sqlite_url, [TableSpec(ORDERS_SOURCE, ('id',), 'no_such_table')]))
    with pytest.raises(Exception, match=r"'no_such_table'.*replica\.db"):
        pipeline.run()


@pytest.mark.parametrize('kwargs, message', [
    (dict(tables=[]), 'tables is empty'),
    (dict(batch_size=0), 'batch_size'),
    (dict(max_retries=-1), 'max_retries'),
    (dict(tables=[TableSpec('a.b', (), 'b')]), 'no key columns'),
    (dict(tables=[TableSpec('a.b', ('id',), 'b', (('name', 'string'),))]), 'key column'),
    (dict(tables=[TableSpec('a.b', ('id',), 'b', (('id', 'uuid'),))]), "'uuid'"),
    (dict(tables=[TableSpec('a.b', ('id',), 'b'), TableSpec('a.b', ('id',), 'c')]), 'twice'),
])
def test_arguments_are_checked(kwargs, message):
    arguments = {'url': 'sqlite://', 'tables': [TableSpec('a.b', ('id',), 'b')], **kwargs}
    with pytest.raises(ValueError, match=message):
        WriteToDatabase(**arguments)


def test_a_shard_batch_commits_in_one_transaction(tmp_path):
    """A bounded run's shard batch is one COMMIT, whatever batch_size says (a
    COMMIT per batch_size changes is an fsync each on a real disk)."""
    spec, changes = _orders_inserts(5)
    url = f'sqlite:///{tmp_path}/replica.db'
    pipeline = local_pipeline()
    written, _ = (pipeline | beam.Create([make_batch(ORDERS_SOURCE, 0, changes)])
                  | sql.WriteBatchesToDatabase(url, [spec], batch_size=2, num_shards=1))
    assert_that(written | beam.Map(lambda batch: (batch[:2], len(batch_changes(batch)))),
                equal_to([((ORDERS_SOURCE, 0), 5)]))
    counters = counter_totals(pipeline.run(), 'changeflow.write_database')
    assert counters['batches_committed'] == 1
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text('SELECT id FROM orders ORDER BY id')).all() == [
            (n,) for n in range(1, 6)]
    engine.dispose()
