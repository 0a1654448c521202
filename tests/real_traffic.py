"""Verify a replica of recorded real traffic against the source's final tables.

A fixture folder (``tests/data/app/<name>/``, recorded by
``tests/data/make_app_fixtures.py``) holds ``server_audit.log``, ``job.yaml``
and ``final.json`` (every source table after the traffic). :func:`run_fixture`
syncs the log with the fixture's job into a SQLite replica and a dead-letter
folder under a work directory, and :func:`compare` checks EVERY source row
against the replica. A row (by primary key) is:

* ``equal``: in both, every source column equal after coercing both sides to
  one comparable form (by the source column's MySQL type);
* ``covered``: it differs, or is missing from / extra in the replica, and a
  dead letter names that row's table (its statement writes the table, or its
  detail names it); when the replica has the divergence bookkeeping table
  ``changeflow_diverged``, the row (or its whole table) must also be marked
  there;
* ``silent``: it differs and nothing says so: the defect this exists to find.

Run it on a folder (e.g. after merging other branches)::

    python tests/real_traffic.py tests/data/app/pymysql [--job other.yaml] [--keep DIR]
"""

import argparse
import base64
import collections
import datetime
import decimal
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import sqlalchemy as sa
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, os.path.dirname(HERE))

APP = os.path.join(HERE, 'data', 'app')
FIXTURES = ('pymysql', 'orm', 'core', 'cli', 'schema_features', 'ddl', 'truncation', 'interleaved', 'bulk', 'bulk_ddl')
DIVERGED_TABLE = 'changeflow_diverged'
SHOWN_SILENT_ROWS = 5


# ---------------------------------------------------------------------------
# One comparable form for source and replica values.

class Absent(NamedTuple):
    """The replica table has no such column."""
    column: str


def typed_value(value):
    """final.json's typed JSON (see make_app_fixtures.typed) back to Python."""
    if not isinstance(value, dict):
        return value
    (tag, text), = value.items()
    if tag == 'decimal':
        return decimal.Decimal(text)
    if tag == 'float':
        return float(text)
    if tag == 'base64':
        return base64.b64decode(text)
    if tag == 'datetime':
        return datetime.datetime.fromisoformat(text)
    if tag == 'date':
        return datetime.date.fromisoformat(text)
    return text  # time


def _family(column_type: str) -> str:
    base = column_type.split('(')[0].split()[0].lower()
    if base in ('tinyint', 'smallint', 'mediumint', 'int', 'integer', 'bigint', 'year'):
        return 'integer'
    if base in ('decimal', 'numeric'):
        return 'decimal'
    if base in ('float', 'double', 'real'):
        return 'float' if base == 'float' else 'double'
    if base in ('binary', 'varbinary', 'tinyblob', 'blob', 'mediumblob', 'longblob'):
        return 'binary'
    if base in ('bit', 'date', 'datetime', 'timestamp'):
        return base if base != 'timestamp' else 'datetime'
    return 'text'  # char, varchar, *text, enum, set, time, json


def _number(value) -> Optional[decimal.Decimal]:
    if isinstance(value, bool):
        return decimal.Decimal(int(value))
    if isinstance(value, (int, decimal.Decimal)):
        return decimal.Decimal(value)
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, str):
        try:
            return decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            return None
    return None


def _tagged(value):
    """A value of an unexpected Python type: compared with its type, so it
    never equals a proper one by accident."""
    return (type(value).__name__, repr(value))


