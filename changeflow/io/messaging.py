"""Notification targets that are services: SNS topics, SQS queues, HTTP webhooks.

They plug into :class:`changeflow.io.notify.WriteNotifications` as
:class:`~changeflow.io.notify.NotificationWriter` classes, registered under
their scheme, so rules, ``when`` and redaction are the same as for files::

    {'to': 'sns:arn:aws:sns:eu-west-1:123456789012:orders',
     'when': {'table': 'shop.orders', 'columns': {'status': {'to': 'shipped'}}},
     'template': 'Order {key[1]} shipped', 'region': 'eu-west-1'}
    {'to': 'sqs:https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo'}
    {'to': 'https://hooks.slack.com/services/T000/B000/XXXX',
     'template': 'New card {new[name]}'}

Message: SNS and SQS send the notification JSON object (as a ``file:`` line
holds it), or the rendered ``template`` when the rule has one, with message
attributes ``table``, ``op`` and ``notification_id``. FIFO topics and queues
(names ending ``.fifo``) get ``MessageDeduplicationId`` = the notification id
and ``MessageGroupId`` = a hash of (table, key), so one row's notifications
keep their order and rows go in parallel. Webhooks get a POST of
Slack-compatible JSON ``{"text": TEXT}``, TEXT the template rendered
(:data:`DEFAULT_TEMPLATE` when the rule has none). See :func:`template_fields`.

Guarantees: at most once per (target, notification id), across replays and
restarts: a :class:`changeflow.state.ledger.Ledger` (``state_url``) is asked
before sending and written after the service accepted, per call of at most
10 messages, so a crash between the two repeats at most those 10. SNS's
PublishBatch and SQS's SendMessageBatch take 10 entries (256 KiB in all) per
call; each entry succeeds or fails on its own. Transient failures (throttling,
HTTP 429 and 5xx, connection errors, an entry the service failed itself) are
retried with capped exponential backoff and full jitter (``retry``:
``attempts`` 5, ``initial_seconds`` 0.5, ``max_seconds`` 20 by default);
permanent ones (4xx, an entry rejected as the sender's fault, a message
over 256 KiB, a template that does not render) and exhausted retries make a
dead letter per notification, reason ``rejected``, ``retries-exhausted``,
``too-large`` or ``bad-template`` (``unrecorded``: sent, but the ledger write
failed, so a replay sends it again; ``not-sent``: held back meanwhile), the
target in the detail with a webhook's
path and query masked (they carry its token), the notification as
``original``. Each target has its own writer: one failing never delays
another one or the other sinks beyond its own retries.

AWS clients use boto3's default credential chain, the rule's ``region``
(default: the ARN's or queue URL's, else the chain's) and ``endpoint_url``.
Webhooks take ``headers`` (``{Authorization: "Bearer ${SLACK_TOKEN}"}``):
``${NAME}`` reads the environment variable NAME of the process that sends,
so no secret is in the config; their values are masked out of every error
text, as the URL's path and query are. Webhooks use urllib3 (already
installed with botocore, which depends on it):
one connection pool per target, no retries of its own (ours apply), no
redirects followed (a redirect is a permanent failure: a webhook that moved
is a configuration to fix).
"""

import hashlib
import os
import re
import string
import urllib.parse
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import boto3
import botocore.config
import botocore.exceptions
import tenacity
import urllib3
from apache_beam.metrics import Metrics

from changeflow.io.json_records import dumps_json, json_value, loads_json
from changeflow.io.notify import REDACTED, WRITERS, NotificationWriter
from changeflow.io.notify_columns import before_and_after
from changeflow.io.sql import create_engine
from changeflow.model import Change
from changeflow.sql.secrets import env_names, expand_env, mask_url_passwords, mask_values
from changeflow.state.ledger import Ledger

__all__ = ['SnsWriter', 'SqsWriter', 'WebhookWriter', 'DEFAULT_TEMPLATE', 'template_fields',
           'render_template', 'display_target']

