"""changeflow.sql.expressions and compile_expressions: MySQL operators and functions.

Each case is an expression's text and the value MariaDB 10.11 gives for
``SELECT expr`` (default sql_mode, utf8mb4_general_ci). The values were read
from the local MariaDB; ``test_cases_match_live_mariadb`` re-reads them when
it is reachable, so a case that drifts from the server fails.
"""

import datetime
import decimal

import pytest
import sqlglot

from changeflow.sql.compile_expressions import ExpressionCompiler
from changeflow.sql.errors import SqlChangeError
from changeflow.sql.expressions import (ExpressionError, col, evaluate, leaf_tags, lit,
                                        substitute, to_sql, truthy)
from changeflow.sql.literals import HexLiteral, mask_literals, numbered_shape

D = decimal.Decimal


def template_of(text: str) -> tuple:
    """The expression of ``SELECT text`` as the SQL stage compiles it: literals
    masked to params (as every logged statement is), params bound back."""
    shape, params = mask_literals('SELECT ' + text)
    tree = sqlglot.parse_one(numbered_shape(shape), read='mysql')
    return _bind(ExpressionCompiler().compile(tree.expressions[0]), params)


def _bind(expr, params):
    tag = expr[0]
    if tag == 'param':
        return ('lit', params[expr[1]])
    if tag == 'neg':
        return ('neg', _bind(expr[1], params))
    if tag == 'bin':
        return ('bin', expr[1], _bind(expr[2], params), _bind(expr[3], params))
    if tag == 'fn':
        return ('fn', expr[1], tuple(_bind(a, params) for a in expr[2]))
    return expr


def value_of(text: str, row=None):
    return evaluate(template_of(text), row or {})


def same(result, expected):
    """Equal, and of the same kind (bytes are not text, a float not a Decimal)."""
    kinds = (bytes, str, float, decimal.Decimal, int, type(None))
    kind = next(k for k in kinds if isinstance(expected, k))
    return result == expected and isinstance(result, kind) and (
        kind is not int or not isinstance(result, bool))


