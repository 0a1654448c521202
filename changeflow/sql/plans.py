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

import sqlglot
from sqlglot import expressions as exp

from changeflow.config import TableSpec
from changeflow.model import OpKind
from changeflow.sql.compile_expressions import ExpressionCompiler
from changeflow.sql.errors import SqlChangeError, needs_lookup
from changeflow.sql.expressions import leaf_tags, substitute
from changeflow.sql.literals import (DEFAULT_SERVER_VERSION, mask_literals, numbered_shape,
                                     session_flags)

__all__ = ['SqlChangeError', 'RowChange', 'Translation', 'StatementTranslator', 'key_caster']

MAX_CACHED_SHAPES = 20_000

# sqlglot warns on every statement it parses as a generic Command (PREPARE, ...).
logging.getLogger('sqlglot').setLevel(logging.ERROR)


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



class _Compiler:
    """Turns one parsed statement shape into a plan: params -> [RowChange]."""

    def __init__(self, tables: Dict[str, TableSpec], database: str):
        self._tables = tables
        self._database = database
        self._expressions = ExpressionCompiler()

    # Tables and keys --------------------------------------------------------

    def table(self, node) -> Optional[TableSpec]:
        if not isinstance(node, exp.Table) or node.args.get('joins'):
            raise needs_lookup('multi-table statement')
        database = node.db or self._database
        self._expressions.table_aliases = {node.name, node.alias_or_name}
        return self._tables.get(f'{database}.{node.name}')

    def key_pins(self, where, spec: TableSpec) -> Dict[str, List[tuple]]:
        """Key column -> candidate template values, from ``a = x AND b IN (...)``."""
        if where is None:
            raise needs_lookup('no WHERE clause: every row of the table')
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
                    raise needs_lookup(f'WHERE on a non-key condition: {node.sql(dialect="mysql")}')
            elif isinstance(node, exp.In) and isinstance(node.this, exp.Column) \
                    and node.this.name in spec.key and not node.args.get('query'):
                column = node.this.name
                values = [self._constant(v) for v in node.expressions]
            else:
                raise needs_lookup(f'WHERE on a non-key condition: {node.sql(dialect="mysql")}')
            if column in pins:
                raise needs_lookup(f'key column {column} constrained twice')
            pins[column] = values
        missing = [k for k in spec.key if k not in pins]
        if missing:
            raise needs_lookup(f'WHERE does not pin key column(s) {", ".join(missing)}')
        return pins

    def _constant(self, node) -> tuple:
        value = self._expressions.compile(node)
        if _reads_columns(value):
            raise needs_lookup(f'WHERE compares to a column: {node.sql(dialect="mysql")}')
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
            raise needs_lookup(f'{str(tree.this).upper()} writes rows the log does not show')
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
                raise needs_lookup('INSERT without a column list and no declared columns')
            columns = [name for name, _ in spec.columns]
        source = tree.expression
        if not isinstance(source, exp.Values):
            raise needs_lookup('INSERT ... SELECT reads other rows')
        missing = [k for k in spec.key if k not in columns]
        if missing:
            raise needs_lookup(f'INSERT without key column(s) {", ".join(missing)} '
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
                        raise needs_lookup(f'key column {column} takes its DEFAULT')
                    continue
                template = self._expressions.compile(node)
                if _reads_columns(template):
                    raise needs_lookup(f'VALUES reads a column: {node.sql(dialect="mysql")}')
                values[column] = template
            assignments = []
            if conflict is not None:
                for eq in conflict.expressions:
                    column = eq.this.name
                    if column in spec.key:
                        raise needs_lookup(f'ON DUPLICATE KEY UPDATE changes key column {column}')
                    assignments.append((column, self._expressions.compile(eq.expression, values)))
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
            raise needs_lookup('UPDATE ... FROM reads other rows')
        assignments = []
        for eq in tree.expressions:
            column = eq.this.name
            if column in spec.key:
                raise needs_lookup(f'UPDATE changes key column {column}')
            assignments.append((column, self._expressions.compile(eq.expression)))
        pins = self.key_pins(tree.args.get('where'), spec)
        assignments = tuple(assignments)
        return self._keyed_plan(spec, pins, OpKind.UPDATE, assignments)

    def _delete(self, tree: exp.Delete):
        if tree.args.get('tables') or tree.args.get('using'):
            raise needs_lookup('multi-table DELETE')
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


_NO_FLAGS = (False, False)  # (no_backslash_escapes, ansi_quotes) of the default sql_mode
_REPLACE_HEAD = re.compile(r'^\s*REPLACE\b', re.I)


def _parse(shape: str):
    """sqlglot AST of a statement shape; REPLACE parses as INSERT, marked."""
    shape = numbered_shape(shape)
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

    def __init__(self, tables: Sequence[TableSpec], max_shapes: int = MAX_CACHED_SHAPES,
                 server_version: int = DEFAULT_SERVER_VERSION):
        self._tables = {spec.source: spec for spec in tables}
        self._server_version = server_version  # which executable comments run
        self._plans: Dict[Tuple[str, str, Tuple[bool, bool]], Any] = {}
        self._max_shapes = max_shapes
        self.shapes_compiled = 0

    def translate(self, sql: str, database: str, session=None) -> Translation:
        """Row changes of one successful statement run in ``database``, with the
        connection's ``session`` state (a transactions.SessionState: sql_mode,
        character set) when known.

        Raises SqlChangeError with reason 'needs-lookup', 'unparseable-sql',
        'unsupported-sql', or one of :func:`~changeflow.sql.literals.session_flags`'s.
        """
        flags = _NO_FLAGS if session is None else session_flags(session, sql)
        shape, params = mask_literals(sql, flags[0], flags[1], self._server_version)
        key = (shape, database, flags)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._compile(shape, database, key)
        if isinstance(plan, SqlChangeError):
            raise SqlChangeError(plan.reason, plan.detail)
        return plan(params)

    def _compile(self, shape: str, database: str, key):
        try:
            plan = _Compiler(self._tables, database).compile(_parse(shape))
        except SqlChangeError as error:
            plan = error  # refusals are cached too: a bad shape is not parsed twice
        if len(self._plans) >= self._max_shapes:
            self._plans.clear()
        self._plans[key] = plan
        self.shapes_compiled += 1
        return plan


def key_caster(spec: TableSpec):
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
