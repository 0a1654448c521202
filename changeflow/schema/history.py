"""The source schema along the log: DDL applied in log order, the schema
kept per position (as Debezium keeps its schema history), and the effects a
replica follows.

``SchemaHistory.apply(ddl, database, position)`` returns effect records:
:class:`CreateTable`, :class:`DropTable`, :class:`RenameTable`,
:class:`AddColumn`, :class:`DropColumn`, :class:`RenameColumn`,
:class:`ModifyColumn`, :class:`SchemaChanged` (keys, foreign keys, triggers,
defaults: nothing for the replica's rows, but translation changes),
:class:`NeedsResync` (the replica's rows of that table can no longer be known
from the log: CREATE ... SELECT, a type change that may lose data, a column
whose existing rows take values the log does not carry), :class:`TemporaryTable`
and :class:`UnknownDdl`. DDL is never silently ignored: what the history does
not understand leaves the schema as it was and returns UnknownDdl naming the
table when one can be found. An empty list means understood, nothing to follow
(``TRUNCATE``, table options, ``CREATE DATABASE``).

Statements are translated against ``schema_at(their position)``.
"""

import bisect
import re
from typing import List, NamedTuple, Optional, Sequence, Tuple

import sqlglot
from sqlglot import exp

from changeflow.schema import ddl
from changeflow.schema.ddl import DdlError, Tokens
from changeflow.schema.model import Column, Index, SourceSchema, TableSchema
from changeflow.schema.readers import ordered, with_trigger

__all__ = ['SchemaHistory', 'CreateTable', 'DropTable', 'RenameTable', 'AddColumn', 'DropColumn',
           'RenameColumn', 'ModifyColumn', 'SchemaChanged', 'NeedsResync', 'TemporaryTable',
           'UnknownDdl', 'apply_ddl']

TableRef = Tuple[str, str]


class CreateTable(NamedTuple):
    table: TableRef
    schema: TableSchema
    kind = 'create-table'


class DropTable(NamedTuple):
    table: TableRef
    kind = 'drop-table'


class RenameTable(NamedTuple):
    """A rename. A replicated name may appear from a table the replica does
    not hold (``RENAME TABLE t TO t_old, t_new TO t``, as online schema
    change tools do): the replica then needs that table's rows."""
    table: TableRef
    new_table: TableRef
    kind = 'rename-table'


class AddColumn(NamedTuple):
    """A new column; existing rows hold ``fill`` (text, None for NULL): its
    literal default, or the type's implicit value for NOT NULL without one."""
    table: TableRef
    column: Column
    fill: Optional[str] = None
    kind = 'add-column'


class DropColumn(NamedTuple):
    table: TableRef
    column: str
    kind = 'drop-column'


class RenameColumn(NamedTuple):
    table: TableRef
    column: str
    new_name: str
    kind = 'rename-column'


class ModifyColumn(NamedTuple):
    """A column's new definition (named as after any rename); its values are
    kept unless a NeedsResync for the table comes with it."""
    table: TableRef
    column: Column
    kind = 'modify-column'


class SchemaChanged(NamedTuple):
    table: TableRef
    detail: str
    kind = 'schema-changed'


class NeedsResync(NamedTuple):
    table: TableRef
    reason: str
    kind = 'needs-resync'


class TemporaryTable(NamedTuple):
    """A TEMPORARY table: seen only by its connection, where it hides a table
    of the same name; its writes must not be taken for the real table's."""
    table: TableRef
    dropped: bool
    kind = 'temporary-table'


class UnknownDdl(NamedTuple):
    table: Optional[TableRef]
    detail: str
    kind = 'unknown-ddl'


# --- data loss of a type change --------------------------------------------

_INT_RANK = {'tinyint': 1, 'smallint': 2, 'mediumint': 3, 'int': 4, 'bigint': 5}
_INT_DIGITS = {1: 3, 2: 5, 3: 8, 4: 10, 5: 20}
_TEXT_BYTES = {'tinytext': 255, 'text': 65535, 'mediumtext': 16777215, 'longtext': 4294967295}
_BLOB_BYTES = {'tinyblob': 255, 'blob': 65535, 'mediumblob': 16777215, 'longblob': 4294967295}
_CHAR_BYTES = {'utf8mb4': 4, 'utf8mb3': 3, 'ucs2': 2, 'utf16': 4, 'utf32': 4}
_SUPERSETS = {'utf8mb4': {'utf8mb3', 'ascii', 'latin1', 'ucs2', 'utf16', 'utf32'},
              'utf8mb3': {'ascii'}, 'latin1': {'ascii'}}
_TEMPORAL = ('date', 'datetime', 'timestamp', 'time')


def _args(type_text: str) -> List[str]:
    match = re.search(r'\((.*)\)', type_text)
    return [] if not match else re.findall(r"'(?:[^']|'')*'|[^,]+", match.group(1))


def _chars(column: Column) -> Optional[int]:
    base = ddl.type_base(column.type)
    if base in ('char', 'varchar'):
        return int(_args(column.type)[0])
    if base in _TEXT_BYTES:
        return _TEXT_BYTES[base] // _CHAR_BYTES.get(column.charset or '', 1)
    return None


def _binary_bytes(column: Column) -> Optional[int]:
    base = ddl.type_base(column.type)
    if base in ('binary', 'varbinary'):
        return int(_args(column.type)[0]) if _args(column.type) else 1
    return _BLOB_BYTES.get(base)


