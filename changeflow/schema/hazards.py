"""What a write does on the source that its statement does not say.

:func:`write_hazards` lists, for one write to one table, every schema feature
that makes the server's result differ from what the statement's text alone
gives: triggers, cascading foreign keys, secondary UNIQUE keys, clock and
expression defaults, ``ON UPDATE CURRENT_TIMESTAMP``, AUTO_INCREMENT and
generated columns. The translator dead-letters (and marks diverged) what a
hazard covers; an empty list means the schema adds nothing to the statement.

Each :class:`Hazard` says whether the statement's own rows can still be
trusted (``rows_exact``) and which other tables it may have written
(``affected_tables``, as (database, table) pairs): with ``rows_exact`` True
the rows are exact and only those tables are not.
"""

from typing import Iterable, List, NamedTuple, Optional, Set, Tuple

import sqlglot
from sqlglot import exp

from changeflow.schema.model import SourceSchema, TableSchema

__all__ = ['Hazard', 'WRITE_KINDS', 'write_hazards', 'generated_dependencies']

WRITE_KINDS = ('insert', 'replace', 'insert_ignore', 'upsert', 'update', 'delete', 'truncate')
_INSERTS = ('insert', 'replace', 'insert_ignore', 'upsert')
# The trigger events each kind of write may fire. TRUNCATE fires none.
_EVENTS = {'insert': ('INSERT',), 'insert_ignore': ('INSERT',), 'replace': ('INSERT', 'DELETE'),
           'upsert': ('INSERT', 'UPDATE'), 'update': ('UPDATE',), 'delete': ('DELETE',),
           'truncate': ()}
_CHANGING_ACTIONS = ('CASCADE', 'SET NULL', 'SET DEFAULT')


class Hazard(NamedTuple):
    """One reason a write is not fully known from its statement.

    ``reason`` is a kebab-case dead-letter reason (``trigger``, ``cascade``,
    ``secondary-unique-key``, ``clock-default``, ``expression-default``,
    ``on-update-clock``, ``auto-increment``, ``generated-column``)."""
    reason: str
    detail: str
    affected_tables: Tuple[Tuple[str, str], ...] = ()
    rows_exact: bool = False


def _folded(names: Optional[Iterable[str]]) -> Set[str]:
    return {name.lower() for name in names or ()}


def generated_dependencies(expression: str) -> Optional[Set[str]]:
    """The (lower-case) column names a generated column's expression reads,
    or None when sqlglot cannot parse it."""
    try:
        node = sqlglot.parse_one(expression, read='mysql')
    except Exception:  # ParseError, or recursion on deep input
        return None
    return {column.name.lower() for column in node.find_all(exp.Column)}


def _cascades(schema: SourceSchema, table: TableSchema, deleting: bool,
              changed: Set[str]) -> List[Tuple[str, Tuple[Tuple[str, str], ...]]]:
    """Per foreign key referencing ``table`` that a delete (or an update of
    ``changed`` columns) sets off: its description and every table reached,
    following cascades transitively."""
    results = []
    for child, fk in schema.referencing(table.database, table.name):
        action = fk.on_delete if deleting else fk.on_update
        if action not in _CHANGING_ACTIONS:
            continue
        if not deleting and not changed & _folded(fk.ref_columns):
            continue
        reached: List[Tuple[str, str]] = []
        pending = [(child, action == 'CASCADE' and deleting, _folded(fk.columns))]
        seen = set()
        while pending:
            current, deletes, columns = pending.pop()
            ref = (current.database, current.name)
            if (ref, deletes, frozenset(columns)) in seen:
                continue
            seen.add((ref, deletes, frozenset(columns)))
            if ref not in reached:
                reached.append(ref)
            for grandchild, next_fk in schema.referencing(*ref):
                next_action = next_fk.on_delete if deletes else next_fk.on_update
                if next_action not in _CHANGING_ACTIONS:
                    continue
                if not deletes and not columns & _folded(next_fk.ref_columns):
                    continue
                pending.append((grandchild, deletes and next_action == 'CASCADE',
                                _folded(next_fk.columns)))
        verb = 'ON DELETE' if deleting else 'ON UPDATE'
        results.append((f'{child.qualified}.{fk.name} ({", ".join(fk.columns)}) references '
                        f'{table.qualified} {verb} {action}', tuple(reached)))
    return results


def _reach(schema: SourceSchema, writes: Tuple[Tuple[str, str], ...]
           ) -> Tuple[Tuple[str, str], ...]:
    """The tables a trigger's writes reach: those it writes, then, through
    every table reached, the writes of its own triggers (nested triggers
    fire) and the tables its foreign keys cascade to. Conservative: any
    event of a reached table is assumed."""
    reached: List[Tuple[str, str]] = []
    pending = list(writes)
    while pending:
        ref = pending.pop(0)
        if any(schema.same_name(ref, seen) for seen in reached):
            continue
        reached.append(ref)
        table = schema.table(*ref)
        if table is None:
            continue
        for trigger in table.triggers:
            pending.extend(trigger.writes)
        for child, fk in schema.referencing(*ref):
            if fk.on_delete in _CHANGING_ACTIONS or fk.on_update in _CHANGING_ACTIONS:
                pending.append((child.database, child.name))
    return tuple(reached)


