"""The YAML job configuration, validated into typed records."""

import glob
import os
from typing import NamedTuple, Optional, Tuple

import yaml

from changeflow.model import MARKER_KINDS, OpKind

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
        raise ConfigError(f'{where}: expected {name}, got {value!r}')
    return value


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


def _table(name: str, raw) -> TableSpec:
    where = f'tables.{name}'
    _check_keys(where, raw, ('key', 'target', 'columns', 'redact'), required=('key',))
    if '.' not in name:
        raise ConfigError(f'{where}: name tables as database.table, as the audit log does')
    key = raw['key']
    if isinstance(key, str):
        key = [key]
    if not isinstance(key, list) or not key or not all(isinstance(k, str) for k in key):
        raise ConfigError(f'{where}.key: expected a column name or a list of them, got {key!r}')
    target = _typed(f'{where}.target', raw.get('target', name.split('.', 1)[1]), str, 'a string')
    columns = raw.get('columns') or {}
    _typed(f'{where}.columns', columns, dict, 'a mapping of column: type')
    defaults = {}
    for column, kind in list(columns.items()):
        if isinstance(kind, dict):  # {type: string, default: new}
            _check_keys(f'{where}.columns.{column}', kind, ('type', 'default'), required=('type',))
            if kind.get('default') is not None:
                defaults[column] = str(kind['default'])
            kind = columns[column] = kind['type']
        base = str(kind).split('(')[0].strip().lower()
        if base not in COLUMN_TYPES:
            raise ConfigError(f'{where}.columns.{column}: unknown type {kind!r}; '
                              f'use one of {", ".join(COLUMN_TYPES)}')
    if columns and not set(key) <= set(columns):
        raise ConfigError(f'{where}.columns: must include the key column(s) {", ".join(key)}')
    redact = raw.get('redact') or []
    _typed(f'{where}.redact', redact, list, 'a list of column names')
    return TableSpec(name, tuple(key), target,
                     tuple((c, str(t).lower().replace(' ', '')) for c, t in columns.items()),
                     tuple(redact), tuple(defaults.items()))


def _notify_rule(i: int, raw, base_dir: str) -> NotifyRule:
    where = f'sinks.notify[{i}]'
    _check_keys(where, raw, ('to', 'when'), required=('to',))
    to = _typed(f'{where}.to', raw['to'], str, 'a string')
    if to.startswith('file:'):
        to = 'file:' + _resolve(to[len('file:'):], base_dir)
    elif to != 'stdout':
        raise ConfigError(f"{where}.to: {to!r} is not supported; use 'file:PATH' or 'stdout'")
    when = raw.get('when') or {}
    _check_keys(f'{where}.when', when, ('table', 'op'))
    ops = when.get('op') or []
    ops = [ops] if isinstance(ops, str) else ops
    for op in ops:
        if op not in NOTIFY_OPS:
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
    if source['type'] != 'archive':
        raise ConfigError(f"source.type: {source['type']!r} is not supported; use 'archive'")
    if source['format'] not in ARCHIVE_FORMATS:
        raise ConfigError(f"source.format: {source['format']!r} is not one of "
                          f"{', '.join(ARCHIVE_FORMATS)}")
    _typed('source.path', source['path'], str, 'a path or glob')
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
    if seconds <= 0:
        raise ConfigError(f'window.seconds: must be positive, got {seconds!r}')
    sinks = raw['sinks']
    _check_keys('sinks', sinks, ('database', 'parquet', 'notify'))
    database = sinks.get('database')
    if database is not None:
        _check_keys('sinks.database', database, ('url', 'batch_size'), required=('url',))
        _typed('sinks.database.url', database['url'], str, 'an SQLAlchemy URL')
        _typed('sinks.database.batch_size', database.get('batch_size', 500), int, 'an integer')
    parquet = sinks.get('parquet')
    if parquet is not None:
        _check_keys('sinks.parquet', parquet, ('path',), required=('path',))
        _typed('sinks.parquet.path', parquet['path'], str, 'a directory or s3:// prefix')
    notify = sinks.get('notify') or []
    _typed('sinks.notify', notify, list, 'a list of rules')
    dead = raw['dead_letter']
    _check_keys('dead_letter', dead, ('path',), required=('path',))
    _typed('dead_letter.path', dead['path'], str, 'a directory or s3:// prefix')
    audit = raw.get('audit') or {}
    _check_keys('audit', audit, ('query_log_limit', 'autocommit'))
    return JobConfig(
        source=SourceConfig('archive', source['format'], path),
        tables=tuple(_table(name, spec) for name, spec in tables.items()),
        window_seconds=float(seconds),
        database_url=_resolve_url(database['url'], base_dir) if database else None,
        database_batch_size=database.get('batch_size', 500) if database else 500,
        parquet_path=_resolve(parquet['path'], base_dir) if parquet else None,
        notify=tuple(_notify_rule(i, r, base_dir) for i, r in enumerate(notify)),
        dead_letter_path=_resolve(dead['path'], base_dir),
        query_log_limit=_typed('audit.query_log_limit', audit.get('query_log_limit', 1024), int,
                               'an integer'),
        autocommit=_typed('audit.autocommit', audit.get('autocommit', True), bool, 'true/false'),
    )


def load_config(path: str) -> JobConfig:
    """Reads and validates a YAML job configuration file."""
    with open(path, encoding='utf-8') as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as error:
            raise ConfigError(f'{path}: not valid YAML: {error}') from None
    return parse_config(raw, os.path.dirname(os.path.abspath(path)))