def data_loss(old: Column, new: Column) -> Optional[str]:
    """Why changing ``old`` to ``new`` may change stored values, or None when
    every old value is kept as it is. Conservative: a change not known to be
    safe is reported."""
    if new.generated != old.generated or new.stored != old.stored:
        if new.generated or old.generated:
            return 'the generated expression changed'
    if old.nullable and not new.nullable:
        return 'NULLs become the implicit default of a NOT NULL column'
    if old.type == new.type and (old.charset == new.charset or None in (old.charset, new.charset)):
        return None
    ob, nb = ddl.type_base(old.type), ddl.type_base(new.type)
    o_unsigned, n_unsigned = 'unsigned' in old.type, 'unsigned' in new.type
    lost = f'{old.type} -> {new.type} may change values'
    if ob in _INT_RANK:
        o = _INT_RANK[ob]
        if nb in _INT_RANK:
            n = _INT_RANK[nb]
            if o_unsigned and n_unsigned or not o_unsigned and not n_unsigned:
                return None if n >= o else lost
            if o_unsigned:  # to signed: needs a wider type
                return None if n > o else lost
            return lost  # signed to unsigned: negatives are lost
        if nb == 'decimal':
            precision, scale = map(int, _args(new.type))
            return None if precision - scale >= _INT_DIGITS[o] else lost
        if nb == 'double':
            return None if o <= 4 else lost
        return lost
    if ob == 'decimal' and nb == 'decimal':
        (p, s), (p2, s2) = map(int, _args(old.type)), map(int, _args(new.type))
        return None if s2 >= s and p2 - s2 >= p - s else lost
    if ob == 'float' and nb == 'double' and not _args(old.type):
        return None
    if ob in ('char', 'varchar') + tuple(_TEXT_BYTES) and nb in ('varchar',) + tuple(_TEXT_BYTES) + (
            'char',):
        if old.charset != new.charset and old.charset not in _SUPERSETS.get(new.charset, ()):
            return f'{old.charset} -> {new.charset} may change characters'
        if nb == 'char' and ob != 'char':
            return f'{old.type} -> {new.type} strips trailing spaces'
        return None if _chars(new) >= _chars(old) else lost
    if ob in ('binary', 'varbinary') + tuple(_BLOB_BYTES) and nb in (
            'varbinary',) + tuple(_BLOB_BYTES):
        return None if _binary_bytes(new) >= _binary_bytes(old) else lost
    if ob == 'bit' and nb == 'bit':
        return None if int(_args(new.type)[0]) >= int(_args(old.type)[0]) else lost
    if ob in ('enum', 'set') and nb == ob:
        return None if set(_args(old.type)) <= set(_args(new.type)) else lost
    if ob in _TEMPORAL and nb in _TEMPORAL:
        o_fsp = int((_args(old.type) or ['0'])[0])
        n_fsp = int((_args(new.type) or ['0'])[0])
        if ob == nb or (ob == 'date' and nb == 'datetime'):
            return None if n_fsp >= o_fsp else lost
    return lost


def _implicit_fill(column: Column) -> Tuple[Optional[str], Optional[str]]:
    """(value existing rows take, or None) and, when the log cannot say, why."""
    if column.generated is not None:
        return None, f'generated column {column.name}: existing rows compute it'
    if column.auto_increment:
        return None, f'AUTO_INCREMENT column {column.name}: existing rows are numbered'
    if column.default_kind in ('clock', 'expression'):
        return None, f'column {column.name} DEFAULT {column.default}: evaluated for existing rows'
    if column.default_kind == 'literal':
        return column.default, None
    if column.nullable:
        return None, None
    base = ddl.type_base(column.type)
    if base in _INT_RANK or base in ('decimal', 'float', 'double', 'bit', 'year'):
        return '0', None
    if base in ('char', 'varchar', 'set') + tuple(_TEXT_BYTES):
        return '', None
    if base == 'enum':
        return _args(column.type)[0][1:-1].replace("''", "'"), None
    return None, f'NOT NULL column {column.name} ({column.type}) without a default: existing rows ' \
                 f'hold its implicit value'


# --- applying DDL -------------------------------------------------------------

def _fold(name: str) -> str:
    return name.lower()


def _columns_replace(names: Sequence[str], old: str, new: Optional[str]) -> Tuple[str, ...]:
    out = []
    for name in names:
        if _fold(name) == _fold(old):
            if new is not None:
                out.append(new)
        else:
            out.append(name)
    return tuple(out)


def _rename_column_everywhere(schema: SourceSchema, table: TableSchema, old: str, new: str
                              ) -> Tuple[SourceSchema, TableSchema]:
    """Renames a column in the table's keys and in the foreign keys of every
    table (this one included) that reference it."""
    table = table._replace(
        primary_key=_columns_replace(table.primary_key, old, new),
        indexes=tuple(i._replace(columns=_columns_replace(i.columns, old, new))
                      for i in table.indexes),
        foreign_keys=tuple(f._replace(columns=_columns_replace(f.columns, old, new))
                           for f in table.foreign_keys))
    for child, _ in schema.referencing(table.database, table.name):
        if schema.same_name((child.database, child.name), (table.database, table.name)):
            child = table
        child = child._replace(foreign_keys=tuple(
            f._replace(ref_columns=_columns_replace(f.ref_columns, old, new))
            if schema.same_name((f.ref_database, f.ref_table), (table.database, table.name))
            else f for f in child.foreign_keys))
        if schema.same_name((child.database, child.name), (table.database, table.name)):
            table = child
        else:
            schema = schema.with_table(child)
    return schema, table


