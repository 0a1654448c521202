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
    pymysql = pytest.importorskip('pymysql')
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
            for text in ERROR_CASES:
                try:
                    cursor.execute('SELECT ' + text)
                    wrong.append((text, 'an error', cursor.fetchall()))
                except pymysql.err.MySQLError as error:
                    if error.args[0] != 1690:  # ER_DATA_OUT_OF_RANGE
                        wrong.append((text, 'error 1690', error.args))
    finally:
        connection.close()
    assert not wrong, wrong


FUNCTION_CASES = [
    # IF, CASE, IFNULL, NULLIF, COALESCE: the result type is that of all branches
    ("IF(1, 1, 'a')", '1'), ("IF(0, 1, 'a')", 'a'), ('IF(NULL, 1, 2)', 2), ("IF('abc', 1, 2)", 2),
    ('IF(0.1, 1, 2)', 1), ('IF(1, 2.5, 3)', D('2.5')), ('IF(1, 2, 3.5)', D('2.0')),
    ('IF(1, 2, 3e0)', 2.0), ('IF(1, 0x41, 2)', b'A'), ('IF(2 > 1, NULL, 5)', None),
    ("CASE 2 WHEN 1 THEN 'a' WHEN 2 THEN 'b' END", 'b'), ("CASE 3 WHEN 1 THEN 'a' END", None),
    ("CASE 'A' WHEN 'a' THEN 1 ELSE 0 END", 1), ('CASE NULL WHEN NULL THEN 1 ELSE 0 END', 0),
    ('CASE WHEN 0 THEN 1 WHEN NULL THEN 2 ELSE 3 END', 3),
    ("CASE WHEN 1 THEN 1 ELSE 'x' END", '1'), ('CASE WHEN 1 THEN 1 ELSE 2.25 END', D('1.00')),
    ('IFNULL(NULL, 2)', 2), ("IFNULL(1, 'x')", '1'), ('IFNULL(NULL, NULL)', None),
    ('NULLIF(1, 1)', None), ("NULLIF('a', 'A')", None), ('NULLIF(1, 2)', 1),
    ('NULLIF(NULL, 1)', None), ('NULLIF(1, NULL)', 1), ('COALESCE(NULL, NULL, 3)', 3),
    ("COALESCE(NULL, 'a', 1)", 'a'), ('COALESCE(NULL, 2, 1.5)', D('2.0')),
    # CONCAT, CONCAT_WS: numbers as their text, binary when any argument is
    ("CONCAT('a', 1, 2.50, NULL)", None), ("CONCAT('a', 1, 2.50)", 'a12.50'),
    ("CONCAT('é', 0x41)", b'\xc3\xa9A'), ("CONCAT(1e0, 'x')", '1x'), ('CONCAT(0x41)', b'A'),
    ("CONCAT(0.1e0 + 0.2e0)", '0.30000000000000004'), ("CONCAT('5' + 1)", '6'),
    ('CONCAT(1e15)', '1e15'), ('CONCAT(1e14)', '100000000000000'), ('CONCAT(1e-16)', '1e-16'),
    ('CONCAT(1.5e-15)', '0.0000000000000015'), ('CONCAT(123456789012345678e0)', '1.2345678901234568e17'),
    ('CONCAT(-0.5e0)', '-0.5'), ('CONCAT(1e0 / 3)', '0.3333333333333333'), ('CONCAT(1.23456e-18)', '1.23456e-18'),
    ("CONCAT_WS(',', 'a', NULL, 'b')", 'a,b'), ("CONCAT_WS(NULL, 'a')", None),
    ("CONCAT_WS(',', 0x41, 'b')", b'A,b'), ("CONCAT_WS('', 1, 2)", '12'),
    # GREATEST, LEAST: a string with a number compares (and returns) doubles
    ("GREATEST('abc', 5)", 5.0), ("GREATEST('10', 9)", 10.0), ("GREATEST('b', 'A')", 'b'),
    ("GREATEST('B', 'a')", 'B'), ("LEAST(1, '0.5x')", 0.5), ('GREATEST(1, 2.5)', D('2.5')),
    ("GREATEST(0x41, 'B')", b'B'), ('GREATEST(1, NULL)', None), ('GREATEST(2, 1)', 2),
    ('GREATEST(1.5, 2)', D('2.0')), ('GREATEST(1e0, 2)', 2.0), ("LEAST('a', 'B')", 'a'),
    ("GREATEST('2024-01-01', '2023-12-31')", '2024-01-01'), ('LEAST(0x41, 66)', 65.0),
    ('GREATEST(18446744073709551615, -1)', D('18446744073709551615')),
    # string functions
    ("LENGTH('é')", 2), ('LENGTH(123)', 3), ('LENGTH(0x4142)', 2), ("CHAR_LENGTH('日本')", 2),
    ('CHAR_LENGTH(0x4142)', 2), ('LENGTH(NULL)', None), ("CHARACTER_LENGTH('ab')", 2),
    ("OCTET_LENGTH('é')", 2),
    ("SUBSTRING('abcdef', 2)", 'bcdef'), ("SUBSTRING('abcdef', 2, 3)", 'bcd'),
    ("SUBSTRING('abcdef', -2)", 'ef'), ("SUBSTRING('abcdef', 0)", ''), ("SUBSTRING('abcdef', 7)", ''),
    ("SUBSTRING('abcdef', 2, -1)", ''), ("SUBSTRING('abcdef', 1.5)", 'bcdef'),
    ("SUBSTRING('abcdef', '2x')", 'bcdef'), ("SUBSTRING('日本語', 2, 1)", '本'),
    ('SUBSTRING(0xE697A5E69CAC, 2, 2)', b'\x97\xa5'), ('SUBSTRING(12345, 2, 2)', '23'),
    ("MID('abcdef', 2, 2)", 'bc'), ("SUBSTRING('abc', NULL)", None), ("SUBSTR('abcdef' FROM 2 FOR 3)", 'bcd'),
    ("SUBSTRING('abcdef', -7)", ''),
    ("LEFT('abc', 2)", 'ab'), ("LEFT('abc', -1)", ''), ("RIGHT('abc', 2)", 'bc'), ("RIGHT('abc', 5)", 'abc'),
    ('LEFT(0x414243, 1)', b'A'), ("RIGHT('abc', 0)", ''), ("LEFT(NULL, 1)", None),
    ("TRIM('  a  ')", 'a'), ("TRIM(LEADING 'x' FROM 'xxaxx')", 'axx'),
    ("TRIM(TRAILING 'xy' FROM 'axyxy')", 'a'), ("TRIM(BOTH 'x' FROM 'xax')", 'a'),
    ("TRIM('x' FROM 'xax')", 'a'), ("LTRIM('  a  ')", 'a  '), ("RTRIM('  a  ')", '  a'),
    ("TRIM('\\ta ')", '\ta'), ("TRIM('' FROM 'aa')", 'aa'), ("TRIM(NULL)", None),
    ("REPLACE('aAa', 'a', 'b')", 'bAb'), ("REPLACE('abc', '', 'x')", 'abc'),
    ("REPLACE('abc', 'b', NULL)", None), ('REPLACE(123, 2, 9)', '193'),
    ("LPAD('ab', 5, 'xy')", 'xyxab'), ("LPAD('abcdef', 3, 'x')", 'abc'), ("LPAD('ab', 5, '')", None),
    ("LPAD('ab', -1, 'x')", None), ("LPAD('ab', 4)", '  ab'), ("RPAD('ab', 5, 'xy')", 'abxyx'),
    ("RPAD('ab', 1, 'x')", 'a'), ("RPAD(0x41, 3, 'b')", b'Abb'),
    ("REPEAT('ab', 3)", 'ababab'), ("REPEAT('ab', 0)", ''), ("REPEAT('ab', -1)", ''),
    ("REPEAT('a', 100000000)", None), ("LPAD('a', 100000000, 'b')", None),
    ("REVERSE('abc')", 'cba'), ("REVERSE('日本')", '本日'), ('REVERSE(0x4142)', b'BA'),
    ("LOCATE('B', 'abc')", 2), ("LOCATE('b', 'abcb', 3)", 4), ("LOCATE('b', 'abc', 0)", 0),
    ("LOCATE('', 'abc')", 1), ("LOCATE('', 'abc', 3)", 3), ("LOCATE('', 'abc', 5)", 0),
    ("LOCATE(0x42, 'abc')", 0), ("INSTR('abc', 'C')", 3), ("POSITION('c' IN 'abc')", 3),
    ("LOCATE('é', 'cafE')", 0), ("LOCATE('É', 'café')", 4), ("LOCATE(NULL, 'a')", None),
    ("UPPER('ßé')", 'ßÉ'), ("LOWER('ÀB')", 'àb'), ('UPPER(0x61)', b'a'), ('UPPER(12)', '12'),
    ("UCASE('a')", 'A'), ("LCASE('A')", 'a'), ('UPPER(NULL)', None),
    # numeric functions
    ('ROUND(2.5)', D('3')), ('ROUND(-2.5)', D('-3')), ('ROUND(2.5e0)', 2.0), ('ROUND(3.5e0)', 4.0),
    ('ROUND(-2.5e0)', -2.0), ('ROUND(1.234, 2)', D('1.23')), ('ROUND(1.2, 3)', D('1.200')),
    ('ROUND(15, -1)', 20), ('ROUND(1.5, -1)', D('0')), ('ROUND(155.5, -1)', D('160')),
    ("ROUND('2.5')", 2.0), ('ROUND(1.005e0, 2)', 1.0), ('ROUND(NULL)', None), ('ROUND(2, NULL)', None),
    ('ROUND(18446744073709551615, -1)', D('18446744073709551620')), ('ROUND(15, 2)', 15),
    ('TRUNCATE(1.999, 1)', D('1.9')), ('TRUNCATE(-1.999, 1)', D('-1.9')), ('TRUNCATE(199, -2)', 100),
    ('TRUNCATE(1.9e0, 0)', 1.0), ("TRUNCATE('1.99', 1)", 1.9),
    ('FLOOR(1.5)', 1), ('FLOOR(-1.5)', -2), ('FLOOR(1.5e0)', 1.0), ("FLOOR('1.5')", 1.0), ('FLOOR(5)', 5),
    ('CEIL(1.2)', 2), ('CEILING(-1.2)', -1), ('CEIL(1.2e0)', 2.0),
    ('FLOOR(123456789012345678901234567890.5)', D('123456789012345678901234567890')),
    ('MOD(7, 3)', 1), ('MOD(-7, 3)', -1), ('MOD(7.5, 2)', D('1.5')), ('MOD(7, 0)', None),
    ('MOD(7.5e0, 2)', 1.5), ("MOD('7', 2)", 1.0), ('7 % -3', 1), ('7 MOD 3', 1),
    ('ABS(-5)', 5), ('ABS(-2.50)', D('2.50')), ("ABS('-3')", 3.0), ('ABS(-1e0)', 1.0),
    ('SIGN(-2.5)', -1), ('SIGN(0)', 0), ("SIGN('3x')", 1), ('SIGN(NULL)', None),
    # arithmetic
    ("'5' + 1", 6.0), ("'1.5' + 1", 2.5), ("'abc' + 1", 1.0), ('1 + 1', 2), ('1.50 + 1', D('2.50')),
    ('1.5 * 1.25', D('1.875')), ('10 / 4', D('2.5000')), ('1 / 3', D('0.3333')),
    ('1.00 / 3', D('0.333333')), ('2 / 3', D('0.6667')), ('1e0 / 3', 0.3333333333333333),
    ("'1' / 3", 0.3333333333333333), ('7 / 0', None), ('7 DIV 0', None), ('7.5 DIV 2', 3),
    ('-7 DIV 2', -3), ("'7.9' DIV 2", 3), ('7 DIV 2', 3), ('-7 % 3', -1), ('7.5 % 2', D('1.5')),
    ('18446744073709551615 - 1', 18446744073709551614),
    ('18446744073709551614 + 1', 18446744073709551615),
    ('-(-9223372036854775808)', D('9223372036854775808')), ('0x41 + 1', 66),
    ('0x41 * 1.5', D('97.5')), ("'9223372036854775807' + 0", 9.223372036854776e18),
    ('1.000000000000000000000000000000000 / 3', D('0.3333333333333333333333333333333333333')),
    ('1.0000000000000000000000000000000000000 / 3', D('0.33333333333333333333333333333333333333')),
    ('TRUE + 1', 2), ("- '3'", -3.0), ('- 1.50', D('-1.50')), ('NULL + 1', None), ('1 - NULL', None),
    ('0.1 + 0.2', D('0.3')), ('0.1e0 + 0.2e0', 0.30000000000000004),
]

