"""Table models: a table declared once as a Python dataclass.

    @dataclasses.dataclass(frozen=True)
    class Card:
        __key__ = ('id', 'title')          # hash attribute, then range attribute
        id: int
        title: str
        expiresAt: Optional[int] = None

A model gives handlers typed items (:func:`fit`) and, in the config
(``tables: {prod-Card: {model: "cards:Card"}}``), the table's ``key`` and
``columns`` where those are not written (:func:`model_key`,
:func:`model_columns`). Without a model, items are plain dicts (maps as
dicts, lists as lists, sets as sets, numbers as Decimal).

Fitting is strict, as the replica's columns are: an attribute the model does
not declare, a missing one whose field has no default and is not Optional,
or a value of another type is a :class:`ModelMismatch` naming the attribute
(never its value). Types: ``int`` (an integral number), ``float``,
``decimal.Decimal``, ``str``, ``bool`` (also 0/1 from the audit log, where
BOOLEAN is TINYINT), ``bytes``, ``dict``, ``list``/``tuple``, ``set``/
``frozenset``, ``datetime.date``/``datetime.datetime`` (ISO-8601 text),
``typing.Any``, each optionally ``Optional[...]``; parametrised containers
(``list[int]``) are checked as their container only here, and element by
element by the column types they declare (:func:`model_columns`).
"""

import dataclasses
import datetime
import decimal
import importlib
import sys
import types
import typing
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ['ModelMismatch', 'import_ref', 'model_key', 'model_columns', 'fit', 'plain']


class ModelMismatch(ValueError):
    """An item that does not fit its model: ``reason`` 'unknown-attribute',
    'missing-attribute' or 'attribute-type', ``attribute`` its name."""

    def __init__(self, reason: str, attribute: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.attribute = attribute
        self.detail = detail


def import_ref(ref: str, search_path: Optional[str] = None) -> Any:
    """The object ``'pkg.module:name'`` names (``name`` may be dotted).
    ``search_path``: a directory put on ``sys.path`` first (the job config's)."""
    module_name, sep, attribute = ref.partition(':')
    if not sep or not module_name or not attribute:
        raise ValueError(f'{ref!r} is not a reference of the form "pkg.module:name"')
    if search_path and search_path not in sys.path:
        sys.path.append(search_path)
    target = importlib.import_module(module_name)
    for part in attribute.split('.'):
        target = getattr(target, part)
    return target


def model_key(model) -> Tuple[str, ...]:
    """The model's ``__key__`` (a name or a tuple of names), checked against its fields."""
    _check_model(model)
    key = getattr(model, '__key__', None)
    key = (key,) if isinstance(key, str) else tuple(key or ())
    names = {field.name for field in dataclasses.fields(model)}
    if not key or not all(isinstance(k, str) and k in names for k in key):
        raise ValueError(f'{model.__qualname__}.__key__ must name its key fields, got {key!r}')
    return key


_COLUMN_TYPES = {int: 'bigint', float: 'float', decimal.Decimal: 'decimal', str: 'string',
                 bool: 'boolean', bytes: 'binary', datetime.datetime: 'datetime',
                 datetime.date: 'date'}


def model_columns(model) -> Tuple[Tuple[str, str], ...]:
    """(field, changeflow column type) pairs: int bigint, Decimal decimal,
    str string, bool boolean, bytes binary, date, datetime; ``list[T]`` and
    ``tuple[T, ...]`` list<T>, ``set[T]`` and ``frozenset[T]`` set<T> (T a
    string, number or bytes), ``dict[str, T]`` map<T> (nested types, so the
    Parquet backup stores them as Arrow lists and maps); anything else
    json (a container without element types too, or as an element)."""
    _check_model(model)
    hints = typing.get_type_hints(model)
    return tuple((field.name, _column_type(hints[field.name]))
                 for field in dataclasses.fields(model))


_SET_ELEMENTS = frozenset({'string', 'bigint', 'decimal', 'float', 'binary'})


def _column_type(hint) -> str:
    base, _ = _unwrap(hint)
    if base in _COLUMN_TYPES:
        return _COLUMN_TYPES[base]
    args = typing.get_args(_without_none(hint))
    if (base is list and len(args) == 1) or (
            base is tuple and len(args) == 2 and args[1] is Ellipsis):
        return f'list<{_column_type(args[0])}>'
    if base in (set, frozenset) and len(args) == 1:
        element = _column_type(args[0])
        return f'set<{element}>' if element in _SET_ELEMENTS else 'json'
    if base is dict and len(args) == 2 and args[0] is str:
        return f'map<{_column_type(args[1])}>'
    return 'json'


def _without_none(hint):
    """``hint`` without the None of an Optional (the hint itself otherwise)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(others) == 1:
            return others[0]
    return hint


def _check_model(model):
    if not (isinstance(model, type) and dataclasses.is_dataclass(model)):
        raise ValueError(f'a table model is a dataclass, not {model!r}')


def _unwrap(hint) -> Tuple[Any, bool]:
    """(the base type, whether None is allowed) of a field's annotation."""
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        optional = len(others) < len(args)
        hint = others[0] if len(others) == 1 else Any
    origin = typing.get_origin(hint)
    return (origin if origin is not None else hint), optional


def plain(value) -> Any:
    """A decoded value without DynamoDB's immutable forms: M -> dict, L ->
    list, sets -> set; scalars as they are."""
    from changeflow.dynamodb.records import DynamoMap, DynamoSet
    if isinstance(value, DynamoMap):
        return {name: plain(v) for name, v in value}
    if isinstance(value, DynamoSet):
        return set(value)
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def _to_int(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, decimal.Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    raise TypeError


def _to_float(value):
    if isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool):
        return float(value)
    raise TypeError


def _to_decimal(value):
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return decimal.Decimal(value)
    raise TypeError


def _to_bool(value):
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise TypeError


def _exactly(kind):
    def convert(value):
        if isinstance(value, kind):
            return value
        raise TypeError
    return convert


def _to_datetime(value):
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value.replace('Z', '+00:00'))
    raise TypeError


