"""Which DynamoDB attribute types a replica column of each declared type holds exactly.

An item carries a type per attribute (S, N, B, BOOL, NULL, M, L, SS, NS, BS)
and may carry attributes another item of its table lacks; a replica column
has one declared type. An attribute is written to its column only where
every sink keeps its value as the item holds it; otherwise the item does not
fit its table (:class:`ItemMismatch`, naming the attribute and both types,
never its value) and the row is dead-lettered and marked diverged, never
stored rounded, cut or re-typed:

==================  ===========================================================
column type         attribute types it takes
==================  ===========================================================
string, text        S; N (its exact decimal text)
integer, bigint     N with an integral value within int64
decimal(p,s)        N with at most s places and p - s digits before the point
decimal             N with at most 9 places and 29 digits before the point: a
                    bare decimal is decimal128(38,9) in the Parquet backup
float               N (the nearest double: a declared approximation)
boolean             BOOL
binary              B
date, datetime      S (ISO-8601 text, parsed by the sinks)
json                every type: M an object, L and sets arrays, S and B JSON
                    strings (B base64), N a number, BOOL true/false
list<T>             L whose every element fits T
set<T>              SS (T string or text), NS (T a number type), BS (T binary)
map<T>              M whose every value fits T
struct<a: T, ...>   M whose names are among the declared fields, each fitting
                    its type
==================  ===========================================================

Inside a nested type (:mod:`changeflow.sql.nested`) the scalars take what
they take at the top, except that string and text take S only (a nested
number has no exact text left to give them), and a ``json`` part takes
anything. Nested columns are json columns to the replica; the Parquet
backup stores them as Arrow lists, maps and structs.

NULL, like an absent attribute, is SQL NULL in any column: the replica does
not tell the two apart. An attribute the table does not declare does not fit.
"""

import decimal
from typing import Any, Tuple

from changeflow.dynamodb.records import BadRecord, DynamoMap, DynamoSet, json_ready
from changeflow.io.json_records import dumps_json
from changeflow.sql.types import parse_type

__all__ = ['ItemMismatch', 'ItemColumns', 'dynamodb_type', 'COLUMN_TYPES']

# The declared types a DynamoDB table's columns may have (changeflow's names).
COLUMN_TYPES = ('string', 'text', 'integer', 'bigint', 'decimal', 'float', 'boolean',
                'binary', 'date', 'datetime', 'json')
_TAKES = {
    'string': {'S', 'N'}, 'text': {'S', 'N'}, 'integer': {'N'}, 'bigint': {'N'},
    'decimal': {'N'}, 'float': {'N'}, 'boolean': {'BOOL'}, 'binary': {'B'},
    'date': {'S'}, 'datetime': {'S'},
    'json': {'S', 'N', 'B', 'BOOL', 'M', 'L', 'SS', 'NS', 'BS'},
}
_NESTED_TAKES = {'list': {'L'}, 'set': {'SS', 'NS', 'BS'}, 'map': {'M'}, 'struct': {'M'}}
_SET_TAGS = {'string': 'SS', 'text': 'SS', 'binary': 'BS'}   # the number types: NS
_INT64 = (-2 ** 63, 2 ** 63 - 1)
_BARE_DECIMAL = (38, 9)


class ItemMismatch(BadRecord):
    """An item that does not fit its table's declared columns (reason
    'unknown-attribute' or 'attribute-type'). ``key``: the row's key values,
    set by :func:`~changeflow.dynamodb.records.to_change`, to mark the row."""

    key = ()


def dynamodb_type(value) -> str:
    """The AttributeValue type tag of a decoded value."""
    if value is None:
        return 'NULL'
    if isinstance(value, bool):
        return 'BOOL'
    if isinstance(value, DynamoSet):
        first = value[0]
        return 'NS' if isinstance(first, decimal.Decimal) else 'BS' if isinstance(
            first, bytes) else 'SS'
    if isinstance(value, DynamoMap):
        return 'M'
    if isinstance(value, tuple):
        return 'L'
    return {decimal.Decimal: 'N', str: 'S', bytes: 'B'}[type(value)]


def _fits_number(number: decimal.Decimal, column_type) -> bool:
    kind = column_type.kind
    if kind in ('integer', 'bigint'):
        return number == number.to_integral_value() and _INT64[0] <= number <= _INT64[1]
    if kind == 'decimal':
        precision, scale = ((column_type.precision, column_type.scale or 0)
                            if column_type.precision is not None else _BARE_DECIMAL)
        if not number:
            return True
        places = max(0, -number.normalize().as_tuple().exponent)
        return places <= scale and number.adjusted() < precision - scale
    return True


