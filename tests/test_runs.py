"""Runs: packed sorted records, merged in key order, decoded only when reached."""

import operator
import random

from changeflow.transforms import runs as runs_module
from changeflow.transforms.runs import make_run, merge_runs, pack, unpack


def test_pack_round_trips():
    records = [(1, 'a', b'\x00'), (2, None, 3.5)]
    assert unpack(pack(records)) == records


def test_overlapping_runs_merge_in_key_order():
    rng = random.Random(3)
    values = [rng.randrange(1000) for _ in range(5000)]
    chunks = [values[i:i + 97] for i in range(0, len(values), 97)]
    merged = list(merge_runs([make_run(chunk, key=lambda x: x) for chunk in chunks],
                             key=lambda x: x))
    assert merged == sorted(values)


def test_runs_in_sequence_are_decoded_one_at_a_time(monkeypatch):
    """Runs that follow each other (a connection's payloads) never sit
    decoded together: memory holds one run, not the input."""
    runs = [make_run(list(range(start, start + 100)), key=lambda x: x)
            for start in range(0, 10_000, 100)]
    decoded, peak = [0], [0]
    real = runs_module.unpack

    def counting(data):
        decoded[0] += 1
        return real(data)
    monkeypatch.setattr(runs_module, 'unpack', counting)
    for i, value in enumerate(merge_runs(reversed(runs), key=lambda x: x)):
        assert value == i
        peak[0] = max(peak[0], decoded[0] - i // 100)
    assert decoded[0] == 100 and peak[0] <= 2


def _changes():
    from decimal import Decimal
    from changeflow.model import Change, OpKind, RowOp, diverge_op
    from changeflow.sql.literals import HexLiteral
    upsert = RowOp(OpKind.UPSERT, 'v1', (('id', 5), ('price', Decimal('12.30')),
                                         ('blob', b'\x00\xff'), ('hex', HexLiteral(b'A')),
                                         ('note', None)),
                   (('qty', ('bin', '+', ('col', 'qty'), ('lit', Decimal('1.5')))),), 'p#1')
    update = RowOp(OpKind.UPDATE, 'v2', (), (('note', ('lit', 'ünï\n')),), 'p#2',
                   ('fn', '=', (('col', 'qty'), ('lit', 3))))
    return [Change('shop.items', (5,), (upsert, update), 10),
            Change('shop.items', (), (diverge_op('v3', 'needs-lookup', 'x'),), 11),
            Change('shop.items', (6, 'b'), (RowOp(OpKind.DELETE, 'v4'),), 12)]


def _same(a, b):
    """Equal and of the same types all the way down (tuple == NamedTuple is not enough)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


def test_changes_and_events_round_trip_exactly():
    from changeflow.model import AuditEvent
    changes = _changes()
    _same(tuple(unpack(pack(changes))), tuple(changes))
    events = [AuditEvent(1, 'db-1', 'app', 'h', 7, 23, 'QUERY', 'shop', "UPDATE t SET a = 'x'",
                         0, 'f#1', 'line'),
              AuditEvent(2, 'db-1', 'app', 'h', 7, 24, 'READ', 'shop', 't', None, 'f#2', 'l2',
                         True)]
    _same(tuple(unpack(pack(events))), tuple(events))


def test_changes_that_are_not_plain_pack_as_they_are():
    """A Change whose ops are a list (or not RowOps) comes back as it was, not
    rebuilt into a tuple of RowOps."""
    from changeflow.model import Change
    odd = [Change('t', (1,), [('upsert', 'v1')], 1), *_changes()]
    _same(tuple(unpack(pack(odd))), tuple(odd))
    mixed = [*_changes(), ('not', 'a change')]
    _same(tuple(unpack(pack(mixed))), tuple(mixed))


def test_data_packed_before_the_header_still_unpacks():
    import pickle
    import zlib
    changes = _changes()
    legacy = zlib.compress(pickle.dumps(changes, protocol=pickle.HIGHEST_PROTOCOL), 1)
    _same(tuple(unpack(legacy)), tuple(changes))
    assert runs_module.packed_counts(legacy) == (3, 1)


def test_batch_counts_are_read_without_decoding(monkeypatch):
    from changeflow.transforms.runs import batch_counts, make_batch
    batch = make_batch('shop.items', 3, _changes())
    monkeypatch.setattr(runs_module.pickle, 'loads', None)
    assert batch_counts(batch) == (3, 1)
    assert batch_counts(make_batch('shop.items', 3, [])) == (0, 0)


def test_a_batchs_span_is_read_without_decoding(monkeypatch):
    """Changes of one table carry their table, earliest and latest event
    time and op count in the header; others (several tables, a time not an
    int, records not Changes) none, and still round-trip."""
    from changeflow.model import Change
    from changeflow.transforms.runs import Span, batch_span, make_batch
    changes = [*_changes(), Change('shop.items', (7,), (), 9)]
    batch = make_batch('shop.items', 3, changes)
    odd_ops = [Change('shop.items', (1,), [('upsert', 'v1')], 20), *_changes()]
    others = [[*_changes(), Change('shop.other', (1,), (), 10)],
              [*_changes(), Change('shop.items', (1,), (), 1.5)],
              [*_changes(), ('not', 'a change')],
              [Change('shop.ïtems', (1,), (), 2 ** 63)], []]
    packed = [pack(records) for records in [odd_ops, *others]]
    monkeypatch.setattr(runs_module.pickle, 'loads', None)
    assert batch_span(batch) == Span('shop.items', 9, 12, 4, 1)
    assert runs_module.packed_span(packed[0]) == Span('shop.items', 10, 20, 5, 0)
    assert [runs_module.packed_span(data) for data in packed[1:]] == [None] * len(others)
    monkeypatch.undo()
    _same(tuple(unpack(batch[2])), tuple(changes))
    for records, data in zip([odd_ops, *others], packed):
        _same(tuple(unpack(data)), tuple(records))


def test_data_packed_without_a_span_still_unpacks(monkeypatch):
    """A header without a span (packed before spans existed) unpacks as it
    did, and has no span to read."""
    import pickle
    import zstandard
    from changeflow.transforms.runs import batch_counts, batch_span
    changes = _changes()
    body = [(change[0], change[1], change[3], *map(tuple, change[2])) for change in changes]
    older = runs_module._HEADER.pack(runs_module._CHANGES, 3, 1) + zstandard.ZstdCompressor(
        level=1).compress(pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL))
    _same(tuple(unpack(older)), tuple(changes))
    assert batch_span(('shop.items', 0, older)) is None
    assert batch_counts(('shop.items', 0, older)) == (3, 1)


def test_routing_counts_a_whole_table_change_once_per_table():
    """The database branch's count takes a whole-table change from shard 0
    only (every shard's batch carries it); the log branches count every op."""
    import apache_beam as beam
    from changeflow.metrics import counter_totals
    from changeflow.transforms.runs import make_batch
    from changeflow.transforms.shard_batches import FoldShards, RouteShardBatches
    pipeline = beam.Pipeline(runner='FnApiRunner')
    batches = [make_batch('shop.items', shard, _changes()) for shard in (0, 1, 2)]
    folded = {FoldShards.MAIN: pipeline | 'Main' >> beam.Create(batches),
              FoldShards.LOG: pipeline | 'Log' >> beam.Create(batches[:1])}
    _ = folded | RouteShardBatches(('database', 'notify'))
    result = pipeline.run()
    result.wait_until_finish()
    counts = counter_totals(result, 'changeflow.route')
    assert counts['to_database'] == 3 + 2 + 2 and counts['to_notify'] == 3


def test_equal_keys_merge_in_the_order_of_the_runs_then_of_each_run():
    """Ties go to the run with the smaller smallest key (the earlier one when
    those tie too), then in the run's own order: a replay's statement order."""
    key = operator.itemgetter(0)
    runs = [make_run([(1, 'a0'), (2, 'a1'), (2, 'a2'), (5, 'a3')], key),
            make_run([(0, 'b0'), (2, 'b1'), (5, 'b2')], key),
            make_run([(2, 'c0'), (2, 'c1')], key),
            make_run([(1, 'd0'), (2, 'd1')], key)]
    merged = [tag for _, tag in merge_runs(runs, key)]
    assert merged == ['b0', 'a0', 'd0', 'b1', 'a1', 'a2', 'd1', 'c0', 'c1', 'b2', 'a3']



def test_merge_equals_a_stable_sort_of_runs_that_touch_overlap_and_follow_each_other():
    """Runs that follow each other, touch at one key or overlap, with ties:
    the merge yields what sorting every record by (key, the rank of its run
    by smallest key then as handed over, its place in the run) gives,
    whichever path it takes."""
    key = operator.itemgetter(0)
    rng = random.Random(11)
    for _ in range(200):
        runs, start = [], 0
        for tag in range(rng.randrange(1, 8)):
            start += rng.choice((0, 1, 3, rng.randrange(10)))  # follows, touches or overlaps
            keys = sorted(start + rng.randrange(6) for _ in range(rng.randrange(1, 6)))
            start = keys[-1] - rng.randrange(3)
            runs.append([(k, f'{tag}.{i}') for i, k in enumerate(keys)])
        runs = rng.sample(runs, len(runs))  # handed over in any order; ties then go by it
        ranked = sorted(runs, key=lambda run: run[0][0])
        expected = [record for _, _, _, record in sorted(
            (record[0], rank, i, record) for rank, run in enumerate(ranked)
            for i, record in enumerate(run))]
        assert list(merge_runs([make_run(run, key) for run in runs], key)) == expected


def test_packing_starts_no_collection():
    """The tuples made for pickling come and go with the collector paused:
    their allocations would start collections that scan all the worker holds
    (at most one young collection as it resumes, over what is left)."""
    import gc
    changes = _changes() * 20_000
    collections = []

    def count(phase, info):
        if phase == 'start':
            collections.append(info['generation'])
    gc.callbacks.append(count)
    try:
        packed = pack(changes)
    finally:
        gc.callbacks.remove(count)
    assert collections in ([], [0])
    _same(tuple(unpack(packed)[:3]), tuple(changes[:3]))
