"""The coarse data flow's parse step: the garbage collector's start-up heap."""

import gc

import apache_beam as beam

from changeflow.model import LogEvent
from changeflow.transforms import connections
from changeflow.transforms.connections import RUNS, ParseToConnectionRuns
from tests.beam_helpers import local_pipeline


def test_the_first_parse_freezes_the_workers_heap_once(monkeypatch):
    """Full collections would traverse the worker's modules and pipeline every
    time (a fifth of a job's CPU): the first parse step freezes them, once."""
    frozen, counted = [], []
    monkeypatch.setattr(gc, 'get_freeze_count', lambda: counted.append(1) or len(frozen))
    monkeypatch.setattr(gc, 'freeze', lambda: frozen.append(True))
    line = "20261124 10:00:01,db-1,app,10.0.0.7,7,{},QUERY,shop,'SELECT 1',0"
    chunks = [(LogEvent(line.format(n), 'g', 's', str(n), 0, f'log:{n}'),) for n in (1, 2)]
    connections._freeze_startup_heap.cache_clear()   # as in a new worker process
    try:
        for _ in range(2):   # two runs in one process, as two --follow cycles
            pipeline = local_pipeline()
            parsed = (pipeline | beam.Create(chunks) | 'A' >> ParseToConnectionRuns(1024))
            _ = (pipeline | 'More' >> beam.Create(chunks) | 'B' >> ParseToConnectionRuns(1024))
            _ = parsed[RUNS]
            pipeline.run().wait_until_finish()
    finally:
        connections._freeze_startup_heap.cache_clear()
    assert frozen == [True]
    # counting the frozen objects (slow once they are many) happens once, not per setup
    assert counted == [1]


def test_worker_setup_makes_young_collections_rarer_never_more_frequent():
    import gc
    from changeflow.transforms import connections
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        connections._freeze_startup_heap.cache_clear()   # as in a new worker process
        connections._freeze_startup_heap()
        assert gc.get_threshold() == (connections._YOUNG_COLLECTION, 10, 10)
        gc.set_threshold(10 ** 6, 10, 10)
        connections._freeze_startup_heap.cache_clear()
        connections._freeze_startup_heap()
        assert gc.get_threshold() == (10 ** 6, 10, 10)
    finally:
        gc.set_threshold(*saved)
        connections._freeze_startup_heap.cache_clear()


def counters_of(result, namespace):
    totals = {}
    for counter in result.metrics().query()['counters']:
        if counter.key.metric.namespace == namespace:
            name = counter.key.metric.name
            totals[name] = totals.get(name, 0) + counter.committed
    return totals


def test_replay_counts_reach_the_metrics():
    """Replay counts statements and changes as plain ints, per connection; they
    reach the metrics at the end of each bundle."""
    from tests.audit_fixture import SHOP_TABLES
    line = "20261124 10:00:0{},db-1,app,10.0.0.7,{},{},QUERY,shop,'{}',0"
    statements = [(7, 'INSERT INTO customers (id, name) VALUES (1, "a")'),
                  (7, 'UPDATE customers SET visits = 2 WHERE id = 1'), (8, 'BEGIN'),
                  (8, 'DELETE FROM notes WHERE id IN (1, 2)'), (8, 'COMMIT'), (8, 'SELECT 1')]
    chunks = [tuple(LogEvent(line.format(n, connection, n, sql), 'g', 's', str(n), 0, f'log:{n}')
                    for n, (connection, sql) in enumerate(statements, 1))]
    pipeline = local_pipeline()
    runs = (pipeline | beam.Create(chunks) | ParseToConnectionRuns(1024))[RUNS]
    _ = runs | connections.ReplayConnections(SHOP_TABLES)
    result = pipeline.run()
    result.wait_until_finish()
    assert counters_of(result, 'changeflow.sql_changes') == {
        'statements_received': 3, 'row_changes': 4}
    replayed = counters_of(result, 'changeflow.transactions')
    assert {name: replayed.get(name) for name in ('transactions', 'committed', 'reads')} == {
        'transactions': 3, 'committed': 3, 'reads': 1}