def write_hazards(schema: SourceSchema, table: TableSchema, kind: str,
                  columns_written: Iterable[str] = (), columns_omitted: Optional[Iterable[str]] = None,
                  columns_updated: Optional[Iterable[str]] = None) -> List[Hazard]:
    """The hazards of one ``kind`` of write to ``table``.

    Args:
      schema: the source schema (for foreign keys of other tables).
      table: the written table, from ``schema``.
      kind: one of WRITE_KINDS (``upsert`` is INSERT ... ON DUPLICATE KEY UPDATE).
      columns_written: the columns the statement gives values for: an
        INSERT's column list, an UPDATE's SET targets. A column given NULL or
        0 for an AUTO_INCREMENT key generates a value: pass it as omitted.
      columns_omitted: for inserts, the table's columns the statement leaves
        to their defaults; None means every column not written.
      columns_updated: for an upsert, the ON DUPLICATE KEY UPDATE targets
        (the columns the update path writes); None means ``columns_written``.
    """
    if kind not in WRITE_KINDS:
        raise ValueError(f'unknown write kind {kind!r}; use one of {", ".join(WRITE_KINDS)}')
    written = _folded(columns_written)
    if columns_omitted is None:
        omitted = {c.name.lower() for c in table.columns} - written
    else:
        omitted = _folded(columns_omitted)
    updated = written if columns_updated is None else _folded(columns_updated)
    hazards: List[Hazard] = []

    for event in _EVENTS[kind]:
        for trigger in table.triggers_for(event):
            modifies_row = trigger.timing == 'BEFORE' and event in ('INSERT', 'UPDATE')
            detail = f'{trigger.timing} {event} trigger {trigger.name} on {table.qualified}'
            if trigger.writes:
                detail += ' writes ' + ', '.join(f'{db}.{name}' for db, name in trigger.writes)
            if trigger.calls:
                detail += ' and calls ' + ', '.join(trigger.calls) + ' (writes unknown)'
            if modifies_row:
                detail += '; it may change the row before it is written'
            reached = _reach(schema, trigger.writes)
            if len(reached) > len(trigger.writes):
                detail += '; through their triggers and foreign keys also ' + ', '.join(
                    f'{db}.{name}' for db, name in reached[len(trigger.writes):])
            hazards.append(Hazard('trigger', detail, reached, not modifies_row))

    if kind in ('delete', 'replace'):
        for detail, reached in _cascades(schema, table, True, set()):
            note = ' (REPLACE deletes the conflicting row)' if kind == 'replace' else ''
            hazards.append(Hazard('cascade', detail + note, reached, True))
    if kind in ('update', 'upsert'):
        for detail, reached in _cascades(schema, table, False,
                                         written if kind == 'update' else updated):
            hazards.append(Hazard('cascade', detail, reached, True))

    if kind in ('upsert', 'replace', 'insert_ignore') and table.unique_keys:
        keys = '; '.join('(' + ', '.join(key) + ')' for key in table.unique_keys)
        hazards.append(Hazard(
            'secondary-unique-key',
            f'{kind.upper().replace("_", " ")} on {table.qualified}, which has UNIQUE key(s) '
            f'{keys} besides the primary key: the conflict may hit another row'))

    if kind in _INSERTS:
        for column in table.columns:
            if column.name.lower() not in omitted or column.generated is not None:
                continue
            if column.default_kind == 'clock':
                hazards.append(Hazard('clock-default', f'{table.qualified}.{column.name} '
                                      f'omitted: DEFAULT {column.default} is the server clock'))
            elif column.default_kind == 'expression':
                hazards.append(Hazard('expression-default', f'{table.qualified}.{column.name} '
                                      f'omitted: DEFAULT ({column.default})'))
            if column.auto_increment:
                hazards.append(Hazard('auto-increment', f'{table.qualified}.{column.name} '
                                      f'omitted: AUTO_INCREMENT assigns it'))

    if kind in ('update', 'upsert'):
        targets = written if kind == 'update' else updated
        for column in table.columns:
            if column.on_update_clock and column.name.lower() not in targets:
                hazards.append(Hazard('on-update-clock', f'{table.qualified}.{column.name} is '
                                      f'ON UPDATE CURRENT_TIMESTAMP and the statement does not '
                                      f'set it'))

    if kind in _INSERTS or kind == 'update':
        for column in table.columns:
            if column.generated is None:
                continue
            if kind == 'update':
                reads = generated_dependencies(column.generated)
                if reads is not None and not reads & written:
                    continue
            hazards.append(Hazard('generated-column', f'{table.qualified}.{column.name} is '
                                  f'GENERATED ALWAYS AS ({column.generated}) '
                                  f'{"STORED" if column.stored else "VIRTUAL"}'))
    return hazards