DEFAULT_TEMPLATE = '{table} {op} {key}: {changes}'
BATCH_ENTRIES = 10            # PublishBatch and SendMessageBatch take at most 10 entries
MAX_BYTES = 256 * 1024        # per message and per batch call (SNS; SQS's historic limit)
_RETRY_DEFAULTS = {'attempts': 5, 'initial_seconds': 0.5, 'max_seconds': 20.0}
_THROTTLING = frozenset({
    'Throttling', 'ThrottlingException', 'ThrottledException', 'RequestThrottled',
    'TooManyRequestsException', 'RequestLimitExceeded', 'KMSThrottling',
    'ServiceUnavailable', 'InternalError', 'InternalFailure', 'RequestTimeout',
    'RequestTimeoutException', 'SlowDown'})
_NAMESPACE = 'changeflow.write_notify'
_SNS_ARN = re.compile(r'arn:aws[a-z-]*:sns:([a-z]{2}(?:-[a-z]+)+-\d+):\d{12}:[A-Za-z0-9_-]{1,256}'
                      r'(?:\.fifo)?')
_QUEUE_REGION = re.compile(r'(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:queue\.)?amazonaws\.com')


# --- templates ------------------------------------------------------------------

def _text(value) -> str:
    """A value as a template shows it: text as is, the rest as JSON writes it."""
    value = json_value(value)
    return value if isinstance(value, str) else dumps_json(value).decode('utf-8')


class _Fields(dict):
    """Column -> text; a column not there reads as '' ({old[status]} when the
    old value is unknown); the whole mapping formats as a JSON object."""

    def __missing__(self, key):
        return ''

    def __format__(self, spec):
        return format(dumps_json(dict(self)).decode('utf-8'), spec)


class _Key(list):
    """Key parts as text; a part not there reads as ''; the whole key formats
    as a JSON array."""

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except IndexError:
            return ''

    def __init__(self, parts=()):
        super().__init__(_text(part) for part in parts)
        self._json = dumps_json(list(parts)).decode('utf-8')

    def __format__(self, spec):
        return format(self._json, spec)


_FIELDS = ('id', 'table', 'op', 'version', 'event_time', 'key', 'new', 'old', 'changes')
_FIELD = re.compile(r'([a-z_]+)((?:\[[^\[\]]+\])?)')


def template_fields(change: Change, note: Mapping[str, Any], redact=frozenset(),
                    key_columns: Sequence[str] = ()) -> Dict[str, Any]:
    """The fields a template may use, for one notification (``note``, its
    JSON object) of ``change``; the ``redact`` columns read ``***``.

    ``id``, ``table``, ``op``, ``version``, ``event_time``: as in the
    notification. ``key``: the key parts (``{key[0]}``; ``{key}`` is a JSON
    array). ``new``: the values the op writes (``{new[status]}``; computed
    assignments are not there; for a DynamoDB MODIFY with its old image, an
    attribute it removed reads ``null``). ``old``: the values known before
    the op: a DynamoDB record's old image (``NEW_AND_OLD_IMAGES``, and a
    REMOVE's in ``OLD_IMAGE`` streams), else what the Change's earlier ops
    tell (the audit log: usually nothing). ``changes``:
    ``col=value`` pairs of ``new``, comma-separated. Every field is text; a
    column not there reads as the empty string.
    """
    old, new, _ = before_and_after(change)

    def shown(values):
        return _Fields((column, REDACTED if column.lower() in redact else _text(value))
                       for column, value in values.items())

    new_fields = shown(new)
    return {
        'id': note['id'], 'table': note['table'], 'op': note['op'],
        'version': note['version'], 'event_time': note['event_time'],
        'key': _Key(note['key']),
        'new': new_fields, 'old': shown(old),
        'changes': ', '.join(f'{column}={value}' for column, value in new_fields.items()),
    }


