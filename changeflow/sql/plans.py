"""Logged MySQL statements -> keyed row changes.

A statement is never executed: sqlglot (MySQL dialect) parses it and each
affected row becomes a :class:`~changeflow.model.RowOp`. Parsing costs ~0.4 ms,
so statements are first reduced to their *shape* (literals masked as
``:p0, :p1, ...``) and each shape is parsed and compiled once into a plan; a
statement then costs one regex scan plus a dict lookup.

What is translated: INSERT (single and multi-row; a column list, or the
declared column order), REPLACE, INSERT IGNORE, INSERT ... ON DUPLICATE KEY
UPDATE (``VALUES(col)`` included), UPDATE and DELETE whose WHERE pins every key
column by equality (``AND``, ``IN`` lists), TRUNCATE. The WHERE's other
conjuncts (``AND version = 3``, ``AND deleted_at IS NULL``) become the op's
condition, evaluated on the row by the sink; a LIMIT is honoured when it
reaches every named row (otherwise which rows it hit is unknown). An UPDATE
or DELETE whose WHERE does not pin the key (or has none) becomes one
whole-table op (key ``()``) whose condition is the whole WHERE, which the
database sink evaluates over the replica's rows; with a LIMIT it is refused.
Assignments may be deterministic expressions of the row (``qty = qty + 1``);
they are carried as expressions and evaluated against the replica's row by
the sink.

What is refused with reason ``needs-lookup`` (the replica cannot reproduce it
from the statement alone): clock/random/session functions, user variables,
prepared-statement templates (``?``), INSERT ... SELECT, subqueries,
multi-table statements, a LIMIT on rows the WHERE does not name, writes that change
a key column, inserts without the key (AUTO_INCREMENT). Reads, DDL and session
statements are classified and skipped.

A refusal names what the statement writes (SqlChangeError.table, and .keys
where the WHERE or VALUES pin the rows even though the rest is refused), so
the SQL stage can mark it diverged.

A statement nested too deeply for sqlglot is ``unparseable-sql``; an UPDATE
or DELETE whose IN lists name more than :data:`MAX_ROWS_PER_STATEMENT`
(10,000) key combinations (the cross product of several lists; one list alone
stays linear) is ``too-many-rows``, and marks its table.

Column names are case-insensitive, as in MySQL: the plan names each column as
the table spec spells it (its key, and its declared columns when there are
any), so ``INSERT ... (EMAIL)`` and a spec's ``email`` are one column for every
sink, redaction included.
"""

import decimal
import logging
import math
import operator
import re
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import sqlglot
from sqlglot import expressions as exp

from changeflow.config import TableSpec
from changeflow.model import OpKind
from changeflow.schema.hazards import Hazard, write_hazards
from changeflow.schema.model import SourceSchema
from changeflow.sql.compile_expressions import (ExpressionCompiler, mark_default_calls,
                                                resolve_defaults, table_defaults)
from changeflow.sql.errors import SqlChangeError, needs_lookup
from changeflow.sql.expressions import leaf_tags, substitute
from changeflow.sql.literals import (DEFAULT_SERVER_VERSION, KnownShapes, mask_literals,
                                     numbered_shape, session_flags)
from changeflow.sql.types import parse_type

__all__ = ['SqlChangeError', 'RowChange', 'Translation', 'StatementTranslator', 'key_caster']

MAX_CACHED_SHAPES = 20_000
# A refusal naming more rows than this marks its table instead (an IN list per
# key column whose cross product explodes must not become a million marks).
MAX_MARKED_ROWS = 10_000
# Most rows one UPDATE or DELETE may name through IN lists on its key columns
# (their cross product): 1,000 values on each of two columns are a million.
MAX_ROWS_PER_STATEMENT = 10_000

# sqlglot warns on every statement it parses as a generic Command (PREPARE, ...).
logging.getLogger('sqlglot').setLevel(logging.ERROR)