def _place(columns: Tuple[Column, ...], column: Column, position: Optional[str],
           replacing: Optional[str] = None) -> Tuple[Column, ...]:
    """Columns with ``column`` put where ``position`` says (None: in place of
    ``replacing``, or last; '': FIRST; a name: AFTER that column)."""
    index = None
    kept = []
    for i, c in enumerate(columns):
        if replacing is not None and _fold(c.name) == _fold(replacing):
            index = len(kept)
            continue
        kept.append(c)
    if position == '':
        index = 0
    elif position:
        for i, c in enumerate(kept):
            if _fold(c.name) == _fold(position):
                index = i + 1
                break
        else:
            raise DdlError(f'AFTER {position}: no such column')
    if index is None:
        index = len(kept)
    return tuple(kept[:index]) + (column,) + tuple(kept[index:])


def _position(cur: Tokens) -> Optional[str]:
    if cur.accept('FIRST'):
        return ''
    if cur.accept('AFTER'):
        return cur.name()
    return None


def _column_def(cur: Tokens, table: TableSchema):
    definition = ddl.parse_column(cur, table.charset, table.collation, table.database)
    position = _position(cur)
    if not cur.done():
        raise DdlError(f'cannot read {cur.rest()[:60]!r}')
    column = definition.column
    if definition.primary or definition.unique or definition.reference:
        raise DdlError(f'column {column.name}: inline keys in ALTER TABLE are not followed')
    return column, position


def _key_column(column: Column) -> Column:
    """A primary key column: NOT NULL, as MySQL makes it."""
    return column._replace(nullable=False, default_kind='none' if column.default_kind == 'null'
                           else column.default_kind)


class _Alter:
    """One ALTER TABLE statement applied clause by clause to a working copy."""

    def __init__(self, schema: SourceSchema, table: TableSchema):
        self.schema, self.table = schema, table
        self.ref = (table.database, table.name)
        self.effects: list = []

    def column(self, name: str) -> Column:
        column = self.table.column(name)
        if column is None:
            raise DdlError(f'{self.table.qualified} has no column {name}')
        return column

    def changed(self, detail: str):
        self.effects.append(SchemaChanged(self.ref, detail))

    def add_column(self, column: Column, position: Optional[str]):
        if self.table.column(column.name) is not None:
            raise DdlError(f'{self.table.qualified} already has a column {column.name}')
        self.table = self.table._replace(columns=_place(self.table.columns, column, position))
        fill, unknown = _implicit_fill(column)
        self.effects.append(AddColumn(self.ref, column, fill))
        if unknown:
            self.effects.append(NeedsResync(self.ref, unknown))

    def drop_column(self, name: str):
        column = self.column(name)
        table = self.table
        self.table = table._replace(
            columns=tuple(c for c in table.columns if c is not column),
            primary_key=_columns_replace(table.primary_key, name, None),
            indexes=tuple(i._replace(columns=_columns_replace(i.columns, name, None))
                          for i in table.indexes if _columns_replace(i.columns, name, None)),
            foreign_keys=tuple(f for f in table.foreign_keys
                               if _fold(name) not in map(_fold, f.columns)))
        self.effects.append(DropColumn(self.ref, column.name))

    def change_column(self, old_name: str, column: Column, position: Optional[str]):
        old = self.column(old_name)
        if _fold(old.name) in map(_fold, self.table.primary_key):
            column = _key_column(column)
        if _fold(column.name) != _fold(old.name) and self.table.column(column.name) is not None:
            raise DdlError(f'{self.table.qualified} already has a column {column.name}')
        if column.name != old.name:
            self.schema, self.table = _rename_column_everywhere(
                self.schema, self.table, old.name, column.name)
            self.effects.append(RenameColumn(self.ref, old.name, column.name))
        self.table = self.table._replace(
            columns=_place(self.table.columns, column, position, replacing=old.name))
        if column._replace(name=old.name) != old:
            self.effects.append(ModifyColumn(self.ref, column))
            loss = data_loss(old, column)
            if loss:
                self.effects.append(NeedsResync(self.ref, f'column {column.name}: {loss}'))

    def rename_column(self, old_name: str, new_name: str):
        old = self.column(old_name)
        self.schema, self.table = _rename_column_everywhere(self.schema, self.table, old.name,
                                                            new_name)
        self.table = self.table._replace(columns=tuple(
            c._replace(name=new_name) if c is old else c for c in self.table.columns))
        self.effects.append(RenameColumn(self.ref, old.name, new_name))

    def add_definition(self, definition):
        if definition.kind == 'column':
            raise DdlError('expected a key definition')
        if definition.kind == 'primary':
            for name in definition.primary:
                self.column(name)
            key = set(map(_fold, definition.primary))
            self.table = self.table._replace(primary_key=definition.primary, columns=tuple(
                _key_column(c) if _fold(c.name) in key else c for c in self.table.columns))
            self.changed(f'primary key ({", ".join(definition.primary)})')
        elif definition.kind == 'index':
            names = {_fold(i.name) for i in self.table.indexes}
            index = definition.index
            name = index.name or index.columns[0]
            while _fold(name) in names:
                name += '_2'
            self.table = self.table._replace(indexes=self.table.indexes + (
                index._replace(name=name),))
            self.changed(f'{"unique " if index.unique else ""}index {name} added')
        elif definition.kind == 'foreign':
            self.table = ddl.with_foreign_key(self.table, definition.foreign, definition.fk_index)
            self.changed(f'foreign key {self.table.foreign_keys[-1].name} added')
        else:
            self.changed(f'{definition.kind} added')

    def drop_index(self, name: str, if_exists: bool):
        if _fold(name) == 'primary':
            self.drop_primary()
            return
        kept = tuple(i for i in self.table.indexes if _fold(i.name) != _fold(name))
        if len(kept) == len(self.table.indexes):
            if if_exists:
                return
            raise DdlError(f'{self.table.qualified} has no index {name}')
        self.table = self.table._replace(indexes=kept)
        self.changed(f'index {name} dropped')

    def drop_primary(self):
        self.table = self.table._replace(primary_key=())
        self.changed('primary key dropped')

    def drop_foreign_key(self, name: str, if_exists: bool, constraint: bool = False):
        kept = tuple(f for f in self.table.foreign_keys if _fold(f.name) != _fold(name))
        if len(kept) == len(self.table.foreign_keys):
            if constraint:  # DROP CONSTRAINT: a CHECK or a UNIQUE key
                if any(_fold(i.name) == _fold(name) for i in self.table.indexes):
                    self.drop_index(name, if_exists)
                else:
                    self.changed(f'constraint {name} dropped')
                return
            if if_exists:
                return
            raise DdlError(f'{self.table.qualified} has no foreign key {name}')
        self.table = self.table._replace(foreign_keys=kept)
        self.changed(f'foreign key {name} dropped')

    def rename_table(self, new_ref: TableRef):
        moved = self.table._replace(database=new_ref[0], name=new_ref[1])
        self.schema = _move_table(self.schema, self.table, moved)
        self.table = moved
        self.effects.append(RenameTable(self.ref, new_ref))
        self.ref = new_ref


