"""Fuzzing every stage: random and mutated records (gzip/JSON envelopes,
Kinesis lines, firehose objects), audit lines and SQL statements built from a
grammar of the statement shapes changeflow handles, plus random bytes.

The property, per stage: nothing raises out of it but its own documented
error (which the stage turns into a dead letter with a reason), and every
input yields output or such an error. One small pipeline run checks the same
end to end: the job finishes and every input line is accounted for.

Runs derandomized (the same examples every run, for CI) under the ``ci``
profile; ``HYPOTHESIS_PROFILE=dev`` explores new examples.
"""

import base64
import decimal
import gzip
import os
import random
import re
import zlib

import orjson
import pytest

pytest.importorskip('hypothesis', reason="the fuzz test needs hypothesis: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from changeflow.config import TableSpec
from changeflow.model import OpKind, RowOp, SourceRecord, audit_version
from changeflow.sql.coercion import BadValue, coercer
from changeflow.sql.errors import SqlChangeError
from changeflow.sql.plans import StatementTranslator, key_caster
from changeflow.sql.rowstate import ABSENT, apply_ops
from changeflow.sql.secrets import mask_secrets
from changeflow.transforms.audit_log import AuditLineError, parse_audit_line
from changeflow.transforms.coalesce import coalesce_ops
from changeflow.transforms.decode import DecodeError, decode_record
from changeflow.transforms.transactions import TransactionTracker

settings.register_profile('ci', max_examples=150, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much])
settings.register_profile('dev', max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))

SPECS = (
    TableSpec('shop.orders', ('tenant_id', 'order_id'), 'orders', (
        ('tenant_id', 'integer'), ('order_id', 'integer'), ('note', 'text'), ('qty', 'integer'),
        ('amount', 'decimal(10,2)'), ('status', 'string')), redact=('note',)),
    TableSpec('shop.blobs', ('id',), 'blobs', (('id', 'string'), ('data', 'binary'))),
    TableSpec('shop.loose', ('id',), 'loose'),
)
COLUMNS = ('tenant_id', 'order_id', 'note', 'qty', 'amount', 'status', 'id', 'data', 'TENANT_ID',
           'Note', 'missing')
TABLES = ('orders', 'shop.orders', 'blobs', '`orders`', 'loose', 'other', 'ORDERS')

# --- a grammar of the statements changeflow handles --------------------------

idents = st.sampled_from(COLUMNS)
strings = st.text(st.characters(codec='utf-8', exclude_categories=('Cs',)), max_size=12)
literal = st.one_of(
    st.integers(-2 ** 70, 2 ** 70).map(str),
    st.sampled_from(['9' * 400, '1e308', '1e400', '-0', '.5', '0x41', "x'4142'", "b'101'",
                     'NULL', 'DEFAULT', '?', ':p0', "'NaN'", "'Infinity'", 'TRUE', "_binary'\\0'",
                     "N'x'", "'a' 'b'", "DATE '2026-01-01'", '@v', 'NOW()', 'RAND()']),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    strings.map(lambda s: "'" + s.replace('\\', '\\\\').replace("'", "''") + "'"),
)


def expressions(depth=3):
    if depth == 0:
        return st.one_of(literal, idents)
    inner = expressions(depth - 1)
    return st.one_of(
        literal, idents,
        st.tuples(inner, st.sampled_from(['+', '-', '*', '/', '%', 'DIV', '=', '<', 'AND', '||']),
                  inner).map(lambda t: f'{t[0]} {t[1]} {t[2]}'),
        st.tuples(st.sampled_from(['CONCAT', 'COALESCE', 'GREATEST', 'LEAST', 'UPPER', 'LOWER',
                                   'ABS', 'IFNULL', 'IF', 'VALUES', 'PASSWORD', 'NOPE']),
                  st.lists(inner, max_size=3)).map(lambda t: f'{t[0]}({", ".join(t[1])})'),
        st.tuples(st.integers(1, 60), inner).map(lambda t: '(' * t[0] + t[1] + ')' * t[0]),
    )


