"""Readers of a source schema: a schema file, or the source's
``information_schema`` over a read-only SQLAlchemy connection.

Both give the same :class:`~changeflow.schema.model.SourceSchema` for the same
database (tests/test_schema_readers.py checks it against a real MariaDB).
Indexes and foreign keys are ordered by name, triggers by event, timing and
firing order.
"""

from typing import Dict, Iterable, List, Optional, Tuple

from sqlalchemy import bindparam, text

from changeflow.schema import ddl
from changeflow.schema.ddl import DdlError
from changeflow.schema.model import (
    Column, ForeignKey, Index, SourceSchema, TableSchema, Trigger, TRIGGER_EVENTS,
    TRIGGER_TIMINGS)

__all__ = ['read_schema_file', 'read_schema_text', 'read_information_schema', 'DdlError',
           'with_trigger', 'ordered']

SYSTEM_DATABASES = ('information_schema', 'mysql', 'performance_schema', 'sys')

# Statements of a dump that carry no table definition.
_SKIPPED = {('SET',), ('LOCK',), ('UNLOCK',), ('INSERT',), ('REPLACE',), ('COMMIT',),
            ('START',), ('BEGIN',), ('SELECT',)}
# Schema objects that are not tables: a dump holds them, the schema does not.
_NOT_TABLES = ('VIEW', 'PROCEDURE', 'FUNCTION', 'EVENT', 'SEQUENCE', 'USER', 'ROLE', 'SERVER')


def ordered(table: TableSchema) -> TableSchema:
    """The table with indexes and foreign keys sorted by name and triggers in
    firing order: the order both readers give."""
    return table._replace(
        indexes=tuple(sorted(table.indexes, key=lambda i: i.name)),
        foreign_keys=tuple(sorted(table.foreign_keys, key=lambda f: f.name)),
        triggers=tuple(sorted(table.triggers, key=lambda t: (
            TRIGGER_EVENTS.index(t.event), TRIGGER_TIMINGS.index(t.timing)))))


def with_trigger(table: TableSchema, trigger: Trigger) -> TableSchema:
    """The table with ``trigger`` added after those of its event and timing
    (a trigger of the same name is replaced)."""
    kept = tuple(t for t in table.triggers if t.name != trigger.name)
    return ordered(table._replace(triggers=kept + (trigger,)))


def _words(statement: str) -> Tuple[str, ...]:
    return ddl.leading_words(statement, 16)


_OBJECTS = ('TABLE', 'TRIGGER') + _NOT_TABLES


def _object(words: Tuple[str, ...]) -> Optional[str]:
    """The kind of object a CREATE/DROP statement names: its first object word."""
    return next((word for word in words[1:] if word in _OBJECTS), None)


def read_schema_text(text: str, database: Optional[str] = None,
                     lower_case_table_names: int = 0) -> SourceSchema:
    """Reads ``mysqldump``/``mariadb-dump --no-data --triggers`` output, or
    ``SHOW CREATE TABLE`` / ``SHOW CREATE TRIGGER`` text (statements ended by
    ``;`` or under ``DELIMITER``).

    ``USE db`` statements set the database of unqualified names (``database``
    before the first). Views, routines and events are skipped (they hold no
    rows); any other statement that is not understood raises DdlError naming
    it, so a schema is never silently partial.
    """
    schema = SourceSchema((), lower_case_table_names)
    current = database
    for statement in ddl.split_statements(text):
        words = _words(statement)
        if not words or words[:1] in _SKIPPED:
            continue
        try:
            if words[0] == 'USE':
                cur = ddl.Tokens(ddl.unwrap_comments(statement))
                cur.expect('USE')
                current = cur.name()
            elif words[0] in ('CREATE', 'ALTER') and words[1:2] in (('DATABASE',), ('SCHEMA',)):
                name, charset, collation, _ = ddl.parse_database_options(statement, current)
                if charset is not None:
                    schema = schema.with_database(name, charset, collation)
            elif words[0] == 'ALTER' and 'KEYS' in words and (
                    'DISABLE' in words or 'ENABLE' in words):
                continue  # ALTER TABLE t DISABLE KEYS
            elif words[0] == 'CREATE' and _object(words) == 'TRIGGER':
                ref, trigger, _, _ = ddl.parse_create_trigger(statement, current)
                table = schema.table(*ref)
                if table is None:
                    raise DdlError(f'trigger {trigger.name} is on {ref[0]}.{ref[1]}, '
                                   f'which the file does not define before it')
                schema = schema.with_table(with_trigger(table, trigger))
            elif words[0] == 'CREATE' and _object(words) == 'TABLE':
                created = ddl.parse_create_table(statement, current, schema.database_default)
                if created.select is not None:
                    raise DdlError(f'{".".join(created.ref)}: CREATE TABLE ... SELECT in a '
                                   f'schema file: its columns come from the query')
                if created.like is not None:
                    source = schema.table(*created.like)
                    if source is None:
                        raise DdlError(f'{".".join(created.ref)}: LIKE {".".join(created.like)}'
                                       f', which the file does not define before it')
                    table = source._replace(database=created.ref[0], name=created.ref[1],
                                            foreign_keys=(), triggers=())
                else:
                    table = created.table
                if not created.temporary:
                    schema = schema.with_table(ordered(table))
            elif words[0] == 'DROP' and words[1:2] in (('TABLE',), ('TEMPORARY',)):
                cur = ddl.Tokens(ddl.unwrap_comments(statement))
                cur.expect('DROP')
                cur.accept('TEMPORARY')
                cur.expect('TABLE')
                cur.accept('IF', 'EXISTS')
                for part in cur.split():
                    schema = schema.without(*part.qualified(current))
            elif words[0] in ('CREATE', 'DROP') and _object(words) in _NOT_TABLES:
                continue
            elif words[0] == 'DROP' and _object(words) == 'TRIGGER':
                continue  # a dump drops a trigger only before re-creating it
            else:
                raise DdlError('not a schema statement')
        except DdlError as error:
            raise DdlError(f'{error} in {_excerpt(statement)}') from None
        except Exception as error:  # a reader bug: still a DdlError naming the statement
            raise DdlError(f'internal error {type(error).__name__}: {error} in '
                           f'{_excerpt(statement)}') from None
    return schema


