"""DynamoDB stream records to a replica database, Parquet backups and notifications.

    python -m changeflow.pipelines.dynamodb_sync --config job.yaml [Beam flags]

Reads a table's stream to its tip (``source: {type: dynamodb, table: NAME}``,
one catch-up cycle), DynamoDB's Kinesis streaming destination
(``source: {type: kinesis, format: dynamodb-kinesis, stream: NAME}``) or
archived stream records (``source: {type: dynamodb-archive, format:
dynamodb-jsonl | lambda-event | kinesis-destination, path: GLOB}``) and,
optionally, each table's DynamoDB export to S3 as its initial state
(``seed: {export: PATH}``); every record becomes a whole-row write or a
delete of its item, versioned by its creation time and sequence number, and
goes through the same coalescing and sinks as the audit-log job
(:func:`changeflow.pipelines.branches.write_branches`). Seeded items reach
the replica and the Parquet backup, not the notifications. A stream
source's checkpoints are committed once every sink has written the cycle
(:class:`~changeflow.io.kinesis_source.CommitCheckpoints`); a checkpoint
past the stream's 24-hour trim horizon fails the job, naming the shard and
sequence number (:class:`~changeflow.io.dynamodb_streams.TrimmedData`). See
the README's DynamoDB section for the YAML.

Runs on the FnApiRunner locally (the default when no --runner is given) and
unchanged on Dataflow or Flink with ``--setup_file ./setup.py``. With Beam's
``--streaming`` on a stream source the job is the unbounded one
(:mod:`changeflow.pipelines.dynamodb_streaming`).
"""

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from changeflow.config import DYNAMODB_ARCHIVE, DYNAMODB_STREAM, JobConfig, is_dynamodb_job
from changeflow.dynamodb.transforms import (
    EVENTS, DropInitialState, ExportToShardRuns, StreamRecordsToShardRuns)
from changeflow.io.archive import ReadArchive
from changeflow.io.dynamodb_streams import DynamoDBStreamReaders
from changeflow.io.kinesis_source import (
    CommitCheckpoints, KinesisReaders, ReadKinesisToTip, ReadStreamToTip)
from changeflow.model import DEAD_LETTER_TAG
from changeflow.pipelines.branches import run_job, write_branches, written_outputs
from changeflow.transforms.route import NOTIFY

__all__ = ['build_pipeline', 'read_namespace', 'run', 'stream_changes']

RECORDS_PER_ELEMENT = 1000  # stream records decoded as one element


def build_pipeline(p: beam.Pipeline, config: JobConfig, handlers=None) -> dict:
    """Adds the job to ``p``; returns the main PCollections by name (for tests).

    Stream records go in chunks of RECORDS_PER_ELEMENT through decoding into
    runs of Changes per (table, shard); a seed's export one data file per
    element. Both meet in each shard's coalescing, which applies them in
    version order. ``handlers``: a :class:`changeflow.handlers.Handlers`
    registry run besides the config's; they get the stream's events, not
    the seed's items.
    """
    if not is_dynamodb_job(config):
        raise ValueError(f'not a DynamoDB job: source.type is {config.source.type!r}')
    if p.options.view_as(StandardOptions).streaming:  # --streaming: the unbounded job
        from changeflow.pipelines.dynamodb_streaming import build_dynamodb_streaming_pipeline
        return build_dynamodb_streaming_pipeline(p, config, handlers)
    source = config.source
    dead_letters = []
    read = p | _read_step(config)
    dead_letters.append(read[DEAD_LETTER_TAG])
    chunks = (read[ReadArchive.MAIN]
              | 'Chunk' >> beam.BatchElements(min_batch_size=RECORDS_PER_ELEMENT,
                                              max_batch_size=RECORDS_PER_ELEMENT)
              | 'SpreadRecords' >> beam.Reshuffle())  # over workers
    stream = chunks | 'StreamChanges' >> stream_changes(config, handlers)
    dead_letters.append(stream[DEAD_LETTER_TAG])
    runs = [stream[StreamRecordsToShardRuns.MAIN]]
    before_sink = {}
    if source.seeds:
        seeded = (p | 'Seeds' >> beam.Create(source.seeds)
                  | 'SeedChanges' >> ExportToShardRuns(config.tables))
        dead_letters.append(seeded[DEAD_LETTER_TAG])
        runs.append(seeded[ExportToShardRuns.MAIN])
        if config.notify:
            before_sink[NOTIFY] = DropInitialState(seeded[ExportToShardRuns.EXPORTED])
    all_runs = tuple(runs) | 'AllRuns' >> beam.Flatten()
    outputs = write_branches(all_runs, config, dead_letters, before_sink=before_sink,
                             events=stream[EVENTS], handlers=handlers)
    if source.type != DYNAMODB_ARCHIVE:  # the cycle's end, once every output is written
        outputs['checkpoints'] = read[ReadStreamToTip.END] | 'Checkpoint' >> CommitCheckpoints(
            config.checkpoints_url, config.job, source.name,
            written_outputs(outputs), namespace=_readers(config).namespace)
    return outputs


def stream_changes(config: JobConfig, handlers=None) -> StreamRecordsToShardRuns:
    """The decoding of the job's chunks of stream records into runs of
    Changes per (table, shard) (events too for tables with handlers; old
    images when the job notifies), for the catch-up and the unbounded job."""
    source = config.source
    return StreamRecordsToShardRuns(
        config.tables, kinesis=source.type == 'kinesis' or source.format == 'kinesis-destination',
        event_tables={h.table for h in (*config.handlers, *(handlers or ()))},
        old_images=bool(config.notify))


def _readers(config: JobConfig):
    source = config.source
    kind = DynamoDBStreamReaders if source.type == DYNAMODB_STREAM else KinesisReaders
    return kind(source.region, source.endpoint_url)


def read_namespace(config: JobConfig) -> str:
    """The metrics namespace of the job's stream reader (for ``--follow``)."""
    return _readers(config).namespace


def _read_step(config: JobConfig):
    """The labelled read of the job's source: its records as SourceRecords."""
    source = config.source
    if source.type == DYNAMODB_ARCHIVE:
        return 'ReadArchive' >> ReadArchive(source.format, source.path)
    if source.type == DYNAMODB_STREAM:
        return 'ReadStream' >> ReadStreamToTip(source.stream, config.checkpoints_url, config.job,
                                               source.name, source.start, _readers(config))
    return 'ReadKinesis' >> ReadKinesisToTip.from_config(config)


def run(argv=None):
    """Builds and runs the job; returns the finished PipelineResult."""
    return run_job(build_pipeline, __doc__.splitlines()[0], argv)


if __name__ == '__main__':
    logging.getLogger().setLevel(logging.INFO)
    run()
