"""One guard for every changeflow DoFn: an exception dead-letters the element
it was processing, never the job.

A defect or an input nobody foresaw must not fail a pipeline that replicates
millions of other rows, nor take the rest of its bundle with it. ``@guarded``
wraps a DoFn class's ``process``, its ``@on_timer`` callbacks and
``finish_bundle``: an exception escaping them becomes a
:class:`~changeflow.model.DeadLetter` on ``DEAD_LETTER_TAG`` with reason
``internal-error``, the exception's type and message and where it was raised
in the detail, and the element's original bytes (or its JSON form), and the
DoFn goes on with the next element.

``process`` is all or nothing by default: its outputs are collected and only
emitted when it returns, so a failing element yields its dead letter alone,
never half of its outputs. DoFns whose process has side effects (sinks) or
whose outputs are too many to hold (file readers) use ``buffered=False``: what
was emitted before the error stays emitted (it was written), and the dead
letter says so. Timers and ``finish_bundle`` have no element: outputs made
before the error stay, and the dead letter names the callback and its key.

Beam's ``with_exception_handling()`` covers neither timers nor
``finish_bundle``, and maps errors to a tuple every caller must translate;
this guard keeps the DoFns' own dead-letter records and their tagged output.

Example::

    @guarded('decode', original=lambda record: record.data,
             position=lambda record: record.position)
    class _DecodeRecordFn(beam.DoFn):
        ...
"""

import functools
import inspect
import logging
import os
import reprlib
import time
import traceback
from typing import Any, Callable, Optional

from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms import userstate
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from changeflow.io.json_records import change_json
from changeflow.model import DEAD_LETTER_TAG, DeadLetter, dead_letter

__all__ = ['INTERNAL_ERROR', 'guarded', 'describe_error', 'internal_error', 'preview',
           'changes_original', 'lines_original']

INTERNAL_ERROR = 'internal-error'

_LOG = logging.getLogger(__name__)
_DETAIL_LENGTH = 500
_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel = 3
_PREVIEW.maxstring = 80
_PREVIEW.maxother = 80
_PREVIEW.maxlong = 40


def preview(value: Any, length: int = 80) -> str:
    """A bounded ``repr`` for error messages: never recurses deeper than three
    levels nor prints a 5,000-digit number whole (plain ``repr`` of a deeply
    nested list raises RecursionError)."""
    try:
        text = _PREVIEW.repr(value)
    except Exception:  # a __repr__ that fails: still describe the value
        text = f'<{type(value).__name__}>'
    return text if len(text) <= length else text[:length - 3] + '...'


def describe_error(error: BaseException) -> str:
    """``Type: message (at file:line in function)``: the traceback's last line
    and where it was raised, bounded in length."""
    try:
        message = traceback.format_exception_only(type(error), error)[-1].strip()
    except Exception:  # a __str__ that fails (or recurses)
        message = type(error).__name__
    if len(message) > _DETAIL_LENGTH:
        message = message[:_DETAIL_LENGTH - 3] + '...'
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        frame = frames[-1]
        message += f' (at {os.path.basename(frame.filename)}:{frame.lineno} in {frame.name})'
    return message


def changes_original(changes) -> bytes:
    """One Change, or several, as JSON lines: a dead letter's original."""
    if hasattr(changes, 'ops'):
        return change_json(changes)
    return b'\n'.join(change_json(change) for change in changes)


def lines_original(events) -> str:
    """Audit events as the lines they were logged as: a dead letter's original."""
    return '\n'.join(event.line for event in events)


def _original_of(element, original: Optional[Callable[[Any], Any]]):
    if original is not None:
        try:
            return original(element)
        except Exception:  # the element is too broken to render: fall back to its repr
            pass
    return preview(element, 10_000)


def _position_of(element, position: Optional[Callable[[Any], str]]) -> str:
    if position is not None:
        try:
            return str(position(element))
        except Exception:
            pass
    return ''


def internal_error(step: str, error: BaseException, original, position: str,
                   context: str = '') -> DeadLetter:
    """The dead letter of an element whose processing raised ``error``."""
    detail = describe_error(error)
    return dead_letter(step, INTERNAL_ERROR, f'{context}{detail}' if context else detail,
                       original, position)


