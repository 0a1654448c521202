import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from changeflow.model import DEAD_LETTER_TAG
from changeflow.transforms.transactions import (ResolveTransactions, StatementClass,
                                                TransactionTracker, _session_order,
                                                classify_statement)
from tests.audit_fixture import audit_events
from tests.beam_helpers import local_pipeline


def committed_sql(events):
    trackers = {}
    committed = []
    for event in sorted(events, key=lambda e: (e.serverhost, e.connection_id, _session_order(e))):
        tracker = trackers.setdefault(
            event.connection_id, TransactionTracker(event.serverhost, event.connection_id))
        for transaction in tracker.feed(event):
            committed.append([s.object for s in transaction.statements])
    return committed, trackers


def test_recorded_log_commits_only_what_mariadb_committed():
    committed, trackers = committed_sql(audit_events())
    flat = [sql for txn in committed for sql in txn]
    assert not any('rolled@back' in sql or "'never'" in sql for sql in flat)
    assert not any('autocommit off, rolled back' in sql for sql in flat)
    assert not any('lost at disconnect' in sql for sql in flat)
    assert not any("'duplicate'" in sql for sql in flat)  # failed with 1062
    # START TRANSACTION ... COMMIT comes out as one transaction, in statement order.
    assert ["UPDATE orders SET status = 'shipped' WHERE tenant_id = 1 AND order_id = 3",
            'DELETE FROM customers WHERE id = 12'] in committed
    assert ["UPDATE orders SET note = 'autocommit off, committed' "
            'WHERE tenant_id = 1 AND order_id = 4'] in committed
    assert sum(t.counts['rolled_back'] for t in trackers.values()) == 4
    assert sum(t.counts['failed'] for t in trackers.values()) == 1


def feed_all(tracker, statements, retcodes=None):
    from tests.audit_fixture import audit_events as _events  # a real event as a template
    template = next(e for e in _events() if e.operation == 'QUERY')
    out = []
    for qid, sql in enumerate(statements, 1):
        retcode = (retcodes or {}).get(qid, 0)
        out += tracker.feed(template._replace(query_id=qid, object=sql, retcode=retcode))
    return [[s.object for s in t.statements] for t in out]


def test_savepoints_deadlock_and_implicit_commit():
    tracker = TransactionTracker('vm', 1)
    assert feed_all(tracker, [
        'BEGIN', 'INSERT INTO t VALUES (1)', 'SAVEPOINT s1', 'INSERT INTO t VALUES (2)',
        'ROLLBACK TO SAVEPOINT s1', 'INSERT INTO t VALUES (3)', 'COMMIT',
        'START TRANSACTION', 'UPDATE t SET a = 1', 'ALTER TABLE t ADD b INT',
        'BEGIN', 'UPDATE t SET a = 2', 'UPDATE t SET a = 3',
    ], retcodes={13: 1213}) == [
        ['INSERT INTO t VALUES (1)', 'INSERT INTO t VALUES (3)'],
        ['UPDATE t SET a = 1'],  # the ALTER committed it
    ]
    assert tracker.open_statements() == ()  # the deadlock rolled 'a = 2' back


def test_autocommit_spellings():
    tracker = TransactionTracker('vm', 1)
    assert feed_all(tracker, [
        'SET @@session.autocommit = OFF', 'INSERT INTO t VALUES (1)',
        'SET AUTOCOMMIT = 1', 'INSERT INTO t VALUES (2)',
    ]) == [['INSERT INTO t VALUES (1)'], ['INSERT INTO t VALUES (2)']]


def test_duplicate_delivery_is_dropped():
    tracker = TransactionTracker('vm', 1)
    event = next(e for e in audit_events() if e.operation == 'QUERY' and 'DELETE' in e.object)
    assert len(tracker.feed(event)) == 1
    assert tracker.feed(event) == []
    assert tracker.counts['duplicates'] == 1


def test_classify_statement():
    assert classify_statement('/* c */ start transaction') == (StatementClass.BEGIN, None)
    assert classify_statement('ROLLBACK WORK TO `Sp`') == (StatementClass.ROLLBACK_TO, 'sp')
    assert classify_statement('SET NAMES utf8, autocommit=0')[0] == StatementClass.AUTOCOMMIT_OFF
    assert classify_statement('SET GLOBAL autocommit=0')[0] == StatementClass.SESSION


def test_pipeline_dead_letters_writes_left_open_at_end_of_input():
    events = [e for e in audit_events() if e.connection_id == audit_events()[3].connection_id]
    events = [e for e in events if e.operation != 'DISCONNECT']  # the log ends mid-transaction
    with local_pipeline() as p:
        result = p | beam.Create(events) | ResolveTransactions()
        tail = b"'lost at disconnect\\' WHERE tenant_id = 3 AND order_id = 1',0"
        assert_that(result[DEAD_LETTER_TAG]
                    | beam.Map(lambda d: (d.step, d.reason, d.original.endswith(tail))),
                    equal_to([('transactions', 'transaction-open-at-end', True)]),
                    label='open at end')
        assert_that(result['transactions'] | beam.combiners.Count.Globally(),
                    equal_to([1]), label='committed')
