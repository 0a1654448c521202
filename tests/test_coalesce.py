import decimal

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from changeflow.sql.expressions import col, lit
from changeflow.model import Change, OpKind, RowOp, audit_version
from changeflow.sql.rowstate import RowState, apply_ops
from changeflow.transforms.coalesce import CoalesceChanges, coalesce_changes, coalesce_ops
from tests.beam_helpers import local_pipeline


def v(qid):
    return audit_version(1_700_000_000_000_000, qid, qid, 0)


def inc(column, by=1):
    return (column, ('bin', '+', col(column), lit(by)))


def test_insert_then_updates_fold_into_one_whole_row():
    ops = coalesce_ops([
        RowOp(OpKind.UPDATE, v(3), (), (inc('qty'),)),
        RowOp(OpKind.INSERT, v(1), (('id', 1), ('qty', 5), ('note', 'a'))),
        RowOp(OpKind.UPDATE, v(2), (), (('note', lit('b')),)),
    ])
    assert ops == (RowOp(OpKind.INSERT, v(3), (('id', 1), ('qty', 6), ('note', 'b'))),)


def test_expression_updates_stay_separate_with_their_versions():
    ops = [RowOp(OpKind.UPDATE, v(1), (), (inc('qty'),)),
           RowOp(OpKind.UPDATE, v(2), (), (inc('qty'),))]
    assert coalesce_ops(ops) == tuple(ops)


def test_duplicate_versions_collapse_and_delete_wins():
    update = RowOp(OpKind.UPDATE, v(1), (), (inc('qty'),))
    delete = RowOp(OpKind.DELETE, v(2))
    assert coalesce_ops([update, update, delete, update._replace(version=v(3))]) == (
        RowOp(OpKind.DELETE, v(3)),)


def test_upsert_after_delete_becomes_insert():
    ops = coalesce_ops([RowOp(OpKind.DELETE, v(1)),
                        RowOp(OpKind.UPSERT, v(2), (('id', 1), ('qty', 1)), (inc('qty'),))])
    assert ops == (RowOp(OpKind.INSERT, v(2), (('id', 1), ('qty', 1))),)


def test_folding_never_changes_the_result():
    """Whatever was folded, applying the result equals applying every op."""
    start = RowState(True, {'id': 1, 'qty': 2, 'note': 'x', 'amount': decimal.Decimal('1.5')},
                     False)
    ops = [RowOp(OpKind.UPDATE, v(1), (), (('note', lit('y')),)),
           RowOp(OpKind.UPDATE, v(2), (), (inc('qty', 3), ('amount', lit(None)))),
           RowOp(OpKind.UPDATE, v(3), (), (('note', lit('z')),)),
           RowOp(OpKind.UPSERT, v(4), (('id', 1),), (inc('qty'),)),
           RowOp(OpKind.INSERT_IGNORE, v(5), (('id', 1), ('qty', 0)))]
    assert apply_ops(start, coalesce_ops(ops)) == apply_ops(start, ops)


def test_a_truncate_between_a_rows_ops_is_not_folded_across():
    insert = Change('shop.orders', (1, 1), (RowOp(OpKind.INSERT, v(5), (('qty', 1),)),), 0)
    update = Change('shop.orders', (1, 1), (RowOp(OpKind.UPDATE, v(12), (), (inc('qty'),)),), 0)
    truncates = (RowOp(OpKind.TRUNCATE, v(10)), RowOp(OpKind.TRUNCATE, v(20)))
    merged = coalesce_changes([insert, update], truncates)
    assert apply_ops(None, merged.ops).exists is False
    assert coalesce_changes([insert, update]).ops == (
        RowOp(OpKind.INSERT, v(12), (('qty', 2),)),)


def change(qid, op, seconds):
    return Change('shop.orders', (1, 1), (op._replace(version=v(qid)),),
                  1_700_000_000_000_000 + seconds * 1_000_000)


def test_bounded_run_coalesces_each_row_over_the_whole_input():
    changes = [change(1, RowOp(OpKind.INSERT, '', (('tenant_id', 1), ('order_id', 1),
                                                   ('qty', 1))), 0),
               change(2, RowOp(OpKind.UPDATE, '', (), (inc('qty'),)), 30),
               change(3, RowOp(OpKind.UPDATE, '', (), (inc('qty'),)), 90)]
    with local_pipeline() as p:
        out = (p | beam.Create(changes) | CoalesceChanges(5, whole_input=True))[CoalesceChanges.MAIN]
        assert_that(out | beam.Map(lambda c: (c.key, [o.kind for o in c.ops],
                                              dict(c.ops[-1].values).get('qty'))),
                    equal_to([((1, 1), [OpKind.INSERT], 3)]))


