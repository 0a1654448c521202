"""Logged MySQL statements -> keyed row changes.

A statement is never executed: sqlglot (MySQL dialect) parses it and each
affected row becomes a :class:`~changeflow.model.RowOp`. Parsing costs ~0.4 ms,
so statements are first reduced to their *shape* (literals masked as
``:p0, :p1, ...``) and each shape is parsed and compiled once into a plan; a
statement then costs one regex scan plus a dict lookup.

What is translated: INSERT (single and multi-row; a column list, or the
declared column order), REPLACE, INSERT IGNORE, INSERT ... ON DUPLICATE KEY
UPDATE (``VALUES(col)`` included), UPDATE and DELETE whose WHERE pins every key
column by equality (``AND``, ``IN`` lists), TRUNCATE. Assignments may be
deterministic expressions of the row (``qty = qty + 1``); they are carried as
expressions and evaluated against the replica's row by the sink.

What is refused with reason ``needs-lookup`` (the replica cannot reproduce it
from the statement alone): clock/random/session functions, user variables,
prepared-statement templates (``?``), INSERT ... SELECT, subqueries,
multi-table statements, a WHERE that does not pin the key, writes that change
a key column, inserts without the key (AUTO_INCREMENT). Reads, DDL and session
statements are classified and skipped.
"""

import decimal
import logging
import operator
import re
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import sqlglot
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from sqlglot import expressions as exp

from changeflow.config import TableSpec
from changeflow.expressions import leaf_tags, substitute
from changeflow.model import (DEAD_LETTER_TAG, Change, OpKind, RowOp, audit_version,
                              dead_letter)
from changeflow.transforms.transactions import CommittedTransaction

__all__ = ['SqlChangeError', 'RowChange', 'Translation', 'StatementTranslator',
           'ExtractRowChanges', 'mask_literals', 'unescape_mysql_string']

MAX_CACHED_SHAPES = 20_000

# sqlglot warns on every statement it parses as a generic Command (PREPARE, ...).
logging.getLogger('sqlglot').setLevel(logging.ERROR)


class SqlChangeError(Exception):
    """A statement that cannot become row changes; ``reason`` classifies it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


class RowChange(NamedTuple):
    """One row touched by one statement (versioned later, per transaction)."""
    table: str
    key: Tuple[Any, ...]
    kind: OpKind
    values: Tuple[Tuple[str, Any], ...]
    assignments: Tuple[Tuple[str, Any], ...]


class Translation(NamedTuple):
    """``skipped`` names why a statement has no changes ('read', 'ddl',
    'session', 'untracked-table'); otherwise ``changes`` holds them."""
    changes: Tuple[RowChange, ...]
    skipped: str = ''


# --- literal masking ---------------------------------------------------------

# One match per literal or comment: a possessive run skips everything that
# cannot start one (words, `identifiers`, punctuation), then the literal is
# captured. A word directly followed by a quote (x'41', b'01', _utf8mb4'a') is
# not skipped, so its literal is seen. ``split`` returns, per match: the text
# before it (empty), the skipped run, then one group per literal kind.
_TOKEN = re.compile(r"""
    ((?:[A-Za-z_$][\w$]*+(?!['"])
     | `(?:[^`]++|``)*+`
     | [^\w$'"`#/\-]++
     | -(?!-[ \t])
     | /(?!\*)
    )*+)
    (?:
      '((?:[^'\\]++|\\.|'')*+)'
    | (\d++)(?![\w$.eE])
    | ((?:\d++(?:\.\d*+)?|\.\d++)(?:[eE][-+]?\d++)?)(?![\w$])
    | (/\*.*?\*/|--[ \t][^\n]*+|\#[^\n]*+)
    | ([xX]'[0-9a-fA-F]*+'|0x[0-9a-fA-F]++|[bB]'[01]*+'|"(?:[^"\\]++|\\.|"")*+")
    )
