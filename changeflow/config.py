"""The YAML job configuration, validated into typed records.

Every problem is a :class:`ConfigError` naming the key, found before the job
starts: types, ranges (positive batch sizes and windows, finite numbers),
decimal precision and scale as MySQL allows them (1 to 65 digits, scale 0 to
30 and at most the precision), table and column names that are strings,
targets that cannot escape their directory, database URLs that SQLAlchemy
can parse, and non-empty paths.
"""

import glob
import math
import os
import re
from typing import NamedTuple, Optional, Tuple

import sqlalchemy.engine
import sqlalchemy.exc
import yaml

from changeflow.model import OpKind

__all__ = ['TableSpec', 'SourceConfig', 'NotifyRule', 'JobConfig', 'ConfigError',
           'parse_config', 'load_config']

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

    def column_type(self, name: str) -> Optional[str]:
        return dict(self.columns).get(name)


class SourceConfig(NamedTuple):
    type: str                     # 'archive'
    format: str                   # 'kinesis-jsonl' | 'firehose' | 'server-audit'
    path: str


class NotifyRule(NamedTuple):
    to: str                       # 'file:PATH' or 'stdout'
    table: Optional[str] = None   # match one source table, or any
    ops: Tuple[str, ...] = ()     # match these op kinds, or any


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


class ConfigError(ValueError):
    """A configuration problem, naming the offending key."""


ARCHIVE_FORMATS = ('kinesis-jsonl', 'firehose', 'server-audit')
_COLUMN_TYPE = re.compile(r'([a-z]+)\s*(?:\((.*)\))?', re.S)
_DECIMAL_ARGS = re.compile(r'\s*(\d{1,3})\s*(?:,\s*(\d{1,3})\s*)?')
_MAX_DECIMAL_PRECISION, _MAX_DECIMAL_SCALE = 65, 30
NOTIFY_OPS = tuple(kind.value for kind in OpKind)  # a rule's `when.op`


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
    """A declared column type, normalised ('decimal(10)' -> 'decimal(10,0)')."""
    text = str(kind).strip().lower()
    match = _COLUMN_TYPE.fullmatch(text)
    if not isinstance(kind, str) or match is None or match.group(1) not in COLUMN_TYPES:
        raise ConfigError(f'{where}: unknown type {_shown(kind)}; '
                          f'use one of {", ".join(COLUMN_TYPES)}')
    base, arguments = match.groups()
    if arguments is None:
        return base
    if base != 'decimal':
        raise ConfigError(f'{where}: type {kind!r} takes no parameters')
    numbers = _DECIMAL_ARGS.fullmatch(arguments)
    if numbers is None:
        raise ConfigError(f'{where}: {kind!r} is not decimal(precision,scale)')
    precision, scale = int(numbers.group(1)), int(numbers.group(2) or 0)
    if not (1 <= precision <= _MAX_DECIMAL_PRECISION and scale <= _MAX_DECIMAL_SCALE
            and scale <= precision):
        raise ConfigError(f'{where}: {kind!r}: precision must be 1 to {_MAX_DECIMAL_PRECISION}'
                          f' and scale 0 to {_MAX_DECIMAL_SCALE}, at most the precision')
    return f'decimal({precision},{scale})'


def _database_url(where: str, url: str) -> str:
    _path(where, url, 'an SQLAlchemy URL')
    try:
        sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as error:
        raise ConfigError(f'{where}: {url!r} is not an SQLAlchemy URL'
                          f' (dialect+driver://user@host/database): {error}') from None
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


def _table(name, raw) -> TableSpec:
    where = f'tables.{name}'
    if not isinstance(name, str):
        raise ConfigError(f'{where}: a table name must be a string database.table, got {name!r}')
    _check_keys(where, raw, ('key', 'target', 'columns', 'redact'), required=('key',))
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


