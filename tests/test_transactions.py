import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from changeflow.model import DEAD_LETTER_TAG
from changeflow.sql.errors import SqlChangeError
from changeflow.sql.plans import StatementTranslator
from changeflow.transforms.transactions import (CommittedTransaction, ResolveTransactions,
                                                SessionState, StatementClass,
                                                TransactionTracker, session_order,
                                                classify_statement)
from tests.audit_fixture import SHOP_TABLES, audit_events
from tests.beam_helpers import local_pipeline


def committed_sql(events):
    trackers = {}
    committed = []
    for event in sorted(events, key=lambda e: (e.serverhost, e.connection_id, session_order(e))):
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
        ['ALTER TABLE t ADD b INT'],  # and goes on alone, for the SQL stage to follow or mark
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
    # After a server restart query ids start again: the same id and text at
    # another time is another statement, not a redelivery.
    later = event._replace(timestamp_us=event.timestamp_us + 3_600_000_000)
    assert len(tracker.feed(later)) == 1
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


# Session state per connection -------------------------------------------------------------

def feed_sessions(statements, **options):
    """The (sql, SessionState) pairs the tracker commits for ``statements``."""
    from tests.audit_fixture import audit_events as _events
    template = next(e for e in _events() if e.operation == 'QUERY')
    tracker = TransactionTracker('vm', 1, **options)
    out = []
    for qid, sql in enumerate(statements, 1):
        for transaction in tracker.feed(template._replace(query_id=qid, object=sql, retcode=0)):
            assert len(transaction.sessions) == len(transaction.statements)
            out += list(zip((s.object for s in transaction.statements), transaction.sessions))
    return out


def test_sql_mode_names_and_time_zone_are_tracked_per_statement():
    (first, s1), (second, s2), (third, s3), (fourth, s4) = feed_sessions([
        'INSERT INTO t VALUES (1)',
        "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES', NAMES latin1 COLLATE latin1_bin, "
        "time_zone = '+01:00'",
        'INSERT INTO t VALUES (2)',
        "SET @@sql_mode = 'ANSI', CHARACTER SET utf8mb4, @@session.time_zone = DEFAULT",
        'INSERT INTO t VALUES (3)',
        "SET GLOBAL sql_mode = 'NO_BACKSLASH_ESCAPES', time_zone = 'UTC'",  # GLOBAL carries on
        '/*!40101 SET @@sql_mode = TRADITIONAL */',
        'INSERT INTO t VALUES (4)',
    ])
    assert s1 == SessionState('', '', '', '')
    assert s2 == SessionState('NO_BACKSLASH_ESCAPES', 'latin1', 'latin1_bin', '+01:00')
    assert s3.sql_mode == 'REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ANSI'
    assert (s3.charset, s3.collation, s3.time_zone) == ('utf8mb4', '', '')
    assert 'STRICT_TRANS_TABLES' in s4.sql_mode and s4.time_zone == ''


def test_a_saved_and_restored_sql_mode_is_known_and_a_computed_one_is_not():
    pairs = feed_sessions([
        "SET sql_mode = 'ANSI_QUOTES'",
        "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */",
        'INSERT INTO t VALUES (1)',
        '/*!40101 SET SQL_MODE=@OLD_SQL_MODE */',
        'INSERT INTO t VALUES (2)',
        "SET sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')",
        'INSERT INTO t VALUES (3)',
        'SET sql_mode = @never_set',
        'INSERT INTO t VALUES (4)',
        "SET sql_mode = ''",
        'INSERT INTO t VALUES (5)',
    ])
    assert [s.sql_mode for _, s in pairs] == [
        'NO_AUTO_VALUE_ON_ZERO', 'ANSI_QUOTES', None, None, '']


def test_a_disconnect_forgets_the_session():
    tracker = TransactionTracker('vm', 1)
    feed_all(tracker, ["SET sql_mode = 'ANSI_QUOTES'"])
    template = next(e for e in audit_events() if e.operation == 'QUERY')
    tracker.feed(template._replace(operation='DISCONNECT', query_id=0))
    (transaction,) = tracker.feed(template._replace(query_id=99, object='DELETE FROM t'))
    assert transaction.sessions == (SessionState(),)