# MariaDB refuses these (ER_DATA_OUT_OF_RANGE): the statement would have failed.
ERROR_CASES = [
    '9223372036854775807 + 1', '9223372036854775807 * 2', '18446744073709551615 + 1',
    '0 - 9223372036854775808', '-9223372036854775807 - 2', '1 - 18446744073709551615',
    '9223372036854775807 DIV 0.5', '1e308 * 10', 'ABS(-9223372036854775808)',
]


@pytest.mark.parametrize('text, expected', FUNCTION_CASES)
def test_functions_and_arithmetic(text, expected):
    result = value_of(text)
    assert same(result, expected), (text, result)


@pytest.mark.parametrize('text', ERROR_CASES)
def test_out_of_range_is_an_expression_error(text):
    with pytest.raises(ExpressionError, match='out of range'):
        value_of(text)


LIVE_CASES = COMPARISON_CASES + FUNCTION_CASES


# Values from the row, and the crash classes of issue 5 ---------------------

def test_functions_on_row_values_of_every_kind():
    row = {'note': 'Zoë', 'raw': b'\xff\x00', 'qty': 3, 'price': D('2.50'), 'ratio': 0.5,
           'day': datetime.date(2024, 1, 2), 'at': datetime.datetime(2024, 1, 2, 3, 4, 5),
           'flag': True, 'nothing': None}
    assert value_of('GREATEST(note, 5)', row) == 5.0  # a text column with a number: doubles
    assert value_of("CONCAT(note, 0x21)", row) == 'Zoë!'.encode()
    assert value_of("CONCAT(raw, 'a')", row) == b'\xff\x00a'  # binary-safe
    assert value_of('LENGTH(raw)', row) == 2 and value_of('LENGTH(note)', row) == 4
    assert value_of('CHAR_LENGTH(note)', row) == 3
    assert value_of("CONCAT(qty, '/', price, '/', ratio, '/', flag)", row) == '3/2.50/0.5/1'
    assert value_of("CONCAT(day, ' ', at)", row) == '2024-01-02 2024-01-02 03:04:05'
    assert value_of('price * qty', row) == D('7.50') and value_of('price / qty', row) == D('0.833333')
    assert value_of('qty / 2', row) == D('1.5000') and value_of('ratio + qty', row) == 3.5
    assert value_of('day + 0', row) == 20240102 and value_of('at + 0', row) == 20240102030405
    assert value_of('flag + 1', row) == 2 and value_of('IFNULL(nothing, qty)', row) == 3
    assert value_of("IF(flag, note, 'x')", row) == 'Zoë' and value_of('UPPER(note)', row) == 'ZOË'
    assert value_of('COALESCE(nothing, price, qty)', row) == D('2.50')
    assert value_of("CASE WHEN qty > 2 THEN 'many' ELSE 'few' END", row) == 'many'
    assert value_of("REPLACE(raw, 0x00, 'z')", row) == b'\xffz'
    assert value_of('LEAST(day, at)', row) == datetime.date(2024, 1, 2)