class RowChange(NamedTuple):
    """One row touched by one statement (versioned later, per transaction);
    ``condition``: see RowOp.condition."""
    table: str
    key: Tuple[Any, ...]
    kind: OpKind
    values: Tuple[Tuple[str, Any], ...]
    assignments: Tuple[Tuple[str, Any], ...]
    condition: Optional[tuple] = None


class Translation(NamedTuple):
    """``skipped`` names why a statement has no changes ('read', 'ddl',
    'session', 'untracked-table'); otherwise ``changes`` holds them.
    ``hazards``: what the source schema says the statement did beyond its
    text (:func:`changeflow.schema.hazards.write_hazards`): a trigger, a
    cascade, a clock default, ...; the SQL stage marks what they leave stale."""
    changes: Tuple[RowChange, ...]
    skipped: str = ''
    hazards: Tuple[Hazard, ...] = ()


# Plans build their results with tuple.__new__: a NamedTuple's Python-level
# __new__ costs ~0.08 µs more a call, a sixth of a keyed plan.
_new_tuple = tuple.__new__
# Plans of the commonest statements (one row, one assignment, one key column IN
# literals) built with fewer calls; False (tests only) compiles the general
# plans, which must give the same translations.
_SPECIALIZED = True


class _Compiler:
    """Turns one parsed statement shape into a plan: params -> [RowChange]."""

    def __init__(self, tables: Dict[str, TableSpec], database: str,
                 schema: Optional[SourceSchema] = None):
        self._tables = tables
        self._database = database
        self._schema = schema
        self._hazards: Tuple[Hazard, ...] = ()  # of the statement being compiled
        self._expressions = ExpressionCompiler()
        self._defaults = {}  # column -> literal DEFAULT of the statement's table
        self._names: Dict[str, str] = {}  # lower-case column name -> the spec's spelling

    # Tables and keys --------------------------------------------------------

    def table(self, node) -> Optional[TableSpec]:
        if not isinstance(node, exp.Table) or node.args.get('joins'):
            raise needs_lookup('multi-table statement')
        database = node.db or self._database
        self._expressions.table_aliases = {node.name, node.alias_or_name}
        spec = self._tables.get(f'{database}.{node.name}')
        self._defaults = table_defaults(spec) if spec else {}
        if spec is not None:
            names = (*spec.key, *(column for column, _ in spec.columns))
            self._names = {name.lower(): name for name in names}
        return spec

    def _column(self, name: str) -> str:
        """A column as the spec spells it (MySQL column names are case-insensitive)."""
        return self._names.get(name.lower(), name)

    def _assigned(self, node) -> str:
        """The column of one ``col = expr`` of a SET or ON DUPLICATE KEY UPDATE."""
        if not isinstance(node, exp.EQ) or not isinstance(node.this, exp.Column):
            raise SqlChangeError('unsupported-sql', f'not an assignment: {node.sql(dialect="mysql")}')
        return self._column(node.this.name)

    def key_pins(self, where, spec: TableSpec) -> Tuple[Dict[str, List[tuple]], list]:
        """(key column -> candidate template values, from ``a = x AND b IN
        (...)``; the other conjuncts of the WHERE, for :meth:`condition`)."""
        if where is None:
            raise _Unpinned('needs-lookup', 'no WHERE clause: every row of the table')
        pins: Dict[str, List[tuple]] = {}
        rest = []
        for node in _conjuncts(where.this):
            pin = self._pin(node, spec)
            if pin is None or pin[0] in pins:  # `id = 5 AND id = 6` is a condition on row 5
                rest.append(node)
            else:
                pins[pin[0]] = pin[1]
        missing = [k for k in spec.key if k not in pins]
        if missing:
            raise _Unpinned('needs-lookup', (
                f'WHERE on a non-key condition: {rest[0].sql(dialect="mysql")}' if rest else
                f'WHERE does not pin key column(s) {", ".join(missing)}'))
        return pins, rest

    def _pin(self, node, spec: TableSpec) -> Optional[Tuple[str, List[tuple]]]:
        """(key column, candidate templates) when ``node`` pins a key column to
        constants (``k = x``, ``k IN (x, y)``); None for any other predicate."""
        if isinstance(node, exp.EQ):
            left, right = node.this, node.expression
            if not isinstance(left, exp.Column):
                left, right = right, left
            if isinstance(left, exp.Column) and self._column(left.name) in spec.key:
                value = self._compile(right)
                return None if _reads_columns(value) else (self._column(left.name), [value])
        elif isinstance(node, exp.In) and isinstance(node.this, exp.Column) \
                and self._column(node.this.name) in spec.key and not node.args.get('query') \
                and not node.args.get('unnest'):
            values = [self._compile(v) for v in node.expressions]
            if not any(_reads_columns(v) for v in values):
                return self._column(node.this.name), values
        return None

    def condition(self, nodes) -> Optional[tuple]:
        """Template of the non-key conjuncts (evaluated on the row by the sink:
        the op applies where it is true), or None when there are none."""
        parts = tuple(self._compile(node) for node in nodes)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else ('fn', 'AND', parts)

    def limit(self, tree) -> Optional[tuple]:
        """Template of ``... LIMIT n`` (with ORDER BY or not), or None."""
        limit = tree.args.get('limit')
        if limit is None:
            return None
        node = limit.args.get('expression') or limit.this
        value = self._compile(node)
        if _reads_columns(value):
            raise SqlChangeError('unsupported-sql', f'LIMIT {node.sql(dialect="mysql")}')
        return value

    def _compile(self, node, row_values=None, target=None) -> tuple:
        """Template of ``node``, DEFAULT / DEFAULT(col) resolved to the table's literal defaults."""
        return _respelled(resolve_defaults(self._expressions.compile(node, row_values, target),
                                           self._defaults), self._names)

    # Statements -------------------------------------------------------------

    def compile(self, tree) -> Callable[[Sequence[Any]], Translation]:
        try:
            plan = self._statement(tree)
        except SqlChangeError as error:
            if error.table is None and isinstance(tree, (exp.Insert, exp.Update, exp.Delete)):
                # Refused before its table was known (a multi-table write): every
                # configured table it names may have been written.
                tables = self.tracked_tables(tree)
                if tables:
                    raise error.on(tables[0] if len(tables) == 1 else tables) from None
            raise
        hazards = self._hazards
        if not hazards:
            return plan

        def plan_with_hazards(params):
            changes, skipped, _ = plan(params)
            return _new_tuple(Translation, (changes, skipped, hazards))
        return plan_with_hazards

    def _note_hazards(self, spec: TableSpec, kind: OpKind, written=(), updated=None) -> None:
        """What the schema says a ``kind`` write of ``written`` columns to
        ``spec``'s table does beyond its text (None without a schema)."""
        if self._schema is None or spec.schema is None:
            return
        self._hazards = tuple(write_hazards(self._schema, spec.schema, kind.value, written,
                                            columns_updated=updated))

    def _statement(self, tree) -> Callable[[Sequence[Any]], Translation]:
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
        if columns is not None:
            columns = [self._column(c) for c in columns]
        try:
            return self._insert_plan(tree, spec, columns)
        except SqlChangeError as error:  # the rows it wrote cannot be named
            raise error.on(spec.source) from None

    def _insert_plan(self, tree: exp.Insert, spec: TableSpec, columns):
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
        self._note_hazards(spec, kind, columns, [
            self._assigned(eq) for eq in conflict.expressions] if conflict else None)
        rows, row_keys, refusal = [], [], None
        for row in source.expressions:
            items = row.expressions if isinstance(row, exp.Tuple) else [row]
            if len(items) != len(columns):
                raise SqlChangeError('unsupported-sql', 'VALUES row length differs from column list')
            by_column = dict(zip(columns, items))
            # The key first: a value refused below still leaves the row named.
            row_keys.append([self._value(by_column[k], k) for k in spec.key])
            try:
                rows.append(self._values_row(spec, by_column, conflict))
            except SqlChangeError as error:
                refusal = refusal or error
        if refusal is not None:
            return _refused_plan(refusal, spec.source, _row_keys_binder(row_keys), len(row_keys))
        # Every row names every column (a DEFAULT as its literal), so key
        # positions are those of the first row.
        first = list(rows[0][0])
        positions = [first.index(k) for k in spec.key]
        # bound row -> key; one subscript for a one-column key
        key_of = ((lambda bound, i=positions[0]: (bound[i],)) if len(positions) == 1
                  else operator.itemgetter(*positions))
        if len(rows) == 1 and _SPECIALIZED:
            return _row_binder(spec.source, kind, key_of, *rows[0], translation=True)
        binders = [_row_binder(spec.source, kind, key_of, values, assignments)
                   for values, assignments in rows]
        if len(binders) == 1:
            bind_row = binders[0]
            return lambda params: _new_tuple(Translation, ((bind_row(params),), '', ()))
        return lambda params: _new_tuple(Translation, (
            tuple([bind(params) for bind in binders]), '', ()))

    def _value(self, node, column: str) -> tuple:
        """Template of one VALUES item (a DEFAULT as the column's literal default)."""
        template = self._compile(node, target=column)
        if _reads_columns(template):
            raise needs_lookup(f'VALUES reads a column: {node.sql(dialect="mysql")}')
        return template

    def _values_row(self, spec: TableSpec, by_column, conflict):
        values = {column: self._value(node, column) for column, node in by_column.items()}
        assignments = []
        if conflict is not None:
            for eq in conflict.expressions:
                column = self._assigned(eq)
                if column in spec.key:
                    raise needs_lookup(f'ON DUPLICATE KEY UPDATE changes key column {column}')
                assignments.append((column, self._compile(eq.expression, values, column)))
        return values, tuple(assignments)

    def _update(self, tree: exp.Update):
        spec = self.table(tree.this)
        if spec is None:
            return _constant_translation(Translation((), 'untracked-table'))
        # The WHERE's key pins are read even when the rest is refused, so the
        # refusal names the rows it leaves stale; the first refusal in
        # statement order is the one reported.
        refusal, assignments = None, []
        try:
            if tree.args.get('from') or tree.args.get('from_'):
                raise needs_lookup('UPDATE ... FROM reads other rows')
            for eq in tree.expressions:
                column = self._assigned(eq)
                if column in spec.key:
                    raise needs_lookup(f'UPDATE changes key column {column}')
                assignments.append((column, self._compile(eq.expression, target=column)))
        except SqlChangeError as error:
            refusal = error
        self._note_hazards(spec, OpKind.UPDATE, [column for column, _ in assignments])
        return self._keyed_plan(tree, spec, OpKind.UPDATE, tuple(assignments), refusal)

    def _delete(self, tree: exp.Delete):
        if tree.args.get('tables') or tree.args.get('using'):
            raise needs_lookup('multi-table DELETE')
        spec = self.table(tree.this)
        if spec is None:
            return _constant_translation(Translation((), 'untracked-table'))
        self._note_hazards(spec, OpKind.DELETE)
        return self._keyed_plan(tree, spec, OpKind.DELETE, (), None)

    def _keyed_plan(self, tree, spec: TableSpec, kind: OpKind, assignments,
                    refusal: Optional[SqlChangeError]):
        """Plan of an UPDATE or DELETE whose WHERE pins the key; a refusal
        (``refusal``, or one of the WHERE's conditions or LIMIT) names the
        rows; a WHERE that does not pin the key refuses for the whole table."""
        try:
            pins, rest = self.key_pins(tree.args.get('where'), spec)
        except _Unpinned:
            if refusal is None:
                return self._table_plan(tree, spec, kind, assignments)
            raise refusal.on(spec.source) from None
        except SqlChangeError as error:
            raise (refusal or error).on(spec.source) from None
        bind_keys = _keys_binder([pins[k] for k in spec.key])
        rows = math.prod(len(pins[k]) for k in spec.key)
        # IN lists on several key columns multiply; one long list stays linear.
        if rows > max(MAX_ROWS_PER_STATEMENT, *(len(pins[k]) for k in spec.key)):
            refusal = refusal or SqlChangeError(
                'too-many-rows', f'the WHERE names {rows:,} key combinations; at most '
                                 f'{MAX_ROWS_PER_STATEMENT:,} per statement are translated')
        condition = limit = None
        try:
            condition = self.condition(rest)
            limit = self.limit(tree)
        except SqlChangeError as error:
            refusal = refusal or error
        if refusal is not None:
            return _refused_plan(refusal, spec.source, bind_keys, rows)
        bind_assignments = _assignments_binder(assignments)
        bind_condition = None if condition is None else _binder(condition)
        bind_limit = None if limit is None else _value_binder(limit)
        source_table = spec.source
        if limit is None and condition is None and rows == 1 and _SPECIALIZED:
            # One row, no condition, no LIMIT (nearly every UPDATE and DELETE):
            # its one RowChange built in one call, without the list of keys.
            bind_key = _values_binder([pins[k][0] for k in spec.key])
            return lambda params: _new_tuple(Translation, ((_new_tuple(RowChange, (
                source_table, bind_key(params), kind, (), bind_assignments(params), None)),),
                '', ()))

        def plan(params):
            keys = bind_keys(params)
            if bind_limit is not None:
                try:
                    limit_ = _row_count(bind_limit(params))
                    if limit_ == 0:
                        return Translation(())
                    if len(keys) > limit_:
                        raise needs_lookup(f'LIMIT {limit_} of {len(keys)} named rows: which '
                                           f'ones depends on the source\'s row order')
                except SqlChangeError as error:
                    raise error.on(source_table, keys) from None
            bound = bind_assignments(params)
            where = None if bind_condition is None else bind_condition(params)
            return _new_tuple(Translation, (tuple([
                _new_tuple(RowChange, (source_table, key, kind, (), bound, where))
                for key in keys]), '', ()))
        return plan

    def _table_plan(self, tree, spec: TableSpec, kind: OpKind, assignments):
        """Plan of an UPDATE or DELETE whose WHERE does not name its rows: one
        whole-table op (key ``()``) whose condition is the whole WHERE (None:
        every row), which the database sink evaluates over the replica's rows
        in its version place. A LIMIT cannot be: which rows it hit depends on
        the source's row order, and each shard of the sink sees only its own."""
        try:
            if tree.args.get('limit') is not None:
                raise needs_lookup('LIMIT on rows the WHERE does not name: which ones depends '
                                   'on the source\'s row order')
            where = tree.args.get('where')
            condition = None if where is None else self._compile(where.this)
        except SqlChangeError as error:
            raise error.on(spec.source) from None
        bind_assignments = _assignments_binder(assignments)
        bind_condition = None if condition is None else _binder(condition)
        source_table = spec.source

        def plan(params):
            return Translation((RowChange(
                source_table, (), kind, (), bind_assignments(params),
                None if bind_condition is None else bind_condition(params)),))
        return plan

    def tracked_tables(self, tree) -> Tuple[str, ...]:
        """Source names of the configured tables a statement names, in order."""
        names = []
        for node in tree.find_all(exp.Table):
            source = f'{node.db or self._database}.{node.name}'
            if source in self._tables and source not in names:
                names.append(source)
        return tuple(names)


