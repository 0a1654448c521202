"""The YAML job configuration, validated into typed records.

Every problem is a :class:`ConfigError` naming the key, found before the job
starts: types, ranges (positive batch sizes and windows, finite numbers),
column types as changeflow names them or as MySQL writes them (read by
:func:`changeflow.sql.types.parse_type`: DECIMAL precision 1 to 65, scale at
most 38 as MariaDB allows), table and column names that are strings,
targets that cannot escape their directory, database URLs that SQLAlchemy
can parse, and non-empty paths.
"""

import copy
import fnmatch
import glob
import math
import os
import re
import urllib.parse
from typing import Any, NamedTuple, Optional, Tuple

import sqlalchemy
import sqlalchemy.exc
import yaml
from sqlalchemy.engine import make_url

from changeflow.io.kinesis import Start, stream_name
from changeflow.model import MARKER_KINDS, OpKind
from changeflow.schema.ddl import DdlError
from changeflow.schema.model import SourceSchema, TableSchema
from changeflow.schema.readers import read_information_schema, read_schema_file
from changeflow.sql.secrets import mask_url_passwords
from changeflow.sql.types import canonical_type
from changeflow.sql.zones import parse_time_zone

__all__ = ['TableSpec', 'SourceConfig', 'NotifyRule', 'JobConfig', 'ConfigError',
           'parse_config', 'load_config', 'display_url', 'resolve_tables', 'table_spec',
           'KinesisSourceConfig', 'STREAM_FORMATS',
           'DynamoDBArchiveSource', 'DynamoDBStreamSource', 'ExportSeed', 'DYNAMODB_ARCHIVE',
           'DYNAMODB_STREAM', 'DYNAMODB_KINESIS', 'DYNAMODB_FORMATS', 'is_dynamodb_job']

# Column types a table spec may declare; sinks map them to SQL and Arrow types.
COLUMN_TYPES = ('integer', 'bigint', 'decimal', 'float', 'string', 'text',
                'boolean', 'date', 'datetime', 'binary', 'json')


class TableSpec(NamedTuple):
    """How one source table is replicated.

    ``columns``: (name, type) pairs in table order, types from COLUMN_TYPES; a
    decimal may carry precision and scale as 'decimal(10,2)'. Empty when not
    declared: the database sink then reflects the target table, which must exist.
    """
    source: str                   # 'database.table' as the audit log names it
    key: Tuple[str, ...]
    target: str                   # replica table name
    columns: Tuple[Tuple[str, str], ...] = ()
    redact: Tuple[str, ...] = ()  # columns never shown in notifications or logs
    defaults: Tuple[Tuple[str, str], ...] = ()  # column -> DEFAULT of a table the sink creates
    schema: Optional[TableSchema] = None  # the source table's schema, when the config has one
    model: Any = None             # its model for handlers: 'pkg.module:Name' or a dataclass

    def column_type(self, name: str) -> Optional[str]:
        return dict(self.columns).get(name)


class SourceConfig(NamedTuple):
    type: str                     # 'archive'
    format: str                   # 'kinesis-jsonl' | 'firehose' | 'server-audit'
    path: str
    slice_bytes: Optional[int] = None  # read in slices of this many bytes of files (a backfill)

    @property
    def name(self) -> str:
        """The archive's path or glob (status lines)."""
        return self.path


class NotifyRule(NamedTuple):
    to: str                       # 'file:PATH', 'stdout', 'sns:ARN', 'sqs:URL', 'https://...'
    table: Optional[str] = None   # match one source table, or any
    ops: Tuple[str, ...] = ()     # match these op kinds, or any
    columns: Tuple[Any, ...] = () # notify_columns.ColumnPredicate: all must hold
    options: Tuple[Tuple[str, Any], ...] = ()  # the target's options (template, region, ...)


class JobConfig(NamedTuple):
    source: SourceConfig
    tables: Tuple[TableSpec, ...]
    window_seconds: float
    database_url: Optional[str]
    database_batch_size: int
    parquet_path: Optional[str]
    notify: Tuple[NotifyRule, ...]
    dead_letter_path: str
    query_log_limit: int
    autocommit: bool
    source_db_url: Optional[str] = None     # read-only SQLAlchemy URL; show it with display_url
    schema: Optional[SourceSchema] = None   # from schema.file, else read over source_db
    time_zone: str = '+00:00'               # the source server's time_zone (TIMESTAMP values)
    server_version: int = 101100            # as /*!NNNNN */ comments number it (MariaDB 10.11.0)
    rollback_on_timeout: bool = False       # innodb_rollback_on_timeout
    table_rules: Any = None                 # ``tables:`` as written, for resolve_tables
    job: Optional[str] = None               # the job's name: its checkpoints' key
    checkpoints_url: Optional[str] = None   # the checkpoint store of a stream source
    handlers: Tuple[Any, ...] = ()          # changeflow.handlers.Handler definitions
    state_url: Optional[str] = None         # the state store (ledgers of side effects)


class ConfigError(ValueError):
    """A configuration problem, naming the offending key."""


ARCHIVE_FORMATS = ('kinesis-jsonl', 'firehose', 'server-audit')
NOTIFY_OPS = tuple(kind.value for kind in OpKind if kind not in MARKER_KINDS)  # `when.op`


def _check_keys(where: str, mapping, allowed, required=()):
    if not isinstance(mapping, dict):
        raise ConfigError(f'{where}: expected a mapping, got {type(mapping).__name__}')
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ConfigError(f'{where}: unknown key(s) {", ".join(map(repr, unknown))}; '
                          f'allowed: {", ".join(allowed)}')
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ConfigError(f'{where}: missing required key(s) {", ".join(missing)}')


def _typed(where: str, value, kind, name):
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f'{where}: expected {name}, got {_shown(value)}')
    return value


def _shown(value) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 200 else (
        f'a {type(value).__name__}')
    return text if len(text) <= 200 else text[:197] + '...'


def _positive(where: str, value, name='a positive integer'):
    _typed(where, value, int, name)
    if value < 1:
        raise ConfigError(f'{where}: expected {name}, got {value!r}')
    return value


def _path(where: str, value, name: str) -> str:
    _typed(where, value, str, name)
    if not value.strip() or '\0' in value:
        raise ConfigError(f'{where}: expected {name}, got {value!r}')
    return value


def _column_type(where: str, kind) -> str:
    """A declared column type as the TableSpec keeps it: changeflow's names
    ('decimal(10)' -> 'decimal(10,0)') or a MySQL column type."""
    if not isinstance(kind, str):
        raise ConfigError(f'{where}: unknown type {_shown(kind)}; '
                          f'use one of {", ".join(COLUMN_TYPES)} or a MySQL column type')
    try:
        return canonical_type(kind)
    except ValueError as error:
        raise ConfigError(f'{where}: {error}; use one of {", ".join(COLUMN_TYPES)} '
                          f'or a MySQL column type') from None


