"""No element can fail the job: an exception in any changeflow DoFn dead-letters
the element it was processing (``internal-error``, the exception and where it
was raised in the detail, the element's original bytes) and the others go
through. Each stage is forced to raise by monkeypatching a function it calls."""

import gzip
import json

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from changeflow.config import NotifyRule, TableSpec
from changeflow.model import DEAD_LETTER_TAG, Change, LogEvent, OpKind, RowOp, SourceRecord
from changeflow.transforms import guard
from changeflow.transforms.guard import guarded
from changeflow.transforms.transactions import CommittedTransaction
from tests.beam_helpers import local_pipeline

T0 = 1_795_000_000_000_000
LINE = "20261122 14:16:18,vm,app,localhost,{conn},{qid},QUERY,shop,'{sql}',0"
ORDERS = TableSpec('shop.orders', ('id',), 'orders', (('id', 'integer'), ('note', 'text')))


def line(sql, conn=7, qid=1):
    return LINE.format(conn=conn, qid=qid, sql=sql.replace("'", "\\'"))


def record(sequence, *lines):
    payload = {'messageType': 'DATA_MESSAGE', 'owner': '1', 'logGroup': 'g', 'logStream': 's',
               'subscriptionFilters': [], 'logEvents': [
                   {'id': str(i), 'timestamp': 1, 'message': m} for i, m in enumerate(lines)]}
    return SourceRecord(gzip.compress(orjson.dumps(payload)), 'stream', 'shard-0', sequence, 0)


def insert(key, n=1, note='x'):
    from changeflow.model import audit_version
    return Change('shop.orders', (key,), (RowOp(
        OpKind.INSERT, audit_version(T0, n, n, 0), (('id', key), ('note', note)), (),
        f'log#{key}'),), T0)


def raising_for(poison, real):
    """``real``, except that it raises a RuntimeError when ``poison(args)``."""
    def fake(*args, **kwargs):
        if poison(*args, **kwargs):
            raise RuntimeError('forced failure')
        return real(*args, **kwargs)
    return fake


def letters_check(expected):
    """assert_that check of dead letters as (step, reason, original) with the detail's
    traceback line."""
    def check(letters):
        got = sorted((d.step, d.reason, d.original) for d in letters)
        assert got == sorted(expected), got
        for d in letters:
            if d.reason == 'internal-error':
                assert 'RuntimeError: forced failure (at ' in d.detail, d.detail
    return check


def run(build, main_expected, letters_expected, main_key=lambda x: x):
    p = local_pipeline()
    main, dead = build(p)
    assert_that(main | 'Keys' >> beam.Map(main_key), equal_to(main_expected), label='main')
    assert_that(dead, letters_check(letters_expected), label='dead')
    p.run().wait_until_finish()


# --- the guard itself --------------------------------------------------------

@guarded('toy', lambda x: str(x).encode(), lambda x: f'#{x}')
class _Buffered(beam.DoFn):
    def process(self, n):
        yield n
        if n == 2:
            raise RuntimeError('forced failure')
        yield n * 10


@guarded('toy', lambda x: str(x).encode(), buffered=False)
class _Streaming(beam.DoFn):
    def process(self, n):
        yield n
        if n == 2:
            raise RuntimeError('forced failure')
        yield n * 10


_TOY_TIMER = userstate.TimerSpec('toy', TimeDomain.WATERMARK)
_TOY_BAG = userstate.BagStateSpec('seen', beam.coders.VarIntCoder())


@guarded('toy', lambda kv: str(kv[1]).encode(), buffered=False)
class _Timed(beam.DoFn):
    def process(self, kv, bag=beam.DoFn.StateParam(_TOY_BAG),
                timer=beam.DoFn.TimerParam(_TOY_TIMER)):
        bag.add(kv[1])
        timer.set(0)

    @userstate.on_timer(_TOY_TIMER)
    def fired(self, key=beam.DoFn.KeyParam, bag=beam.DoFn.StateParam(_TOY_BAG)):
        for n in sorted(bag.read()):
            if key == 'bad' and n == 2:
                raise RuntimeError('forced failure')
            yield n


def test_guard_buffers_process_outputs_all_or_nothing():
    run(lambda p: (p | beam.Create([1, 2, 3]) | beam.ParDo(_Buffered()).with_outputs(
        DEAD_LETTER_TAG, main='main')), [1, 10, 3, 30], [('toy', 'internal-error', b'2')])


def test_guard_streaming_keeps_what_was_emitted_and_says_so():
    p = local_pipeline()
    out = p | beam.Create([1, 2, 3]) | beam.ParDo(_Streaming()).with_outputs(
        DEAD_LETTER_TAG, main='main')
    assert_that(out.main, equal_to([1, 10, 2, 3, 30]), label='main')
    assert_that(out[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.reason, d.detail.split(':')[0])),
                equal_to([('internal-error', 'after 1 output(s) of this element were emitted')]),
                label='dead')
    p.run().wait_until_finish()


