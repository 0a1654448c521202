"""Nested column types: a json column whose shape is declared.

A DynamoDB item's maps, lists and sets (or a MySQL JSON document) have no
single SQL type: the replica stores them as a JSON column. When a table
declares their shape, the Parquet backup stores them as Arrow lists, maps
and structs instead of JSON text, with exact values (decimals as decimal128,
binary as bytes)::

    list<T>                 # DynamoDB L (every element a T)
    set<T>                  # SS, NS or BS: distinct elements, stored sorted
    map<T>                  # M with any names, every value a T
    struct<a: T, b: U>      # M with (some of) these names

``T`` is one of changeflow's scalar names (string, text, integer, bigint,
decimal, decimal(p,s), float, boolean, binary, date, datetime), a nested
type, or ``json``: that part as JSON text, where its shape varies. A set's
element is a scalar (string, text, a number type, binary). Field names are
attribute names without blanks or any of ``:<>,()``.

Every sink but the Parquet backup treats such a column as ``json``
(:func:`changeflow.sql.types.parse_type` reads it as kind 'json' with a
``shape``): the replica's JSON column, notification values. In Parquet:
``list`` and ``set`` are ``list_(T)``, ``map`` is ``map_(string, T)``,
``struct`` is ``struct(...)`` (a declared field an item lacks is null),
scalars as top-level columns; a set reads back as a sorted list.
"""

import base64
import binascii
import decimal
import json
import re
from typing import Any, Callable, NamedTuple, Optional, Tuple

import pyarrow as pa

__all__ = ['Nested', 'parse_nested', 'SCALARS']

SCALARS = ('string', 'text', 'integer', 'bigint', 'decimal', 'float', 'boolean', 'binary',
           'date', 'datetime', 'json')
_SET_ELEMENTS = ('string', 'text', 'integer', 'bigint', 'decimal', 'float', 'binary')
_CONTAINERS = ('list', 'set', 'map', 'struct')
_TOKEN = re.compile(r'\s*(?:(?P<word>[^\s:<>,()]+)(?P<args>\([\d\s,]*\))?|(?P<punct>[:<>,]))')
_INT64 = (-2 ** 63, 2 ** 63 - 1)


class Nested(NamedTuple):
    """A parsed shape: a container (``element`` or ``fields``) or a scalar leaf."""
    kind: str                                   # list, set, map, struct, or 'scalar'
    element: Optional['Nested'] = None          # list, set, map
    fields: Tuple[Tuple[str, 'Nested'], ...] = ()  # struct, in declared order
    scalar: str = ''                            # a leaf's canonical type text

    def text(self) -> str:
        """The canonical type text (:func:`parse_nested` reads it back to the same shape)."""
        if self.kind == 'scalar':
            return self.scalar
        if self.kind == 'struct':
            return 'struct<' + ', '.join(f'{name}: {node.text()}'
                                         for name, node in self.fields) + '>'
        return f'{self.kind}<{self.element.text()}>'

    def arrow(self) -> pa.DataType:
        """Its Arrow type in the Parquet backup."""
        from changeflow.sql.types import arrow_type
        if self.kind == 'scalar':
            return arrow_type(self.scalar)
        if self.kind in ('list', 'set'):
            return pa.list_(self.element.arrow())
        if self.kind == 'map':
            return pa.map_(pa.string(), self.element.arrow())
        return pa.struct([pa.field(name, node.arrow()) for name, node in self.fields])

    def converter(self) -> Callable[[Any], Any]:
        """value -> the Python value ``pa.array`` takes for :meth:`arrow`.

        Takes the column's value as a Change carries it: dicts and lists
        (DynamoDB's, as :func:`changeflow.dynamodb.records.json_ready`
        gives them: numbers as int, float or exact text, bytes as base64
        text), or a JSON document's text (a MySQL JSON column), read with
        exact decimals. Raises BadValue naming the path of what does not fit.
        """
        convert = _converter(self)

        def top(value):
            if isinstance(value, (str, bytes)):
                from changeflow.sql.coercion import BadValue
                try:
                    value = json.loads(value, parse_float=decimal.Decimal)
                except ValueError:
                    raise BadValue('not a JSON document') from None
            return convert(value, '')
        return top


def parse_nested(text: str) -> Nested:
    """``text`` (e.g. ``struct<dims: list<decimal(10,2)>, seen: boolean>``)
    read; ValueError naming what is wrong."""
    tokens = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f'cannot read {text!r} at {text[position:]!r}')
        tokens.append(match.group('punct') or match.group('word') + (match.group('args') or ''))
        position = match.end()
    node, rest = _parse(tokens, 0, text)
    if rest != len(tokens):
        raise ValueError(f'{text!r}: unexpected {" ".join(tokens[rest:])!r} at the end')
    if node.kind == 'scalar':
        raise ValueError(f'{text!r} is not a nested type (list<..>, set<..>, map<..>, struct<..>)')
    return node