def _report(step: str, error: BaseException):
    Metrics.counter(f'changeflow.{step}', 'internal_errors').inc()
    _LOG.error('%s: internal error, dead-lettered: %s', step, describe_error(error),
               exc_info=error)


def _guard_process(process, step, original, position, buffered):
    if buffered:
        @functools.wraps(process)
        def guarded_process(self, element, *args, **kwargs):
            try:
                outputs = process(self, element, *args, **kwargs)
                if type(outputs) is list:  # made for this call: no copy
                    return outputs
                return [] if outputs is None else list(outputs)
            except Exception as error:  # pylint: disable=broad-except
                _report(step, error)
                return [TaggedOutput(DEAD_LETTER_TAG, internal_error(
                    step, error, _original_of(element, original),
                    _position_of(element, position)))]
        return guarded_process

    @functools.wraps(process)
    def streaming_process(self, element, *args, **kwargs):
        emitted = 0
        try:
            outputs = process(self, element, *args, **kwargs)
            for output in outputs or ():
                emitted += 1
                yield output
        except Exception as error:  # pylint: disable=broad-except
            _report(step, error)
            context = f'after {emitted} output(s) of this element were emitted: ' if emitted else ''
            yield TaggedOutput(DEAD_LETTER_TAG, internal_error(
                step, error, _original_of(element, original), _position_of(element, position),
                context))
    return streaming_process


def _guard_callback(callback, step, windowed: bool):
    """A timer callback or finish_bundle: no element to blame; outputs made
    before the error stay, then one dead letter naming the callback."""
    @functools.wraps(callback)
    def guarded_callback(self, *args, **kwargs):
        try:
            outputs = callback(self, *args, **kwargs)
            yield from outputs or ()
        except Exception as error:  # pylint: disable=broad-except
            _report(step, error)
            key = kwargs.get('shard_key', kwargs.get('key', ''))
            letter = internal_error(step, error, preview(key, 1000), '',
                                    f'{callback.__name__}({preview(key)}): ')
            if windowed:  # finish_bundle outputs must carry their window
                letter = WindowedValue(letter, Timestamp(micros=time.time_ns() // 1000),
                                       (GlobalWindow(),))
            yield TaggedOutput(DEAD_LETTER_TAG, letter)
    return guarded_callback


def _timer_specs(cls):
    """The TimerSpecs named by the DoFn's methods' ``TimerParam`` defaults."""
    specs = {}
    for member in vars(cls).values():
        try:
            parameters = inspect.signature(member).parameters.values() if callable(member) else ()
        except (TypeError, ValueError):  # a builtin without a signature
            parameters = ()
        for parameter in parameters:
            spec = getattr(parameter.default, 'timer_spec', None)
            if isinstance(spec, userstate.TimerSpec):
                specs[id(spec)] = spec
    return list(specs.values())


def guarded(step: str, original: Optional[Callable[[Any], Any]] = None,
            position: Optional[Callable[[Any], str]] = None, *, buffered: bool = True):
    """Class decorator for a DoFn (see the module docstring).

    Args:
        step: the dead letters' ``step`` (the DoFn's own step name).
        original: element -> its original bytes or text (or JSON form), for
            the dead letter; must not be expensive (it runs only on error).
        position: element -> its source position.
        buffered: collect ``process``'s outputs and emit them only when it
            returns (all or nothing); False for sinks and readers.

    Metrics: ``changeflow.<step>/internal_errors``.
    """
    def decorate(cls):
        cls.process = _guard_process(cls.process, step, original, position, buffered)
        for spec in _timer_specs(cls):
            callback = spec._attached_callback  # pylint: disable=protected-access
            if callback is not None and vars(cls).get(callback.__name__) is callback:
                wrapper = _guard_callback(callback, step, windowed=False)
                setattr(cls, callback.__name__, wrapper)
                # Beam checks that the spec's callback is the class's method.
                spec._attached_callback = wrapper  # pylint: disable=protected-access
        if 'finish_bundle' in vars(cls):
            cls.finish_bundle = _guard_callback(cls.finish_bundle, step, windowed=True)
        return cls
    return decorate