def test_if_and_case_evaluate_only_the_branch_taken():
    overflow = ('bin', '*', lit(2 ** 63 - 1), lit(2))
    assert evaluate(('fn', 'IF', (lit(0), overflow, lit(1))), {}) == 1
    assert evaluate(('fn', 'CASE', (lit(1), lit(2), lit(1), overflow, lit(None))), {}) == 2
    assert evaluate(('fn', 'COALESCE', (lit(1), col('unknown'))), {}) == 1
    with pytest.raises(ExpressionError):
        evaluate(('fn', 'IF', (lit(1), overflow, lit(1))), {})


def test_a_refused_value_is_left_unfolded_for_the_row_evaluation_to_report():
    overflow = ('bin', '+', lit(2 ** 63 - 1), lit(1))
    assert substitute(overflow, {}) == overflow
    with pytest.raises(ExpressionError, match='BIGINT value is out of range'):
        evaluate(overflow, {})


def test_translated_statements_evaluate_on_the_row():
    from changeflow.model import OpKind, RowOp
    from changeflow.sql.plans import StatementTranslator
    from changeflow.sql.rowstate import RowState, apply_op
    from tests.audit_fixture import SHOP_TABLES
    translator = StatementTranslator(SHOP_TABLES)
    row = RowState(True, {'tenant_id': 1, 'order_id': 2, 'note': 'old', 'qty': 4,
                          'amount': D('10.50')}, False)

    def run(sql):
        (change,) = translator.translate(sql, 'shop').changes
        return apply_op(row, RowOp(OpKind.UPDATE, 'v', (), change.assignments, 'p')).values

    after = run("UPDATE orders SET note = GREATEST(note, 5), qty = IF(qty > 3, qty DIV 3, 0), "
                "amount = ROUND(amount / 3, 2) WHERE tenant_id = 1 AND order_id = 2")
    assert (after['note'], after['qty'], after['amount']) == (5.0, 1, D('3.50'))
    after = run("UPDATE orders SET note = CONCAT(note, x'21', 0x21), status = CONCAT_WS('-', "
                "UPPER(note), NULL, LPAD(qty, 3, '0')) WHERE tenant_id = 1 AND order_id = 2")
    # each assignment sees the ones before it (MySQL's single-table UPDATE)
    assert after['note'] == b'old!!' and after['status'] == b'old!!-004'
    after = run("UPDATE orders SET note = CASE WHEN note LIKE 'o%' AND qty BETWEEN 1 AND 5 "
                "THEN 'matched' END WHERE tenant_id = 1 AND order_id = 2")
    assert after['note'] == 'matched'
    with pytest.raises(ExpressionError):
        run('UPDATE orders SET qty = qty * 9223372036854775807 WHERE tenant_id = 1 AND order_id = 2')