class _Formatter(string.Formatter):
    """str.format over the fields alone: no attribute access, no positional fields."""

    def check(self, template: str) -> None:
        for _, name, spec, _ in self.parse(template):
            if name is None:
                continue
            match = _FIELD.fullmatch(name)
            if not match or match[1] not in _FIELDS:
                raise ValueError(f'template field {{{name}}} is not one of {", ".join(_FIELDS)} '
                                 f'(a column as {{new[status]}}, a key part as {{key[0]}})')
            if spec and '{' in spec:
                raise ValueError(f'template field {{{name}}}: nested fields are not allowed')


_FORMATTER = _Formatter()


def render_template(template: str, fields: Mapping[str, Any]) -> str:
    """``template`` (checked by the writer) over :func:`template_fields`."""
    return _FORMATTER.vformat(template, (), fields)


def _check_template(template) -> str:
    if not isinstance(template, str) or not template:
        raise ValueError(f'a template is non-empty text, got {template!r}')
    _FORMATTER.check(template)
    sample = {name: '' for name in _FIELDS}
    sample.update(key=_Key(), new=_Fields(), old=_Fields())
    try:
        render_template(template, sample)
    except (ValueError, LookupError, TypeError) as error:
        raise ValueError(f'template {template!r} does not render: {error}') from None
    return template


# --- retries --------------------------------------------------------------------

class _Transient(Exception):
    """Entries the service failed on its side: sent again after a backoff."""