def _keys_binder(candidates: Sequence[Sequence[tuple]]) -> Callable[[Sequence[Any]], List[tuple]]:
    """params -> the distinct keys named by candidate templates per key column
    (in key order): their cross product."""
    if all(len(column) == 1 for column in candidates):
        bind_key = _values_binder([column[0] for column in candidates])
        return lambda params: [bind_key(params)]
    if len(candidates) == 1 and all(t[0] == 'param' for t in candidates[0]) and _SPECIALIZED:
        # One key column IN a list of literals: its values by one C call.
        bind_values = _values_binder(candidates[0])
        return lambda params: list(dict.fromkeys([(value,) for value in bind_values(params)]))
    binders = [[_value_binder(t) for t in column] for column in candidates]

    def bind_keys(params):
        keys = [()]
        for column in binders:
            keys = [k + (bind(params),) for k in keys for bind in column]
        return list(dict.fromkeys(keys))  # `IN (1, 1)` touches the row once
    return bind_keys


def _row_keys_binder(rows: Sequence[Sequence[tuple]]) -> Callable[[Sequence[Any]], List[tuple]]:
    """params -> the distinct keys of VALUES rows, given each row's key templates."""
    binders = [[_value_binder(t) for t in row] for row in rows]
    return lambda params: list(dict.fromkeys(
        tuple(bind(params) for bind in row) for row in binders))


