"""op_columns takes common assignment shapes without substitute: the same
result as substituting every assignment in turn."""

import pytest

from changeflow.model import OpKind, RowOp
from changeflow.sql.expressions import col, lit, substitute
from changeflow.sql.rowstate import op_columns


def _substituted(assignments):
    assigned = {}
    for column, expr in assignments:
        assigned[column] = substitute(expr, assigned)
    return assigned


ASSIGNMENTS = [
    (('qty', ('bin', '+', col('qty'), lit(1))),),
    (('a', lit(5)), ('b', ('bin', '+', col('a'), lit(1)))),        # reads an earlier one
    (('a', lit(5)), ('b', ('bin', '*', lit(2), col('a')))),
    (('a', lit(5)), ('b', col('a')), ('c', col('b'))),
    (('a', col('qty')), ('b', ('bin', '+', col('a'), col('qty')))),
    (('a', ('bin', '+', lit(1), lit(2))),),                        # folded to a literal
    (('a', ('bin', '+', col('x'), col('y'))), ('b', ('neg', col('a')))),
    (('a', ('fn', 'GREATEST', (col('qty'), lit(3)))),),
]


@pytest.mark.parametrize('assignments', ASSIGNMENTS)
@pytest.mark.parametrize('kind', [OpKind.UPDATE, OpKind.UPSERT])
def test_same_as_substituting_each_assignment(kind, assignments):
    op = RowOp(kind, 'v1', (('id', 1),), assignments)
    assigned = _substituted(assignments)
    literals, computed = op_columns(op)
    if kind == OpKind.UPSERT:
        assert (literals, computed) == ({'id': 1}, assigned)
    else:
        assert literals == {'id': 1, **{c: e[1] for c, e in assigned.items() if e[0] == 'lit'}}
        assert computed == {c: e for c, e in assigned.items() if e[0] != 'lit'}