def test_guard_covers_timer_callbacks():
    run(lambda p: (p | beam.Create([('ok', 1), ('ok', 2), ('bad', 1), ('bad', 2), ('bad', 3)])
                   | beam.ParDo(_Timed()).with_outputs(DEAD_LETTER_TAG, main='main')),
        [1, 2, 1], [('toy', 'internal-error', b"'bad'")])


def test_describe_error_and_preview_are_bounded():
    deep = []
    for _ in range(5000):
        deep = [deep]
    assert guard.preview(deep) == '[[[[...]]]]'
    assert len(guard.preview(10 ** 4000)) <= 80
    try:
        int('9' * 5000)
    except ValueError as error:
        detail = guard.describe_error(error)
    assert detail.startswith('ValueError: Exceeds the limit') and len(detail) < 700


# --- every stage -------------------------------------------------------------

def test_decode_internal_error(monkeypatch):
    from changeflow.transforms import decode
    monkeypatch.setattr(decode, '_decode', raising_for(lambda r: r.sequence == '2', decode._decode))
    records = [record(str(n), line(f'SELECT {n}')) for n in (1, 2, 3)]

    def build(p):
        out = p | beam.Create(records) | decode.DecodeCloudWatchRecords()
        return out[decode.DecodeCloudWatchRecords.MAIN], out[DEAD_LETTER_TAG]
    run(build, ["'SELECT 1'", "'SELECT 3'"], [('decode', 'internal-error', records[1].data)],
        lambda e: e.message.split(',')[8])


def test_parse_internal_error(monkeypatch):
    from changeflow.transforms import audit_log
    monkeypatch.setattr(audit_log, 'parse_audit_line', raising_for(
        lambda text, *_, **__: 'BOOM' in text, audit_log.parse_audit_line))
    events = [LogEvent(line(sql), 'g', 's', '1', 1, f'p{i}')
              for i, sql in enumerate(['SELECT 1', 'BOOM', 'SELECT 2'])]

    def build(p):
        out = p | beam.Create(events) | audit_log.ParseAuditLines()
        return out[audit_log.ParseAuditLines.MAIN], out[DEAD_LETTER_TAG]
    run(build, ['SELECT 1', 'SELECT 2'],
        [('parse_audit', 'internal-error', line('BOOM').encode())], lambda e: e.object)


def test_transactions_internal_error(monkeypatch):
    from changeflow.transforms import transactions
    from changeflow.transforms.audit_log import parse_audit_line
    monkeypatch.setattr(transactions, '_classify', raising_for(
        lambda sql, *_, **__: 'BOOM' in sql, transactions._classify))
    events = [parse_audit_line(line(sql, conn, qid), f'p{conn}.{qid}') for conn, qid, sql in (
        (1, 1, 'DELETE FROM orders WHERE id = 1'), (2, 2, 'DELETE FROM orders WHERE id = 2'),
        (2, 3, 'DELETE FROM orders WHERE id = 3 /* BOOM */'))]

    def build(p):
        out = p | beam.Create(events) | transactions.ResolveTransactions()
        return out['transactions'], out[DEAD_LETTER_TAG]
    run(build, [1], [('transactions', 'internal-error',
                      f'{events[1].line}\n{events[2].line}'.encode())],
        lambda t: t.connection_id)


def test_sql_changes_internal_error_takes_only_its_statement(monkeypatch):
    from changeflow.sql.plans import StatementTranslator
    from changeflow.transforms.audit_log import parse_audit_line
    from changeflow.transforms.sql_changes import ExtractRowChanges
    monkeypatch.setattr(StatementTranslator, 'translate', raising_for(
        lambda self, sql, *_, **__: 'BOOM' in sql, StatementTranslator.translate))
    statements = tuple(parse_audit_line(line(sql, 1, qid), f'p{qid}') for qid, sql in enumerate(
        ['DELETE FROM orders WHERE id = 1', 'DELETE FROM orders WHERE id = 2 /* BOOM */',
         'DELETE FROM orders WHERE id = 3'], 1))

    def build(p):
        out = (p | beam.Create([CommittedTransaction('vm', 1, statements)])
               | ExtractRowChanges([ORDERS]))
        return out['changes'], out[DEAD_LETTER_TAG]
    run(build, [(1,), (3,)], [('sql_changes', 'internal-error', statements[1].line.encode())],
        lambda c: c.key)


