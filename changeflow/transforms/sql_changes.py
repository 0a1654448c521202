"""Committed transactions -> keyed row changes (see :mod:`changeflow.sql.plans`
for what is translated and what is refused).

A refused statement of a replicated table is dead-lettered whole and leaves
what it wrote stale in the replica, so it also becomes DIVERGE changes in its
place: one per row it names (``UPDATE t SET a = NOW() WHERE id = 5``), or one
for the whole table (key ``()``) when it cannot name them (a WHERE that does
not pin the key, INSERT ... SELECT, an INSERT without its key).

With a schema timeline (:mod:`changeflow.schema.timeline`), each statement is
read against the schema at its position and its changes carried to the
tables and columns the replica ends with; DDL is followed, and what it leaves
stale is dead-lettered and marked. Without one, DDL naming a replicated table
is dead-lettered (``schema-change``) and the table marked.

A statement that is translated but that the source schema says did more than
its text (:mod:`changeflow.schema.hazards`: a BEFORE trigger, a clock default,
an ON UPDATE CURRENT_TIMESTAMP column, a secondary UNIQUE key, cascading
foreign keys, a trigger writing other tables) is applied, dead-lettered with
the hazard as its reason, and what it leaves stale is marked: its rows, or
the tables its cascades and triggers reach (a secondary UNIQUE key may make
the write hit another row: its table). So is a write naming a key on a
case-insensitive collation in a spelling that is not its folded form: the
source may have matched a row the replica spells differently.

TIMESTAMP values are read in the session's ``time_zone`` (``SET time_zone``)
and stored as the server shows them in its own (``audit.time_zone``), as a
later ``SELECT`` on the source would: a value written under a zone the log
does not tell, or computed by an expression, marks its row (``time-zone``).
"""

import re
import unicodedata

from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from changeflow.config import TableSpec
from changeflow.model import (
    DEAD_LETTER_TAG, Change, OpKind, RowOp, audit_version, dead_letter, diverge_op)
from changeflow.schema.model import SourceSchema
from changeflow.sql.coercion import BadValue, coercer
from changeflow.sql.literals import DEFAULT_SERVER_VERSION
from changeflow.sql.zones import parse_time_zone
from changeflow.schema.hazards import Hazard
from changeflow.schema.history import apply_ddl
from changeflow.schema.timeline import ddl_position
from changeflow.sql.plans import RowChange, SqlChangeError, StatementTranslator, key_caster
from changeflow.transforms.guard import guarded, internal_error, lines_original
from changeflow.transforms.transactions import CommittedTransaction

__all__ = ['ExtractRowChanges', 'ExtractRowChangesFn']

_new_tuple = tuple.__new__  # a NamedTuple made without its __new__'s Python frame

# Hazard reasons whose write may have hit a row the statement does not name.
_TABLE_HAZARDS = frozenset({'secondary-unique-key'})
HAZARD_REASONS = ('trigger', 'cascade', 'secondary-unique-key', 'clock-default',
                  'expression-default', 'on-update-clock', 'auto-increment', 'generated-column',
                  'case-insensitive-key', 'time-zone')