COMPARISON_CASES = [
    # strings: case- and accent-insensitive, trailing spaces ignored
    ("'a' = 'A'", 1), ("'a' = 'á'", 1), ("'a ' = 'a'", 1), ("'a' = ' a'", 0),
    ("'ß' = 's'", 1), ("'ß' = 'ss'", 0), ("'Ä' = 'a'", 1), ("'æ' = 'ae'", 0), ("'ø' = 'o'", 0),
    ("'ı' = 'i'", 1), ("'abc' < 'ABD'", 1), ("'a' < 'b '", 1), ("'b' > 'a\\t'", 1),
    ("'abc' <> 'ABC'", 0), ("'abc' != 'abd'", 1), ("'b' >= 'B'", 1), ("'b' <= 'a'", 0),
    # a string with a number: as numbers, by the numeric prefix
    ("'12abc' = 12", 1), ("'abc' = 0", 1), ("'1e3' = 1000", 1), ("' 12' = 12", 1),
    ("'.5' = 0.5", 1), ("'0x10' = 16", 0), ("'-' = 0", 1), ("'+3' = 3", 1), ("'1.' = 1", 1),
    ("'1e' = 1", 1), ("'1e+' = 1", 1), ("'10' > 9", 1), ("'10' > '9'", 0),
    ("1.0 = 1", 1), ("0.1 + 0.2 = 0.3", 1), ("1e0 = 1", 1),
    # hexadecimal literals: a number against a number, bytes against a string
    ('0x41 = 65', 1), ("0x41 = 'A'", 1), ("0x61 = 'A'", 0), ('0x41 > 64', 1),
    # NULL
    ('NULL = NULL', None), ('1 = NULL', None), ('NULL <> 1', None), ('NULL < 1', None),
    ('5 <=> NULL', 0), ('NULL <=> NULL', 1), ("'a' <=> 'A '", 1),
    ('NULL IS NULL', 1), ('0 IS NULL', 0), ('NULL IS NOT NULL', 0), ("'' IS NOT NULL", 1),
    ('NULL IS TRUE', 0), ('0 IS FALSE', 1), ('2 IS TRUE', 1), ('NULL IS NOT FALSE', 1),
    ("'abc' IS FALSE", 1), ("'1x' IS TRUE", 1), ('NULL IS UNKNOWN', 1), ('1 IS NOT UNKNOWN', 1),
    ('0.0 IS NOT TRUE', 1),
    # BETWEEN and IN
    ('2 BETWEEN 1 AND 3', 1), ('2 NOT BETWEEN 1 AND 3', 0), ('2 BETWEEN 1 AND NULL', None),
    ('0 BETWEEN 1 AND NULL', 0), ("'b' BETWEEN 'A' AND 'C'", 1), ('NULL BETWEEN 1 AND 2', None),
    ("'5x' BETWEEN 4 AND 6", 1),
    ('1 IN (1, NULL)', 1), ('2 IN (1, NULL)', None), ('NULL IN (1)', None),
    ('2 NOT IN (1, NULL)', None), ('2 NOT IN (1, 3)', 1), ("'A' IN ('a', 'b')", 1),
    ("'12abc' IN (12, 13)", 1), ('3 IN (1, 2)', 0),
    # LIKE
    ("'a_b' LIKE 'a\\_b'", 1), ("'axb' LIKE 'a\\_b'", 0), ("'a%' LIKE 'a|%' ESCAPE '|'", 1),
    ("'ab' LIKE 'a|%' ESCAPE '|'", 0), ("10 LIKE '1%'", 1), ('1.50 LIKE \'1.5%\'', 1),
    ("NULL LIKE 'a'", None), ("'a' LIKE NULL", None), ("'ABC' LIKE 'a%'", 1),
    ("'a ' LIKE 'a'", 0), ("'a' LIKE 'á'", 1), ("'abc' NOT LIKE 'a_c'", 0),
    ("'abc' NOT LIKE '%d%'", 1), ("0x41 LIKE 'a'", 0), ("0x41 LIKE 'A'", 1),
    ("'a\nb' LIKE 'a_b'", 1), ("'%' LIKE '\\%'", 1), ("'x' LIKE '\\%'", 0),
    ("'a.c' LIKE 'a.c'", 1), ("'abc' LIKE 'a.c'", 0), ("'日本語' LIKE '日_語'", 1),
    # logic: three-valued, results 1/0/NULL
    ('NOT NULL', None), ("NOT 'abc'", 1), ("NOT '1abc'", 0), ('NOT 0', 1), ('!2', 0),
    ('NULL AND 0', 0), ('NULL AND 1', None), ('1 AND 2', 1), ('1 && 0', 0),
    ('NULL OR 1', 1), ('NULL OR 0', None), ('0 OR 0', 0), ('0 || 3', 1),
    ('1 XOR NULL', None), ('1 XOR 1', 0), ('1 XOR 0', 1), ('1 XOR 1 XOR 1', 1),
    ("'a' = 'a' AND 1 < 2 AND NULL IS NULL", 1), ('1 = 2 OR 3 = 3', 1),
]


@pytest.mark.parametrize('text, expected', COMPARISON_CASES)
def test_comparison_and_logic(text, expected):
    result = value_of(text)
    assert same(result, expected), (text, result)


def test_comparisons_read_the_row():
    row = {'note': 'Open ', 'qty': 3, 'price': D('2.50'), 'raw': b'Ab', 'flag': True,
           'day': datetime.date(2024, 1, 2), 'at': datetime.datetime(2024, 1, 2, 10, 0)}
    assert value_of("note = 'open'", row) == 1
    assert value_of("raw = 'Ab'", row) == 1 and value_of("raw = 'ab'", row) == 0  # binary
    assert value_of("raw LIKE 'a%'", row) == 0 and value_of("raw LIKE 'A%'", row) == 1
    assert value_of('price = 2.5', row) == 1 and value_of("price > '2.4'", row) == 1
    assert value_of('flag = 1', row) == 1 and value_of('flag IS TRUE', row) == 1
    assert value_of("day = '2024-01-02'", row) == 1 and value_of("day < '2024-01-10'", row) == 1
    assert value_of("at > '2024-01-02'", row) == 1 and value_of("at = '2024-01-02 10:00:00'", row) == 1
    assert value_of("day BETWEEN '2024-01-01' AND '2024-01-31'", row) == 1
    assert value_of('qty IN (1, 2, 3)', row) == 1


