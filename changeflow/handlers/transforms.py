"""The handlers branch: each (table, shard)'s events, typed, through its table's handlers.

Input: ``((table, shard), run)`` elements whose runs hold
:class:`~changeflow.handlers.events.ChangeEvent` (DynamoDB) or audit-log
:class:`~changeflow.model.Change` records (turned into events here by
:func:`~changeflow.handlers.events.audit_events`), uncoalesced: a handler
sees every change, not a row's net effect. One GroupByKey per (table,
shard), then one DoFn call per shard that merges its runs in version order.

Per handler, isolated from every other and from the sinks:

1. its events (the kinds it asked for) are checked against the ledger
   (:class:`changeflow.state.ledger.Ledger`, scope = the handler's name, id =
   the change id) and those already done are skipped;
2. the rest go to the function in calls of at most ``batch_size`` events, in
   version order; a transient error is retried (capped exponential backoff
   with full jitter, :mod:`changeflow.handlers.registry`);
3. after a call succeeds its change ids are recorded in the ledger; after it
   fails for good its events are dead-lettered (step ``handler:<name>``,
   reason ``handler-failed``, the error and traceback in the detail, the
   source record as ``original``), ``catch_error(handler, events, error)``
   is called with exactly them, and later events of the same keys in this
   batch are dead-lettered too (``blocked-by-failure``, not passed to
   catch_error) so the handler never sees a key's later change after a
   failed earlier one.

Strategies (one per table): ``series`` runs the table's handlers one after
another on a shard's batch, in the order they were declared (handler B
starts on a batch once handler A has finished with it); ``map`` runs them
concurrently on a thread pool made in setup. Either way each handler sees
each key's events in version order, in one call or in successive calls;
across keys (shards run in parallel) there is no order.

An event whose item does not fit its table's model is dead-lettered once
(step ``handler_model``, reason ``unknown-attribute``, ``missing-attribute``
or ``attribute-type``, the attribute named) and reaches no handler.
"""

import concurrent.futures
import logging
import traceback
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import tenacity
from apache_beam import window
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms import userstate

from changeflow.handlers.events import ChangeEvent, audit_events, typed_event
from changeflow.handlers.models import ModelMismatch, fit, import_ref
from changeflow.handlers.registry import MAP, Handler, check_handlers, is_transient
from changeflow.io.sql import create_engine
from changeflow.model import DEAD_LETTER_TAG, dead_letter
from changeflow.state.ledger import Ledger
from changeflow.transforms.guard import describe_error, guarded
from changeflow.transforms.hold import hold, hold_specs, take_due
from changeflow.transforms.runs import merge_runs, typed_keys, unpack

__all__ = ['RunHandlers', 'HandlerOutcome', 'MODEL_STEP']

_LOG = logging.getLogger(__name__)
_NAMESPACE = 'changeflow.handlers'
MODEL_STEP = 'handler_model'
_TRACEBACK_LENGTH = 4000


class HandlerOutcome(NamedTuple):
    """One handler's result on one shard batch: the branch's main output."""
    handler: str
    table: str
    shard: int
    delivered: int          # events passed to calls that succeeded
    already_done: int       # events the ledger says it handled before
    failed: int             # events dead-lettered with the call that failed


def _version(item) -> str:
    return item.version if isinstance(item, ChangeEvent) else item.ops[0].version


def _shard_original(element):
    _, runs = element
    return b'\n'.join(item.original if isinstance(item, ChangeEvent) else repr(item).encode()
                      for _, data in runs for item in unpack(data))


def _step(handler: Handler) -> str:
    return f'handler:{handler.name}'


def _failure_detail(handler: Handler, error: BaseException) -> str:
    trace = ''.join(traceback.format_exception(type(error), error, error.__traceback__))
    if len(trace) > _TRACEBACK_LENGTH:
        trace = '...' + trace[-_TRACEBACK_LENGTH:]
    return f'handler {handler.name!r} failed: {describe_error(error)}\n{trace}'