def _excerpt(statement: str) -> str:
    flat = ' '.join(statement.split())
    return repr(flat if len(flat) <= 100 else flat[:97] + '...')


def read_schema_file(path: str, database: Optional[str] = None,
                     lower_case_table_names: int = 0) -> SourceSchema:
    """:func:`read_schema_text` of a UTF-8 file."""
    with open(path, encoding='utf-8') as f:
        return read_schema_text(f.read(), database, lower_case_table_names)


# --- information_schema ---------------------------------------------------

_TABLES = """
SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES
WHERE TABLE_SCHEMA IN :databases AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')
"""
_SCHEMATA = """
SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME
FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN :databases
"""
_COLUMNS = """
SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.COLUMN_DEFAULT, c.IS_NULLABLE,
       c.COLUMN_TYPE, c.CHARACTER_SET_NAME, c.COLLATION_NAME, c.EXTRA,
       c.GENERATION_EXPRESSION
FROM information_schema.COLUMNS c
JOIN information_schema.TABLES t
  ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME
WHERE c.TABLE_SCHEMA IN :databases AND t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')
ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION
"""
_STATISTICS = """
SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME
FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA IN :databases
ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX
"""
_FOREIGN_KEYS = """
SELECT k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.COLUMN_NAME,
       k.REFERENCED_TABLE_SCHEMA, k.REFERENCED_TABLE_NAME, k.REFERENCED_COLUMN_NAME,
       r.DELETE_RULE, r.UPDATE_RULE
FROM information_schema.KEY_COLUMN_USAGE k
JOIN information_schema.REFERENTIAL_CONSTRAINTS r
  ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME
 AND r.TABLE_NAME = k.TABLE_NAME
WHERE k.TABLE_SCHEMA IN :databases AND k.REFERENCED_TABLE_NAME IS NOT NULL
ORDER BY k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION
"""
_TRIGGERS = """
SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, TRIGGER_NAME, ACTION_TIMING,
       EVENT_MANIPULATION, ACTION_STATEMENT
FROM information_schema.TRIGGERS
WHERE EVENT_OBJECT_SCHEMA IN :databases
ORDER BY EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, ACTION_ORDER
"""


