"""sqlglot expression nodes -> template expressions (:mod:`changeflow.sql.expressions`
tuples that may also hold ``('param', i)``, the statement's i-th literal)."""

from typing import Dict, Optional

from sqlglot import expressions as exp

from changeflow.sql.errors import SqlChangeError, needs_lookup
from changeflow.sql.literals import number_literal

__all__ = ['ExpressionCompiler', 'NEEDS_LOOKUP_FUNCTIONS']


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
              exp.Abs: 'ABS', exp.Greatest: 'GREATEST', exp.Least: 'LEAST'}


class ExpressionCompiler:
    """Compiles the expressions of one statement; ``table_aliases`` are the names
    its columns may be qualified with (the statement's table and its alias)."""

    def __init__(self):
        self.table_aliases = None

    def compile(self, node, row_values: Optional[Dict[str, tuple]] = None) -> tuple:
        """Template expression of ``node``; ``row_values`` resolves VALUES(col)."""
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
        if isinstance(node, exp.Concat):
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
            if fname == 'IFNULL' and len(node.expressions) == 2:
                return ('fn', 'IFNULL', tuple(self.compile(a, row_values) for a in node.expressions))
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
