"""Which attribute types fit which declared columns, exactly or not at all."""

import decimal

import pytest

from changeflow.dynamodb.columns import ItemColumns, ItemMismatch, dynamodb_type
from changeflow.dynamodb.records import item

D = decimal.Decimal


def values(columns, attributes):
    return dict(ItemColumns(tuple(columns.items())).values(item(attributes)))


@pytest.mark.parametrize('declared, attribute, stored', [
    ('string', {'S': 'a'}, 'a'),
    ('text', {'N': '1E+3'}, D('1E+3')),          # a string column takes N: its text is exact
    ('integer', {'N': '-9223372036854775808'}, D('-9223372036854775808')),
    ('bigint', {'N': '12.000'}, D('12.000')),
    ('decimal(5,2)', {'N': '-999.99'}, D('-999.99')),
    ('decimal(5,2)', {'N': '1.50000'}, D('1.50000')),   # trailing zeros are not places
    ('decimal', {'N': '12345678901234567890123456789.123456789'},
     D('12345678901234567890123456789.123456789')),
    ('float', {'N': '0.1'}, D('0.1')),
    ('boolean', {'BOOL': False}, False),
    ('binary', {'B': 'AP8='}, b'\x00\xff'),
    ('date', {'S': '2026-12-01'}, '2026-12-01'),
    ('datetime', {'S': '2026-12-01T10:00:00Z'}, '2026-12-01T10:00:00Z'),
    ('json', {'M': {'a': {'L': [{'N': '1'}, {'SS': ['y', 'x']}]}}}, {'a': [1, ['x', 'y']]}),
    ('json', {'NS': ['2', '1.5']}, [1.5, 2]),
    ('json', {'S': 'plain "text"'}, '"plain \\"text\\""'),  # a JSON string, not JSON text
    ('json', {'B': 'AP8='}, '"AP8="'),
    ('json', {'N': '7'}, D('7')),
    ('json', {'BOOL': True}, True),
    ('integer', {'NULL': True}, None),               # NULL fits every column
])
def test_fitting_attributes(declared, attribute, stored):
    assert values({'id': 'integer', 'a': declared}, {'id': {'N': '1'}, 'a': attribute}) == {
        'id': D(1), 'a': stored}


@pytest.mark.parametrize('declared, attribute, words', [
    ('integer', {'S': '1'}, 'is of type S; its column (integer) takes N'),
    ('integer', {'N': '2.5'}, 'cannot hold exactly'),
    ('integer', {'N': '9223372036854775808'}, 'cannot hold exactly'),
    ('decimal(5,2)', {'N': '1.005'}, 'cannot hold exactly'),
    ('decimal(5,2)', {'N': '1000'}, 'cannot hold exactly'),
    ('decimal', {'N': '0.0000000001'}, 'cannot hold exactly'),        # 10 places
    ('decimal', {'N': '1E+29'}, 'cannot hold exactly'),               # 30 digits
    ('string', {'BOOL': True}, 'is of type BOOL'),
    ('string', {'SS': ['a']}, 'is of type SS'),
    ('boolean', {'N': '1'}, 'is of type N'),
    ('binary', {'S': 'AP8='}, 'is of type S'),
    ('date', {'N': '20261201'}, 'is of type N'),
])
def test_attributes_that_do_not_fit_name_the_attribute_not_the_value(declared, attribute, words):
    with pytest.raises(ItemMismatch) as error:
        values({'id': 'integer', 'secret': declared}, {'id': {'N': '1'}, 'secret': attribute})
    assert error.value.reason == 'attribute-type'
    assert "'secret'" in error.value.detail and words in error.value.detail
    for text in attribute.values():       # the value itself may be secret
        assert not (isinstance(text, str) and len(text) > 2 and text in error.value.detail)


def test_an_undeclared_attribute_does_not_fit():
    with pytest.raises(ItemMismatch) as error:
        values({'id': 'integer'}, {'id': {'N': '1'}, 'extra': {'S': 'x'}})
    assert error.value.reason == 'unknown-attribute' and "'extra'" in error.value.detail


def test_only_changeflow_types_are_declared():
    with pytest.raises(ValueError, match="'tinyint\\(1\\)' is not one of"):
        ItemColumns((('a', 'tinyint(1)'),))


def test_type_tags():
    decoded = item({'s': {'S': ''}, 'n': {'N': '0'}, 'b': {'B': ''}, 't': {'BOOL': False},
                    'z': {'NULL': True}, 'm': {'M': {}}, 'l': {'L': []}, 'ss': {'SS': ['a']},
                    'ns': {'NS': ['1']}, 'bs': {'BS': ['AA==']}})
    assert {name: dynamodb_type(value) for name, value in decoded} == {
        's': 'S', 'n': 'N', 'b': 'B', 't': 'BOOL', 'z': 'NULL', 'm': 'M', 'l': 'L',
        'ss': 'SS', 'ns': 'NS', 'bs': 'BS'}
