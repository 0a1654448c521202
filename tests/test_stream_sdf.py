"""The unbounded reader's parts: its restriction tracker (claims, checkpoint
splits, resumption, shard ends and children), its watermark estimator, and
its DoFn driven round by round as the runner drives it (checkpoint, resume
from the residual) over a shard that splits while it is read."""

import collections
import uuid

import pytest
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from changeflow.io.kinesis import KinesisShardReader, Page, Start
from changeflow.io.shards import Shard, ShardGraph, ShardPosition
from changeflow.io.stream_sdf import (
    STOP, ArrivalWatermarkEstimator, Claim, ShardRange, StreamRestriction,
    StreamRestrictionTracker, _ReadShardsFn, initial_restriction)
from changeflow.model import SourceRecord
from kinesis_servers import client, create_stream
from test_kinesis_reader import KEYS, _check_order, _merge, _split, put


def restriction(*shards):
    return StreamRestriction(tuple(ShardRange(*s) for s in shards))


# -- the tracker -------------------------------------------------------------

def test_records_are_claimed_in_order_and_a_checkpoint_resumes_after_the_last():
    tracker = StreamRestrictionTracker(restriction(('s0',), ('s1', '5')))
    assert tracker.try_claim(Claim('s0', '1'))
    assert tracker.try_claim(Claim('s1', '12'))   # compared as integers, not as text
    assert not tracker.try_claim(Claim('other', '1'))
    with pytest.raises(ValueError, match='not after'):
        tracker.try_claim(Claim('s1', '9'))

    primary, residual = tracker.try_split(0)
    assert primary == StreamRestriction((), 2)
    assert residual == restriction(('s0', '1'), ('s1', '12'))._replace(claimed=2)
    assert not tracker.try_claim(Claim('s0', '2'))   # after the checkpoint: refused
    tracker.check_done()

    resumed = StreamRestrictionTracker(residual)
    with pytest.raises(ValueError):
        resumed.try_claim(Claim('s0', '1'))          # what the first part claimed
    assert resumed.try_claim(Claim('s0', '2'))
    assert resumed.current_restriction().claimed == 3


def test_a_child_waits_for_its_parents_and_joins_at_a_shard_end():
    tracker = StreamRestrictionTracker(restriction(('p',), ('q',)))
    assert tracker.current_restriction().readable() == restriction(('p',), ('q',)).shards
    # p splits into c1, c2 (both its own); c1 and q later merge into m (c1's).
    assert tracker.try_claim(Claim('p', None, (('c1', ('p',)), ('c2', ('p',)))))
    assert [s.shard_id for s in tracker.current_restriction().shards] == ['c1', 'c2', 'q']
    assert tracker.current_restriction().shards[0] == ShardRange('c1', None, ('p',), True)
    assert tracker.try_claim(Claim('c1', '7'))
    assert tracker.try_claim(Claim('c1', None, (('m', ('c1', 'q')),)))
    assert not tracker.try_claim(Claim('m', '8'))     # q, its other parent, is still here
    assert [s.shard_id for s in tracker.current_restriction().readable()] == ['c2', 'q']
    assert tracker.try_claim(Claim('q', None))
    assert tracker.try_claim(Claim('m', '8'))
    assert tracker.try_claim(Claim('c2', None))
    assert tracker.try_claim(Claim('m', None))
    assert tracker.current_restriction().shards == ()
    tracker.check_done()                              # every shard ended: done


def test_split_hands_over_whole_lineage_groups():
    whole = restriction(('a',), ('a1', None, ('a',)), ('b',), ('c',))
    assert [[s.shard_id for s in g.shards] for g in whole.groups()] == [['a', 'a1'], ['b'], ['c']]
    tracker = StreamRestrictionTracker(whole)
    kept, given = tracker.try_split(0.5)
    assert [s.shard_id for s in kept.shards] == ['a', 'a1', 'b']
    assert [s.shard_id for s in given.shards] == ['c']
    assert tracker.current_restriction().shards == kept.shards
    assert StreamRestrictionTracker(restriction(('a',), ('a1', None, ('a',)))).try_split(
        0.5) is None


def test_stop_ends_the_read_and_unread_shards_without_a_checkpoint_are_an_error():
    tracker = StreamRestrictionTracker(restriction(('s0',)))
    with pytest.raises(ValueError, match='s0'):
        tracker.check_done()
    assert not tracker.try_claim(STOP)
    assert tracker.current_restriction().shards == ()
    tracker.check_done()