def test_coalesce_internal_error(monkeypatch):
    from changeflow.transforms import coalesce
    monkeypatch.setattr(coalesce, 'coalesce_changes', raising_for(
        lambda changes, *_: changes[0].key == (2,), coalesce.coalesce_changes))
    changes = [insert(n) for n in (1, 2, 3)]

    def build(p):
        out = p | beam.Create(changes) | coalesce.CoalesceChanges()
        return out[coalesce.CoalesceChanges.MAIN], out[DEAD_LETTER_TAG]
    run(build, [(1,), (3,)], [('coalesce', 'internal-error', guard.changes_original(changes[1]))],
        lambda c: c.key)


def test_route_internal_error(monkeypatch):
    from changeflow.transforms import route
    monkeypatch.setattr(route, 'TaggedOutput', raising_for(
        lambda tag, change: change.key == (2,), route.TaggedOutput))
    changes = [insert(n) for n in (1, 2, 3)]

    def build(p):
        out = p | beam.Create(changes) | route.RouteChanges([route.DATABASE])
        return out[route.DATABASE], out[DEAD_LETTER_TAG]
    run(build, [(1,), (3,)], [('route', 'internal-error', guard.changes_original(changes[1]))],
        lambda c: c.key)


def test_database_sink_internal_error_takes_only_its_change(monkeypatch, sqlite_url):
    from changeflow.io import sql
    monkeypatch.setattr(sql, 'apply_op', raising_for(
        lambda state, op, *_: dict(op.values).get('id') == 2, sql.apply_op))
    changes = [insert(n) for n in (1, 2, 3)]

    def build(p):
        out = p | beam.Create(changes) | sql.WriteToDatabase(sqlite_url, [ORDERS])
        return out[sql.WriteToDatabase.MAIN], out[DEAD_LETTER_TAG]
    run(build, [(1,), (3,)], [('write_database', 'internal-error', guard.changes_original(
        changes[1]))], lambda c: c.key)


def test_parquet_sink_internal_error(monkeypatch, tmp_path):
    from changeflow.io import parquet
    monkeypatch.setattr(parquet, '_utc_day', raising_for(
        lambda time_us: time_us == T0 + 2, parquet._utc_day))
    changes = [insert(n)._replace(event_time_us=T0 + n) for n in (1, 2, 3)]

    def build(p):
        out = p | beam.Create(changes) | parquet.WriteParquetBackup(str(tmp_path), [ORDERS],
                                                                     shards=1)  # one file
        return out[parquet.WriteParquetBackup.MAIN], out[DEAD_LETTER_TAG]
    run(build, [2], [('write_parquet', 'internal-error', guard.changes_original(changes[1]))],
        lambda f: f.records)


def test_notify_sink_internal_error(monkeypatch, tmp_path):
    from changeflow.io import notify
    monkeypatch.setattr(notify, '_new_pending', raising_for(
        lambda fields: fields[0] == changes[1].version, notify._new_pending))
    changes = [insert(n, n) for n in (1, 2, 3)]

    def build(p):
        out = p | beam.Create(changes) | notify.WriteNotifications(
            [NotifyRule(f'file:{tmp_path / "n.jsonl"}')], [ORDERS])
        return out[notify.WriteNotifications.MAIN], out[DEAD_LETTER_TAG]
    run(build, [[1], [3]], [('write_notify', 'internal-error', guard.changes_original(
        changes[1]))], lambda text: json.loads(text)['key'])


def test_archive_reader_internal_error_takes_only_its_line(monkeypatch, tmp_path):
    from changeflow.io import archive
    monkeypatch.setattr(archive, '_kinesis_record', raising_for(
        lambda record, path: record['SequenceNumber'] == '2', archive._kinesis_record))
    lines = [orjson.dumps({'Data': 'e30=', 'SequenceNumber': str(n)}) for n in (1, 2, 3)]
    (tmp_path / 'a.jsonl').write_bytes(b'\n'.join(lines))

    def build(p):
        out = p | archive.ReadArchive('kinesis-jsonl', str(tmp_path / 'a.jsonl'))
        return out[archive.ReadArchive.MAIN], out[DEAD_LETTER_TAG]
    run(build, ['1', '3'], [('read_archive', 'internal-error', lines[1])], lambda r: r.sequence)


def test_guard_is_what_catches(monkeypatch):
    """Without the guard the same forced failure fails the job (the tests above
    are not vacuous)."""
    from changeflow.transforms import decode
    monkeypatch.setattr(guard, '_report', lambda step, error: (_ for _ in ()).throw(error))
    monkeypatch.setattr(decode, '_decode', raising_for(lambda r: True, decode._decode))
    p = local_pipeline()
    _ = p | beam.Create([record('1', line('SELECT 1'))]) | decode.DecodeCloudWatchRecords()
    with pytest.raises(Exception, match='forced failure'):
        p.run().wait_until_finish()


