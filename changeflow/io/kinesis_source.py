"""The catch-up mode of a Kinesis source: a bounded read to the tip, and the
checkpoint commit that ends the cycle.

A cycle reads every shard of the stream from its checkpoint (or the job's
``start``) to the current tip, parents before children
(:meth:`KinesisShardReader.read_to_tip`), and emits each Kinesis record as the
:class:`~changeflow.model.SourceRecord` that ReadArchive emits for a Kinesis
archive (``data`` the gzip bytes, ``position`` stream/shard/sequence), so the
rest of the job is the archive job's. Its second output is the position each
shard reached. :class:`CommitCheckpoints` writes those positions only after
every sink's output is complete: a crash before replays the cycle into the
idempotent sinks; the checkpoints never get ahead of what the sinks hold.

One DoFn reads all shards of a cycle: the reader loop keeps the lineage order
(a child after all its parents) and the per-shard read rate across shards, and
the local runners run one worker anyway (FACTS.md). On Flink and Dataflow the
unbounded mode (issue 7) reads shards in parallel.

Beam's own KinesisIO is a Java cross-language transform (its jars cannot be
fetched here, and it does not run on the local runners): this is boto3.
"""

import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam import pvalue, window
from apache_beam.metrics import Metrics

from changeflow.io.checkpoints import CheckpointStore
from changeflow.io.kinesis import MAX_LIMIT, KinesisShardReader, Start, kinesis_client, stream_name
from changeflow.model import DEAD_LETTER_TAG, SourceRecord

__all__ = ['ReadKinesisToTip', 'CommitCheckpoints']

_NAMESPACE = 'changeflow.read_kinesis'


