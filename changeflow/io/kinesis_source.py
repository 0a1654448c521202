"""The catch-up mode of a sharded stream source (Kinesis, DynamoDB Streams):
a bounded read to the tip, and the checkpoint commit that ends the cycle.

:class:`ReadStreamToTip` takes the service's readers (:class:`KinesisReaders`,
:class:`~changeflow.io.dynamodb_streams.DynamoDBStreamReaders`);
:class:`ReadKinesisToTip` is it for Kinesis. What follows says Kinesis; a
DynamoDB stream's records are its Lambda-shaped JSON instead of gzip bytes.

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
the local runners run one worker anyway (FACTS.md). Its calls to the shards
due go out together (threads), so a cycle's read takes about one round trip
per page whatever the number of shards. On Flink and Dataflow the
unbounded mode (issue 7) reads shards in parallel.

Beam's own KinesisIO is a Java cross-language transform (its jars cannot be
fetched here, and it does not run on the local runners): this is boto3.
"""

import time
from typing import Callable, Optional, Sequence

import apache_beam as beam
from apache_beam import pvalue, window
from apache_beam.metrics import Metrics

from changeflow.io.checkpoints import CheckpointStore
from changeflow.io.kinesis import (
    MAX_LIMIT, KinesisShardReader, Start, shared_kinesis_client, stream_name)
from changeflow.model import DEAD_LETTER_TAG, SourceRecord

__all__ = ['ReadStreamToTip', 'ReadKinesisToTip', 'KinesisReaders', 'CommitCheckpoints']

_NAMESPACE = 'changeflow.read_kinesis'


class KinesisReaders:
    """What :class:`ReadStreamToTip` needs of a service, for Kinesis: made on
    the launcher, pickled to the workers, which call :meth:`setup` once and
    :meth:`reader` per cycle (a reader's counters are one cycle's).

    Another service (:class:`~changeflow.io.dynamodb_streams.DynamoDBStreamReaders`)
    gives the same four members.
    """

    namespace = _NAMESPACE

    def __init__(self, region: Optional[str] = None, endpoint_url: Optional[str] = None,
                 limit: int = MAX_LIMIT, reads_per_second: float = 5.0):
        self._region = region
        self._endpoint_url = endpoint_url
        self._limit = limit
        self._reads_per_second = reads_per_second
        self._client = None

    def setup(self) -> None:
        self._client = shared_kinesis_client(self._region, self._endpoint_url)

    def stream(self, stream: str) -> str:
        """The stream as the reader's calls take it (a name or ARN as given)."""
        return stream

    def reader(self) -> KinesisShardReader:
        return KinesisShardReader(self._client, limit=self._limit,
                                  reads_per_second=self._reads_per_second)


