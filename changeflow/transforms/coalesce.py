"""Coalesces row changes per (table, primary key) and window.

Many statements usually hit one row within seconds (a status walk, counters);
the sinks should see one change per row per window. Folding is exact, never
lossy: ops are sorted by version (duplicates of one version, as an
at-least-once source delivers them, collapse), and two ops merge only where the
merged op is *idempotent against the first already being applied*, because a
sink may have applied part of a row's history before (a replay, a restart):

* INSERT, REPLACE and DELETE make earlier ops irrelevant;
* an UPDATE or UPSERT after a whole-row write folds into it when its
  expressions can be evaluated from the values written;
* literal-only UPDATEs fold into each other;
* anything else (``qty = qty + 1`` twice) stays a separate op, each with its
  own version, and the sink applies exactly the ops newer than what it has;
* an op with a condition (``WHERE id = 5 AND version = 3``) folds only into
  an earlier op whose written values decide the condition; nothing folds
  into it, and a conditional DELETE does not make earlier ops irrelevant;
* a DIVERGE marker is never folded away, and nothing folds across it (a
  whole-row write after it still makes the ops before it irrelevant, not
  the marker).

Ordering: in a bounded run every row is coalesced over the whole input
(``whole_input=True``), so one change per row reaches the sinks. In a streaming
run (fixed windows) the default trigger fires a key's windows in watermark
order, and the database sink keeps per-key arrival order; its version guard
skips whatever is older than what it applied.
"""

import functools
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window

from changeflow.sql.expressions import is_literal, literal_value, substitute, truthy
from changeflow.model import DEAD_LETTER_TAG, FULL_ROW_KINDS, MARKER_KINDS, Change, OpKind, RowOp
from changeflow.transforms.guard import changes_original, guarded

__all__ = ['fold_op', 'coalesce_ops', 'coalesce_changes', 'CoalesceChanges', 'ShardFolder']

_WHOLE_ROW = (OpKind.INSERT, OpKind.REPLACE)
# The kinds _merge folds a later op into: after any other (an UPSERT, a marker) it returns None.
_MERGED_INTO = frozenset({OpKind.DELETE, OpKind.INSERT, OpKind.REPLACE, OpKind.UPDATE})
# The kinds as module constants: a lookup on the Enum class costs 0.3 us, several per op.
_INSERT, _INSERT_IGNORE, _UPSERT, _UPDATE, _DELETE, _TRUNCATE = (
    OpKind.INSERT, OpKind.INSERT_IGNORE, OpKind.UPSERT, OpKind.UPDATE, OpKind.DELETE,
    OpKind.TRUNCATE)
_new_op = functools.partial(tuple.__new__, RowOp)  # RowOp(...) without NamedTuple's Python calls
# The literal expressions of written values are built as ('lit', value), not with
# expressions.lit: a Python call per column of every merge.
_VERSION, _VALUES, _ASSIGNMENTS, _POSITION = map(
    RowOp._fields.index, ('version', 'values', 'assignments', 'position'))


def _newer(prev: RowOp, op: RowOp, field: Optional[int] = None, value=None) -> RowOp:
    """``prev`` with ``op``'s version and position (and ``field`` set to ``value``):
    ``prev._replace(...)`` without its Python calls."""
    fields = list(prev)
    fields[_VERSION], fields[_POSITION] = op.version, op.position
    if field is not None:
        fields[field] = value
    return _new_op(fields)


def _assign(known: dict, assignments) -> Optional[dict]:
    """``known`` (column -> literal expr, updated in place) after the assignments,
    evaluated left to right as MySQL does; None if one reads a column that is not known."""
    for column, expr in assignments:
        if expr[0] == 'lit':  # substitute leaves a literal as it is
            known[column] = expr
            continue
        try:
            value = substitute(expr, known)
        except (ArithmeticError, LookupError, TypeError, ValueError):
            return None  # not foldable (GREATEST of text and a number): the sink decides
        if not is_literal(value):
            return None
        known[column] = value
    return known


def _decided(condition, known: dict) -> Optional[bool]:
    """Whether ``condition`` holds on a row whose values are ``known`` (column
    -> literal expr), or None when it reads a column that is not known."""
    value = substitute(condition, known)
    return truthy(literal_value(value)) if is_literal(value) else None


