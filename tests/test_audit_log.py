"""parse_audit_line and ParseAuditLines on the recorded MariaDB 10.11 server_audit log."""

import calendar
import os
import random
import re
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from beam_helpers import local_pipeline

from changeflow.metrics import counter_totals
from changeflow.model import DEAD_LETTER_TAG, AuditEvent, LogEvent
from changeflow.transforms.audit_log import (
    AuditLineError,
    ParseAuditLines,
    _why_malformed,
    parse_audit_line,
)

# Every line of the fixture was logged in this second (server time, read as UTC).
RECORDED_US = calendar.timegm((2026, 11, 24, 21, 40, 48)) * 1_000_000
TRUNCATED_LINENO = 91  # INSERT INTO events ... 'xxx…': escaped object cut at 1024 bytes


@pytest.fixture(scope='module')
def lines(audit_dir):
    with open(os.path.join(audit_dir, 'server_audit.log'), 'rb') as f:
        raw = f.read()
    assert raw.endswith(b'\n')
    return raw.decode('utf-8').split('\n')[:-1]


def line(lines, lineno):
    return lines[lineno - 1]


def parse(lines, lineno, **kwargs):
    return parse_audit_line(line(lines, lineno), f'server_audit.log:{lineno}', **kwargs)


def test_every_recorded_line_parses_except_the_truncated_one(lines):
    assert len(lines) == 101
    parsed = {}
    for lineno, text in enumerate(lines, 1):
        if lineno == TRUNCATED_LINENO:
            with pytest.raises(AuditLineError) as e:
                parse_audit_line(text)
            assert e.value.reason == 'truncated-statement'
            continue
        event = parse_audit_line(text, f'p:{lineno}')
        assert (event.line, event.position, event.timestamp_us) == (text, f'p:{lineno}', RECORDED_US)
        assert (event.serverhost, event.host) == ('vm', '127.0.0.1')
        parsed[lineno] = event
    assert len(parsed) == 100
    # Query ids and connections as logged: the workload ran on connections 24 and 25.
    assert {e.connection_id for e in parsed.values()} == {23, 24, 25}
    assert sorted({e.query_id for e in parsed.values()})[:3] == [0, 274, 275]
    assert {e.operation for e in parsed.values()} == {
        'QUERY', 'CONNECT', 'DISCONNECT', 'READ', 'WRITE', 'ALTER'}


def test_query_fields(lines):
    assert parse(lines, 1) == AuditEvent(
        timestamp_us=RECORDED_US, serverhost='vm', username='root', host='127.0.0.1',
        connection_id=23, query_id=274, operation='QUERY', database='mysql',
        object='SET GLOBAL server_audit_logging = ON', retcode=0,
        position='server_audit.log:1', line=line(lines, 1))


def test_quotes_backslashes_tab_crlf_and_japanese_come_back_as_the_client_sent_them(lines):
    # The statement PyMySQL sent (make_audit_fixture.py): it escapes ' " \ and
    # newline/CR with a backslash itself but sends the tab raw. The plugin then
    # escaped that text once more; parsing undoes exactly the plugin's layer.
    sent = ("INSERT INTO orders (tenant_id, order_id, note, status, qty, amount, ordered_on)"
            " VALUES (1, 1, 'it\\'s a \\\"quoted\\\", comma\\'d note', 'new', 1, '10.50',"
            " '2026-11-01'),(1, 2, 'back\\\\slash C:\\\\temp\\\\new', 'new', 2, '20.00',"
            " '2026-11-02'),(1, 3, 'line one\\nline two\ttabbed\\r\\nend', 'new', 3, '30.25',"
            " '2026-11-03'),(2, 1, '日本語のメモ、テスト', 'new', 4, '99.99', '2026-11-04'),"
            "(2, 2, NULL, 'new', 5, NULL, NULL)")
    event = parse(lines, 10)
    assert event.object == sent
    assert (event.operation, event.database, event.query_id, event.retcode) == (
        'QUERY', 'shop', 277, 0)
    assert "\\'it\\\\\\'s a" in event.line  # as logged: \'it\\\'s
    assert "'it\\'s a" in event.object     # SQL text: 'it\'s


