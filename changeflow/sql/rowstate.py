"""What a row looks like after a sequence of RowOps: the one definition of their
semantics, shared by the coalescer and every sink that materialises rows; and
what one op writes (:func:`op_columns`), for the sinks that record ops
(the Parquet change log, notifications)."""

import functools
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from changeflow.sql.expressions import evaluate, is_literal, literal_value, substitute, truthy
from changeflow.model import OpKind, RowOp

__all__ = ['RowState', 'ABSENT', 'apply_op', 'apply_ops', 'op_columns']


class RowState(NamedTuple):
    """A row as far as the ops tell.

    ``exists``: whether the row is there. ``values``: the columns known.
    ``replaced``: the row was written whole by an INSERT/REPLACE, so columns not
    in ``values`` hold the target's defaults rather than what they held before.
    """
    exists: bool
    values: Dict[str, Any]
    replaced: bool


ABSENT = RowState(False, {}, True)


# The kinds as module constants, compared with ==: a lookup on the Enum class, or a
# tuple of them built per call, cost more than the rest of a typical op (once per op
# per sink); == keeps a kind given as its plain string value working.
_DIVERGE, _DELETE, _TRUNCATE = OpKind.DIVERGE, OpKind.DELETE, OpKind.TRUNCATE
_INSERT, _REPLACE, _INSERT_IGNORE, _UPSERT, _UPDATE = (
    OpKind.INSERT, OpKind.REPLACE, OpKind.INSERT_IGNORE, OpKind.UPSERT, OpKind.UPDATE)
_state = functools.partial(tuple.__new__, RowState)  # RowState(...) without a Python call


def apply_op(state: RowState, op: RowOp) -> RowState:
    """State after ``op``. Raises expressions.MissingColumn when an assignment
    or the op's condition reads a column ``state`` does not know (the caller
    reads it and retries)."""
    kind = op.kind
    if kind == _DIVERGE:
        return state  # a marker: the sink records it, the row is unchanged
    if op.condition is not None and not (
            state.exists and truthy(evaluate(op.condition, state.values))):
        return state  # the WHERE beyond the key does not hold: the row is not touched
    if kind == _UPSERT:  # the commonest kinds tested first
        if not state.exists:
            return _state((True, dict(op.values), True))
    elif kind != _UPDATE:
        if kind == _DELETE or kind == _TRUNCATE:
            return ABSENT
        if kind == _INSERT or kind == _REPLACE:
            return _state((True, dict(op.values), True))
        if kind == _INSERT_IGNORE:
            return state if state.exists else _state((True, dict(op.values), True))
    # UPDATE, or UPSERT on an existing row: assignments left to right, each
    # seeing the values the previous ones set (MySQL single-table UPDATE).
    if not state.exists:
        return state
    values = dict(state.values)
    for column, expr in op.assignments:
        values[column] = expr[1] if expr[0] == 'lit' else evaluate(expr, values)
    return _state((True, values, state.replaced))


def apply_ops(state: Optional[RowState], ops: Sequence[RowOp]) -> RowState:
    state = ABSENT if state is None else state
    for op in ops:
        state = apply_op(state, op)
    return state


def op_columns(op: RowOp) -> Tuple[Dict[str, Any], Dict[str, tuple]]:
    """(literals, computed) that ``op`` writes, known without the row before it.

    ``literals``: column -> literal value: ``op.values``, and for an UPDATE the
    assignments that are literals once earlier assignments of the same
    statement are substituted in (``SET a = 5, b = a + 1`` sets b to 6).
    ``computed``: column -> expression in terms of the row before the op; for
    an UPSERT every ON DUPLICATE KEY UPDATE assignment (it applies only if the
    row existed, so none of them is a plain value of the row).
    """
    literals = dict(op.values)
    assigned: Dict[str, tuple] = {}
    for column, expr in op.assignments:
        # substitute's result without its calls for the common shapes (taken
        # per op by notifications and Parquet rows): a literal; a column; an
        # operation on a column no earlier assignment set and a literal or another such.
        tag = expr[0]
        if tag == 'lit':
            assigned[column] = expr
        elif tag == 'col':
            assigned[column] = assigned.get(expr[1], expr)
        else:
            if tag == 'bin':
                left, right = expr[2], expr[3]
                left_column = left[0] == 'col' and left[1] not in assigned
                right_column = right[0] == 'col' and right[1] not in assigned
                if (left_column or right_column) and (left_column or left[0] == 'lit') and (
                        right_column or right[0] == 'lit'):
                    assigned[column] = expr
                    continue
            assigned[column] = substitute(expr, assigned)
    if op.kind == _UPSERT:
        return literals, assigned
    computed = {}
    for column, expr in assigned.items():
        if is_literal(expr):
            literals[column] = literal_value(expr)
        else:
            computed[column] = expr
    return literals, computed
