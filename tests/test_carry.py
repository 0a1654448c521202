"""A stream's catch-up cycles carry each connection's replay state: a cycle
may end anywhere in a connection's log, and the next one goes on as if the
log had been read in one piece; the reorder buffer holds back what may still
be overtaken by a late statement from another shard."""

import glob
import json
import os

from apache_beam.pvalue import TaggedOutput

from changeflow.model import DEAD_LETTER_TAG
from changeflow.transforms.audit_log import AuditLineError, parse_audit_line
from changeflow.transforms.connections import (
    CARRY, ReplayConnections, carried_connections, carry_state)
from changeflow.transforms.runs import make_run, unpack
from changeflow.transforms.transactions import TransactionTracker, session_order
from tests.audit_fixture import SHOP_TABLES, audit_events


def committed(tracker, events):
    return [(t.statements, t.sessions) for e in events for t in tracker.feed(e)]


def by_connection(events):
    connections = {}
    for event in sorted(events, key=lambda e: (e.serverhost, e.connection_id, session_order(e))):
        if event.operation in ('QUERY', 'CONNECT', 'DISCONNECT'):
            connections.setdefault((event.serverhost, event.connection_id), []).append(event)
    return connections


def recorded_logs():
    """The recorded fixture's events and those of the applications' logs (tests/data/app)."""
    events = list(audit_events())
    for path in sorted(glob.glob(os.path.join(os.path.dirname(__file__), 'data', 'app', '*',
                                              'server_audit.log'))):
        with open(path, encoding='utf-8', errors='surrogateescape') as f:
            for n, line in enumerate(f, 1):
                try:
                    events.append(parse_audit_line(line.rstrip('\n'), f'{path}:{n}', 0))
                except AuditLineError:
                    pass  # not a statement line: nothing to replay
    return events


def test_a_tracker_restored_from_its_snapshot_anywhere_commits_what_one_tracker_does():
    """The recorded logs (transactions, savepoints, autocommit off, sql_mode,
    SET NAMES, XA, rollbacks at disconnect, ORMs' sessions), each connection
    cut at every event."""
    cuts = carried = 0
    for (host, connection), events in by_connection(recorded_logs()).items():
        whole = committed(TransactionTracker(host, connection), events)
        for cut in range(0, len(events) + 1, 1 + len(events) // 150):
            first = TransactionTracker(host, connection)
            before = committed(first, events[:cut])
            snapshot = json.loads(json.dumps(first.snapshot()))  # as the checkpoint store keeps it
            carried += snapshot is not None
            second = TransactionTracker(host, connection).restore(snapshot)
            assert before + committed(second, events[cut:]) == whole, (connection, cut)
            cuts += 1
    assert cuts > 1000 and carried > 200


def test_a_fresh_connection_carries_nothing():
    tracker = TransactionTracker('vm', 1)
    events = [e for e in audit_events() if e.operation == 'QUERY'
              and e.object.startswith('INSERT')][:1]
    committed(tracker, events)
    assert tracker.snapshot() is None


CONNECTION = ('vm', 70)


def statement(query_id, sql, second=0):
    line = (f"20261124 22:00:{second:02d},vm,app,127.0.0.1,70,{query_id},QUERY,shop,"
            f"'{sql}',0".replace("\\'", "'"))
    template = audit_events()[0]
    return template._replace(timestamp_us=1_795_600_800_000_000 + second * 1_000_000,
                             connection_id=70, serverhost='vm', query_id=query_id,
                             operation='QUERY', database='shop', object=sql, retcode=0,
                             position=f'stream/shard/{query_id}', line=line)


def run(events, arrival_ms=0):
    return CONNECTION, (*make_run(events, session_order), arrival_ms)


def cycle(runs, state=None, read_started_ms=10_000_000, lateness_seconds=0.0):
    """One cycle's replay of ``runs``, called as the runner calls it: the
    changes (table, key, op kind, values), the dead letters' reasons, the
    state to commit (as the store returns it)."""
    replay = ReplayConnections(SHOP_TABLES, carried=object(), cycle=object(),
                               lateness_seconds=lateness_seconds)
    fn = replay._fn
    fn.setup()
    values = [r for _, r in runs] + [c for _, c in carried_connections(state)]
    changes, reasons, carried = [], [], []
    for out in fn.process((CONNECTION, values), cycle={'read_started_ms': read_started_ms}):
        if isinstance(out, TaggedOutput) and out.tag == CARRY:
            carried.append(out.value)
        elif isinstance(out, TaggedOutput):
            assert out.tag == DEAD_LETTER_TAG
            reasons.append(out.value.reason)
        else:
            changes += [(c.table, c.key, op.kind.value, op.version, dict(op.values))
                        for c in unpack(out[1][1]) for op in c.ops]
    return changes, reasons, json.loads(json.dumps(carry_state(carried)))


INSERT = "INSERT INTO orders (tenant_id, order_id, status) VALUES (1, 50, 'new')"
UPDATE = "UPDATE orders SET status = 'paid' WHERE tenant_id = 1 AND order_id = 50"


def test_a_transaction_open_at_a_cycle_end_commits_in_the_next():
    begin, insert, update, commit = (statement(1, 'BEGIN'), statement(2, INSERT),
                                     statement(3, UPDATE, 1), statement(4, 'COMMIT', 1))
    whole, reasons, state = cycle([run([begin, insert, update, commit])])
    assert [c[2] for c in whole] == ['insert', 'update'] and not reasons and state is None

    first, reasons, state = cycle([run([begin, insert])])
    assert first == [] and reasons == []              # not dead-lettered: carried
    assert len(state['connections'][0]['tracker']['pending']) == 1
    second, reasons, state = cycle([run([update, commit])], state)
    assert second == whole and reasons == [] and state is None


def test_the_reorder_buffer_replays_a_late_earlier_statement_in_its_place():
    insert, update = statement(2, INSERT), statement(3, UPDATE)
    # The later statement came first (another shard), less than the lateness before the read.
    first, _, state = cycle([run([update], arrival_ms=9_999_000)], lateness_seconds=5)
    assert first == [] and state['connections'][0]['held']
    # The earlier one arrives; once both are older than the lateness, both go in order.
    second, _, state = cycle([run([insert], arrival_ms=10_001_000)], state,
                             read_started_ms=10_002_000, lateness_seconds=5)
    assert second == [] and len(state['connections'][0]['held']) == 2
    third, reasons, state = cycle([], state, read_started_ms=10_007_000, lateness_seconds=5)
    assert [c[2] for c in third] == ['insert', 'update'] and not reasons and state is None

    # Without the buffer the update finds no row, and the insert's values stay.
    first, _, state = cycle([run([update], arrival_ms=9_999_000)])
    second, _, _ = cycle([run([insert], arrival_ms=10_001_000)], state)
    assert [c[2] for c in first + second] == ['update', 'insert']


def test_a_statement_later_than_the_lateness_is_dead_lettered_not_replayed_out_of_order():
    begin, insert, commit = statement(5, 'BEGIN'), statement(7, INSERT), statement(8, 'COMMIT')
    _, _, state = cycle([run([begin, insert])], lateness_seconds=1)
    late = statement(6, UPDATE)                       # before the insert, after it was replayed
    changes, reasons, state = cycle([run([late, commit], arrival_ms=1)], state,
                                    lateness_seconds=1)
    assert reasons == ['after-lateness']
    assert [c[2] for c in changes] == ['insert'] and state is None