def test_doubled_quote_and_unicode_backslashes(lines):
    event = parse(lines, 15)
    assert event.object == ("INSERT INTO customers (id, name, email) VALUES"
                            " (10, 'O''Brien, Pat', 'pat@example.com'),"
                            " (11, 'Zoë \\\\ Ünïcode', 'zoe@example.com')")
    assert "\\'O\\'\\'Brien, Pat\\'" in event.line  # MariaDB logs 'O''Brien' as \'O\'\'Brien\'


def test_comment_and_prepared_statement_text_are_kept(lines):
    assert parse(lines, 37).object == (
        "INSERT INTO customers (id, name) VALUES (12, 'Cleo') /* app=checkout */")
    assert parse(lines, 86).object == (
        "PREPARE relabel FROM 'UPDATE events SET kind = ? WHERE id = 1'")


def test_table_events_have_bare_object_and_no_retcode(lines):
    write = parse(lines, 6)
    assert (write.operation, write.database, write.object, write.retcode, write.query_id) == (
        'WRITE', 'shop', 'orders', None, 277)
    read = parse(lines, 7)
    assert (read.operation, read.database, read.object, read.retcode) == (
        'READ', 'mysql', 'table_stats', None)
    alter = parse(lines, 65)
    assert (alter.operation, alter.object, alter.retcode, alter.query_id) == (
        'ALTER', 'customers', None, 308)


def test_connect_and_disconnect(lines):
    connect = parse(lines, 2)
    assert (connect.operation, connect.username, connect.connection_id, connect.query_id,
            connect.database, connect.object, connect.retcode) == (
        'CONNECT', 'app', 24, 0, 'shop', '', 0)
    disconnect = parse(lines, 99)
    assert (disconnect.operation, disconnect.connection_id, disconnect.object,
            disconnect.retcode) == ('DISCONNECT', 25, '', 0)


def test_failed_statement_keeps_its_error_code(lines):
    event = parse(lines, 51)
    assert event.retcode == 1062
    assert event.object == "INSERT INTO orders (tenant_id, order_id, note) VALUES (1, 1, 'duplicate')"


def test_failed_connect_line():
    # Built from recorded line 2 (CONNECT): FAILED_CONNECT carries the error in retcode.
    event = parse_audit_line('20261124 21:40:48,vm,app,127.0.0.1,26,0,FAILED_CONNECT,,,1045')
    assert (event.operation, event.database, event.object, event.retcode) == (
        'FAILED_CONNECT', '', '', 1045)


def test_truncated_statement(lines):
    text = line(lines, TRUNCATED_LINENO)
    with pytest.raises(AuditLineError) as e:
        parse_audit_line(text, query_log_limit=1024)
    assert e.value.reason == 'truncated-statement'
    assert 'server_audit_query_log_limit=1024' in e.value.detail
    # With a larger limit (or 0 = unlimited) the same text is a whole statement.
    for limit in (0, 2048):
        event = parse_audit_line(text, query_log_limit=limit)
        assert event.object == "INSERT INTO events (id, kind) VALUES (100, '" + 'x' * 979
    # The escaped object is 1024 bytes. The plugin stops one byte short of the
    # limit when the next character needs a two-byte escape, so 1025 still
    # counts as possibly cut; 1026 cannot have cut 1024 bytes.
    with pytest.raises(AuditLineError):
        parse_audit_line(text, query_log_limit=1025)
    parse_audit_line(text, query_log_limit=1026)


def test_truncation_counts_utf8_bytes_not_characters():
    # A recorded-shape QUERY whose object is 400 characters but 1200 UTF-8 bytes.
    text = "20261124 21:40:48,vm,app,127.0.0.1,24,300,QUERY,shop,'" + '日' * 400 + "',0"
    with pytest.raises(AuditLineError) as e:
        parse_audit_line(text)
    assert e.value.reason == 'truncated-statement'
    assert parse_audit_line(text, query_log_limit=1202).object == '日' * 400