def pin(column):
    return st.one_of(
        literal.map(lambda v: f'{column} = {v}'),
        st.lists(literal, min_size=1, max_size=5).map(lambda vs: f'{column} IN ({", ".join(vs)})'),
    )


where = st.one_of(
    st.tuples(pin('tenant_id'), pin('order_id')).map(' AND '.join),
    st.tuples(pin('id'), expressions(1)).map(lambda t: f'{t[0]} AND {t[1]}'),
    expressions(2),
    st.tuples(pin('ORDER_ID'), pin('Tenant_Id')).map(lambda t: f'({t[0]}) AND ({t[1]})'),
)
assignments = st.lists(st.tuples(idents, expressions(2)), min_size=1, max_size=3).map(
    lambda pairs: ', '.join(f'{c} = {e}' for c, e in pairs))
rows = st.lists(st.lists(literal, min_size=0, max_size=4).map(
    lambda vs: f'({", ".join(vs)})'), min_size=1, max_size=3).map(', '.join)
statements = st.one_of(
    st.tuples(st.sampled_from(['INSERT', 'REPLACE', 'INSERT IGNORE']), st.sampled_from(TABLES),
              st.lists(idents, max_size=4), rows, st.one_of(st.just(''), assignments)).map(
        lambda t: f'{t[0]} INTO {t[1]} ({", ".join(t[2])}) VALUES {t[3]}'
                  + (f' ON DUPLICATE KEY UPDATE {t[4]}' if t[4] else '')),
    st.tuples(st.sampled_from(TABLES), rows).map(lambda t: f'INSERT INTO {t[0]} VALUES {t[1]}'),
    st.tuples(st.sampled_from(TABLES), assignments, where, st.sampled_from(['', ' LIMIT 1'])).map(
        lambda t: f'UPDATE {t[0]} SET {t[1]} WHERE {t[2]}{t[3]}'),
    st.tuples(st.sampled_from(TABLES), where).map(lambda t: f'DELETE FROM {t[0]} WHERE {t[1]}'),
    st.sampled_from(TABLES).map(lambda t: f'TRUNCATE TABLE {t}'),
    st.sampled_from(['BEGIN', 'COMMIT', 'ROLLBACK', 'START TRANSACTION', 'SET autocommit=0',
                     'SET @@session.autocommit = ON', 'SAVEPOINT a', 'ROLLBACK TO a', 'SELECT 1',
                     'SET NAMES utf8mb4', 'CREATE USER x IDENTIFIED BY \'pw\'', 'XA START \'x\'',
                     '/*!40101 SET x=1 */', 'CALL p()', 'DROP TABLE orders', 'USE shop', '',
                     ';;', 'INSERT INTO orders (tenant_id, order_id) VALUES (1, 1); SELECT 2']),
)


