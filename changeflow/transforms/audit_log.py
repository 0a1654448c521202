"""Parse MariaDB ``server_audit`` lines (RDS, Aurora MySQL) into AuditEvents.

A line is ``timestamp,serverhost,username,host,connectionid,queryid,
operation,database,object,retcode`` (see FACTS.md): a QUERY's object is the
statement in single quotes, escaped by the plugin (``\\'``, ``\\\\``, ``\\n``,
``\\r``, ``\\t``, ``\\b``, ``\\f``; commas and ``"`` are left as they are);
TABLE events (READ, WRITE, CREATE, ...) carry a bare table name and an empty
retcode; CONNECT/DISCONNECT/FAILED_CONNECT an empty object. Timestamps are
``YYYYMMDD HH:MM:SS`` in the server's local time (read as UTC) or, on Aurora,
epoch microseconds. RDS variants append an 11th/12th field
(``connection_type``, ...), which is ignored.

The parser is on the hot path (target: >= 250k events/s per core for decode,
parse and SQL together), so it splits the head fields with str.split and
reads the rest with one precompiled regex with possessive quantifiers,
unescapes only objects that contain a backslash, and memoizes the last
timestamp (a busy server logs many lines per second). Runs on any runner.

Bounds (a line outside them is ``malformed-line``): connection and query ids
are unsigned 64-bit integers, as the server keeps them; an Aurora timestamp
has at most 17 digits (epoch microseconds before the year 5138: what a
version's fixed-width time field holds); a retcode has at most 9 digits.
"""

import datetime
import re
from typing import Iterable, List, Literal, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from changeflow.model import DEAD_LETTER_TAG, AuditEvent, DeadLetter, LogEvent, dead_letter
from changeflow.transforms.guard import guarded

__all__ = ['AuditLineError', 'parse_audit_line', 'AuditLineParser', 'ParseAuditLines',
           'DEFAULT_QUERY_LOG_LIMIT']

# server_audit_query_log_limit's default in MariaDB's plugin.
DEFAULT_QUERY_LOG_LIMIT = 1024

# Fields 1-8 cannot contain a comma, so str.split finds them (a regex
# capturing them costs twice as much); the timestamp is one of
# _TIMESTAMP, the connection and query ids digits (str.isdecimal: what the
# regex \d matches). After them, _TAIL: the object, either quoted (QUERY) or
# bare (TABLE events, empty for connections); then retcode (empty for TABLE
# events) and at most two trailing fields that RDS variants add.
_HEAD_FIELDS = 8
_TIMESTAMP = re.compile(r'\d{8} \d\d:\d\d:\d\d|\d++')
_TAIL = re.compile(r"(?:'([^'\\]*+(?:\\.[^'\\]*+)*+)'|([^,']*+)),(\d*+)(?:,[^,\n]*+){0,2}+",
                   re.DOTALL)

# The plugin's escapes (esc_map in server_audit.c). `\\` and `\'` drop the
# backslash; any other backslash pair cannot come from the plugin and is kept.
_CONTROL_ESCAPES = {'\\n': '\n', '\\r': '\r', '\\t': '\t', '\\b': '\b', '\\f': '\f'}
_UNESCAPED = {'\\': '\\', "'": "'", **{pair[1]: char for pair, char in _CONTROL_ESCAPES.items()}}
_ESCAPE = re.compile(r'\\(.)', re.DOTALL)
_CONTROL_ESCAPE = re.compile(r'\\[nrtbf]')

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MAX_TIME_DIGITS = 17
_MAX_ID = 2 ** 64 - 1
_MAX_RETCODE_DIGITS = 9
_ONE_US = datetime.timedelta(microseconds=1)
_new_tuple = tuple.__new__
_last_timestamp = (None, 0)  # (text, epoch µs) of the previous valid line; one tuple, so thread-safe