def test_streaming_windows_fold_per_window_and_keep_order():
    """Several updates to one row over several 5 s windows: one change per window,
    and applying the windows' changes in order gives the row's true end state."""
    base = 1_700_000_000
    stream = (TestStream()
              .advance_watermark_to(base)
              .add_elements([change(1, RowOp(OpKind.INSERT, '', (('qty', 1),)), 0)])
              .add_elements([change(2, RowOp(OpKind.UPDATE, '', (), (inc('qty'),)), 1)])
              .advance_watermark_to(base + 5)
              .add_elements([change(3, RowOp(OpKind.UPDATE, '', (), (inc('qty', 10),)), 6)])
              .add_elements([change(4, RowOp(OpKind.UPDATE, '', (), (('note', lit('n')),)), 7)])
              .add_elements([change(5, RowOp(OpKind.UPDATE, '', (), (inc('qty', 100),)), 8)])
              .advance_watermark_to(base + 10)
              .add_elements([change(6, RowOp(OpKind.UPDATE, '', (), (inc('qty', 1000),)), 11)])
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True

    def check(changes):
        in_order = sorted(changes, key=lambda c: c.first_version)
        assert [len(c.ops) for c in in_order] == [1, 3, 1]
        end = apply_ops(None, [op for c in in_order for op in c.ops])
        assert end == RowState(True, {'qty': 1112, 'note': 'n'}, True), end

    # TestStream needs the BundleBasedDirectRunner; the FnApiRunner has no TestStream.
    with TestPipeline(runner='BundleBasedDirectRunner', options=options) as p:
        assert_that((p | stream | CoalesceChanges(5, whole_input=False))[CoalesceChanges.MAIN], check)


def _random_history(seed):
    """Changes of a few rows and whole-table ops, as translation emits them
    (one op each), shuffled, with some delivered twice."""
    import random
    rng = random.Random(seed)
    changes = []
    for qid in range(1, 60):
        roll = rng.random()
        if roll < 0.06:
            kind = rng.choice([OpKind.TRUNCATE, OpKind.DELETE, OpKind.UPDATE, OpKind.DIVERGE])
            op = (RowOp(kind, v(qid), (), (inc('qty'),)) if kind == OpKind.UPDATE
                  else RowOp(kind, v(qid), (('reason', 'r'), ('detail', 'd')))
                  if kind == OpKind.DIVERGE else RowOp(kind, v(qid)))
            changes.append(Change('t.x', (), (op,), qid))
            continue
        key = (rng.randrange(4),)
        kind = rng.choice([OpKind.INSERT, OpKind.UPDATE, OpKind.UPSERT, OpKind.DELETE,
                           OpKind.REPLACE, OpKind.INSERT_IGNORE, OpKind.DIVERGE])
        values = (('id', key[0]), ('qty', rng.randrange(9)), ('note', rng.choice('ab')))
        assignments = rng.choice([(inc('qty'),), (('note', lit('c')),)])
        condition = rng.choice([None, None, ('fn', '=', (col('note'), lit('a')))])
        op = {OpKind.INSERT: RowOp(kind, v(qid), values),
              OpKind.REPLACE: RowOp(kind, v(qid), values),
              OpKind.INSERT_IGNORE: RowOp(kind, v(qid), values),
              OpKind.UPSERT: RowOp(kind, v(qid), values, assignments),
              OpKind.UPDATE: RowOp(kind, v(qid), (), assignments, condition=condition),
              OpKind.DELETE: RowOp(kind, v(qid), condition=condition),
              OpKind.DIVERGE: RowOp(kind, v(qid), (('reason', 'r'), ('detail', 'd')))}[kind]
        changes.append(Change('t.x', key, (op,), qid))
    changes += rng.sample(changes, 8)  # at-least-once delivery
    rng.shuffle(changes)
    return changes


def test_shard_folder_equals_coalescing_each_row_with_the_tables_ops():
    """The bounded data flow's row-by-row folding (versions in order) gives
    exactly what CoalesceChanges gives over each row's whole history."""
    from changeflow.transforms.coalesce import ShardFolder
    for seed in range(200):
        changes = _random_history(seed)
        table_ops = [c.ops[0] for c in changes
                     if not c.key and c.ops[0].kind in (OpKind.TRUNCATE, OpKind.UPDATE,
                                                         OpKind.DELETE)]
        by_key = {}
        for change in changes:
            by_key.setdefault(change.key, []).append(change)
        expected = {key: coalesce_changes(rows, () if not key else table_ops)
                    for key, rows in by_key.items()}
        folder = ShardFolder()
        for change in sorted(changes, key=lambda c: c.ops[0].version):
            folder.add(change)
        assert {c.key: c for c in folder.changes('t.x')} == expected, seed


def test_apply_op_reads_kinds_by_value_and_returns_row_states():
    """The kinds are compared by value (a kind read back as its string applies
    the same), and every state made is a RowState."""
    from changeflow.model import OpKind, RowOp
    from changeflow.sql.rowstate import ABSENT, RowState, apply_op
    for kind in (OpKind.INSERT, 'insert'):
        state = apply_op(ABSENT, RowOp(kind, 'v1', (('id', 1), ('qty', 2))))
        assert type(state) is RowState and state == (True, {'id': 1, 'qty': 2}, True)
        updated = apply_op(state, RowOp('update' if kind == 'insert' else OpKind.UPDATE, 'v2',
                                        (), (('qty', ('bin', '+', ('col', 'qty'), ('lit', 1))),)))
        assert type(updated) is RowState and updated.values == {'id': 1, 'qty': 3}
        assert apply_op(updated, RowOp('delete', 'v3')) is ABSENT