def test_the_initial_restriction_holds_every_listed_shard():
    graph = ShardGraph([Shard('s1', ('s0',), '10', None), Shard('s0', (), '1', '9')])
    assert initial_restriction(graph) == restriction(('s0', None, ()), ('s1', None, ('s0',)))


# -- the watermark -------------------------------------------------------------

def test_the_watermark_is_the_least_shard_mark_and_never_goes_back():
    estimator = ArrivalWatermarkEstimator()
    estimator.arrived('s0', 5_000)
    estimator.advance(['s0', 's1'])
    assert estimator.current_watermark() == MIN_TIMESTAMP     # s1 not read yet: held
    estimator.idle('s1', 9_000)                                # caught up at the clock
    estimator.advance(['s0', 's1'])
    assert estimator.current_watermark() == Timestamp(5)
    estimator.arrived('s0', 4_000)                             # an earlier arrival
    estimator.arrived('s0', 12_000)
    estimator.advance(['s0', 's1'])
    assert estimator.current_watermark() == Timestamp(9)
    estimator.ended('s1', ['s1a'])                             # the child starts at s1's mark
    estimator.advance(['s0', 's1a'])
    assert estimator.current_watermark() == Timestamp(9)

    again = ArrivalWatermarkEstimator(estimator.get_estimator_state())
    again.idle('s1a', 20_000)
    again.advance(['s0', 's1a'])
    assert again.current_watermark() == Timestamp(12)
    again.arrived('s0', 1_000)
    again.advance(['s0', 's1a'])
    assert again.current_watermark() == Timestamp(12)
    assert again.get_estimator_state() == (12_000, (('s0', 12_000), ('s1a', 20_000)))


# -- the DoFn, round by round --------------------------------------------------

class _Cursor:
    def __init__(self, shard_id, position):
        self.shard_id = shard_id
        self.position = position


class FakeStream:
    """A reader over a scripted stream: shard id -> (parents, sequence numbers,
    closed); pages of two records."""

    def __init__(self, shards):
        self.shards = shards
        self.opened = []

    def begin(self, stream):
        return stream

    def shard_graph(self, stream):
        return ShardGraph(Shard(sid, parents, '0', '999' if closed else None)
                          for sid, (parents, _, closed) in self.shards.items())

    def open_cursor(self, stream, shard_id, position, start=Start()):
        self.opened.append((shard_id, position.sequence))
        return _Cursor(shard_id, position)

    def read_page(self, stream, source, cursor, start=Start()):
        _, sequences, closed = self.shards[cursor.shard_id]
        after = int(cursor.position.sequence or 0)
        page = [s for s in sequences if s > after][:2]
        if page:
            cursor.position = ShardPosition(str(page[-1]), False, cursor.position.parents)
        at_end = len([s for s in sequences if s > after]) == len(page)
        return Page(tuple(SourceRecord(b'', source, cursor.shard_id, str(s), s * 1000)
                          for s in page),
                    closed and at_end and not page, not closed and at_end and not page, 0)


