"""The source schema: immutable records of tables, columns, keys, foreign keys
and triggers, as MySQL/MariaDB define them.

Translation asks the schema what a statement leaves to the server (defaults,
clocks, generated columns, triggers, cascades, unique keys); the schema never
asks translation. Every record is a NamedTuple of plain values, so schemas
compare with ``==`` (the dump reader and the ``information_schema`` reader are
tested to give equal models) and pickle deterministically.

Conventions, shared by both readers:

- Column types are MySQL type text in lower case without display widths
  (``'int unsigned'``, ``'varchar(20)'``, ``"enum('a','b')"``,
  ``'decimal(10,2)'``), except ``tinyint(1)`` (a boolean to applications) and
  widths of ``zerofill`` columns, which keep theirs.
- Defaults: ``default_kind`` is ``'none'`` (no default), ``'literal'``
  (``default`` is the value as text: ``'active'``, ``'0.00'``, a BIT literal
  as its decimal value), ``'null'``, ``'clock'`` (``CURRENT_TIMESTAMP`` /
  ``NOW()`` and their synonyms; ``default`` is ``'current_timestamp'`` or
  ``'current_timestamp(6)'``) or ``'expression'`` (``default`` is the
  expression's text, as sqlglot renders it for MySQL). A nullable column
  without a DEFAULT clause has default NULL, as MySQL gives it.
- Column names are case-insensitive everywhere; table and database names
  follow ``lower_case_table_names`` (0: case-sensitive, as on Linux; 1 and 2:
  compared in lower case).
"""

from typing import Dict, Iterable, NamedTuple, Optional, Tuple

__all__ = ['Column', 'Index', 'ForeignKey', 'Trigger', 'TableSchema', 'SourceSchema',
           'DEFAULT_KINDS', 'FK_ACTIONS', 'TRIGGER_EVENTS', 'TRIGGER_TIMINGS']

DEFAULT_KINDS = ('none', 'literal', 'null', 'clock', 'expression')
FK_ACTIONS = ('RESTRICT', 'CASCADE', 'SET NULL', 'NO ACTION', 'SET DEFAULT')
TRIGGER_EVENTS = ('INSERT', 'UPDATE', 'DELETE')
TRIGGER_TIMINGS = ('BEFORE', 'AFTER')


class Column(NamedTuple):
    """One column. ``generated`` is the expression of a generated column
    (``stored`` says STORED/PERSISTENT rather than VIRTUAL); ``charset`` and
    ``collation`` are set for character columns only (inherited table
    defaults included)."""
    name: str
    type: str
    nullable: bool = True
    default: Optional[str] = None
    default_kind: str = 'none'
    on_update_clock: bool = False
    auto_increment: bool = False
    generated: Optional[str] = None
    stored: bool = False
    collation: Optional[str] = None
    charset: Optional[str] = None

    @property
    def case_insensitive(self) -> bool:
        """Whether comparisons on this column fold case (a ``_ci`` collation)."""
        return bool(self.collation) and self.collation.endswith('_ci')


class Index(NamedTuple):
    """A secondary index (the primary key is ``TableSchema.primary_key``)."""
    name: str
    columns: Tuple[str, ...]
    unique: bool


class ForeignKey(NamedTuple):
    """A foreign key of the table that holds it (the child). Actions are
    upper case, ``'RESTRICT'`` when the DDL names none."""
    name: str
    columns: Tuple[str, ...]
    ref_database: str
    ref_table: str
    ref_columns: Tuple[str, ...]
    on_delete: str = 'RESTRICT'
    on_update: str = 'RESTRICT'


class Trigger(NamedTuple):
    """A row trigger. ``writes`` are the (database, table) pairs its body
    INSERTs into, REPLACEs, UPDATEs or DELETEs from; ``calls`` the procedures
    it CALLs (whose writes are unknown)."""
    name: str
    timing: str                   # BEFORE | AFTER
    event: str                    # INSERT | UPDATE | DELETE
    body: str
    writes: Tuple[Tuple[str, str], ...] = ()
    calls: Tuple[str, ...] = ()


class TableSchema(NamedTuple):
    """One table: columns in table order, primary key (may be empty),
    secondary indexes, foreign keys it holds, triggers (in firing order per
    event and timing), and the table's default collation and charset (what
    a character column added without one gets)."""
    database: str
    name: str
    columns: Tuple[Column, ...]
    primary_key: Tuple[str, ...] = ()
    indexes: Tuple[Index, ...] = ()
    foreign_keys: Tuple[ForeignKey, ...] = ()
    triggers: Tuple[Trigger, ...] = ()
    collation: Optional[str] = None
    charset: Optional[str] = None

    @property
    def qualified(self) -> str:
        return f'{self.database}.{self.name}'

    @property
    def unique_keys(self) -> Tuple[Tuple[str, ...], ...]:
        """The UNIQUE keys besides the primary key, as tuples of column names."""
        return tuple(index.columns for index in self.indexes if index.unique)

    @property
    def column_names(self) -> Tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> Optional[Column]:
        """The column of that name, compared case-insensitively, or None."""
        folded = name.lower()
        for column in self.columns:
            if column.name.lower() == folded:
                return column
        return None

    def triggers_for(self, event: str, timing: Optional[str] = None) -> Tuple[Trigger, ...]:
        """The triggers fired by ``event`` (INSERT/UPDATE/DELETE), optionally of one timing."""
        return tuple(t for t in self.triggers
                     if t.event == event.upper() and (timing is None or t.timing == timing.upper()))