# --- the input classes that failed or blew up the job ------------------------

def test_deeply_nested_parentheses_are_unparseable_not_a_crash():
    from changeflow.sql.plans import SqlChangeError, StatementTranslator
    sql = f"UPDATE orders SET note = {'(' * 60}1{')' * 60} WHERE id = 1"
    with pytest.raises(SqlChangeError, match='nested too deeply') as raised:
        StatementTranslator([ORDERS]).translate(sql, 'shop')
    assert raised.value.reason == 'unparseable-sql'


def test_deep_json_in_a_wrongly_typed_envelope_field_is_described_briefly():
    from changeflow.transforms.decode import DecodeError, decode_record
    for field in ('logGroup', 'messageType', 'logEvents'):
        payload = {'messageType': 'DATA_MESSAGE', 'logGroup': 'g', 'logStream': 's',
                   'logEvents': []}
        data = orjson.dumps(payload).replace(
            f'"{field}":'.encode(), f'"{field}":{"[" * 1000}{"]" * 1000},"x{field}":'.encode())
        with pytest.raises(DecodeError) as raised:
            decode_record(SourceRecord(gzip.compress(data), 's', '', '1', 0))
        assert raised.value.reason == 'bad-envelope' and '[[[[...]]]]' in raised.value.detail


@pytest.mark.parametrize('fields', [
    {'conn': '9' * 5000}, {'qid': '9' * 5000}, {'qid': str(2 ** 64)}, {'ts': '9' * 5000},
    {'ts': '1' + '0' * 308}, {'rc': '9' * 5000}])
def test_absurd_ids_timestamps_and_retcodes_are_malformed_lines(fields):
    from changeflow.transforms.audit_log import AuditLineError, parse_audit_line
    text = (f"{fields.get('ts', '20261122 14:16:18')},vm,app,localhost,{fields.get('conn', 7)},"
            f"{fields.get('qid', 1)},QUERY,shop,'SELECT 1',{fields.get('rc', 0)}")
    with pytest.raises(AuditLineError) as raised:
        parse_audit_line(text)
    assert raised.value.reason == 'malformed-line' and len(raised.value.detail) < 300


def test_largest_ids_still_parse():
    from changeflow.transforms.audit_log import parse_audit_line
    event = parse_audit_line(f"{10 ** 17 - 1},vm,app,h,{2 ** 64 - 1},{2 ** 64 - 1},QUERY,shop,'SELECT 1',0")
    assert (event.connection_id, event.query_id, event.timestamp_us) == (
        2 ** 64 - 1, 2 ** 64 - 1, 10 ** 17 - 1)


@pytest.mark.parametrize('arrival', [1e308, -1e308, float('inf'), 10 ** 400, -1, '9999-12-31T23:59:59+00:00x',
                                     '0001-01-01T00:00:00+14:00', [[[[[[[[[]]]]]]]]]],
                         ids=lambda value: repr(value)[:20])
def test_absurd_arrival_times_are_bad_records(arrival):
    from changeflow.io.archive import _ArchiveError, _kinesis_record
    with pytest.raises(_ArchiveError) as raised:
        _kinesis_record({'Data': 'e30=', 'SequenceNumber': '1',
                         'ApproximateArrivalTimestamp': arrival}, 'f')
    assert raised.value.reason == 'bad-record' and len(raised.value.detail) < 300


def test_non_ascii_base64_data_is_bad_base64():
    from changeflow.io.archive import _ArchiveError, _kinesis_record
    with pytest.raises(_ArchiveError) as raised:
        _kinesis_record({'Data': 'é4=', 'SequenceNumber': '1'}, 'f')
    assert raised.value.reason == 'bad-base64'


@pytest.mark.parametrize('sql, reason', [
    ('INSERT INTO orders VALUES ()', 'unsupported-sql'),
    ('INSERT INTO orders (id) VALUES ()', 'unsupported-sql'),
    ('INSERT INTO orders () VALUES ()', 'needs-lookup'),
    ('UPDATE orders SET note = ? WHERE id = 1', 'needs-lookup'),
    ('DELETE FROM orders WHERE id = ?', 'needs-lookup'),
    ('INSERT INTO orders (id, note) VALUES (?, 1)', 'needs-lookup'),
])
def test_empty_values_and_placeholders_are_refused(sql, reason):
    from changeflow.sql.plans import SqlChangeError, StatementTranslator
    with pytest.raises(SqlChangeError) as raised:
        StatementTranslator([ORDERS]).translate(sql, 'shop')
    assert raised.value.reason == reason


