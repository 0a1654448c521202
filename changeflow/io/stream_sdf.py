"""The unbounded mode's reader: a splittable DoFn over a stream's shards.

``ReadStream`` lists the stream's shards once on the launcher side of the
job (a ``Create`` of the stream, then a listing DoFn), and hands them to a
splittable DoFn whose **restriction** is a :class:`StreamRestriction`: some
shards, each with the last sequence number read (or where to start), and,
implied, every later shard descended from them through its first parent
(``ParentShardId``). The initial restriction is split into lineage groups
(shards linked as parent and child stay together), one per group, so the
open shards of a stream are read in parallel.

* **Claims.** Each record is claimed (:class:`Claim`, shard and sequence
  number) before it is emitted; a shard that the service says has ended
  (``NextShardIterator`` null) is claimed at its end with the children it
  owns (those whose first parent it is), which join the restriction. A shard
  is read only when none of its parents is still in the restriction, so a
  child follows its parents: after a split, both children follow the one
  parent; after a merge, the child follows both parents when they were in
  one restriction, and follows its first parent otherwise (the other parent
  is read by another restriction at the same time; the watermark then keeps
  the downstream per-connection replay in order, see the README).
* **Self-checkpointing.** After one page per readable shard the DoFn defers
  its remainder (``tracker.defer_remainder``): at once when a page had
  records, after ``poll_seconds`` when every shard was caught up. The runner
  checkpoints the residual restriction (the positions after the last claims)
  with its own state, and resumes from it, on any worker, with an iterator
  ``AFTER_SEQUENCE_NUMBER`` (the DoFn keeps its iterators between calls on
  one worker to spare ``GetShardIterator`` calls).
* **Watermark** (:class:`ArrivalWatermarkEstimator`): per shard, the latest
  arrival time read (``ApproximateArrivalTimestamp``; DynamoDB's
  ``ApproximateCreationDateTime``), or the wall clock when the shard is caught
  up (an idle shard holds nothing back), less ``lag_seconds`` for the
  services' approximate clocks; the restriction's watermark is the least of
  its shards', never moving back. Elements are timestamped with their arrival
  time.

The reader is a :class:`~changeflow.io.kinesis.KinesisShardReader` (or a
subclass: :class:`~changeflow.io.dynamodb_streams.DynamoDBStreamReader` reads
DynamoDB Streams through the same pages) built on the worker in ``setup`` by
``reader_factory``, a picklable callable.

Runner support: Flink and Dataflow run it as an unbounded source with their
own checkpoints. The local runners fire windows and timers only once the
SDF has finished (FACTS.md), so ``max_records`` (for tests) ends the read
after that many records.
"""

import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import WatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from changeflow.io.kinesis import MAX_LIMIT, KinesisShardReader, Start, kinesis_client
from changeflow.io.shards import ShardGraph, ShardPosition, sequence_key
from changeflow.model import SourceRecord

__all__ = ['KinesisReaders', 'ShardRange', 'StreamRestriction', 'Claim', 'STOP',
           'StreamRestrictionTracker',
           'ArrivalWatermarkEstimator', 'ReadStream', 'initial_restriction']

_NAMESPACE = 'changeflow.read_stream'


class KinesisReaders(NamedTuple):
    """A picklable ``reader_factory``: a Kinesis reader on a new boto3 client
    (default credential chain), built on the worker."""
    region: Optional[str] = None
    endpoint_url: Optional[str] = None
    limit: int = MAX_LIMIT
    reads_per_second: float = 5.0

    def __call__(self) -> KinesisShardReader:
        return KinesisShardReader(kinesis_client(self.region, self.endpoint_url),
                                  limit=self.limit, reads_per_second=self.reads_per_second)


class ShardRange(NamedTuple):
    """One shard of a restriction: what is left of it to read."""
    shard_id: str
    after: Optional[str] = None       # last sequence number read; None: nothing read yet
    parents: Tuple[str, ...] = ()
    from_trim_horizon: bool = False   # a child joined at its parent's end: read it whole

    def position(self) -> ShardPosition:
        return ShardPosition(self.after, False, self.parents)


