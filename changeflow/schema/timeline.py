"""The replicated tables along the log: which tables are replicated at each
position, with which specs, and where a change logged at one position lands
in the replica the whole log leaves behind.

Built from the schema at the log's start (``schema.file`` / ``source_db``),
``tables:`` (a pattern also matches tables created later) and the log's DDL
in position order (:class:`changeflow.schema.history.SchemaHistory`). Each
replicated table is followed as a *lineage* from its creation (or the log's
start) to its DROP: RENAME TABLE keeps the lineage, and the replica table is
renamed with it unless the config names another target; DROP TABLE ends it
(a later CREATE of the name starts a new one, as ``CREATE OR REPLACE`` does).

* Translation reads a statement against :meth:`SchemaTimeline.epoch_at` its
  position (the specs and schema as they were then), and carries the changes
  to their lineage's last table and columns with :meth:`forward`: a column
  renamed later takes its new name, one dropped later is left out, and a
  whole-row write before an ADD COLUMN gets the value MySQL gave the rows that
  existed (the column's literal default).
* :meth:`ddl_outcome` says what one DDL statement leaves stale (a CREATE ...
  SELECT, a type change that may lose data, DDL it cannot read, a table renamed
  in from one that was not replicated) and which lineages it dropped.
* :attr:`steps` are the replica's own ALTER / RENAME / DROP / CREATE, in log
  order, for the database sink to apply before it writes.

Positions are ``(timestamp_us, query_id)``: MariaDB numbers queries
server-wide, and DDL waits for the transactions holding its table's metadata
lock, so a transaction's writes to a table are all before or all after a DDL
of that table.
"""

import bisect
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from changeflow.config import ConfigError, TableSpec, resolve_tables, table_spec
from changeflow.model import MARKER_KINDS, Change, OpKind, RowOp
from changeflow.schema.history import SchemaHistory
from changeflow.schema.model import SourceSchema

__all__ = ['SchemaTimeline', 'ReplicaStep', 'Epoch', 'DdlOutcome', 'ddl_position']

START: tuple = ()  # before every DDL: () sorts before any position

# Kinds whose values are a whole row (the INSERT part of an upsert included).
_ROW_VALUE_KINDS = frozenset({OpKind.INSERT, OpKind.REPLACE, OpKind.INSERT_IGNORE, OpKind.UPSERT})


def ddl_position(timestamp_us: int, query_id: int) -> tuple:
    return (timestamp_us, query_id)


class ReplicaStep(NamedTuple):
    """One change of the replica's structure."""
    position: tuple
    action: str             # create | drop | rename | add-column | drop-column | rename-column
    target: str             # | modify-column
    spec: Optional[TableSpec] = None   # the table's spec after the step
    column: str = ''
    new_name: str = ''      # rename: the new target; rename-column: the new column name
    fill: Optional[str] = None         # add-column: the value existing rows take (text)


class Epoch(NamedTuple):
    """The replicated tables from one DDL to the next."""
    position: tuple
    schema: SourceSchema
    specs: Tuple[TableSpec, ...]
    lineages: Dict[str, int]           # source table -> lineage id


class DdlOutcome(NamedTuple):
    marks: Tuple[Tuple[int, str, str], ...] = ()   # (lineage, reason, detail): left stale
    dropped: Tuple[int, ...] = ()                   # lineages whose rows the DDL deleted
    unknown: Optional[str] = None                   # DDL not understood, naming no table


class _Lineage:
    def __init__(self, number: int, spec: TableSpec):
        self.number = number
        self.spec = spec                   # its last spec
        self.events: List[tuple] = []      # (position, kind, column, other)
        self.ended: Optional[tuple] = None

    @property
    def source(self) -> str:
        return self.spec.source


def _fold(name: str) -> str:
    return name.lower()


def _renamed(expr, old: str, new: str):
    """``expr`` with column ``old`` read as ``new`` (names compare case-insensitively)."""
    tag = expr[0]
    if tag == 'col':
        return ('col', new) if _fold(expr[1]) == _fold(old) else expr
    if tag == 'neg':
        return ('neg', _renamed(expr[1], old, new))
    if tag == 'bin':
        return ('bin', expr[1], _renamed(expr[2], old, new), _renamed(expr[3], old, new))
    if tag == 'fn':
        return ('fn', expr[1], tuple(_renamed(arg, old, new) for arg in expr[2]))
    return expr


def _reads(expr, column: str) -> bool:
    tag = expr[0]
    if tag == 'col':
        return _fold(expr[1]) == _fold(column)
    if tag == 'neg':
        return _reads(expr[1], column)
    if tag == 'bin':
        return _reads(expr[2], column) or _reads(expr[3], column)
    if tag == 'fn':
        return any(_reads(arg, column) for arg in expr[2])
    return False


