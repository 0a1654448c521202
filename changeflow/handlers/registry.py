"""Handler definitions, from the config's ``handlers:`` or from Python.

    handlers = Handlers(catch_error=report)

    @handlers.on('prod-Card', events=['insert'], name='New Card Informer')
    def inform(events):            # a list of InsertEvent[Card], in version order per key
        ...

    build_pipeline(p, config, handlers=handlers)

A handler's ``function`` is a callable or a reference ``'pkg.module:fn'``
(imported on the worker, in the DoFn's setup). With ``options`` it is a
factory: ``fn(**options)`` is called once per worker in setup and returns
the handler (the place to open a client). ``catch_error(handler, events,
error)`` is called with exactly the events of a call that failed for good.

Which errors are transient (retried with capped exponential backoff and full
jitter, tenacity's ``wait_random_exponential``, before the events are
dead-lettered): :class:`TransientError` (raise it to ask for a retry),
``ConnectionError`` and ``TimeoutError`` (refused, reset, broken pipe,
socket timeouts), ``urllib.error.HTTPError`` 408, 425, 429 and 5xx and a
``URLError`` over one of those, botocore's connection and timeout errors and
``ClientError`` throttling codes or 5xx. Everything else fails at once.
"""

import dataclasses
import re
import urllib.error
from typing import Any, Callable, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Union

from changeflow.handlers.events import EVENT_KINDS
from changeflow.handlers.models import import_ref

__all__ = ['SERIES', 'MAP', 'STRATEGIES', 'RetryPolicy', 'Handler', 'Handlers', 'TransientError',
           'is_transient', 'check_handlers']

SERIES, MAP = 'series', 'map'
STRATEGIES = (SERIES, MAP)
_NAME = re.compile(r'[^\x00-\x1f]{1,200}')
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_THROTTLING = frozenset({'Throttling', 'ThrottlingException', 'ThrottledException',
                         'RequestThrottledException', 'TooManyRequestsException',
                         'ProvisionedThroughputExceededException', 'RequestLimitExceeded',
                         'SlowDown', 'ServiceUnavailable', 'InternalError'})


class TransientError(Exception):
    """Raised by a handler to say: try again (after a backoff)."""


def is_transient(error: BaseException) -> bool:
    """Whether a retry may succeed (see the module docstring)."""
    if isinstance(error, TransientError):
        return True
    if isinstance(error, urllib.error.HTTPError):
        return error.code in _RETRY_STATUS or error.code >= 500
    if isinstance(error, urllib.error.URLError):
        return isinstance(error.reason, (ConnectionError, TimeoutError))
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {'EndpointConnectionError', 'ConnectTimeoutError', 'ReadTimeoutError',
                'ConnectionClosedError'}:
        return True
    response = getattr(error, 'response', None)
    if 'ClientError' in names and isinstance(response, Mapping):
        code = response.get('Error', {}).get('Code')
        status = response.get('ResponseMetadata', {}).get('HTTPStatusCode') or 0
        return code in _THROTTLING or status >= 500
    return False


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """At most ``attempts`` calls; waits drawn uniformly from 0 to
    min(``max_seconds``, ``initial_seconds`` * 2^attempt)."""
    attempts: int = 4
    initial_seconds: float = 0.5
    max_seconds: float = 10.0

    def __post_init__(self):
        if not (isinstance(self.attempts, int) and self.attempts >= 1):
            raise ValueError(f'retry attempts must be a positive integer, not {self.attempts!r}')
        if not (0 <= self.initial_seconds <= self.max_seconds):
            raise ValueError(f'retry waits must be 0 <= initial_seconds <= max_seconds, not '
                             f'{self.initial_seconds!r}, {self.max_seconds!r}')