def _refused_plan(refusal: SqlChangeError, table: str, bind_keys, count: int):
    """A plan that refuses every statement of its shape, naming the ``count``
    rows each one writes (the whole table when its keys cannot be bound, or
    are more than MAX_MARKED_ROWS)."""
    if count > MAX_MARKED_ROWS:
        bind_keys = None

    def plan(params):
        try:
            keys = None if bind_keys is None else bind_keys(params)
        except (ArithmeticError, TypeError, ValueError, IndexError, SqlChangeError):
            keys = None
        raise refusal.on(table, keys)
    return plan


class _Unpinned(SqlChangeError):
    """The WHERE does not pin the key (a whole-table op, if the rest allows)."""


def _conjuncts(node):
    """The operands of a WHERE's top-level ANDs, in statement order."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        for operand in node.flatten():
            yield from _conjuncts(operand)
    else:
        yield node


def _row_count(value) -> int:
    """A LIMIT's value as a row count (MySQL takes only non-negative integers)."""
    if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)) or value < 0 \
            or value != int(value):
        raise SqlChangeError('unsupported-sql', f'LIMIT {value!r}')
    return int(value)


def _respelled(template, names: Dict[str, str]):
    """``template`` with each ``('col', name)`` renamed to ``names[name.lower()]``."""
    if not isinstance(template, tuple) or not template or template[0] == 'lit':
        return template
    if template[0] == 'col' and isinstance(template[1], str):
        return ('col', names.get(template[1].lower(), template[1]), *template[2:])
    return tuple(_respelled(part, names) for part in template)


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
        op, left, right = template[1:]
        if right[0] == 'param' and not _has_params(left):  # qty + 1, qty + VALUES(qty)
            left_value, index = _binder(left)(()), right[1]
            build = lambda params: ('bin', op, left_value, ('lit', params[index]))  # noqa: E731
        else:
            bind_left, bind_right = _binder(left), _binder(right)
            build = lambda params: ('bin', op, bind_left(params), bind_right(params))  # noqa: E731
    else:
        name, args = template[1], [_binder(arg) for arg in template[2]]
        build = lambda params: ('fn', name, tuple([a(params) for a in args]))  # noqa: E731
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
    return lambda params: tuple([bind(params) for bind in binders])