""", re.S | re.X)
_GROUPS = 7  # split() pieces per match: before, skipped, str, int, number, comment, other
MARKER = '\0'  # stands for a literal in a shape; NUL cannot occur in SQL outside a literal

_ESCAPES = {'0': '\0', "'": "'", '"': '"', 'b': '\b', 'n': '\n', 'r': '\r',
            't': '\t', 'Z': '\x1a', '\\': '\\', '%': '\\%', '_': '\\_'}
_ESCAPE = re.compile(r"\\(.)|''|\"\"", re.S)


def unescape_mysql_string(body: str, quote: str = "'") -> str:
    """The value of a MySQL string literal's body (between the quotes)."""
    if '\\' not in body and quote * 2 not in body:
        return body

    def replace(match):
        char = match.group(1)
        if char is None:
            return match.group(0)[0]
        return _ESCAPES.get(char, char)
    return _ESCAPE.sub(replace, body)


def _number(text: str):
    if 'e' in text or 'E' in text:
        return float(text)
    if '.' in text:
        return decimal.Decimal(text)
    return int(text)


def _other_literal(text: str):
    if text[0] == '"':
        return unescape_mysql_string(text[1:-1], '"')
    if text[0] == '0':
        return bytes.fromhex(text[2:])
    if text[0] in 'xX':
        return bytes.fromhex(text[2:-1])
    return int(text[2:-1] or '0', 2)


def mask_literals(sql: str) -> Tuple[str, List[Any]]:
    """(shape, literal values): the statement with each literal replaced by
    :data:`MARKER` and comments by a space, and the literals' values in order."""
    pieces = _TOKEN.split(sql)
    if len(pieces) == 1:
        return sql, []
    shape = []
    params: List[Any] = []
    for i in range(0, len(pieces) - 1, _GROUPS):
        shape.append(pieces[i])
        shape.append(pieces[i + 1])
        text = pieces[i + 2]
        if text is not None:
            params.append(text if '\\' not in text and "''" not in text
                          else unescape_mysql_string(text))
        elif pieces[i + 3] is not None:
            params.append(int(pieces[i + 3]))
        elif pieces[i + 4] is not None:
            params.append(_number(pieces[i + 4]))
        elif pieces[i + 5] is not None:
            shape.append(' ')
            continue
        else:
            params.append(_other_literal(pieces[i + 6]))
        shape.append(MARKER)
    shape.append(pieces[-1])
    return ''.join(shape), params


def _numbered(shape: str) -> str:
    """The shape as sqlglot parses it: markers become :p0, :p1, ..."""
    parts = shape.split(MARKER)
    return ''.join(part + (f':p{i}' if i < len(parts) - 1 else '') for i, part in enumerate(parts))


# --- plans -------------------------------------------------------------------

# A template expression is an expressions.py tuple that may also hold
# ('param', i): the statement's i-th literal, bound per statement.

_NEEDS_LOOKUP_FUNCTIONS = {
    'NOW', 'CURRENT_TIMESTAMP', 'CURRENT_DATE', 'CURRENT_TIME', 'CURDATE', 'CURTIME',
    'SYSDATE', 'UTC_TIMESTAMP', 'UTC_DATE', 'UTC_TIME', 'UNIX_TIMESTAMP', 'LOCALTIME',
    'LOCALTIMESTAMP', 'RAND', 'UUID', 'UUID_SHORT', 'LAST_INSERT_ID', 'CONNECTION_ID',
    'USER', 'CURRENT_USER', 'SESSION_USER', 'SYSTEM_USER', 'DATABASE', 'SCHEMA',
    'FOUND_ROWS', 'ROW_COUNT', 'NEXTVAL', 'LASTVAL', 'SLEEP',
}
_BINARY = {exp.Add: '+', exp.Sub: '-', exp.Mul: '*', exp.Div: '/', exp.IntDiv: 'DIV',
           exp.Mod: '%'}
_FUNCTIONS = {exp.Coalesce: 'COALESCE', exp.Upper: 'UPPER', exp.Lower: 'LOWER',
              exp.Abs: 'ABS', exp.Greatest: 'GREATEST', exp.Least: 'LEAST'}


def _needs_lookup(detail: str) -> SqlChangeError:
    return SqlChangeError('needs-lookup', detail)