def _record(arrival_ms, *lines):
    import gzip
    import orjson
    from changeflow.model import SourceRecord
    payload = {'messageType': 'DATA_MESSAGE', 'owner': '1', 'logGroup': 'g', 'logStream': 's',
               'subscriptionFilters': [], 'logEvents': [
                   {'id': str(i), 'timestamp': 1, 'message': m} for i, m in enumerate(lines)]}
    return SourceRecord(gzip.compress(orjson.dumps(payload)), 'stream', 'shard-0',
                        str(arrival_ms), arrival_ms)


def _parsed_runs(records, monkeypatch, hold=None):
    """(runs yielded by process, runs yielded by finish_bundle) of one bundle,
    each as (connection, query ids, arrival ms)."""
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import MIN_TIMESTAMP
    from changeflow.transforms.runs import unpack
    if hold is not None:
        monkeypatch.setattr(connections, '_HOLD_EVENTS', hold)
    fn = connections._ParseRecordFn(1024, 100_500)
    fn.setup()
    fn.start_bundle()

    def runs(outputs):
        return [(out.value[0], [e.query_id for e in unpack(out.value[1][1])], out.value[1][2])
                for out in outputs if getattr(out, 'tag', None) is None]
    during = runs(out for record in records
                  for out in fn.process(record, GlobalWindow(), MIN_TIMESTAMP))
    return during, runs(fn.finish_bundle())


_LINE = "20261124 10:00:01,db-1,app,10.0.0.7,{},{},QUERY,shop,'UPDATE t SET a = 1 WHERE id = 1',0"


def test_a_bundles_interleaved_records_give_one_run_per_connection(monkeypatch):
    """50 interleaved connections put ~2 events per connection in a record: the
    parse step holds a bundle's events and makes one run per connection (and
    arrival time, which the stream's reorder buffer holds runs back by), not
    one per record and connection: ~20x fewer, larger runs into the replay's
    shuffle."""
    records = [_record(0, _LINE.format(7, q), _LINE.format(8, q + 1)) for q in (1, 3, 5)]
    records.append(_record(9, _LINE.format(7, 7)))
    during, at_end = _parsed_runs(records, monkeypatch)
    assert during == []
    assert sorted(at_end) == [(('db-1', 7), [1, 3, 5], 0), (('db-1', 7), [7], 9),
                              (('db-1', 8), [2, 4, 6], 0)]


def test_the_parse_step_holds_a_bounded_number_of_events(monkeypatch):
    records = [_record(0, _LINE.format(7, q), _LINE.format(8, q + 1)) for q in (1, 3, 5)]
    during, at_end = _parsed_runs(records, monkeypatch, hold=4)
    assert sorted(during) == [(('db-1', 7), [1, 3], 0), (('db-1', 8), [2, 4], 0)]
    assert sorted(at_end) == [(('db-1', 7), [5], 0), (('db-1', 8), [6], 0)]


def test_held_events_that_cannot_become_a_run_are_dead_lettered_with_their_lines(monkeypatch):
    """Held over records, a connection's events belong to no one element: if
    making their run fails (a defect), their lines are the dead letter's
    original, and the other connections' runs still go out."""
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import MIN_TIMESTAMP
    real = connections.make_run

    def failing(events, key):
        if events[0].connection_id == 8:
            raise RuntimeError('forced failure')
        return real(events, key)
    monkeypatch.setattr(connections, 'make_run', failing)
    fn = connections._ParseRecordFn(1024, 100_500)
    fn.setup()
    fn.start_bundle()
    records = [_record(0, _LINE.format(7, q), _LINE.format(8, q + 1)) for q in (1, 3)]
    for record in records:
        assert list(fn.process(record, GlobalWindow(), MIN_TIMESTAMP)) == []
    outputs = list(fn.finish_bundle())
    letters = [out.value.value for out in outputs if getattr(out, 'tag', None) == 'dead_letter']
    runs = [out.value[0] for out in outputs if getattr(out, 'tag', None) is None]
    assert runs == [('db-1', 7)]
    assert [(letter.reason, letter.original) for letter in letters] == [
        ('internal-error', '\n'.join([_LINE.format(8, 2), _LINE.format(8, 4)]).encode())]
