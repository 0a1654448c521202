"""sqlglot expression nodes -> template expressions (:mod:`changeflow.sql.expressions`
tuples that may also hold ``('param', i)``, the statement's i-th literal)."""

import re
from typing import Any, Dict, Mapping, Optional

from sqlglot import expressions as exp

from changeflow.sql.coercion import coercer
from changeflow.sql.errors import SqlChangeError, needs_lookup
from changeflow.sql.literals import number_literal

__all__ = ['ExpressionCompiler', 'NEEDS_LOOKUP_FUNCTIONS', 'mark_default_calls', 'resolve_defaults',
           'table_defaults']


# A template expression is an expressions.py tuple that may also hold
# ('param', i): the statement's i-th literal, bound per statement.

NEEDS_LOOKUP_FUNCTIONS = {
    'NOW', 'CURRENT_TIMESTAMP', 'CURRENT_DATE', 'CURRENT_TIME', 'CURDATE', 'CURTIME',
    'SYSDATE', 'UTC_TIMESTAMP', 'UTC_DATE', 'UTC_TIME', 'UNIX_TIMESTAMP', 'LOCALTIME',
    'LOCALTIMESTAMP', 'RAND', 'UUID', 'UUID_SHORT', 'LAST_INSERT_ID', 'CONNECTION_ID',
    'USER', 'CURRENT_USER', 'SESSION_USER', 'SYSTEM_USER', 'DATABASE', 'SCHEMA',
    'FOUND_ROWS', 'ROW_COUNT', 'NEXTVAL', 'LASTVAL', 'SLEEP',
}
_BINARY = {exp.Add: '+', exp.Sub: '-', exp.Mul: '*', exp.Div: '/', exp.IntDiv: 'DIV',
           exp.Mod: '%'}
_COMPARISONS = {exp.EQ: '=', exp.NullSafeEQ: '<=>', exp.NEQ: '<>', exp.LT: '<', exp.LTE: '<=',
                exp.GT: '>', exp.GTE: '>=', exp.Xor: 'XOR'}
_FUNCTIONS = {exp.Coalesce: 'COALESCE', exp.Upper: 'UPPER', exp.Lower: 'LOWER',
              exp.Abs: 'ABS', exp.Greatest: 'GREATEST', exp.Least: 'LEAST',
              exp.ConcatWs: 'CONCAT_WS'}
# Functions whose sqlglot node names its arguments: node -> (NAME, argument keys
# in the order expressions.py takes them; trailing ones optional).
_NAMED_ARGS = {
    exp.Nullif: ('NULLIF', ('this', 'expression')),
    exp.Substring: ('SUBSTRING', ('this', 'start', 'length')),
    exp.Left: ('LEFT', ('this', 'expression')),
    exp.Right: ('RIGHT', ('this', 'expression')),
    exp.Replace: ('REPLACE', ('this', 'expression', 'replacement')),
    exp.Repeat: ('REPEAT', ('this', 'times')),
    exp.Reverse: ('REVERSE', ('this',)),
    exp.StrPosition: ('LOCATE', ('substr', 'this', 'position')),  # LOCATE, INSTR, POSITION
    exp.Round: ('ROUND', ('this', 'decimals')),
    exp.Trunc: ('TRUNCATE', ('this', 'decimals')),
    exp.Floor: ('FLOOR', ('this',)),
    exp.Ceil: ('CEIL', ('this',)),
    exp.Sign: ('SIGN', ('this',)),
    exp.If: ('IF', ('this', 'true', 'false')),
}
_TRIMS = {None: 'TRIM', 'BOTH': 'TRIM', 'LEADING': 'LTRIM', 'TRAILING': 'RTRIM'}
_ANONYMOUS = {'MID': 'SUBSTRING', 'OCTET_LENGTH': 'LENGTH'}


# sqlglot cannot parse DEFAULT(col); in a data-changing statement's shape it is
# renamed to a function it parses (DDL keeps DEFAULT (expr) column clauses).
_DEFAULT_CALL = re.compile(r'(?<![\w$`.@])DEFAULT(?=\s*\()', re.IGNORECASE)
_DML = re.compile(r'\s*(?:INSERT|REPLACE|UPDATE)\b', re.IGNORECASE)
_DEFAULT_FUNCTION = 'CHANGEFLOW_DEFAULT'


def mark_default_calls(text: str) -> str:
    """``text`` (a statement shape) with DEFAULT(col) renamed so that sqlglot parses it."""
    if _DML.match(text) and 'default' in text.lower():
        return _DEFAULT_CALL.sub(_DEFAULT_FUNCTION, text)
    return text


def table_defaults(spec) -> Dict[str, Any]:
    """Column -> literal DEFAULT of a TableSpec, as a value of the column's
    declared type (the config holds them as text: DEFAULT(qty) + 1 is 1, not 1.0)."""
    defaults = {}
    for column, text in spec.defaults:
        declared = spec.column_type(column)
        try:
            defaults[column] = coercer(declared)(text) if declared else text
        except ValueError:  # a type changeflow does not coerce, or a default it does not fit
            defaults[column] = text
    return defaults