class _Run:
    """One handler's outcome on one batch, built off the main thread (Beam's
    metrics are per thread: the DoFn counts once the run is back)."""

    def __init__(self):
        self.letters: List = []
        self.delivered = self.already_done = self.failed = self.retries = 0
        self.hook_errors = 0


@guarded('handlers', _shard_original, lambda element: f'shard {element[0]!r}', buffered=False)
class _HandleShardFn(beam.DoFn):
    """((table, shard), runs) -> HandlerOutcome per handler, DeadLetters."""

    def __init__(self, handlers: Tuple[Handler, ...], models: Mapping[str, Any],
                 state_url: str):
        self._handlers = handlers
        self._models = dict(models)
        self._state_url = state_url
        self._counters = {name: Metrics.counter(_NAMESPACE, name) for name in (
            'events', 'delivered', 'already_done', 'failed', 'blocked', 'retries',
            'model_mismatch', 'catch_error_failed', 'whole_table_ops')}

    def setup(self):
        self._ledger = Ledger(create_engine(self._state_url))  # a new SQLite file's folder made
        self._by_table: Dict[str, List[Handler]] = {}
        for handler in self._handlers:
            self._by_table.setdefault(handler.table, []).append(handler)
        self._resolved: Dict[str, Tuple] = {}
        self._unavailable: Dict[str, BaseException] = {}
        for handler in self._handlers:
            try:
                self._resolved[handler.name] = handler.resolve()
            except Exception as error:  # its events are dead-lettered, the others run
                _LOG.error('handler %r cannot be loaded: %s', handler.name, describe_error(error))
                self._unavailable[handler.name] = error
        self._model_classes, self._models_unavailable = {}, {}
        for table, model in self._models.items():
            search = next((h.search_path for h in self._by_table.get(table, ())), None)
            try:
                self._model_classes[table] = (import_ref(model, search)
                                              if isinstance(model, str) else model)
            except Exception as error:  # the table's events are dead-lettered, not guessed
                _LOG.error('model %r of %s cannot be loaded: %s', model, table,
                           describe_error(error))
                self._models_unavailable[table] = describe_error(error)
        widest = max((len(hs) for t, hs in self._by_table.items()
                      if hs[0].strategy == MAP), default=0)
        self._pool = (concurrent.futures.ThreadPoolExecutor(widest, 'changeflow-handler')
                      if widest > 1 else None)

    def process(self, element):
        yield from self._handle(*element)

    def _handle(self, shard_key, runs):
        """The handlers of the shard's table on its runs' events, in version order."""
        table, shard = shard_key
        handlers = self._by_table.get(table)
        if not handlers:
            return
        typed = []
        unavailable = self._models_unavailable.get(table)
        for item in merge_runs(runs, _version):
            events = [item] if isinstance(item, ChangeEvent) else list(audit_events(item))
            if not isinstance(item, ChangeEvent) and not item.key:
                self._counters['whole_table_ops'].inc()
            for event in events:
                self._counters['events'].inc()
                if unavailable is not None:
                    self._counters['model_mismatch'].inc()
                    yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                        MODEL_STEP, 'model-unavailable', f'{table}: {unavailable}',
                        event.original, event.position))
                    continue
                try:
                    typed.append(self._typed(event))
                except ModelMismatch as error:
                    self._counters['model_mismatch'].inc()
                    yield TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                        MODEL_STEP, error.reason, f'{table}: {error.detail}', event.original,
                        event.position))
        if not typed:
            return
        if handlers[0].strategy == MAP and self._pool is not None and len(handlers) > 1:
            futures = [self._pool.submit(self._run, handler, typed) for handler in handlers]
            runs_done = [future.result() for future in futures]
        else:
            runs_done = [self._run(handler, typed) for handler in handlers]
        for handler, run in zip(handlers, runs_done):
            for name in ('delivered', 'already_done', 'failed', 'retries'):
                self._counters[name].inc(getattr(run, name))
            self._counters['blocked'].inc(sum(1 for _, reason in run.letters
                                              if reason == 'blocked-by-failure'))
            self._counters['catch_error_failed'].inc(run.hook_errors)
            for letter, _ in run.letters:
                yield TaggedOutput(DEAD_LETTER_TAG, letter)
            yield HandlerOutcome(handler.name, table, shard, run.delivered, run.already_done,
                                 run.failed)

    def _typed(self, event: ChangeEvent):
        model = self._model_classes.get(event.table)
        partial = event.written is not None
        return typed_event(event, fit(model, event.old), fit(model, event.new, partial)), event

    def _run(self, handler: Handler, typed: Sequence) -> _Run:
        """``handler`` on its events of one batch: ledger, calls, retries, dead letters."""
        run = _Run()
        mine = [(event, raw) for event, raw in typed if event.kind in handler.events]
        if not mine:
            return run
        if handler.name in self._unavailable:
            self._fail(handler, run, mine, self._unavailable[handler.name], None,
                       'handler-unavailable')
            return run
        function, hook = self._resolved[handler.name]
        try:
            done = self._ledger.done(handler.name, [event.change_id for event, _ in mine])
        except Exception as error:  # without the ledger nothing can be called at most once
            self._fail(handler, run, mine, error, hook, 'state-unavailable')
            return run
        pending = [(event, raw) for event, raw in mine if event.change_id not in done]
        run.already_done = len(mine) - len(pending)
        failed_keys = set()
        for start in range(0, len(pending), handler.batch_size):
            chunk = pending[start:start + handler.batch_size]
            blocked = [pair for pair in chunk if pair[0].key in failed_keys]
            chunk = [pair for pair in chunk if pair[0].key not in failed_keys]
            for event, raw in blocked:
                run.letters.append((dead_letter(
                    _step(handler), 'blocked-by-failure',
                    f'handler {handler.name!r}: an earlier change of key {event.key!r} failed '
                    f'in this batch', raw.original, raw.position), 'blocked-by-failure'))
            if not chunk:
                continue
            try:
                self._call(handler, function, [event for event, _ in chunk], run)
            except Exception as error:
                failed_keys.update(event.key for event, _ in chunk)
                self._fail(handler, run, chunk, error, hook, 'handler-failed')
                continue
            run.delivered += len(chunk)
            try:
                self._ledger.record(handler.name, [event.change_id for event, _ in chunk])
            except Exception as error:  # delivered, but a replay would deliver them again
                for event, raw in chunk:
                    run.letters.append((dead_letter(
                        _step(handler), 'unrecorded',
                        f'handler {handler.name!r} succeeded but its ledger record failed '
                        f'(a replay calls it again): {describe_error(error)}',
                        raw.original, raw.position), 'unrecorded'))
        return run

    @staticmethod
    def _call(handler: Handler, function, events: List, run: _Run) -> None:
        policy = handler.retry

        def count(_state):
            run.retries += 1

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=tenacity.wait_random_exponential(multiplier=policy.initial_seconds,
                                                  max=policy.max_seconds),
            retry=tenacity.retry_if_exception(is_transient), before_sleep=count, reraise=True)
        retrying(function, list(events))

    def _fail(self, handler: Handler, run: _Run, pairs, error, hook, reason: str) -> None:
        run.failed += len(pairs)
        detail = _failure_detail(handler, error)
        for _, raw in pairs:
            run.letters.append((dead_letter(_step(handler), reason, detail, raw.original,
                                            raw.position), reason))
        if hook is not None:
            try:
                hook(handler, [event for event, _ in pairs], error)
            except Exception as hook_error:  # the events are dead-lettered already
                run.hook_errors += 1
                _LOG.error('catch_error of handler %r failed: %s', handler.name,
                           describe_error(hook_error))

    def teardown(self):
        if getattr(self, '_pool', None) is not None:
            self._pool.shutdown(wait=True)
        if getattr(self, '_ledger', None) is not None:
            self._ledger.dispose()