class AuditLineError(ValueError):
    """A line that is not a server_audit record, or one the plugin cut short.

    ``reason`` is 'malformed-line' or 'truncated-statement'.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


def _unescape(text: str) -> str:
    unquoted = text.replace("\\'", "'")
    if '\\' not in unquoted:  # every backslash was one of \' (SQL literals): the common case
        return unquoted
    if '\0' in text:  # the sentinel below would be ambiguous: take the slow path
        return _ESCAPE.sub(lambda m: _UNESCAPED.get(m[1], m[0]), text)
    # `\\` first (through a sentinel), so `\\n` reads as `\` + `n`, not as a newline.
    text = text.replace('\\\\', '\0').replace("\\'", "'")
    if '\\' in text:
        text = _CONTROL_ESCAPE.sub(lambda m: _CONTROL_ESCAPES[m[0]], text)
    return text.replace('\0', '\\')


def _timestamp_us(text: str) -> int:
    """Epoch µs of a timestamp of the line grammar, remembered as the last one."""
    global _last_timestamp
    if len(text) == 17 and text[8] == ' ':
        try:
            when = datetime.datetime(
                int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]),
                int(text[12:14]), int(text[15:17]), tzinfo=datetime.timezone.utc)
        except ValueError as e:
            raise AuditLineError('malformed-line', f'bad timestamp {text!r}: {e}') from None
        micros = (when - _EPOCH) // _ONE_US
    else:  # Aurora: epoch microseconds
        if len(text) > _MAX_TIME_DIGITS:
            raise AuditLineError('malformed-line', f'timestamp {text[:40]!r}... has more than'
                                                   f' {_MAX_TIME_DIGITS} digits')
        micros = int(text)
    _last_timestamp = (text, micros)
    return micros


def _utf8_length_at_least(text: str, n: int) -> bool:
    if len(text) >= n:
        return True
    if 4 * len(text) < n or text.isascii():
        return False
    return len(text.encode('utf-8', 'surrogatepass')) >= n


def parse_audit_line(line: str, position: str = '',
                     query_log_limit: int = DEFAULT_QUERY_LOG_LIMIT, *,
                     keep_truncated: bool = False) -> AuditEvent:
    """Parse one server_audit line.

    ``query_log_limit`` is the server's ``server_audit_query_log_limit`` (0 =
    unlimited). The plugin cuts the *escaped* statement at that many bytes,
    without a marker, and one byte early when the next character needs a
    two-byte escape; so a quoted object of ``limit - 1`` bytes or more may be
    cut and raises 'truncated-statement' rather than yield a wrong statement;
    with ``keep_truncated`` a QUERY is returned marked ``truncated`` instead,
    for the transaction replay (the SQL stage dead-letters it in its place).

    Raises:
        AuditLineError: 'malformed-line' or 'truncated-statement'.
    """
    fields = line.split(',', _HEAD_FIELDS)
    if len(fields) <= _HEAD_FIELDS:
        raise AuditLineError('malformed-line', _why_malformed(line))
    (timestamp, serverhost, username, host, connection_id, query_id, operation,
     database, rest) = fields
    tail = _TAIL.fullmatch(rest)
    last = _last_timestamp  # a line with the last valid line's timestamp needs no check of it
    if tail is None or not (connection_id.isdecimal() and query_id.isdecimal()) or (
            timestamp != last[0] and _TIMESTAMP.fullmatch(timestamp) is None):
        raise AuditLineError('malformed-line', _why_malformed(line))
    quoted, bare, retcode = tail.groups()
    truncated = False
    if quoted is None:
        obj = bare
    else:
        # 4 * len: the most UTF-8 bytes the object can be (no call for a short one)
        if query_log_limit and 4 * len(quoted) >= query_log_limit - 1 and _utf8_length_at_least(
                quoted, query_log_limit - 1):
            if not (keep_truncated and operation == 'QUERY'):
                raise AuditLineError(
                    'truncated-statement',
                    f'{operation} object reaches server_audit_query_log_limit={query_log_limit}'
                    f' and may have been cut: {quoted[:80]!r}...')
            truncated = True
        obj = _unescape(quoted) if '\\' in quoted else quoted
    if len(connection_id) > 19 or len(query_id) > 19 or len(retcode) > _MAX_RETCODE_DIGITS:
        _check_bounds(connection_id, query_id, retcode)
    # tuple.__new__ skips NamedTuple's Python-level __new__ (0.3 µs of ~1.5).
    return _new_tuple(AuditEvent, (
        last[1] if timestamp == last[0] else _timestamp_us(timestamp), serverhost, username,
        host, int(connection_id), int(query_id), operation, database, obj,
        0 if retcode == '0' else int(retcode) if retcode else None, position, line, truncated))


def _check_bounds(connection_id: str, query_id: str, retcode: str) -> None:
    """Raises 'malformed-line' for an id beyond 64 bits or an overlong retcode."""
    for name, digits in (('connection id', connection_id), ('query id', query_id)):
        if len(digits) > 20 or int(digits) > _MAX_ID:
            raise AuditLineError('malformed-line', f'{name} {digits[:40]}... is not a'
                                                   f' 64-bit unsigned integer')
    if len(retcode) > _MAX_RETCODE_DIGITS:
        raise AuditLineError('malformed-line', f'retcode {retcode[:40]}... has more than'
                                               f' {_MAX_RETCODE_DIGITS} digits')


def _why_malformed(line: str) -> str:
    """A human explanation for a line the regex rejected (error path only)."""
    head = line.split(',', 8)
    if len(head) < 9:
        return f'{len(head)} fields, expected 10 to 12: {line[:200]!r}'
    rest = head[8]
    if rest.startswith("'"):
        if not re.match(r"'(?:[^'\\]|\\.)*'", rest, re.DOTALL):
            return f'unterminated quoted object: {line[:200]!r}'
    if not re.fullmatch(r'\d{8} \d\d:\d\d:\d\d|\d+', head[0]):
        return f'bad timestamp {head[0][:40]!r}: {line[:200]!r}'
    if not (head[4].isdigit() and head[5].isdigit()):
        return f'non-numeric connection or query id: {line[:200]!r}'
    return f'not connectionid,queryid,...,object,retcode[,extra[,extra]]: {line[:200]!r}'


_CONNECTION_OPS = frozenset({'CONNECT', 'DISCONNECT', 'FAILED_CONNECT', 'CHANGEUSER'})


class AuditLineParser:
    """Parses log events' lines as the parse step does, counting them: what
    every form of the stage shares (ParseAuditLines, one element per event;
    the coarse data flow, one per record). Make it in a DoFn's ``__init__``;
    counts are summed until :meth:`report` (a Metrics counter update costs
    ~0.5 µs, a fifth of the per-event budget)."""

    def __init__(self, query_log_limit: int):
        self._limit = query_log_limit
        namespace = 'changeflow.parse_audit'
        self._lines_received = Metrics.counter(namespace, 'lines_received')
        self._events_parsed = Metrics.counter(namespace, 'events_parsed')
        self._dead_lettered = Metrics.counter(namespace, 'dead_lettered')
        self._queries = Metrics.counter(namespace, 'queries')
        self._table_events = Metrics.counter(namespace, 'table_events')
        self._connects = Metrics.counter(namespace, 'connects')
        self.reset()

    def reset(self):
        """Forgets the counts not reported (a retried bundle counts afresh)."""
        self._counts = {'QUERY': 0}
        self._received = 0
        self._dead = 0

    def parse(self, events: Sequence[LogEvent]) -> Tuple[List[AuditEvent], List[DeadLetter]]:
        """(the events that parse, in order; a DeadLetter per line that does
        not). A statement cut at the limit is kept, marked ``truncated``."""
        parsed, dead = [], []
        limit, counts = self._limit, self._counts
        for event in events:
            try:
                audit = parse_audit_line(event.message, event.position, limit,
                                         keep_truncated=True)
            except AuditLineError as e:
                dead.append(dead_letter('parse_audit', e.reason, e.detail, event.message,
                                        event.position))
                continue
            op = audit.operation
            counts[op] = counts.get(op, 0) + 1
            parsed.append(audit)
        self._received += len(events)
        self._dead += len(dead)
        return parsed, dead

    def report(self):
        """Adds the counts since the last report to the metrics."""
        counts = self._counts
        parsed = sum(counts.values())
        connects = sum(n for op, n in counts.items() if op in _CONNECTION_OPS)
        self._lines_received.inc(self._received)
        self._events_parsed.inc(parsed)
        self._dead_lettered.inc(self._dead)
        self._queries.inc(counts['QUERY'])
        self._connects.inc(connects)
        self._table_events.inc(parsed - counts['QUERY'] - connects)
        self.reset()


_DeadLetterOutput = pvalue.TaggedOutput[Literal[DEAD_LETTER_TAG], DeadLetter]


@guarded('parse_audit', lambda event: event.message, lambda event: event.position)
class _ParseAuditLineFn(beam.DoFn):
    """LogEvent -> AuditEvent, or a DeadLetter on DEAD_LETTER_TAG; counts
    reported per bundle."""

    def __init__(self, query_log_limit: int):
        self._parser = AuditLineParser(query_log_limit)

    def start_bundle(self):
        self._parser.reset()

    def process(self, event: LogEvent) -> Iterable[Union[AuditEvent, _DeadLetterOutput]]:
        parsed, dead = self._parser.parse((event,))
        for letter in dead:
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
        yield from parsed

    def finish_bundle(self):
        self._parser.report()


class ParseAuditLines(beam.PTransform):
    """PCollection[LogEvent] -> main: AuditEvent, DEAD_LETTER_TAG: DeadLetter.

    Element-wise, so any windowing passes through. A line that is malformed,
    or a TABLE/CONNECT object cut at the query log limit, becomes a
    DeadLetter(step='parse_audit', original=the line's UTF-8 bytes) and never
    fails the pipeline. A statement cut at the limit passes on marked
    ``truncated``: whether it matters depends on its transaction committing.

    Example::

        events, dead = log_events | ParseAuditLines(query_log_limit=1024)
    """

    MAIN = 'audit_events'

    def __init__(self, query_log_limit: int = DEFAULT_QUERY_LOG_LIMIT):
        super().__init__()
        if (not isinstance(query_log_limit, int) or isinstance(query_log_limit, bool)
                or query_log_limit < 0):
            raise ValueError(
                f'query_log_limit must be an int >= 0 (0 = unlimited), got {query_log_limit!r}')
        self._query_log_limit = query_log_limit

    def expand(self, log_events):
        return log_events | 'ParseAuditLine' >> beam.ParDo(
            _ParseAuditLineFn(self._query_log_limit)).with_outputs(
                DEAD_LETTER_TAG, main=self.MAIN)