@guarded('sql_changes', lambda t: lines_original(t.statements), lambda t: t.statements[0].position)
class ExtractRowChangesFn(beam.DoFn):
    """CommittedTransaction -> row Changes, DEAD_LETTER_TAG: DeadLetter: the DoFn
    of ExtractRowChanges, also called by the coarse data flow's replay
    (:mod:`changeflow.transforms.connections`) once per transaction."""

    def __init__(self, tables: Sequence[TableSpec], schema: Optional[SourceSchema] = None,
                 time_zone: str = '+00:00', server_version: int = DEFAULT_SERVER_VERSION):
        self._tables = tuple(tables)
        self._schema = schema
        self._time_zone = time_zone
        self._server_version = server_version
        self._hazard_counters = {reason: Metrics.counter('changeflow.sql_changes',
                                                         f'hazard_{reason.replace("-", "_")}')
                                 for reason in HAZARD_REASONS}
        self._received = Metrics.counter('changeflow.sql_changes', 'statements_received')
        self._changes = Metrics.counter('changeflow.sql_changes', 'row_changes')
        # Counted per statement and change as plain ints, reported once per bundle
        # (report_counts): a Beam counter's inc costs a metrics-container lookup per call.
        self._received_count = self._changes_count = 0
        self._dead = Metrics.counter('changeflow.sql_changes', 'dead_lettered')
        self._ddl_followed = Metrics.counter('changeflow.sql_changes', 'ddl_followed')
        self._rows_marked = Metrics.counter('changeflow.sql_changes', 'rows_marked_diverged')
        self._tables_marked = Metrics.counter('changeflow.sql_changes', 'tables_marked_diverged')
        self._skipped = {reason: Metrics.counter('changeflow.sql_changes', f'skipped_{reason}')
                         for reason in ('read', 'ddl', 'session', 'untracked_table')}

    def setup(self):
        self._contexts = {}
        self._use(_Context(self._tables, self._schema, self._server_version))

    def _use(self, context: '_Context') -> None:
        self._translator = context.translator
        self._casters = context.casters
        self._folded_keys = context.folded_keys
        self._any_folded = any(context.folded_keys.values())
        self._timestamps = context.timestamps
        self._server_zone = parse_time_zone(self._time_zone)

    def _at(self, timeline, statement):
        """The epoch of the schema ``statement`` ran against; its context in use."""
        index, epoch = timeline.epoch_at(ddl_position(statement.timestamp_us, statement.query_id))
        context = self._contexts.get(index)
        if context is None:
            if len(self._contexts) >= _CONTEXTS_KEPT:
                self._contexts.pop(next(iter(self._contexts)))
            context = self._contexts[index] = _Context(epoch.specs, epoch.schema,
                                                       self._server_version)
        self._use(context)
        return epoch

    def finish_bundle(self):
        self.report_counts()

    def report_counts(self) -> None:
        """Adds the statements and changes counted since the last report to the
        metrics (by finish_bundle, or by the DoFn that calls process)."""
        if self._received_count:
            self._received.inc(self._received_count)
            self._received_count = 0
        if self._changes_count:
            self._changes.inc(self._changes_count)
            self._changes_count = 0

    def process(self, transaction: CommittedTransaction, timeline=None) -> list:
        """The transaction's outputs, as a list: the coarse replay calls this
        once per transaction, where a generator per statement cost more than
        a typical statement's own translation."""
        out: list = []
        first_touch = {}  # (table, key) -> (time, query id) of the transaction's first write
        sessions = transaction.sessions or (None,) * len(transaction.statements)
        for statement, session in zip(transaction.statements, sessions):
            self._received_count += 1
            if timeline is None:
                self._statement(statement, session, first_touch, None, out)
                continue
            epoch = self._at(timeline, statement)
            position = ddl_position(statement.timestamp_us, statement.query_id)
            made: list = []
            self._statement(statement, session, first_touch, timeline, made)
            for output in made:
                lineage = epoch.lineages.get(output.table) if isinstance(output, Change) else None
                if lineage is None:
                    out.append(output)
                    continue
                output, lost = timeline.forward(lineage, position, output)
                out.append(output)
                if lost:
                    out.extend(self._lost_columns(statement, output, lost))
        return out

    def _statement(self, statement, session, first_touch, timeline, out: list) -> None:
        """Appends the outputs of one statement to ``out``, named as the schema at
        its position names them."""
        if statement.truncated:
            out.extend(self._cut(statement, first_touch))
            return
        translation = None
        try:
            translation = self._translator.translate(statement.object, statement.database,
                                                     session)
            zone_hazards = ()
            if session is not None and session.time_zone != '':  # else no literal moves
                translation, zone_hazards = self._in_server_zone(translation, session.time_zone)
            keys = [self._key(change) for change in translation.changes]
            if first_touch:  # only a table written earlier in the transaction is refused
                _check_table_writes(translation, {table for table, _ in first_touch})
        except (SqlChangeError, ValueError, ArithmeticError) as error:
            # Nothing of the statement is emitted: it is replayable whole;
            # what it wrote is marked diverged, in its place.
            reason = getattr(error, 'reason', 'bad-value')
            detail = getattr(error, 'detail', str(error))
            marks = self._marks(error, translation, statement)
            self._dead.inc()
            out.append(TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                'sql_changes', reason, detail + _marked(marks), statement.line,
                statement.position)))
            for seq, (table, key) in enumerate(marks):
                (self._rows_marked if key else self._tables_marked).inc()
                out.append(Change(table, key, (diverge_op(
                    self._version(first_touch, statement, table, key, seq), reason, detail,
                    _position(statement, seq, len(marks))),), statement.timestamp_us))
            return
        except Exception as error:  # pylint: disable=broad-except
            # A defect: this statement alone is dead-lettered, replayable whole.
            self._dead.inc()
            out.append(TaggedOutput(DEAD_LETTER_TAG, internal_error(
                'sql_changes', error, statement.line, statement.position)))
            return
        if translation.skipped:
            self._skipped[translation.skipped.replace('-', '_')].inc()
            if translation.skipped == 'ddl':
                out.extend(self._schema_change(statement, first_touch) if timeline is None
                           else self._followed(statement, first_touch, timeline))
            return
        changes = translation.changes
        versions = []
        count = len(changes)
        self._changes_count += count
        for seq, (change, key) in enumerate(zip(changes, keys)):
            version = self._version(first_touch, statement, change.table, key, seq)
            versions.append(version)
            # Change(...) and RowOp(...) without their __new__'s Python frames: per change.
            out.append(_new_tuple(Change, (change.table, key, (_new_tuple(RowOp, (
                change.kind, version, change.values, change.assignments,
                _position(statement, seq, count), change.condition, None)),),
                statement.timestamp_us)))
        if translation.hazards or zone_hazards or self._any_folded:
            hazards = [*translation.hazards, *self._key_hazards(changes, keys), *zone_hazards]
            if hazards:
                out.extend(self._hazard_marks(statement, hazards, changes, keys, versions,
                                              first_touch))

    def _cut(self, statement, first_touch):
        """A committed write the plugin cut at its query log limit: never
        translated; the tables it may have written are marked."""
        yield from self._tables_stale(
            statement, first_touch, self._tables_at_head(statement), 'truncated-statement',
            f'the statement reaches server_audit_query_log_limit and may have been cut '
            f'(raise the limit): {statement.object[:80]!r}...')

    def _followed(self, statement, first_touch, timeline):
        """DDL with a schema timeline: the replica follows it (the database
        sink applies :attr:`SchemaTimeline.steps`); what it leaves stale is
        dead-lettered and its table marked, a DROP TABLE deletes its rows in
        its place (a TRUNCATE op), and DDL that names no table and cannot be
        read is dead-lettered (``unknown-ddl``), never skipped in silence."""
        outcome = timeline.ddl_outcome(ddl_position(statement.timestamp_us, statement.query_id))
        self._ddl_followed.inc()
        for seq, lineage in enumerate(outcome.dropped):
            table = timeline.final_source(lineage)
            yield Change(table, (), (RowOp(
                OpKind.TRUNCATE, self._version(first_touch, statement, table, (), seq),
                position=statement.position),), statement.timestamp_us)
        by_reason = {}
        for lineage, reason, detail in outcome.marks:
            by_reason.setdefault(reason, []).append((timeline.final_source(lineage), detail))
        for reason, marks in by_reason.items():
            tables = list(dict.fromkeys(table for table, _ in marks))
            yield from self._tables_stale(statement, first_touch, tables, reason, '; '.join(
                dict.fromkeys(detail for _, detail in marks)))
        if outcome.unknown is not None:
            self._dead.inc()
            yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                'sql_changes', 'unknown-ddl', f'DDL changeflow cannot read, naming no replicated '
                f'table it can tell: {outcome.unknown}', statement.line, statement.position))

    def _lost_columns(self, statement, change: Change, lost: List[str]):
        """An op whose expression reads a column a later DDL drops: the
        replica cannot evaluate it there, so its row is marked."""
        self._dead.inc()
        detail = (f'{change.table}: the statement reads column(s) {", ".join(lost)}, which a '
                  f'later ALTER TABLE drops from the replica')
        yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            'sql_changes', 'schema-change', detail + _marked([(change.table, change.key)]),
            statement.line, statement.position))
        self._rows_marked.inc()
        yield Change(change.table, change.key, (diverge_op(
            change.ops[-1].version + '.h', 'schema-change', detail, statement.position),),
            statement.timestamp_us)

    def _schema_change(self, statement, first_touch):
        """DDL on a replicated table without a schema to follow it with: it is
        dead-lettered and every replicated table it names is marked
        (``schema-change``), never skipped in silence."""
        _, effects = apply_ddl(self._schema or SourceSchema(()), statement.object,
                               statement.database)
        named = []
        for effect in effects:
            for ref in (getattr(effect, 'table', None), getattr(effect, 'new_table', None)):
                if ref and f'{ref[0]}.{ref[1]}' not in named:
                    named.append(f'{ref[0]}.{ref[1]}')
        tables = [t for t in named if t in self._casters]
        if tables:
            kinds = ', '.join(sorted({effect.kind for effect in effects}))
            yield from self._tables_stale(
                statement, first_touch, tables, 'schema-change',
                f'{kinds} of {", ".join(named)} is not followed by the replica: '
                f'{statement.object[:120]!r}')

    def _tables_stale(self, statement, first_touch, tables, reason: str, detail: str):
        """The dead letter of a statement that leaves ``tables`` stale, and
        their whole-table marks in its place."""
        self._dead.inc()
        yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            'sql_changes', reason, detail + _marked([(table, ()) for table in tables]),
            statement.line, statement.position))
        for seq, table in enumerate(tables):
            self._tables_marked.inc()
            yield Change(table, (), (diverge_op(
                self._version(first_touch, statement, table, (), seq), reason, detail,
                statement.position),), statement.timestamp_us)

    def _in_server_zone(self, translation, session_zone: Optional[str]):
        """``translation`` with its TIMESTAMP literals moved from the session's
        time zone to the server's, and the hazards of those it cannot move."""
        if session_zone == '' or not any(self._timestamps.get(c.table) for c in translation.changes):
            return translation, []
        zone = parse_time_zone(session_zone) if session_zone is not None else None
        changes, unknown = [], False
        for change in translation.changes:
            columns = self._timestamps.get(change.table, ())
            values = tuple((c, _moved(v, zone, self._server_zone) if c in columns else v)
                           for c, v in change.values)
            assignments = tuple((c, ('lit', _moved(e[1], zone, self._server_zone))
                                 if c in columns and e[0] == 'lit' else e)
                                for c, e in change.assignments)
            unknown = unknown or any(c in columns and (zone is None or e[0] != 'lit')
                                     for c, e in change.assignments) or (
                zone is None and any(c in columns for c, _ in change.values))
            changes.append(change._replace(values=values, assignments=assignments))
        hazards = [Hazard('time-zone', f'a TIMESTAMP written under time_zone '
                                       f'{session_zone!r}, which the log does not resolve or '
                                       f'an expression computes', (), False)] if unknown else []
        return translation._replace(changes=tuple(changes)), hazards

    def _key_hazards(self, changes, keys) -> list:
        """A key on a case-insensitive column written in a spelling that is not
        its folded form: the source may have matched a row spelled otherwise."""
        hazards = []
        if not self._any_folded:
            return hazards
        for change, key in zip(changes, keys):
            positions = self._folded_keys.get(change.table)
            if positions and key and any(isinstance(key[i], str) and key[i] != _folded(key[i])
                                 for i in positions):
                table = tuple(change.table.split('.', 1))
                hazards.append(Hazard(
                    'case-insensitive-key',
                    f'{change.table} key {key!r} on a case-insensitive collation: the source '
                    f'matches it to any row of the same folded spelling', (table,), True))
                break
        return hazards

    def _hazard_marks(self, statement, hazards, changes, keys, versions, first_touch):
        """The dead letter of a translated statement the schema says did more
        than its text, and the marks of what that leaves stale: its rows just
        after its own ops, and every replicated table it may have reached."""
        tables = []
        for hazard in hazards:
            self._hazard_counters[hazard.reason].inc()
            reached = [f'{db}.{name}' for db, name in hazard.affected_tables]
            if hazard.reason in _TABLE_HAZARDS:
                reached += [change.table for change in changes]
            tables += [t for t in reached if t in self._casters and t not in tables]
        rows = [] if all(h.rows_exact for h in hazards) else [
            (change.table, key, version) for change, key, version in zip(changes, keys, versions)
            if change.key and change.table not in tables]
        marks = [(table, ()) for table in tables] + [(table, key) for table, key, _ in rows]
        if not marks:
            return  # only tables changeflow does not replicate were reached
        reason, detail = hazards[0].reason, '; '.join(h.detail for h in hazards)
        self._dead.inc()
        yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            'sql_changes', reason, f'applied, but {detail}' + _marked(marks), statement.line,
            statement.position))
        for seq, table in enumerate(tables):
            self._tables_marked.inc()
            yield Change(table, (), (diverge_op(
                self._version(first_touch, statement, table, (), seq), reason, detail,
                statement.position),), statement.timestamp_us)
        for table, key, version in rows:
            self._rows_marked.inc()
            # Just after the statement's own op on the row, before its next one.
            yield Change(table, key, (diverge_op(version + '.h', reason, detail,
                                                 statement.position),), statement.timestamp_us)

    @staticmethod
    def _version(first_touch, statement, table: str, key, seq: int) -> str:
        query_id = statement.query_id
        touch = first_touch.setdefault((table, key), (statement.timestamp_us, query_id))
        return audit_version(touch[0], touch[1], query_id, seq)

    def _tables_at_head(self, statement) -> List[str]:
        """The replicated tables a write the SQL stage cannot read may have
        written: the one its head names, else every one of its database."""
        named = _head_tables(statement.object, statement.database)
        if named:
            return [t for t in named if t in self._casters]
        return [t for t in self._casters if t.split('.', 1)[0] == statement.database]

    def _marks(self, error, translation, statement) -> List[Tuple[str, Tuple[Any, ...]]]:
        """(table, key) of what a refused statement wrote; key () for a whole table."""
        if isinstance(error, SqlChangeError):
            tables = [t for t in error.tables if t in self._casters]
            if not error.tables:  # refused before its table was known (unparseable, ...)
                tables = self._tables_at_head(statement)
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