_ODD_VALUES = [None, True, False, 0, -1, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, -2 ** 63, 2 ** 64,
               D('0'), D('-0.5'), D('1E+40'), D('1E-40'), D('123.4500'), 0.0, -2.5, 1e308,
               float('inf'), float('nan'), '', ' ', '12abc', ' 1e3', '-', '.5', '1e400', '日本',
               'ß', 'a\udce9', b'', b'\xff\x00', HexLiteral(b''), HexLiteral(b'\x41'),
               HexLiteral(b'\xff' * 9), datetime.date(2024, 1, 2),
               datetime.datetime(2024, 1, 2, 3, 4, 5, 6), datetime.timedelta(hours=-1), {'a': 1}]


def test_no_function_raises_anything_but_an_expression_error():
    """Any values, any arity: a value, or ExpressionError (a ValueError the
    sinks dead-letter); never a TypeError, IndexError or AttributeError."""
    import random
    from changeflow.sql.expressions import FUNCTIONS, _LAZY
    names = sorted(FUNCTIONS) + sorted(_LAZY)
    rng = random.Random(5)
    for _ in range(20_000):
        args = tuple(lit(rng.choice(_ODD_VALUES)) for _ in range(rng.randrange(5)))
        name = rng.choice(names + ['bin', 'neg'])
        if name == 'neg':
            expr = ('neg', (args + (lit(1),))[0])
        elif name == 'bin':
            expr = ('bin', rng.choice(['+', '-', '*', '/', 'DIV', '%']), *(args + (lit(1), lit(1)))[:2])
        else:
            expr = ('fn', name, args)
        try:
            evaluate(expr, {})
        except ExpressionError:
            pass
        to_sql(expr)


