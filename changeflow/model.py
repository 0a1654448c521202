"""Typed records that flow between changeflow's transforms.

All records are immutable NamedTuples of plain values (str, int, bytes,
Decimal, tuples), so Beam's deterministic pickling coder can key state on them
and a record printed in a dead letter reads back as it was.

Versions are fixed-width strings that sort in source order (see
:func:`audit_version`): comparing two versions of one row is a string compare,
whatever source produced them.
"""

import enum
from typing import Any, NamedTuple, Optional, Tuple

__all__ = [
    'SourceRecord', 'LogEvent', 'AuditEvent', 'OpKind', 'RowOp', 'Change',
    'DeadLetter', 'FULL_ROW_KINDS', 'MARKER_KINDS', 'diverge_op', 'divergence',
    'audit_version', 'DEAD_LETTER_TAG', 'dead_letter',
]


class SourceRecord(NamedTuple):
    """One raw record as a source delivered it (a Kinesis record, a Firehose
    gzip member): the bytes still compressed, plus where it came from."""
    data: bytes
    source: str            # stream name or file path
    shard: str             # shard id, or '' for files
    sequence: str          # sequence number, or the member/line index in a file
    arrival_ms: int        # ApproximateArrivalTimestamp, 0 when unknown

    @property
    def position(self) -> str:
        return f'{self.source}/{self.shard}/{self.sequence}' if self.shard else (
            f'{self.source}#{self.sequence}')


class LogEvent(NamedTuple):
    """One CloudWatch Logs event (one audit line) and its provenance."""
    message: str
    log_group: str
    log_stream: str
    event_id: str
    timestamp_ms: int
    position: str          # the SourceRecord position plus '@<index in logEvents>'


class AuditEvent(NamedTuple):
    """One parsed server_audit line.

    ``object`` is unescaped: for QUERY it is the SQL text, for TABLE events
    (READ, WRITE, ...) the table name. ``retcode`` is None where the plugin
    writes it empty (TABLE events). A ``truncated`` statement is kept whole
    as far as it was logged, so its transaction is replayed as the server ran
    it; it is never translated.
    """
    timestamp_us: int      # UTC epoch microseconds (local-time logs are read as UTC)
    serverhost: str
    username: str
    host: str
    connection_id: int
    query_id: int
    operation: str         # QUERY, CONNECT, DISCONNECT, FAILED_CONNECT, READ, WRITE, ...
    database: str
    object: str
    retcode: Optional[int]
    position: str
    line: str              # the line as logged, for dead letters
    truncated: bool = False  # the plugin may have cut the object at its query log limit


class OpKind(str, enum.Enum):
    """What one statement did to one row."""
    INSERT = 'insert'                # row did not exist; now holds values
    REPLACE = 'replace'              # row now holds values, whatever it held
    INSERT_IGNORE = 'insert_ignore'  # values only if the row does not exist
    UPSERT = 'upsert'                # INSERT .. ON DUPLICATE KEY UPDATE
    UPDATE = 'update'                # assignments on the existing row, if any
    DELETE = 'delete'
    TRUNCATE = 'truncate'            # every row of the table (key is ())
    DIVERGE = 'diverge'              # marker: the row (or the table, key ()) may no
                                     # longer equal the source; it changes no value


# Kinds after which the row's state does not depend on what came before.
FULL_ROW_KINDS = frozenset({OpKind.INSERT, OpKind.REPLACE, OpKind.DELETE})

# Kinds that record what is known about the replica instead of a source write:
# the database sink keeps them, the change-log sinks (Parquet, notifications) skip them.
MARKER_KINDS = frozenset({OpKind.DIVERGE})