def _database_url(where: str, url: str) -> str:
    _path(where, url, 'an SQLAlchemy URL')
    try:
        sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as error:
        # Not the URL itself: it may hold a password.
        raise ConfigError(f'{where}: not an SQLAlchemy URL'
                          f' (dialect+driver://user@host/database): '
                          f'{mask_url_passwords(str(error))}') from None
    return url


def _resolve(path: str, base_dir: str) -> str:
    """Relative local paths are relative to the config file; URLs stay as they are."""
    if '://' in path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def _resolve_url(url: str, base_dir: str) -> str:
    prefix = 'sqlite:///'
    if url.startswith(prefix) and not url.startswith(prefix + '/') and url != 'sqlite://':
        return prefix + _resolve(url[len(prefix):], base_dir)
    return url


def _table(name, raw, dynamodb: bool = False) -> TableSpec:
    """One table's spec. ``dynamodb``: ``name`` is a DynamoDB table's, whose
    replica table defaults to the name with ``.`` as ``_`` (a dot would name
    a database schema)."""
    where = f'tables.{name}'
    if not isinstance(name, str):
        raise ConfigError(f'{where}: a table name must be a string database.table, got {name!r}')
    _check_keys(where, raw, ('key', 'target', 'columns', 'redact'), required=('key',))
    if dynamodb:
        if not _DYNAMODB_TABLE.fullmatch(name):
            raise ConfigError(f'{where}: not a DynamoDB table name (3 to 255 of A-Z a-z 0-9 '
                              f'_ . -)')
        table = name.replace('.', '_')
    else:
        database, _, table = name.partition('.')
        if not database.strip() or not table.strip():
            raise ConfigError(f'{where}: name tables as database.table, as the audit log does')
    key = raw['key']
    if isinstance(key, str):
        key = [key]
    if not isinstance(key, list) or not key or not all(isinstance(k, str) and k for k in key):
        raise ConfigError(f'{where}.key: expected a column name or a list of them,'
                          f' got {_shown(key)}')
    if len({k.lower() for k in key}) != len(key):
        raise ConfigError(f'{where}.key: a column is named twice: {key!r}')
    target = _typed(f'{where}.target', raw.get('target', table), str, 'a string')
    if not target or target in ('.', '..') or any(c in target for c in '/\\\0'):
        raise ConfigError(f'{where}.target: {target!r} must be a table name, not empty nor a path'
                          f' (no /, \\, . or ..)')
    columns = raw.get('columns') or {}
    _typed(f'{where}.columns', columns, dict, 'a mapping of column: type')
    defaults = {}
    for column, kind in list(columns.items()):
        if not isinstance(column, str) or not column:
            raise ConfigError(f'{where}.columns: a column name must be a string, got {column!r}')
        if isinstance(kind, dict):  # {type: string, default: new}
            _check_keys(f'{where}.columns.{column}', kind, ('type', 'default'), required=('type',))
            default = kind.get('default')
            if default is not None:
                if isinstance(default, (dict, list)):
                    raise ConfigError(f'{where}.columns.{column}.default: expected a scalar,'
                                      f' got {_shown(default)}')
                defaults[column] = str(default)
            kind = kind['type']
        columns[column] = _column_type(f'{where}.columns.{column}', kind)
    if len({c.lower() for c in columns}) != len(columns):
        raise ConfigError(f'{where}.columns: a column is named twice (names are case-insensitive)')
    if columns and not set(key) <= set(columns):
        raise ConfigError(f'{where}.columns: must include the key column(s) {", ".join(key)}')
    redact = raw.get('redact') or []
    _typed(f'{where}.redact', redact, list, 'a list of column names')
    if not all(isinstance(column, str) and column for column in redact):
        raise ConfigError(f'{where}.redact: expected a list of column names, got {_shown(redact)}')
    declared = {c.lower() for c in columns} | {k.lower() for k in key}
    unknown = [column for column in redact if columns and column.lower() not in declared]
    if unknown:
        raise ConfigError(f'{where}.redact: {", ".join(unknown)} not among the declared columns')
    return TableSpec(name, tuple(key), target, tuple(columns.items()),
                     tuple(redact), tuple(defaults.items()))


# --- schema and source_db ---------------------------------------------------

def display_url(url: Optional[str]) -> Optional[str]:
    """A database URL fit for logs: the password hidden (SQLAlchemy's
    ``render_as_string(hide_password=True)``)."""
    if url is None:
        return None
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: never echo it, it may hold a secret
        return '<unparseable URL>'


def _source_db(raw, base_dir: str) -> Optional[str]:
    """``source_db.url``: an SQLAlchemy URL for read-only access to the
    source. Prefer one without a password: the driver's option files hold it
    (PyMySQL: ``?read_default_file=~/.my.cnf``). Shown only via display_url."""
    if raw is None:
        return None
    _check_keys('source_db', raw, ('url',), required=('url',))
    url = _typed('source_db.url', raw['url'], str, 'an SQLAlchemy URL')
    try:
        make_url(url)
    except Exception:  # ArgumentError, or ValueError on a bad port
        raise ConfigError('source_db.url: not an SQLAlchemy URL '
                          '(dialect+driver://user@host/database)') from None
    return _resolve_url(url, base_dir)


def _is_pattern(name: str) -> bool:
    return glob.has_magic(name)


def _named_databases(tables) -> Optional[Tuple[str, ...]]:
    """The databases ``tables:`` names (None: a pattern spans databases)."""
    names = tables if isinstance(tables, list) else list(tables or {})
    databases = []
    for name in names:
        if not isinstance(name, str) or '.' not in name:
            continue
        database = name.split('.', 1)[0]
        if _is_pattern(database):
            return None
        if database not in databases:
            databases.append(database)
    return tuple(databases)