# DEFAULT and DEFAULT(col) ---------------------------------------------------

@pytest.fixture
def with_defaults():
    from changeflow.config import TableSpec
    from changeflow.sql.plans import StatementTranslator
    return StatementTranslator([TableSpec(
        'shop.items', ('id',), 'items',
        (('id', 'integer'), ('status', 'string'), ('qty', 'integer'), ('note', 'text')),
        defaults=(('status', 'new'), ('qty', '0')))])


def test_default_in_assignments_and_values_is_the_declared_default(with_defaults):
    (update,) = with_defaults.translate(
        'UPDATE items SET status = DEFAULT, qty = DEFAULT(qty) + 1 WHERE id = 1', 'shop').changes
    assert update.assignments == (('status', lit('new')), ('qty', lit(1)))  # typed: 1, not 1.0
    first, second = with_defaults.translate(
        "INSERT INTO items (id, status, qty) VALUES (1, DEFAULT, DEFAULT(qty)), (2, 'x', DEFAULT)",
        'shop').changes
    assert first.values == (('id', 1), ('status', 'new'), ('qty', 0))
    assert second.values == (('id', 2), ('status', 'x'), ('qty', 0))
    (upsert,) = with_defaults.translate(
        'INSERT INTO items (id, qty) VALUES (1, 5) ON DUPLICATE KEY UPDATE '
        'status = DEFAULT, qty = IFNULL(qty, default(qty))', 'shop').changes
    assert upsert.assignments == (('status', lit('new')),
                                  ('qty', ('fn', 'COALESCE', (col('qty'), lit(0)))))


