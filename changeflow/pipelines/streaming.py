"""The unbounded job: a live Kinesis stream to the same sinks, for Flink and Dataflow.

    python -m changeflow.pipelines.audit_sync --config job.yaml --streaming [Beam flags]
    changeflow run job.yaml --streaming [Beam flags]

How a stream run batches, and where its state lives (the runner's
checkpoints hold all of it; nothing is kept in the checkpoint store):

1. ``ReadStream`` (:mod:`changeflow.io.stream_sdf`): a splittable DoFn per
   lineage group of shards; its restriction (each shard's last sequence
   number) and watermark state are the runner's. Records are timestamped
   with their arrival time.
2. Each record is decoded and parsed as one element into a run per
   connection (:class:`~changeflow.transforms.connections.ParseToConnectionRuns`).
3. Per connection ``(serverhost, connection id)``, a stateful DoFn in the
   global window buffers the runs (bag state) until the watermark passes
   their arrival time plus ``reorder_seconds`` (an event-time timer), then
   replays the ready runs in statement order through the connection's
   :class:`~changeflow.transforms.transactions.TransactionTracker`, kept in
   state between firings: a transaction open across firings stays open, its
   statements in state, until its COMMIT or ROLLBACK arrives.
4. The committed changes, per (table, shard), are windowed in fixed windows
   of ``window.seconds`` and coalesced per shard and window
   (:class:`~changeflow.transforms.shard_batches.FoldShards`).
5. The database takes one coalesced Change per row and window, Parquet and
   notifications one Change per source op (the fold's log batches), each
   branch isolated (:class:`~changeflow.transforms.route.RouteChanges`): the database through
   the stateful :class:`~changeflow.io.sql.WriteToDatabase` (per (table,
   shard) bag state across windows, flushed in version order when the
   watermark passes a window), Parquet one file set per partition and
   window, notifications per Change; dead letters per window.

Every state key has a deterministic coder (typed ``Tuple[str, int]`` keys).
The DDL of the log is not followed in this mode: with a ``schema`` in the
configuration (which the catch-up job follows), each committed DDL statement
is a dead letter (``ddl-not-followed``).
"""

from typing import Any, Sequence, Tuple

import apache_beam as beam
from apache_beam import typehints, window
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import userstate

from changeflow.config import JobConfig, TableSpec
from changeflow.io.dead_letter import WriteDeadLetters
from changeflow.io.notify import WriteNotifications
from changeflow.io.parquet import WriteParquetBackup
from changeflow.io.sql import DEFAULT_SHARDS, WriteToDatabase
from changeflow.io.stream_sdf import KinesisReaders, ReadStream
from changeflow.model import DEAD_LETTER_TAG, dead_letter
from changeflow.pipelines.branches import HANDLERS, job_handlers
from changeflow.sql.literals import DEFAULT_SERVER_VERSION
from changeflow.transforms.connections import (
    DDL, RUNS, ParseToConnectionRuns, ReplayConnectionFn, runs_original, runs_position)
from changeflow.transforms.guard import guarded
from changeflow.transforms.hold import hold, hold_specs, take_due
from changeflow.transforms.route import DATABASE, NOTIFY, PARQUET, RouteChanges
from changeflow.transforms.runs import SHARD_KEY, batch_changes, typed_keys
from changeflow.transforms.shard_batches import FoldShards
from changeflow.transforms.transactions import TransactionTracker, unresolved_letters

__all__ = ['build_streaming_pipeline', 'ReplayConnectionStreams', 'StreamingOptions']

_PENDING, _DUE, _RELEASE = hold_specs('connection')    # a connection's runs, until the watermark passes
_TRACKER = userstate.ReadModifyWriteStateSpec('tracker', PickleCoder())


