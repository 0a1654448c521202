"""Literal masking: statement shapes and literal values, as MySQL/MariaDB read them."""

import os
import random
import subprocess
import sys

import pytest

from changeflow.config import TableSpec
from changeflow.model import OpKind
from changeflow.sql.errors import SqlChangeError
from changeflow.sql.literals import (MARKER, HexLiteral, KnownShapes, mask_literals,
                                     unwrap_executable_comments)
from changeflow.sql.plans import StatementTranslator
from changeflow.transforms.transactions import SessionState

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTES = TableSpec('shop.notes2', ('id',), 'notes2', (
    ('id', 'integer'), ('note2', 'text'), ('utf8mb4', 'text')))


def in_subprocess(seconds, code):
    """Runs ``code`` (which prints its result) in a fresh interpreter and returns what it
    printed, failing if it takes longer than ``seconds``: a generous bound that only a
    super-linear scan exceeds. A subprocess, because a regex scan holds the GIL and
    would keep a watchdog thread from ever firing."""
    try:
        done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                              timeout=seconds, cwd=ROOT, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f'took longer than {seconds} s')
    return done.stdout.strip()


# The masking bug: after a statement's last literal, digits inside words were masked.

def test_digits_inside_words_after_the_last_literal_stay_words():
    shape, params = mask_literals(
        "INSERT INTO notes2 (id, note2) VALUES (1, 'a') "
        'ON DUPLICATE KEY UPDATE note2 = VALUES(note2)')
    assert shape == ('INSERT INTO notes2 (id, note2) VALUES (\0, \0) '
                     'ON DUPLICATE KEY UPDATE note2 = VALUES(note2)')
    assert params == [1, 'a']
    assert mask_literals('SET NAMES utf8mb4') == ('SET NAMES utf8mb4', [])


def test_words_that_start_with_digits_or_follow_a_dot_are_not_numbers():
    shape, params = mask_literals('SELECT 2fa, t.1e3, é2, a€2, 1e3, .5, x-1 FROM t')
    assert shape == f'SELECT 2fa, t.1e3, é2, a€2, {MARKER}, {MARKER}, x-{MARKER} FROM t'
    assert params == [1000.0, __import__('decimal').Decimal('0.5'), 1]


def test_a_long_literal_free_tail_is_scanned_in_linear_time():
    """~260k characters after the last literal: milliseconds when linear, hours if
    the scan restarts at every character of the tail."""
    printed = in_subprocess(60, """if True:
        from changeflow.sql.literals import MARKER, mask_literals
        tail = ' AND '.join(f'c{i} = c{i + 1}' for i in range(20_000))
        shape, params = mask_literals(f"UPDATE t SET a = 'x' WHERE id = 1 AND {tail}")
        print(params, shape.endswith(tail), shape.count(MARKER))
        word = 'a' * 200_000
        print(mask_literals(f'SELECT {word}') == (f'SELECT {word}', []))
        try:
            mask_literals("SELECT 'abc" + word)
        except Exception as error:
            print(error)
    """)
    assert printed.splitlines() == ["['x', 1] True 2", 'True',
                                    'unparseable-sql: unterminated string literal']


@pytest.mark.parametrize('sql, what', [
    ("SELECT 'abc", 'string literal'), ('SELECT "abc', 'string literal'),
    ('SELECT `abc', 'quoted identifier'), ('SELECT 1 /* abc', 'comment'),
])
def test_unterminated_strings_identifiers_and_comments_are_refused(sql, what):
    with pytest.raises(SqlChangeError) as error:
        mask_literals(sql + ' x')
    assert error.value.reason == 'unparseable-sql' and what in error.value.detail


def test_statements_with_digits_in_trailing_identifiers_translate():
    translator = StatementTranslator([NOTES])
    (change,) = translator.translate(
        "INSERT INTO notes2 (id, note2, utf8mb4) VALUES (1, 'a', 'b') "
        'ON DUPLICATE KEY UPDATE note2 = VALUES(note2), utf8mb4 = VALUES(utf8mb4)', 'shop').changes
    assert change.kind == OpKind.UPSERT and change.key == (1,)
    assert change.assignments == (('note2', ('lit', 'a')), ('utf8mb4', ('lit', 'b')))
    assert translator.translate('SET NAMES utf8mb4', 'shop').skipped == 'session'