class _Compiler:
    """Turns one parsed statement shape into a plan: params -> [RowChange]."""

    def __init__(self, tables: Dict[str, TableSpec], database: str):
        self._tables = tables
        self._database = database

    # Expressions ------------------------------------------------------------

    def expr(self, node, row_values: Optional[Dict[str, tuple]] = None) -> tuple:
        """Template expression of ``node``; ``row_values`` resolves VALUES(col)."""
        if isinstance(node, exp.Paren):
            return self.expr(node.this, row_values)
        if isinstance(node, exp.Placeholder):
            if not node.this or not str(node.this).startswith('p'):
                raise _needs_lookup('prepared-statement placeholder (?) has no value in the log')
            return ('param', int(str(node.this)[1:]))
        if isinstance(node, exp.Literal):
            return ('lit', node.this if node.is_string else _number(node.this))
        if isinstance(node, exp.Null):
            return ('lit', None)
        if isinstance(node, exp.Boolean):
            return ('lit', 1 if node.this else 0)
        if isinstance(node, exp.Column):
            if node.table and node.table not in (self._table_alias or ''):
                raise _needs_lookup(f'column of another table: {node.sql(dialect="mysql")}')
            return ('col', node.name)
        if isinstance(node, exp.Neg):
            return ('neg', self.expr(node.this, row_values))
        op = _BINARY.get(type(node))
        if op:
            return ('bin', op, self.expr(node.this, row_values),
                    self.expr(node.expression, row_values))
        if isinstance(node, exp.Concat):
            return ('fn', 'CONCAT', tuple(self.expr(a, row_values) for a in node.expressions))
        name = _FUNCTIONS.get(type(node))
        if name:
            args = [node.this] + list(node.expressions) if node.this is not None else list(
                node.expressions)
            return ('fn', name, tuple(self.expr(a, row_values) for a in args))
        if isinstance(node, exp.Anonymous):
            fname = str(node.this).upper()
            if fname == 'VALUES' and row_values is not None and len(node.expressions) == 1:
                column = node.expressions[0].name
                if column not in row_values:
                    raise SqlChangeError('unsupported-sql', f'VALUES({column}) of a column not inserted')
                return row_values[column]
            if fname == 'IFNULL' and len(node.expressions) == 2:
                return ('fn', 'IFNULL', tuple(self.expr(a, row_values) for a in node.expressions))
            if fname in _NEEDS_LOOKUP_FUNCTIONS:
                raise _needs_lookup(f'non-deterministic function {fname}()')
            raise _needs_lookup(f'function {fname}() is not evaluated by changeflow')
        if isinstance(node, (exp.Parameter, exp.SessionParameter)):
            raise _needs_lookup(f'variable {node.sql(dialect="mysql")} has no value in the log')
        if isinstance(node, (exp.Subquery, exp.Select)):
            raise _needs_lookup('subquery')
        if isinstance(node, exp.Func):
            fname = node.sql_name()
            if fname in _NEEDS_LOOKUP_FUNCTIONS or type(node).__name__.startswith('Current'):
                raise _needs_lookup(f'non-deterministic function {fname}()')
            raise _needs_lookup(f'function {fname}() is not evaluated by changeflow')
        raise _needs_lookup(f'expression {node.sql(dialect="mysql")!r} is not evaluated by changeflow')

    # Tables and keys --------------------------------------------------------

    _table_alias = None

    def table(self, node) -> Optional[TableSpec]:
        if not isinstance(node, exp.Table) or node.args.get('joins'):
            raise _needs_lookup('multi-table statement')
        database = node.db or self._database
        self._table_alias = {node.name, node.alias_or_name}
        return self._tables.get(f'{database}.{node.name}')

    def key_pins(self, where, spec: TableSpec) -> Dict[str, List[tuple]]:
        """Key column -> candidate template values, from ``a = x AND b IN (...)``."""
        if where is None:
            raise _needs_lookup('no WHERE clause: every row of the table')
        pins: Dict[str, List[tuple]] = {}
        conjuncts = list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
        stack = conjuncts
        while stack:
            node = stack.pop()
            while isinstance(node, exp.Paren):
                node = node.this
            if isinstance(node, exp.And):
                stack.extend(node.flatten())
                continue
            if isinstance(node, exp.EQ):
                left, right = node.this, node.expression
                if not isinstance(left, exp.Column):
                    left, right = right, left
                if isinstance(left, exp.Column) and left.name in spec.key:
                    values = [self._constant(right)]
                    column = left.name
                else:
                    raise _needs_lookup(f'WHERE on a non-key condition: {node.sql(dialect="mysql")}')
            elif isinstance(node, exp.In) and isinstance(node.this, exp.Column) \
                    and node.this.name in spec.key and not node.args.get('query'):
                column = node.this.name
                values = [self._constant(v) for v in node.expressions]
            else:
                raise _needs_lookup(f'WHERE on a non-key condition: {node.sql(dialect="mysql")}')
            if column in pins:
                raise _needs_lookup(f'key column {column} constrained twice')
            pins[column] = values
        missing = [k for k in spec.key if k not in pins]
        if missing:
            raise _needs_lookup(f'WHERE does not pin key column(s) {", ".join(missing)}')
        return pins

    def _constant(self, node) -> tuple:
        value = self.expr(node)
        if _reads_columns(value):
            raise _needs_lookup(f'WHERE compares to a column: {node.sql(dialect="mysql")}')
        return value

    # Statements -------------------------------------------------------------

    def compile(self, tree) -> Callable[[Sequence[Any]], Translation]:
        if isinstance(tree, exp.Insert):
            return self._insert(tree)
        if isinstance(tree, exp.Update):
            return self._update(tree)
        if isinstance(tree, exp.Delete):
            return self._delete(tree)
        if isinstance(tree, exp.TruncateTable):
            specs = [self.table(t) for t in tree.expressions]
            if any(spec is None for spec in specs):
                return _constant_translation(Translation((), 'untracked-table'))
            changes = tuple(RowChange(spec.source, (), OpKind.TRUNCATE, (), ()) for spec in specs)
            return _constant_translation(Translation(changes))
        if isinstance(tree, (exp.Select, exp.Union, exp.Show, exp.Describe)):
            return _constant_translation(Translation((), 'read'))
        if isinstance(tree, (exp.Create, exp.Drop, exp.Alter)) or (
                isinstance(tree, exp.Command) and str(tree.this).upper() in (
                    'ALTER', 'CREATE', 'DROP', 'RENAME', 'ANALYZE', 'OPTIMIZE', 'GRANT',
                    'REVOKE', 'FLUSH')):
            return _constant_translation(Translation((), 'ddl'))
        if isinstance(tree, exp.Command) and str(tree.this).upper() in ('CALL', 'LOAD'):
            raise _needs_lookup(f'{str(tree.this).upper()} writes rows the log does not show')
        if isinstance(tree, (exp.Set, exp.Use, exp.Transaction, exp.Commit, exp.Rollback)) or (
                isinstance(tree, exp.Command)):
            return _constant_translation(Translation((), 'session'))
        if isinstance(tree, exp.Alias):  # SAVEPOINT x parses as an alias
            return _constant_translation(Translation((), 'session'))
        raise SqlChangeError('unsupported-sql', f'{type(tree).__name__} statement')

    def _insert(self, tree: exp.Insert):
        target = tree.this
        columns = None
        if isinstance(target, exp.Schema):
            columns = [c.name for c in target.expressions]
            target = target.this
        spec = self.table(target)
        if spec is None:
            return _constant_translation(Translation((), 'untracked-table'))
        if columns is None:
            if not spec.columns:
                raise _needs_lookup('INSERT without a column list and no declared columns')
            columns = [name for name, _ in spec.columns]
        source = tree.expression
        if not isinstance(source, exp.Values):
            raise _needs_lookup('INSERT ... SELECT reads other rows')
        missing = [k for k in spec.key if k not in columns]
        if missing:
            raise _needs_lookup(f'INSERT without key column(s) {", ".join(missing)} '
                                f'(AUTO_INCREMENT values are not in the log)')
        conflict = tree.args.get('conflict')
        if getattr(tree, '_changeflow_replace', False):
            kind = OpKind.REPLACE
        elif conflict is not None:
            kind = OpKind.UPSERT
        elif tree.args.get('ignore'):
            kind = OpKind.INSERT_IGNORE
        else:
            kind = OpKind.INSERT
        rows = []
        for row in source.expressions:
            items = row.expressions if isinstance(row, exp.Tuple) else [row]
            if len(items) != len(columns):
                raise SqlChangeError('unsupported-sql', 'VALUES row length differs from column list')
            values = {}
            for column, node in zip(columns, items):
                if isinstance(node, exp.Var) and node.name.upper() == 'DEFAULT':
                    if column in spec.key:
                        raise _needs_lookup(f'key column {column} takes its DEFAULT')
                    continue
                template = self.expr(node)
                if _reads_columns(template):
                    raise _needs_lookup(f'VALUES reads a column: {node.sql(dialect="mysql")}')
                values[column] = template
            assignments = []
            if conflict is not None:
                for eq in conflict.expressions:
                    column = eq.this.name
                    if column in spec.key:
                        raise _needs_lookup(f'ON DUPLICATE KEY UPDATE changes key column {column}')
                    assignments.append((column, self.expr(eq.expression, values)))
            rows.append((values, tuple(assignments)))
        # Every row names the same columns (DEFAULT aside), so key positions
        # are those of the first row; a row that differs is checked here.
        first = list(rows[0][0])
        if any(list(values) != first for values, _ in rows):
            raise SqlChangeError('unsupported-sql', 'DEFAULT in some VALUES rows but not others')
        key_positions = [first.index(k) for k in spec.key]
        compiled = [(tuple(values), _values_binder(list(values.values())),
                     tuple((c, _binder(t)) for c, t in assignments)) for values, assignments in rows]
        source_table = spec.source

        def plan(params):
            changes = []
            for columns_, bind_values, assignments in compiled:
                bound = bind_values(params)
                changes.append(RowChange(
                    source_table, tuple(bound[i] for i in key_positions), kind,
                    tuple(zip(columns_, bound)),
                    tuple((c, bind(params)) for c, bind in assignments)))
            return Translation(tuple(changes))
        return plan

    def _update(self, tree: exp.Update):
        spec = self.table(tree.this)
        if spec is None:
            return _constant_translation(Translation((), 'untracked-table'))
        if tree.args.get('from') or tree.args.get('from_'):
            raise _needs_lookup('UPDATE ... FROM reads other rows')
        assignments = []
        for eq in tree.expressions:
            column = eq.this.name
            if column in spec.key:
                raise _needs_lookup(f'UPDATE changes key column {column}')
            assignments.append((column, self.expr(eq.expression)))
        pins = self.key_pins(tree.args.get('where'), spec)
        assignments = tuple(assignments)
        return self._keyed_plan(spec, pins, OpKind.UPDATE, assignments)

    def _delete(self, tree: exp.Delete):
        if tree.args.get('tables') or tree.args.get('using'):
            raise _needs_lookup('multi-table DELETE')
        spec = self.table(tree.this)
        if spec is None:
            return _constant_translation(Translation((), 'untracked-table'))
        pins = self.key_pins(tree.args.get('where'), spec)
        return self._keyed_plan(spec, pins, OpKind.DELETE, ())

    @staticmethod
    def _keyed_plan(spec, pins, kind, assignments):

        key_binders = [[_value_binder(t) for t in pins[k]] for k in spec.key]
        assignment_binders = tuple((c, _binder(t)) for c, t in assignments)
        source_table = spec.source

        def plan(params):
            keys = [()]
            for candidates in key_binders:
                keys = [k + (bind(params),) for k in keys for bind in candidates]
            bound = tuple((c, bind(params)) for c, bind in assignment_binders)
            if len(keys) == 1:
                return Translation((RowChange(source_table, keys[0], kind, (), bound),))
            # `IN (1, 1)` touches the row once
            return Translation(tuple(RowChange(source_table, key, kind, (), bound)
                                     for key in dict.fromkeys(keys)))
        return plan