_CONTEXTS_KEPT = 8  # translators of recent schema epochs kept per worker


class _Context:
    """What translation needs of one set of table specs and schema."""

    def __init__(self, tables: Sequence[TableSpec], schema: Optional[SourceSchema],
                 server_version: int):
        self.translator = StatementTranslator(tables, schema=schema,
                                              server_version=server_version)
        self.casters = {spec.source: key_caster(spec) for spec in tables}
        self.folded_keys = {spec.source: _case_insensitive_positions(spec) for spec in tables}
        self.timestamps = {spec.source: frozenset(
            c for c, t in spec.columns if t.split('(')[0].strip() == 'timestamp')
            for spec in tables}


_NAME = r'(?:`(?:[^`]|``)+`|[\w$]+)'
_CUT_WRITE = re.compile(
    r'\s*(?:/\*.*?\*/\s*)*(?:(?:INSERT|REPLACE)(?:\s+(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE))*'
    r'(?:\s+INTO)?|UPDATE(?:\s+(?:LOW_PRIORITY|IGNORE))*|DELETE(?:\s+(?:LOW_PRIORITY|QUICK|IGNORE))*'
    r'\s+FROM|TRUNCATE(?:\s+TABLE)?)\s+(' + _NAME + r')(?:\s*\.\s*(' + _NAME + r'))?', re.I | re.S)