class SourceSchema:
    """The tables of a source server, looked up by (database, name).

    Immutable: the ``with_*``/``without*`` methods return a new schema.
    ``lower_case_table_names`` is the server's setting: 0 compares names as
    given; 1 and 2 compare them in lower case. ``databases`` are (name,
    charset, collation) triples: each database's defaults, which a table
    created without its own inherits.
    """

    __slots__ = ('_tables', 'lower_case_table_names', '_referencing', '_databases')

    def __init__(self, tables: Iterable[TableSchema] = (), lower_case_table_names: int = 0,
                 databases: Iterable[Tuple[str, Optional[str], Optional[str]]] = ()):
        if lower_case_table_names not in (0, 1, 2):
            raise ValueError(f'lower_case_table_names must be 0, 1 or 2, '
                             f'got {lower_case_table_names!r}')
        self.lower_case_table_names = lower_case_table_names
        self._tables: Dict[Tuple[str, str], TableSchema] = {}
        for table in tables:
            self._tables[self._key(table.database, table.name)] = table
        self._databases = {self._key(name, '')[0]: (name, charset, collation)
                           for name, charset, collation in databases}
        self._referencing = None  # (database, name) key -> ((child, fk), ...), built on first use

    def _key(self, database: str, name: str) -> Tuple[str, str]:
        if self.lower_case_table_names:
            return database.lower(), name.lower()
        return database, name

    @property
    def tables(self) -> Tuple[TableSchema, ...]:
        """Every table, sorted by (database, name)."""
        return tuple(sorted(self._tables.values(), key=lambda t: (t.database, t.name)))

    def table(self, database: str, name: str) -> Optional[TableSchema]:
        """The table, or None when the schema does not hold it."""
        return self._tables.get(self._key(database, name))

    def __contains__(self, ref) -> bool:
        return self.table(*ref) is not None

    def __len__(self) -> int:
        return len(self._tables)

    @property
    def databases(self) -> Tuple[Tuple[str, Optional[str], Optional[str]], ...]:
        """(name, default charset, default collation) of every known database, sorted."""
        return tuple(sorted(self._databases.values()))

    def database_default(self, name: str) -> Tuple[Optional[str], Optional[str]]:
        """(charset, collation) a table created in database ``name`` without
        its own gets; (None, None) when not known."""
        entry = self._databases.get(self._key(name, '')[0])
        return (entry[1], entry[2]) if entry else (None, None)

    def __eq__(self, other) -> bool:
        return (isinstance(other, SourceSchema) and self.tables == other.tables
                and self.lower_case_table_names == other.lower_case_table_names
                and self.databases == other.databases)

    def __hash__(self):
        return hash(self.tables)

    def __repr__(self) -> str:
        return f'SourceSchema({", ".join(t.qualified for t in self.tables)})'

    def __reduce__(self):
        return SourceSchema, (self.tables, self.lower_case_table_names, self.databases)

    def _copy(self, tables) -> 'SourceSchema':
        return SourceSchema(tables, self.lower_case_table_names, self._databases.values())

    def with_database(self, name: str, charset: Optional[str], collation: Optional[str]
                      ) -> 'SourceSchema':
        """A schema that knows database ``name``'s defaults."""
        databases = dict(self._databases)
        databases[self._key(name, '')[0]] = (name, charset, collation)
        return SourceSchema(self._tables.values(), self.lower_case_table_names,
                            databases.values())

    def without_database(self, name: str) -> 'SourceSchema':
        """A schema without database ``name`` and its tables."""
        key = self._key(name, '')[0]
        databases = {k: v for k, v in self._databases.items() if k != key}
        return SourceSchema((t for k, t in self._tables.items() if k[0] != key),
                            self.lower_case_table_names, databases.values())

    def same_name(self, a: Tuple[str, str], b: Tuple[str, str]) -> bool:
        """Whether two (database, table) references name the same table."""
        return self._key(*a) == self._key(*b)

    def with_table(self, table: TableSchema) -> 'SourceSchema':
        """A schema where ``table`` replaces any table of the same name."""
        tables = dict(self._tables)
        tables[self._key(table.database, table.name)] = table
        return self._copy(tables.values())

    def without(self, database: str, name: str) -> 'SourceSchema':
        tables = dict(self._tables)
        tables.pop(self._key(database, name), None)
        return self._copy(tables.values())

    def referencing(self, database: str, name: str) -> Tuple[Tuple[TableSchema, ForeignKey], ...]:
        """The foreign keys that reference this table, with the (child) table
        holding each: what a DELETE or a key UPDATE here may cascade to. A
        self-referencing key is included (it reaches other rows of the same
        table)."""
        if self._referencing is None:
            index: Dict[Tuple[str, str], list] = {}
            for table in self.tables:
                for fk in table.foreign_keys:
                    index.setdefault(self._key(fk.ref_database, fk.ref_table), []).append(
                        (table, fk))
            self._referencing = {key: tuple(pairs) for key, pairs in index.items()}
        return self._referencing.get(self._key(database, name), ())