def _move_table(schema: SourceSchema, old: TableSchema, new: TableSchema) -> SourceSchema:
    """Removes ``old`` and re-points every foreign key that referenced it."""
    old_ref = (old.database, old.name)
    schema = schema.without(*old_ref)
    for child, _ in schema.referencing(*old_ref):
        child = child._replace(foreign_keys=tuple(
            f._replace(ref_database=new.database, ref_table=new.name)
            if schema.same_name((f.ref_database, f.ref_table), old_ref) else f
            for f in child.foreign_keys))
        schema = schema.with_table(child)
    new = new._replace(foreign_keys=tuple(
        f._replace(ref_database=new.database, ref_table=new.name)
        if schema.same_name((f.ref_database, f.ref_table), old_ref) else f
        for f in new.foreign_keys))
    return schema.with_table(new)


_NO_EFFECT_OPTIONS = {'AUTO_INCREMENT', 'COMMENT', 'ROW_FORMAT', 'KEY_BLOCK_SIZE',
                      'STATS_PERSISTENT', 'STATS_AUTO_RECALC', 'STATS_SAMPLE_PAGES',
                      'ALGORITHM', 'LOCK', 'FORCE', 'PACK_KEYS', 'CHECKSUM', 'TABLE_CHECKSUM',
                      'MAX_ROWS', 'MIN_ROWS', 'AVG_ROW_LENGTH', 'DELAY_KEY_WRITE', 'ENCRYPTED',
                      'ENCRYPTION_KEY_ID', 'PAGE_COMPRESSED', 'PAGE_COMPRESSION_LEVEL',
                      'TRANSACTIONAL', 'PAGE_CHECKSUM', 'IETF_QUOTES', 'INSERT_METHOD',
                      'STATS_SAMPLE_PAGES', 'SEQUENCE', 'COMPRESSION', 'ENGINE_ATTRIBUTE',
                      'AUTOEXTEND_SIZE', 'TABLESPACE', 'STORAGE', 'UNION', 'CONNECTION'}
_KEEPING_ENGINES = {'INNODB', 'MYISAM', 'ARIA', 'ROCKSDB', 'MEMORY', 'HEAP', 'XTRADB',
                    'TOKUDB', 'MYROCKS'}
_LOSING_PARTITION_OPS = {'DROP', 'TRUNCATE', 'EXCHANGE', 'DISCARD', 'IMPORT'}
_KEEPING_PARTITION_OPS = {'ADD', 'COALESCE', 'REORGANIZE', 'ANALYZE', 'CHECK', 'OPTIMIZE',
                          'REBUILD', 'REPAIR', 'REMOVE'}
_DEFINITION_WORDS = {'INDEX', 'KEY', 'UNIQUE', 'PRIMARY', 'FOREIGN', 'CONSTRAINT', 'FULLTEXT',
                     'SPATIAL', 'CHECK', 'PERIOD'}