def run_rounds(fn, restriction_, rounds=50, stream='stream'):
    """Drives ``fn`` as a runner does: a tracker per round on the last
    residual, until nothing is deferred or after ``rounds``. Returns the
    records, the watermark (seconds) after each round, and the residual
    still deferred (None when the read ended)."""
    fn.setup()
    records, watermarks, state = [], [], None
    for _ in range(rounds):
        tracker = ThreadsafeRestrictionTracker(StreamRestrictionTracker(restriction_))
        estimator = ArrivalWatermarkEstimator(state)
        records += [value.value for value in fn._read_round(
            stream, RestrictionTrackerView(tracker), estimator)]
        state = estimator.get_estimator_state()
        watermarks.append(estimator.current_watermark().micros // 1_000_000)
        deferred = tracker.deferred_status()
        if deferred is None:
            tracker.check_done()
            return records, watermarks, None
        restriction_ = deferred[0]
    return records, watermarks, restriction_


def test_a_shard_that_splits_while_read_hands_over_to_its_children_in_order():
    stream = FakeStream({'p': ((), [1, 2, 3], True),
                         'c1': (('p',), [4, 6], False),
                         'c2': (('p',), [5], False)})
    fn = _ReadShardsFn(lambda: stream, Start(), poll_seconds=0, lag_ms=0, max_records=None,
                       clock=lambda: 100.0)
    records, watermarks, residual = run_rounds(fn, initial_restriction(ShardGraph(
        [Shard('p', (), '0', None)])), rounds=6)   # listed before the split: only p
    order = [(r.shard, r.sequence) for r in records]
    assert order[:3] == [('p', '1'), ('p', '2'), ('p', '3')]       # the parent first
    assert sorted(order[3:]) == [('c1', '4'), ('c1', '6'), ('c2', '5')]  # then each child once
    assert residual == StreamRestriction((ShardRange('c1', '6', ('p',), True),
                                          ShardRange('c2', '5', ('p',), True)), 6)  # unbounded
    assert watermarks[-1] == 100                  # caught up: the clock
    assert watermarks == sorted(watermarks)
    # Resumed rounds reuse their iterators; the children open once, from their start.
    assert stream.opened == [('p', None), ('c1', None), ('c2', None)]


def test_max_records_ends_the_read():
    stream = FakeStream({'s': ((), list(range(1, 10)), False)})
    fn = _ReadShardsFn(lambda: stream, Start(), poll_seconds=0, lag_ms=0, max_records=5)
    records, _, residual = run_rounds(fn, restriction(('s',)))
    assert residual is None
    assert [r.sequence for r in records] == ['1', '2', '3', '4', '5']


# -- against kinesalite, which reshards as AWS does ------------------------------

def test_split_and_merge_while_unbounded_lose_and_repeat_nothing(request):
    """The DoFn with the real reader, round by round from checkpointed
    residuals, while its shard splits and the children merge again."""
    kinesis = client(request.getfixturevalue('kinesalite_endpoint'))
    stream = f'sdf-{uuid.uuid4().hex[:8]}'
    create_stream(kinesis, stream, shards=1)
    reader = KinesisShardReader(kinesis, limit=2, reads_per_second=100)
    fn = _ReadShardsFn(lambda: reader, Start(), poll_seconds=0, lag_ms=0, max_records=None)
    rest = initial_restriction(reader.shard_graph(stream))
    read, rounds = [], collections.Counter()

    def write(n):
        for _ in range(n):
            put(kinesis, stream, KEYS, 1, tag=f'w{rounds["w"]}')
            rounds['w'] += 1

    def catch_up(rest):
        for _ in range(12):     # enough rounds to drain closed shards and read children
            records, _, rest = run_rounds(fn, rest, rounds=5, stream=stream)
            read.extend(records)
        return rest

    write(3)
    rest = catch_up(rest)
    (parent,) = [s.shard_id for s in rest.shards]
    _split(kinesis, stream, parent)
    write(3)
    rest = catch_up(rest)
    children = sorted(s.shard_id for s in rest.shards)
    assert len(children) == 2 and parent not in children
    write(4)    # left unread in the children when they merge
    _merge(kinesis, stream, *children)
    write(3)
    rest = catch_up(rest)

    listing = {s['ShardId']: s for s in kinesis.list_shards(StreamName=stream)['Shards']}
    (merged,) = [sid for sid, s in listing.items() if s.get('AdjacentParentShardId')]
    assert [s.shard_id for s in rest.shards] == [merged]     # still unbounded, on the child
    expected = [f'w{w}:{k}:0' for w in range(rounds['w']) for k in KEYS]
    assert sorted(r.data.decode() for r in read) == sorted(expected), 'a record was lost'
    _check_order(read, listing)


def test_shards_split_away_during_a_round_are_left_to_their_new_restriction():
    stream = FakeStream({'a': ((), [1, 2], False), 'b': ((), [1, 2], False)})
    fn = _ReadShardsFn(lambda: stream, Start(), poll_seconds=0, lag_ms=0, max_records=None)
    fn.setup()
    tracker = ThreadsafeRestrictionTracker(StreamRestrictionTracker(restriction(('a',), ('b',))))
    round_ = fn._read_round('stream', RestrictionTrackerView(tracker), ArrivalWatermarkEstimator())
    first = next(round_).value
    kept, given = tracker.try_split(0.5)          # the runner rebalances mid-round
    records = [first] + [value.value for value in round_]
    assert [(r.shard, r.sequence) for r in records] == [('a', '1'), ('a', '2')]
    assert given == restriction(('b',))
    residual, _ = tracker.deferred_status()        # a goes on; b is the other restriction's
    assert residual == restriction(('a', '2'))._replace(claimed=2)