def test_aurora_epoch_microsecond_timestamp(lines):
    # Recorded line 21 with its timestamp replaced by epoch microseconds, as Aurora writes it.
    recorded = line(lines, 21)
    aurora = '1795556448123456' + recorded[len('20261124 21:40:48'):]
    event = parse_audit_line(aurora)
    assert event.timestamp_us == 1795556448123456
    assert event._replace(timestamp_us=0, line='') == parse_audit_line(recorded)._replace(
        timestamp_us=0, line='')


def test_timestamps_are_not_mixed_up_between_lines(lines):
    # The parser memoizes the last timestamp: alternate two so each must miss.
    recorded = line(lines, 3)
    later = '20261124 21:40:49' + recorded[17:]
    for _ in range(2):
        assert parse_audit_line(recorded).timestamp_us == RECORDED_US
        assert parse_audit_line(later).timestamp_us == RECORDED_US + 1_000_000
    assert parse_audit_line('20240229 00:00:00' + recorded[17:]).timestamp_us == (
        calendar.timegm((2024, 2, 29, 0, 0, 0)) * 1_000_000)


@pytest.mark.parametrize('extra', [',TCP/IP', ',SSL/TLS,', ',TCP/IP,sess-1'])
@pytest.mark.parametrize('lineno', [10, 6, 2])
def test_rds_trailing_fields_are_ignored(lines, lineno, extra):
    # A recorded QUERY, TABLE and CONNECT line with an 11th/12th field appended,
    # as RDS variants log connection_type and more.
    recorded = line(lines, lineno)
    assert parse_audit_line(recorded + extra)._replace(line='') == (
        parse_audit_line(recorded)._replace(line=''))


@pytest.mark.parametrize('text, why', [
    ('', '0 fields'),
    ('20261124 21:40:48,vm,app,127.0.0.1,24,277,WRITE,shop', 'too few fields'),
    ('20261124 21:40:48,vm,app,127.0.0.1,24,277,WRITE,shop,orders,,a,b,c', '13 fields'),
    ("20261124 21:40:48,vm,app,127.0.0.1,24,275,QUERY,shop,'SET NAMES utf8mb4,0",
     'unterminated quote (recorded line 3 without its closing quote)'),
    ("20261124 21:40:48,vm,app,127.0.0.1,24,275,QUERY,shop,'SET NAMES utf8mb4\\',0",
     'closing quote escaped'),
    ("20261124 21:40:48,vm,app,127.0.0.1,x24,275,QUERY,shop,'SET NAMES utf8mb4',0",
     'non-numeric connection id'),
    ("20261124 21:40:48,vm,app,127.0.0.1,24,,QUERY,shop,'SET NAMES utf8mb4',0",
     'empty query id'),
    ("20261124 21:40:48,vm,app,127.0.0.1,24,275,QUERY,shop,'SET NAMES utf8mb4',ok",
     'non-numeric retcode'),
    ("20261324 21:40:48,vm,app,127.0.0.1,24,275,QUERY,shop,'SET NAMES utf8mb4',0",
     'month 13'),
    ("2026-11-24 21:40:48,vm,app,127.0.0.1,24,275,QUERY,shop,'SET NAMES utf8mb4',0",
     'ISO timestamp'),
    ("20261124 21:40:48,vm,app,127.0.0.1,24,275,QUERY,shop,'SET NAMES 'utf8mb4'',0",
     'unescaped quote inside'),
    ("20261124 21:40:48,vm,app,127.0.0.1,24,275,QUERY,shop,'SET NAMES utf8mb4',0\n"
     "20261124 21:40:48,vm,app,127.0.0.1,24,276,QUERY,shop,'SET NAMES utf8mb4',0",
     'two lines glued'),
    ("20261124 21:40:48,vm,app,127.0.0.1,24,277,WRITE,shop,orders,,TCP/IP\n"
     "20261124 21:40:48,vm,app,127.0.0.1,24,277,READ,mysql,table_stats,",
     'two lines glued after an extra field'),
])
def test_malformed_lines(text, why):
    with pytest.raises(AuditLineError) as e:
        parse_audit_line(text)
    assert e.value.reason == 'malformed-line', why
    assert e.value.detail