def _alter_clause(alter: _Alter, cur: Tokens):
    if cur.accept('ADD'):
        if cur.at('PARTITION'):
            cur.raw()
            return
        if cur.word() in _DEFINITION_WORDS:
            alter.add_definition(ddl.parse_definition(cur, alter.table.database))
            if not cur.done():
                raise DdlError(f'cannot read {cur.rest()[:60]!r}')
            return
        cur.accept('COLUMN')
        if_not_exists = cur.accept('IF', 'NOT', 'EXISTS')
        if cur.punct('('):
            _, inner = cur.group()
            columns = [_column_def(part, alter.table) for part in inner.split()]
        else:
            columns = [_column_def(cur, alter.table)]
        for column, position in columns:
            if if_not_exists and alter.table.column(column.name) is not None:
                continue
            alter.add_column(column, position)
        return
    if cur.accept('DROP'):
        if cur.accept('PRIMARY', 'KEY'):
            alter.drop_primary()
        elif cur.accept('FOREIGN', 'KEY'):
            if_exists = cur.accept('IF', 'EXISTS')
            alter.drop_foreign_key(cur.name(), if_exists)
        elif cur.accept('INDEX') or cur.accept('KEY'):
            if_exists = cur.accept('IF', 'EXISTS')
            alter.drop_index(cur.name(), if_exists)
        elif cur.accept('CONSTRAINT') or cur.accept('CHECK'):
            if_exists = cur.accept('IF', 'EXISTS')
            alter.drop_foreign_key(cur.name(), if_exists, constraint=True)
        elif cur.at('PARTITION'):
            alter.effects.append(NeedsResync(alter.ref, 'DROP PARTITION deletes its rows'))
            cur.raw()
            return
        else:
            cur.accept('COLUMN')
            if_exists = cur.accept('IF', 'EXISTS')
            name = cur.name()
            if if_exists and alter.table.column(name) is None:
                pass
            else:
                alter.drop_column(name)
            cur.accept('RESTRICT') or cur.accept('CASCADE')
    elif cur.accept('MODIFY'):
        cur.accept('COLUMN')
        if_exists = cur.accept('IF', 'EXISTS')
        column, position = _column_def(cur, alter.table)
        if if_exists and alter.table.column(column.name) is None:
            return
        alter.change_column(column.name, column._replace(name=alter.column(column.name).name),
                            position)
        return
    elif cur.accept('CHANGE'):
        cur.accept('COLUMN')
        if_exists = cur.accept('IF', 'EXISTS')
        old = cur.name()
        column, position = _column_def(cur, alter.table)
        if if_exists and alter.table.column(old) is None:
            return
        alter.change_column(old, column, position)
        return
    elif cur.accept('RENAME'):
        if cur.accept('COLUMN'):
            old = cur.name()
            cur.expect('TO')
            alter.rename_column(old, cur.name())
        elif cur.accept('INDEX') or cur.accept('KEY'):
            old = cur.name()
            cur.expect('TO')
            new = cur.name()
            alter.table = alter.table._replace(indexes=tuple(
                i._replace(name=new) if _fold(i.name) == _fold(old) else i
                for i in alter.table.indexes))
            alter.changed(f'index {old} renamed {new}')
        else:
            cur.accept('TO') or cur.accept('AS')
            alter.rename_table(cur.qualified(alter.table.database))
    elif cur.accept('ALTER'):
        if cur.accept('INDEX') or cur.accept('KEY') or cur.accept('CHECK') or \
                cur.accept('CONSTRAINT'):
            cur.raw()
            return
        cur.accept('COLUMN')
        cur.accept('IF', 'EXISTS')
        old = alter.column(cur.name())
        if cur.accept('SET', 'DEFAULT'):
            value = ddl._default_value(cur)
            kind, default = ddl.classify_default(value)
            column = old._replace(default=default, default_kind=kind)
        elif cur.accept('DROP', 'DEFAULT'):
            column = old._replace(default=None, default_kind='null' if old.nullable else 'none')
        elif cur.accept('SET', 'VISIBLE') or cur.accept('SET', 'INVISIBLE'):
            return
        else:
            raise DdlError(f'ALTER COLUMN: cannot read {cur.rest()[:60]!r}')
        alter.change_column(old.name, column, None)
    elif cur.accept('CONVERT', 'TO'):
        cur.accept('CHARACTER', 'SET') or cur.accept('CHARSET')
        charset = ddl._charset_name(ddl._option_value(cur))
        collation = ddl._collation_name(ddl._option_value(cur)) if cur.accept('COLLATE') else \
            ddl.default_collation(charset)
        alter.table = alter.table._replace(charset=charset, collation=collation, columns=tuple(
            c._replace(charset=charset, collation=collation) if c.charset else c
            for c in alter.table.columns))
        alter.effects.append(NeedsResync(alter.ref, f'CONVERT TO CHARACTER SET {charset} '
                                                    f'transcodes every character column'))
    elif cur.at('PARTITION', 'BY') or cur.accept('REMOVE', 'PARTITIONING'):
        cur.raw()
    elif cur.word() in _LOSING_PARTITION_OPS | _KEEPING_PARTITION_OPS and (
            cur.word(1) == 'PARTITION' or cur.word(1) == 'TABLESPACE'):
        if cur.word() in _LOSING_PARTITION_OPS:
            alter.effects.append(NeedsResync(
                alter.ref, f'{cur.word()} {cur.word(1)} changes the table\'s rows'))
        cur.raw()
    elif cur.accept('ENABLE', 'KEYS') or cur.accept('DISABLE', 'KEYS'):
        pass
    elif cur.accept('ORDER', 'BY'):
        cur.raw()  # the rows' physical order only
    else:
        _table_options(alter, cur)
        return
    if not cur.done():
        raise DdlError(f'cannot read {cur.rest()[:60]!r}')


def _table_options(alter: _Alter, cur: Tokens):
    """Table options: none changes rows but a storage engine that drops them."""
    while not cur.done():
        cur.accept('DEFAULT')
        word = cur.word()
        if cur.accept('CHARACTER', 'SET') or cur.accept('CHARSET'):
            charset = ddl._charset_name(ddl._option_value(cur))  # for columns added later
            alter.table = alter.table._replace(charset=charset,
                                               collation=ddl.default_collation(charset))
        elif cur.accept('COLLATE'):
            collation = ddl._collation_name(ddl._option_value(cur))
            alter.table = alter.table._replace(collation=collation,
                                               charset=ddl.charset_of(collation))
        elif cur.accept('ENGINE') or cur.accept('TYPE'):
            engine = ddl._option_value(cur).upper()
            if engine not in _KEEPING_ENGINES:
                alter.effects.append(NeedsResync(alter.ref, f'ENGINE={engine}'))
        elif word in _NO_EFFECT_OPTIONS:
            cur.i += 1
            if word in ('FORCE',):
                continue
            cur.accept_punct('=')
            if cur.punct('('):
                cur.group()
            else:
                cur.i += 1
        elif cur.accept('WITH', 'VALIDATION') or cur.accept('WITHOUT', 'VALIDATION') or \
                cur.accept('NOWAIT'):
            pass
        elif cur.accept('WAIT'):
            cur.i += 1
        else:
            raise DdlError(f'cannot read {cur.rest()[:60]!r}')


# --- statements -------------------------------------------------------------