def _column(row, mariadb: bool) -> Column:
    (_, _, name, default, is_nullable, column_type, charset, collation, extra,
     generation) = row
    extra = (extra or '').lower()
    nullable = is_nullable == 'YES'
    generated = ddl.canonical_expression(generation) if generation and 'generated' in extra \
        else None
    if mariadb or default is None or 'default_generated' in extra:
        kind, value = ddl.classify_default(default)
    elif column_type.startswith('bit') and default.startswith("b'"):
        kind, value = ddl.classify_default(default)
    else:  # MySQL 8 writes literal defaults unquoted
        kind, value = 'literal', default
    if generated is not None:  # MariaDB reports 'NULL': a generated column has no default
        kind, value = 'none', None
    elif kind == 'none' and nullable:
        kind = 'null'
    base = ddl.type_base(ddl.normalize_type(column_type))
    if base not in ddl.CHARACTER_TYPES:
        charset = collation = None
    return Column(name, ddl.normalize_type(column_type), nullable, value, kind,
                  'on update' in extra, 'auto_increment' in extra, generated,
                  generated is not None and 'stored' in extra,
                  collation.lower() if collation else None, charset.lower() if charset else None)


def read_information_schema(connection, databases: Optional[Iterable[str]] = None
                            ) -> SourceSchema:
    """Reads the tables of ``databases`` (default: every database but the
    system ones) from ``information_schema`` over an SQLAlchemy Connection or
    Engine, and the server's ``@@lower_case_table_names``.

    Only SELECTs run; give it a connection whose user can read nothing else.
    MariaDB (10.2.7 and later) writes COLUMN_DEFAULT as SQL text; MySQL 8 is
    read by its rules (literals unquoted, DEFAULT_GENERATED for expressions).
    """
    if hasattr(connection, 'connect') and not hasattr(connection, 'execute'):
        with connection.connect() as conn:
            return read_information_schema(conn, databases)
    lower, version = connection.execute(
        text('SELECT @@lower_case_table_names, VERSION()')).one()
    mariadb = 'mariadb' in str(version).lower()
    if databases is None:
        databases = [row[0] for row in connection.execute(
            text('SELECT SCHEMA_NAME FROM information_schema.SCHEMATA')) if
            row[0].lower() not in SYSTEM_DATABASES]
    databases = list(databases)
    if not databases:
        return SourceSchema((), int(lower))

    def query(sql):
        statement = text(sql).bindparams(bindparam('databases', expanding=True))
        return connection.execute(statement, {'databases': databases}).all()

    collations = {(row[0], row[1]): row[2].lower() if row[2] else None for row in query(_TABLES)}
    columns: Dict[Tuple[str, str], List[Column]] = {}
    for row in query(_COLUMNS):
        columns.setdefault((row[0], row[1]), []).append(_column(row, mariadb))
    primary: Dict[Tuple[str, str], List[str]] = {}
    indexes: Dict[Tuple[str, str], Dict[str, Tuple[bool, List[str]]]] = {}
    for schema_name, table, index, non_unique, column in query(_STATISTICS):
        if (schema_name, table) not in columns:
            continue
        if index == 'PRIMARY':
            primary.setdefault((schema_name, table), []).append(column)
        else:
            entry = indexes.setdefault((schema_name, table), {}).setdefault(
                index, (not int(non_unique), []))
            entry[1].append(column if column is not None else '(expression)')
    foreign: Dict[Tuple[str, str], Dict[str, list]] = {}
    for schema_name, table, name, column, ref_db, ref_table, ref_column, on_delete, on_update \
            in query(_FOREIGN_KEYS):
        entry = foreign.setdefault((schema_name, table), {}).setdefault(
            name, [[], ref_db, ref_table, [], on_delete, on_update])
        entry[0].append(column)
        entry[3].append(ref_column)
    triggers: Dict[Tuple[str, str], List[Trigger]] = {}
    for schema_name, table, name, timing, event, body in query(_TRIGGERS):
        writes, calls = ddl.trigger_writes(body, schema_name)
        triggers.setdefault((schema_name, table), []).append(
            Trigger(name, timing.upper(), event.upper(), body.strip(), writes, calls))
    tables = []
    for ref, cols in columns.items():
        key = tuple(primary.get(ref, ()))
        tables.append(ordered(TableSchema(
            ref[0], ref[1], tuple(cols), key,
            tuple(Index(name, tuple(c), unique)
                  for name, (unique, c) in indexes.get(ref, {}).items()),
            tuple(ForeignKey(name, tuple(c), ref_db, ref_table, tuple(rc), on_delete.upper(),
                             on_update.upper())
                  for name, (c, ref_db, ref_table, rc, on_delete, on_update)
                  in foreign.get(ref, {}).items()),
            tuple(triggers.get(ref, ())), collations.get(ref),
            ddl.charset_of(collations[ref]) if collations.get(ref) else None)))
    defaults = [(name, charset.lower() if charset else None, collation.lower() if collation
                 else None) for name, charset, collation in query(_SCHEMATA)]
    return SourceSchema(tables, int(lower), defaults)