class RowOp(NamedTuple):
    """One statement's effect on one row.

    ``values``: column -> literal value, for INSERT/REPLACE/INSERT_IGNORE/UPSERT
    (the row written when it is inserted). Columns not named take the target's
    defaults. ``assignments``: column -> expression (see
    :mod:`changeflow.sql.expressions`), for UPDATE and the ON DUPLICATE KEY UPDATE
    part of UPSERT, evaluated left to right against the current row as MySQL
    does. Both are tuples of pairs so the record hashes and pickles
    deterministically. A DIVERGE op's ``values`` are ``(('reason', r),
    ('detail', d))`` (see :func:`diverge_op`). ``condition``: for UPDATE and
    DELETE, an expression (the WHERE beyond the key pin: ``version = 3``,
    ``deleted_at IS NULL``); the op applies only where it is true on the
    row's current state (MySQL WHERE truth: non-NULL and non-zero); None:
    always. ``old``: the whole row before the op, column -> value pairs, where
    the source tells it (a DynamoDB MODIFY's or REMOVE's OldImage); None:
    unknown (the audit log never tells it). Only notifications read it; the
    sinks apply ``values``.
    """
    kind: OpKind
    version: str
    values: Tuple[Tuple[str, Any], ...] = ()
    assignments: Tuple[Tuple[str, Any], ...] = ()
    position: str = ''
    condition: Optional[tuple] = None
    old: Optional[Tuple[Tuple[str, Any], ...]] = None


def diverge_op(version: str, reason: str, detail: str, position: str = '') -> RowOp:
    """A DIVERGE marker: from ``version`` on, the row (or table) is not known to
    equal the source, because of ``reason`` (a dead letter's reason)."""
    return RowOp(OpKind.DIVERGE, version, (('reason', reason), ('detail', detail)), (), position)


def divergence(op: RowOp) -> Tuple[str, str]:
    """(reason, detail) of a DIVERGE op."""
    values = dict(op.values)
    return str(values.get('reason', '')), str(values.get('detail', ''))


class Change(NamedTuple):
    """Everything known to happen to one row, in version order.

    Produced one per statement and row by the SQL stage (``ops`` of length 1)
    and coalesced per (table, key) and window into as few ops as keep the
    result exact. A sink applies the ops whose version is newer than the one it
    recorded for the row, in order.
    """
    table: str             # source table, 'database.table'
    key: Tuple[Any, ...]   # primary-key values in the configured key order; () for a
                           # whole-table op (TRUNCATE, a whole-table DIVERGE)
    ops: Tuple[RowOp, ...]
    event_time_us: int     # time of the newest op at the source

    @property
    def version(self) -> str:
        return self.ops[-1].version

    @property
    def first_version(self) -> str:
        return self.ops[0].version


class DeadLetter(NamedTuple):
    """A record that could not be processed, with everything needed to replay it."""
    step: str              # the transform that rejected it, e.g. 'decode', 'parse_audit'
    reason: str            # short machine-readable class, e.g. 'bad-gzip', 'needs-lookup'
    detail: str            # human-readable explanation
    original: bytes        # the bytes as received (a record, a log line, ...)
    position: str          # source position of the original
    time_us: int           # when it was rejected (processing time)


def audit_version(first_touch_us: int, first_query_id: int, query_id: int, seq: int) -> str:
    """Version of one audit-log change to one row.

    A transaction holds a row's lock from its first write to the row until it
    ends, so two transactions' writes to one row are ordered by when each first
    touched it: the logged time of that statement (whole seconds, or
    microseconds on Aurora), then its query id. Within a transaction the
    statement's own query id orders the writes, then the row's place in a
    multi-row statement.
    """
    return _VERSION % (first_touch_us, first_query_id, query_id, seq)


_VERSION = '%017d.%020d.%020d.%06d'  # %-formatting: 2.5x an f-string's format specs


DEAD_LETTER_TAG = 'dead_letter'


def dead_letter(step: str, reason: str, detail: str, original, position: str) -> DeadLetter:
    """A DeadLetter stamped now; ``original`` may be str (encoded as UTF-8) or bytes.

    Passwords in the detail and in a str original (statement text) are masked
    (:func:`changeflow.sql.secrets.mask_secrets`), and so are those of URLs
    in the detail (an error may quote a database URL); bytes (records,
    Changes as JSON) are kept as they are, to be replayed.
    """
    import time
    from changeflow.sql.secrets import mask_secrets, mask_url_passwords
    if isinstance(original, str):
        original = mask_secrets(original).encode('utf-8', 'surrogateescape')
    return DeadLetter(step, reason, mask_url_passwords(mask_secrets(detail)), bytes(original),
                      position, time.time_ns() // 1000)