class _ReadToTipFn(beam.DoFn):
    """A stream -> its records from the checkpoints to the tip, then (tag END)
    one ``(shard id, ShardPosition)`` per shard read and (tag CYCLE) the cycle:
    the state loaded with the positions, when the read began."""

    def __init__(self, store_url: str, job: str, key: str, start: Start, readers):
        self._store_url = store_url
        self._job = job
        self._key = key
        self._start = start
        self._readers = readers
        self._counters = {name: Metrics.counter(readers.namespace, name) for name in (
            'records', 'shards_read', 'shards_finished', 'throttled', 'iterators_renewed')}

    def setup(self):
        self._readers.setup()
        self._store = CheckpointStore(self._store_url)

    def process(self, stream: str):
        read_started_ms = time.time_ns() // 1_000_000
        checkpoint = self._store.load(self._job, self._key)
        start = self._start
        if start.kind == 'latest':  # the same point in every cycle (Start's docstring)
            start = Start('at_timestamp', self._store.start_time_ms(
                self._job, self._key, time.time_ns() // 1_000_000))
        reader = self._readers.reader()
        ends = {}
        for batch in reader.read_to_tip(self._readers.stream(stream), checkpoint.positions,
                                        start):
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
            yield pvalue.TaggedOutput(ReadStreamToTip.END, (shard_id, position))
        yield pvalue.TaggedOutput(ReadStreamToTip.CYCLE, {
            'state': checkpoint.state, 'read_started_ms': read_started_ms})

    def _lag(self, shard_id: str, millis_behind: Optional[int]):
        if millis_behind is not None:
            Metrics.gauge(self._readers.namespace, f'millis_behind/{shard_id}').set(millis_behind)

    def teardown(self):
        self._store.engine.dispose()


class ReadStreamToTip(beam.PTransform):
    """One catch-up cycle's read of a sharded stream (Kinesis, DynamoDB
    Streams): ``p | ReadStreamToTip(stream, url, job, key, readers=...)``.

    Args:
        stream: the stream as ``readers.stream`` takes it (a Kinesis stream's
            name or ARN; a DynamoDB table's name or stream ARN).
        store_url: the checkpoint store (:class:`CheckpointStore`) to resume from.
        job: the job name the checkpoints are kept under.
        key: the stream's name in the store (with ``job``).
        start: where shards without a checkpoint start. ``latest`` is fixed at
            the job's first cycle (in the store, by the worker's clock) and read
            as that ``at_timestamp`` ever after, so a shard that gets its first
            record between two cycles is read from that record on.
        readers: the service's clients and reader (:class:`KinesisReaders`).

    Returns a DoOutputsTuple: ``MAIN`` (``'records'``, as ReadArchive's) the
    SourceRecords; ``END`` one ``(shard id, ShardPosition)`` per shard read in
    the cycle, for :class:`CommitCheckpoints`; ``CYCLE`` one dict: ``state``,
    the state committed with the positions read from (None before the first
    commit), and ``read_started_ms``, when the read began (epoch ms, the
    worker's clock: every record that arrived before it is read by this
    cycle or an earlier one); ``DEAD_LETTER_TAG``, declared
    so the reader stands in for ReadArchive, stays empty: records are taken
    as the service holds them and the decode step judges their bytes.

    A half-read shard that expired from the stream fails the job
    (:class:`~changeflow.io.kinesis.ShardsLost`), as does a checkpoint past
    DynamoDB's trim horizon (:class:`~changeflow.io.dynamodb_streams.TrimmedData`):
    records were lost. Metrics (namespace ``readers.namespace``): records,
    shards_read, shards_finished, throttled, iterators_renewed; a gauge per
    shard, ``millis_behind/<shard id>`` (its last MillisBehindLatest).
    """

    MAIN = 'records'
    END = 'end_positions'
    CYCLE = 'cycle'

    def __init__(self, stream: str, store_url: str, job: str, key: str, start: Start = Start(),
                 readers=None):
        super().__init__()
        if not stream or not store_url or not job or not key or readers is None:
            raise ValueError(f'{type(self).__name__} needs a stream, a store URL, a job name, '
                             f'a checkpoint key and readers, got {stream!r}, {store_url!r}, '
                             f'{job!r}, {key!r}, {readers!r}')
        self._stream = stream
        self._fn = _ReadToTipFn(store_url, job, key, start, readers)

    def expand(self, pbegin):
        return (pbegin
                | 'Stream' >> beam.Create([self._stream])
                | 'ReadToTip' >> beam.ParDo(self._fn).with_output_types(SourceRecord)
                .with_outputs(self.END, self.CYCLE, DEAD_LETTER_TAG, main=self.MAIN))


_KEEP = object()  # no new state: the stored one is committed again


class ReadKinesisToTip(ReadStreamToTip):
    """One catch-up cycle's read of a Kinesis stream: ``p | ReadKinesisToTip(...)``.

    Args:
        stream: the stream's name or ARN (checkpoints are keyed by its name).
        store_url, job, start: as :class:`ReadStreamToTip`'s.
        region, endpoint_url: for the boto3 client (default credential chain).
        limit, reads_per_second: records per GetRecords call, calls per shard
            and second (see :class:`KinesisShardReader`).

    Outputs and metrics (namespace ``changeflow.read_kinesis``) as
    :class:`ReadStreamToTip`'s.
    """

    def __init__(self, stream: str, store_url: str, job: str, start: Start = Start(),
                 region: Optional[str] = None, endpoint_url: Optional[str] = None,
                 limit: int = MAX_LIMIT, reads_per_second: float = 5.0):
        super().__init__(stream, store_url, job, stream_name(stream) if stream else stream,
                         start, KinesisReaders(region, endpoint_url, limit, reads_per_second))

    @classmethod
    def from_config(cls, config) -> 'ReadKinesisToTip':
        """The reader of a JobConfig whose source is a KinesisSourceConfig."""
        source = config.source
        return cls(source.stream, config.checkpoints_url, config.job, source.start,
                   source.region, source.endpoint_url)


class _CommitFn(beam.DoFn):
    """Once per cycle: all end positions of the cycle (a side input) ->
    committed, with the new state when there is one; every sink's output
    arrives as a side input too, so this runs after them."""

    def __init__(self, store_url: str, job: str, stream: str, namespace: str,
                 fold_state: Optional[Callable] = None):
        self._store_url = store_url
        self._job = job
        self._stream = stream
        self._fold_state = fold_state
        self._committed = Metrics.counter(namespace, 'shards_committed')
        self._commits = Metrics.counter(namespace, 'checkpoints_committed')

    def setup(self):
        self._store = CheckpointStore(self._store_url)

    def process(self, unused_impulse, ends, *sinks_written, state=_KEEP):
        positions = dict(ends)
        stored = self._store.load(self._job, self._stream).state
        if state is _KEEP:
            state = stored
        elif self._fold_state is not None:
            state = self._fold_state(list(state))
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
    ``read[ReadStreamToTip.END] | CommitCheckpoints(url, job, key, sinks_done)``.

    Args:
        store_url, job: as given to the read.
        stream: the read's checkpoint key; a Kinesis stream's ARN is taken
            for its name.
        sinks_done: every sink's output PCollection (what it wrote, emitted
            after writing). The commit takes each as a side input: a runner
            starts a step only when its side inputs are complete, so the
            commit follows the last write of every sink.
        state: a PCollection of one JSON value, the state to commit with the
            positions (what the next cycle's CYCLE output returns), computed
            from the cycle's data; None keeps the stored state.
        fold_state: when given, ``state`` holds any number of parts and the
            state committed is ``fold_state(list of the parts)`` (a JSON value).

    The end positions, the sinks' outputs and the state reach the commit as
    side inputs of one impulse, not through combines: each combine is two
    more stages to set up in every cycle of ``--follow``.

    Returns a PCollection of one dict shard id -> ShardPosition (what was
    committed), or none when the cycle read nothing and left the state as it
    was: then nothing is committed. A commit that would move a shard back
    (another run of the job committed further) fails the job with
    :class:`~changeflow.io.checkpoints.CheckpointConflict`. Metrics
    ``NAMESPACE/shards_committed`` and ``checkpoints_committed`` (the read's
    namespace, by default ``changeflow.read_kinesis``).
    """

    def __init__(self, store_url: str, job: str, stream: str,
                 sinks_done: Sequence[beam.PCollection] = (), namespace: str = _NAMESPACE,
                 state=None, fold_state: Optional[Callable] = None):
        super().__init__()
        if fold_state is not None and state is None:
            raise ValueError('fold_state needs a state PCollection')
        self._fn = _CommitFn(store_url, job, stream_name(stream), namespace, fold_state)
        self._sinks_done = tuple(sinks_done)
        self._state = state
        self._fold = fold_state is not None

    def expand(self, end_positions):
        def everything(pcoll, label):  # all of it, whatever windows it was written in
            return pcoll | f'{label}AllWindows' >> beam.WindowInto(window.GlobalWindows())

        done = [beam.pvalue.AsIter(
            everything(written, f'Sink{i}') | f'Sink{i}Done' >> beam.Map(lambda _: None))
            for i, written in enumerate(self._sinks_done)]
        side = {}
        if self._state is not None:
            state = everything(self._state, 'State')
            side['state'] = (beam.pvalue.AsList(state) if self._fold
                             else beam.pvalue.AsSingleton(state))
        return (end_positions.pipeline
                | 'Once' >> beam.Impulse()
                | 'Commit' >> beam.ParDo(
                    self._fn, beam.pvalue.AsList(everything(end_positions, 'Ends')),
                    *done, **side))