def _schema(raw, source_db_url: Optional[str], tables, base_dir: str) -> Optional[SourceSchema]:
    """The source schema: ``schema.file`` (a mysqldump --no-data --triggers
    file or SHOW CREATE text, relative to the config file), else read from
    ``source_db``'s information_schema, else None."""
    raw = {} if raw is None else raw
    _check_keys('schema', raw, ('file', 'lower_case_table_names'))
    lower = raw.get('lower_case_table_names')
    if lower is not None and (_typed('schema.lower_case_table_names', lower, int, '0, 1 or 2')
                              not in (0, 1, 2)):
        raise ConfigError(f'schema.lower_case_table_names: expected 0, 1 or 2, got {lower!r}')
    if raw.get('file') is not None:
        path = _resolve(_typed('schema.file', raw['file'], str, 'a path'), base_dir)
        if not os.path.isfile(path):
            raise ConfigError(f'schema.file: {path} does not exist')
        try:
            return read_schema_file(path, lower_case_table_names=lower or 0)
        except DdlError as error:
            raise ConfigError(f'schema.file: {path}: {error}') from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f'schema.file: cannot read {path}: {error}') from None
    if source_db_url is None:
        return None
    shown = display_url(source_db_url)
    try:
        engine = sqlalchemy.create_engine(source_db_url)
        try:
            schema = read_information_schema(engine, _named_databases(tables))
        finally:
            engine.dispose()
    except Exception as error:  # driver missing, unreachable, denied: all name the key
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        password = make_url(source_db_url).password
        if password:
            message = message.replace(str(password), '***')
        raise ConfigError(f'source_db.url: cannot read the schema from {shown}: '
                          f'{type(error).__name__}: {message}') from None
    if lower is not None:
        schema = SourceSchema(schema.tables, lower, schema.databases)
    return schema


def _schema_column_type(where: str, type_text: str) -> str:
    """A MySQL column type taken from the schema (``'int unsigned'``,
    ``"enum('a','b')"``), read with MySQL's meaning of the bare names
    (``datetime`` has no fractional seconds), as the TableSpec keeps it."""
    try:
        return canonical_type(type_text, mysql=True)
    except ValueError as error:
        raise ConfigError(f'{where}: {error}') from None


def _schema_key(where: str, table: TableSchema) -> Tuple[str, ...]:
    """The primary key, else the first UNIQUE key of NOT NULL columns (the
    row identity InnoDB itself uses)."""
    if table.primary_key:
        return table.primary_key
    for columns in table.unique_keys:
        if all(table.column(c) is not None and not table.column(c).nullable for c in columns):
            return columns
    raise ConfigError(f'{where}: {table.qualified} has no primary key or NOT NULL unique key; '
                      f'set key')


def _schema_table(name: str, raw, table: TableSchema, pattern: bool = False) -> TableSpec:
    """A table spec from the schema; ``raw`` may override key, target,
    columns and redact (a pattern's spec only key and redact)."""
    where = f'tables.{name}'
    allowed = ('key', 'redact') if pattern else ('key', 'target', 'columns', 'redact')
    _check_keys(where, raw, allowed)
    source = name if not pattern else table.qualified
    if raw.get('columns'):  # the config's own columns, validated as without a schema
        spec = _table(source, {'key': list(_schema_key(where, table)), **raw})
        return spec._replace(schema=table)
    key = raw.get('key', list(_schema_key(where, table)))
    if isinstance(key, str):
        key = [key]
    if not isinstance(key, (list, tuple)) or not key or not all(isinstance(k, str) for k in key):
        raise ConfigError(f'{where}.key: expected a column name or a list of them, got {key!r}')
    for column in key:
        if table.column(column) is None:
            raise ConfigError(f'{where}.key: {table.qualified} has no column {column!r}')
    redact = raw.get('redact') or []
    _typed(f'{where}.redact', redact, list, 'a list of column names')
    if pattern:  # a pattern's redact names the columns of any table it matches
        redact = [c for c in redact if isinstance(c, str) and table.column(c) is not None]
    for column in redact:
        if not isinstance(column, str) or table.column(column) is None:
            raise ConfigError(f'{where}.redact: {table.qualified} has no column {column!r}')
    target = _typed(f'{where}.target', raw.get('target', table.name), str, 'a string')
    columns = tuple((c.name, _schema_column_type(f'{where}.columns.{c.name}', c.type))
                    for c in table.columns)
    defaults = tuple((c.name, c.default) for c in table.columns if c.default_kind == 'literal')
    return TableSpec(source, tuple(table.column(k).name for k in key), target, columns,
                     tuple(table.column(c).name for c in redact), defaults, table)


def _tables(raw, schema: Optional[SourceSchema], lenient: bool = False
            ) -> Tuple[TableSpec, ...]:
    """``tables:`` as a mapping of name: spec, or (with a schema) a list of
    names. With a schema, a spec may be empty and names may be patterns
    (``shop.*``) expanded against it; tables named explicitly override a
    pattern's. ``lenient``: the schema is one the log reached later (see
    :func:`resolve_tables`), where a pattern may match nothing and a named
    table may not exist (yet, or any more)."""
    if isinstance(raw, list):
        if schema is None:
            raise ConfigError('tables: a list of names needs a schema (schema.file or '
                              'source_db); without one give a mapping of database.table: spec')
        entries = []
        for i, name in enumerate(raw):
            _typed(f'tables[{i}]', name, str, 'a database.table name or pattern')
            entries.append((name, {}))
    else:
        _typed('tables', raw, dict, 'a mapping of database.table: spec')
        entries = []
        for name, spec in raw.items():
            _typed(f'tables.{name}', name, str, 'a table name as a string (database.table)')
            entries.append((name, {} if spec is None else spec))
    if not entries and not lenient:
        raise ConfigError('tables: name at least one table to replicate')
    names = [name for name, _ in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f'tables: {", ".join(duplicates)} named more than once')
    explicit = [tuple(name.split('.', 1)) for name in names
                if '.' in name and not _is_pattern(name)]
    specs, taken = [], []

    def named(ref) -> bool:
        return any(schema.same_name(ref, other) for other in taken)

    for name, spec in entries:  # in config order; a pattern adds the tables not named yet
        where = f'tables.{name}'
        if '.' not in name:
            raise ConfigError(f'{where}: name tables as database.table, as the audit log does')
        if _is_pattern(name):
            if schema is None:
                raise ConfigError(f'{where}: a pattern needs a schema (schema.file or source_db)')
            _typed(where, spec, dict, 'a mapping')
            fold = (str.lower if schema.lower_case_table_names else str)
            matched = [t for t in schema.tables if fnmatch.fnmatchcase(fold(t.qualified),
                                                                        fold(name))]
            if not matched and not lenient:
                raise ConfigError(f'{where}: the pattern matches no table of the schema')
            redact = _typed(f'{where}.redact', spec.get('redact') or [], list,
                            'a list of column names')
            for column in redact:
                if not any(isinstance(column, str) and t.column(column) for t in matched):
                    raise ConfigError(f'{where}.redact: no table it matches has a column '
                                      f'{column!r}')
            for table in matched:
                ref = (table.database, table.name)
                if not named(ref) and not any(schema.same_name(ref, e) for e in explicit):
                    specs.append(_schema_table(name, spec, table, pattern=True))
                    taken.append(ref)
            continue
        table = schema.table(*name.split('.', 1)) if schema is not None else None
        if table is None:
            if lenient and not (isinstance(spec, dict) and spec.get('columns')):
                continue  # not in the schema at this point of the log
            if not isinstance(spec, dict) or 'key' not in spec:
                missing = ' and is not in the schema' if schema is not None else ''
                _check_keys(where, spec, ('key', 'target', 'columns', 'redact'))
                raise ConfigError(f'{where}: missing required key(s) key{missing}')
            specs.append(_table(name, spec))
        else:
            if named((table.database, table.name)):
                raise ConfigError(f'tables: {name} named more than once')
            specs.append(_schema_table(name, spec, table))
            taken.append((table.database, table.name))
    targets = [spec.target for spec in specs]
    clashes = sorted({t for t in targets if targets.count(t) > 1})
    if clashes and schema is not None:
        raise ConfigError(f'tables: several tables replicate to {", ".join(clashes)}; set target')
    return tuple(specs)


