"""Holding a key's elements in state until the watermark passes them: the
unbounded jobs' way to process a key's input in order across windows.

A stateful DoFn keeps ``(due micros, item)`` pairs in bag state with the
earliest due time in a value state and one event-time timer set to it. When
the timer fires, every item due by then is released (in the order they were
held) and the timer is set again for the earliest item left. A key's timer
firings are processed one after another, in event-time order, so what one
release hands on precedes everything a later release does, whatever order
the runner fires windows in.

Usage, in a DoFn with the three specs of :func:`hold_specs` as parameters::

    PENDING, DUE, RELEASE = hold_specs('connection')

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                pending=beam.DoFn.StateParam(PENDING), due=beam.DoFn.StateParam(DUE),
                release=beam.DoFn.TimerParam(RELEASE)):
        hold(pending, due, release, timestamp.micros, element[1])

    @userstate.on_timer(RELEASE)
    def on_release(self, fired=beam.DoFn.TimestampParam, ...):
        ready = take_due(pending, due, release, fired.micros)
"""

from typing import Any, List

from apache_beam.coders import PickleCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp

__all__ = ['hold_specs', 'hold', 'take_due']


def hold_specs(name: str):
    """(pending, due, release): the bag of ``(due micros, item)``, the timer's
    time and the event-time timer, new and named for each DoFn class: Beam
    binds a TimerSpec to the one callback declared with it, and the
    FnApiRunner dispatches the timers of two fused stateful DoFns whose
    timers share a name to one of them (seen with 2.77)."""
    return (userstate.BagStateSpec(f'{name}_pending', PickleCoder()),
            userstate.ReadModifyWriteStateSpec(f'{name}_due', PickleCoder()),
            userstate.TimerSpec(f'{name}_release', TimeDomain.WATERMARK))


def hold(pending, due, release, at_us: int, item: Any) -> None:
    """Keeps ``item`` until the watermark passes ``at_us``, rounded up to the
    millisecond: the portable runners keep timers in milliseconds (a timer
    set at a window's end, ``...999999`` micros, fires at ``...999000``)."""
    at_us = -(-at_us // 1000) * 1000
    pending.add((at_us, item))
    earliest = due.read()
    if earliest is None or at_us < earliest:
        due.write(at_us)
        release.set(Timestamp(micros=at_us))


def take_due(pending, due, release, fired_us: int) -> List[Any]:
    """The items due by ``fired_us``, in the order they were held; the rest
    stay, with the timer set for the earliest of them."""
    ready, later = [], []
    for at, item in pending.read():
        (ready if at <= fired_us else later).append((at, item))
    pending.clear()
    due.clear()
    for pair in later:
        pending.add(pair)
    if later:
        earliest = min(at for at, _ in later)
        due.write(earliest)
        release.set(Timestamp(micros=earliest))
    return [item for _, item in ready]