def _constant_translation(translation: Translation):
    return lambda params: translation


def _reads_columns(template: tuple) -> bool:
    return 'col' in leaf_tags(template)


def _has_params(template: tuple) -> bool:
    return 'param' in leaf_tags(template)


def _binder(template: tuple) -> Callable[[Sequence[Any]], tuple]:
    """Compiles a template into params -> expressions.py expression, folding it
    to a literal where it reads no column. Runs once per shape."""
    tag = template[0]
    if tag == 'param':
        index = template[1]
        return lambda params: ('lit', params[index])
    if not _has_params(template):
        constant = template if _reads_columns(template) else substitute(template, {})
        return lambda params: constant
    if tag == 'neg':
        inner = _binder(template[1])
        build = lambda params: ('neg', inner(params))  # noqa: E731
    elif tag == 'bin':
        op, left, right = template[1], _binder(template[2]), _binder(template[3])
        build = lambda params: ('bin', op, left(params), right(params))  # noqa: E731
    else:
        name, args = template[1], [_binder(arg) for arg in template[2]]
        build = lambda params: ('fn', name, tuple(a(params) for a in args))  # noqa: E731
    if _reads_columns(template):
        return build
    return lambda params: substitute(build(params), {})


def _value_binder(template: tuple) -> Callable[[Sequence[Any]], Any]:
    """params -> the literal value of a template that reads no column."""
    if template[0] == 'param':
        return operator.itemgetter(template[1])
    bind = _binder(template)
    return lambda params: bind(params)[1]


