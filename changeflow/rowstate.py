"""What a row looks like after a sequence of RowOps: the one definition of their
semantics, shared by the coalescer and every sink that materialises rows."""

from typing import Any, Dict, NamedTuple, Optional, Sequence

from changeflow.expressions import evaluate
from changeflow.model import OpKind, RowOp

__all__ = ['RowState', 'ABSENT', 'apply_op', 'apply_ops']


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


def apply_op(state: RowState, op: RowOp) -> RowState:
    """State after ``op``. Raises expressions.MissingColumn when an assignment
    reads a column ``state`` does not know (the caller reads it and retries)."""
    kind = op.kind
    if kind in (OpKind.DELETE, OpKind.TRUNCATE):
        return ABSENT
    if kind in (OpKind.INSERT, OpKind.REPLACE):
        return RowState(True, dict(op.values), True)
    if kind == OpKind.INSERT_IGNORE:
        return state if state.exists else RowState(True, dict(op.values), True)
    if kind == OpKind.UPSERT and not state.exists:
        return RowState(True, dict(op.values), True)
    # UPDATE, or UPSERT on an existing row: assignments left to right, each
    # seeing the values the previous ones set (MySQL single-table UPDATE).
    if not state.exists:
        return state
    values = dict(state.values)
    for column, expr in op.assignments:
        values[column] = evaluate(expr, values)
    return RowState(True, values, state.replaced)


def apply_ops(state: Optional[RowState], ops: Sequence[RowOp]) -> RowState:
    state = ABSENT if state is None else state
    for op in ops:
        state = apply_op(state, op)
    return state