@pytest.mark.parametrize('sql, reason, detail', [
    ('UPDATE items SET note = DEFAULT WHERE id = 1', 'needs-lookup', 'DEFAULT of column note'),
    ('INSERT INTO items (id, note) VALUES (1, DEFAULT(note))', 'needs-lookup', 'DEFAULT of column note'),
    ('INSERT INTO items (id) VALUES (DEFAULT)', 'needs-lookup', 'DEFAULT of column id'),
    ('UPDATE items SET qty = DEFAULT + 1 WHERE id = 1', 'unsupported-sql', 'not a whole value'),
    ('UPDATE items SET qty = DEFAULT(1) WHERE id = 1', 'unsupported-sql', 'not a column'),
])
def test_an_unknown_default_needs_lookup(with_defaults, sql, reason, detail):
    with pytest.raises(SqlChangeError) as error:
        with_defaults.translate(sql, 'shop')
    assert error.value.reason == reason and detail in error.value.detail


def test_default_clauses_of_ddl_are_left_to_the_parser():
    from changeflow.sql.compile_expressions import mark_default_calls
    ddl = 'ALTER TABLE t ADD c INT DEFAULT (1 + 1)'
    assert mark_default_calls(ddl) == ddl
    assert mark_default_calls('UPDATE t SET a = default (a), `x default`(b)') == (
        'UPDATE t SET a = CHANGEFLOW_DEFAULT (a), `x default`(b)')


def test_integer_arithmetic_fast_path_is_the_general_one():
    """evaluate's path for two plain ints gives what _arith gives: the same
    value, or the same error, at and around the BIGINT and BIGINT UNSIGNED
    limits (bools and other operators included)."""
    import itertools
    from changeflow.sql.expressions import _arith

    edges = [0, 1, -1, 2, 3, 2 ** 31, 2 ** 32 + 5, 2 ** 62, 2 ** 63 - 2, 2 ** 63 - 1, 2 ** 63,
             2 ** 64 - 1, 2 ** 64, -2 ** 63, -2 ** 63 + 1, -2 ** 63 - 5, -2 ** 64, True, False]

    def outcome(compute):
        try:
            return 'value', compute()
        except ExpressionError as exc:
            return 'error', str(exc)

    for op, a, b in itertools.product(['+', '-', '*', '/', 'DIV', '%'], edges, edges):
        fast = outcome(lambda: evaluate(('bin', op, ('col', 'a'), lit(b)), {'a': a}))
        general = outcome(lambda: _arith(op, a, b))
        assert fast == general and type(fast[1]) is type(general[1]), (op, a, b, fast, general)