@dataclasses.dataclass(frozen=True)
class Handler:
    """One handler: ``function(events)`` for the ``events`` kinds of ``table``.

    ``strategy`` (``series`` or ``map``) is the table's: all handlers of one
    table share it. ``batch_size``: events per call at most.
    """
    name: str
    table: str
    function: Union[Callable, str]
    events: FrozenSet[str] = frozenset(EVENT_KINDS)
    strategy: str = SERIES
    catch_error: Optional[Union[Callable, str]] = None
    options: Optional[Mapping[str, Any]] = None
    batch_size: int = 100
    retry: RetryPolicy = RetryPolicy()
    search_path: Optional[str] = None      # a directory for the references' imports

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f'a handler name is 1 to 200 printable characters, not '
                             f'{self.name!r}')
        events = frozenset([self.events] if isinstance(self.events, str) else self.events)
        unknown = sorted(events - set(EVENT_KINDS))
        if not events or unknown:
            raise ValueError(f'handler {self.name!r}: events must be some of '
                             f'{", ".join(EVENT_KINDS)}, not {sorted(events)}')
        object.__setattr__(self, 'events', events)
        if self.strategy not in STRATEGIES:
            raise ValueError(f'handler {self.name!r}: strategy must be series or map, not '
                             f'{self.strategy!r}')
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f'handler {self.name!r}: batch_size must be a positive integer')
        for label, value in (('function', self.function), ('catch_error', self.catch_error)):
            if value is not None and not callable(value) and not (
                    isinstance(value, str) and ':' in value):
                raise ValueError(f'handler {self.name!r}: {label} must be a callable or '
                                 f'"pkg.module:name", not {value!r}')

    def resolve(self) -> 'tuple[Callable, Optional[Callable]]':
        """(the handler callable, the catch_error hook): imported, and the
        factory called, here (a DoFn's setup)."""
        function = self.function
        if isinstance(function, str):
            function = import_ref(function, self.search_path)
        if self.options is not None:
            function = function(**self.options)
        if not callable(function):
            raise TypeError(f'handler {self.name!r}: {self.function!r} is not callable')
        hook = self.catch_error
        if isinstance(hook, str):
            hook = import_ref(hook, self.search_path)
        return function, hook


class Handlers:
    """A registry of handlers for ``build_pipeline(..., handlers=...)``.

    ``catch_error``: the hook of every handler added that names none.
    ``models``: table -> its model (a dataclass), for tables whose config names none.
    """

    def __init__(self, catch_error: Optional[Callable] = None,
                 models: Optional[Mapping[str, type]] = None):
        self._catch_error = catch_error
        self.models = dict(models or {})
        self._handlers: List[Handler] = []

    def add(self, handler: Handler) -> Handler:
        if handler.catch_error is None and self._catch_error is not None:
            handler = dataclasses.replace(handler, catch_error=self._catch_error)
        self._handlers.append(handler)
        return handler

    def on(self, table: str, events: Union[str, Sequence[str]] = EVENT_KINDS, *,
           name: Optional[str] = None, **settings):
        """Decorator: registers the function as a handler of ``table``'s ``events``
        (``settings``: Handler's strategy, catch_error, batch_size, retry)."""
        def register(function):
            self.add(Handler(name or function.__name__, table, function, frozenset(
                [events] if isinstance(events, str) else events), **settings))
            return function
        return register

    def __iter__(self) -> Iterator[Handler]:
        return iter(self._handlers)

    def __len__(self):
        return len(self._handlers)


def check_handlers(handlers: Sequence[Handler], tables: Sequence[str]) -> None:
    """Names unique, tables among ``tables``, one strategy per table; ValueError otherwise."""
    names, strategies = set(), {}
    for handler in handlers:
        if handler.name in names:
            raise ValueError(f'handler name {handler.name!r} is used twice: names key the '
                             f'ledger, they must be unique')
        names.add(handler.name)
        if handler.table not in tables:
            raise ValueError(f'handler {handler.name!r}: table {handler.table!r} is not among '
                             f'the configured tables {sorted(tables)}')
        other = strategies.setdefault(handler.table, handler.strategy)
        if other != handler.strategy:
            raise ValueError(f'handler {handler.name!r}: the handlers of {handler.table} must '
                             f'share one strategy ({other} or {handler.strategy})')