def _transient(error: BaseException) -> bool:
    if isinstance(error, _Transient):
        return True
    if isinstance(error, botocore.exceptions.ClientError):
        response = error.response or {}
        status = response.get('ResponseMetadata', {}).get('HTTPStatusCode') or 0
        return response.get('Error', {}).get('Code') in _THROTTLING or status == 429 or (
            status >= 500)
    if isinstance(error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        return True
    if isinstance(error, urllib3.exceptions.SSLError):
        return False  # a certificate does not fix itself
    return isinstance(error, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _retry_options(retry) -> Dict[str, float]:
    if retry is None:
        return dict(_RETRY_DEFAULTS)
    if not isinstance(retry, Mapping) or set(retry) - set(_RETRY_DEFAULTS):
        raise ValueError(f'retry takes {", ".join(_RETRY_DEFAULTS)}, got {retry!r}')
    options = {**_RETRY_DEFAULTS, **retry}
    attempts = options['attempts']
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise ValueError(f'retry.attempts must be an integer from 1 to 100, got {attempts!r}')
    for name in ('initial_seconds', 'max_seconds'):
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 <= value <= 3600):
            raise ValueError(f'retry.{name} must be 0 to 3600 seconds, got {value!r}')
    return options


# --- the writers -----------------------------------------------------------------

class _Message(NamedTuple):
    note_id: str
    body: str
    table: str
    op: str
    group: str


def display_target(target: str) -> str:
    """``target`` as logs and dead letters show it: a webhook's path past its
    first segment and its query read ``***`` (they hold its token), a URL
    password too."""
    if not target.startswith(('http://', 'https://')):
        return mask_url_passwords(target)
    parts = urllib.parse.urlsplit(target)
    netloc = parts.netloc
    if '@' in netloc:
        user, _, host = netloc.rpartition('@')
        netloc = f'{user.partition(":")[0]}:***@{host}' if ':' in user else f'{user}@{host}'
    segments = parts.path.lstrip('/').split('/')
    path = '/' + segments[0] + '/***' if len(segments) > 1 else ('/***' if segments[0] else '')
    return f'{parts.scheme}://{netloc}{path}' + ('?***' if parts.query else '')


class _MessageWriter(NotificationWriter):
    """Check the ledger, send in calls of at most 10, retry, record, report failures."""

    OPTIONS = frozenset({'template', 'retry'})
    STATEFUL = True
    SCHEME = ''
    SECRET = False               # the address holds a secret (a webhook's token)
    _default_template: Optional[str] = None
    _fifo = False                # one message per FIFO group and call (see _chunks)

    def __init__(self, address: str, state_url=None, template: Optional[str] = None,
                 retry=None):
        super().__init__(address)
        self._check_address()
        self._template = _check_template(template) if template is not None else (
            self._default_template)
        self._retry = _retry_options(retry)
        self._state_url = state_url
        self._ledger = None
        self._failures: Dict[str, Tuple[str, str]] = {}
        self._retried = Metrics.counter(_NAMESPACE, 'retried')

    @property
    def target(self) -> str:
        return f'{self.SCHEME}:{self.address}'

    @property
    def display(self) -> str:
        return display_target(self.target)

    @classmethod
    def shown(cls, target: str) -> str:
        return display_target(target)

    @property
    def scope(self) -> str:
        """The ledger scope: the target, or a hash of it when it is long or secret."""
        if len(self.target) <= 200 and not self.SECRET:
            return self.target
        return f'{self.SCHEME}:sha256:{hashlib.sha256(self.target.encode()).hexdigest()[:40]}'

    def _check_address(self) -> None:
        raise NotImplementedError

    def open(self) -> None:
        if self._state_url is None:
            raise ValueError(f'{self.display}: a message target needs a state store '
                             f'(state_url) for its ledger')
        self.close()
        self._ledger = Ledger(create_engine(self._state_url))  # a new SQLite file's folder made
        self._connect()

    def _connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.dispose()
            self._ledger = None

    def message(self, change: Change, note_id: str, line: bytes, redact, key_columns) -> bytes:
        """The line to send: the notification object with the rendered text
        (``message``, or ``template_error``) and the FIFO group (``group``)."""
        note = loads_json(line)
        extra = {'group': hashlib.sha256(dumps_json(
            [change.table, json_value(list(change.key))])).hexdigest()[:32]}
        if self._template is not None:
            try:
                extra['message'] = render_template(
                    self._template, template_fields(change, note, redact, key_columns))
            except (ValueError, LookupError, TypeError) as error:
                extra['template_error'] = f'{type(error).__name__}: {error}'
        return dumps_json({**note, **extra})

    def failures(self) -> Dict[str, Tuple[str, str]]:
        return self._failures

    def write(self, batch):
        self._failures = {}
        lines = dict(batch)
        done = self._ledger.done(self.scope, lines)
        messages = []
        for note_id, line in lines.items():
            if note_id in done:
                continue
            note = loads_json(line)
            if 'template_error' in note:
                self._failures[note_id] = ('bad-template', note['template_error'])
                continue
            body = note.pop('message', None)
            group = note.pop('group')
            messages.append(_Message(note_id, body if body is not None else (
                dumps_json(note).decode('utf-8')), note['table'], note['op'], group))
        delivered: Set[str] = set()
        chunks = self._chunks(messages)
        for chunk in chunks:
            accepted = self._deliver(chunk)
            if not accepted:
                continue
            try:
                self._ledger.record(self.scope, accepted)
            except Exception as error:  # sent but not recorded: a replay sends them again
                why = f'the ledger write failed: {type(error).__name__}: {error}'
                self._failures.update(dict.fromkeys(accepted, ('unrecorded', 'sent, but ' + why)))
                for rest in chunks:  # nothing more is sent while the ledger fails
                    self._failures.update(dict.fromkeys(
                        (m.note_id for m in rest), ('not-sent', why)))
                break
            delivered |= accepted
        return delivered

    def _size(self, message: _Message) -> int:
        return len(message.body.encode('utf-8', 'surrogatepass'))

    def _chunks(self, messages: List[_Message]):
        """Calls of at most 10 messages and 256 KiB. To a FIFO target, at most
        one message per group: a call is retried until it is done before the
        next is sent, so an entry sent again never overtakes a later version
        of its row."""
        chunk, size, groups = [], 0, set()
        for message in messages:
            length = self._size(message)
            if length > MAX_BYTES:
                self._failures[message.note_id] = (
                    'too-large', f'{length:,} bytes; a message takes at most {MAX_BYTES:,}')
                continue
            if chunk and (len(chunk) == BATCH_ENTRIES or size + length > MAX_BYTES or (
                    self._fifo and message.group in groups)):
                yield chunk
                chunk, size, groups = [], 0, set()
            chunk.append(message)
            size += length
            groups.add(message.group)
        if chunk:
            yield chunk

    def _deliver(self, chunk: List[_Message]) -> Set[str]:
        """Sends ``chunk``, again for the entries that failed transiently;
        returns the ids accepted and notes the others in ``_failures``."""
        pending = {m.note_id: m for m in chunk}
        accepted: Set[str] = set()

        def attempt():
            ok, rejected, again = self._send(list(pending.values()))
            accepted.update(ok)
            for note_id, why in rejected.items():
                self._failures[note_id] = ('rejected', why)
            for note_id in ok | set(rejected):
                pending.pop(note_id, None)
            if pending:  # failed on the service's side (or not answered): sent again
                raise _Transient('; '.join(sorted(set(again.values()))) or 'no answer')

        retry = self._retry
        try:
            tenacity.Retrying(
                stop=tenacity.stop_after_attempt(retry['attempts']),
                wait=tenacity.wait_random_exponential(multiplier=retry['initial_seconds'],
                                                      max=retry['max_seconds']),
                retry=tenacity.retry_if_exception(_transient),
                before_sleep=lambda _: self._retried.inc(), reraise=True)(attempt)
        except Exception as error:  # the rest of the chunk is dead-lettered, with the reason
            reason = 'retries-exhausted' if _transient(error) else 'rejected'
            detail = self._hide(f'{type(error).__name__}: {error}')
            for note_id in pending:
                self._failures[note_id] = (reason, detail)
        return accepted

    def _hide(self, text: str) -> str:
        return mask_url_passwords(text)

    def _send(self, messages: List[_Message]) -> Tuple[Set[str], Dict[str, str], Dict[str, str]]:
        """One call: (accepted ids, rejected id -> why, id -> why to send again).
        Raises for a failure of the whole call."""
        raise NotImplementedError


def _aws_client(service: str, region: Optional[str], endpoint_url: Optional[str]):
    # One attempt per call: our retries (with jitter and per-entry resends) apply.
    config = botocore.config.Config(retries={'mode': 'standard', 'total_max_attempts': 1},
                                    connect_timeout=10, read_timeout=30)
    return boto3.session.Session().client(service, region_name=region,
                                          endpoint_url=endpoint_url, config=config)


def _aws_options(scheme: str, region, endpoint_url):
    if region is not None and not (isinstance(region, str) and re.fullmatch(
            r'[a-z]{2}(?:-[a-z]+)+-\d+', region)):
        raise ValueError(f"'{scheme}' target: region {region!r} is not an AWS region")
    if endpoint_url is not None and not (isinstance(endpoint_url, str) and re.fullmatch(
            r'https?://[^/\s]+/?', endpoint_url)):
        raise ValueError(f"'{scheme}' target: endpoint_url {endpoint_url!r} is not "
                         f"http(s)://host[:port]")


class _AwsWriter(_MessageWriter):
    """A boto3 client per writer, with the rule's region and endpoint_url."""

    OPTIONS = _MessageWriter.OPTIONS | {'region', 'endpoint_url'}
    _client = None

    def __init__(self, address: str, region: Optional[str] = None,
                 endpoint_url: Optional[str] = None, **options):
        _aws_options(self.SCHEME, region, endpoint_url)
        self._region, self._endpoint_url = region, endpoint_url
        super().__init__(address, **options)

    def _connect(self):
        self._client = _aws_client(self.SCHEME, self._region, self._endpoint_url)

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None
        super().close()

    def _entries(self, messages, body_key: str) -> List[dict]:
        """Batch entries (SNS names the body 'Message', SQS 'MessageBody'); a
        FIFO target's carry the row's group and the notification id for dedup."""
        entries = []
        for message in messages:
            entry = {'Id': message.note_id, body_key: message.body,
                     'MessageAttributes': _attributes(message)}
            if self._fifo:
                entry.update(MessageGroupId=message.group, MessageDeduplicationId=message.note_id)
            entries.append(entry)
        return entries


def _attributes(message: _Message) -> Dict[str, Dict[str, str]]:
    return {'table': {'DataType': 'String', 'StringValue': message.table},
            'op': {'DataType': 'String', 'StringValue': message.op},
            'notification_id': {'DataType': 'String', 'StringValue': message.note_id}}


def _entry_results(response) -> Tuple[Set[str], Dict[str, str], Dict[str, str]]:
    """A batch call's Successful and Failed entries: sender faults are rejected, the rest retried."""
    ok = {entry['Id'] for entry in response.get('Successful', ())}
    rejected, again = {}, {}
    for entry in response.get('Failed', ()):
        why = f"{entry.get('Code', '?')}: {entry.get('Message', '')}".rstrip(': ')
        (rejected if entry.get('SenderFault') else again)[entry['Id']] = why
    return ok, rejected, again


class SnsWriter(_AwsWriter):
    """``sns:TOPIC_ARN``: PublishBatch, 10 entries per call."""

    SCHEME = 'sns'

    def _check_address(self):
        match = _SNS_ARN.fullmatch(self.address)
        if not match:
            raise ValueError(f"an 'sns:' target needs a topic ARN, as in "
                             f"'sns:arn:aws:sns:eu-west-1:123456789012:orders', "
                             f"got {self.address!r}")
        self._fifo = self.address.endswith('.fifo')
        self._region = self._region or match[1]

    def _send(self, messages):
        return _entry_results(self._client.publish_batch(
            TopicArn=self.address,
            PublishBatchRequestEntries=self._entries(messages, 'Message')))


class SqsWriter(_AwsWriter):
    """``sqs:QUEUE_URL``: SendMessageBatch, 10 entries per call."""

    SCHEME = 'sqs'

    def _check_address(self):
        parts = urllib.parse.urlsplit(self.address)
        if parts.scheme not in ('http', 'https') or not parts.netloc or len(
                parts.path.strip('/').split('/')) != 2:
            raise ValueError(f"an 'sqs:' target needs a queue URL, as in 'sqs:https://sqs."
                             f"eu-west-1.amazonaws.com/123456789012/orders', got {self.address!r}")
        self._fifo = parts.path.rstrip('/').endswith('.fifo')
        match = _QUEUE_REGION.fullmatch(parts.hostname or '')
        self._region = self._region or (match[1] if match else None)

    def _send(self, messages):
        return _entry_results(self._client.send_message_batch(
            QueueUrl=self.address, Entries=self._entries(messages, 'MessageBody')))


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_OWN_HEADERS = frozenset({'content-type', 'content-length', 'host', 'transfer-encoding'})


def _check_headers(headers) -> Dict[str, str]:
    """``headers`` as configured (values may name ``${ENV}`` variables), checked."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping) or not headers:
        raise ValueError(f'headers must be a mapping of header name -> value, got '
                         f'{type(headers).__name__}')
    checked = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f'headers: {name!r} is not a header name')
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f'headers: {name} is set by changeflow')
        if not isinstance(value, str) or '\r' in value or '\n' in value:
            raise ValueError(f'headers.{name}: the value must be one line of text '
                             f'(secrets as ${{ENV_VAR}})')
        checked[name] = value
    return checked


class WebhookWriter(_MessageWriter):
    """``https://...``: a POST of ``{"text": ...}`` per notification.

    ``headers``: sent with every POST; a value's ``${NAME}`` parts are the
    environment variable NAME (``Authorization: "Bearer ${SLACK_TOKEN}"``),
    read when the target is opened, so the config holds no secret. Resolved
    values never reach logs or dead letters (:meth:`_hide` masks them).
    """

    SCHEME = 'https'
    SECRET = True
    OPTIONS = _MessageWriter.OPTIONS | {'timeout_seconds', 'headers'}
    _default_template = DEFAULT_TEMPLATE
    _http = None

    def __init__(self, address: str, timeout_seconds: float = 15.0, headers=None, **options):
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, (int, float)) or (
                not 0 < timeout_seconds <= 300):
            raise ValueError(f'timeout_seconds must be above 0 and at most 300, '
                             f'got {timeout_seconds!r}')
        self._timeout = float(timeout_seconds)
        self._configured_headers = _check_headers(headers)
        self._headers = {'Content-Type': 'application/json'}
        self._secrets: List[str] = []
        super().__init__(address, **options)

    def environment(self) -> List[str]:
        """The environment variables its headers name."""
        return [name for value in self._configured_headers.values() for name in env_names(value)]

    def _check_address(self):
        parts = urllib.parse.urlsplit(self.target)
        if not parts.hostname:
            raise ValueError(f'a webhook target needs a URL, as in '
                             f"'https://hooks.slack.com/services/...', got {self.display!r}")

    def _connect(self):
        resolved = {}
        for name, value in self._configured_headers.items():
            try:
                resolved[name] = expand_env(value)
            except KeyError as error:
                raise ValueError(f'headers.{name}: {error.args[0]}') from None
            if '\r' in resolved[name] or '\n' in resolved[name]:
                raise ValueError(f'headers.{name}: its environment variable holds a line break')
        # The whole values and each variable's own: a server may echo either back.
        self._secrets = [value for name, value in resolved.items()
                         if value != self._configured_headers[name]] + [
            os.environ[name] for name in self.environment()]
        self._headers = {'Content-Type': 'application/json', **resolved}
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(self._timeout, 10.0), read=self._timeout),
            retries=False)

    def close(self):
        if self._http is not None:
            self._http.clear()
            self._http = None
        super().close()

    def _hide(self, text: str) -> str:
        parts = urllib.parse.urlsplit(self.target)
        secret = parts.path + ('?' + parts.query if parts.query else '')
        shown = urllib.parse.urlsplit(self.display)
        text = text.replace(self.target, self.display)
        if len(secret) > 1:
            text = text.replace(secret, shown.path + ('?***' if parts.query else ''))
        return mask_url_passwords(mask_values(text, self._secrets))

    def _size(self, message: _Message) -> int:
        return 0  # one POST per message, no batch limit of ours

    def _send(self, messages):
        ok, rejected, again = set(), {}, {}
        for message in messages:
            try:
                response = self._http.request(
                    'POST', self.target, body=dumps_json({'text': message.body}),
                    headers=self._headers, redirect=False)
            except Exception as error:  # per message: the ones posted before stay posted
                why = self._hide(f'{type(error).__name__}: {error}')
                (again if _transient(error) else rejected)[message.note_id] = why
                continue
            status = response.status
            if 200 <= status < 300:
                ok.add(message.note_id)
                continue
            why = self._hide(f'HTTP {status}: ' + response.data[:200].decode(
                'utf-8', 'replace').strip())  # a server may echo the token back
            (again if status == 429 or status >= 500 else rejected)[message.note_id] = why
        return ok, rejected, again


class _HttpWebhookWriter(WebhookWriter):
    """``http://...``: as ``https``, unencrypted (a local relay, a test server)."""

    SCHEME = 'http'


WRITERS.update({'sns': SnsWriter, 'sqs': SqsWriter, 'https': WebhookWriter,
                'http': _HttpWebhookWriter})