def _expect(tokens, at: int, token: str, text: str) -> int:
    if at >= len(tokens) or tokens[at] != token:
        found = tokens[at] if at < len(tokens) else 'the end'
        raise ValueError(f'{text!r}: expected {token!r}, found {found!r}')
    return at + 1


def _parse(tokens, at: int, text: str) -> Tuple[Nested, int]:
    if at >= len(tokens):
        raise ValueError(f'{text!r}: a type is missing at the end')
    word = tokens[at]
    if word.lower() in _CONTAINERS:
        kind = word.lower()
        at = _expect(tokens, at + 1, '<', text)
        if kind != 'struct':
            element, at = _parse(tokens, at, text)
            if kind == 'set' and (element.kind != 'scalar' or element.scalar.split('(')[0]
                                  not in _SET_ELEMENTS):
                raise ValueError(f'{text!r}: a set holds strings, numbers or binary, '
                                 f'not {element.text()}')
            return Nested(kind, element), _expect(tokens, at, '>', text)
        fields = []
        while True:
            name = tokens[at] if at < len(tokens) else ''
            if name in ('', ':', '<', '>', ','):
                raise ValueError(f'{text!r}: a struct field needs a name')
            if name in (f for f, _ in fields):
                raise ValueError(f'{text!r}: field {name!r} is declared twice')
            node, at = _parse(tokens, _expect(tokens, at + 1, ':', text), text)
            fields.append((name, node))
            if at < len(tokens) and tokens[at] == ',':
                at += 1
                continue
            return Nested('struct', fields=tuple(fields)), _expect(tokens, at, '>', text)
    if word in ':<>,':
        raise ValueError(f'{text!r}: expected a type, found {word!r}')
    from changeflow.sql.types import canonical_type
    try:
        scalar = canonical_type(word)
    except ValueError:
        scalar = ''
    if scalar.split('(')[0] not in SCALARS or (scalar.startswith('decimal(') and int(
            scalar[8:].split(',')[0]) > 38):
        raise ValueError(f'{text!r}: {word!r} is not one of {", ".join(SCALARS)} or '
                         f'decimal(p,s) with p at most 38, nor a nested type')
    return Nested('scalar', scalar=scalar), at + 1


# --- values -------------------------------------------------------------------

def _bad(path: str, why: str):
    from changeflow.sql.coercion import BadValue
    return BadValue(f'{path.lstrip(".")}: {why}' if path else why)


def _converter(node: Nested) -> Callable[[Any, str], Any]:
    if node.kind == 'scalar':
        return _scalar_converter(node.scalar)
    if node.kind in ('list', 'set'):
        element = _converter(node.element)
        distinct = node.kind == 'set'

        def sequence(value, path):
            if value is None:
                return None
            if not isinstance(value, (list, tuple, set, frozenset)) or (
                    not distinct and isinstance(value, (set, frozenset))):
                raise _bad(path, f'{type(value).__name__} is not a {node.kind}')
            out = [element(v, f'{path}[{i}]') for i, v in enumerate(value)]
            if distinct:
                if None in out:
                    raise _bad(path, 'a set holds no null')
                out = sorted(set(out))
            return out
        return sequence
    if node.kind == 'map':
        element = _converter(node.element)

        def mapping(value, path):
            if value is None:
                return None
            if not isinstance(value, dict):
                raise _bad(path, f'{type(value).__name__} is not a map')
            return [(name, element(v, f'{path}.{name}')) for name, v in sorted(
                value.items(), key=_name)]
        return mapping
    fields = {name: _converter(child) for name, child in node.fields}

    def struct(value, path):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _bad(path, f'{type(value).__name__} is not a map')
        for name in value:
            if name not in fields:
                raise _bad(f'{path}.{name}', f'not a declared field ({", ".join(fields)})')
        return {name: convert(value.get(name), f'{path}.{name}')
                for name, convert in fields.items()}
    return struct


def _name(pair):
    if not isinstance(pair[0], str):
        raise _bad('', f'map key {pair[0]!r} is not text')
    return pair[0]


def _scalar_converter(scalar: str) -> Callable[[Any, str], Any]:
    from changeflow.sql.coercion import BadValue, coercer
    from changeflow.io.json_records import dumps_json, json_value
    if scalar == 'json':
        def as_json(value, path):
            return None if value is None else dumps_json(json_value(value)).decode('utf-8')
        return as_json
    if scalar == 'binary':
        def as_bytes(value, path):
            if value is None or isinstance(value, bytes):
                return value
            if not isinstance(value, str):
                raise _bad(path, f'{type(value).__name__} is not binary')
            try:  # JSON carries bytes as base64 text
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise _bad(path, 'text that is not base64') from None
        return as_bytes
    coerce = coercer('decimal(38,9)' if scalar == 'decimal' else scalar)
    integral = scalar in ('integer', 'bigint')

    def leaf(value, path):
        if value is None:
            return None
        try:
            result = coerce(value)
        except BadValue as error:
            raise _bad(path, str(error)) from None
        if integral and not _INT64[0] <= result <= _INT64[1]:
            raise _bad(path, 'out of the int64 range')
        return result
    return leaf