def test_and_or_stop_at_the_deciding_operand():
    missing = col('unknown')
    assert evaluate(('fn', 'AND', (lit(0), missing)), {}) == 0
    assert evaluate(('fn', 'OR', (lit(1), missing)), {}) == 1
    assert evaluate(('fn', 'AND', (lit(None), lit(0))), {}) == 0
    assert evaluate(('fn', 'OR', (lit(0), lit(None), lit(0))), {}) is None


@pytest.mark.parametrize('value, expected', [
    (None, False), (0, False), (1, True), (-1, True), (D('0.00'), False), (D('0.01'), True),
    (0.0, False), ('', False), ('abc', False), ('0.0', False), ('1abc', True), (' 2', True),
    (b'1', True), (b'\x00', False), (HexLiteral(b'\x00'), False), (HexLiteral(b'\x01'), True),
    (True, True), (False, False), (datetime.date(2024, 1, 1), True),
])
def test_truthy_is_where_truth(value, expected):
    assert truthy(value) is expected


def test_compiled_tuples_keep_leaf_tags_substitute_and_to_sql_working():
    template = ExpressionCompiler().compile(sqlglot.parse_one(
        "SELECT a = :p0 AND b IS NOT NULL AND c NOT LIKE :p1 ESCAPE '!' "
        "AND d NOT IN (:p2, 2) AND e NOT BETWEEN 1 AND :p3 OR f <=> NULL XOR NOT g",
        read='mysql').expressions[0])
    assert template[:2] == ('fn', 'OR')
    assert sorted(set(leaf_tags(template))) == ['col', 'lit', 'param']
    assert to_sql(_bind(template, [1, 'x%', 3, 4])) == (
        "(((`a` = 1) AND (`b` IS NOT NULL) AND (NOT (`c` LIKE 'x%' ESCAPE '!')) "
        "AND (NOT (`d` IN (3, 2))) AND (NOT (`e` BETWEEN 1 AND 4))) "
        "OR ((`f` <=> NULL) XOR (NOT `g`)))")
    bound = _bind(template, [1, 'x%', 3, 4])
    row = dict(a=1, b=0, c='y', d=1, e=9, f=None, g=1)
    assert substitute(bound, {k: lit(v) for k, v in row.items()}) == lit(evaluate(bound, row)) == lit(1)
    partly = substitute(('fn', '=', (col('a'), ('bin', '+', lit(1), lit(1)))), {})
    assert partly == ('fn', '=', (col('a'), lit(2)))


def test_like_escape_must_be_one_character():
    with pytest.raises(ExpressionError, match='ESCAPE'):
        value_of("'a' LIKE 'a' ESCAPE 'xy'")
    assert value_of("'a\\\\' LIKE 'a\\\\' ESCAPE ''") == 1  # no escape character: '\' is itself


def test_unsupported_forms_are_refused_not_crashed():
    with pytest.raises(SqlChangeError, match='needs-lookup'):
        template_of('a IN (SELECT id FROM t)')


# Live check ---------------------------------------------------------------

def _mariadb():
    pymysql = pytest.importorskip('pymysql')
    try:
        return pymysql.connect(host='127.0.0.1', port=3306, user='root', database='test',
                               connect_timeout=2, charset='utf8mb4')
    except pymysql.err.OperationalError as error:
        pytest.skip(f'MariaDB at 127.0.0.1:3306 is not reachable: {error}')


def test_cases_match_live_mariadb():
    connection = _mariadb()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET sql_mode = DEFAULT, collation_connection = 'utf8mb4_general_ci'")
            wrong = []
            for text, expected in LIVE_CASES:
                cursor.execute('SELECT ' + text)
                (server,), = cursor.fetchall()
                if not same(server, expected):
                    wrong.append((text, expected, server))
    finally:
        connection.close()
    assert not wrong, wrong


LIVE_CASES = COMPARISON_CASES