def resolve_defaults(template: tuple, defaults: Mapping[str, Any]) -> tuple:
    """``template`` with each ``('default', column)`` leaf replaced by the
    column's literal default; needs-lookup when it is not known."""
    tag = template[0]
    if tag == 'default':
        column = template[1]
        if column not in defaults:
            raise needs_lookup(f'DEFAULT of column {column} is not known (declare it in the '
                               f'table\'s columns: {{type, default}})')
        return ('lit', defaults[column])
    if tag == 'neg':
        return ('neg', resolve_defaults(template[1], defaults))
    if tag == 'bin':
        return ('bin', template[1], resolve_defaults(template[2], defaults),
                resolve_defaults(template[3], defaults))
    if tag == 'fn':
        return ('fn', template[1], tuple(resolve_defaults(a, defaults) for a in template[2]))
    return template


class ExpressionCompiler:
    """Compiles the expressions of one statement; ``table_aliases`` are the names
    its columns may be qualified with (the statement's table and its alias)."""

    def __init__(self):
        self.table_aliases = None

    def compile(self, node, row_values: Optional[Dict[str, tuple]] = None,
                target: Optional[str] = None) -> tuple:
        """Template expression of ``node``; ``row_values`` resolves VALUES(col);
        ``target`` is the column a bare DEFAULT (the whole value) stands for.

        DEFAULT and DEFAULT(col) become the leaf ``('default', col)``, which
        :func:`resolve_defaults` replaces by the table's literal default."""
        if _is_bare_default(node):
            if target is None:
                raise SqlChangeError('unsupported-sql', 'DEFAULT that is not a whole value')
            return ('default', target)
        if isinstance(node, exp.Paren):
            return self.compile(node.this, row_values)
        if isinstance(node, exp.Placeholder):
            if not node.this or not str(node.this).startswith('p'):
                raise needs_lookup('prepared-statement placeholder (?) has no value in the log')
            return ('param', int(str(node.this)[1:]))
        if isinstance(node, exp.Literal):
            return ('lit', node.this if node.is_string else number_literal(node.this))
        if isinstance(node, exp.Null):
            return ('lit', None)
        if isinstance(node, exp.Boolean):
            return ('lit', 1 if node.this else 0)
        if isinstance(node, exp.Column):
            if node.table and node.table not in (self.table_aliases or ()):
                raise needs_lookup(f'column of another table: {node.sql(dialect="mysql")}')
            return ('col', node.name)
        if isinstance(node, exp.Neg):
            return ('neg', self.compile(node.this, row_values))
        op = _BINARY.get(type(node))
        if op:
            return ('bin', op, self.compile(node.this, row_values),
                    self.compile(node.expression, row_values))
        name = _COMPARISONS.get(type(node))
        if name:
            return ('fn', name, (self.compile(node.this, row_values),
                                 self.compile(node.expression, row_values)))
        if isinstance(node, (exp.And, exp.Or)):
            # a AND b AND c is one n-ary node: evaluation stops at the operand that decides
            return ('fn', 'AND' if isinstance(node, exp.And) else 'OR',
                    tuple(self.compile(a, row_values) for a in node.flatten()))
        if isinstance(node, exp.Not):
            inner = node.this
            if isinstance(inner, exp.Is):
                name, args = self._is(inner, row_values)
                return ('fn', 'IS NOT ' + name[3:], args)
            return ('fn', 'NOT', (self.compile(inner, row_values),))
        if isinstance(node, exp.Is):
            name, args = self._is(node, row_values)
            return ('fn', name, args)
        if isinstance(node, exp.Between):
            return ('fn', 'BETWEEN', tuple(self.compile(node.args[k], row_values)
                                           for k in ('this', 'low', 'high')))
        if isinstance(node, exp.In):
            if node.args.get('query') or node.args.get('unnest') or node.args.get('field'):
                raise needs_lookup(f'IN reads other rows: {node.sql(dialect="mysql")}')
            return ('fn', 'IN', tuple(self.compile(a, row_values)
                                      for a in [node.this, *node.expressions]))
        if isinstance(node, (exp.Like, exp.Escape)):
            return self._like(node, row_values)
        named = _NAMED_ARGS.get(type(node))
        if named:
            return ('fn', named[0], self._named_args(node, named[1], row_values))
        if isinstance(node, exp.Length):
            return ('fn', 'LENGTH' if node.args.get('binary') else 'CHAR_LENGTH',
                    self._named_args(node, ('this',), row_values))
        if isinstance(node, exp.Pad):
            return ('fn', 'LPAD' if node.args.get('is_left') else 'RPAD',
                    self._named_args(node, ('this', 'expression', 'fill_pattern'), row_values))
        if isinstance(node, exp.Trim):
            position = node.args.get('position')
            name = _TRIMS.get(str(position).upper() if position else None)
            if name is None:
                raise SqlChangeError('unsupported-sql', f'TRIM {position}')
            return ('fn', name, self._named_args(node, ('this', 'expression'), row_values,
                                                  flags=('position',)))
        if isinstance(node, exp.Case):
            return self._case(node, row_values)
        if type(node) is exp.Concat:  # pylint: disable=unidiomatic-typecheck (ConcatWs is one)
            return ('fn', 'CONCAT', tuple(self.compile(a, row_values) for a in node.expressions))
        name = _FUNCTIONS.get(type(node))
        if name:
            args = [node.this] + list(node.expressions) if node.this is not None else list(
                node.expressions)
            return ('fn', name, tuple(self.compile(a, row_values) for a in args))
        if isinstance(node, exp.Anonymous):
            fname = str(node.this).upper()
            if fname == 'VALUES' and row_values is not None and len(node.expressions) == 1:
                column = node.expressions[0].name
                if column not in row_values:
                    raise SqlChangeError('unsupported-sql', f'VALUES({column}) of a column not inserted')
                return row_values[column]
            if fname == _DEFAULT_FUNCTION:
                if len(node.expressions) != 1 or not isinstance(node.expressions[0], exp.Column):
                    raise SqlChangeError('unsupported-sql', 'DEFAULT() of something not a column')
                return ('default', node.expressions[0].name)
            if fname in _ANONYMOUS:
                return ('fn', _ANONYMOUS[fname], tuple(self.compile(a, row_values)
                                                       for a in node.expressions))
            if fname in NEEDS_LOOKUP_FUNCTIONS:
                raise needs_lookup(f'non-deterministic function {fname}()')
            raise needs_lookup(f'function {fname}() is not evaluated by changeflow')
        if isinstance(node, (exp.Parameter, exp.SessionParameter)):
            raise needs_lookup(f'variable {node.sql(dialect="mysql")} has no value in the log')
        if isinstance(node, (exp.Subquery, exp.Select)):
            raise needs_lookup('subquery')
        if isinstance(node, exp.Func):
            fname = node.sql_name()
            if fname in NEEDS_LOOKUP_FUNCTIONS or type(node).__name__.startswith('Current'):
                raise needs_lookup(f'non-deterministic function {fname}()')
            raise needs_lookup(f'function {fname}() is not evaluated by changeflow')
        raise needs_lookup(f'expression {node.sql(dialect="mysql")!r} is not evaluated by changeflow')

    def _named_args(self, node, keys, row_values, flags=()) -> tuple:
        """The arguments ``keys`` of ``node``, compiled; trailing absent ones
        dropped. An argument changeflow does not know (a dialect's extra) is refused."""
        unknown = [k for k, v in node.args.items()
                   if k not in keys and k not in flags and v is not None and not isinstance(v, bool)]
        if unknown:
            raise SqlChangeError('unsupported-sql', f'{node.sql(dialect="mysql")} ({unknown[0]})')
        args = [node.args.get(k) for k in keys]
        while args and args[-1] is None:
            args.pop()
        if any(a is None for a in args):
            raise SqlChangeError('unsupported-sql', f'{node.sql(dialect="mysql")}: missing argument')
        return tuple(self.compile(a, row_values) for a in args)

    def _case(self, node: exp.Case, row_values) -> tuple:
        """CASE as its searched form (when1, then1, ..., else): a simple CASE's
        WHEN v becomes operand = v (MySQL compares them with =)."""
        operand = node.this
        args = []
        for branch in node.args.get('ifs') or ():
            when = self.compile(branch.this, row_values)
            if operand is not None:
                when = ('fn', '=', (self.compile(operand, row_values), when))
            args += [when, self.compile(branch.args['true'], row_values)]
        default = node.args.get('default')
        args.append(self.compile(default, row_values) if default is not None else ('lit', None))
        return ('fn', 'CASE', tuple(args))

    def _is(self, node: exp.Is, row_values) -> tuple:
        """('IS NULL' / 'IS TRUE' / 'IS FALSE', args) of ``x IS NULL|UNKNOWN|TRUE|FALSE``."""
        what = node.expression
        if isinstance(what, exp.Null):
            name = 'IS NULL'
        elif isinstance(what, exp.Boolean):
            name = 'IS TRUE' if what.this else 'IS FALSE'
        else:
            raise SqlChangeError('unsupported-sql', f'IS {what.sql(dialect="mysql")}')
        return name, (self.compile(node.this, row_values),)

    def _like(self, node, row_values) -> tuple:
        """``a [NOT] LIKE p [ESCAPE e]`` (sqlglot wraps a LIKE with an escape in Escape)."""
        escape = None
        if isinstance(node, exp.Escape):
            escape, node = node.expression, node.this
            if not isinstance(node, exp.Like):
                raise SqlChangeError('unsupported-sql', f'ESCAPE after {type(node).__name__}')
        args = (self.compile(node.this, row_values), self.compile(node.expression, row_values))
        if escape is not None:
            args += (self.compile(escape, row_values),)
        like = ('fn', 'LIKE', args)
        return ('fn', 'NOT', (like,)) if node.args.get('negate') else like


def _is_bare_default(node) -> bool:
    """DEFAULT as a whole value: a Var in VALUES, an unquoted column in SET."""
    if isinstance(node, exp.Var):
        return node.name.upper() == 'DEFAULT'
    return (isinstance(node, exp.Column) and not node.table and node.name.upper() == 'DEFAULT'
            and not node.this.args.get('quoted'))