def _notify_rule(i: int, raw, base_dir: str) -> NotifyRule:
    from changeflow.io.notify import WRITERS  # pylint: disable=import-outside-toplevel
    from changeflow.io.notify_columns import parse_columns  # (they import this module)
    where = f'sinks.notify[{i}]'
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: expected a mapping, got {type(raw).__name__}')
    to = _typed(f'{where}.to', raw.get('to'), str, 'a string')
    scheme, _, address = to.partition(':')
    writer = WRITERS.get(scheme)
    if writer is None:
        raise ConfigError(f"{where}.to: {_target_shown(to)!r} is not supported; use 'file:PATH', "
                          f"'stdout', 'sns:TOPIC_ARN', 'sqs:QUEUE_URL' or an https:// webhook")
    _check_keys(where, raw, ('to', 'when', *sorted(writer.OPTIONS)), required=('to',))
    if scheme == 'file':
        _path(f'{where}.to', address, "'file:PATH' with a path")
        to = 'file:' + _resolve(address, base_dir)
    options = tuple((key, raw[key]) for key in sorted(writer.OPTIONS) if key in raw)
    try:
        checked = writer(to.partition(':')[2], **dict(options))
    except (ValueError, TypeError) as error:
        raise ConfigError(f'{where}: {writer.shown(str(error))}') from None
    unset = [name for name in getattr(checked, 'environment', list)() if name not in os.environ]
    if unset:  # named, never shown: the values are secrets
        raise ConfigError(f'{where}.headers: environment variable {unset[0]} is not set')
    when = raw.get('when') or {}
    _check_keys(f'{where}.when', when, ('table', 'op', 'columns'))
    try:
        columns = parse_columns(when['columns'], f'{where}.when.columns') if (
            'columns' in when) else ()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    ops = when.get('op') or []
    ops = [ops] if isinstance(ops, str) else ops
    _typed(f'{where}.when.op', ops, list, 'an op or a list of ops')
    for op in ops:
        if not isinstance(op, str) or op not in NOTIFY_OPS:
            raise ConfigError(f'{where}.when.op: unknown op {op!r}; use one of {", ".join(NOTIFY_OPS)}')
    table = when.get('table')
    if table is not None:
        _typed(f'{where}.when.table', table, str, 'a string')
    return NotifyRule(to, table, tuple(ops), columns, options)


def _target_shown(target: str) -> str:
    """A notification target as messages show it (a webhook's token masked)."""
    from changeflow.io.messaging import display_target  # pylint: disable=import-outside-toplevel
    return display_target(target)


def _state_url(raw, base_dir: str, job: Optional[str]) -> str:
    """``state: {url}``: the store of the ledgers of side effects (notifications
    sent, handlers run); by default a SQLite file beside the config,
    ``<job>.state.db`` (``changeflow.state.db`` for a job without a name)."""
    state = raw.get('state')
    state = {} if state is None else state
    _check_keys('state', state, ('url',))
    if 'url' in state:
        return _resolve_url(_database_url('state.url', state['url']), base_dir)
    return 'sqlite:///' + os.path.join(os.path.abspath(base_dir), f'{job or "changeflow"}.state.db')


# --- stream sources (Kinesis) and their checkpoints ----------------------------

# source.type of a stream source -> the record formats it reads (the first is the default)
STREAM_FORMATS = {'kinesis': ('cloudwatch-audit', 'dynamodb-kinesis')}
_STREAM_NAME = re.compile(r'[A-Za-z0-9_.-]{1,128}')
_STREAM_ARN = re.compile(
    r'arn:aws[a-z-]*:kinesis:([a-z]{2}(?:-[a-z]+)+-\d+):\d{12}:stream/[A-Za-z0-9_.-]{1,128}')
_REGION = re.compile(r'[a-z]{2}(?:-[a-z]+)+-\d+')
_JOB_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,127}')   # a checkpoint key, a file name


class KinesisSourceConfig(NamedTuple):
    """``source: {type: kinesis, ...}``: a Kinesis data stream, read by catch-up cycles."""
    type: str                       # 'kinesis'
    format: str                     # 'cloudwatch-audit': CloudWatch Logs subscription records;
                                    # 'dynamodb-kinesis': DynamoDB's Kinesis streaming destination
    stream: str                     # the stream's name or ARN, as the Kinesis calls take it
    region: Optional[str]           # None: boto3's default chain (the ARN's region when given)
    endpoint_url: Optional[str]     # None: AWS's endpoint
    start: Start                    # where a shard without a checkpoint starts
    seeds: Tuple['ExportSeed', ...] = ()   # 'dynamodb-kinesis': ``seed:``, per table
    lateness_seconds: float = 0.0   # the reorder buffer: how much later an earlier statement
                                    # may arrive (distribution: Random); 0: no buffer

    @property
    def name(self) -> str:
        """The stream's name: what records' positions and checkpoints are keyed by."""
        return stream_name(self.stream)


def _is_stream_source(source) -> bool:
    return isinstance(source, dict) and isinstance(source.get('type'), str) and (
        source['type'] in STREAM_FORMATS)


