"""Replays each connection's transaction boundaries from the audit log.

The audit plugin logs every statement when it finishes, committed or not:
a ROLLBACK'd statement carries retcode 0 like any other. So writes are held
per connection (serverhost, connection id), in statement order, and released
only when the server would have made them durable:

* autocommit (the default): each successful write on its own;
* ``START TRANSACTION`` / ``BEGIN`` ... ``COMMIT``: released at COMMIT;
  ``ROLLBACK`` discards, ``ROLLBACK TO SAVEPOINT`` discards back to it;
* ``SET autocommit=0`` (any spelling): a transaction is always open until
  COMMIT; ``SET autocommit=1`` commits;
* statements that commit implicitly (DDL, LOCK TABLES, a BEGIN inside a
  transaction) release what was pending first;
* a failed statement (retcode != 0) did nothing; a deadlock (1213) rolled the
  whole transaction back; a DISCONNECT rolls back what is open.

Writes still open when a bounded input ends are dead-lettered
('transaction-open-at-end'): they may yet commit in a later log.
"""

import re
from typing import Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from changeflow.model import DEAD_LETTER_TAG, AuditEvent, dead_letter
from changeflow.transforms.guard import guarded, lines_original

__all__ = ['CommittedTransaction', 'StatementClass', 'classify_statement',
           'TransactionTracker', 'ResolveTransactions']

DEADLOCK = 1213


class CommittedTransaction(NamedTuple):
    """Writes one connection made durable together, in statement order."""
    serverhost: str
    connection_id: int
    statements: Tuple[AuditEvent, ...]


class StatementClass:
    BEGIN = 'begin'
    COMMIT = 'commit'
    ROLLBACK = 'rollback'
    ROLLBACK_TO = 'rollback_to'
    SAVEPOINT = 'savepoint'
    AUTOCOMMIT_ON = 'autocommit_on'
    AUTOCOMMIT_OFF = 'autocommit_off'
    WRITE = 'write'
    DDL = 'ddl'
    READ = 'read'
    SESSION = 'session'


_LEADING_NOISE = re.compile(r'(?:\s++|/\*(?!!).*?\*/|--[ \t][^\n]*+|#[^\n]*+)*+', re.S)
_HEAD = re.compile(r"""
    (?P<begin>START\s+TRANSACTION\b|BEGIN(?:\s+WORK)?\s*;?\s*$|XA\s+START\b)
  | (?P<rollback_to>ROLLBACK(?:\s+WORK)?\s+TO\s+(?:SAVEPOINT\s+)?(?P<to>`[^`]*`|\w+))
  | (?P<commit>(?:XA\s+)?COMMIT\b)
  | (?P<rollback>(?:XA\s+)?ROLLBACK\b)
  | (?P<savepoint>SAVEPOINT\s+(?P<name>`[^`]*`|\w+))
  | (?P<write>(?:INSERT|UPDATE|DELETE|REPLACE|TRUNCATE|CALL|LOAD|WITH)\b)
  | (?P<ddl>(?:CREATE|ALTER|DROP|RENAME|LOCK\s+TABLES?|UNLOCK\s+TABLES|GRANT|REVOKE
              |ANALYZE|OPTIMIZE|REPAIR)\b)
  | (?P<read>(?:SELECT|SHOW|DESCRIBE|DESC|EXPLAIN|HELP|VALUES|TABLE)\b|\()
  | (?P<set>SET\b)
""", re.I | re.X | re.S)
_AUTOCOMMIT = re.compile(
    r"""(?:^SET\s+|,\s*)(?:SESSION\s+|LOCAL\s+|@@(?:SESSION\.|LOCAL\.)?)?autocommit\s*:?=\s*
        ['"]?(?P<value>\w+)""", re.I | re.X)


_WRITE_HEADS = frozenset(('INSERT', 'UPDATE', 'DELETE', 'insert', 'update', 'delete'))


def classify_statement(sql: str) -> Tuple[str, Optional[str]]:
    """(StatementClass, savepoint name or None) of one logged statement."""
    if sql[:6] in _WRITE_HEADS and sql[6:7] in (' ', '\t', '\n'):
        return StatementClass.WRITE, None  # the common case, without a regex
    start = _LEADING_NOISE.match(sql).end()
    match = _HEAD.match(sql, start)
    if match is None:
        return StatementClass.SESSION, None
    kind = match.lastgroup  # the outermost alternative: nested groups close first
    if kind == StatementClass.ROLLBACK_TO:
        return kind, match.group('to').strip('`').lower()
    if kind == StatementClass.SAVEPOINT:
        return kind, match.group('name').strip('`').lower()
    if kind == 'set':
        setting = _AUTOCOMMIT.search(sql, start)
        if setting is None:
            return StatementClass.SESSION, None
        on = setting.group('value').upper() in ('1', 'ON', 'TRUE')
        return (StatementClass.AUTOCOMMIT_ON if on else StatementClass.AUTOCOMMIT_OFF), None
    return kind, None


def _session_order(event: AuditEvent):
    """Statement order within a connection: CONNECT/DISCONNECT carry query id 0,
    so they sort first/last within their second."""
    if event.operation == 'CONNECT':
        return event.timestamp_us, -1, event.position
    if event.operation == 'DISCONNECT':
        return event.timestamp_us, float('inf'), event.position
    return event.timestamp_us, event.query_id, event.position