class StreamRestriction(NamedTuple):
    """Shards still to read (sorted by id) and how many records were claimed
    in this restriction (what ``max_records`` counts)."""
    shards: Tuple[ShardRange, ...] = ()
    claimed: int = 0

    def readable(self) -> Tuple[ShardRange, ...]:
        """The shards none of whose parents is still in the restriction."""
        present = {s.shard_id for s in self.shards}
        return tuple(s for s in self.shards if not present.intersection(s.parents))

    def groups(self) -> List['StreamRestriction']:
        """The restriction cut into lineage groups (shards linked as parent and
        child, within it, share a group), sorted by their first shard id."""
        root = {s.shard_id: s.shard_id for s in self.shards}

        def find(shard_id):
            while root[shard_id] != shard_id:
                root[shard_id] = root[root[shard_id]]
                shard_id = root[shard_id]
            return shard_id

        for shard in self.shards:
            for parent in shard.parents:
                if parent in root:
                    root[find(shard.shard_id)] = find(parent)
        groups: Dict[str, List[ShardRange]] = {}
        for shard in self.shards:
            groups.setdefault(find(shard.shard_id), []).append(shard)
        return [StreamRestriction(tuple(g)) for g in sorted(groups.values(),
                                                             key=lambda g: g[0].shard_id)]


class Claim(NamedTuple):
    """A position to claim: a record (``sequence``), or a shard's end
    (``sequence`` None) with the children the shard owns."""
    shard_id: str
    sequence: Optional[str]
    children: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()   # (child id, its parents)


STOP = Claim('', None)   # claimed to end the read here: refused, and nothing is left to resume


def initial_restriction(graph: ShardGraph) -> StreamRestriction:
    """Every shard of a listing, each from the job's start."""
    return StreamRestriction(tuple(
        ShardRange(s.shard_id, None, s.parents) for s in sorted(graph.shards.values())))


class StreamRestrictionTracker(RestrictionTracker):
    """Claims records and shard ends of a :class:`StreamRestriction`.

    ``try_claim`` refuses (False) once the restriction was split for a
    checkpoint or stopped, and for a shard that is not readable in it; it
    raises ValueError for a sequence number not after the shard's position
    (a reader going back). Claiming :data:`STOP` ends the restriction with
    nothing left (the runner's view of a tracker offers only ``try_claim``).
    ``try_split(0)`` is the checkpoint: the primary is
    what was claimed (nothing left), the residual the rest. ``try_split`` with
    a fraction above 0 hands over whole lineage groups (about that fraction of
    them stays), or None when there is a single group.
    """

    def __init__(self, restriction: StreamRestriction):
        self._shards: Dict[str, ShardRange] = {s.shard_id: s for s in restriction.shards}
        self._claimed = restriction.claimed
        self._done = False      # checkpointed or stopped: nothing more is claimed here

    def current_restriction(self) -> StreamRestriction:
        return StreamRestriction(tuple(self._shards[k] for k in sorted(self._shards)),
                                 self._claimed)

    def try_claim(self, claim: Claim) -> bool:
        if self._done:
            return False
        if claim == STOP:
            self._done = True
            self._shards = {}
            return False
        shard = self._shards.get(claim.shard_id)
        if shard is None or set(shard.parents).intersection(self._shards):
            return False
        if claim.sequence is None:
            del self._shards[claim.shard_id]
            for child, parents in claim.children:
                if child not in self._shards:
                    self._shards[child] = ShardRange(child, None, tuple(parents), True)
            return True
        if shard.after is not None and sequence_key(claim.sequence) <= sequence_key(shard.after):
            raise ValueError(f'{claim.shard_id}: sequence {claim.sequence} is not after '
                             f'{shard.after}, the last one claimed')
        self._shards[claim.shard_id] = shard._replace(after=claim.sequence)
        self._claimed += 1
        return True

    def try_split(self, fraction_of_remainder):
        if self._done:
            return None
        rest = self.current_restriction()
        if fraction_of_remainder == 0:
            self._done = True
            self._shards = {}
            return StreamRestriction((), self._claimed), rest._replace(claimed=self._claimed)
        groups = rest.groups()
        keep = max(1, int(round(len(groups) * fraction_of_remainder)))
        if keep >= len(groups):
            return None
        kept = StreamRestriction(tuple(s for g in groups[:keep] for s in g.shards), self._claimed)
        given = StreamRestriction(tuple(s for g in groups[keep:] for s in g.shards))
        self._shards = {s.shard_id: s for s in kept.shards}
        return kept, given

    def check_done(self):
        if self._shards and not self._done:
            raise ValueError(f'shards left unread and not deferred: {sorted(self._shards)}')

    def current_progress(self) -> RestrictionProgress:
        return RestrictionProgress(completed=float(self._claimed),
                                   remaining=float(len(self._shards)))

    def is_bounded(self):
        return False