def _fit_shape(value, shape, path: str, declared: str) -> None:
    """Raises ItemMismatch naming the attribute path where ``value`` (not
    None) does not fit ``shape`` (a :class:`changeflow.sql.nested.Nested`)."""
    tag = dynamodb_type(value)
    if shape.kind == 'scalar':
        if shape.scalar == 'json':
            return
        column_type = parse_type(shape.scalar)
        takes = {'S'} if column_type.kind in ('string', 'text') else _TAKES[column_type.kind]
    elif shape.kind == 'set':
        kind = parse_type(shape.element.scalar).kind
        takes = {_SET_TAGS.get(kind, 'NS')}
    else:
        takes = _NESTED_TAKES[shape.kind]
    if tag not in takes:
        raise ItemMismatch('attribute-type', (
            f'attribute {path!r} is of type {tag}; its column ({declared}) takes '
            f'{", ".join(sorted(takes))} there'))
    if shape.kind == 'scalar':
        if tag == 'N' and not _fits_number(value, column_type):
            raise ItemMismatch('attribute-type', (
                f'attribute {path!r}: a number that its column ({declared}) cannot hold '
                f'exactly'))
    elif shape.kind == 'set':
        if tag == 'NS':
            for number in value:
                _fit_shape(number, shape.element, path, declared)
    elif shape.kind == 'list':
        for index, element in enumerate(value):
            if element is not None:
                _fit_shape(element, shape.element, f'{path}[{index}]', declared)
    else:
        fields = dict(shape.fields) if shape.kind == 'struct' else None
        for name, element in value:
            node = shape.element if fields is None else fields.get(name)
            if node is None:
                raise ItemMismatch('unknown-attribute', (
                    f'attribute {path + "." + name!r} is not among the fields of its column '
                    f'({declared})'))
            if element is not None:
                _fit_shape(element, node, f'{path}.{name}', declared)


class ItemColumns:
    """Fits items to one table's declared columns.

    ``columns``: (column name, declared type) pairs, the types one of
    :data:`COLUMN_TYPES`, ``decimal(p,s)`` or a nested type (``list<T>``,
    ``set<T>``, ``map<T>``, ``struct<...>``); ValueError for another.
    """

    def __init__(self, columns):
        self._types = {}
        for name, declared in columns:
            column_type = parse_type(declared)
            if not column_type.changeflow or column_type.kind not in _TAKES:
                raise ValueError(f'column {name!r}: {declared!r} is not one of '
                                 f'{", ".join(COLUMN_TYPES)}, decimal(p,s) or a nested type')
            takes = _TAKES[column_type.kind] if column_type.shape is None else _NESTED_TAKES[
                column_type.shape.kind]
            self._types[name] = (declared, column_type, takes)

    def values(self, image: DynamoMap) -> Tuple[Tuple[str, Any], ...]:
        """The (column, value) pairs of a whole-row write of ``image``: the
        values of :func:`~changeflow.dynamodb.records.json_ready`, except S
        and B in a json column, which become their JSON text.

        Raises:
            ItemMismatch: an attribute is not declared, or its type does not
            fit its column (see the module docstring).
        """
        values = []
        for name, value in image:
            declared = self._types.get(name)
            if declared is None:
                raise ItemMismatch('unknown-attribute', f'attribute {name!r} is not among the '
                                                        f'declared columns {sorted(self._types)}')
            if value is not None:
                text, column_type, takes = declared
                tag = dynamodb_type(value)
                if tag not in takes:
                    raise ItemMismatch('attribute-type', (
                        f'attribute {name!r} is of type {tag}; its column ({text}) takes '
                        f'{", ".join(sorted(takes))}'))
                if tag == 'N' and not _fits_number(value, column_type):
                    raise ItemMismatch('attribute-type', (
                        f'attribute {name!r}: a number that its column ({text}) cannot hold '
                        f'exactly'))
                if column_type.shape is not None:
                    _fit_shape(value, column_type.shape, name, text)
                if column_type.kind == 'json' and tag in ('S', 'B'):
                    value = dumps_json(json_ready(value, nested=True)).decode('utf-8')
                else:
                    value = json_ready(value)
            values.append((name, value))
        return tuple(values)