# server_audit.c's esc_map (MariaDB 10.11): the only characters the plugin escapes.
PLUGIN_ESCAPES = {"'": "\\'", '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t',
                  '\b': '\\b', '\f': '\\f'}


def plugin_escape(statement):
    return ''.join(PLUGIN_ESCAPES.get(c, c) for c in statement)


def test_unescaping_inverts_the_plugin_escaping():
    # Seeded random statements over the characters that matter (escaped ones,
    # letters that follow a backslash in escapes, a NUL, commas, quotes, CJK).
    rng = random.Random(20261124)
    alphabet = list("'\\\n\r\t\b\f\0\"nrtbf,x 日é")
    for _ in range(3000):
        statement = ''.join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        text = f"20261124 21:40:48,vm,app,127.0.0.1,24,300,QUERY,shop,'{plugin_escape(statement)}',0"
        assert parse_audit_line(text).object == statement, repr(statement)


def test_backslash_pairs_the_plugin_never_writes_are_kept():
    text = "20261124 21:40:48,vm,app,127.0.0.1,24,300,QUERY,shop,'a\\zb\\\\n\\'c\\n',0"
    assert parse_audit_line(text).object == "a\\zb\\n'c\n"


def test_parse_audit_lines_pipeline(lines):
    events = [LogEvent(text, '/aws/rds/instance/shop-db/audit', 'shop-db.audit.log', str(i), 0,
                       f'kinesis/shard-0/{i}@0') for i, text in enumerate(lines, 1)]
    # Poison next to good lines: a line cut mid-way (recorded line 10's first
    # 120 characters, inside its quoted statement) and a line that is no audit record.
    cut = line(lines, 10)[:120]
    poison = [LogEvent(cut, 'g', 's', 'x1', 0, 'poison@0'),
              LogEvent('CWL CONTROL MESSAGE: checking', 'g', 's', 'x2', 0, 'poison@1')]
    pipeline = local_pipeline()
    parsed, dead = (pipeline | beam.Create(events + poison) | ParseAuditLines())
    # The statement cut at the query log limit passes on, marked, for its
    # transaction's replay (the SQL stage dead-letters it if it committed).
    assert_that(parsed, equal_to([
        parse_audit_line(e.message, e.position, keep_truncated=True) for e in events]),
        label='parsed')
    assert_that(parsed | beam.Filter(lambda e: e.truncated) | beam.Map(lambda e: e.query_id),
                equal_to([parse_audit_line(line(lines, TRUNCATED_LINENO), '',
                                           keep_truncated=True).query_id]), label='truncated')
    assert_that(
        dead | 'Strip' >> beam.Map(lambda d: (d.step, d.reason, d.original, d.position)),
        equal_to([
            ('parse_audit', 'malformed-line', cut.encode('utf-8'), 'poison@0'),
            ('parse_audit', 'malformed-line', b'CWL CONTROL MESSAGE: checking', 'poison@1'),
        ]),
        label='dead letters')
    result = pipeline.run()
    result.wait_until_finish()
    counters = counter_totals(result, 'changeflow.parse_audit')
    assert counters == {'lines_received': 103, 'events_parsed': 101, 'dead_lettered': 2,
                        'queries': 48, 'table_events': 49, 'connects': 4}


def test_parse_audit_lines_output_tags():
    outputs = beam.Pipeline() | beam.Create([]) | ParseAuditLines()
    assert outputs[ParseAuditLines.MAIN] is not None and outputs[DEAD_LETTER_TAG] is not None