_PENDING, _DUE, _RELEASE = hold_specs('handlers')    # a shard's runs, until the watermark passes


def _held_original(element):
    return _shard_original((element[0], [element[1]]))


@guarded('handlers', _held_original, lambda element: f'shard {element[0]!r}', buffered=False)
class _HandleInOrderFn(_HandleShardFn):
    """The unbounded form: a shard's runs held in state until the watermark
    passes them (:mod:`changeflow.transforms.hold`), then handled as one batch
    in version order; one release after another, so a key's events reach
    its handlers in order across windows."""

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                pending=beam.DoFn.StateParam(_PENDING), due=beam.DoFn.StateParam(_DUE),
                release=beam.DoFn.TimerParam(_RELEASE)):
        hold(pending, due, release, timestamp.micros, element[1])

    @userstate.on_timer(_RELEASE)
    def release_due(self, fired=beam.DoFn.TimestampParam, shard_key=beam.DoFn.KeyParam,
                    pending=beam.DoFn.StateParam(_PENDING), due=beam.DoFn.StateParam(_DUE),
                    release=beam.DoFn.TimerParam(_RELEASE)):
        yield from self._handle(shard_key, take_due(pending, due, release, fired.micros))


class RunHandlers(beam.PTransform):
    """((table, shard), run of ChangeEvents or audit Changes) -> main:
    HandlerOutcome per handler and shard batch, DEAD_LETTER_TAG: DeadLetters.

    Args:
        handlers: the :class:`~changeflow.handlers.registry.Handler` definitions.
        state_url: the ledger's SQLAlchemy URL (shared by every worker).
        models: table -> its model (a dataclass or ``'pkg.module:Name'``,
            imported in setup); tables without one get plain dicts.
        tables: the job's tables, which handlers must name (ValueError).
        stream_windows: the unbounded job's WindowFn: each shard's runs are
            held until the watermark passes them and handled in order across
            windows (:class:`_HandleInOrderFn`), the outputs put back into
            these windows; None (bounded): one GroupByKey per shard.
    """

    MAIN = 'handled'

    def __init__(self, handlers: Sequence[Handler], state_url: str,
                 models: Optional[Mapping[str, Any]] = None,
                 tables: Optional[Sequence[str]] = None, stream_windows=None):
        super().__init__()
        handlers = tuple(handlers)
        if not handlers:
            raise ValueError('RunHandlers needs at least one handler')
        if not isinstance(state_url, str) or not state_url:
            raise ValueError(f'state_url must be an SQLAlchemy URL, not {state_url!r}')
        check_handlers(handlers, sorted({h.table for h in handlers} if tables is None
                                        else tables))
        self._tables = frozenset(h.table for h in handlers)
        self._stream_windows = stream_windows
        self._fn = (_HandleShardFn if stream_windows is None else _HandleInOrderFn)(
            handlers, models or {}, state_url)

    def expand(self, runs):
        tables = self._tables
        handled = (runs
                   | 'HandledTables' >> beam.Filter(lambda element: element[0][0] in tables)
                   | 'KeyTyped' >> typed_keys())
        if self._stream_windows is None:
            return (handled
                    | 'GroupEvents' >> beam.GroupByKey()
                    | 'Handle' >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG,
                                                                    main=self.MAIN))
        outputs = (handled
                   | 'AcrossWindows' >> beam.WindowInto(window.GlobalWindows())
                   | 'HandleInOrder' >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG,
                                                                          main=self.MAIN))
        return {name: outputs[name] | f'Rewindow_{name}' >> beam.WindowInto(self._stream_windows)
                for name in (self.MAIN, DEAD_LETTER_TAG)}