def _assignments_binder(assignments: Sequence[Tuple[str, tuple]]
                        ) -> Callable[[Sequence[Any]], Tuple[Tuple[str, Any], ...]]:
    """params -> ((column, expression), ...) of a SET or ON DUPLICATE KEY
    UPDATE; one tuple for every statement when no assignment holds a literal."""
    if not any(_has_params(template) for _, template in assignments):
        constant = tuple((column, _binder(template)(())) for column, template in assignments)
        return lambda params: constant
    if _SPECIALIZED and all(template[0] == 'param' for _, template in assignments):
        # Every value a literal (SET status = 'paid', note = '...'): no call per value.
        pairs = tuple((column, template[1]) for column, template in assignments)
        return lambda params: tuple([(column, ('lit', params[i])) for column, i in pairs])
    binders = tuple((column, _binder(template)) for column, template in assignments)
    if len(binders) == 1 and _SPECIALIZED:
        ((column, bind),) = binders
        return lambda params: ((column, bind(params)),)
    return lambda params: tuple([(column, bind(params)) for column, bind in binders])


def _row_binder(table: str, kind: OpKind, key_of, values: Dict[str, tuple],
                assignments: Sequence[Tuple[str, tuple]], translation: bool = False
                ) -> Callable[[Sequence[Any]], Any]:
    """params -> the RowChange of one VALUES row (``key_of``: its values -> its key);
    with ``translation``, the Translation of a statement of that one row."""
    columns = tuple(values)
    bind_values = _values_binder(list(values.values()))
    bind_assignments = _assignments_binder(assignments)

    if translation:
        def bind_statement(params):
            bound = bind_values(params)
            return _new_tuple(Translation, ((_new_tuple(RowChange, (
                table, key_of(bound), kind, tuple(zip(columns, bound)),
                bind_assignments(params), None)),), '', ()))
        return bind_statement

    def bind_row(params):
        bound = bind_values(params)
        return _new_tuple(RowChange, (table, key_of(bound), kind, tuple(zip(columns, bound)),
                                      bind_assignments(params), None))
    return bind_row