def _values_binder(templates: List[tuple]) -> Callable[[Sequence[Any]], Tuple[Any, ...]]:
    """params -> the tuple of values of a VALUES row; one C call when every
    value is a plain literal, as it almost always is."""
    if templates and all(t[0] == 'param' for t in templates):
        getter = operator.itemgetter(*(t[1] for t in templates))
        if len(templates) == 1:
            return lambda params: (getter(params),)
        return getter
    binders = [_value_binder(t) for t in templates]
    return lambda params: tuple(bind(params) for bind in binders)


_REPLACE_HEAD = re.compile(r'^\s*REPLACE\b', re.I)


def _parse(shape: str):
    """sqlglot AST of a statement shape; REPLACE parses as INSERT, marked."""
    shape = _numbered(shape)
    replace = _REPLACE_HEAD.match(shape)
    text = shape[:replace.start()] + 'INSERT' + shape[replace.end():] if replace else shape
    try:
        trees = sqlglot.parse(text, read='mysql')
    except sqlglot.errors.SqlglotError as error:
        raise SqlChangeError('unparseable-sql', str(error).splitlines()[0][:300]) from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise SqlChangeError('unsupported-sql', f'{len(trees)} statements in one log line')
    tree = trees[0]
    if replace:
        if not isinstance(tree, exp.Insert):
            raise SqlChangeError('unsupported-sql', 'REPLACE that is not REPLACE INTO ... VALUES')
        tree._changeflow_replace = True
    return tree