class SchemaTimeline:
    """See the module docstring. ``ddl``: (position, database, sql) of every
    DDL statement the log committed, in any order, replays included."""

    def __init__(self, initial: SourceSchema, table_rules, initial_specs: Sequence[TableSpec],
                 ddl: Sequence[Tuple[tuple, Optional[str], str]] = ()):
        self._rules = table_rules
        history = SchemaHistory(initial)
        for position, database, sql in sorted({(tuple(p), d, s) for p, d, s in ddl},
                                              key=lambda entry: entry[0]):
            history.apply(sql, database, position)
        self._lineages: List[_Lineage] = []
        live = {spec.source: self._new_lineage(spec) for spec in initial_specs}
        self._epochs = [Epoch(START, initial, tuple(initial_specs), live)]
        self._positions = [START]
        self._outcomes: Dict[tuple, DdlOutcome] = {}
        self.steps: List[ReplicaStep] = []
        for position, _, _, effects, schema in history.entries():
            self._advance(position, effects, schema)

    # --- reading -----------------------------------------------------------

    def epoch_at(self, position: tuple) -> Tuple[int, Epoch]:
        """(index, epoch) of the schema a statement at ``position`` ran against."""
        index = bisect.bisect_right(self._positions, tuple(position)) - 1
        return index, self._epochs[index]

    def ddl_outcome(self, position: tuple) -> DdlOutcome:
        return self._outcomes.get(tuple(position), DdlOutcome())

    def final_source(self, lineage: int) -> str:
        return self._lineages[lineage].source

    @property
    def initial_specs(self) -> Tuple[TableSpec, ...]:
        return self._epochs[0].specs

    @property
    def final_specs(self) -> Tuple[TableSpec, ...]:
        """The tables replicated at the end of the log."""
        return self._epochs[-1].specs

    @property
    def dropped_sources(self) -> Tuple[str, ...]:
        """Source tables replicated at some point and gone at the end."""
        alive = {spec.source for spec in self.final_specs}
        return tuple(sorted({lineage.source for lineage in self._lineages
                             if lineage.ended is not None and lineage.source not in alive}))

    @property
    def all_specs(self) -> Tuple[TableSpec, ...]:
        """One spec per source name changes may carry (the last lineage's):
        for the sinks that record history (Parquet, notifications)."""
        by_source = {lineage.source: lineage.spec for lineage in self._lineages}
        by_source.update((spec.source, spec) for spec in self.final_specs)
        return tuple(by_source.values())

    def forward(self, lineage: int, position: tuple, change: Change
                ) -> Tuple[Change, List[str]]:
        """``change``, logged at ``position``, as the replica holds its table at
        the end of the log; and the columns dropped later that one of its ops
        still reads (that op then only marks the row: its result is unknown)."""
        line = self._lineages[lineage]
        events = [event for event in line.events if event[0] > tuple(position)]
        if not events:
            return (change if change.table == line.source
                    else change._replace(table=line.source)), []
        lost: List[str] = []
        ops = tuple(self._forward_op(op, events, lost) for op in change.ops)
        return change._replace(table=line.source, ops=ops), lost

    @staticmethod
    def _forward_op(op: RowOp, events, lost: List[str]) -> RowOp:
        if op.kind in MARKER_KINDS:
            return op
        values, assignments, condition = list(op.values), list(op.assignments), op.condition
        for _, kind, column, other in events:
            if kind == 'rename-column':
                values = [(other if _fold(c) == _fold(column) else c, v) for c, v in values]
                assignments = [(other if _fold(c) == _fold(column) else c,
                                _renamed(e, column, other)) for c, e in assignments]
                if condition is not None:
                    condition = _renamed(condition, column, other)
            elif kind == 'drop-column':
                values = [(c, v) for c, v in values if _fold(c) != _fold(column)]
                assignments = [(c, e) for c, e in assignments if _fold(c) != _fold(column)]
                if any(_reads(e, column) for _, e in assignments) or (
                        condition is not None and _reads(condition, column)):
                    lost.append(column)
            elif kind == 'add-column' and op.kind in _ROW_VALUE_KINDS and not any(
                    _fold(c) == _fold(column) for c, _ in values):
                values.append((column, other))
        return op._replace(values=tuple(values), assignments=tuple(assignments),
                           condition=condition)

    # --- building ----------------------------------------------------------

    def _new_lineage(self, spec: TableSpec) -> int:
        self._lineages.append(_Lineage(len(self._lineages), spec))
        return len(self._lineages) - 1

    def _advance(self, position: tuple, effects, schema: SourceSchema) -> None:
        before = self._epochs[-1]
        live = dict(before.lineages)

        def find(ref) -> Optional[str]:
            if not ref:
                return None
            for source in live:
                if schema.same_name(tuple(source.split('.', 1)), tuple(ref)):
                    return source
            return None

        marks, dropped, unknown = [], [], None
        renamed: Dict[int, str] = {}          # lineage -> its target before this statement
        created = set()
        column_events: List[Tuple[int, str, str, Optional[str]]] = []
        for effect in effects:
            kind, source = effect.kind, find(getattr(effect, 'table', None))
            if kind == 'drop-table' and source:
                number = live.pop(source)
                self._lineages[number].ended = position
                dropped.append(number)
                self.steps.append(ReplicaStep(position, 'drop', self._lineages[number].spec.target))
            elif kind == 'rename-table' and source:
                number = live.pop(source)
                renamed.setdefault(number, self._lineages[number].spec.target)
                table = schema.table(*effect.new_table)
                live[table.qualified if table else '.'.join(effect.new_table)] = number
            elif kind == 'create-table':
                created.add(effect.schema.qualified)
            elif kind in ('add-column', 'drop-column', 'rename-column', 'modify-column') and source:
                column = effect.column if isinstance(effect.column, str) else effect.column.name
                other = {'add-column': getattr(effect, 'fill', None),
                         'rename-column': getattr(effect, 'new_name', None)}.get(kind)
                column_events.append((live[source], kind, column, other))
            elif kind == 'needs-resync' and source:
                marks.append((live[source], 'needs-resync', effect.reason))
            elif kind == 'unknown-ddl':
                if source:
                    marks.append((live[source], 'schema-change', effect.detail))
                elif effect.table is None:
                    unknown = effect.detail
        try:
            resolved = {spec.source: spec for spec in resolve_tables(self._rules, schema)}
            config_error = None
        except ConfigError as error:
            resolved, config_error = {}, str(error)
        specs: Dict[str, TableSpec] = {}
        for source, number in live.items():
            line = self._lineages[number]
            table = schema.table(*source.split('.', 1))
            spec = resolved.get(source)
            if spec is None and table is not None:
                follows = line.spec.target == line.spec.source.split('.', 1)[1]
                try:
                    spec = table_spec(table, target=table.name if follows else line.spec.target,
                                      redact=line.spec.redact)
                except ConfigError as error:
                    config_error = config_error or str(error)
            if spec is None:
                spec = line.spec._replace(source=source)
            if config_error and (number in renamed or any(e[0] == number for e in column_events)):
                marks.append((number, 'needs-resync', f'the configuration no longer fits '
                                                      f'{source}: {config_error}'))
            old_target = renamed.get(number, line.spec.target)
            if spec.target != old_target:
                self.steps.append(ReplicaStep(position, 'rename', old_target, spec,
                                              new_name=spec.target))
            if len(spec.key) != len(line.spec.key) or any(
                    _fold(a) != _fold(self._column_now(b, number, column_events))
                    for a, b in zip(spec.key, line.spec.key)):
                marks.append((number, 'needs-resync', f'the key of {source} changed from '
                                                      f'{list(line.spec.key)} to {list(spec.key)}'))
            line.spec = spec
            specs[source] = spec
        for number, kind, column, other in column_events:
            line = self._lineages[number]
            if line.ended is not None:
                continue
            line.events.append((position, kind, column, other))
            self.steps.append(ReplicaStep(position, kind, line.spec.target, line.spec, column,
                                          other if kind == 'rename-column' else '',
                                          other if kind == 'add-column' else None))
        for source, spec in resolved.items():
            if source in live:
                continue
            number = self._new_lineage(spec)
            live[source] = number
            specs[source] = spec
            self.steps.append(ReplicaStep(position, 'create', spec.target, spec))
            if source not in created:
                marks.append((number, 'needs-resync', f'{source} is replicated from here on, but '
                                                      f'its rows come from a table that was not'))
        self._epochs.append(Epoch(position, schema, tuple(specs.values()), live))
        self._positions.append(position)
        self._outcomes[position] = DdlOutcome(tuple(marks), tuple(dropped), unknown)

    @staticmethod
    def _column_now(name: str, number: int, column_events) -> str:
        """A key column's name after this statement's renames."""
        for lineage, kind, column, other in column_events:
            if lineage == number and kind == 'rename-column' and _fold(column) == _fold(name):
                name = other
        return name