def test_in_lists_whose_cross_product_explodes_are_refused_quickly():
    import time
    from changeflow.sql.plans import MAX_ROWS_PER_STATEMENT, SqlChangeError, StatementTranslator
    spec = TableSpec('shop.pairs', ('a', 'b'), 'pairs', (('a', 'integer'), ('b', 'integer')))
    translator = StatementTranslator([spec])
    values = ', '.join(map(str, range(1000)))
    started = time.perf_counter()
    with pytest.raises(SqlChangeError) as raised:
        translator.translate(f'DELETE FROM pairs WHERE a IN ({values}) AND b IN ({values})', 'shop')
    assert time.perf_counter() - started < 5
    assert raised.value.reason == 'too-many-rows' and '1,000,000' in raised.value.detail
    # Within the bound, and one long list alone, are translated.
    assert len(translator.translate(f'DELETE FROM pairs WHERE a IN ({values}) AND b IN (1, 2)',
                                    'shop').changes) == 2000
    many = ', '.join(map(str, range(MAX_ROWS_PER_STATEMENT + 1)))
    assert len(translator.translate(f'DELETE FROM pairs WHERE a IN ({many}) AND b = 1',
                                    'shop').changes) == MAX_ROWS_PER_STATEMENT + 1


def gzip_bomb(inflated: int = 256 << 20) -> bytes:
    """gzip(gzip(``inflated`` spaces)): about 1 KB that inflates to ``inflated`` bytes."""
    import zlib
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b' ' * (1 << 20)
    parts = [inner.compress(block) for _ in range(inflated >> 20)] + [inner.flush()]
    return gzip.compress(b''.join(parts), 9)


def test_gzip_bomb_is_too_large_without_inflating_it_all():
    import resource
    import time
    from changeflow.transforms.decode import MAX_INFLATED_BYTES, DecodeError, decode_record
    bomb = gzip_bomb()
    assert len(bomb) < 2000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(DecodeError) as raised:
        decode_record(SourceRecord(bomb, 's', '', '1', 0))
    assert raised.value.reason == 'too-large' and f'{MAX_INFLATED_BYTES:,}' in raised.value.detail
    assert time.perf_counter() - started < 5
    # At most about twice the bound is held (the parts, then their join), never the 256 MiB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 3 * MAX_INFLATED_BYTES // 1024


def test_crafted_firehose_tail_resyncs_in_linear_time():
    """A tail of gzip headers each followed by a stored block spanning the next
    header: from every candidate, inflating runs to the end of the data and is
    truncated, so trying each candidate in turn is quadratic (2.6 s for 120 KB
    before the bound; 35 GB of inflating for 1 MB)."""
    import struct
    import time
    from changeflow.io.archive import _gzip_members
    header = b'\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff'
    stored = b'\x00' + struct.pack('<HH', 10, 10 ^ 0xffff)
    good = gzip.compress(b'{"messageType":"CONTROL_MESSAGE"}')
    data = good + b'\x00junk' + (header + stored) * 70_000 + good
    started = time.perf_counter()
    members = list(_gzip_members(data))
    assert time.perf_counter() - started < 2
    assert members[0][:3] == (0, len(good), b'{"m')
    # The rest is one corrupt stretch, kept whole for its dead letter.
    assert [(start, end, head) for start, end, head, _ in members[1:]] == [
        (len(good), len(data), None)]
    assert 'not searched for members' in members[1][3]


def test_corrupt_member_between_good_ones_is_still_found_around():
    from changeflow.io.archive import _gzip_members
    good = [gzip.compress(b'{"n": %d}' % n) for n in range(3)]
    broken = good[1][:20] + b'\xff' * 10 + good[1][30:]
    data = good[0] + broken + good[2]
    found = [(start, end, head is not None) for start, end, head, _ in _gzip_members(data)]
    assert found == [(0, len(good[0]), True), (len(good[0]), len(good[0]) + len(broken), False),
                     (len(good[0]) + len(broken), len(data), True)]


# --- all of them mixed into good records, through the whole job ---------------

ITEMS = {'key': ['tenant_id', 'id'], 'columns': {
    'tenant_id': 'integer', 'id': 'integer', 'note': 'text', 'amount': 'decimal(10,2)'}}


def kinesis_line(sequence, data: bytes, **extra) -> bytes:
    import base64
    return orjson.dumps({'Data': base64.b64encode(data).decode(), 'SequenceNumber': str(sequence),
                         'ApproximateArrivalTimestamp': 1_795_000_000.5, **extra})


def envelope(*messages, **fields) -> bytes:
    payload = {'messageType': 'DATA_MESSAGE', 'owner': '1', 'logGroup': 'g', 'logStream': 's',
               'subscriptionFilters': [], 'logEvents': [
                   {'id': str(i), 'timestamp': 1, 'message': m} for i, m in enumerate(messages)]}
    payload.update(fields)
    return orjson.dumps(payload)