class StatementTranslator:
    """Translates statements of the configured tables; plans cached by shape.

    Not thread-safe; one per DoFn instance.
    """

    def __init__(self, tables: Sequence[TableSpec], max_shapes: int = MAX_CACHED_SHAPES):
        self._tables = {spec.source: spec for spec in tables}
        self._plans: Dict[Tuple[str, str], Any] = {}
        self._max_shapes = max_shapes
        self.shapes_compiled = 0

    def translate(self, sql: str, database: str) -> Translation:
        """Row changes of one successful statement run in ``database``.

        Raises SqlChangeError with reason 'needs-lookup', 'unparseable-sql' or
        'unsupported-sql'.
        """
        shape, params = mask_literals(sql)
        plan = self._plans.get((shape, database))
        if plan is None:
            plan = self._compile(shape, database)
        if isinstance(plan, SqlChangeError):
            raise SqlChangeError(plan.reason, plan.detail)
        return plan(params)

    def _compile(self, shape: str, database: str):
        try:
            plan = _Compiler(self._tables, database).compile(_parse(shape))
        except SqlChangeError as error:
            plan = error  # refusals are cached too: a bad shape is not parsed twice
        if len(self._plans) >= self._max_shapes:
            self._plans.clear()
        self._plans[(shape, database)] = plan
        self.shapes_compiled += 1
        return plan