def test_a_valid_statement_with_a_long_tail_translates():
    columns = [f'c{i}' for i in range(1, 301)]
    spec = TableSpec('shop.wide', ('id',), 'wide', (('id', 'integer'),) + tuple(
        (c, 'text') for c in columns))
    sql = (f"INSERT INTO wide (id, {', '.join(columns)}) VALUES (7, "
           f"{', '.join(repr(c) for c in columns)}) ON DUPLICATE KEY UPDATE "
           + ', '.join(f'{c} = VALUES({c})' for c in columns))
    (change,) = StatementTranslator([spec]).translate(sql, 'shop').changes
    assert change.key == (7,) and dict(change.assignments)['c300'] == ('lit', 'c300')


# Literal forms (MariaDB "String Literals", "Hexadecimal Literals", "Bit-Value Literals",
# "Date and Time Literals", "Numeric Literals", "Comment Syntax"; values as MariaDB 10.11
# returns them).

def values(sql, **flags):
    shape, params = mask_literals(sql, **flags)
    return params


def test_character_set_introducers_and_national_strings():
    assert values("SELECT _utf8mb4'é', _utf8mb4 'x', _UTF8'y', _latin1'abc', N'ñ', n'x'") == [
        'é', 'x', 'y', 'abc', 'ñ', 'x']
    binary = values("SELECT _binary'é', _binary 'a\\'b'")
    assert binary == [b'\xc3\xa9', b"a'b"] and all(type(v) is bytes for v in binary)
    # An unknown "introducer" is an identifier (an alias); the string stays a string.
    assert mask_literals("SELECT _foo 'x'") == ('SELECT _foo \0', ['x'])


@pytest.mark.parametrize('sql', ["SELECT _latin1'é'", "SELECT _ucs2'ab'"])
def test_strings_in_other_character_sets_are_refused_unless_plain_ascii(sql):
    with pytest.raises(SqlChangeError) as error:
        mask_literals(sql)
    assert error.value.reason == 'unsupported-sql'


def test_adjacent_strings_are_one_literal():
    shape, params = mask_literals("UPDATE t SET a = 'a' 'b', b = 'x' \"y\" /* c */ 'z', "
                                  "c = _binary 'p' 'q', d = '10' / 2 WHERE id = 'it''s' 'x'")
    assert shape == 'UPDATE t SET a = \0, b = \0, c = \0, d = \0 / \0 WHERE id = \0'
    assert params == ['ab', 'xyz', b'pq', '10', 2, "it'sx"]


def test_date_time_and_timestamp_literals():
    import datetime
    shape, params = mask_literals(
        "SELECT DATE '2024-1-1', date '24-01-02', DATE '20240103', DATE '2024/01/04', "
        "TIMESTAMP '2024-01-01 1:2:3.5', TIMESTAMP '2024-01-01T10:00:00', "
        "TIMESTAMP '20240101103000', TIME '10:00', TIME '-838:59:59', TIME '1 02:03:04'")
    assert shape == 'SELECT ' + ', '.join([MARKER] * 10)
    assert params == [
        datetime.date(2024, 1, 1), datetime.date(2024, 1, 2), datetime.date(2024, 1, 3),
        datetime.date(2024, 1, 4), datetime.datetime(2024, 1, 1, 1, 2, 3, 500000),
        datetime.datetime(2024, 1, 1, 10), datetime.datetime(2024, 1, 1, 10, 30),
        '10:00:00', '-838:59:59', '26:03:04']
    # A column named date is still a column.
    assert mask_literals("UPDATE t SET date = '2024-01-01' WHERE time = 1")[0] == \
        'UPDATE t SET date = \0 WHERE time = \0'
    with pytest.raises(SqlChangeError):
        mask_literals("SELECT DATE '2024-02-30'")


def test_numbers():
    import decimal
    assert values('SELECT 1, -2, 1.5, .5, 1., 1e3, 1.5E-2, 18446744073709551616') == [
        1, 2, decimal.Decimal('1.5'), decimal.Decimal('0.5'), decimal.Decimal('1'), 1000.0,
        0.015, 18446744073709551616]


def test_hexadecimal_and_bit_literals():
    """0x41, b'1000001' and 0b1000001 are numbers in numeric context (HexLiteral);
    MariaDB reads x'41' as a plain binary string (x'41' + 0 is 0), MySQL as a number."""
    params = values("SELECT 0x41, 0x4, b'1000001', B'1', 0b101, b'', x'41', X'4142'")
    assert params == [b'A', b'\x04', b'A', b'\x01', b'\x05', b'', b'A', b'AB']
    assert [type(v).__name__ for v in params] == ['HexLiteral'] * 6 + ['bytes'] * 2
    assert type(values("SELECT x'41'", server_version=80036)[0]) is HexLiteral
    assert mask_literals('SELECT 0X41')[0] == 'SELECT 0X41'  # 0X is not a prefix: a name