def run_job(tmp_path, lines, tables=None):
    import yaml
    from changeflow.pipelines import audit_sync
    (tmp_path / 'in.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
    config = {'source': {'type': 'archive', 'format': 'kinesis-jsonl', 'path': 'in.jsonl'},
              'tables': tables or {'shop.items': ITEMS},
              'sinks': {'database': {'url': 'sqlite:///replica.db'}, 'parquet': {'path': 'backup'},
                        'notify': [{'to': 'file:notes.jsonl'}]},
              'dead_letter': {'path': 'dead'}, 'audit': {'query_log_limit': 0}}
    (tmp_path / 'job.yaml').write_text(yaml.safe_dump(config, sort_keys=False))
    audit_sync.run(['--config', str(tmp_path / 'job.yaml')])


def replica_rows(tmp_path, table='items'):
    import sqlalchemy as sa
    engine = sa.create_engine(f'sqlite:///{tmp_path / "replica.db"}')
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f'SELECT * FROM {table} ORDER BY 1, 2')).all()
    engine.dispose()
    return [tuple(row) for row in rows]


def test_poison_mixed_into_good_records_is_dead_lettered_and_the_rest_replicates(tmp_path):
    from changeflow.io.dead_letter import read_dead_letters
    qid = iter(range(1, 1000))

    def stmt(sql, conn=7):
        return line(sql, conn, next(qid))

    values = ', '.join(map(str, range(1000)))
    good = [stmt("INSERT INTO items (tenant_id, id, note, amount) VALUES (1, 1, 'a', 1.50)"),
            stmt("INSERT INTO items (tenant_id, id, note, amount) VALUES (1, 2, 'b', 2.00)"),
            stmt("UPDATE items SET note = 'c' WHERE tenant_id = 1 AND id = 2")]
    poison_statements = {
        'parens': (stmt(f"UPDATE items SET amount = {'(' * 60}1{')' * 60} WHERE tenant_id = 1 AND id = 1"),
                   'sql_changes', 'unparseable-sql'),
        'empty-values': (stmt('INSERT INTO items VALUES ()'), 'sql_changes', 'unsupported-sql'),
        'placeholder': (stmt('UPDATE items SET note = ? WHERE tenant_id = 1 AND id = 1'),
                        'sql_changes', 'needs-lookup'),
        'cross-product': (stmt(f'DELETE FROM items WHERE tenant_id IN ({values}) AND id IN ({values})'),
                          'sql_changes', 'too-many-rows'),
        'query-id': (line("UPDATE items SET note = 'x' WHERE tenant_id = 1 AND id = 1", 7, '9' * 5000),
                     'parse_audit', 'malformed-line'),
        'timestamp': (line("UPDATE items SET note = 'x' WHERE tenant_id = 1 AND id = 1", 7, 900)
                      .replace('20261122 14:16:18', '1' + '0' * 308), 'parse_audit', 'malformed-line'),
    }
    lines = [kinesis_line(1, gzip.compress(envelope(*good)))]
    expected = []
    for n, (name, (text, step, reason)) in enumerate(poison_statements.items(), 2):
        lines.append(kinesis_line(n, gzip.compress(envelope(text))))
        expected.append((step, reason, text.encode()))
    nan = stmt("INSERT INTO items (tenant_id, id, note, amount) VALUES (1, 9, 'nan', 'NaN')")
    lines.append(kinesis_line(20, gzip.compress(envelope(nan))))
    expected += [('write_database', 'bad-value', None), ('write_parquet', 'bad-value', None)]
    records = {
        'deep-json': (gzip.compress(envelope(stmt('SELECT 1'), logGroup=[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]])),
                      'decode', 'bad-envelope'),
        'deep-json-1000': (gzip.compress(envelope(stmt('SELECT 1')).replace(
            b'"logGroup":"g"', b'"logGroup":' + b'[' * 1000 + b']' * 1000)), 'decode', 'bad-envelope'),
        'bomb': (gzip_bomb(), 'decode', 'too-large'),
    }
    for n, (name, (data, step, reason)) in enumerate(records.items(), 30):
        lines.append(kinesis_line(n, data))
        expected.append((step, reason, data))
    for n, (text, reason) in enumerate([
            (kinesis_line(40, gzip.compress(envelope(stmt('SELECT 1'))), ApproximateArrivalTimestamp=1e308),
             'bad-record'),
            (orjson.dumps({'Data': 'é' * 8, 'SequenceNumber': '41'}), 'bad-base64'),
            (b'{"Records": [' + b'[' * 300 + b']' * 300 + b']}', 'bad-record')]):
        lines.append(text)
        expected.append(('read_archive', reason, text))

    run_job(tmp_path, lines)

    assert replica_rows(tmp_path) == [(1, 1, 'a', 1.5), (1, 2, 'c', 2)]
    letters = list(read_dead_letters(str(tmp_path / 'dead')))
    got = sorted((d.step, d.reason, d.original if (d.step, d.reason) != (
        'write_database', 'bad-value') and d.step != 'write_parquet' else None) for d in letters)
    assert got == sorted(expected)
    sink_letters = [d for d in letters if d.step in ('write_database', 'write_parquet')]
    assert all(json.loads(d.original)['key'] == [1, 9] for d in sink_letters)
    notes = [json.loads(n) for n in (tmp_path / 'notes.jsonl').read_text().splitlines()]
    assert sorted((n['key'], n['op']) for n in notes) == [  # one per source op
        ([1, 1], 'insert'), ([1, 2], 'insert'), ([1, 2], 'update'), ([1, 9], 'insert')]