def _merge(prev: RowOp, op: RowOp) -> Optional[RowOp]:
    """One op equal to ``prev`` then ``op`` that is safe to apply on a row that
    already has ``prev`` applied; None when there is none."""
    if prev.condition is not None:
        return None  # whether prev applied depends on the row
    prev_kind, kind = prev.kind, op.kind
    if op.condition is not None:
        # Foldable only where the condition is decided by what prev wrote.
        if prev_kind == _DELETE:
            return _newer(prev, op) if kind == _UPDATE else None
        if prev_kind in _WHOLE_ROW:
            known = {c: ('lit', v) for c, v in prev.values}
        elif prev_kind == _UPDATE and all(is_literal(e) for _, e in prev.assignments):
            known = dict(prev.assignments)
        else:
            return None
        holds = _decided(op.condition, known)
        if holds is None:
            return None
        if not holds:
            return _newer(prev, op)  # op touches nothing
        if kind == _DELETE:
            return RowOp(_DELETE, op.version, position=op.position)
        op = op._replace(condition=None)
    if prev_kind == _DELETE:
        if kind == _UPDATE:
            return _newer(prev, op)  # the row is gone: the update matches nothing
        if kind == _INSERT_IGNORE or kind == _UPSERT:
            return RowOp(_INSERT, op.version, op.values, (), op.position)
        return None
    if prev_kind in _WHOLE_ROW:
        if kind == _INSERT_IGNORE:
            return _newer(prev, op)  # the row exists: ignored
        if kind == _UPDATE or kind == _UPSERT:
            known = _assign({c: ('lit', v) for c, v in prev.values}, op.assignments)
            if known is None:
                return None
            return _newer(prev, op, _VALUES, tuple([(c, e[1]) for c, e in known.items()]))
        return None
    if prev_kind == _UPDATE and kind == _UPDATE and all(
            is_literal(e) for _, e in prev.assignments):
        known = _assign(dict(prev.assignments), op.assignments)
        if known is None:
            return None
        return _newer(prev, op, _ASSIGNMENTS, tuple(known.items()))
    return None


def fold_op(folded: List[RowOp], op: RowOp, table_copy: bool = False) -> None:
    """Appends ``op`` (newer than every op folded so far) to ``folded``, the
    shortest exact op sequence of a row up to it.

    ``table_copy``: ``op`` is a whole-table op's copy in this row. It is not
    merged into the op before it, so the row's first op keeps a version older
    than every whole-table op the row carries: the sink applies the row's
    Change at that version's place, before those whole-table ops reach the
    table's other rows (merged, the first op would take the copy's version,
    and a whole-table op between the two would reach this row first)."""
    kind = op.kind
    if (kind in FULL_ROW_KINDS and op.condition is None) or kind == _TRUNCATE:
        folded[:] = [o for o in folded if o.kind in MARKER_KINDS] + [op]
        return
    if (not folded or table_copy or kind in MARKER_KINDS
            or folded[-1].kind not in _MERGED_INTO):
        folded.append(op)
        return
    merged = _merge(folded[-1], op)
    if merged is None:
        folded.append(op)
    else:
        folded[-1] = merged


def coalesce_ops(ops: Sequence[RowOp], table_copies=frozenset()) -> Tuple[RowOp, ...]:
    """The shortest exact op sequence for one row (see module docstring);
    ``table_copies``: the versions of whole-table ops' copies among ``ops``."""
    by_version = {}
    for op in ops:
        by_version.setdefault(op.version, op)
    folded: List[RowOp] = []
    for op in sorted(by_version.values(), key=lambda o: o.version):
        fold_op(folded, op, op.version in table_copies)
    return tuple(folded)


def coalesce_changes(changes: Sequence[Change], truncates: Sequence[RowOp] = ()) -> Change:
    """Changes of one (table, key) -> one Change.

    ``truncates``: the whole-table ops of the row's table (TRUNCATE, and an
    UPDATE or DELETE of rows its WHERE does not name). One that falls between
    the row's first and last op is inserted as the row's own op (a TRUNCATE as
    a DELETE), so the row's ops apply around it in order and nothing folds
    across it (an INSERT, a TRUNCATE, then an UPDATE leaves no row). The ops
    of a whole-table Change are only sorted and deduplicated.
    """
    first = changes[0]
    ops = [op for change in changes for op in change.ops]
    if not first.key:
        by_version = {op.version: op for op in reversed(ops)}
        return Change(first.table, first.key, tuple(sorted(by_version.values(),
                                                           key=lambda o: o.version)),
                      max(c.event_time_us for c in changes))
    copies = ()
    if truncates:
        low, high = min(op.version for op in ops), max(op.version for op in ops)
        copies = [_row_copy(t) for t in truncates if low < t.version < high]
        ops += copies
    return Change(first.table, first.key,
                  coalesce_ops(ops, frozenset(op.version for op in copies)),
                  max(c.event_time_us for c in changes))


def _row_copy(op: RowOp) -> RowOp:
    """A whole-table op as one row's op."""
    if op.kind == OpKind.TRUNCATE:
        return RowOp(OpKind.DELETE, op.version, position=op.position)
    return op


def _is_table_op(change: Change) -> bool:
    """A whole-table op that changes rows (not a DIVERGE marker)."""
    return not change.key and change.ops[0].kind in _TABLE_WRITES


_TABLE_WRITES = frozenset({OpKind.TRUNCATE, OpKind.UPDATE, OpKind.DELETE})


