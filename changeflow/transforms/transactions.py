"""Replays each connection's transaction boundaries from the audit log.

The audit plugin logs every statement when it finishes, committed or not:
a ROLLBACK'd statement carries retcode 0 like any other. So writes are held
per connection (serverhost, connection id), in statement order, and released
only when the server would have made them durable:

* autocommit (the default): each successful write on its own;
* ``START TRANSACTION`` / ``BEGIN`` ... ``COMMIT``: released at COMMIT;
  ``ROLLBACK`` discards, ``ROLLBACK TO SAVEPOINT`` discards back to it;
* ``SET autocommit=0`` (any spelling): a transaction is always open until
  COMMIT; ``SET autocommit=1`` commits when it was 0, even inside START
  TRANSACTION;
* ``COMMIT``/``ROLLBACK AND CHAIN`` start the next transaction at once,
  ``... RELEASE`` ends the session (``completion_type`` makes either the
  default); ``XA START`` ... ``XA COMMIT`` (``ONE PHASE`` too) /
  ``XA ROLLBACK``; an XA transaction prepared but not ended when its session
  ends may still be committed from another session: it is dead-lettered
  ('xa-prepared-at-disconnect'), never guessed;
* statements that commit implicitly (MariaDB's list: DDL, TRUNCATE, LOCK
  TABLES, UNLOCK TABLES after LOCK TABLES, GRANT, FLUSH, a BEGIN inside a
  transaction, ...) release what was pending first, even when they fail
  (not when they fail to parse); CREATE/DROP TEMPORARY TABLE do not commit;
  TRUNCATE commits after itself too;
* a failed statement (retcode != 0) did nothing; a deadlock (1213) rolled the
  whole transaction back, a lock wait timeout (1205) only the statement
  (unless innodb_rollback_on_timeout); a DISCONNECT rolls back what is open.

Each connection's session state (:class:`SessionState`: sql_mode, character
set, time zone, from its SET statements, executable comments included) is
recorded per statement, since it decides how the statement's literals read.

Writes still open when a bounded input ends are dead-lettered
('transaction-open-at-end'): they may yet commit in a later log. A stream's
catch-up cycle carries them instead, with the rest of the connection's state
(:meth:`TransactionTracker.snapshot`), into the next cycle.
"""

import functools
import re
from typing import Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from changeflow.model import DEAD_LETTER_TAG, AuditEvent, dead_letter
from changeflow.sql.errors import SqlChangeError
from changeflow.sql.literals import (DEFAULT_SERVER_VERSION, MARKER, mask_literals,
                                     unwrap_executable_comments)
from changeflow.transforms.guard import guarded, lines_original

__all__ = ['CommittedTransaction', 'SessionState', 'StatementClass', 'classify_statement',
           'TransactionTracker', 'ResolveTransactions', 'session_order']

DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205
# Errors raised before an implicit commit happens: the statement did not parse,
# or an XA transaction is active (1399 XAER_RMFAIL, 1400 XAE09).
_NO_IMPLICIT_COMMIT = frozenset((1064, 1149, 1399, 1400))


class SessionState(NamedTuple):
    """A connection's settings that change how its statements read, as its
    log shows them. '' is the server's default (sql_mode assumed to have
    neither NO_BACKSLASH_ESCAPES nor ANSI_QUOTES, the client's character set
    UTF-8); None is a value the log does not show (``SET sql_mode = @saved``).
    ``sql_mode`` is upper case with combination modes expanded (ANSI is
    REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ANSI, as the server
    reports it); ``time_zone`` is recorded, not applied."""
    sql_mode: Optional[str] = ''
    charset: str = ''
    collation: str = ''
    time_zone: Optional[str] = ''


class CommittedTransaction(NamedTuple):
    """Writes one connection made durable together, in statement order, with
    the session state each ran in (``sessions[i]`` for ``statements[i]``)."""
    serverhost: str
    connection_id: int
    statements: Tuple[AuditEvent, ...]
    sessions: Tuple[SessionState, ...] = ()