def _stream_source(source) -> KinesisSourceConfig:
    _check_keys('source', source, ('type', 'stream', 'stream_arn', 'format', 'region',
                                   'endpoint_url', 'start', 'lateness_seconds'),
                required=('type',))
    stream, region, _ = _named_stream(
        source, 'stream', 'the stream by stream (its name)',
        _STREAM_NAME, 'a Kinesis stream name (1 to 128 of A-Z a-z 0-9 _ . -)',
        _STREAM_ARN, 'a Kinesis stream ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME)')
    formats = STREAM_FORMATS[source['type']]
    fmt = source.get('format', formats[0])
    if not isinstance(fmt, str) or fmt not in formats:
        raise ConfigError(f"source.format: {_shown(fmt)} is not one of {', '.join(formats)}")
    lateness = _typed('source.lateness_seconds', source.get('lateness_seconds', 0),
                      (int, float), 'a number of seconds')
    if not (math.isfinite(lateness) and lateness >= 0):
        raise ConfigError(f'source.lateness_seconds: must be 0 or more seconds, '
                          f'got {lateness!r}')
    return KinesisSourceConfig(source['type'], fmt, stream, region, _endpoint_url(source),
                               _start(source), lateness_seconds=float(lateness))


def _named_stream(source, name_key: str, by_name: str, name_pattern, name_rule: str,
                  arn_pattern, arn_rule: str):
    """(the name or ARN, region, the ARN's match or None) of a stream source
    named by ``name_key`` or by ``stream_arn``, one of the two; an ARN's region
    is the region, and a ``region`` given beside it must agree."""
    if (name_key in source) == ('stream_arn' in source):
        raise ConfigError(f'source: name {by_name} or by stream_arn, one of the two')
    region = _region(source)
    if name_key in source:
        name = _typed(f'source.{name_key}', source[name_key], str, name_rule.split(' (')[0])
        if not name_pattern.fullmatch(name):
            raise ConfigError(f'source.{name_key}: {name!r} is not {name_rule}')
        return name, region, None
    arn = _typed('source.stream_arn', source['stream_arn'], str, 'a stream ARN')
    match = arn_pattern.fullmatch(arn)
    if not match:
        raise ConfigError(f'source.stream_arn: {arn!r} is not {arn_rule}')
    if region is not None and region != match[1]:
        raise ConfigError(f'source.region: {region!r}, but the stream_arn is in {match[1]}')
    return arn, match[1], match


def _region(source) -> Optional[str]:
    region = source.get('region')
    if region is not None and not _REGION.fullmatch(
            _typed('source.region', region, str, 'an AWS region')):
        raise ConfigError(f'source.region: expected an AWS region such as eu-west-1, '
                          f'got {region!r}')
    return region


def _endpoint_url(source) -> Optional[str]:
    endpoint_url = source.get('endpoint_url')
    if endpoint_url is not None:
        _typed('source.endpoint_url', endpoint_url, str, 'an http(s) URL')
        parts = urllib.parse.urlsplit(endpoint_url)
        if parts.scheme not in ('http', 'https') or not parts.netloc:
            raise ConfigError(f'source.endpoint_url: expected an http(s)://host[:port] URL, '
                              f'got {endpoint_url!r}')
    return endpoint_url


def _start(source) -> Start:
    try:
        return Start.parse(source.get('start'))
    except (ValueError, OverflowError, OSError) as error:  # OverflowError: a year out of range
        raise ConfigError(f'source.start: {error}') from None


def _slice_bytes(source) -> Optional[int]:
    """``source.slice_mb``: read the archive in slices of files of about this
    many megabytes (MiB), each a cycle with checkpoints; absent: one run."""
    if 'slice_mb' not in source:
        return None
    mb = _typed('source.slice_mb', source['slice_mb'], (int, float), 'a number of megabytes')
    if not (math.isfinite(mb) and mb > 0):
        raise ConfigError(f'source.slice_mb: must be a positive number of megabytes, got {mb!r}')
    return max(1, round(mb * (1 << 20)))


def _job_and_checkpoints(raw, source, base_dir: str, config_path: Optional[str]):
    """(``job``, the checkpoint store's URL): the job name defaults to the
    config file's name; the store (a stream source's or a sliced archive's
    alone) to a SQLite file beside the config, ``<job>.checkpoints.db``."""
    job = raw.get('job')
    if job is not None:
        if not _JOB_NAME.fullmatch(_typed('job', job, str, 'a job name')):
            raise ConfigError(f'job: {job!r} is not a job name (1 to 128 of A-Z a-z 0-9 _ . -, '
                              f'starting with a letter or digit)')
    elif config_path is not None:
        stem = os.path.splitext(os.path.basename(config_path))[0]
        job = stem if _JOB_NAME.fullmatch(stem) else None
    checkpoints = raw.get('checkpoints')
    sliced = _sliced(source)
    if not sliced and not isinstance(source, (KinesisSourceConfig, DynamoDBStreamSource)):
        if checkpoints is not None:
            raise ConfigError("checkpoints: only a stream source (source.type 'kinesis' or "
                              "'dynamodb') or an archive read in slices (source.slice_mb) "
                              "keeps checkpoints")
        return job, None
    if job is None:
        raise ConfigError(f"job: {'an archive read in slices' if sliced else 'a stream source'} "
                          f"needs a job name to key its checkpoints "
                          "(1 to 128 of A-Z a-z 0-9 _ . -; the config file's name when it is one)")
    checkpoints = {} if checkpoints is None else checkpoints
    _check_keys('checkpoints', checkpoints, ('url',))
    if 'url' in checkpoints:
        return job, _resolve_url(_database_url('checkpoints.url', checkpoints['url']), base_dir)
    return job, 'sqlite:///' + os.path.join(os.path.abspath(base_dir), f'{job}.checkpoints.db')


def _sinks(raw, base_dir: str) -> dict:
    """The JobConfig fields of ``sinks:`` and ``dead_letter:``, shared by every source."""
    sinks = raw['sinks']
    _check_keys('sinks', sinks, ('database', 'parquet', 'notify'))
    database = sinks.get('database')
    if database is not None:
        _check_keys('sinks.database', database, ('url', 'batch_size'), required=('url',))
        _database_url('sinks.database.url', database['url'])
        _positive('sinks.database.batch_size', database.get('batch_size', 500))
    parquet = sinks.get('parquet')
    if parquet is not None:
        _check_keys('sinks.parquet', parquet, ('path',), required=('path',))
        _path('sinks.parquet.path', parquet['path'], 'a directory or s3:// prefix')
    notify = sinks.get('notify') or []
    _typed('sinks.notify', notify, list, 'a list of rules')
    dead = raw['dead_letter']
    _check_keys('dead_letter', dead, ('path',), required=('path',))
    _path('dead_letter.path', dead['path'], 'a directory or s3:// prefix')
    return dict(
        database_url=_resolve_url(database['url'], base_dir) if database else None,
        database_batch_size=database.get('batch_size', 500) if database else 500,
        parquet_path=_resolve(parquet['path'], base_dir) if parquet else None,
        notify=tuple(_notify_rule(i, r, base_dir) for i, r in enumerate(notify)),
        dead_letter_path=_resolve(dead['path'], base_dir))


