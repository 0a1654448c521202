"""The unbounded DynamoDB job: a table's stream, or DynamoDB's Kinesis
streaming destination, to the same sinks and handlers, for Flink and Dataflow.

    changeflow run job.yaml --streaming [Beam flags]

How a stream run batches, and where its state lives (the runner's
checkpoints hold all of it; nothing is kept in the checkpoint store):

1. ``ReadStream`` (:mod:`changeflow.io.stream_sdf`) with a DynamoDB Streams
   reader (:class:`~changeflow.io.dynamodb_streams.DynamoDBShardReaders`;
   a table's name is read as its latest stream) or the Kinesis reader: a
   splittable DoFn per lineage group of shards, parents before children,
   records timestamped with their creation (arrival) time.
2. Fixed windows of ``window.seconds``; in each, chunks of up to
   ``RECORDS_PER_ELEMENT`` records are decoded as one element into runs of
   Changes per (table, shard), as in the catch-up job.
3. Per window, the catch-up job's second half
   (:func:`changeflow.pipelines.branches.write_branches`): each shard's runs
   coalesced in version order; the database, Parquet, notifications and each
   handler a branch of its own; dead letters written per window.

Order: a row's changes are applied in version (sequence number) order within
a window, and the database's version guard keeps a later window from
regressing a row whatever order windows fire in. Handlers get each key's
events in version order across windows too: a shard's events wait in state
until the watermark passes them and are handled one release after another
(:class:`~changeflow.handlers.transforms.RunHandlers` with ``stream_windows``).

A ``seed`` (an export as the initial state) belongs to the catch-up job: seed
with one ``changeflow run`` (the stream read to its tip), then start the
stream job; it reads the stream from ``start`` again, which the version guard,
the Parquet backup's per-op files and the ledger make harmless.
"""

import apache_beam as beam
from apache_beam import window

from changeflow.config import DYNAMODB_STREAM, JobConfig
from changeflow.dynamodb.transforms import EVENTS, StreamRecordsToShardRuns
from changeflow.io.dynamodb_streams import DynamoDBShardReaders
from changeflow.io.stream_sdf import KinesisReaders, ReadStream
from changeflow.model import DEAD_LETTER_TAG
from changeflow.pipelines.branches import write_branches
from changeflow.pipelines.dynamodb_sync import RECORDS_PER_ELEMENT, stream_changes
from changeflow.pipelines.streaming import StreamingOptions

__all__ = ['build_dynamodb_streaming_pipeline']


def build_dynamodb_streaming_pipeline(p: beam.Pipeline, config: JobConfig,
                                      handlers=None) -> dict:
    """Adds the unbounded DynamoDB job to ``p`` (its :class:`StreamingOptions`
    from ``p.options``); returns its main PCollections by name.

    Raises:
        ValueError: the source is an archive, or the job seeds from an export.
    """
    source = config.source
    if source.type not in (DYNAMODB_STREAM, 'kinesis'):
        raise ValueError(f'--streaming needs a stream source, not {source.type!r}')
    if source.seeds:
        raise ValueError('--streaming does not seed from an export: seed with one '
                         '`changeflow run` (a catch-up), then start the stream job')
    flags = p.options.view_as(StreamingOptions)
    readers = (DynamoDBShardReaders(source.region, source.endpoint_url)
               if source.type == DYNAMODB_STREAM else
               KinesisReaders(source.region, source.endpoint_url))
    windows = window.FixedWindows(config.window_seconds)
    chunks = (p
              | 'ReadStream' >> ReadStream(source.stream, readers, source.start,
                                           max_records=flags.stream_max_records)
              | 'Window' >> beam.WindowInto(windows)
              | 'Chunk' >> beam.BatchElements(min_batch_size=1,
                                              max_batch_size=RECORDS_PER_ELEMENT))
    stream = chunks | 'StreamChanges' >> stream_changes(config, handlers)
    return write_branches(stream[StreamRecordsToShardRuns.MAIN], config,
                          [stream[DEAD_LETTER_TAG]], events=stream[EVENTS], handlers=handlers,
                          stream_windows=windows)