def test_translation_reads_literals_with_the_session_sql_mode():
    translator = StatementTranslator(SHOP_TABLES)
    plain = 'UPDATE notes SET body = \'C:\\temp\\\' WHERE id = 1'
    (change,) = translator.translate(plain, 'shop', SessionState('NO_BACKSLASH_ESCAPES')).changes
    assert change.assignments == (('body', ('lit', 'C:\\temp\\')),)
    ansi = SessionState(feed_sessions(["SET sql_mode='ANSI'", 'DELETE FROM t'])[0][1].sql_mode)
    (change,) = translator.translate('UPDATE "notes" SET "body" = \'x\' WHERE "id" = 2', 'shop',
                                     ansi).changes
    assert change.key == (2,) and change.assignments == (('body', ('lit', 'x')),)
    # The same text read without ANSI_QUOTES: "id" = 2 compares a string, so it
    # names no row: a whole-table UPDATE whose condition the replica evaluates.
    (change,) = translator.translate('UPDATE notes SET body = "x" WHERE "id" = 2', 'shop',
                                     SessionState()).changes
    assert change.key == () and change.condition is not None


def test_an_unknown_sql_mode_refuses_only_statements_it_may_change():
    translator = StatementTranslator(SHOP_TABLES)
    unknown = SessionState(sql_mode=None)
    (change,) = translator.translate("UPDATE notes SET body = 'plain' WHERE id = 1", 'shop',
                                     unknown).changes
    assert change.assignments == (('body', ('lit', 'plain')),)
    for sql in ["UPDATE notes SET body = 'a\\'b' WHERE id = 1",
                'UPDATE notes SET body = "x" WHERE id = 1']:
        with pytest.raises(SqlChangeError) as error:
            translator.translate(sql, 'shop', unknown)
        assert error.value.reason == 'unknown-sql-mode'
    with pytest.raises(SqlChangeError) as error:
        translator.translate("UPDATE notes SET body = 'é' WHERE id = 1", 'shop',
                             SessionState(charset='latin1'))
    assert error.value.reason == 'unsupported-charset'
    pipes = SessionState(feed_sessions(["SET sql_mode='ANSI'", 'DELETE FROM t'])[0][1].sql_mode)
    with pytest.raises(SqlChangeError) as error:
        translator.translate("UPDATE notes SET body = body || 'x' WHERE id = 1", 'shop', pipes)
    assert error.value.reason == 'unsupported-sql-mode'


def test_pipeline_dead_letters_statements_an_unknown_sql_mode_may_change():
    from changeflow.transforms.sql_changes import ExtractRowChanges
    template = next(e for e in audit_events() if e.operation == 'QUERY')
    bad = template._replace(query_id=900, database='shop',
                            object="UPDATE notes SET body = 'a\\\\b' WHERE id = 1")
    good = template._replace(query_id=901, database='shop',
                             object="UPDATE notes SET body = 'c' WHERE id = 2")
    transaction = CommittedTransaction('vm', 1, (bad, good), (SessionState(None),) * 2)
    with local_pipeline() as p:
        result = p | beam.Create([transaction]) | ExtractRowChanges(SHOP_TABLES)
        # The refused statement's table is marked (its head names it), in its place.
        assert_that(result['changes'] | beam.Map(lambda c: (c.table, c.key, c.ops[0].kind.value)),
                    equal_to([('shop.notes', (), 'diverge'), ('shop.notes', (2,), 'update')]),
                    label='changes')
        assert_that(result[DEAD_LETTER_TAG] | beam.Map(lambda d: d.reason),
                    equal_to(['unknown-sql-mode']), label='dead letters')


# The state machine against MariaDB's lists ------------------------------------------------

def test_temporary_tables_do_not_commit_and_truncate_commits_around_itself():
    tracker = TransactionTracker('vm', 1)
    assert feed_all(tracker, [
        'BEGIN', 'INSERT INTO t VALUES (1)', 'CREATE TEMPORARY TABLE tmp (a INT)',
        'DROP TEMPORARY TABLE tmp', 'ROLLBACK',
        'BEGIN', 'INSERT INTO t VALUES (2)', 'TRUNCATE TABLE u', 'INSERT INTO t VALUES (3)',
        'ROLLBACK',
    ]) == [['INSERT INTO t VALUES (2)'], ['TRUNCATE TABLE u'], ['INSERT INTO t VALUES (3)']]
    assert tracker.counts['rolled_back'] == 1