def test_comments():
    shape, params = mask_literals("SELECT 1 -- one\n, 2 #two\n, 3--\n, 4 /* four */, 5-- x")
    assert params == [1, 2, 3, 4, 5]
    assert MARKER + ' \n,' in shape and '--' not in shape and '#' not in shape
    assert mask_literals('SELECT 1--1')[1] == [1, 1]  # `--` without a space is minus minus


def test_sql_mode_flags():
    # NO_BACKSLASH_ESCAPES: a backslash is an ordinary character.
    assert values(r"SELECT 'C:\temp\', 'it''s'", no_backslash_escapes=True) == [
        'C:\\temp\\', "it's"]
    # ANSI_QUOTES: "x" is an identifier, kept in the shape as `x`.
    assert mask_literals('UPDATE "t" SET "a""b" = \'x\'', ansi_quotes=True) == (
        'UPDATE `t` SET `a"b` = \0', ['x'])
    assert values('SELECT "x"') == ['x']



# A doubled quote escapes only the literal's own quote: 'a""b' keeps both double quotes.
# (The regex once collapsed `""` in a '..' string that also held a backslash or `''`,
# and `''` in a ".." string: a replica value silently one character short.)
QUOTED = [
    ("'x\\'y\"\"z'", 'x\'y""z'), ("'a\"\"b'", 'a""b'), ("'a\"\"b''c'", 'a""b\'c'),
    ("'a\"\"\\nb'", 'a""\nb'), ('"a\'\'b"', "a''b"), ('"a\"\"b"', 'a"b'),
    ('"a\'\'b\\tc"', "a''b\tc"), ("'a''b'", "a'b"), ('"a\\"b"', 'a"b'),
]


def test_a_doubled_quote_escapes_only_the_literals_own_quote():
    """Values as MariaDB 10.11 returns them for these literals (``SELECT``)."""
    assert values('SELECT ' + ', '.join(sql for sql, _ in QUOTED)) == [v for _, v in QUOTED]