def comparable(column_type: str, value):
    """``value`` (from final.json or a replica driver) in one form per MySQL
    column type, so equal values compare equal whatever driver read them."""
    if value is None or isinstance(value, Absent):
        return value
    family = _family(column_type)
    if family == 'bit':
        if isinstance(value, (bytes, bytearray)):
            return int.from_bytes(value, 'big')
        family = 'integer'
    if family in ('integer', 'decimal'):
        number = _number(value)
        if number is None or not number.is_finite():
            return _tagged(value)
        if family == 'integer':
            return int(number) if number == number.to_integral_value() else _tagged(value)
        return number.normalize() if number else decimal.Decimal(0)
    if family in ('float', 'double'):
        number = _number(value)
        if number is None:
            return _tagged(value)
        return float(f'{float(number):.{6 if family == "float" else 15}g}')
    if family == 'binary':
        if isinstance(value, str):
            return value.encode('utf-8', 'surrogateescape')
        return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else _tagged(value)
    if family in ('date', 'datetime'):
        if isinstance(value, str):
            try:
                value = datetime.datetime.fromisoformat(value.strip())
            except ValueError:
                return _tagged(value)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            if family == 'date':
                return value.date().isoformat() if value.time() == datetime.time() else _tagged(value)
            return value.isoformat()
        if isinstance(value, datetime.date):
            return value.isoformat() if family == 'date' else datetime.datetime.combine(
                value, datetime.time()).isoformat()
        return _tagged(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode('utf-8')
        except UnicodeDecodeError:
            return _tagged(bytes(value))
    if isinstance(value, (int, decimal.Decimal)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, datetime.timedelta):
        return str(value)
    return _tagged(value)


# ---------------------------------------------------------------------------
# The report.

class SilentRow(NamedTuple):
    key: Tuple[Any, ...]
    kind: str                                   # 'differs' | 'missing' | 'extra'
    columns: Dict[str, Tuple[Any, Any]]         # column -> (source, replica), differing ones
    note: str = ''                              # e.g. a dead letter exists but no mark


class TableReport(NamedTuple):
    table: str                                  # source 'database.table'
    target: str                                 # replica table
    equal: int
    covered: int
    silent: int
    silent_rows: Tuple[SilentRow, ...]          # the first few
    covering_reasons: Tuple[str, ...]           # reasons of the dead letters naming the table
    silent_kinds: Tuple[Tuple[str, int], ...] = ()   # ('differs: col, col' | 'missing' | 'extra', rows)
    covered_kinds: Tuple[Tuple[str, int], ...] = ()


class Report(NamedTuple):
    fixture: str
    crash: Optional[str]                        # the job's exception, if it failed
    tables: Dict[str, TableReport]
    dead_letters: Dict[str, int]                # reason -> count

    @property
    def totals(self) -> Dict[str, int]:
        return {kind: sum(getattr(t, kind) for t in self.tables.values())
                for kind in ('equal', 'covered', 'silent')}

    def format(self) -> str:
        totals = self.totals
        out = [f'{self.fixture}: {totals["equal"]} equal, {totals["covered"]} covered, '
               f'{totals["silent"]} silent' + (f'; JOB CRASHED: {self.crash}' if self.crash else '')]
        if self.dead_letters:
            out.append('  dead letters: ' + ', '.join(
                f'{reason} {n}' for reason, n in sorted(self.dead_letters.items())))
        for t in self.tables.values():
            out.append(f'  {t.table} -> {t.target}: {t.equal} equal, {t.covered} covered, '
                       f'{t.silent} silent' + (f' (dead letters: {", ".join(t.covering_reasons)})'
                                               if t.covering_reasons else ''))
            if t.covered_kinds:
                out.append('    covered rows: ' + '; '.join(f'{n} {kind}' for kind, n in t.covered_kinds))
            if t.silent_kinds:
                out.append('    silent rows: ' + '; '.join(f'{n} {kind}' for kind, n in t.silent_kinds))
            for row in t.silent_rows:
                out.append(f'    silent {row.kind} {row.key!r}' + (f' [{row.note}]' if row.note else ''))
                for column, (source, replica) in row.columns.items():
                    out.append(f'      {column}: source {source!r} replica {replica!r}')
        return '\n'.join(out)


# ---------------------------------------------------------------------------
# Running a fixture's job.

def load_final(folder: str) -> dict:
    with open(os.path.join(folder, 'final.json'), encoding='utf-8') as f:
        return json.load(f)


def write_job(folder: str, workdir: str, job: str = 'job.yaml') -> str:
    """The fixture's job pointed at its log, writing only a SQLite replica and
    dead letters under ``workdir``; returns the config path."""
    with open(os.path.join(folder, job), encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['source']['path'] = os.path.join(os.path.abspath(folder), raw['source']['path'])
    for key in ('file',):  # a schema file named relative to the fixture
        schema = raw.get('schema') or {}
        if key in schema and not os.path.isabs(schema[key]):
            schema[key] = os.path.join(os.path.abspath(folder), schema[key])
    raw['sinks'] = {'database': {'url': f'sqlite:///{os.path.join(workdir, "replica.db")}'}}
    raw['dead_letter'] = {'path': os.path.join(workdir, 'dead-letter')}
    path = os.path.join(workdir, 'job.yaml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f, allow_unicode=True, sort_keys=False)
    return path


def run_job(config_path: str) -> Optional[str]:
    """Runs the job on the FnApiRunner; returns None, or the exception's last
    traceback line if the job failed."""
    from changeflow.pipelines import audit_sync
    try:
        audit_sync.run(['--config', config_path])
    except Exception:  # the harness reports a crash instead of raising it
        return traceback.format_exc().strip().splitlines()[-1]
    return None


def run_fixture(folder: str, workdir: str, job: str = 'job.yaml') -> Report:
    """Syncs the fixture into ``workdir`` and compares every row."""
    os.makedirs(workdir, exist_ok=True)
    config_path = write_job(folder, workdir, job)
    crash = run_job(config_path)
    return compare(folder, config_path, crash=crash)


# ---------------------------------------------------------------------------
# Comparing.

def _specs(config_path: str) -> dict:
    """source table -> TableSpec, as changeflow reads the job (a schema's
    patterns expanded)."""
    from changeflow.config import load_config
    return {spec.source: spec for spec in load_config(config_path).tables}


def _statement_of(original: bytes) -> Optional[str]:
    """The SQL of a dead letter whose original is a server_audit QUERY line."""
    from changeflow.transforms.audit_log import parse_audit_line
    try:
        event = parse_audit_line(original.decode('utf-8', 'replace'), '')
    except Exception:  # not an audit line (a change, a record): no statement
        return None
    return event.object if event.operation == 'QUERY' else None


_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.|'')*'?")


def _tables_named(text: str, names) -> set:
    """Tables whose bare name occurs as a word in ``text``, outside SQL strings."""
    text = _STRING_LITERAL.sub("''", text)
    found = set()
    for name in names:
        bare = name.rsplit('.', 1)[-1]
        if re.search(rf'(?<![\w$]){re.escape(bare)}(?![\w$])', text, re.IGNORECASE):
            found.add(name)
    return found


def _statement_tables(sql: str, names) -> Optional[set]:
    """Tables a statement names, by sqlglot; None when it does not parse."""
    import sqlglot
    from sqlglot import exp
    try:
        tree = sqlglot.parse_one(sql, read='mysql')
    except Exception:  # cut, or beyond sqlglot: fall back to words
        return None
    if tree is None:
        return None
    mentioned = {t.name.lower() for t in tree.find_all(exp.Table)}
    return {name for name in names if name.rsplit('.', 1)[-1].lower() in mentioned}


def dead_letter_tables(dead_letter_path: str, names) -> Tuple[Dict[str, List[str]], Dict[str, int]]:
    """table -> reasons of the dead letters naming it, and reason -> count."""
    from changeflow.io.dead_letter import read_dead_letters
    by_table = collections.defaultdict(list)
    reasons = collections.Counter()
    if not os.path.isdir(dead_letter_path):
        return by_table, reasons
    for letter in read_dead_letters(dead_letter_path):
        reasons[letter.reason] += 1
        named = _tables_named(letter.detail, names)
        sql = _statement_of(letter.original)
        if sql is not None:
            tables = _statement_tables(sql, names)
            named |= tables if tables is not None else _tables_named(sql, names)
        else:
            named |= _tables_named(letter.original.decode('utf-8', 'replace'), names)
        for name in named:
            by_table[name].append(letter.reason)
    return by_table, dict(reasons)


def _replica_rows(conn, table: str, columns: List[Tuple[str, str]], key: List[str]):
    """key -> {column: comparable value} of the replica table (raw driver
    values: no SQLAlchemy type processing), or None when it does not exist."""
    if not sa.inspect(conn).has_table(table):
        return None
    result = conn.execute(sa.select(sa.literal_column('*')).select_from(sa.table(table)))
    names = {n.lower(): i for i, n in enumerate(result.keys())}
    rows = {}
    for row in result:
        values = {c: comparable(t, row[names[c.lower()]]) if c.lower() in names else Absent(c)
                  for c, t in columns}
        rows[tuple(values[k] for k in key)] = values
    return rows


def _diverged(conn) -> Optional[set]:
    if not sa.inspect(conn).has_table(DIVERGED_TABLE):
        return None
    return {(r[0], r[1]) for r in conn.execute(sa.text(
        f'SELECT table_name, row_key FROM {DIVERGED_TABLE}'))}


def _marked(diverged: set, target: str, key: Tuple[Any, ...], key_types: List[str]) -> bool:
    if (target, '') in diverged:
        return True
    for table_name, row_key in diverged:
        if table_name != target or row_key.startswith('sha256:'):
            continue
        try:
            parts = json.loads(row_key)
        except ValueError:
            continue
        if (isinstance(parts, list) and len(parts) == len(key)
                and tuple(comparable(t, p) for t, p in zip(key_types, parts)) == key):
            return True
    return False


def compare(folder: str, config_path: str, *, crash: Optional[str] = None,
            dead_letter_path: Optional[str] = None, replica_url: Optional[str] = None) -> Report:
    """Every row of the fixture's final.json against the replica of ``config_path``."""
    with open(config_path, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    replica_url = replica_url or raw['sinks']['database']['url']
    dead_letter_path = dead_letter_path or raw['dead_letter']['path']
    final = load_final(folder)
    specs = _specs(config_path)
    targets = {name: spec.target for name, spec in specs.items()}
    source_tables = dict(final['tables'])
    for name in targets:  # replicated tables the source no longer has (renamed, dropped)
        source_tables.setdefault(name, {'key': None, 'columns': None, 'rows': []})
    letters, reasons = dead_letter_tables(dead_letter_path, list(source_tables))
    engine = sa.create_engine(replica_url)
    tables = {}
    try:
        with engine.connect() as conn:
            diverged = _diverged(conn)
            for name, data in source_tables.items():
                target = targets.get(name, name.split('.', 1)[1])
                columns = data['columns']
                key = data['key']
                if columns is None:  # only in the job: describe it from the replica
                    columns, key = _replica_columns(conn, target, list(specs[name].key))
                tables[name] = _compare_table(conn, name, target, key, [tuple(c) for c in columns],
                                              data['rows'], letters.get(name, []), diverged)
    finally:
        engine.dispose()
    return Report(os.path.basename(os.path.normpath(folder)), crash, tables, reasons)


def _replica_columns(conn, target: str, key: List[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    if not sa.inspect(conn).has_table(target):
        return [(k, 'text') for k in key], key
    return [(c['name'], str(c['type']).lower()) for c in sa.inspect(conn).get_columns(target)], key


def _compare_table(conn, name, target, key, columns, source_rows, reasons, diverged) -> TableReport:
    types = dict(columns)
    key_types = [types[k] for k in key]
    source = {}
    for row in source_rows:
        values = {c: comparable(t, typed_value(v)) for (c, t), v in zip(columns, row)}
        source[tuple(values[k] for k in key)] = values
    replica = _replica_rows(conn, target, columns, key)
    if replica is None:
        replica = {}
    counts = collections.Counter()
    kinds = collections.Counter()
    covered_kinds = collections.Counter()
    silent_rows = []
    for row_key in list(source) + [k for k in replica if k not in source]:
        mine, theirs = source.get(row_key), replica.get(row_key)
        if mine is not None and theirs is not None:
            differing = {c: (mine[c], theirs[c]) for c, _ in columns if mine[c] != theirs[c]}
            if not differing:
                counts['equal'] += 1
                continue
            kind = 'differs'
        elif mine is not None:
            kind, differing = 'missing', {}
        else:
            kind, differing = 'extra', {}
        note = ''
        kind_text = f'{kind}: {", ".join(differing)}' if differing else kind
        if reasons:
            if diverged is None or _marked(diverged, target, row_key, key_types):
                counts['covered'] += 1
                covered_kinds[kind_text] += 1
                continue
            note = f'dead letters ({", ".join(sorted(set(reasons)))}) but not marked diverged'
        counts['silent'] += 1
        kinds[kind_text] += 1
        if len(silent_rows) < SHOWN_SILENT_ROWS:
            silent_rows.append(SilentRow(row_key, kind, differing, note))
    return TableReport(name, target, counts['equal'], counts['covered'], counts['silent'],
                       tuple(silent_rows), tuple(sorted(set(reasons))),
                       tuple(kinds.most_common()), tuple(covered_kinds.most_common()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('folder', help='a fixture folder, e.g. tests/data/app/pymysql')
    parser.add_argument('--job', default='job.yaml', help="the job file in the folder")
    parser.add_argument('--keep', help='work directory to keep (default: a temporary one)')
    args = parser.parse_args(argv)
    workdir = args.keep or tempfile.mkdtemp(prefix='changeflow-real-traffic-')
    try:
        report = run_fixture(args.folder, workdir, args.job)
        print(report.format())
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if report.crash or report.totals['silent'] else 0


if __name__ == '__main__':
    sys.exit(main())