class StatementClass:
    BEGIN = 'begin'
    COMMIT = 'commit'
    ROLLBACK = 'rollback'
    ROLLBACK_TO = 'rollback_to'
    SAVEPOINT = 'savepoint'
    AUTOCOMMIT_ON = 'autocommit_on'
    AUTOCOMMIT_OFF = 'autocommit_off'
    WRITE = 'write'
    DDL = 'ddl'  # commits implicitly
    TEMPORARY_DDL = 'temporary_ddl'  # CREATE/DROP TEMPORARY TABLE: does not commit
    TRUNCATE = 'truncate'  # a write that commits before and after itself
    LOCK = 'lock'  # LOCK TABLES: commits, then tables are locked
    UNLOCK = 'unlock'  # commits only while LOCK TABLES holds locks
    XA_PREPARE = 'xa_prepare'
    READ = 'read'
    SESSION = 'session'


_LEADING_NOISE = re.compile(r'(?:\s++|/\*.*?\*/|--(?=[\x00-\x20]|\Z)[^\n]*+|#[^\n]*+)*+', re.S)
_HEAD = re.compile(r"""
    (?P<begin>START\s+TRANSACTION\b|BEGIN(?:\s+WORK)?\s*;?\s*$|XA\s+(?:START|BEGIN)\b)
  | (?P<rollback_to>ROLLBACK(?:\s+WORK)?\s+TO\s+(?:SAVEPOINT\s+)?(?P<to>`[^`]*`|\w+))
  | (?P<xa_prepare>XA\s+PREPARE\b)
  | (?P<commit>(?:XA\s+)?COMMIT\b)
  | (?P<rollback>(?:XA\s+)?ROLLBACK\b)
  | (?P<savepoint>SAVEPOINT\s+(?P<name>`[^`]*`|\w+))
  | (?P<truncate>TRUNCATE\b)
  | (?P<write>(?:INSERT|UPDATE|DELETE|REPLACE|CALL|LOAD\s+(?:DATA|XML)|WITH)\b)
  | (?P<temporary_ddl>(?:CREATE(?:\s+OR\s+REPLACE)?|DROP)\s+TEMPORARY\s+TABLES?\b)
  | (?P<lock>LOCK\s+TABLES?\b)
  | (?P<unlock>UNLOCK\s+TABLES?\b)
  | (?P<ddl>(?:CREATE|ALTER|DROP|RENAME|GRANT|REVOKE|ANALYZE|OPTIMIZE|REPAIR|CHECK\s+TABLE
              |CACHE\s+INDEX|LOAD\s+INDEX|FLUSH|RESET|SHUTDOWN|INSTALL|UNINSTALL|CHANGE\s+MASTER
              |(?:START|STOP)\s+(?:SLAVE|REPLICA|ALL\s+SLAVES|ALL\s+REPLICAS)|SET\s+PASSWORD)\b)
  | (?P<read>(?:SELECT|SHOW|DESCRIBE|DESC|EXPLAIN|HELP|VALUES|TABLE|DO|HANDLER|XA\s+RECOVER)\b|\()
  | (?P<set_statement>SET\s+STATEMENT\b)
  | (?P<set>SET\b)
""", re.I | re.X | re.S)
_CHAIN = re.compile(r'\bAND\s+(NO\s+)?CHAIN\b|\b(NO\s+)?RELEASE\b', re.I)
_FOR = re.compile(r'\bFOR\b', re.I)
# One assignment of a SET statement's shape (literals masked; see _set_items).
_SET_ITEM = re.compile(r"""\s*(?:(?P<scope>GLOBAL|SESSION|LOCAL|PERSIST|PERSIST_ONLY)\s+)?(?:
      NAMES\s+(?P<names>[^\s,]+)(?:\s+COLLATE\s+(?P<collate>[^\s,]+))?
    | (?:CHARACTER\s+SET|CHARSET)\s+(?P<charset>[^\s,]+)
    | (?:@@(?:(?P<var_scope>GLOBAL|SESSION|LOCAL)\.)?(?P<system>\w+)
       | @(?P<user>`[^`]*`|[\w$.]+|\0)
       | (?P<variable>`[^`]*`|\w+))
      \s*:?=\s*(?P<value>.*?))\s*\Z""", re.I | re.X | re.S)