# --- secrets and case-insensitive column names --------------------------------

@pytest.mark.parametrize('sql, masked', [
    ("CREATE USER 'bob'@'%' IDENTIFIED BY 'hunter2'", "CREATE USER 'bob'@'%' IDENTIFIED BY '*****'"),
    ("CREATE USER bob IDENTIFIED WITH mysql_native_password AS '*2470C0C06DEE42FD'",
     "CREATE USER bob IDENTIFIED WITH mysql_native_password AS '*****'"),
    ("GRANT ALL ON *.* TO bob IDENTIFIED BY 'hunter2' WITH GRANT OPTION",
     "GRANT ALL ON *.* TO bob IDENTIFIED BY '*****' WITH GRANT OPTION"),
    ("SET PASSWORD FOR bob = PASSWORD('hunter2')", "SET PASSWORD FOR bob = PASSWORD('*****')"),
    ("set password = 'hunter2'", "set password = '*****'"),
    ("UPDATE mysql.user SET authentication_string = 'hunter2' WHERE User = 'bob'",
     "UPDATE mysql.user SET authentication_string = '*****' WHERE User = '*****'"),
    ('INSERT INTO t VALUES (1, OLD_PASSWORD("hunter2"))', 'INSERT INTO t VALUES (1, OLD_PASSWORD("*****"))'),
    ("ALTER USER bob IDENTIFIED BY 'it''s \\' hunter2'", "ALTER USER bob IDENTIFIED BY '*****'"),
    ("CREATE USER bob IDENTIFIED BY 'hunt", "CREATE USER bob IDENTIFIED BY '*****'"),
    (line("SET PASSWORD = PASSWORD('hunter2')"),
     "20261122 14:16:18,vm,app,localhost,7,1,QUERY,shop,'SET PASSWORD = PASSWORD(\\'*****\\')',0"),
    ("UPDATE t SET note = 'no secret here' WHERE id = 1", "UPDATE t SET note = 'no secret here' WHERE id = 1"),
])
def test_passwords_are_masked(sql, masked):
    from changeflow.sql.secrets import mask_secrets
    assert mask_secrets(sql) == masked


def test_dead_letters_mask_statement_text_and_details_but_keep_bytes():
    from changeflow.model import dead_letter
    statement = line("CREATE USER bob IDENTIFIED BY 'hunter2'")
    letter = dead_letter('parse_audit', 'malformed-line', f'bad: {statement}', statement, 'p')
    assert b'hunter2' not in letter.original and 'hunter2' not in letter.detail
    record = b"{\"m\": \"IDENTIFIED BY 'hunter2'\"}"
    assert dead_letter('decode', 'bad-json', 'x', record, 'p').original == record


def test_no_dead_letter_written_shows_a_password(tmp_path):
    from changeflow.io.dead_letter import read_dead_letters
    statements = [
        line("INSERT INTO items (tenant_id, id, note) VALUES (1, 5, PASSWORD('hunter2'))", 7, 1),
        line("SET PASSWORD = PASSWORD('hunter2')", 7, 2).replace(',vm,', ',vm,x,'),  # 11 fields
        line("UPDATE items SET note = CONCAT(note, 'x') WHERE tenant_id = 1 AND id IN (1, 2) "
             "AND note = PASSWORD('hunter2')", 8, 3),
        "20261122 14:16:18,vm,app,localhost,9,4,QUERY,shop,'CREATE USER x IDENTIFIED BY \\'hunter2",
    ]
    run_job(tmp_path, [kinesis_line(n, gzip.compress(envelope(s))) for n, s in enumerate(statements)])
    letters = list(read_dead_letters(str(tmp_path / 'dead')))
    assert len(letters) == 4, letters
    for letter in letters:
        assert b'hunter2' not in letter.original and 'hunter2' not in letter.detail, letter
        assert b'*****' in letter.original