class _ReadToTipFn(beam.DoFn):
    """A stream (name or ARN) -> its records from the checkpoints to the tip,
    then (tag END) one ``(shard id, ShardPosition)`` per shard read and (tag
    CYCLE) the cycle: the state loaded with the positions, when the read began."""

    def __init__(self, store_url: str, job: str, start: Start, region: Optional[str],
                 endpoint_url: Optional[str], limit: int, reads_per_second: float):
        self._store_url = store_url
        self._job = job
        self._start = start
        self._region = region
        self._endpoint_url = endpoint_url
        self._limit = limit
        self._reads_per_second = reads_per_second
        self._counters = {name: Metrics.counter(_NAMESPACE, name) for name in (
            'records', 'shards_read', 'shards_finished', 'throttled', 'iterators_renewed')}

    def setup(self):
        self._client = kinesis_client(self._region, self._endpoint_url)
        self._store = CheckpointStore(self._store_url)

    def process(self, stream: str):
        name = stream_name(stream)
        read_started_ms = time.time_ns() // 1_000_000
        checkpoint = self._store.load(self._job, name)
        start = self._start
        if start.kind == 'latest':  # the same point in every cycle (Start's docstring)
            start = Start('at_timestamp', self._store.start_time_ms(
                self._job, name, time.time_ns() // 1_000_000))
        reader = KinesisShardReader(self._client, limit=self._limit,
                                    reads_per_second=self._reads_per_second)
        ends = {}
        for batch in reader.read_to_tip(stream, checkpoint.positions, start):
            ends[batch.shard_id] = batch.position
            self._lag(batch.shard_id, batch.millis_behind)
            self._counters['records'].inc(len(batch.records))
            yield from batch.records
        self._counters['shards_read'].inc(len(ends))
        self._counters['shards_finished'].inc(sum(p.finished for p in ends.values()))
        self._counters['throttled'].inc(reader.throttled)
        self._counters['iterators_renewed'].inc(reader.renewed)
        for shard_id, lag in reader.lag.items():
            self._lag(shard_id, lag)
        for shard_id, position in sorted(ends.items()):
            yield pvalue.TaggedOutput(ReadKinesisToTip.END, (shard_id, position))
        yield pvalue.TaggedOutput(ReadKinesisToTip.CYCLE, {
            'state': checkpoint.state, 'read_started_ms': read_started_ms})

    def _lag(self, shard_id: str, millis_behind: Optional[int]):
        if millis_behind is not None:
            Metrics.gauge(_NAMESPACE, f'millis_behind/{shard_id}').set(millis_behind)

    def teardown(self):
        self._store.engine.dispose()


class ReadKinesisToTip(beam.PTransform):
    """One catch-up cycle's read of a Kinesis stream: ``p | ReadKinesisToTip(...)``.

    Args:
        stream: the stream's name or ARN.
        store_url: the checkpoint store (:class:`CheckpointStore`) to resume from.
        job: the job name the checkpoints are kept under (with the stream's name).
        start: where shards without a checkpoint start. ``latest`` is fixed at
            the job's first cycle (in the store, by the worker's clock) and read
            as that ``at_timestamp`` ever after, so a shard that gets its first
            record between two cycles is read from that record on.
        region, endpoint_url: for the boto3 client (default credential chain).
        limit, reads_per_second: records per GetRecords call, calls per shard
            and second (see :class:`KinesisShardReader`).

    Returns a DoOutputsTuple: ``MAIN`` (``'records'``, as ReadArchive's) the
    SourceRecords; ``END`` one ``(shard id, ShardPosition)`` per shard read in
    the cycle, for :class:`CommitCheckpoints`; ``CYCLE`` one dict: ``state``,
    the state committed with the positions read from (None before the first
    commit), and ``read_started_ms``, when the read began (epoch ms, the
    worker's clock: every record that arrived before it is read by this
    cycle or an earlier one); ``DEAD_LETTER_TAG``, declared
    so the reader stands in for ReadArchive, stays empty: records are taken
    as Kinesis holds them and the decode step judges their bytes.

    A half-read shard that expired from the stream fails the job
    (:class:`~changeflow.io.kinesis.ShardsLost`): its records are lost.
    Metrics (namespace ``changeflow.read_kinesis``): records, shards_read,
    shards_finished, throttled, iterators_renewed; a gauge per shard,
    ``millis_behind/<shard id>`` (its last MillisBehindLatest).
    """

    MAIN = 'records'
    END = 'end_positions'
    CYCLE = 'cycle'

    def __init__(self, stream: str, store_url: str, job: str, start: Start = Start(),
                 region: Optional[str] = None, endpoint_url: Optional[str] = None,
                 limit: int = MAX_LIMIT, reads_per_second: float = 5.0):
        super().__init__()
        if not stream or not store_url or not job:
            raise ValueError(f'ReadKinesisToTip needs a stream, a store URL and a job name, '
                             f'got {stream!r}, {store_url!r}, {job!r}')
        self._stream = stream
        self._fn = _ReadToTipFn(store_url, job, start, region, endpoint_url, limit,
                                reads_per_second)

    @classmethod
    def from_config(cls, config) -> 'ReadKinesisToTip':
        """The reader of a JobConfig whose source is a KinesisSourceConfig."""
        source = config.source
        return cls(source.stream, config.checkpoints_url, config.job, source.start,
                   source.region, source.endpoint_url)

    def expand(self, pbegin):
        return (pbegin
                | 'Stream' >> beam.Create([self._stream])
                | 'ReadToTip' >> beam.ParDo(self._fn).with_output_types(SourceRecord)
                .with_outputs(self.END, self.CYCLE, DEAD_LETTER_TAG, main=self.MAIN))


_KEEP = object()  # no new state: the stored one is committed again


class _CommitFn(beam.DoFn):
    """All end positions of the cycle (one list) -> committed, with the new
    state when there is one; the sinks' completion counts arrive as side
    inputs, so this runs after them."""

    def __init__(self, store_url: str, job: str, stream: str):
        self._store_url = store_url
        self._job = job
        self._stream = stream
        self._committed = Metrics.counter(_NAMESPACE, 'shards_committed')
        self._commits = Metrics.counter(_NAMESPACE, 'checkpoints_committed')

    def setup(self):
        self._store = CheckpointStore(self._store_url)

    def process(self, ends, *sinks_written, state=_KEEP):
        positions = dict(ends)
        stored = self._store.load(self._job, self._stream).state
        if state is _KEEP:
            state = stored
        if not positions and state == stored:  # nothing new: the checkpoints stay as they are
            return
        self._store.commit(self._job, self._stream, positions, state)
        self._committed.inc(len(positions))
        self._commits.inc()
        yield positions

    def teardown(self):
        self._store.engine.dispose()


class CommitCheckpoints(beam.PTransform):
    """Commits a cycle's end positions once every sink is done:
    ``read[ReadKinesisToTip.END] | CommitCheckpoints(url, job, stream, sinks_done)``.

    Args:
        store_url, job: as given to ReadKinesisToTip.
        stream: the stream's name or ARN (checkpoints are keyed by its name).
        sinks_done: every sink's output PCollection (what it wrote, emitted
            after writing). The commit takes each, counted, as a side input: a
            runner starts a step only when its side inputs are complete, so the
            commit follows the last write of every sink.
        state: a PCollection of one JSON value, the state to commit with the
            positions (what the next cycle's CYCLE output returns), computed
            from the cycle's data; None keeps the stored state.

    Returns a PCollection of one dict shard id -> ShardPosition (what was
    committed), or none when the cycle read nothing and left the state as it
    was: then nothing is committed. A commit that would move a shard back
    (another run of the job committed further) fails the job with
    :class:`~changeflow.io.checkpoints.CheckpointConflict`. Metrics
    ``changeflow.read_kinesis/shards_committed``, ``checkpoints_committed``.
    """

    def __init__(self, store_url: str, job: str, stream: str,
                 sinks_done: Sequence[beam.PCollection] = (), state=None):
        super().__init__()
        self._fn = _CommitFn(store_url, job, stream_name(stream))
        self._sinks_done = tuple(sinks_done)
        self._state = state

    def expand(self, end_positions):
        done = [beam.pvalue.AsSingleton(
            written
            | f'Sink{i}AllWindows' >> beam.WindowInto(window.GlobalWindows())
            | f'Sink{i}Done' >> beam.combiners.Count.Globally())
            for i, written in enumerate(self._sinks_done)]
        side = {} if self._state is None else {'state': beam.pvalue.AsSingleton(self._state)}
        return (end_positions
                | 'AllEnds' >> beam.combiners.ToList()
                | 'Commit' >> beam.ParDo(self._fn, *done, **side))