def parse_config(raw, base_dir: str = '.', config_path: Optional[str] = None) -> JobConfig:
    """Validates a loaded YAML document; raises ConfigError naming the key.
    ``config_path``: the file it came from (the default job name and checkpoint store)."""
    raw, models = _models(raw, base_dir)
    if _is_dynamodb_job(raw):
        return _with_handlers(_dynamodb_config(raw, base_dir, config_path), raw, models,
                              base_dir)
    _check_keys('config', raw, ('source', 'tables', 'window', 'sinks', 'dead_letter', 'audit',
                                'schema', 'source_db', 'job', 'checkpoints', 'handlers', 'state'),
                required=('source', 'tables', 'sinks', 'dead_letter'))
    source = raw['source']
    if _is_stream_source(source):
        source_config = _stream_source(source)
    else:
        if isinstance(source, dict) and source.get('type', 'archive') != 'archive':
            raise ConfigError(f"source.type: {_shown(source['type'])} is not supported; use "
                              f"'archive' or {' or '.join(map(repr, STREAM_FORMATS))}")
        _check_keys('source', source, ('type', 'format', 'path', 'slice_mb'),
                    required=('type', 'format', 'path'))
        if not isinstance(source['format'], str) or source['format'] not in ARCHIVE_FORMATS:
            raise ConfigError(f"source.format: {_shown(source['format'])} is not one of "
                              f"{', '.join(ARCHIVE_FORMATS)}")
        _path('source.path', source['path'], 'a path or glob')
        path = _resolve(source['path'], base_dir)
        if '://' not in path and not glob.has_magic(path) and not os.path.exists(path):
            raise ConfigError(f'source.path: {path} does not exist')
        source_config = SourceConfig('archive', source['format'], path, _slice_bytes(source))
    job, checkpoints_url = _job_and_checkpoints(raw, source_config, base_dir, config_path)
    source_db_url = _source_db(raw.get('source_db'), base_dir)
    schema = _schema(raw.get('schema'), source_db_url, raw['tables'], base_dir)
    tables = _tables(raw['tables'], schema)
    table_rules = copy.deepcopy(raw['tables']) if schema is not None else None
    seconds = _window_seconds(raw)
    sinks = _sinks(raw, base_dir)
    audit = raw.get('audit') or {}
    _check_keys('audit', audit, ('query_log_limit', 'autocommit', 'time_zone', 'server_version',
                                 'rollback_on_timeout'))
    server_version = _server_version(audit.get('server_version', '10.11.0'))
    time_zone = _typed('audit.time_zone', audit.get('time_zone', '+00:00'), str,
                       "the server's time_zone ('+00:00', 'UTC', 'Europe/Paris')")
    if parse_time_zone(time_zone) is None:
        raise ConfigError(f'audit.time_zone: {time_zone!r} is not a time zone')
    limit = _typed('audit.query_log_limit', audit.get('query_log_limit', 1024), int, 'an integer')
    if limit < 0:
        raise ConfigError(f'audit.query_log_limit: must be 0 (unlimited) or more, got {limit!r}')
    _check_shared_targets(tables)
    return _with_handlers(JobConfig(
        source=source_config,
        tables=tables,
        window_seconds=seconds,
        **sinks,
        query_log_limit=limit,
        autocommit=_typed('audit.autocommit', audit.get('autocommit', True), bool, 'true/false'),
        time_zone=time_zone,
        server_version=server_version,
        rollback_on_timeout=_typed('audit.rollback_on_timeout',
                                   audit.get('rollback_on_timeout', False), bool, 'true/false'),
        source_db_url=source_db_url,
        schema=schema,
        table_rules=table_rules,
        job=job,
        checkpoints_url=checkpoints_url,
        state_url=_state_url(raw, base_dir, job),
    ), raw, models, base_dir)


# --- DynamoDB sources -----------------------------------------------------------

DYNAMODB_ARCHIVE = 'dynamodb-archive'
DYNAMODB_STREAM = 'dynamodb'
DYNAMODB_KINESIS = 'dynamodb-kinesis'   # the Kinesis source's format for DynamoDB's destination
DYNAMODB_FORMATS = ('dynamodb-jsonl', 'lambda-event', 'kinesis-destination')
_DYNAMODB_TABLE = re.compile(r'[A-Za-z0-9_.-]{3,255}')
_DYNAMODB_STREAM_ARN = re.compile(
    r'arn:aws[a-z-]*:dynamodb:([a-z]{2}(?:-[a-z]+)+-\d+):\d{12}:table/([A-Za-z0-9_.-]{3,255})'
    r'/stream/[^/\s]+')
_DYNAMODB_KEYS = ('source', 'seed', 'tables', 'sinks', 'dead_letter', 'job', 'checkpoints',
                  'handlers', 'state', 'window')
_TARGET_LENGTH = 128    # the database sink's longest table name


class ExportSeed(NamedTuple):
    """A DynamoDB export to S3 as one table's initial state."""
    table: str                          # the DynamoDB table it seeds
    export: str                         # the export's folder (or its manifest-summary.json)
    endpoint_url: Optional[str] = None  # for an s3:// export: None is AWS's endpoint


class DynamoDBArchiveSource(NamedTuple):
    """``source: {type: dynamodb-archive, ...}``: archived DynamoDB stream records."""
    type: str                           # 'dynamodb-archive'
    format: str                         # one of DYNAMODB_FORMATS
    path: str                           # a file or glob, local or s3://
    seeds: Tuple[ExportSeed, ...] = ()  # ``seed:``, per table


class DynamoDBStreamSource(NamedTuple):
    """``source: {type: dynamodb, ...}``: a table's DynamoDB stream, read by catch-up cycles."""
    type: str                           # 'dynamodb'
    stream: str                         # the table's name (its LatestStreamArn is read) or a stream ARN
    table: str                          # the table: what checkpoints are keyed by
    region: Optional[str]               # None: boto3's default chain (the ARN's region when given)
    endpoint_url: Optional[str]         # None: AWS's endpoint
    start: Start                        # trim_horizon or latest, for shards without a checkpoint
    seeds: Tuple[ExportSeed, ...] = ()  # ``seed:``, per table

    @property
    def name(self) -> str:
        return self.table

    @property
    def format(self) -> str:
        """The reader emits each record as a ``dynamodb-jsonl`` archive line."""
        return 'dynamodb-jsonl'


def _is_dynamodb_job(raw) -> bool:
    source = raw.get('source') if isinstance(raw, dict) else None
    return isinstance(source, dict) and (
        source.get('type') in (DYNAMODB_ARCHIVE, DYNAMODB_STREAM)
        or (source.get('type') == 'kinesis' and source.get('format') == DYNAMODB_KINESIS))