@guarded('coalesce', lambda element: changes_original(element[1]), lambda element: element[0][0])
class _CoalesceFn(beam.DoFn):
    def __init__(self):
        self._rows = Metrics.counter('changeflow.coalesce', 'rows')
        self._folded = Metrics.counter('changeflow.coalesce', 'ops_folded')

    def process(self, element, truncates):
        (table, _), changes = element
        changes = list(changes)
        merged = coalesce_changes(changes, truncates.get(table, ()))
        self._rows.inc()
        self._folded.inc(sum(len(c.ops) for c in changes) - len(merged.ops))
        yield merged


class CoalesceChanges(beam.PTransform):
    """PCollection[Change] -> main (``MAIN``): one Change per (table, key) per
    window; DEAD_LETTER_TAG: the changes of a row that could not be coalesced.

    Args:
      window_seconds: fixed event-time window for streaming inputs.
      whole_input: coalesce each key over the whole (bounded) input instead.
    """

    MAIN = 'changes'

    def __init__(self, window_seconds: float = 5, whole_input: bool = True):
        super().__init__()
        if window_seconds <= 0:
            raise ValueError(f'window_seconds must be positive, got {window_seconds!r}')
        self._window_seconds = window_seconds
        self._whole_input = whole_input

    def expand(self, changes):
        if self._whole_input:
            windowed = changes | 'GlobalWindow' >> beam.WindowInto(window.GlobalWindows())
        else:
            windowed = (
                changes
                | 'EventTime' >> beam.Map(
                    lambda c: window.TimestampedValue(c, c.event_time_us / 1e6))
                | 'Window' >> beam.WindowInto(window.FixedWindows(self._window_seconds)))
        truncates = (
            windowed
            | 'Truncates' >> beam.Filter(_is_table_op)
            | 'ByTable' >> beam.Map(lambda c: (c.table, c.ops[0]))
            | 'TruncatesOfTable' >> beam.GroupByKey()
            | 'Listed' >> beam.MapTuple(lambda table, ops: (table, tuple(ops))))
        return (
            windowed
            | 'ByRow' >> beam.Map(lambda c: ((c.table, c.key), c))
            | 'GroupRow' >> beam.GroupByKey()
            | 'Fold' >> beam.ParDo(_CoalesceFn(), truncates=beam.pvalue.AsDict(truncates))
            .with_outputs(DEAD_LETTER_TAG, main=self.MAIN))


class ShardFolder:
    """Coalesces the changes of one (table, shard) fed in version order, row by
    row as they come: the same result as :func:`coalesce_changes` over each
    row's changes and the table's whole-table ops, holding one folded op
    sequence per row instead of every change.

    Whole-table changes reach every shard of their table; one that falls
    between two ops of a row becomes the row's own op there (a TRUNCATE as a
    DELETE), exactly as CoalesceChanges inserts it.
    """

    def __init__(self):
        self._rows = {}          # key -> [folded ops, last version, table ops seen, event time]
        self._table_ops: List[RowOp] = []   # whole-table row writes, in version order
        self._whole = {}         # version -> op of the (table, ()) change, first seen kept
        self._whole_time = 0
        self.ops_in = 0

    def add(self, change: Change) -> Tuple[RowOp, ...]:
        """Folds ``change`` in; returns its ops that are new here (not a
        replay of a version of its row already added), in order."""
        self.ops_in += len(change.ops)
        if not change.key:
            new = []
            for op in change.ops:
                if op.version not in self._whole:
                    self._whole[op.version] = op
                    new.append(op)
                    if op.kind in _TABLE_WRITES:
                        self._table_ops.append(op)
            self._whole_time = max(self._whole_time, change.event_time_us)
            return tuple(new)
        row = self._rows.get(change.key)
        if row is None:
            row = self._rows[change.key] = [[], '', len(self._table_ops), change.event_time_us]
        if change.event_time_us > row[3]:
            row[3] = change.event_time_us
        folded, table_ops = row[0], self._table_ops
        ops = change.ops
        if len(ops) == 1 and ops[0].version != row[1] and not (folded and row[2] < len(table_ops)):
            op = ops[0]  # a source op (nearly every change): no whole-table op since the last
            fold_op(folded, op)
            row[1], row[2] = op.version, len(table_ops)
            return ops
        new = []
        for op in ops:
            if op.version == row[1]:
                continue  # a replay of the same op
            if folded and row[2] < len(table_ops):
                for table_op in table_ops[row[2]:]:
                    if row[1] < table_op.version < op.version:
                        fold_op(folded, _row_copy(table_op), table_copy=True)
            fold_op(folded, op)
            new.append(op)
            row[1], row[2] = op.version, len(table_ops)
        return tuple(new)

    def changes(self, table: str) -> List[Change]:
        """The coalesced changes, whole-table first, then rows in key order of arrival."""
        out = []
        if self._whole:
            out.append(Change(table, (), tuple(sorted(self._whole.values(),
                                                      key=lambda o: o.version)),
                              self._whole_time))
        out.extend(Change(table, key, tuple(row[0]), row[3]) for key, row in self._rows.items())
        return out