def _to_date(value):
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        return datetime.date.fromisoformat(value)
    raise TypeError


def _to_dict(value):
    from changeflow.dynamodb.records import DynamoMap
    if isinstance(value, (DynamoMap, dict)):
        return plain(value) if isinstance(value, DynamoMap) else value
    raise TypeError


def _sequence(kind):
    def convert(value):
        from changeflow.dynamodb.records import DynamoMap, DynamoSet
        if isinstance(value, (list, tuple)) and not isinstance(value, (DynamoMap, DynamoSet)):
            return kind(plain(v) for v in value)
        raise TypeError
    return convert


def _set(kind):
    def convert(value):
        if isinstance(value, (set, frozenset)) or type(value).__name__ == 'DynamoSet':
            return kind(value)
        raise TypeError
    return convert


_CONVERTERS: Dict[Any, Callable] = {
    int: _to_int, float: _to_float, decimal.Decimal: _to_decimal, bool: _to_bool,
    str: _exactly(str), bytes: _exactly(bytes), dict: _to_dict, list: _sequence(list),
    tuple: _sequence(tuple), set: _set(set), frozenset: _set(frozenset),
    datetime.datetime: _to_datetime, datetime.date: _to_date, Any: plain, object: plain,
}


class _Fields:
    """A model's fields, resolved once: name -> (converter, optional, has default)."""

    def __init__(self, model):
        _check_model(model)
        self.model = model
        hints = typing.get_type_hints(model)
        self.fields = {}
        for field in dataclasses.fields(model):
            if not field.init:
                continue
            base, optional = _unwrap(hints[field.name])
            converter = _CONVERTERS.get(base)
            if converter is None:
                raise ValueError(f'{model.__qualname__}.{field.name}: type {base!r} is not one '
                                 f'a model field may have (see changeflow.handlers.models)')
            has_default = (field.default is not dataclasses.MISSING
                           or field.default_factory is not dataclasses.MISSING)
            self.fields[field.name] = (converter, optional, has_default, base)


_RESOLVED: Dict[Any, _Fields] = {}


def fit(model, image, partial: bool = False):
    """``image`` ((attribute, value) pairs) as an instance of ``model``, or a
    plain dict when ``model`` is None.

    ``partial``: the image holds only some attributes (an audit UPDATE):
    missing ones take their default, else None, instead of failing.

    Raises:
        ModelMismatch: naming the attribute that does not fit.
    """
    if image is None:
        return None
    if model is None:
        return {name: plain(value) for name, value in image}
    fields = _RESOLVED.get(model)
    if fields is None:
        fields = _RESOLVED[model] = _Fields(model)
    name_of = model.__qualname__
    values = {}
    for name, value in image:
        entry = fields.fields.get(name)
        if entry is None:
            raise ModelMismatch('unknown-attribute', name, f'attribute {name!r} is not a field '
                                                           f'of {name_of}')
        converter, optional, _, base = entry
        if value is None:
            if not optional and base not in (Any, object):
                raise ModelMismatch('attribute-type', name, f'attribute {name!r} is NULL; '
                                                            f'{name_of}.{name} is not Optional')
            values[name] = None
            continue
        try:
            values[name] = converter(value)
        except (TypeError, ValueError):
            raise ModelMismatch('attribute-type', name, (
                f'attribute {name!r} is {_kind(value)}; {name_of}.{name} is '
                f'{getattr(base, "__name__", base)}')) from None
    for name, (_, optional, has_default, _) in fields.fields.items():
        if name not in values and not has_default:
            if not (optional or partial):
                raise ModelMismatch('missing-attribute', name, f'attribute {name!r} of '
                                                               f'{name_of} is missing')
            values[name] = None
    return model(**values)


def _kind(value) -> str:
    """A value's DynamoDB-ish type name, never the value itself."""
    try:
        from changeflow.dynamodb.columns import dynamodb_type
        return f'of type {dynamodb_type(value)}'
    except (KeyError, IndexError):
        return f'a {type(value).__name__}'