def reads_in_slices(config: 'JobConfig') -> bool:
    """Whether the job reads an archive a slice at a time (``source.slice_mb``)."""
    return _sliced(config.source)


def _sliced(source) -> bool:
    return isinstance(source, SourceConfig) and source.slice_bytes is not None


def is_dynamodb_job(config: 'JobConfig') -> bool:
    """Whether the job's tables are DynamoDB's (:mod:`changeflow.pipelines.dynamodb_sync`)."""
    return config.source.type in (DYNAMODB_ARCHIVE, DYNAMODB_STREAM) or (
        config.source.format == DYNAMODB_KINESIS)


def _dynamodb_stream_source(source) -> DynamoDBStreamSource:
    _check_keys('source', source, ('type', 'table', 'stream_arn', 'region', 'endpoint_url',
                                   'start'), required=('type',))
    stream, region, match = _named_stream(
        source, 'table', 'the stream by table (its latest stream is read)',
        _DYNAMODB_TABLE, 'a DynamoDB table name (3 to 255 of A-Z a-z 0-9 _ . -)',
        _DYNAMODB_STREAM_ARN,
        'a DynamoDB stream ARN (arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL)')
    table = match[2] if match else stream
    start = _start(source)
    if start.kind == 'at_timestamp':
        raise ConfigError('source.start: a DynamoDB stream starts at trim_horizon or latest '
                          '(DynamoDB Streams has no AT_TIMESTAMP iterator)')
    return DynamoDBStreamSource(DYNAMODB_STREAM, stream, table, region, _endpoint_url(source),
                                start)


def _archive_path(where: str, value, base_dir: str) -> str:
    """A source file or glob, resolved; a local one that is not a glob must exist."""
    _path(where, value, 'a path or glob')
    path = _resolve(value, base_dir)
    if '://' not in path and not glob.has_magic(path) and not os.path.exists(path):
        raise ConfigError(f'{where}: {path} does not exist')
    return path


def _dynamodb_tables(raw) -> Tuple[TableSpec, ...]:
    from changeflow.dynamodb.columns import ItemColumns
    _typed('tables', raw, dict, 'a mapping of DynamoDB table name: spec')
    if not raw:
        raise ConfigError('tables: name at least one table to replicate')
    specs = []
    for name, spec in raw.items():
        spec = _table(name, {} if spec is None else spec, dynamodb=True)
        if len(spec.target) > _TARGET_LENGTH:
            raise ConfigError(f'tables.{name}.target: {spec.target!r} is longer than '
                              f'{_TARGET_LENGTH} characters; set a shorter target')
        if len(spec.key) > 2:
            raise ConfigError(f'tables.{name}.key: a DynamoDB key is its hash attribute and at '
                              f'most a range attribute, not {list(spec.key)}')
        try:
            ItemColumns(spec.columns)
        except ValueError as error:
            raise ConfigError(f'tables.{name}.columns: {error}') from None
        specs.append(spec)
    return tuple(specs)


def _seeds(raw, tables: Tuple[TableSpec, ...], base_dir: str) -> Tuple[ExportSeed, ...]:
    """``seed:``, one mapping or a list of them: ``export`` (required),
    ``table`` (required when ``tables:`` names several), ``endpoint_url``."""
    if raw is None:
        return ()
    entries = raw if isinstance(raw, list) else [raw]
    names = [spec.source for spec in tables]
    seeds = []
    for i, entry in enumerate(entries):
        where = 'seed' if not isinstance(raw, list) else f'seed[{i}]'
        _check_keys(where, entry, ('export', 'table', 'endpoint_url'), required=('export',))
        table = entry.get('table')
        if table is None:
            if len(names) != 1:
                raise ConfigError(f'{where}.table: name the table the export seeds '
                                  f'(tables: names {len(names)})')
            table = names[0]
        elif table not in names:
            raise ConfigError(f'{where}.table: {_shown(table)} is not among tables: '
                              f'{", ".join(names)}')
        if any(seed.table == table for seed in seeds):
            raise ConfigError(f'{where}.table: {table} is seeded twice')
        export = _archive_path(f'{where}.export', entry['export'], base_dir)
        endpoint_url = entry.get('endpoint_url')
        if endpoint_url is not None:
            _typed(f'{where}.endpoint_url', endpoint_url, str, 'an http(s) URL')
            if not re.fullmatch(r'https?://[^/\s]+/?', endpoint_url):
                raise ConfigError(f'{where}.endpoint_url: expected http(s)://host[:port], '
                                  f'got {endpoint_url!r}')
        seeds.append(ExportSeed(table, export, endpoint_url))
    return tuple(seeds)


def _window_seconds(raw) -> float:
    """``window.seconds``: the fixed windows of the unbounded job
    (``--streaming``); 5 by default."""
    window = raw.get('window') or {}
    _check_keys('window', window, ('seconds',))
    seconds = _typed('window.seconds', window.get('seconds', 5), (int, float), 'a number')
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f'window.seconds: must be positive and finite, got {seconds!r}')
    return float(seconds)


def _dynamodb_config(raw, base_dir: str, config_path: Optional[str] = None) -> JobConfig:
    """A DynamoDB job: ``source`` (a table's stream, DynamoDB's Kinesis
    destination, or archived stream records), ``seed``, ``tables`` keyed by
    DynamoDB table name, the shared ``sinks`` and ``dead_letter``; ``job``
    and ``checkpoints`` for a stream source."""
    _check_keys('config', raw, _DYNAMODB_KEYS, required=('source', 'tables', 'sinks',
                                                          'dead_letter'))
    source = raw['source']
    tables = _dynamodb_tables(raw['tables'])
    seeds = _seeds(raw.get('seed'), tables, base_dir)
    if source['type'] == DYNAMODB_STREAM:
        source_config = _dynamodb_stream_source(source)._replace(seeds=seeds)
        if source_config.table not in {spec.source for spec in tables}:
            raise ConfigError(f'source.table: {source_config.table} is not among tables: '
                              f'{", ".join(spec.source for spec in tables)}')
    elif source['type'] == 'kinesis':
        source_config = _stream_source(source)._replace(seeds=seeds)
    else:
        _check_keys('source', source, ('type', 'format', 'path'),
                    required=('type', 'format', 'path'))
        if not isinstance(source['format'], str) or source['format'] not in DYNAMODB_FORMATS:
            raise ConfigError(f"source.format: {_shown(source['format'])} is not one of "
                              f"{', '.join(DYNAMODB_FORMATS)}")
        path = _archive_path('source.path', source['path'], base_dir)
        source_config = DynamoDBArchiveSource(DYNAMODB_ARCHIVE, source['format'], path, seeds)
    job, checkpoints_url = _job_and_checkpoints(raw, source_config, base_dir, config_path)
    sinks = _sinks(raw, base_dir)
    _check_shared_targets(tables)
    return JobConfig(source=source_config, tables=tables, window_seconds=_window_seconds(raw),
                     query_log_limit=0,
                     autocommit=True, job=job, checkpoints_url=checkpoints_url,
                     state_url=_state_url(raw, base_dir, job), **sinks)