_NO_EFFECT = {('ANALYZE', 'TABLE'), ('OPTIMIZE', 'TABLE'), ('CHECK', 'TABLE'),
              ('CREATE', 'USER'), ('DROP', 'USER'), ('ALTER', 'USER'), ('RENAME', 'USER'),
              ('CREATE', 'ROLE'), ('DROP', 'ROLE'), ('GRANT',), ('REVOKE',), ('FLUSH',),
              ('SET', 'PASSWORD')}
_OBJECTS = ('TABLE', 'TRIGGER', 'INDEX', 'VIEW', 'PROCEDURE', 'FUNCTION', 'EVENT', 'DATABASE',
            'SCHEMA', 'USER', 'ROLE', 'SEQUENCE', 'SERVER', 'TABLESPACE', 'PACKAGE')
_TABLE_NAME = re.compile(r'\b(?:TABLE|INTO|ON|UPDATE|FROM)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?'
                         r'((?:`(?:[^`]|``)+`|[\w$]+)(?:\s*\.\s*(?:`(?:[^`]|``)+`|[\w$]+))?)', re.I)


def _guess_table(sql: str, database: Optional[str]) -> Optional[TableRef]:
    match = _TABLE_NAME.search(ddl.unwrap_comments(sql))
    if not match:
        return None
    try:
        return Tokens(match.group(1)).qualified(database)
    except DdlError:
        return None


def _object(words: Tuple[str, ...]) -> Optional[str]:
    for word in words[1:]:
        if word in _OBJECTS:
            return word
    return None


def _derived_columns(schema: SourceSchema, select: str, database: Optional[str]
                     ) -> Optional[Tuple[Column, ...]]:
    """The columns a CREATE ... SELECT of plain columns of one table creates,
    or None. As MariaDB does: types, nullability, literal and clock defaults
    are copied; an AUTO_INCREMENT column gets DEFAULT 0, an expression default
    is dropped, a generated column becomes a plain one."""
    try:
        node = sqlglot.parse_one(select, read='mysql')
    except Exception:  # ParseError or recursion
        return None
    if not isinstance(node, exp.Select) or node.args.get('joins') or not node.args.get('from_') \
            and not node.args.get('from'):
        return None
    source = (node.args.get('from_') or node.args.get('from')).this
    if not isinstance(source, exp.Table):
        return None
    table = schema.table(source.db or database or '', source.name)
    if table is None:
        return None
    columns = []
    for projection in node.expressions:
        if isinstance(projection, exp.Star):
            columns.extend(table.columns)
            continue
        alias = projection.alias if isinstance(projection, exp.Alias) else None
        inner = projection.this if isinstance(projection, exp.Alias) else projection
        if not isinstance(inner, exp.Column) or isinstance(inner.this, exp.Star):
            return None
        column = table.column(inner.name)
        if column is None:
            return None
        columns.append(column._replace(name=alias or column.name))
    plain = []
    for column in columns:  # what MariaDB keeps of each column's definition
        if column.auto_increment:
            column = column._replace(auto_increment=False, default='0', default_kind='literal')
        elif column.default_kind == 'expression':
            column = column._replace(default=None,
                                     default_kind='null' if column.nullable else 'none')
        if column.generated is not None:
            column = column._replace(generated=None, stored=False,
                                     default_kind='null' if column.nullable else 'none')
        plain.append(column)
    return tuple(plain)


def _create_table(schema: SourceSchema, sql: str, database: Optional[str]):
    created = ddl.parse_create_table(sql, database, schema.database_default)
    ref = created.ref
    if created.temporary:
        return schema, [TemporaryTable(ref, False)]
    existing = schema.table(*ref)
    effects = []
    if existing is not None:
        if created.if_not_exists:
            if created.select is not None:
                return schema, [NeedsResync(ref, 'CREATE TABLE IF NOT EXISTS ... SELECT on an '
                                                 'existing table may have inserted rows')]
            return schema, []
        if not created.or_replace:
            return schema, [UnknownDdl(ref, 'CREATE TABLE of a table the schema already holds')]
        schema = schema.without(*ref)
        effects.append(DropTable(ref))
    if created.like is not None:
        source = schema.table(*created.like)
        if source is None:
            return schema, effects + [UnknownDdl(ref, f'CREATE TABLE ... LIKE '
                                                      f'{".".join(created.like)}, which the schema '
                                                      f'does not hold')]
        table = source._replace(database=ref[0], name=ref[1], foreign_keys=(), triggers=())
    else:
        table = created.table
    if created.select is not None:
        derived = _derived_columns(schema, created.select, database)
        if derived is None:
            return schema, effects + [NeedsResync(ref, 'CREATE TABLE ... SELECT: columns and '
                                                       'rows come from the query')]
        defined = {_fold(c.name) for c in table.columns}
        table = table._replace(columns=table.columns + tuple(
            c for c in derived if _fold(c.name) not in defined))
    table = ordered(table)
    effects.append(CreateTable(ref, table))
    if created.select is not None:
        effects.append(NeedsResync(ref, 'CREATE TABLE ... SELECT: rows come from the query'))
    return schema.with_table(table), effects


def _alter_table(schema: SourceSchema, sql: str, database: Optional[str]):
    cur = Tokens(ddl.unwrap_comments(sql))
    cur.expect('ALTER')
    cur.accept('ONLINE') or cur.accept('OFFLINE')
    cur.accept('IGNORE')
    cur.expect('TABLE')
    if_exists = cur.accept('IF', 'EXISTS')
    ref = cur.qualified(database)
    table = schema.table(*ref)
    if table is None:
        if if_exists:
            return schema, []
        return schema, [UnknownDdl(ref, 'ALTER TABLE of a table the schema does not hold')]
    if cur.accept('WAIT'):
        cur.i += 1
    cur.accept('NOWAIT')
    alter = _Alter(schema, table)
    for clause in cur.split():
        _alter_clause(alter, clause)
    return alter.schema.with_table(ordered(alter.table)), alter.effects