_SYSTEM_VALUE = re.compile(r'@@(?:(GLOBAL|SESSION|LOCAL)\.)?(\w+)\Z', re.I)
_USER_VALUE = re.compile(r'@(`[^`]*`|[\w$.]+|\0)\Z')
_WORD_VALUE = re.compile(r'`[^`]*`|[\w$]+\Z')
# sql_mode combination modes as MariaDB 10.11 expands them (SELECT @@sql_mode).
_COMBINED_MODES = {
    'ANSI': 'REAL_AS_FLOAT,PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE',
    'ORACLE': 'PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,NO_KEY_OPTIONS,NO_TABLE_OPTIONS,'
              'NO_FIELD_OPTIONS,NO_AUTO_CREATE_USER,SIMULTANEOUS_ASSIGNMENT',
    'MSSQL': 'PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,NO_KEY_OPTIONS,NO_TABLE_OPTIONS,'
             'NO_FIELD_OPTIONS',
    'DB2': 'PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,NO_KEY_OPTIONS,NO_TABLE_OPTIONS,'
           'NO_FIELD_OPTIONS',
    'POSTGRESQL': 'PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,NO_KEY_OPTIONS,NO_TABLE_OPTIONS,'
                  'NO_FIELD_OPTIONS',
    'MAXDB': 'PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,NO_KEY_OPTIONS,NO_TABLE_OPTIONS,'
             'NO_FIELD_OPTIONS,NO_AUTO_CREATE_USER',
    'TRADITIONAL': 'STRICT_TRANS_TABLES,STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,'
                   'ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION',
}


class _SetItem(NamedTuple):
    """One assignment of a SET statement: ``name`` is 'names', 'charset', a
    lower-case system variable or '@' + a user variable; ``value`` is
    ('text', str), ('number', n), ('default',), ('system', scope, name),
    ('user', name) or ('expression',)."""
    scope: str
    name: str
    value: tuple
    collate: Optional[tuple] = None


def _split_top_level(shape: str) -> List[str]:
    items, depth, start = [], 0, 0
    for i, char in enumerate(shape):
        if char == '(':
            depth += 1
        elif char == ')':
            depth -= 1
        elif char == ',' and depth == 0:
            items.append(shape[start:i])
            start = i + 1
    items.append(shape[start:])
    return items


def _set_value(text: str, params) -> tuple:
    text = text.strip()
    if text == MARKER:
        value = next(params)
        return ('text', value) if isinstance(value, str) else ('number', value)
    system = _SYSTEM_VALUE.match(text)
    if system:
        return 'system', (system.group(1) or 'SESSION').upper(), system.group(2).lower()
    user = _USER_VALUE.match(text)
    if user:
        name = next(params) if user.group(1) == MARKER else user.group(1).strip('`')
        return 'user', str(name).lower()
    for _ in range(text.count(MARKER)):
        next(params)
    if _WORD_VALUE.fullmatch(text):
        word = text.strip('`')
        return ('default',) if word.upper() == 'DEFAULT' else ('text', word)
    return ('expression',)


def _set_items(sql: str, flags: Tuple[bool, bool]) -> Optional[List[_SetItem]]:
    """The assignments of a SET statement, in order, with the scope each has
    (GLOBAL/SESSION carries on to the next ones, as the server reads them);
    None when the statement cannot be read."""
    try:
        shape, params = mask_literals(sql, *flags)
    except SqlChangeError:
        return None
    body = shape[_LEADING_NOISE.match(shape).end():]
    if not body[:3].upper() == 'SET':
        return None
    params = iter(params)
    items, scope = [], 'SESSION'
    try:
        for text in _split_top_level(body[3:]):
            match = _SET_ITEM.match(text)
            if match is None:
                return None
            scope = 'SESSION' if (match.group('scope') or scope).upper() == 'LOCAL' else (
                match.group('scope') or scope).upper()
            if match.group('names'):
                names = _set_value(match.group('names'), params)
                collate = match.group('collate')
                items.append(_SetItem('SESSION', 'names', names,
                                      collate and _set_value(collate, params)))
            elif match.group('charset'):
                items.append(_SetItem('SESSION', 'charset', _set_value(match.group('charset'),
                                                                       params)))
            elif match.group('user'):
                user = match.group('user')
                name = next(params) if user == MARKER else user.strip('`')
                items.append(_SetItem('SESSION', '@' + str(name).lower(),
                                      _set_value(match.group('value'), params)))
            else:
                name = (match.group('system') or match.group('variable')).strip('`').lower()
                var_scope = match.group('var_scope')
                item_scope = 'SESSION' if var_scope and var_scope.upper() == 'LOCAL' else (
                    var_scope.upper() if var_scope else scope)
                items.append(_SetItem(item_scope, name, _set_value(match.group('value'), params)))
    except StopIteration:
        return None
    return items