def test_chain_release_and_completion_type():
    tracker = TransactionTracker('vm', 1)
    assert feed_all(tracker, [
        'BEGIN', 'INSERT INTO t VALUES (1)', 'COMMIT AND CHAIN', 'INSERT INTO t VALUES (2)',
        'ROLLBACK WORK AND CHAIN', 'INSERT INTO t VALUES (3)', 'COMMIT AND NO CHAIN',
        'INSERT INTO t VALUES (4)',  # autocommit again
        'SET completion_type = CHAIN', 'BEGIN', 'INSERT INTO t VALUES (5)', 'COMMIT',
        'INSERT INTO t VALUES (6)', 'COMMIT RELEASE', 'INSERT INTO t VALUES (7)',
    ]) == [['INSERT INTO t VALUES (1)'], ['INSERT INTO t VALUES (3)'],
           ['INSERT INTO t VALUES (4)'], ['INSERT INTO t VALUES (5)'],
           ['INSERT INTO t VALUES (6)'], ['INSERT INTO t VALUES (7)']]
    assert tracker.open_statements() == ()  # RELEASE ended the session: completion_type reset


def test_xa_transactions():
    tracker = TransactionTracker('vm', 1)
    assert feed_all(tracker, [
        "XA START 'a'", 'INSERT INTO t VALUES (1)', "XA END 'a'", "XA PREPARE 'a'",
        "XA COMMIT 'a'",
        "XA BEGIN 'b'", 'INSERT INTO t VALUES (2)', "XA END 'b'", "XA COMMIT 'b' ONE PHASE",
        "XA START 'c'", 'INSERT INTO t VALUES (3)', "XA END 'c'", "XA ROLLBACK 'c'",
        "XA START 'd'", 'INSERT INTO t VALUES (4)', "XA END 'd'", "XA PREPARE 'd'",
    ]) == [['INSERT INTO t VALUES (1)'], ['INSERT INTO t VALUES (2)']]
    template = next(e for e in audit_events() if e.operation == 'QUERY')
    tracker.feed(template._replace(operation='DISCONNECT', query_id=0))
    assert [(e.object, reason) for e, reason in tracker.unresolved] == [
        ('INSERT INTO t VALUES (4)', 'xa-prepared-at-disconnect')]
    assert tracker.counts['rolled_back'] == 1


def test_autocommit_locks_and_transaction_options():
    tracker = TransactionTracker('vm', 1)
    assert feed_all(tracker, [
        'SET autocommit = 0', 'START TRANSACTION READ ONLY', 'INSERT INTO t VALUES (1)',
        'SET autocommit = 1',  # was 0: commits, even inside START TRANSACTION
        'ROLLBACK',  # nothing left to roll back
        'START TRANSACTION WITH CONSISTENT SNAPSHOT', 'INSERT INTO t VALUES (2)',
        'SET autocommit = 1',  # already 1: nothing
        'LOCK TABLES t WRITE', 'BEGIN', 'INSERT INTO t VALUES (3)', 'UNLOCK TABLES',
        'BEGIN', 'INSERT INTO t VALUES (4)', 'UNLOCK TABLES',  # no LOCK TABLES: no commit
        'ROLLBACK',
        'SET STATEMENT max_statement_time = 5 FOR INSERT INTO t VALUES (5)',
    ]) == [['INSERT INTO t VALUES (1)'], ['INSERT INTO t VALUES (2)'],
           ['INSERT INTO t VALUES (3)'],
           ['SET STATEMENT max_statement_time = 5 FOR INSERT INTO t VALUES (5)']]


