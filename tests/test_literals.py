"""Literal masking: statement shapes and literal values, as MySQL/MariaDB read them."""

import os
import subprocess
import sys

import pytest

from changeflow.config import TableSpec
from changeflow.model import OpKind
from changeflow.sql.errors import SqlChangeError
from changeflow.sql.literals import MARKER, mask_literals
from changeflow.sql.plans import StatementTranslator

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