def _autocommit_of(items: Optional[List[_SetItem]]) -> Optional[bool]:
    """The session autocommit a SET statement leaves (None: it does not set it)."""
    value = None
    for item in items or ():
        if item.name == 'autocommit' and item.scope == 'SESSION':
            kind = item.value[0]
            if kind == 'default':
                value = True
            elif kind in ('text', 'number'):
                value = str(item.value[1]).upper() in ('1', 'ON', 'TRUE')
    return value


def _normalised_mode(text: str) -> str:
    modes = [m.strip().upper() for m in text.split(',') if m.strip()]
    expanded = []
    for mode in modes:
        expanded.extend(_COMBINED_MODES.get(mode, '').split(',') if mode in _COMBINED_MODES else ())
        expanded.append(mode)
    return ','.join(dict.fromkeys(m for m in expanded if m))


_NO_FLAGS = (False, False)
_new_tuple = tuple.__new__  # a NamedTuple made without its __new__'s Python frame, per write
_WRITE_HEADS = frozenset(('INSERT', 'UPDATE', 'DELETE', 'insert', 'update', 'delete'))


_CACHED_LENGTH = 256  # statements up to this long are classified once per text


def _classify(sql: str, server_version: int, flags: Tuple[bool, bool] = (False, False)):
    """(StatementClass, savepoint name, the statement as run, SET items or None)."""
    if sql[:6] in _WRITE_HEADS and sql[6:7] in (' ', '\t', '\n'):
        return StatementClass.WRITE, None, sql, None  # the common case, without a regex
    if len(sql) <= _CACHED_LENGTH:
        return _classify_seen(sql, server_version, flags)
    return _classify_text(sql, server_version, flags)


def _classify_text(sql: str, server_version: int, flags: Tuple[bool, bool]):
    if '/*!' in sql or '/*M!' in sql:
        try:
            sql = unwrap_executable_comments(sql, server_version, flags[0])
        except SqlChangeError:
            pass  # the server refused it: it failed, and is classified as written
    start = _LEADING_NOISE.match(sql).end()
    match = _HEAD.match(sql, start)
    if match is None:
        return StatementClass.SESSION, None, sql, None
    kind = match.lastgroup  # the outermost alternative: nested groups close first
    if kind == StatementClass.ROLLBACK_TO:
        return kind, match.group('to').strip('`').lower(), sql, None
    if kind == StatementClass.SAVEPOINT:
        return kind, match.group('name').strip('`').lower(), sql, None
    if kind == 'set_statement':
        # SET STATEMENT var = value [, ...] FOR statement: the statement is what runs.
        try:
            shape = mask_literals(sql, *flags)[0]
        except SqlChangeError:
            return StatementClass.SESSION, None, sql, None
        inner = _FOR.search(shape)
        if inner is None:
            return StatementClass.SESSION, None, sql, None
        return _classify(shape[inner.end():], server_version, flags)[:2] + (sql, None)
    if kind == 'set':
        items = _set_items(sql, flags)
        items = None if items is None else tuple(items)  # shared by the cache: read-only
        autocommit = _autocommit_of(items)
        if autocommit is None:
            return StatementClass.SESSION, None, sql, items
        return (StatementClass.AUTOCOMMIT_ON if autocommit else StatementClass.AUTOCOMMIT_OFF,
                None, sql, items)
    return kind, None, sql, None


