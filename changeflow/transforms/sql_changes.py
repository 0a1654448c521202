"""Committed transactions -> keyed row changes (see :mod:`changeflow.sql.plans`
for what is translated and what is refused).

A refused statement of a replicated table is dead-lettered whole and leaves
what it wrote stale in the replica, so it also becomes DIVERGE changes in its
place: one per row it names (``UPDATE t SET a = NOW() WHERE id = 5``), or one
for the whole table (key ``()``) when it cannot name them (a WHERE that does
not pin the key, INSERT ... SELECT, an INSERT without its key).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from changeflow.config import TableSpec
from changeflow.model import (
    DEAD_LETTER_TAG, Change, OpKind, RowOp, audit_version, dead_letter, diverge_op)
from changeflow.sql.plans import RowChange, SqlChangeError, StatementTranslator, key_caster
from changeflow.transforms.guard import guarded, internal_error, lines_original
from changeflow.transforms.transactions import CommittedTransaction

__all__ = ['ExtractRowChanges']


@guarded('sql_changes', lambda t: lines_original(t.statements), lambda t: t.statements[0].position)
class _ExtractRowChangesFn(beam.DoFn):
    def __init__(self, tables: Sequence[TableSpec]):
        self._tables = tuple(tables)
        self._received = Metrics.counter('changeflow.sql_changes', 'statements_received')
        self._changes = Metrics.counter('changeflow.sql_changes', 'row_changes')
        self._dead = Metrics.counter('changeflow.sql_changes', 'dead_lettered')
        self._rows_marked = Metrics.counter('changeflow.sql_changes', 'rows_marked_diverged')
        self._tables_marked = Metrics.counter('changeflow.sql_changes', 'tables_marked_diverged')
        self._skipped = {reason: Metrics.counter('changeflow.sql_changes', f'skipped_{reason}')
                         for reason in ('read', 'ddl', 'session', 'untracked_table')}

    def setup(self):
        self._translator = StatementTranslator(self._tables)
        self._casters = {spec.source: key_caster(spec) for spec in self._tables}

    def process(self, transaction: CommittedTransaction):
        first_touch = {}  # (table, key) -> (time, query id) of the transaction's first write
        for statement in transaction.statements:
            self._received.inc()
            translation = None
            try:
                translation = self._translator.translate(statement.object, statement.database)
                keys = [self._key(change) for change in translation.changes]
                _check_table_writes(translation, {table for table, _ in first_touch})
            except (SqlChangeError, ValueError, ArithmeticError) as error:
                # Nothing of the statement is emitted: it is replayable whole;
                # what it wrote is marked diverged, in its place.
                reason = getattr(error, 'reason', 'bad-value')
                detail = getattr(error, 'detail', str(error))
                marks = self._marks(error, translation)
                self._dead.inc()
                yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                    'sql_changes', reason, detail + _marked(marks), statement.line,
                    statement.position))
                for seq, (table, key) in enumerate(marks):
                    (self._rows_marked if key else self._tables_marked).inc()
                    yield Change(table, key, (diverge_op(
                        self._version(first_touch, statement, table, key, seq), reason, detail,
                        _position(statement, seq, len(marks))),), statement.timestamp_us)
                continue
            except Exception as error:  # pylint: disable=broad-except
                # A defect: this statement alone is dead-lettered, replayable whole.
                self._dead.inc()
                yield TaggedOutput(DEAD_LETTER_TAG, internal_error(
                    'sql_changes', error, statement.line, statement.position))
                continue
            if translation.skipped:
                self._skipped[translation.skipped.replace('-', '_')].inc()
                continue
            changes = translation.changes
            for seq, (change, key) in enumerate(zip(changes, keys)):
                self._changes.inc()
                yield Change(change.table, key, (RowOp(
                    change.kind, self._version(first_touch, statement, change.table, key, seq),
                    change.values, change.assignments,
                    _position(statement, seq, len(changes)), change.condition),),
                    statement.timestamp_us)

    @staticmethod
    def _version(first_touch, statement, table: str, key, seq: int) -> str:
        touch = first_touch.setdefault((table, key), (statement.timestamp_us, statement.query_id))
        return audit_version(touch[0], touch[1], statement.query_id, seq)

    def _marks(self, error, translation) -> List[Tuple[str, Tuple[Any, ...]]]:
        """(table, key) of what a refused statement wrote; key () for a whole table."""
        if isinstance(error, SqlChangeError):
            tables = [t for t in error.tables if t in self._casters]
            raw: Dict[str, Optional[list]] = {t: None for t in tables}
            if len(tables) == 1 and error.keys is not None:
                raw[tables[0]] = list(error.keys)
        elif translation is not None:  # a key that cannot be cast
            raw = {}
            for change in translation.changes:
                raw.setdefault(change.table, []).append(change.key)
        else:
            return []
        marks = []
        for table, keys in raw.items():
            try:
                cast = [] if keys is None else list(dict.fromkeys(
                    self._key(RowChange(table, key, OpKind.DIVERGE, (), ())) for key in keys))
            except (ValueError, ArithmeticError, TypeError):
                cast = []
            if cast:
                marks.extend((table, key) for key in cast)
            else:
                marks.append((table, ()))
        return marks

    def _key(self, change: RowChange) -> Tuple[Any, ...]:
        caster = self._casters[change.table]
        return caster(change.key) if caster else change.key


def _check_table_writes(translation, written) -> None:
    """A whole-table UPDATE/DELETE (a WHERE that does not name its rows) is
    versioned as its transaction's first touch of the table: after earlier
    writes to the table in the same transaction, the rows it hits were locked
    at different times, so no one version orders it with other transactions."""
    for change in translation.changes:
        if not change.key and change.kind in (OpKind.UPDATE, OpKind.DELETE) and (
                change.table in written):
            raise SqlChangeError(
                'needs-lookup', f'{change.kind.value.upper()} of rows the WHERE does not name, '
                f'after earlier writes to {change.table} in the same transaction',
                change.table)


def _position(statement, seq: int, count: int) -> str:
    return statement.position if count == 1 else f'{statement.position}#{seq}'


def _marked(marks) -> str:
    """What a dead letter's detail adds about the marks its statement left."""
    if not marks:
        return ''
    rows: Dict[str, int] = {}
    for table, key in marks:
        rows[table] = rows.get(table, 0) + 1 if key else -1
    return '; marked diverged: ' + ', '.join(
        f'table {table}' if count < 0 else f'{count} row(s) of {table}'
        for table, count in rows.items())


class ExtractRowChanges(beam.PTransform):
    """PCollection[CommittedTransaction] -> PCollection[Change] (one op each),
    plus dead letters for statements that cannot become row changes, and for
    each of those a DIVERGE change per row it wrote (or one for its table).

    Each change is versioned with :func:`changeflow.model.audit_version` from
    the transaction's first write to that row, so one row's changes sort in the
    order the source applied them.
    """

    def __init__(self, tables: Sequence[TableSpec]):
        super().__init__()
        if not tables:
            raise ValueError('ExtractRowChanges needs at least one table spec')
        self._tables = tuple(tables)

    def expand(self, transactions):
        return transactions | 'Translate' >> beam.ParDo(
            _ExtractRowChangesFn(self._tables)).with_outputs(DEAD_LETTER_TAG, main='changes')