CUSTOMERS = {'key': 'id', 'columns': {'id': 'integer', 'name': 'string', 'email': 'string',
                                      'pin': 'integer'}, 'redact': ['EMAIL', 'Pin']}


def test_column_names_are_case_insensitive_in_every_sink_redaction_included(tmp_path):
    import pyarrow.parquet as pq
    statements = [line("INSERT INTO customers (ID, NAME, EMAIL) VALUES (1, 'n', 'first@x.org')", 7, 1),
                  line("UPDATE customers SET Email = 'second@x.org', Name = 'm' WHERE Id = 1", 7, 2)]
    run_job(tmp_path, [kinesis_line(n, gzip.compress(envelope(s))) for n, s in enumerate(statements)],
            tables={'shop.customers': CUSTOMERS})
    assert not list((tmp_path / 'dead').glob('*.jsonl'))
    assert replica_rows(tmp_path, 'customers') == [(1, 'm', 'second@x.org', None)]
    notes = (tmp_path / 'notes.jsonl').read_text()
    assert '@x.org' not in notes
    assert [json.loads(note)['values'] for note in notes.splitlines()] == [  # one per statement
        {'id': 1, 'name': 'n', 'email': '***'}, {'name': 'm', 'email': '***'}]
    backup = pq.read_table(next((tmp_path / 'backup').rglob('*.parquet'))).to_pylist()
    assert [(row['id'], row['name'], row['email']) for row in backup] == [
        (1, 'n', 'first@x.org'), (1, 'm', 'second@x.org')]


def test_no_bad_value_detail_shows_a_redacted_value(tmp_path):
    from changeflow.io.dead_letter import read_dead_letters
    statements = [line("INSERT INTO customers (id, name, PIN) VALUES (1, 'n', 'secret-pin')", 7, 1)]
    run_job(tmp_path, [kinesis_line(n, gzip.compress(envelope(s))) for n, s in enumerate(statements)],
            tables={'shop.customers': CUSTOMERS})
    letters = list(read_dead_letters(str(tmp_path / 'dead')))
    assert sorted((d.step, d.reason) for d in letters) == [
        ('write_database', 'bad-value'), ('write_parquet', 'bad-value')]
    for letter in letters:
        assert 'secret-pin' not in letter.detail and '<redacted>' in letter.detail, letter.detail
    assert 'secret-pin' not in (tmp_path / 'notes.jsonl').read_text()


def test_the_sql_stage_spells_columns_as_the_spec_does():
    from changeflow.sql.plans import StatementTranslator
    translator = StatementTranslator([ORDERS])
    (insert_,) = translator.translate("INSERT INTO orders (ID, Note) VALUES (1, 'a') "
                                      "ON DUPLICATE KEY UPDATE NOTE = CONCAT(NoTe, 'b')", 'shop').changes
    assert insert_.values == (('id', 1), ('note', 'a'))
    assert insert_.assignments == (('note', ('fn', 'CONCAT', (('col', 'note'), ('lit', 'b')))),)
    (update,) = translator.translate("UPDATE orders SET NOTE = 'x' WHERE Id = 2", 'shop').changes
    assert (update.key, update.assignments) == ((2,), (('note', ('lit', 'x')),))
    undeclared = StatementTranslator([ORDERS._replace(columns=())])
    (change,) = undeclared.translate("INSERT INTO orders (ID, Other) VALUES (1, 2)", 'shop').changes
    assert change.values == (('id', 1), ('Other', 2))  # the key is always known


def test_an_expression_that_cannot_be_folded_is_left_to_the_sink():
    """GREATEST of a text and a number raised in the coalescer and failed the job;
    it now folds as MySQL compares them (as numbers), and an expression MySQL
    refuses (BIGINT overflow) is left to the sink, which dead-letters it."""
    from changeflow.model import audit_version
    from changeflow.transforms.coalesce import coalesce_ops
    insert = RowOp(OpKind.INSERT, audit_version(1, 1, 1, 0), (('id', 1), ('note', 'a')))
    greatest = RowOp(OpKind.UPDATE, audit_version(1, 2, 2, 0), (), (
        ('note', ('fn', 'GREATEST', (('col', 'note'), ('lit', 5)))),))
    (folded,) = coalesce_ops([insert, greatest])
    assert dict(folded.values)['note'] == 5
    big = insert._replace(values=(('id', 1), ('note', 2 ** 62)))
    overflow = RowOp(OpKind.UPDATE, audit_version(1, 2, 2, 0), (), (
        ('note', ('bin', '*', ('col', 'note'), ('lit', 4))),))
    assert coalesce_ops([big, overflow]) == (big, overflow)