# The short statements a session repeats verbatim (BEGIN, COMMIT, SET autocommit=0,
# SET NAMES ...: 1.5-20 us each by the regexes) are classified once per text, not
# once when parsed (for DDL) and again when replayed; bounded, as a log's SETs vary.
_classify_seen = functools.lru_cache(maxsize=4096)(_classify_text)


def classify_statement(sql: str, server_version: int = DEFAULT_SERVER_VERSION
                       ) -> Tuple[str, Optional[str]]:
    """(StatementClass, savepoint name or None) of one logged statement, as the
    server ran it: executable comments it runs (``/*!40101 SET ... */``) are
    part of the statement, and ``SET STATEMENT ... FOR s`` is classified as s.
    TRUNCATE is a WRITE here (the tracker also knows it commits around itself)."""
    if sql[:6] in _WRITE_HEADS and sql[6:7] in (' ', '\t', '\n'):
        return StatementClass.WRITE, None  # the common case, without a regex
    kind, name = _classify(sql, server_version)[:2]
    return (StatementClass.WRITE if kind == StatementClass.TRUNCATE else kind), name


def session_order(event: AuditEvent):
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
    what was dropped and why; ``unresolved`` lists writes whose fate the log
    does not tell, with the reason.
    """

    def __init__(self, serverhost: str, connection_id: int, autocommit: bool = True,
                 server_version: int = DEFAULT_SERVER_VERSION, rollback_on_timeout: bool = False):
        self.serverhost = serverhost
        self.connection_id = connection_id
        self._default_autocommit = autocommit
        self._server_version = server_version
        self._rollback_on_timeout = rollback_on_timeout  # innodb_rollback_on_timeout
        self.counts = {'rolled_back': 0, 'failed': 0, 'reads': 0, 'ddl': 0,
                       'session': 0, 'duplicates': 0, 'committed': 0}
        self.unresolved: List[Tuple[AuditEvent, str]] = []
        self._seen = set()        # the statements of the current (time, query id)
        self._seen_at = None
        self._reset()

    def _reset(self):
        self._autocommit = self._default_autocommit
        self._in_transaction = False
        self._pending: List[AuditEvent] = []
        self._sessions: List[SessionState] = []
        self._savepoints = {}
        self._session = SessionState()
        self._saved_modes = {}  # user variable -> sql_mode text it holds (SET @m = @@sql_mode)
        self._completion_type = 0  # 1: COMMIT chains, 2: COMMIT releases
        self._tables_locked = False
        self._xa_prepared = False

    def _release(self) -> List[CommittedTransaction]:
        pending, sessions = self._pending, self._sessions
        self._pending, self._sessions, self._savepoints, self._xa_prepared = [], [], {}, False
        if not pending:
            return []
        return self._committed(tuple(pending), tuple(sessions))

    def _committed(self, events: tuple, sessions: tuple) -> List[CommittedTransaction]:
        self.counts['committed'] += len(events)
        return [_new_tuple(CommittedTransaction, (self.serverhost, self.connection_id, events,
                                                  sessions))]

    def _discard(self):
        self.counts['rolled_back'] += len(self._pending)
        self._pending, self._sessions, self._savepoints, self._xa_prepared = [], [], {}, False

    def _end_session(self):
        """The server rolls back what a session leaves open, except an XA
        transaction it prepared: that one waits for an XA COMMIT or ROLLBACK
        from any session, which the log of this one cannot tell."""
        if self._xa_prepared and self._pending:
            self.unresolved.extend((event, 'xa-prepared-at-disconnect') for event in self._pending)
            self._pending, self._sessions = [], []
        self._discard()
        self._reset()

    def feed(self, event: AuditEvent) -> List[CommittedTransaction]:
        operation = event.operation
        if operation != 'QUERY':
            if operation == 'CONNECT' or operation == 'DISCONNECT':
                self._end_session()
            return []
        # Events come in statement order, so the same line delivered twice (at-least-once
        # sources) comes twice in a row at one (time, query id): only those are kept.
        statement = event.object
        seen_at = (event.timestamp_us, event.query_id)
        if seen_at != self._seen_at:
            self._seen_at = seen_at
            self._seen.clear()
        elif statement in self._seen:
            self.counts['duplicates'] += 1
            return []
        self._seen.add(statement)
        session = self._session
        flags = _NO_FLAGS if not session.sql_mode else (
            'NO_BACKSLASH_ESCAPES' in session.sql_mode, 'ANSI_QUOTES' in session.sql_mode)
        kind, savepoint, sql, items = _classify(statement, self._server_version, flags)
        if event.retcode:
            return self._failed(event.retcode, kind)
        if kind == StatementClass.WRITE:
            if self._autocommit and not self._in_transaction and not self._pending:
                # Committed on its own (nearly every write): no pending lists made.
                self._savepoints, self._xa_prepared = {}, False
                return self._committed((event,), (session,))
            self._pending.append(event)
            self._sessions.append(session)
            if self._autocommit and not self._in_transaction:
                return self._release()
            return []
        if kind == StatementClass.TRUNCATE:  # commits before and after itself
            self._in_transaction = False
            released = self._release()
            self._pending, self._sessions = [event], [self._session]
            return released + self._release()
        if kind == StatementClass.BEGIN:
            released = self._release()  # BEGIN inside a transaction commits it
            self._in_transaction = True
            return released
        if kind in (StatementClass.COMMIT, StatementClass.ROLLBACK):
            if kind == StatementClass.COMMIT:
                released = self._release()
            else:
                released = []
                self._discard()
            chain, release = self._completion(sql)
            self._in_transaction = chain
            if release:  # the server ends the session; its DISCONNECT follows
                self._end_session()
            return released
        if kind == StatementClass.XA_PREPARE:
            self._xa_prepared = True
            return []
        if kind == StatementClass.SAVEPOINT:
            self._savepoints[savepoint] = len(self._pending)
            return []
        if kind == StatementClass.ROLLBACK_TO:
            keep = self._savepoints.get(savepoint, len(self._pending))
            self.counts['rolled_back'] += len(self._pending) - keep
            del self._pending[keep:]
            del self._sessions[keep:]
            return []
        if kind in (StatementClass.DDL, StatementClass.LOCK, StatementClass.TEMPORARY_DDL):
            self.counts['ddl'] += 1
            if kind == StatementClass.TEMPORARY_DDL:
                return []
            self._tables_locked = kind == StatementClass.LOCK
            self._in_transaction = False
            released = self._release()  # commits implicitly
            if kind == StatementClass.DDL:  # on its own, for the SQL stage to follow or mark
                self._pending, self._sessions = [event], [self._session]
                released += self._release()
            return released
        if kind == StatementClass.UNLOCK:
            self.counts['session'] += 1
            if not self._tables_locked:
                return []
            self._tables_locked = self._in_transaction = False
            return self._release()
        if kind in (StatementClass.AUTOCOMMIT_ON, StatementClass.AUTOCOMMIT_OFF,
                    StatementClass.SESSION):
            self._apply_set(items, sql)
        if kind == StatementClass.AUTOCOMMIT_ON:
            was_off = not self._autocommit
            self._autocommit = True
            if was_off:  # commits, even inside START TRANSACTION
                self._in_transaction = False
                return self._release()
            return []
        if kind == StatementClass.AUTOCOMMIT_OFF:
            self._autocommit = False
            return []
        self.counts['reads' if kind == StatementClass.READ else 'session'] += 1
        return []

    def _failed(self, retcode: int, kind: str) -> List[CommittedTransaction]:
        """A failed statement did nothing, except: a deadlock rolls the
        transaction back (so may a lock wait timeout), and a statement that
        commits implicitly commits before it fails (unless it did not parse)."""
        self.counts['failed'] += 1
        if retcode == DEADLOCK or retcode == LOCK_WAIT_TIMEOUT and self._rollback_on_timeout:
            self._discard()
            self._in_transaction = False
            return []
        if retcode not in _NO_IMPLICIT_COMMIT and kind in (
                StatementClass.DDL, StatementClass.LOCK, StatementClass.TRUNCATE,
                StatementClass.BEGIN):
            self._in_transaction = False
            return self._release()
        return []

    def _completion(self, sql: str) -> Tuple[bool, bool]:
        """(chain, release) of a COMMIT or ROLLBACK: its AND [NO] CHAIN and
        [NO] RELEASE, or completion_type."""
        chain, release = self._completion_type == 1, self._completion_type == 2
        if sql.lstrip()[:2].upper() == 'XA':
            return False, False
        for match in _CHAIN.finditer(sql):
            if match.group(0).upper().startswith('AND'):
                chain = match.group(1) is None
            else:
                release = match.group(2) is None
        return chain, release

    def _apply_set(self, items: Optional[List[_SetItem]], sql: str):
        """The session state a SET statement leaves."""
        if items is None:
            if 'sql_mode' in sql.lower():  # a SET that changes sql_mode, unreadable
                self._session = self._session._replace(sql_mode=None)
            return
        session = self._session
        for item in items:
            if item.scope != 'SESSION':
                continue
            kind = item.value[0]
            text = item.value[1] if kind == 'text' else None
            if item.name.startswith('@'):
                if kind == 'system' and item.value[2] == 'sql_mode' and item.value[1] != 'GLOBAL':
                    self._saved_modes[item.name] = session.sql_mode
                elif text is not None:
                    self._saved_modes[item.name] = text
                else:
                    self._saved_modes.pop(item.name, None)
            elif item.name == 'sql_mode':
                if kind == 'text':
                    mode = _normalised_mode(text)
                elif kind == 'default' or kind == 'system' and item.value == (
                        'system', 'GLOBAL', 'sql_mode'):
                    mode = ''
                elif kind == 'system' and item.value[2] == 'sql_mode':
                    mode = session.sql_mode
                elif kind == 'user':
                    saved = self._saved_modes.get('@' + item.value[1])
                    mode = None if saved is None else _normalised_mode(saved)
                else:
                    mode = None  # a number, an expression, an unknown variable
                session = session._replace(sql_mode=mode)
            elif item.name in ('names', 'charset', 'character_set_client'):
                charset = '' if kind == 'default' else str(text or '').lower() or None
                collate = item.collate[1] if item.collate and item.collate[0] == 'text' else ''
                session = session._replace(charset=charset if charset is not None else 'unknown',
                                           collation=str(collate).lower())
            elif item.name == 'time_zone':
                zone = '' if kind == 'default' or item.value == ('system', 'GLOBAL', 'time_zone') \
                    else text
                session = session._replace(time_zone=zone)
            elif item.name == 'completion_type':
                value = str(item.value[1]).upper() if kind in ('text', 'number') else '0'
                self._completion_type = {'1': 1, 'CHAIN': 1, '2': 2, 'RELEASE': 2}.get(value, 0)
        self._session = session

    def open_statements(self) -> Tuple[AuditEvent, ...]:
        return tuple(self._pending)

    def snapshot(self) -> Optional[dict]:
        """The connection's replay state as plain JSON values, to carry it into
        a later input (a stream's next catch-up cycle), or None when it is a
        fresh connection's: nothing open, no setting changed. What the log
        reported as ``unresolved`` is not in it (the caller dead-letters it)."""
        if not (self._pending or self._in_transaction or self._savepoints or self._xa_prepared
                or self._tables_locked or self._saved_modes or self._completion_type
                or self._autocommit != self._default_autocommit
                or self._session != SessionState()):
            return None
        return {'autocommit': self._autocommit, 'in_transaction': self._in_transaction,
                'pending': [list(event) for event in self._pending],
                'sessions': [list(session) for session in self._sessions],
                'savepoints': dict(self._savepoints), 'session': list(self._session),
                'saved_modes': dict(self._saved_modes), 'completion_type': self._completion_type,
                'tables_locked': self._tables_locked, 'xa_prepared': self._xa_prepared,
                'seen_at': None if self._seen_at is None else list(self._seen_at),
                'seen': sorted(self._seen)}

    def restore(self, snapshot: Optional[dict]) -> 'TransactionTracker':
        """Continues from a :meth:`snapshot` (None: a fresh connection); returns self."""
        if snapshot is None:
            return self
        self._autocommit = snapshot['autocommit']
        self._in_transaction = snapshot['in_transaction']
        self._pending = [AuditEvent(*fields) for fields in snapshot['pending']]
        self._sessions = [SessionState(*fields) for fields in snapshot['sessions']]
        self._savepoints = dict(snapshot['savepoints'])
        self._session = SessionState(*snapshot['session'])
        self._saved_modes = dict(snapshot['saved_modes'])
        self._completion_type = snapshot['completion_type']
        self._tables_locked = snapshot['tables_locked']
        self._xa_prepared = snapshot['xa_prepared']
        self._seen_at = None if snapshot['seen_at'] is None else tuple(snapshot['seen_at'])
        self._seen = set(snapshot['seen'])
        return self


@guarded('transactions', lambda element: lines_original(element[1]),
         lambda element: next(iter(element[1])).position)
class _ResolveConnection(beam.DoFn):
    """All of one connection's events (a bounded run) -> committed transactions."""

    def __init__(self, autocommit: bool, server_version: int, rollback_on_timeout: bool):
        self._autocommit = autocommit
        self._server_version = server_version
        self._rollback_on_timeout = rollback_on_timeout
        self._counters = {name: Metrics.counter('changeflow.transactions', name) for name in (
            'committed', 'rolled_back', 'failed', 'reads', 'ddl', 'session', 'duplicates')}
        self._transactions = Metrics.counter('changeflow.transactions', 'transactions')
        self._open = Metrics.counter('changeflow.transactions', 'open_at_end')
        self._unresolved = Metrics.counter('changeflow.transactions', 'unresolved')

    def process(self, element) -> Iterable:
        (serverhost, connection_id), events = element
        tracker = TransactionTracker(serverhost, connection_id, self._autocommit,
                                     self._server_version, self._rollback_on_timeout)
        for event in sorted(events, key=session_order):
            for transaction in tracker.feed(event):
                self._transactions.inc()
                yield transaction
        for name, count in tracker.counts.items():
            self._counters[name].inc(count)
        yield from input_end_letters(tracker, self._unresolved, self._open)


def unresolved_letters(tracker: TransactionTracker, unresolved):
    """The dead letters of writes whose fate the log does not tell (an XA
    transaction prepared at disconnect), counted on ``unresolved``."""
    where = f'connection {tracker.serverhost}/{tracker.connection_id}'
    for event, reason in tracker.unresolved:
        unresolved.inc()
        yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            'transactions', reason,
            f'{where} ended with this write in a prepared XA transaction (query id '
            f'{event.query_id}): another session may commit it', event.line, event.position))