@st.composite
def mutated(draw, base):
    """``base`` as is, or with random edits: characters inserted, deleted,
    duplicated, the text cut short."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        if not text:
            break
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(['insert', 'delete', 'cut', 'double']))
        if edit == 'insert':
            text = text[:at] + draw(st.text(max_size=4)) + text[at:]
        elif edit == 'delete':
            text = text[:at] + text[at + 1:]
        elif edit == 'cut':
            text = text[:at]
        else:
            text = text[:at] + text[at:at + 20] * 2 + text[at + 20:]
    return text


sql_inputs = mutated(st.one_of(statements, st.text(max_size=60)))


@given(sql_inputs, st.sampled_from(['shop', 'other', '']))
def test_sql_translation_only_refuses_with_a_reason(sql, database):
    translator = StatementTranslator(SPECS, max_shapes=50)
    try:
        translation = translator.translate(sql, database)
    except SqlChangeError as error:
        assert re.fullmatch(r'[a-z]+(?:-[a-z]+)*', error.reason), error.reason
        return
    except (ValueError, ArithmeticError):  # a literal that cannot be read: the stage's bad-value
        return
    assert translation.changes or translation.skipped
    casters = {spec.source: key_caster(spec) for spec in SPECS}
    ops = []
    for n, change in enumerate(translation.changes):
        caster = casters[change.table]
        try:
            key = caster(change.key) if caster else change.key
        except (ValueError, ArithmeticError):  # what the SQL stage dead-letters as bad-value
            continue
        if change.kind != OpKind.TRUNCATE:
            assert len(key) == len(dict((s.source, s) for s in SPECS)[change.table].key)
        ops.append(RowOp(change.kind, audit_version(1, 1, 1, n), change.values,
                         change.assignments))
    # Coalescing and the row semantics the sinks share never raise but their own errors.
    folded = coalesce_ops(ops)
    assert len(folded) <= len(ops)
    try:
        apply_ops(ABSENT, folded)
    except (LookupError, ArithmeticError, TypeError, ValueError):
        pass  # MissingColumn (the sink reads the row) or bad-expression in the sink


# --- audit lines --------------------------------------------------------------

fields = st.one_of(st.text(max_size=8), st.integers(0, 2 ** 70).map(str),
                   st.sampled_from(['9' * 5000, '', '-1', '1e308']))
audit_lines = st.one_of(
    st.tuples(st.sampled_from(['20261122 14:16:18', '1795000000000000', '99999999 99:99:99',
                               '9' * 40, '']), fields, fields, statements, fields).map(
        lambda t: f"{t[0]},vm,app,localhost,{t[1]},{t[2]},QUERY,shop,"
                  f"'{t[3].replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}',{t[4]}"),
    st.lists(fields, max_size=13).map(','.join),
)


@given(mutated(audit_lines), st.sampled_from([0, 1024, 10]))
def test_audit_lines_parse_or_are_malformed(text, limit):
    try:
        event = parse_audit_line(text, 'p', limit)
    except AuditLineError as error:
        assert error.reason in ('malformed-line', 'truncated-statement')
        assert len(error.detail) < 1000
        return
    assert 0 <= event.connection_id < 2 ** 64 and 0 <= event.query_id < 2 ** 64
    assert len(audit_version(event.timestamp_us, event.query_id, event.query_id, 0)) == 66
    tracker = TransactionTracker(event.serverhost, event.connection_id)
    tracker.feed(event)  # never raises


@given(st.lists(st.tuples(st.sampled_from(['QUERY', 'CONNECT', 'DISCONNECT', 'READ']),
                          statements, st.sampled_from([0, 0, 1062, 1213]), st.integers(0, 5)),
                max_size=20))
def test_transactions_never_raise(events):
    from changeflow.model import AuditEvent
    tracker = TransactionTracker('vm', 7)
    for n, (operation, sql, retcode, qid) in enumerate(events):
        tracker.feed(AuditEvent(n, 'vm', 'u', 'h', 7, qid, operation, 'shop', sql, retcode,
                                f'p{n}', sql))
    assert all(e.operation == 'QUERY' for e in tracker.open_statements())


# --- records: envelopes, gzip, Kinesis lines, firehose objects ---------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=5), children, max_size=3)),
    max_leaves=20)
log_event = st.fixed_dictionaries(
    {'id': st.one_of(st.text(max_size=5), st.integers(0, 2 ** 64), json_values),
     'timestamp': st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1), json_values),
     'message': st.one_of(mutated(audit_lines), json_values)})
envelope = st.fixed_dictionaries(
    {'messageType': st.one_of(st.sampled_from(['DATA_MESSAGE', 'CONTROL_MESSAGE']), json_values),
     'logGroup': st.one_of(st.just('g'), json_values),
     'logStream': st.one_of(st.just('s'), json_values),
     'logEvents': st.one_of(st.lists(log_event, max_size=4), json_values)})


def gzipped(data: bytes, layers: int) -> bytes:
    for _ in range(layers):
        data = gzip.compress(data, 1, mtime=0)
    return data


@st.composite
def record_bytes(draw):
    document = draw(st.one_of(envelope, json_values))
    try:
        data = orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        data = b'{'
    data = gzipped(data, draw(st.integers(0, 4)))
    if draw(st.booleans()):  # mutate the bytes
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.binary(max_size=3)) + data[at + draw(st.integers(0, 3)):]
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.binary(max_size=40))
    return data * draw(st.sampled_from([1, 1, 1, 2]))  # several members


@given(record_bytes())
def test_records_decode_or_are_dead_lettered_with_a_reason(data):
    try:
        events = decode_record(SourceRecord(data, 's', 'shard', '1', 0))
    except DecodeError as error:
        assert error.reason in ('bad-gzip', 'bad-json', 'bad-utf8', 'bad-envelope', 'too-large')
        assert len(error.detail) < 1000
        return
    assert all(isinstance(e.message, str) for e in events)


@given(st.one_of(st.dictionaries(st.sampled_from(['Data', 'SequenceNumber', 'ShardId',
                                                  'ApproximateArrivalTimestamp']),
                                 st.one_of(json_values, st.text(max_size=12),
                                           st.floats(), st.sampled_from(['é4=', 'e30=', '1e308'])),
                                 max_size=4), json_values))
def test_kinesis_records_read_or_are_bad_records(record):
    from changeflow.io.archive import _ArchiveError, _kinesis_record
    try:
        source = _kinesis_record(record, 'f')
    except _ArchiveError as error:
        assert error.reason in ('bad-record', 'bad-base64') and len(error.detail) < 1000
        return
    assert isinstance(source.data, bytes) and 0 <= source.arrival_ms <= 253402300799999


@given(st.lists(record_bytes(), max_size=5), st.binary(max_size=30), st.booleans())
def test_firehose_objects_split_into_members_covering_every_byte(records, junk, outer):
    from changeflow.io.archive import _gzip_members
    data = b''.join(gzipped(r, 1) if r[:2] != b'\x1f\x8b' else r for r in records) + junk
    if outer:
        data = gzip.compress(data, 1, mtime=0)
    members = list(_gzip_members(data))
    assert [start for start, _, _, _ in members] == [0, *(end for _, end, _, _ in members)][:len(members)]
    assert (members[-1][1] if members else 0) == len(data)


# --- values and the sinks' pure functions -------------------------------------

@given(st.sampled_from(['integer', 'bigint', 'decimal', 'decimal(10,2)', 'float', 'string', 'text',
                        'boolean', 'date', 'datetime', 'binary', 'json']),
       st.one_of(json_values, st.binary(max_size=8), st.decimals(), st.dates(), st.datetimes(),
                 st.sampled_from([decimal.Decimal('NaN'), decimal.Decimal('-Infinity'), 10 ** 400,
                                  'NaN', '1e999999', '0x41', '\udcff'])))
def test_coercion_only_refuses_with_bad_value(column_type, value):
    from changeflow.io.json_records import json_value
    try:
        coercer(column_type)(value)
    except BadValue:
        pass
    json_value(value)  # every value can be described


@given(mutated(st.one_of(statements, audit_lines)))
def test_secrets_masking_never_raises_and_masks_every_password(text):
    assert 's3cr3t' not in mask_secrets(f"{text} IDENTIFIED BY 's3cr3t'")


# --- one small pipeline run over a corpus of the same inputs -------------------

def corpus(seed: int = 5, n: int = 60):
    """Kinesis lines: records of mutated statements and envelopes, plus the
    classes that used to fail the job."""
    rng = random.Random(seed)
    lines = []
    grammar = [
        "INSERT INTO orders (tenant_id, order_id, note, qty) VALUES ({a}, {b}, 'n{a}', {c})",
        "UPDATE orders SET qty = qty + {c}, note = CONCAT(note, 0x41) WHERE tenant_id = {a} AND order_id = {b}",
        "UPDATE orders SET note = GREATEST(note, {c}) WHERE tenant_id = {a} AND order_id = {b}",
        "DELETE FROM orders WHERE tenant_id IN ({a}, {c}) AND order_id = {b}",
        "REPLACE INTO orders (tenant_id, order_id, amount) VALUES ({a}, {b}, {c}.5)",
        "UPDATE orders SET amount = " + '(' * 50 + '{c}' + ')' * 50 + " WHERE tenant_id = {a} AND order_id = {b}",
        "INSERT INTO orders VALUES ()",
        "UPDATE orders SET note = ? WHERE tenant_id = {a} AND order_id = {b}",
        "INSERT INTO orders (tenant_id, order_id, note) VALUES ({a}, {b}, 'x') ON DUPLICATE KEY UPDATE note = VALUES(note2)",
        "SET NAMES utf8mb4 " + 'x' * 3000,
        "BEGIN", "COMMIT", "ROLLBACK",
    ]
    for n in range(n):
        sql = rng.choice(grammar).format(a=rng.randint(1, 3), b=rng.randint(1, 3),
                                         c=rng.choice([1, 2, 10 ** 30]))
        if rng.random() < 0.2:
            at = rng.randrange(len(sql) + 1)
            sql = sql[:at] + rng.choice(['(', "'", '\\', '\0', 'é', ')']) + sql[at:]
        escaped = sql.replace('\\', '\\\\').replace("'", "\\'")
        qid = rng.choice([n + 1, n + 1, n + 1, '9' * 30])
        message = f"20261122 14:16:{n % 60:02d},vm,app,h,{rng.randint(1, 3)},{qid},QUERY,shop,'{escaped}',0"
        payload = orjson.dumps({'messageType': 'DATA_MESSAGE', 'logGroup': 'g', 'logStream': 's',
                                'logEvents': [{'id': str(n), 'timestamp': n, 'message': message}]})
        data = gzip.compress(payload)
        if rng.random() < 0.1:
            data = data[:rng.randrange(len(data))]
        arrival = rng.choice([1.795e9, 1.795e9, 1e308, 'x'])
        lines.append(orjson.dumps({'Data': base64.b64encode(data).decode(), 'SequenceNumber': str(n),
                                   'ApproximateArrivalTimestamp': arrival}))
    lines.append(orjson.dumps({'Data': 'é' * 4, 'SequenceNumber': 'x'}))
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    inner = b''.join([bomb.compress(b' ' * (1 << 20)) for _ in range(80)] + [bomb.flush()])
    lines.append(orjson.dumps({'Data': base64.b64encode(gzip.compress(inner)).decode(),
                               'SequenceNumber': 'bomb'}))
    lines.append(b'not json')
    return lines


def test_a_pipeline_over_the_corpus_finishes_and_accounts_for_every_line(tmp_path):
    import yaml
    from changeflow.io.dead_letter import read_dead_letters
    from changeflow.metrics import counter_totals
    from changeflow.pipelines import audit_sync
    lines = corpus()
    (tmp_path / 'in.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
    config = {'source': {'type': 'archive', 'format': 'kinesis-jsonl', 'path': 'in.jsonl'},
              'tables': {'shop.orders': {'key': ['tenant_id', 'order_id'], 'columns': dict(SPECS[0].columns),
                                         'redact': ['note']}},
              'sinks': {'database': {'url': 'sqlite:///replica.db'}, 'parquet': {'path': 'backup'},
                        'notify': [{'to': 'file:notes.jsonl'}]},
              'dead_letter': {'path': 'dead'}}
    (tmp_path / 'job.yaml').write_text(yaml.safe_dump(config, sort_keys=False))
    result = audit_sync.run(['--config', str(tmp_path / 'job.yaml')])
    assert result.state == 'DONE'
    counters = counter_totals(result)
    letters = list(read_dead_letters(str(tmp_path / 'dead')))
    assert all(re.fullmatch(r'[a-z0-9]+(?:-[a-z0-9]+)*', d.reason) and d.detail for d in letters), [
        (d.step, d.reason, d.detail) for d in letters if not d.detail]
    read_dead = sum(1 for d in letters if d.step == 'read_archive')
    # Every line is a record for decode or a dead letter of the reader.
    assert counters['changeflow.decode.records_received'] + read_dead == len(lines)
    decode_dead = sum(1 for d in letters if d.step == 'decode')
    assert counters['changeflow.decode.log_events'] + decode_dead == counters[
        'changeflow.decode.records_received']
    assert not [d for d in letters if d.reason == 'internal-error'], [
        (d.step, d.detail) for d in letters if d.reason == 'internal-error']