_NO_FLAGS = (False, False)  # (no_backslash_escapes, ansi_quotes) of the default sql_mode
_REPLACE_HEAD = re.compile(r'^\s*REPLACE\b', re.I)


def _parse(shape: str):
    """sqlglot AST of a statement shape; REPLACE parses as INSERT, marked."""
    shape = mark_default_calls(numbered_shape(shape))
    replace = _REPLACE_HEAD.match(shape)
    text = shape[:replace.start()] + 'INSERT' + shape[replace.end():] if replace else shape
    try:
        trees = sqlglot.parse(text, read='mysql')
    except sqlglot.errors.SqlglotError as error:
        raise SqlChangeError('unparseable-sql', str(error).splitlines()[0][:300]) from None
    except RecursionError:  # sqlglot recurses per nesting level: ~40 parentheses are too many
        raise SqlChangeError('unparseable-sql', 'nested too deeply to parse') from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise SqlChangeError('unsupported-sql', f'{len(trees)} statements in one log line')
    tree = trees[0]
    if replace:
        if not isinstance(tree, exp.Insert):
            raise SqlChangeError('unsupported-sql', 'REPLACE that is not REPLACE INTO ... VALUES')
        tree._changeflow_replace = True
    return tree


def _refusal(error: SqlChangeError) -> Callable[[Sequence[Any]], Translation]:
    """The plan of a shape compiling refused: a copy of the refusal for each statement."""
    def refuse(params):
        raise error.on(error.table, error.keys)
    return refuse