def _notify_rule(i: int, raw, base_dir: str) -> NotifyRule:
    where = f'sinks.notify[{i}]'
    _check_keys(where, raw, ('to', 'when'), required=('to',))
    to = _typed(f'{where}.to', raw['to'], str, 'a string')
    if to.startswith('file:'):
        _path(f'{where}.to', to[len('file:'):], "'file:PATH' with a path")
        to = 'file:' + _resolve(to[len('file:'):], base_dir)
    elif to != 'stdout':
        raise ConfigError(f"{where}.to: {to!r} is not supported; use 'file:PATH' or 'stdout'")
    when = raw.get('when') or {}
    _check_keys(f'{where}.when', when, ('table', 'op'))
    ops = when.get('op') or []
    ops = [ops] if isinstance(ops, str) else ops
    _typed(f'{where}.when.op', ops, list, 'an op or a list of ops')
    for op in ops:
        if not isinstance(op, str) or op not in NOTIFY_OPS:
            raise ConfigError(f'{where}.when.op: unknown op {op!r}; use one of {", ".join(NOTIFY_OPS)}')
    table = when.get('table')
    if table is not None:
        _typed(f'{where}.when.table', table, str, 'a string')
    return NotifyRule(to, table, tuple(ops))


def parse_config(raw, base_dir: str = '.') -> JobConfig:
    """Validates a loaded YAML document; raises ConfigError naming the key."""
    _check_keys('config', raw, ('source', 'tables', 'window', 'sinks', 'dead_letter', 'audit'),
                required=('source', 'tables', 'sinks', 'dead_letter'))
    source = raw['source']
    _check_keys('source', source, ('type', 'format', 'path'), required=('type', 'format', 'path'))
    if not isinstance(source['type'], str) or source['type'] != 'archive':
        raise ConfigError(f"source.type: {_shown(source['type'])} is not supported; use 'archive'")
    if not isinstance(source['format'], str) or source['format'] not in ARCHIVE_FORMATS:
        raise ConfigError(f"source.format: {_shown(source['format'])} is not one of "
                          f"{', '.join(ARCHIVE_FORMATS)}")
    _path('source.path', source['path'], 'a path or glob')
    path = _resolve(source['path'], base_dir)
    if '://' not in path and not glob.has_magic(path) and not os.path.exists(path):
        raise ConfigError(f'source.path: {path} does not exist')
    tables = raw['tables']
    _typed('tables', tables, dict, 'a mapping of database.table: spec')
    if not tables:
        raise ConfigError('tables: name at least one table to replicate')
    window = raw.get('window') or {}
    _check_keys('window', window, ('seconds',))
    seconds = _typed('window.seconds', window.get('seconds', 5), (int, float), 'a number')
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f'window.seconds: must be positive and finite, got {seconds!r}')
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
    audit = raw.get('audit') or {}
    _check_keys('audit', audit, ('query_log_limit', 'autocommit'))
    limit = _typed('audit.query_log_limit', audit.get('query_log_limit', 1024), int, 'an integer')
    if limit < 0:
        raise ConfigError(f'audit.query_log_limit: must be 0 (unlimited) or more, got {limit!r}')
    specs = tuple(_table(name, spec) for name, spec in tables.items())
    _check_shared_targets(specs)
    return JobConfig(
        source=SourceConfig('archive', source['format'], path),
        tables=specs,
        window_seconds=float(seconds),
        database_url=_resolve_url(database['url'], base_dir) if database else None,
        database_batch_size=database.get('batch_size', 500) if database else 500,
        parquet_path=_resolve(parquet['path'], base_dir) if parquet else None,
        notify=tuple(_notify_rule(i, r, base_dir) for i, r in enumerate(notify)),
        dead_letter_path=_resolve(dead['path'], base_dir),
        query_log_limit=limit,
        autocommit=_typed('audit.autocommit', audit.get('autocommit', True), bool, 'true/false'),
    )


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
    return parse_config(raw, os.path.dirname(os.path.abspath(path)))