def test_doubled_quotes_read_as_the_server_reads_them(mariadb_url):
    """The same literals through a live server's ``SELECT``."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(mariadb_url)
    statement = 'SELECT ' + ', '.join(sql for sql, _ in QUOTED)
    with engine.connect() as conn:
        row = conn.exec_driver_sql(statement.replace('%', '%%')).one()
    engine.dispose()
    assert list(row) == values(statement)


# Executable comments (MariaDB "Comment Syntax" and its lexer; results checked on MariaDB 10.11).

def test_executable_comments_the_server_runs_are_part_of_the_statement():
    """MariaDB 10.11 returns 1, 2, 2, 1, 2, 2, 3 and 1 for these."""
    shape, params = mask_literals(
        'SELECT 1 /*!50701 +1 */, 1 /*M!50701 +1 */, 1 /*!100100 +1 */, 1 /*!999999 +1 */, '
        '1/*!+1*/, 1 /*!40101+1*/, 1 /*!100100 +1 /* inner */ +1 */, 1 /*!99999 +1 /* x */ */')
    terms = [part.count(MARKER) for part in shape.split(',')]
    assert terms == [1, 2, 2, 1, 2, 2, 3, 1] and params == [1] * 14


def test_mysql_servers_skip_mariadb_comments_and_run_mysql_57_ones():
    shape, _ = mask_literals('SELECT 1 /*!50701 +1 */, 1 /*M! +1 */, 1 /*!80040 +1 */',
                             server_version=80036)
    assert [part.count(MARKER) for part in shape.split(',')] == [2, 1, 1]


def test_executable_comment_content_is_scanned_as_sql():
    assert mask_literals("/*!40101 SET SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */") == (
        '  SET SQL_MODE=\0  ', ['NO_AUTO_VALUE_ON_ZERO'])
    # Quoted text is never a comment marker, and a string may hold */.
    assert mask_literals("SELECT '/*!1 */', 2 /*!40000 , '*/' */")[1] == ['/*!1 */', 2, '*/']
    assert unwrap_executable_comments(
        '/*!50003 CREATE*/ /*!50017 DEFINER=`u`@`h`*/ /*!50003 TRIGGER t BEFORE INSERT ON x '
        'FOR EACH ROW SET NEW.a = 1 */').split() == [
            'CREATE', 'DEFINER=`u`@`h`', 'TRIGGER', 't', 'BEFORE', 'INSERT', 'ON', 'x', 'FOR',
            'EACH', 'ROW', 'SET', 'NEW.a', '=', '1']


@pytest.mark.parametrize('sql', ['SELECT 1 /*!100100 +1 /*!100100 +5 */ +1 */',
                                 'SELECT /*! 1', 'SELECT /*!99999 1'])
def test_executable_comments_the_server_refuses_are_refused(sql):
    with pytest.raises(SqlChangeError) as error:
        mask_literals(sql)
    assert error.value.reason == 'unparseable-sql'


def test_writes_inside_executable_comments_translate():
    translator = StatementTranslator([NOTES])
    (change,) = translator.translate(
        "/*!40000 INSERT INTO notes2 (id, note2) VALUES (3, 'c') */", 'shop').changes
    assert change.key == (3,) and change.kind == OpKind.INSERT
    assert translator.translate("/*!99999 INSERT INTO notes2 (id) VALUES (4) */ SELECT 1",
                                'shop').skipped == 'read'


# Known shapes: a statement matched by the regex of a shape seen before masks as
# the general scan does. Statements are frames (text with literal slots, the text
# before a slot drawn from the contexts that change how a literal reads) filled
# with literals of every kind, so a frame learnt from plain literals is matched
# against the same text with literals that read differently.

_BEFORE = ['UPDATE t SET a = ', '(', ', ', ' = ', '+', '-', '--', '/', '\n', '.', 't.', 'x', 'X',
           'b', 'B', 'N', 'n', 'abc', 'é', '$', '0', '1e', '@', '?', 'date ', 'DATE', 'Time  ',
           'timestamp\t', 'time', 'updated ', '_utf8mb4 ', '_binary', '_foo ', '`d`', '`a\'b` ',
           'LIKE ', 'IN (', '"x" ', '#c\n', '-- c\n', '/* c */', "'s' ", 'WHERE id IN (',
           '/*!40101 SET a = ', '/*M! ']
_AFTER = ['', ' ', ',', ')', '.', 'e3', 'abc', "'", ' /', "  'z'", ' WHERE id = ', '$', '٣',
          ' -- x', ' #', '/2', '-1', ' AND b = ', ' */', '*/']
_LITERALS = ['0', '5', '42', '1234567890123456789012345', '٣', "'x'", "''", "'it''s'",
             "'a\\'b'", "'C:\\\\'", "'2024-01-01'", "'41'", "'101'", "'10:00'", "'/*'", "'*/'",
             "'#'", "'--'", "'x' 'y'", "'é'", '1.5', '.5', '1e3', '5.', '0x41', "x'41'", "b'1'",
             '0b1', "N'x'", "_utf8'x'", "DATE '2024-01-01'", '"dq"', 'NULL', "'open", '12abc',
             "'/*!40101 x */'", "'*/ /*!'"]


def _frames(rng, count):
    return [[rng.choice(_BEFORE) for _ in range(rng.randint(1, 3))] + [rng.choice(_AFTER)]
            for _ in range(count)]


def _fill(rng, frame, plain):
    literals = (['7', '123', "'plain'", "'with \\' escape'", "'doubled '' quote'"] if plain
                else _LITERALS)
    return ''.join(before + rng.choice(literals) for before in frame[:-1]) + frame[-1]


def _masked(sql):
    try:
        shape, params = mask_literals(sql)
    except (SqlChangeError, ValueError) as error:  # ValueError: x'..' of odd length
        return repr(error)
    return shape, [(type(value), value) for value in params]


def test_known_shapes_mask_statements_as_the_general_scan_does():
    rng = random.Random(20261201)
    known = KnownShapes(max_shapes=100_000)
    frames = _frames(rng, 400)
    matched = 0
    for round_ in range(40):
        for frame in frames:
            sql = _fill(rng, frame, plain=round_ % 4 == 0)
            expected = _masked(sql)
            found = known.match(sql)
            if found is not None:
                matched += 1
                assert (found[0], [(type(v), v) for v in found[1]]) == expected, sql
            elif not isinstance(expected, str):
                known.learn(sql, *mask_literals(sql))
    assert matched > 1_000  # the known shapes were used, not only learnt


def test_known_shapes_match_only_their_own_statements():
    known = KnownShapes(max_shapes=10)
    for sql in ["UPDATE t SET a = 'x', b = 1 WHERE id = 2", "INSERT INTO t VALUES ('a\\'b', 3)",
                "UPDATE t SET d = date 'a\\'b' WHERE id = 1", "UPDATE t SET a = 1 /* c */"]:
        known.learn(sql, *mask_literals(sql))
    assert known.match("UPDATE t SET a = 'it''s', b = 10 WHERE id = 20") == (
        'UPDATE t SET a = \0, b = \0 WHERE id = \0', ["it's", 10, 20])
    assert known.match("INSERT INTO t VALUES ('\\n', 4)") == ('INSERT INTO t VALUES (\0, \0)',
                                                              ['\n', 4])
    for sql in ["UPDATE t SET a = 'x' 'y', b = 1 WHERE id = 2",  # adjacent strings: one literal
                "UPDATE t SET a = 'x', b = 1.5 WHERE id = 2",  # a decimal
                "UPDATE t SET a = 'x', b = 1 WHERE id = 2 /* c */",
                "UPDATE t SET d = date '2024-01-01' WHERE id = 1",  # date '..' was never learnt
                'UPDATE t SET a = 2 /* c */']:  # a comment in the model: not learnt
        assert known.match(sql) is None, sql


def test_shapes_of_tables_and_columns_named_with_digits_are_all_kept():
    """Statements are grouped by their text before the first literal; a digit
    inside a name (t1, col2) does not end that text, or all of them would share
    one group, and most go back to the general scan."""
    known = KnownShapes(max_shapes=1_000)
    statements = [f"UPDATE t{i} SET col{i} = 'x' WHERE id = 1" for i in range(30)]
    for sql in statements:
        known.learn(sql, *mask_literals(sql))
    assert all(known.match(sql.replace("'x'", "'y'")) == (mask_literals(sql)[0], ['y', 1])
               for sql in statements)


def test_shapes_whose_template_fails_its_self_check_leave_nothing_behind():
    """A template that does not read its own statement back is dropped, and so
    is the group it opened: refused shapes are not counted towards
    ``max_shapes``, so a group kept per refused shape would grow with them."""
    class Misreading(KnownShapes):
        @staticmethod
        def _template(sql, shape, start):
            template = KnownShapes._template(sql, shape, start)
            return template._replace(shape=shape + ' misread')

    known = Misreading(max_shapes=1_000)
    for i in range(200):  # short and long texts before the first literal
        for sql in (f"UPDATE t{i} SET a = 'x' WHERE id = 1",
                    f"UPDATE a_long_table_name_{i} SET a = 'x' WHERE id = 1"):
            known.learn(sql, *mask_literals(sql))
            assert known.match(sql) is None
    assert known._buckets == {} and known._by_head == {}


def test_translations_are_the_same_with_or_without_known_shapes():
    """Through the translator, sql_mode included: NO_BACKSLASH_ESCAPES and
    ANSI_QUOTES statements take the general scan."""
    rng = random.Random(7)
    spec = TableSpec('shop.notes2', ('id',), 'notes2', (
        ('id', 'integer'), ('note2', 'text'), ('utf8mb4', 'text'), ('n', 'integer')))
    fast, general = StatementTranslator([spec]), StatementTranslator([spec])
    general._known_shapes.match = lambda sql: None
    matched = []
    match = fast._known_shapes.match
    fast._known_shapes.match = lambda sql: matched.append(match(sql)) or matched[-1]
    statements = [
        "INSERT INTO notes2 (id, note2) VALUES ({i}, {s}) ON DUPLICATE KEY UPDATE n = n + {i}",
        'UPDATE notes2 SET note2 = {s}, n = {i} WHERE id = {i}',
        'UPDATE notes2 SET "note2" = {s} WHERE id IN ({i}, {i})',
        'DELETE FROM notes2 WHERE id = {s} AND n = {i}']
    strings = ["'a'", "'it''s'", "'C:\\\\'", "'\\\\'", "'x\\'y'", '"dq"', "'a\\\\'"]
    modes = [None, '', 'NO_BACKSLASH_ESCAPES', 'ANSI_QUOTES']
    for _ in range(2_000):
        sql = rng.choice(statements).format(i=rng.randrange(100), s=rng.choice(strings))
        session = rng.choice(modes)
        session = None if session is None else SessionState(sql_mode=session)
        results = []
        for translator in (fast, general):
            try:
                results.append(translator.translate(sql, 'shop', session))
            except SqlChangeError as error:
                results.append((error.reason, error.detail, error.table, error.keys))
        assert results[0] == results[1], sql
    assert sum(found is not None for found in matched) > 500
