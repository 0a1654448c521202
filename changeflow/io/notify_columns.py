"""Column predicates of a notification rule's ``when``, and what a Change
tells about a row before and after its last op.

``when: {columns: {COLUMN: PREDICATE, ...}}``; every listed column must match
(and), where PREDICATE is one of::

    changed                       # the last op writes the column, to a new value
    {to: shipped}                 # ... writes it to 'shipped' (or one of a list)
    {from: paid}                  # ... writes it, and it held 'paid' before
    {from: paid, to: shipped}     # both

So "status changed to shipped" is ``columns: {status: {to: shipped}}``.

What is known: *new* values are the literals the Change's last op writes
(:func:`changeflow.sql.rowstate.op_columns`; a computed ``qty = qty + 1`` is
written but its value is unknown, so it matches ``changed`` and never
``to``). *Old* values are the op's ``old`` where the source tells it: a
DynamoDB MODIFY's old image (``NEW_AND_OLD_IMAGES`` streams); the op then
writes the whole new image, so an attribute the old image has and the new
one lacks was changed to null. Otherwise they are known only where the
Change itself tells them: its earlier ops, when the first writes the whole
row (an INSERT then an UPDATE in one window). The audit log carries no
before-image, nor do ``NEW_IMAGE`` streams, so there the old value is
unknown: ``from`` does not match, and ``to``/``changed`` cannot tell a write
of the value the column already held (``SET status = 'shipped'`` on a
shipped row) from a change, and match. A delete or truncate writes no column
and matches no column predicate (its old image is still a template's
``old``).

Values compare as the YAML writes them: null with NULL, numbers numerically
(``9.5`` matches DECIMAL 9.50), true/false with booleans and 1/0, text with
text exactly; other column types (dates, bytes) by their JSON text
(:func:`changeflow.io.json_records.json_value`).
"""

import decimal
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from changeflow.io.json_records import json_value
from changeflow.model import FULL_ROW_KINDS, Change, OpKind
from changeflow.sql.rowstate import apply_ops, op_columns

__all__ = ['ColumnPredicate', 'parse_columns', 'columns_match', 'before_and_after', 'same_value']

_UNSET = object()
_SCALARS = (str, int, float, bool, type(None))


class ColumnPredicate(NamedTuple):
    column: str
    to: Tuple[Any, ...] = ()       # empty: any new value
    from_: Tuple[Any, ...] = ()    # empty: any old value (known or not)


def _values(where: str, raw) -> Tuple[Any, ...]:
    values = tuple(raw) if isinstance(raw, list) else (raw,)
    if not values:
        raise ValueError(f'{where}: an empty list matches nothing')
    for value in values:
        if not isinstance(value, _SCALARS) or (
                isinstance(value, float) and value != value):  # NaN
            raise ValueError(f'{where}: expected text, a number, true/false or null '
                             f'(or a list of them), got {value!r}')
    return values


def parse_columns(raw, where: str = 'when.columns') -> Tuple[ColumnPredicate, ...]:
    """``when.columns`` as written -> predicates; ValueError naming the key."""
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f'{where}: expected a mapping of column -> changed | '
                         f'{{to: VALUE}} | {{from: VALUE}}, got {raw!r}')
    predicates = []
    for column, spec in raw.items():
        at = f'{where}.{column}'
        if not isinstance(column, str) or not column:
            raise ValueError(f'{where}: a column name must be text, got {column!r}')
        if spec == 'changed':
            predicates.append(ColumnPredicate(column))
            continue
        if not isinstance(spec, Mapping) or not spec or set(spec) - {'to', 'from'}:
            raise ValueError(f"{at}: expected 'changed', {{to: VALUE}}, {{from: VALUE}} "
                             f"or both, got {spec!r}")
        predicates.append(ColumnPredicate(
            column, _values(f'{at}.to', spec['to']) if 'to' in spec else (),
            _values(f'{at}.from', spec['from']) if 'from' in spec else ()))
    return tuple(predicates)


def before_and_after(change: Change) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, None]]:
    """(old, new, computed) of the Change's last op: the column values known
    before it, the literal values it writes, and the columns it writes with a
    computed (unknown) value. Column names as the ops spell them."""
    last = change.ops[-1]
    new, computed = op_columns(last)
    if last.old is not None:  # the source's before-image; the op writes the whole row
        old = dict(last.old)
        if last.kind in FULL_ROW_KINDS and last.kind != OpKind.DELETE:
            new = {**dict.fromkeys(old), **new}
        return old, new, dict.fromkeys(computed)
    old: Dict[str, Any] = {}
    earlier = change.ops[:-1]
    if earlier and earlier[0].kind in FULL_ROW_KINDS and earlier[0].kind != OpKind.DELETE:
        try:
            state = apply_ops(None, earlier)
        except (LookupError, ValueError, ArithmeticError, TypeError):
            state = None  # an expression read a column nobody wrote, or failed: unknown
        if state is not None and state.exists:
            old = dict(state.values)
    return old, new, dict.fromkeys(computed)


def _folded(mapping: Mapping[str, Any], column: str):
    """The value of ``column`` in ``mapping``, names compared case-insensitively
    (as MySQL compares them); _UNSET when absent."""
    if column in mapping:
        return mapping[column]
    lowered = column.lower()
    for name, value in mapping.items():
        if name.lower() == lowered:
            return value
    return _UNSET


def _number(value) -> Optional[decimal.Decimal]:
    if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
        return None
    try:
        return decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        return None


def same_value(actual, expected) -> bool:
    """Whether a column value equals a value as the YAML writes it."""
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool):
        return actual in (expected, int(expected)) and not isinstance(actual, str)
    if isinstance(expected, (int, float)):
        number = _number(actual)
        return number is not None and number == decimal.Decimal(str(expected))
    if isinstance(actual, str):
        return actual == expected
    return json_value(actual) == expected and not isinstance(actual, (int, float, bool))


def _matches(predicate: ColumnPredicate, old, new, computed) -> bool:
    value = _folded(new, predicate.column)
    if value is _UNSET:
        return _folded(computed, predicate.column) is not _UNSET and not predicate.to and (
            not predicate.from_ or _one_of(_folded(old, predicate.column), predicate.from_))
    before = _folded(old, predicate.column)
    if before is not _UNSET and _unchanged(value, before):
        return False  # written, but to the value it held: not a change
    if predicate.to and not any(same_value(value, v) for v in predicate.to):
        return False
    return not predicate.from_ or _one_of(before, predicate.from_)


def _unchanged(value, before) -> bool:
    numbers = _number(value), _number(before)
    if None not in numbers:
        return numbers[0] == numbers[1]
    return type(value) is type(before) and value == before


def _one_of(value, expected) -> bool:
    return value is not _UNSET and any(same_value(value, v) for v in expected)


def columns_match(predicates: Tuple[ColumnPredicate, ...], change: Change) -> bool:
    """Whether every predicate holds for the Change's last op."""
    if not predicates:
        return True
    if change.ops[-1].kind in (OpKind.DELETE, OpKind.TRUNCATE):
        return False
    old, new, computed = before_and_after(change)
    return all(_matches(p, old, new, computed) for p in predicates)