def test_errors_roll_back_the_statement_or_the_transaction():
    statements = ['BEGIN', 'INSERT INTO t VALUES (1)', 'INSERT INTO t VALUES (2)',
                  'INSERT INTO t VALUES (3)', 'COMMIT']
    # 1205 lock wait timeout and 1062 duplicate key: that statement only.
    for error in (1205, 1062):
        assert feed_all(TransactionTracker('vm', 1), statements, retcodes={3: error}) == [
            ['INSERT INTO t VALUES (1)', 'INSERT INTO t VALUES (3)']]
    # With innodb_rollback_on_timeout a 1205 rolls back the transaction, like 1213.
    assert feed_all(TransactionTracker('vm', 1, rollback_on_timeout=True), statements,
                    retcodes={3: 1205}) == [['INSERT INTO t VALUES (3)']]
    assert feed_all(TransactionTracker('vm', 1), statements, retcodes={4: 1213}) == []


def test_a_failing_ddl_statement_still_commits_unless_it_did_not_parse():
    statements = ['BEGIN', 'INSERT INTO t VALUES (1)', 'CREATE TABLE t (a INT)', 'ROLLBACK']
    assert feed_all(TransactionTracker('vm', 1), statements, retcodes={3: 1050}) == [
        ['INSERT INTO t VALUES (1)']]
    assert feed_all(TransactionTracker('vm', 1), statements, retcodes={3: 1064}) == []


def test_classify_statement_reads_executable_comments():
    assert classify_statement('/*!40101 SET NAMES utf8 */') == (StatementClass.SESSION, None)
    assert classify_statement('TRUNCATE TABLE t') == (StatementClass.WRITE, None)
    assert classify_statement("/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, "
                              "SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */")[0] == StatementClass.SESSION
    assert classify_statement('/*!40000 ALTER TABLE t DISABLE KEYS */')[0] == StatementClass.DDL
    assert classify_statement('/*!40101 SET autocommit=0 */')[0] == StatementClass.AUTOCOMMIT_OFF
    assert classify_statement('/*!99999 DROP TABLE t */ SELECT 1')[0] == StatementClass.READ
    assert classify_statement('/*!50003 CREATE*/ /*!50003 TRIGGER x BEFORE INSERT ON t '
                              'FOR EACH ROW SET NEW.a = 1 */')[0] == StatementClass.DDL


def test_a_repeated_session_statement_is_classified_once_per_text():
    """BEGIN, COMMIT and SET lines repeat verbatim: classified once (by text,
    server version and sql_mode flags), parsed or replayed alike."""
    from changeflow.transforms import transactions
    before = transactions._classify_seen.cache_info().hits
    sql = "SET @note = 'a\\\\'"
    plain = transactions._classify(sql, 101100)
    assert transactions._classify(sql, 101100) == plain
    assert transactions._classify_seen.cache_info().hits == before + 1
    assert plain == transactions._classify_text(sql, 101100, (False, False))
    no_backslash = transactions._classify(sql, 101100, (True, False))
    assert no_backslash == transactions._classify_text(sql, 101100, (True, False))
    assert transactions._classify_seen.cache_info().hits == before + 1


def test_an_autocommitted_write_forgets_the_savepoints_set_before_it():
    """An autocommitted write is committed on its own, without the pending
    lists, and still ends its transaction as a COMMIT does: a SAVEPOINT set
    before it is gone, so a later ROLLBACK TO it discards nothing."""
    tracker = TransactionTracker('vm', 1)
    assert feed_all(tracker, [
        'SAVEPOINT s1', 'INSERT INTO t VALUES (1)', 'SET autocommit = 0',
        'INSERT INTO t VALUES (2)', 'ROLLBACK TO SAVEPOINT s1', 'COMMIT',
    ]) == [['INSERT INTO t VALUES (1)'], ['INSERT INTO t VALUES (2)']]
    assert tracker.counts['committed'] == 2 and tracker.counts['rolled_back'] == 0


def test_an_autocommitted_write_is_a_transaction_of_its_own_with_its_session():
    tracker = TransactionTracker('vm', 1)
    template = next(e for e in audit_events() if e.operation == 'QUERY')
    tracker.feed(template._replace(query_id=1, object="SET time_zone = '+02:00'"))
    write = template._replace(query_id=2, object='DELETE FROM t WHERE id = 1', retcode=0)
    transaction, = tracker.feed(write)
    assert transaction == CommittedTransaction('vm', 1, (write,), (SessionState(time_zone='+02:00'),))
    assert type(transaction) is CommittedTransaction and transaction.sessions[0].time_zone == '+02:00'
    assert tracker.open_statements() == () and tracker.snapshot() is not None