def _head_tables(sql: str, database: str) -> List[str]:
    """The table a write names at its head ('db.table'), read without parsing
    the rest (it may be cut or unparseable); [] when the head does not name
    one plainly."""
    match = _CUT_WRITE.match(sql)
    if match is None:
        return []
    first, second = (part.strip('`').replace('``', '`') if part else part
                     for part in match.groups())
    return [f'{first}.{second}' if second else f'{database}.{first}']


def _moved(value, zone, server_zone):
    """A TIMESTAMP literal read in ``zone``, as ``server_zone`` shows it;
    unchanged when it is not a date-time (the sink then rejects it)."""
    if value is None or zone is None or server_zone is None:
        return value
    try:
        moment = coercer('timestamp')(value)
    except BadValue:
        return value
    return moment.replace(tzinfo=zone).astimezone(server_zone).replace(tzinfo=None)


def _folded(text: str) -> str:
    """A string as a case- and accent-insensitive PAD SPACE collation
    compares it (utf8mb4_general_ci and its kin)."""
    decomposed = unicodedata.normalize('NFKD', text.rstrip(' '))
    return ''.join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _case_insensitive_positions(spec: TableSpec) -> Tuple[int, ...]:
    """Positions of the key columns with a case-insensitive collation."""
    if spec.schema is None:
        return ()
    return tuple(i for i, name in enumerate(spec.key)
                 if (column := spec.schema.column(name)) is not None and column.case_insensitive)


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

    ``timeline``: a PCollection holding one
    :class:`changeflow.schema.timeline.SchemaTimeline` (see :class:`FollowSchema`):
    each statement is then read against the schema at its position and its
    changes carried to the tables and columns the replica ends with.
    """

    def __init__(self, tables: Sequence[TableSpec], schema: Optional[SourceSchema] = None,
                 time_zone: str = '+00:00', server_version: int = DEFAULT_SERVER_VERSION,
                 timeline=None):
        super().__init__()
        if not tables:
            raise ValueError('ExtractRowChanges needs at least one table spec')
        if parse_time_zone(time_zone) is None:
            raise ValueError(f'time_zone {time_zone!r} is not a time zone')
        self._tables = tuple(tables)
        self._schema = schema
        self._time_zone = time_zone
        self._server_version = server_version
        self._timeline = timeline

    def expand(self, transactions):
        side = {} if self._timeline is None else {'timeline': beam.pvalue.AsSingleton(
            self._timeline)}
        return transactions | 'Translate' >> beam.ParDo(
            ExtractRowChangesFn(self._tables, self._schema, self._time_zone,
                                 self._server_version), **side).with_outputs(
                DEAD_LETTER_TAG, main='changes')