class StatementTranslator:
    """Translates statements of the configured tables; plans cached by shape.

    Not thread-safe; one per DoFn instance.
    """

    def __init__(self, tables: Sequence[TableSpec], max_shapes: int = MAX_CACHED_SHAPES,
                 schema: Optional[SourceSchema] = None,
                 server_version: int = DEFAULT_SERVER_VERSION):
        self._tables = {spec.source: spec for spec in tables}
        self._schema = schema
        self._server_version = server_version  # which executable comments run
        # database (default sql_mode) or (database, flags) -> shape -> plan: two
        # lookups by strings whose hashes are kept, no key tuple made per statement
        self._plans: Dict[Any, Dict[str, Any]] = {}
        self._plans_kept = 0
        self._max_shapes = max_shapes
        self._known_shapes = KnownShapes(max_shapes)  # statement -> (shape, params), fast
        self.shapes_compiled = 0

    def translate(self, sql: str, database: str, session=None) -> Translation:
        """Row changes of one successful statement run in ``database``, with the
        connection's ``session`` state (a transactions.SessionState: sql_mode,
        character set) when known.

        Raises SqlChangeError with reason 'needs-lookup', 'unparseable-sql',
        'unsupported-sql', or one of :func:`~changeflow.sql.literals.session_flags`'s,
        naming the configured table(s) the statement writes and, where the
        statement pins them, the keys of its rows.
        """
        flags = _NO_FLAGS if session is None else session_flags(session, sql)
        if flags is _NO_FLAGS or flags == _NO_FLAGS:
            known = self._known_shapes.match(sql)
            if known is None:
                shape, params = mask_literals(sql, False, False, self._server_version)
                self._known_shapes.learn(sql, shape, params)
            else:
                shape, params = known
            plans = self._plans.get(database)
        else:
            shape, params = mask_literals(sql, flags[0], flags[1], self._server_version)
            plans = self._plans.get((database, flags))
        plan = None if plans is None else plans.get(shape)
        if plan is None:
            plan = self._compile(shape, database, flags)
        return plan(params)

    def _compile(self, shape: str, database: str, flags: Tuple[bool, bool]):
        try:
            plan = _Compiler(self._tables, database, self._schema).compile(_parse(shape))
        except SqlChangeError as error:
            plan = _refusal(error)  # refusals are cached too: a bad shape is not parsed twice
        except RecursionError:
            plan = _refusal(SqlChangeError('unparseable-sql', 'nested too deeply to compile'))
        if self._plans_kept >= self._max_shapes:
            self._plans.clear()
            self._plans_kept = 0
        plans = self._plans.setdefault(database if flags == _NO_FLAGS else (database, flags), {})
        plans[shape] = plan
        self._plans_kept += 1
        self.shapes_compiled += 1
        return plan