def table_spec(table: TableSchema, target: Optional[str] = None, redact=()) -> TableSpec:
    """The spec of a table from the schema alone: a replicated table the log
    renamed or altered where ``tables:`` does not name it."""
    spec = _schema_table(table.qualified, {'redact': [c for c in redact if table.column(c)]},
                         table, pattern=True)
    return spec._replace(target=target) if target else spec


def resolve_tables(table_rules, schema: SourceSchema) -> Tuple[TableSpec, ...]:
    """The specs ``tables:`` (``JobConfig.table_rules``) gives against a schema
    the log reached after DDL: patterns match the tables it then holds, named
    tables it does not hold are left out. Raises ConfigError when the config
    no longer fits (a configured key column was dropped, two tables share a
    target)."""
    return _tables(table_rules, schema, lenient=True)


def _server_version(text) -> int:
    """``audit.server_version`` ('10.11.6', '8.0.36') as the server numbers
    itself in executable comments (101106, 80036)."""
    match = re.fullmatch(r'(\d{1,2})\.(\d{1,2})(?:\.(\d{1,2}))?', str(text).strip())
    if not isinstance(text, str) or match is None:
        raise ConfigError(f"audit.server_version: expected the source's version as text, "
                          f"e.g. '10.11.6' (MariaDB) or '8.0.36' (MySQL), got {_shown(text)}")
    major, minor, patch = (int(part or 0) for part in match.groups())
    return major * 10000 + minor * 100 + patch


def _check_shared_targets(specs: Tuple[TableSpec, ...]) -> None:
    """Tables replicated into one target must declare the same columns."""
    by_target = {}
    for spec in specs:
        other = by_target.setdefault(spec.target.lower(), spec)
        if other.columns != spec.columns:
            raise ConfigError(f'tables.{spec.source}.target: {spec.target!r} is also the target'
                              f' of {other.source}, which declares other columns')


def load_config(path: str) -> JobConfig:
    """Reads and validates a YAML job configuration file."""
    with open(path, encoding='utf-8') as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise ConfigError(f'{path}: not valid YAML: {error}') from None
        except UnicodeDecodeError as error:
            raise ConfigError(f'{path}: not UTF-8 text: {error}') from None
    return parse_config(raw, os.path.dirname(os.path.abspath(path)), config_path=path)


# --- table models, handlers and the state store -----------------------------------

def _import(where: str, ref, base_dir: str):
    from changeflow.handlers.models import import_ref
    _typed(where, ref, str, '"pkg.module:name"')
    try:
        return import_ref(ref, base_dir)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f'{where}: cannot import {ref!r}: {type(error).__name__}: '
                          f'{error}') from None


def _models(raw, base_dir: str):
    """``raw`` without the tables' ``model:`` keys, whose models fill in
    ``key`` and ``columns`` where those are not written; and table -> model
    reference. The config's directory is searched for the models' modules."""
    tables = raw.get('tables') if isinstance(raw, dict) else None
    if not isinstance(tables, dict) or not any(
            isinstance(spec, dict) and 'model' in spec for spec in tables.values()):
        return raw, {}
    from changeflow.handlers.models import model_columns, model_key
    raw = dict(raw, tables=dict(tables))
    models = {}
    for name, spec in tables.items():
        if not isinstance(spec, dict) or 'model' not in spec:
            continue
        where = f'tables.{name}.model'
        model = _import(where, spec['model'], base_dir)
        spec = {k: v for k, v in spec.items() if k != 'model'}
        try:
            spec.setdefault('key', list(model_key(model)))
            if 'columns' not in spec and not isinstance(raw.get('schema'), dict):
                spec['columns'] = dict(model_columns(model))
        except ValueError as error:
            raise ConfigError(f'{where}: {error}') from None
        raw['tables'][name] = spec
        models[name] = tables[name]['model']
    return raw, models


def _handler(i: int, raw, base_dir: str):
    from changeflow.handlers.events import EVENT_KINDS
    from changeflow.handlers.registry import Handler, RetryPolicy
    where = f'handlers[{i}]'
    _check_keys(where, raw, ('name', 'table', 'events', 'function', 'strategy', 'catch_error',
                             'options', 'batch_size', 'retry'),
                required=('name', 'table', 'function'))
    events = raw.get('events', 'all')
    events = list(EVENT_KINDS) if events == 'all' else [events] if isinstance(events, str) \
        else events
    _typed(f'{where}.events', events, list, f'"all" or a list of {", ".join(EVENT_KINDS)}')
    _import(f'{where}.function', raw['function'], base_dir)
    if raw.get('catch_error') is not None:
        _import(f'{where}.catch_error', raw['catch_error'], base_dir)
    options = raw.get('options')
    if options is not None:
        _typed(f'{where}.options', options, dict, 'a mapping of keyword arguments')
    retry = raw.get('retry') or {}
    _check_keys(f'{where}.retry', retry, ('attempts', 'initial_seconds', 'max_seconds'))
    try:
        policy = RetryPolicy(**retry)
        return Handler(raw['name'], raw['table'], raw['function'], events,
                       raw.get('strategy', 'series'), raw.get('catch_error'), options,
                       raw.get('batch_size', 100), policy, search_path=base_dir)
    except (TypeError, ValueError) as error:
        raise ConfigError(f'{where}: {error}') from None


def _with_handlers(config: JobConfig, raw, models, base_dir: str) -> JobConfig:
    """``config`` with its tables' models and ``handlers:`` (their ledger is
    in the state store, ``config.state_url``)."""
    from changeflow.handlers.registry import check_handlers
    handlers = raw.get('handlers') or []
    _typed('handlers', handlers, list, 'a list of handlers')
    handlers = tuple(_handler(i, h, base_dir) for i, h in enumerate(handlers))
    try:
        check_handlers(handlers, [spec.source for spec in config.tables])
    except ValueError as error:
        raise ConfigError(f'handlers: {error}') from None
    tables = tuple(spec._replace(model=models[spec.source]) if spec.source in models else spec
                   for spec in config.tables)
    return config._replace(tables=tables, handlers=handlers)