def input_end_letters(tracker: TransactionTracker, unresolved, still_open=None):
    """The dead letters of a connection whose bounded input ended: writes in
    an XA transaction still prepared, and writes of a transaction still open
    (counted on the ``unresolved`` and ``still_open`` counters; ``still_open``
    None: a stream's cycle, which carries them instead)."""
    where = f'connection {tracker.serverhost}/{tracker.connection_id}'
    yield from unresolved_letters(tracker, unresolved)
    for event in tracker.open_statements() if still_open is not None else ():
        still_open.inc()
        yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            'transactions', 'transaction-open-at-end',
            f'no COMMIT or ROLLBACK for {where} before the input ended (query id '
            f'{event.query_id})', event.line, event.position))


class ResolveTransactions(beam.PTransform):
    """PCollection[AuditEvent] -> PCollection[CommittedTransaction] + dead letters.

    Bounded inputs: each connection's events are grouped whole and replayed in
    statement order, so the result does not depend on arrival order.
    """

    def __init__(self, autocommit: bool = True, server_version: int = DEFAULT_SERVER_VERSION,
                 rollback_on_timeout: bool = False):
        super().__init__()
        self._autocommit = autocommit
        self._server_version = server_version
        self._rollback_on_timeout = rollback_on_timeout

    def expand(self, events):
        return (
            events
            | 'SessionEvents' >> beam.Filter(
                lambda e: e.operation in ('QUERY', 'CONNECT', 'DISCONNECT'))
            | 'ByConnection' >> beam.Map(lambda e: ((e.serverhost, e.connection_id), e))
            | 'GroupConnection' >> beam.GroupByKey()
            | 'Replay' >> beam.ParDo(_ResolveConnection(
                self._autocommit, self._server_version, self._rollback_on_timeout)).with_outputs(
                DEAD_LETTER_TAG, main='transactions'))
