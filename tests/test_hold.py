"""Holding items until the watermark passes them (changeflow.transforms.hold),
with in-memory stand-ins for Beam's bag state, value state and timer."""

from changeflow.transforms.hold import hold, take_due


class Bag:
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)

    def read(self):
        return list(self.items)

    def clear(self):
        self.items = []


class Value:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class Timer:
    def __init__(self):
        self.at = None

    def set(self, timestamp):
        self.at = timestamp.micros


def test_items_are_released_once_due_in_the_order_held_and_the_timer_follows_the_earliest():
    pending, due, release = Bag(), Value(), Timer()
    hold(pending, due, release, 5_000, 'b')
    hold(pending, due, release, 2_000, 'a')
    hold(pending, due, release, 9_000, 'c')
    assert release.at == 2_000
    assert take_due(pending, due, release, 5_000) == ['b', 'a']
    assert release.at == due.read() == 9_000
    assert take_due(pending, due, release, 8_000) == []
    assert take_due(pending, due, release, 9_000) == ['c']
    assert pending.read() == [] and due.read() is None


def test_a_window_end_is_due_when_its_timer_fires_in_milliseconds():
    """A window ends at ...999999 micros; the runners fire its timer at
    ...999000: held to the microsecond, the item would never be due and the
    timer would be set again for ever."""
    pending, due, release = Bag(), Value(), Timer()
    hold(pending, due, release, 1_796_192_171_999_999, 'window')
    fired = release.at // 1000 * 1000        # what a runner's millisecond timer gives back
    assert take_due(pending, due, release, fired) == ['window']