class ArrivalWatermarkEstimator(WatermarkEstimator):
    """The watermark of a restriction from its shards' arrival times.

    State: ``(watermark in ms or None, ((shard id, mark in ms), ...))``. A
    shard's mark is the latest arrival time read from it, or the wall clock
    when it was caught up (the DoFn subtracts its lag from both); a shard
    not read yet holds the watermark where it is; an ended shard no longer counts and its children
    start at its mark. The watermark is the least mark of the restriction's
    shards (:meth:`advance`), and never moves back.
    """

    def __init__(self, state=None):
        watermark_ms, marks = state or (None, ())
        self._watermark_ms = watermark_ms
        self._marks: Dict[str, int] = dict(marks)

    def observe_timestamp(self, timestamp):
        """Unused: arrival times come through :meth:`arrived` with their shard."""

    def arrived(self, shard_id: str, mark: int) -> None:
        if mark > self._marks.get(shard_id, mark - 1):
            self._marks[shard_id] = mark

    def idle(self, shard_id: str, now_ms: int) -> None:
        """The shard is caught up at ``now_ms`` (the worker's clock)."""
        self.arrived(shard_id, now_ms)

    def ended(self, shard_id: str, children: Iterable[str]) -> None:
        mark = self._marks.pop(shard_id, None)
        if mark is not None:
            for child in children:
                self._marks.setdefault(child, mark)

    def advance(self, shard_ids: Iterable[str]) -> None:
        """Moves the watermark to the least mark of ``shard_ids`` (the
        restriction's shards); a shard without a mark holds it."""
        shard_ids = list(shard_ids)
        if not shard_ids or any(s not in self._marks for s in shard_ids):
            return
        least = min(self._marks[s] for s in shard_ids)
        self._marks = {s: self._marks[s] for s in shard_ids}
        if self._watermark_ms is None or least > self._watermark_ms:
            self._watermark_ms = least

    def current_watermark(self) -> Timestamp:
        if self._watermark_ms is None:
            return MIN_TIMESTAMP
        return Timestamp(micros=self._watermark_ms * 1000)

    def get_estimator_state(self):
        return self._watermark_ms, tuple(sorted(self._marks.items()))


class _Restrictions(RestrictionProvider):
    """Restrictions come with the element: ``(stream, StreamRestriction)``."""

    def initial_restriction(self, element):
        return element[1]

    def create_tracker(self, restriction):
        return StreamRestrictionTracker(restriction)

    def split(self, element, restriction):
        yield from restriction.groups() or [restriction]

    def restriction_size(self, element, restriction):
        return max(1, len(restriction.shards))

    def restriction_coder(self):
        return PickleCoder()

    def truncate(self, element, restriction):
        return None   # draining an unbounded read stops it


class _Watermarks(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element, restriction):
        return None

    def create_watermark_estimator(self, estimator_state):
        return ArrivalWatermarkEstimator(estimator_state)

    def estimator_state_coder(self):
        return PickleCoder()


class _ListShardsFn(beam.DoFn):
    """A stream -> (stream, the initial restriction of all its shards)."""

    def __init__(self, reader_factory):
        self._reader_factory = reader_factory

    def setup(self):
        self._reader = self._reader_factory()

    def process(self, stream):
        stream = self._reader.resolve_stream(stream)   # a DynamoDB table: its stream's ARN
        yield stream, initial_restriction(self._reader.shard_graph(stream))


class _Cursors:
    """The open iterators of one worker, reused when a restriction resumes
    where its cursor stopped."""

    def __init__(self):
        self._open = {}

    def get(self, reader, stream, shard: ShardRange, start: Start):
        cursor = self._open.get((stream, shard.shard_id))
        if cursor is None or cursor.position.sequence != shard.after:
            cursor = reader.open_cursor(stream, shard.shard_id, shard.position(),
                                        Start() if shard.from_trim_horizon else start)
            self._open[(stream, shard.shard_id)] = cursor
        return cursor

    def drop(self, stream, shard_id):
        self._open.pop((stream, shard_id), None)