def key_caster(spec: TableSpec):
    """Normalises key values to the declared column types, so `WHERE id = '5'`
    and `VALUES (5, ...)` name the same row."""
    casters, kept = [], []  # kept: the type a value of the column already is cast to
    for column in spec.key:
        declared = _key_kind(spec.column_type(column))
        if declared in ('integer', 'bigint'):
            casters.append(lambda v: v if v is None or isinstance(v, int) else int(decimal.Decimal(str(v))))
            kept.append(int)
        elif declared == 'decimal':
            casters.append(lambda v: v if v is None else decimal.Decimal(str(v)))
            kept.append(None)
        elif declared in ('string', 'text'):
            casters.append(lambda v: v if v is None or isinstance(v, str) else str(v))
            kept.append(str)
        else:
            casters.append(None)
            kept.append(None)
    if not any(casters):
        return None

    def cast(key):
        return tuple(c(v) if c else v for c, v in zip(casters, key))
    if len(casters) == 1 and kept[0] is not None:
        # One key column, its value already of its type (nearly every statement): as it is.
        single = kept[0]
        return lambda key: key if len(key) == 1 and type(key[0]) is single else cast(key)
    return cast


def _key_kind(declared: Optional[str]) -> str:
    """The changeflow kind a key column's declared type casts as (a MySQL
    integer type as 'integer', CHAR/VARCHAR/ENUM/SET as 'string'); '' if none."""
    try:
        parsed = parse_type(declared or '')
    except ValueError:
        return ''
    if parsed.changeflow or parsed.kind == 'decimal':
        return parsed.kind
    if parsed.integer_range is not None or parsed.kind in ('year', 'bit'):
        return 'integer'
    if parsed.kind in ('char', 'varchar', 'enum', 'set') or parsed.kind.endswith('text'):
        return 'string'
    return ''