@guarded('transactions', runs_original, runs_position, buffered=False)
class _ReplayStreamFn(ReplayConnectionFn):
    """A connection's runs, held until the watermark passes them, replayed
    in order through the connection's tracker kept in state."""

    def __init__(self, *args, reorder_us: int):
        super().__init__(*args)
        self._reorder_us = reorder_us

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                pending=beam.DoFn.StateParam(_PENDING), due=beam.DoFn.StateParam(_DUE),
                release=beam.DoFn.TimerParam(_RELEASE)):
        hold(pending, due, release, timestamp.micros + self._reorder_us, element[1])

    @userstate.on_timer(_RELEASE)
    def release_due(self, fired=beam.DoFn.TimestampParam, connection=beam.DoFn.KeyParam,
                    pending=beam.DoFn.StateParam(_PENDING), due=beam.DoFn.StateParam(_DUE),
                    release=beam.DoFn.TimerParam(_RELEASE),
                    tracker_state=beam.DoFn.StateParam(_TRACKER)):
        """Every run due by ``fired`` has arrived: replay them; keep the rest."""
        ready = take_due(pending, due, release, fired.micros)
        tracker = tracker_state.read() or TransactionTracker(*connection, *self._tracker_args)
        yield from self.replay(tracker, ready)
        yield from unresolved_letters(tracker, self._counters['unresolved'])
        tracker.unresolved.clear()
        tracker_state.write(tracker)


class ReplayConnectionStreams(beam.PTransform):
    """``RUNS`` of ParseToConnectionRuns, unbounded -> ((table, shard), run of
    row changes), timestamped when released, and DEAD_LETTER_TAG.

    Per connection, runs wait in state until the watermark passes their
    arrival time plus ``reorder_seconds`` (an allowed lateness: with the
    subscription filter's ``Random`` distribution a connection's records
    reach several shards, and this is how late one may come and still be
    replayed in order); then they are merged in statement order and fed to
    the connection's TransactionTracker, which stays in state with its open
    transaction. A run later than that is replayed when it comes, after the
    statements released before it (the tracker then sees it out of order).
    """

    def __init__(self, tables: Sequence[TableSpec], schema=None, *, autocommit: bool = True,
                 server_version: int = DEFAULT_SERVER_VERSION, rollback_on_timeout: bool = False,
                 time_zone: str = '+00:00', num_shards: int = DEFAULT_SHARDS,
                 reorder_seconds: float = 0.0):
        super().__init__()
        if reorder_seconds < 0:
            raise ValueError(f'reorder_seconds must be >= 0, got {reorder_seconds!r}')
        self._fn = _ReplayStreamFn(autocommit, server_version, rollback_on_timeout, tables,
                                   schema, time_zone, num_shards,
                                   reorder_us=int(reorder_seconds * 1e6))

    def expand(self, runs):
        return (runs
                | 'AcrossWindows' >> beam.WindowInto(window.GlobalWindows())
                | 'KeyTyped' >> typed_keys()
                | 'ReplayInOrder' >> beam.ParDo(self._fn).with_output_types(
                    typehints.Tuple[SHARD_KEY, typehints.Any])
                .with_outputs(DEAD_LETTER_TAG, main='changes'))


_ddl_letters = Metrics.counter('changeflow.streaming', 'ddl_not_followed')


def _ddl_letter(ddl: Tuple[Any, str, str]):
    position, database, sql = ddl
    _ddl_letters.inc()
    return dead_letter('streaming', 'ddl-not-followed',
                       f'the streaming job does not follow DDL ({database}); the replica keeps '
                       f'its schema', sql, str(position))


def _shard_changes(batch):
    """A shard batch's Changes; a whole-table change from shard 0 only (the
    database sink sends it to every shard itself)."""
    _, shard, _ = batch
    for change in batch_changes(batch):
        if change.key or shard == 0:
            yield change