def _rename_tables(schema: SourceSchema, sql: str, database: Optional[str]):
    cur = Tokens(ddl.unwrap_comments(sql))
    cur.expect('RENAME')
    cur.accept('TABLE') or cur.accept('TABLES')
    cur.accept('IF', 'EXISTS')
    effects = []
    parts = cur.split()
    if not parts:
        raise DdlError('RENAME TABLE names no table')
    for part in parts:
        old = part.qualified(database)
        if part.accept('WAIT'):
            part.i += 1
        part.accept('NOWAIT')
        part.expect('TO')
        new = part.qualified(database)
        if not part.done():
            raise DdlError(f'cannot read {part.rest()[:60]!r}')
        table = schema.table(*old)
        effects.append(RenameTable(old, new))
        if table is None:
            effects.append(NeedsResync(new, f'renamed from {old[0]}.{old[1]}, which the schema '
                                            f'does not hold: its columns and rows are unknown'))
            schema = schema.without(*new)
            continue
        schema = _move_table(schema, table, table._replace(database=new[0], name=new[1]))
    return schema, effects


def _drop_tables(schema: SourceSchema, sql: str, database: Optional[str]):
    cur = Tokens(ddl.unwrap_comments(sql))
    cur.expect('DROP')
    temporary = cur.accept('TEMPORARY')
    cur.expect('TABLE')
    cur.accept('IF', 'EXISTS')
    effects = []
    parts = cur.split()
    if not parts:
        raise DdlError('DROP TABLE names no table')
    for part in parts:
        ref = part.qualified(database)
        part.accept('RESTRICT') or part.accept('CASCADE')
        if not part.done():
            raise DdlError(f'cannot read {part.rest()[:60]!r}')
        if temporary:
            effects.append(TemporaryTable(ref, True))
            continue
        schema = schema.without(*ref)
        effects.append(DropTable(ref))
    return schema, effects


def _create_trigger(schema: SourceSchema, sql: str, database: Optional[str]):
    ref, trigger, or_replace, if_not_exists = ddl.parse_create_trigger(sql, database)
    table = schema.table(*ref)
    if table is None:
        return schema, [UnknownDdl(ref, f'trigger {trigger.name} on a table the schema does '
                                        f'not hold')]
    if if_not_exists and any(_fold(t.name) == _fold(trigger.name) for t in table.triggers):
        return schema, []
    return schema.with_table(with_trigger(table, trigger)), [
        SchemaChanged(ref, f'{trigger.timing} {trigger.event} trigger {trigger.name} created')]


def _drop_trigger(schema: SourceSchema, sql: str, database: Optional[str]):
    cur = Tokens(ddl.unwrap_comments(sql))
    cur.expect('DROP')
    cur.expect('TRIGGER')
    if_exists = cur.accept('IF', 'EXISTS')
    trigger_db, name = database, cur.name()
    if cur.accept_punct('.'):
        trigger_db, name = name, cur.name()
    for table in schema.tables:
        if schema.same_name((table.database, ''), (trigger_db or '', '')):
            kept = tuple(t for t in table.triggers if _fold(t.name) != _fold(name))
            if len(kept) != len(table.triggers):
                ref = (table.database, table.name)
                return schema.with_table(table._replace(triggers=kept)), [
                    SchemaChanged(ref, f'trigger {name} dropped')]
    if if_exists:
        return schema, []
    return schema, [UnknownDdl(None, f'DROP TRIGGER {name}: the schema holds no such trigger')]


def _create_index(schema: SourceSchema, sql: str, database: Optional[str]):
    cur = Tokens(ddl.unwrap_comments(sql))
    cur.expect('CREATE')
    cur.accept('OR', 'REPLACE')
    cur.accept('ONLINE') or cur.accept('OFFLINE')
    unique = cur.accept('UNIQUE')
    cur.accept('FULLTEXT') or cur.accept('SPATIAL')
    cur.expect('INDEX')
    if_not_exists = cur.accept('IF', 'NOT', 'EXISTS')
    name = cur.name()
    if cur.accept('USING'):
        cur.name()
    cur.expect('ON')
    ref = cur.qualified(database)
    table = schema.table(*ref)
    if table is None:
        return schema, [UnknownDdl(ref, 'CREATE INDEX on a table the schema does not hold')]
    columns = ddl._key_columns(cur)
    if any(_fold(i.name) == _fold(name) for i in table.indexes):
        if if_not_exists:
            return schema, []
        table = table._replace(indexes=tuple(i for i in table.indexes
                                             if _fold(i.name) != _fold(name)))
    table = ordered(table._replace(indexes=table.indexes + (Index(name, columns, unique),)))
    return schema.with_table(table), [
        SchemaChanged(ref, f'{"unique " if unique else ""}index {name} created')]


def _drop_index(schema: SourceSchema, sql: str, database: Optional[str]):
    cur = Tokens(ddl.unwrap_comments(sql))
    cur.expect('DROP')
    cur.accept('ONLINE') or cur.accept('OFFLINE')
    cur.expect('INDEX')
    if_exists = cur.accept('IF', 'EXISTS')
    name = cur.name()
    cur.expect('ON')
    ref = cur.qualified(database)
    table = schema.table(*ref)
    if table is None:
        return schema, [UnknownDdl(ref, 'DROP INDEX on a table the schema does not hold')]
    alter = _Alter(schema, table)
    alter.drop_index(name, if_exists)
    return schema.with_table(alter.table), alter.effects