class _ReadShardsFn(beam.DoFn):
    """(stream, restriction) -> the restriction's records, timestamped at arrival."""

    def __init__(self, reader_factory, start: Start, poll_seconds: float, lag_ms: int,
                 max_records: Optional[int], clock: Callable[[], float] = time.time):
        self._lag_ms = lag_ms
        self._reader_factory = reader_factory
        self._start = start
        self._poll = Duration.of(poll_seconds)
        self._max_records = max_records
        self._clock = clock
        self._counters = {name: Metrics.counter(_NAMESPACE, name) for name in (
            'records', 'pages', 'shards_ended', 'checkpoints', 'idle_polls')}

    def setup(self):
        self._reader = self._reader_factory()
        self._cursors = _Cursors()

    def process(self, element,
                tracker=beam.DoFn.RestrictionParam(_Restrictions()),
                watermark=beam.DoFn.WatermarkEstimatorParam(_Watermarks())):
        yield from self._read_round(element[0], tracker, watermark)

    def _read_round(self, stream, tracker, watermark):
        """One page per readable shard, then the remainder deferred."""
        source = self._reader.begin(stream)
        got_records = False
        for shard in tracker.current_restriction().readable():
            cursor = self._cursors.get(self._reader, stream, shard, self._start)
            page = self._reader.read_page(stream, source, cursor, self._start)
            if page is None:       # throttled or renewed: next time
                continue
            self._counters['pages'].inc()
            refused = False
            for record in page.records:
                if not tracker.try_claim(Claim(shard.shard_id, record.sequence)):
                    refused = True
                    break
                watermark.arrived(shard.shard_id, record.arrival_ms - self._lag_ms)
                self._counters['records'].inc()
                yield TimestampedValue(record, record.arrival_ms / 1000)
                if self._max_records and tracker.current_restriction().claimed >= self._max_records:
                    tracker.try_claim(STOP)
                    return
            got_records = got_records or bool(page.records)
            if page.drained and not refused:
                children = self._children(stream, shard.shard_id)
                refused = not tracker.try_claim(Claim(shard.shard_id, None, children))
            if refused:
                # Checkpointed by the runner (nothing left here), or the shard
                # went to another restriction in a split: that one reads it.
                self._cursors.drop(stream, shard.shard_id)
                if not tracker.current_restriction().shards:
                    return
                continue
            if page.drained:
                self._cursors.drop(stream, shard.shard_id)
                watermark.ended(shard.shard_id, [c for c, _ in children])
                self._counters['shards_ended'].inc()
            elif page.caught_up:
                watermark.idle(shard.shard_id, int(self._clock() * 1000) - self._lag_ms)
        rest = tracker.current_restriction()
        watermark.advance(s.shard_id for s in rest.shards)
        if not rest.shards:
            return              # every shard ended: the stream is read
        if not got_records:
            self._counters['idle_polls'].inc()
        self._counters['checkpoints'].inc()
        tracker.defer_remainder(Duration() if got_records else self._poll)

    def _children(self, stream, shard_id) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
        """The children ``shard_id`` owns: those whose first parent it is."""
        graph = self._reader.shard_graph(stream)
        return tuple((child, graph.shards[child].parents) for child in graph.children(shard_id)
                     if graph.shards[child].parents[0] == shard_id)


class ReadStream(beam.PTransform):
    """``p | ReadStream(stream, reader_factory)``: the unbounded read of a
    Kinesis stream (or, with a DynamoDB Streams reader, a DynamoDB stream).

    Args:
        stream: the stream's name or ARN.
        reader_factory: a picklable callable returning a
            :class:`~changeflow.io.kinesis.KinesisShardReader` (called in each
            worker's ``setup``).
        start: where shards start that have no parent read here;
            ``latest`` is fixed when the shards are listed.
        poll_seconds: the pause of a restriction whose shards are all caught up.
        lag_seconds: how far behind arrival times (and the clock, when idle)
            the watermark stays.
        max_records: for tests: end each restriction after this many records.

    Returns a PCollection of SourceRecords, as ReadKinesisToTip's, each
    timestamped with its arrival time. Metrics (namespace
    ``changeflow.read_stream``): records, pages, shards_ended, checkpoints,
    idle_polls.
    """

    def __init__(self, stream: str, reader_factory, start: Start = Start(),
                 poll_seconds: float = 1.0, lag_seconds: float = 2.0,
                 max_records: Optional[int] = None):
        super().__init__()
        if not stream:
            raise ValueError(f'ReadStream needs a stream, got {stream!r}')
        if poll_seconds < 0 or lag_seconds < 0:
            raise ValueError(f'poll_seconds and lag_seconds must be >= 0, got '
                             f'{poll_seconds!r}, {lag_seconds!r}')
        if max_records is not None and max_records < 1:
            raise ValueError(f'max_records must be positive, got {max_records!r}')
        self._stream = stream
        self._reader_factory = reader_factory
        self._start = start
        self._poll = poll_seconds
        self._lag_ms = int(lag_seconds * 1000)
        self._max_records = max_records

    def expand(self, pbegin):
        start = self._start.resolved(int(time.time() * 1000))   # launcher's clock, once
        fn = _ReadShardsFn(self._reader_factory, start, self._poll, self._lag_ms,
                           self._max_records)
        return (pbegin
                | 'Stream' >> beam.Create([self._stream])
                | 'ListShards' >> beam.ParDo(_ListShardsFn(self._reader_factory))
                | 'ReadShards' >> beam.ParDo(fn).with_output_types(SourceRecord))