class StreamingOptions(PipelineOptions):
    """The unbounded job's flags (with Beam's ``--streaming``, which selects it)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            '--reorder_seconds', type=float, default=0.0,
            help='with --streaming: how long past its arrival a connection\'s record waits '
                 'for earlier ones from other shards before it is replayed (default 0)')
        parser.add_argument(
            '--stream_max_records', type=int, default=None,
            help='with --streaming, for tests: end the read of each group of shards after '
                 'this many records (the local runners fire windows only at the end)')


def build_streaming_pipeline(p: beam.Pipeline, config: JobConfig, handlers=None) -> dict:
    """Adds the unbounded job to ``p`` (its :class:`StreamingOptions` from
    ``p.options``); returns its main PCollections by name. ``handlers``: a
    :class:`changeflow.handlers.Handlers` registry run besides the config's."""
    flags = p.options.view_as(StreamingOptions)
    max_records, reorder_seconds = flags.stream_max_records, flags.reorder_seconds
    source = config.source
    if source.type != 'kinesis':
        raise ValueError(f'--streaming needs a kinesis source, not {source.type!r}')
    window_seconds = config.window_seconds
    records = p | 'ReadStream' >> ReadStream(
        source.stream, KinesisReaders(source.region, source.endpoint_url), source.start,
        max_records=max_records)
    parsed = records | 'ParseRecords' >> ParseToConnectionRuns(
        config.query_log_limit, config.server_version)
    dead_letters = [parsed[DEAD_LETTER_TAG]]
    if config.schema is not None:  # the catch-up job would follow the DDL: say it is not
        dead_letters.append(parsed[DDL] | 'DDLNotFollowed' >> beam.Map(_ddl_letter))
    replayed = parsed[RUNS] | 'Replay' >> ReplayConnectionStreams(
        config.tables, config.schema, autocommit=config.autocommit,
        server_version=config.server_version, rollback_on_timeout=config.rollback_on_timeout,
        time_zone=config.time_zone, reorder_seconds=reorder_seconds)
    dead_letters.append(replayed[DEAD_LETTER_TAG])
    windows = window.FixedWindows(window_seconds)
    windowed = replayed['changes'] | 'Window' >> beam.WindowInto(windows)
    folded = windowed | 'Coalesce' >> FoldShards()
    dead_letters.append(folded[DEAD_LETTER_TAG])
    changes = folded[FoldShards.MAIN] | 'ShardChanges' >> beam.FlatMap(_shard_changes)
    # The replica takes the coalesced changes; the change-log sinks each source op.
    source_ops = folded[FoldShards.LOG] | 'SourceOps' >> beam.FlatMap(batch_changes)
    routed = {}
    for label, pcoll, names in (('Route', changes, [DATABASE] if config.database_url else []),
                                ('RouteLog', source_ops, [name for name, on in (
                                    (PARQUET, config.parquet_path),
                                    (NOTIFY, config.notify)) if on])):
        if names:
            branch = pcoll | label >> RouteChanges(names)
            dead_letters.append(branch[DEAD_LETTER_TAG])
            routed.update({name: branch[name] for name in names})
    outputs = {'changes': changes}
    if config.database_url:
        written = routed[DATABASE] | 'WriteDatabase' >> WriteToDatabase(
            config.database_url, config.tables, batch_size=config.database_batch_size)
        dead_letters.append(written[DEAD_LETTER_TAG])
        outputs[DATABASE] = written[WriteToDatabase.MAIN]
    if config.parquet_path:
        written = routed[PARQUET] | 'WriteParquet' >> WriteParquetBackup(
            config.parquet_path, config.tables)
        dead_letters.append(written[DEAD_LETTER_TAG])
        outputs[PARQUET] = written[WriteParquetBackup.MAIN]
    if config.notify:
        written = routed[NOTIFY] | 'Notify' >> WriteNotifications(config.notify, config.tables)
        dead_letters.append(written[DEAD_LETTER_TAG])
        outputs[NOTIFY] = written[WriteNotifications.MAIN]

    handling = job_handlers(config, handlers, stream_windows=windows)
    if handling is not None:  # every translated change, in order per key across windows
        handled = windowed | 'Handlers' >> handling
        dead_letters.append(handled[DEAD_LETTER_TAG])
        outputs[HANDLERS] = handled[handling.MAIN]

    # Letters of the global-window steps (reader, replay, database) get windows too,
    # so the dead-letter files are written per window while the job runs.
    all_dead = (tuple(letters | f'DeadLetterWindows{i}' >> beam.WindowInto(
                    window.FixedWindows(window_seconds)) for i, letters in enumerate(dead_letters))
                | 'CollectDeadLetters' >> beam.Flatten())
    written = all_dead | 'WriteDeadLetters' >> WriteDeadLetters(config.dead_letter_path)
    outputs['dead_letters'] = all_dead
    outputs['dead_letters_written'] = written[WriteDeadLetters.MAIN]
    return outputs