class TransactionTracker:
    """The state machine for one connection. Feed events in statement order.

    ``feed`` returns the transactions the event made durable; ``counts`` tells
    what was dropped and why.
    """

    def __init__(self, serverhost: str, connection_id: int, autocommit: bool = True):
        self._serverhost = serverhost
        self._connection_id = connection_id
        self._default_autocommit = autocommit
        self.counts = {'rolled_back': 0, 'failed': 0, 'reads': 0, 'ddl': 0,
                       'session': 0, 'duplicates': 0, 'committed': 0}
        self._seen = set()
        self._reset()

    def _reset(self):
        self._autocommit = self._default_autocommit
        self._in_transaction = False
        self._pending: List[AuditEvent] = []
        self._savepoints = {}

    def _release(self) -> List[CommittedTransaction]:
        pending, self._pending, self._savepoints = self._pending, [], {}
        if not pending:
            return []
        self.counts['committed'] += len(pending)
        return [CommittedTransaction(self._serverhost, self._connection_id, tuple(pending))]

    def _discard(self):
        self.counts['rolled_back'] += len(self._pending)
        self._pending, self._savepoints = [], {}

    def feed(self, event: AuditEvent) -> List[CommittedTransaction]:
        if event.operation in ('CONNECT', 'DISCONNECT'):
            # The server rolls back what a session leaves open.
            self._discard()
            self._reset()
            return []
        if event.operation != 'QUERY':
            return []
        identity = (event.query_id, event.object)
        if identity in self._seen:  # the same line delivered twice (at-least-once sources)
            self.counts['duplicates'] += 1
            return []
        self._seen.add(identity)
        if event.retcode:
            self.counts['failed'] += 1
            if event.retcode == DEADLOCK:
                self._discard()
                self._in_transaction = False
            return []
        kind, savepoint = classify_statement(event.object)
        if kind == StatementClass.WRITE:
            self._pending.append(event)
            if self._autocommit and not self._in_transaction:
                return self._release()
            return []
        if kind == StatementClass.BEGIN:
            released = self._release()  # BEGIN inside a transaction commits it
            self._in_transaction = True
            return released
        if kind == StatementClass.COMMIT:
            self._in_transaction = False
            return self._release()
        if kind == StatementClass.ROLLBACK:
            self._in_transaction = False
            self._discard()
            return []
        if kind == StatementClass.SAVEPOINT:
            self._savepoints[savepoint] = len(self._pending)
            return []
        if kind == StatementClass.ROLLBACK_TO:
            keep = self._savepoints.get(savepoint, len(self._pending))
            self.counts['rolled_back'] += len(self._pending) - keep
            del self._pending[keep:]
            return []
        if kind == StatementClass.AUTOCOMMIT_ON:
            was_off = not self._autocommit
            self._autocommit = True
            return self._release() if was_off and not self._in_transaction else []
        if kind == StatementClass.AUTOCOMMIT_OFF:
            self._autocommit = False
            return []
        if kind == StatementClass.DDL:
            self.counts['ddl'] += 1
            self._in_transaction = False
            return self._release()  # DDL commits implicitly
        self.counts['reads' if kind == StatementClass.READ else 'session'] += 1
        return []

    def open_statements(self) -> Tuple[AuditEvent, ...]:
        return tuple(self._pending)


@guarded('transactions', lambda element: lines_original(element[1]),
         lambda element: next(iter(element[1])).position)
class _ResolveConnection(beam.DoFn):
    """All of one connection's events (a bounded run) -> committed transactions."""

    def __init__(self, autocommit: bool):
        self._autocommit = autocommit
        self._counters = {name: Metrics.counter('changeflow.transactions', name) for name in (
            'committed', 'rolled_back', 'failed', 'reads', 'ddl', 'session', 'duplicates')}
        self._transactions = Metrics.counter('changeflow.transactions', 'transactions')
        self._open = Metrics.counter('changeflow.transactions', 'open_at_end')

    def process(self, element) -> Iterable:
        (serverhost, connection_id), events = element
        tracker = TransactionTracker(serverhost, connection_id, self._autocommit)
        for event in sorted(events, key=_session_order):
            for transaction in tracker.feed(event):
                self._transactions.inc()
                yield transaction
        for name, count in tracker.counts.items():
            self._counters[name].inc(count)
        for event in tracker.open_statements():
            self._open.inc()
            yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                'transactions', 'transaction-open-at-end',
                f'no COMMIT or ROLLBACK for connection {serverhost}/{connection_id} '
                f'before the input ended (query id {event.query_id})',
                event.line, event.position))


class ResolveTransactions(beam.PTransform):
    """PCollection[AuditEvent] -> PCollection[CommittedTransaction] + dead letters.

    Bounded inputs: each connection's events are grouped whole and replayed in
    statement order, so the result does not depend on arrival order.
    """

    def __init__(self, autocommit: bool = True):
        super().__init__()
        self._autocommit = autocommit

    def expand(self, events):
        return (
            events
            | 'SessionEvents' >> beam.Filter(
                lambda e: e.operation in ('QUERY', 'CONNECT', 'DISCONNECT'))
            | 'ByConnection' >> beam.Map(lambda e: ((e.serverhost, e.connection_id), e))
            | 'GroupConnection' >> beam.GroupByKey()
            | 'Replay' >> beam.ParDo(_ResolveConnection(self._autocommit)).with_outputs(
                DEAD_LETTER_TAG, main='transactions'))