def _drop_database(schema: SourceSchema, sql: str, database: Optional[str]):
    cur = Tokens(ddl.unwrap_comments(sql))
    cur.expect('DROP')
    cur.accept('DATABASE') or cur.accept('SCHEMA')
    cur.accept('IF', 'EXISTS')
    name = cur.name()
    effects = [DropTable((table.database, table.name)) for table in schema.tables
               if schema.same_name((table.database, ''), (name, ''))]
    return schema.without_database(name), effects


def _database_options(schema: SourceSchema, sql: str, database: Optional[str]):
    """CREATE / ALTER DATABASE: the defaults later tables inherit; no effect."""
    name, charset, collation, if_not_exists = ddl.parse_database_options(sql, database)
    known = schema.database_default(name) != (None, None)
    if if_not_exists and known:
        return schema, []
    if charset is None:
        if ddl.leading_words(sql, 1) == ('ALTER',):
            return schema, []  # a COMMENT, READ ONLY, ...: nothing the schema holds
        charset, collation = schema.database_default(name) if known else (None, None)
    return schema.with_database(name, charset, collation), []


def apply_ddl(schema: SourceSchema, sql: str, database: Optional[str]
              ) -> Tuple[SourceSchema, list]:
    """One DDL statement applied to ``schema``: (new schema, effects).
    Never raises: what it does not understand is an UnknownDdl effect and the
    schema is left as it was."""
    try:
        words = ddl.leading_words(sql, 16)
        if not words:
            return schema, [UnknownDdl(None, 'empty statement')]
        head = words[0]
        target = _object(words)
        if words[:2] in _NO_EFFECT or words[:1] in _NO_EFFECT:
            return schema, []
        if head == 'TRUNCATE':
            return schema, []  # rows only: the translator follows it
        if head == 'CREATE' and target == 'TABLE':
            return _create_table(schema, sql, database)
        if head == 'CREATE' and target == 'TRIGGER':
            return _create_trigger(schema, sql, database)
        if head == 'CREATE' and target == 'INDEX':
            return _create_index(schema, sql, database)
        if head == 'ALTER' and target == 'TABLE':
            return _alter_table(schema, sql, database)
        if head == 'RENAME' and words[1:2] in (('TABLE',), ('TABLES',)):
            return _rename_tables(schema, sql, database)
        if head == 'DROP' and target == 'TABLE':
            return _drop_tables(schema, sql, database)
        if head == 'DROP' and target == 'TRIGGER':
            return _drop_trigger(schema, sql, database)
        if head == 'DROP' and target == 'INDEX':
            return _drop_index(schema, sql, database)
        if head == 'DROP' and target in ('DATABASE', 'SCHEMA'):
            return _drop_database(schema, sql, database)
        if head in ('CREATE', 'ALTER') and words[1:2] in (('DATABASE',), ('SCHEMA',)):
            return _database_options(schema, sql, database)
        return schema, [UnknownDdl(_guess_table(sql, database),
                                   f'{" ".join(words[:3])}: not followed by the schema history')]
    except DdlError as error:
        return schema, [UnknownDdl(_guess_table(sql, database), str(error))]
    except Exception as error:  # a parser bug must not lose the statement
        return schema, [UnknownDdl(_guess_table(sql, database),
                                   f'internal error: {type(error).__name__}: {error}')]


class _Entry(NamedTuple):
    position: tuple
    sql: str
    database: Optional[str]
    effects: tuple
    schema: SourceSchema


class SchemaHistory:
    """The schema at every log position, from an initial schema and the DDL
    applied since.

    Positions are comparable tuples (e.g. ``(timestamp_us, query_id)``).
    ``schema_at(p)`` includes every DDL at a position <= p. DDL may arrive
    out of order: applying it re-applies the DDL after it (their recorded
    effects are then recomputed, but only the returned effects are news to
    the caller). Applying the same statement at the same position again
    returns its effects without changing anything (replays are idempotent).
    """

    def __init__(self, initial: Optional[SourceSchema] = None):
        self._initial = initial if initial is not None else SourceSchema()
        self._entries: List[_Entry] = []
        self._positions: List[tuple] = []

    @property
    def current(self) -> SourceSchema:
        return self._entries[-1].schema if self._entries else self._initial

    def apply(self, ddl_sql: str, database: Optional[str], position: tuple) -> list:
        """Applies one DDL statement logged at ``position`` with current
        database ``database``; returns its effects."""
        position = tuple(position)
        index = bisect.bisect_left(self._positions, position)
        if index < len(self._entries) and self._positions[index] == position:
            entry = self._entries[index]
            if (entry.sql, entry.database) == (ddl_sql, database):
                return list(entry.effects)
            raise ValueError(f'position {position} already holds another statement')
        before = self._entries[index - 1].schema if index else self._initial
        schema, effects = apply_ddl(before, ddl_sql, database)
        self._entries.insert(index, _Entry(position, ddl_sql, database, tuple(effects), schema))
        self._positions.insert(index, position)
        for later in range(index + 1, len(self._entries)):
            entry = self._entries[later]
            schema, again = apply_ddl(schema, entry.sql, entry.database)
            self._entries[later] = entry._replace(effects=tuple(again), schema=schema)
        return effects

    def schema_at(self, position: tuple) -> SourceSchema:
        """The schema as it was after every DDL logged at or before ``position``."""
        index = bisect.bisect_right(self._positions, tuple(position))
        return self._entries[index - 1].schema if index else self._initial

    def entries(self) -> Tuple[Tuple[tuple, str, Optional[str], tuple, SourceSchema], ...]:
        """(position, sql, database, effects, schema after it) of every DDL, in
        position order."""
        return tuple(tuple(entry) for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)
