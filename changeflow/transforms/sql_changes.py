"""Committed transactions -> keyed row changes (see :mod:`changeflow.sql.plans`
for what is translated and what is refused)."""

from typing import Any, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from changeflow.config import TableSpec
from changeflow.model import DEAD_LETTER_TAG, Change, RowOp, audit_version, dead_letter
from changeflow.sql.plans import RowChange, SqlChangeError, StatementTranslator, key_caster
from changeflow.transforms.transactions import CommittedTransaction

__all__ = ['ExtractRowChanges']


class _ExtractRowChangesFn(beam.DoFn):
    def __init__(self, tables: Sequence[TableSpec]):
        self._tables = tuple(tables)
        self._received = Metrics.counter('changeflow.sql_changes', 'statements_received')
        self._changes = Metrics.counter('changeflow.sql_changes', 'row_changes')
        self._dead = Metrics.counter('changeflow.sql_changes', 'dead_lettered')
        self._skipped = {reason: Metrics.counter('changeflow.sql_changes', f'skipped_{reason}')
                         for reason in ('read', 'ddl', 'session', 'untracked_table')}

    def setup(self):
        self._translator = StatementTranslator(self._tables)
        self._casters = {spec.source: key_caster(spec) for spec in self._tables}

    def process(self, transaction: CommittedTransaction):
        first_touch = {}  # (table, key) -> (time, query id) of the transaction's first write
        sessions = transaction.sessions or (None,) * len(transaction.statements)
        for statement, session in zip(transaction.statements, sessions):
            self._received.inc()
            try:
                translation = self._translator.translate(statement.object, statement.database,
                                                         session)
                keys = [self._key(change) for change in translation.changes]
            except (SqlChangeError, ValueError, ArithmeticError) as error:
                # Nothing of the statement is emitted: it is replayable whole.
                self._dead.inc()
                yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                    'sql_changes', getattr(error, 'reason', 'bad-value'),
                    getattr(error, 'detail', str(error)), statement.line, statement.position))
                continue
            if translation.skipped:
                self._skipped[translation.skipped.replace('-', '_')].inc()
                continue
            changes = translation.changes
            for seq, (change, key) in enumerate(zip(changes, keys)):
                touch = first_touch.setdefault(
                    (change.table, key), (statement.timestamp_us, statement.query_id))
                version = audit_version(touch[0], touch[1], statement.query_id, seq)
                position = statement.position if len(changes) == 1 else (
                    f'{statement.position}#{seq}')
                self._changes.inc()
                yield Change(change.table, key, (RowOp(
                    change.kind, version, change.values, change.assignments, position),),
                    statement.timestamp_us)

    def _key(self, change: RowChange) -> Tuple[Any, ...]:
        caster = self._casters[change.table]
        return caster(change.key) if caster else change.key


class ExtractRowChanges(beam.PTransform):
    """PCollection[CommittedTransaction] -> PCollection[Change] (one op each),
    plus dead letters for statements that cannot become row changes.

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