def _key_caster(spec: TableSpec):
    """Normalises key values to the declared column types, so `WHERE id = '5'`
    and `VALUES (5, ...)` name the same row."""
    casters = []
    for column in spec.key:
        declared = (spec.column_type(column) or '').split('(')[0]
        if declared in ('integer', 'bigint'):
            casters.append(lambda v: v if v is None or isinstance(v, int) else int(decimal.Decimal(str(v))))
        elif declared == 'decimal':
            casters.append(lambda v: v if v is None else decimal.Decimal(str(v)))
        elif declared in ('string', 'text'):
            casters.append(lambda v: v if v is None or isinstance(v, str) else str(v))
        else:
            casters.append(None)
    if not any(casters):
        return None
    return lambda key: tuple(c(v) if c else v for c, v in zip(casters, key))


class _ExtractRowChangesFn(beam.DoFn):
    def __init__(self, tables: Sequence[TableSpec]):
        self._tables = tuple(tables)
        self._received = Metrics.counter('changeflow.sql_changes', 'statements_received')
        self._changes = Metrics.counter('changeflow.sql_changes', 'row_changes')
        self._dead = Metrics.counter('changeflow.sql_changes', 'dead_lettered')
        self._skipped = {reason: Metrics.counter('changeflow.sql_changes', f'skipped_{reason}')
                         for reason in ('read', 'ddl', 'session', 'untracked_table')}

    def setup(self):
        self._translator = StatementTranslator(self._tables)
        self._casters = {spec.source: _key_caster(spec) for spec in self._tables}

    def process(self, transaction: CommittedTransaction):
        first_touch = {}  # (table, key) -> (time, query id) of the transaction's first write
        for statement in transaction.statements:
            self._received.inc()
            try:
                translation = self._translator.translate(statement.object, statement.database)
                keys = [self._key(change) for change in translation.changes]
            except (SqlChangeError, ValueError, ArithmeticError) as error:
                # Nothing of the statement is emitted: it is replayable whole.
                self._dead.inc()
                yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                    'sql_changes', getattr(error, 'reason', 'bad-value'),
                    getattr(error, 'detail', str(error)), statement.line, statement.position))
                continue
            if translation.skipped:
                self._skipped[translation.skipped.replace('-', '_')].inc()
                continue
            changes = translation.changes
            for seq, (change, key) in enumerate(zip(changes, keys)):
                touch = first_touch.setdefault(
                    (change.table, key), (statement.timestamp_us, statement.query_id))
                version = audit_version(touch[0], touch[1], statement.query_id, seq)
                position = statement.position if len(changes) == 1 else (
                    f'{statement.position}#{seq}')
                self._changes.inc()
                yield Change(change.table, key, (RowOp(
                    change.kind, version, change.values, change.assignments, position),),
                    statement.timestamp_us)

    def _key(self, change: RowChange) -> Tuple[Any, ...]:
        caster = self._casters[change.table]
        return caster(change.key) if caster else change.key


class ExtractRowChanges(beam.PTransform):
    """PCollection[CommittedTransaction] -> PCollection[Change] (one op each),
    plus dead letters for statements that cannot become row changes.

    Each change is versioned with :func:`changeflow.model.audit_version` from
    the transaction's first write to that row, so one row's changes sort in the
    order the source applied them.
    """

    def __init__(self, tables: Sequence[TableSpec]):
        super().__init__()
        if not tables:
            raise ValueError('ExtractRowChanges needs at least one table spec')
        self._tables = tuple(tables)

    def expand(self, transactions):
        return transactions | 'Translate' >> beam.ParDo(
            _ExtractRowChangesFn(self._tables)).with_outputs(DEAD_LETTER_TAG, main='changes')