@pytest.mark.parametrize('limit', [-1, 1.5, '1024', True])
def test_parse_audit_lines_rejects_bad_limit(limit):
    with pytest.raises(ValueError, match='query_log_limit'):
        ParseAuditLines(query_log_limit=limit)


# The line as one regex (the whole grammar of the module docstring): parse_audit_line
# splits the head fields off with str.split instead, and must accept exactly these.
REFERENCE_LINE = re.compile(
    r"(\d{8} \d\d:\d\d:\d\d|\d++),([^,]*+),([^,]*+),([^,]*+),(\d++),(\d++),([^,]*+),([^,]*+),"
    r"(?:'([^'\\]*+(?:\\.[^'\\]*+)*+)'|([^,']*+)),(\d*+)(?:,[^,\n]*+){0,2}+",
    re.DOTALL)
FIELD_CHOICES = [
    ['20261124 21:40:48', '1795000000000000', '', '2026112421:40:48', '20261124 21:40:4', '٣',
     '20261124 21:40:48x', '1 2', '20261124 21:40:48\n'],
    ['vm', '', 'a b', "x'y", '\n', 'é', 'a,b'], ['app', ''], ['127.0.0.1', '', "'"],
    ['24', '0', '', '٣', '12a', '99999999999999999999999', '-1', ' 1', '²'],
    ['300', '', '٣٣', '1,2'], ['QUERY', 'WRITE', 'CONNECT', ''], ['shop', '', 'a,b', "'"],
]
OBJECT_PIECES = ['a', "\\'", '\\\\', '\\n', "'", ',', '\n', '\\', 'é', ' ']
TAIL_CHOICES = [['0', '', '1213', '٣', 'x', '1234567890', "'0'"],
                ['', ',TCP/IP', ',a,b', ',a,b,c', ',\n', ",'x'", ',']]


def random_line(rng):
    """Mostly valid fields (the first choice), so that both outcomes are common."""
    def pick(choices):
        return choices[0] if rng.random() < 0.8 else rng.choice(choices)
    fields = [pick(choices) for choices in FIELD_CHOICES]
    pieces = ''.join(rng.choice(OBJECT_PIECES) for _ in range(rng.randrange(0, 12)))
    obj = pick([f"'{pieces}'", pieces, '', 'shop.t', f"'{pieces}"])
    retcode, extra = (pick(choices) for choices in TAIL_CHOICES)
    return ','.join(fields + [obj, retcode]) + extra


def test_lines_are_accepted_exactly_as_the_one_regex_grammar_accepts_them():
    rng = random.Random(6)
    accepted = 0
    for _ in range(20_000):
        text = random_line(rng)
        reference = REFERENCE_LINE.fullmatch(text)
        try:
            event = parse_audit_line(text, 'p', 0)
        except AuditLineError as error:
            rejected_by_grammar = error.detail == _why_malformed(text)
            assert rejected_by_grammar == (reference is None), text
            continue
        assert reference is not None, text
        accepted += 1
        (_, serverhost, username, host, connection_id, query_id, operation, database, quoted,
         bare, retcode) = reference.groups()
        assert event[1:8] == (serverhost, username, host, int(connection_id), int(query_id),
                              operation, database)
        assert event.object == (bare if quoted is None else parse_audit_line(
            f"20261124 21:40:48,vm,app,h,1,1,QUERY,shop,'{quoted}',0", '', 0).object)
        assert event.retcode == (int(retcode) if retcode else None)
    assert accepted > 2_000


def test_an_empty_timestamp_is_malformed_on_the_first_line_too():
    """The last timestamp is remembered (a line repeating it skips its check):
    nothing must look remembered before the first line."""
    done = subprocess.run(
        [sys.executable, '-c', 'from changeflow.transforms.audit_log import parse_audit_line\n'
                               "parse_audit_line(\",vm,app,h,1,1,QUERY,shop,'SELECT 1',0\")"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert 'AuditLineError: malformed-line' in done.stderr
