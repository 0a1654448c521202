"""Audit-log changes to a replica database, Parquet backups and notifications.

    python -m changeflow.pipelines.audit_sync --config job.yaml [Beam flags]
    python -m changeflow.pipelines.audit_sync --config job.yaml --streaming [Beam flags]

Reads archived audit logs (Kinesis get-records JSON lines, Firehose objects or
raw server_audit.log files; see the README for the YAML), replays each
connection's transactions, turns committed writes into keyed row changes,
coalesces them per row and writes them through independent branches. Every
record that cannot be processed lands in the dead-letter output with its
reason and original bytes.

With Beam's ``--streaming`` on a Kinesis source the job is the unbounded
one (:mod:`changeflow.pipelines.streaming`), for Flink and Dataflow. An
archive with ``source.slice_mb`` is read a slice of its files per run, as a
stream's catch-up cycle (:mod:`changeflow.io.archive_slices`; ``changeflow
run`` runs the slices one after another).

Runs on the FnApiRunner locally (the default when no --runner is given) and
unchanged on Dataflow or Flink with ``--setup_file ./setup.py``.
"""

import logging
from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from changeflow.config import JobConfig, reads_in_slices
from changeflow.io.archive import ReadArchive
from changeflow.io.archive_slices import NAMESPACE as SLICES_NAMESPACE
from changeflow.io.archive_slices import ReadArchiveSlice, archive_key
from changeflow.io.kinesis_source import CommitCheckpoints, KinesisReaders, ReadKinesisToTip
from changeflow.model import DEAD_LETTER_TAG
from changeflow.pipelines.branches import run_job, write_branches, written_outputs
from changeflow.transforms.connections import (
    CARRY, DDL, RUNS, ParseToConnectionRuns, ReplayConnections, carried_connections, carry_state)
from changeflow.transforms.follow_schema import BuildSchemaTimeline, carried_ddl, with_ddl

__all__ = ['build_pipeline', 'pipeline_options', 'read_namespace', 'run', 'slice_follower']

LOCAL_RUNNER = 'FnApiRunner'
LINES_PER_ELEMENT = 1000  # a raw server_audit.log is parsed in chunks of this many lines
SLICE = 'slice'  # the checkpoint state's part of an archive's slice: files done, the last one


def build_pipeline(p: beam.Pipeline, config: JobConfig, handlers=None) -> dict:
    """Adds the job to ``p``; returns the main PCollections by name (for tests).

    Coarse elements all the way (see the README's Throughput): a record (or a
    chunk of a raw log's lines) is decoded and parsed as one element into a
    run per connection; each connection's runs are merged, replayed and
    translated as one element into runs per (table, shard); each shard's runs
    are merged and coalesced into one batch per shard for every branch.
    ``handlers``: a :class:`changeflow.handlers.Handlers` registry run
    besides the config's, on every translated change (uncoalesced).
    """
    if p.options.view_as(StandardOptions).streaming:  # --streaming: the unbounded job
        from changeflow.pipelines.streaming import build_streaming_pipeline
        return build_streaming_pipeline(p, config, handlers)
    dead_letters = []
    source = config.source
    sliced = reads_in_slices(config)
    if source.type == 'kinesis':
        read = p | 'ReadKinesis' >> ReadKinesisToTip.from_config(config)
    elif sliced:  # a cycle per slice of the archive, like a stream's (archive_slices)
        read = p | 'ReadArchiveSlice' >> ReadArchiveSlice(
            source.format, source.path, source.slice_bytes, config.checkpoints_url, config.job,
            lines_per_element=LINES_PER_ELEMENT)
    else:
        read = p | 'ReadArchive' >> ReadArchive(source.format, source.path,
                                                lines_per_element=LINES_PER_ELEMENT)
    dead_letters.append(read[DEAD_LETTER_TAG])
    records = read[ReadArchive.MAIN] | 'SpreadRecords' >> beam.Reshuffle()  # over workers
    parsed = records | 'ParseRecords' >> ParseToConnectionRuns(
        config.query_log_limit, config.server_version)
    dead_letters.append(parsed[DEAD_LETTER_TAG])
    stream = {}
    cycle = read[ReadKinesisToTip.CYCLE] if source.type == 'kinesis' or sliced else None
    timeline = all_ddl = None
    if config.schema is not None:  # the schema the log starts with, advanced by its DDL
        all_ddl = parsed[DDL]
        if cycle is not None:      # and by the DDL of the cycles before
            all_ddl = (cycle | 'CarriedDdl' >> beam.FlatMap(lambda c: carried_ddl(c['state'])),
                       all_ddl) | 'AllDdl' >> beam.Flatten()
        timeline = all_ddl | 'SchemaTimeline' >> BuildSchemaTimeline(
            config.schema, config.table_rules, config.tables)
    if cycle is not None:  # each connection continues from the last cycle
        stream = dict(carried=cycle | 'CarriedConnections' >> beam.FlatMap(
            lambda c: carried_connections(c['state'])), cycle=cycle,
            lateness_seconds=source.lateness_seconds if source.type == 'kinesis' else 0.0)
    replayed = parsed[RUNS] | 'Replay' >> ReplayConnections(
        config.tables, config.schema, autocommit=config.autocommit,
        server_version=config.server_version, rollback_on_timeout=config.rollback_on_timeout,
        time_zone=config.time_zone, timeline=timeline, **stream)
    dead_letters.append(replayed[DEAD_LETTER_TAG])
    outputs = write_branches(replayed['changes'], config, dead_letters, timeline=timeline,
                             handlers=handlers)
    if cycle is not None:  # the cycle's end, once every output is written
        state, fold = replayed[CARRY], carry_state
        if all_ddl is not None or sliced:  # the DDL so far, the slice's end: with the carried
            parts = [state | 'CarriedParts' >> beam.Map(lambda part: (CARRY, part))]
            if all_ddl is not None:
                parts.append(all_ddl | 'DdlParts' >> beam.Map(lambda part: (DDL, part)))
            if sliced:
                parts.append(cycle | 'SliceParts' >> beam.Map(lambda c: (SLICE, c['archive'])))
            state, fold = tuple(parts) | 'StateParts' >> beam.Flatten(), _fold_state_parts
        key = archive_key(source.path) if sliced else source.stream
        outputs['checkpoints'] = read[ReadKinesisToTip.END] | 'Checkpoint' >> CommitCheckpoints(
            config.checkpoints_url, config.job, key, written_outputs(outputs),
            namespace=read_namespace(config), state=state, fold_state=fold)
    return outputs


def _fold_state_parts(parts) -> Optional[dict]:
    """The checkpoint state from ``(CARRY | DDL | SLICE, part)`` pairs: the
    carried connections, every DDL statement so far, a sliced archive's end."""
    state = with_ddl(carry_state([part for kind, part in parts if kind == CARRY]),
                     [part for kind, part in parts if kind == DDL])
    archive = [part for kind, part in parts if kind == SLICE and part is not None]
    return {**(state or {}), 'archive': archive[0]} if archive else state


def read_namespace(config: JobConfig) -> str:
    """The metrics namespace of the job's cycle reader (for ``--follow`` and slices)."""
    if config.source.type == 'archive':
        return SLICES_NAMESPACE
    return KinesisReaders.namespace


def slice_follower(config: JobConfig, beam_args=(), **follower_args):
    """The Follower that reads an archive with ``source.slice_mb`` a slice per
    cycle until its last (:class:`changeflow.pipelines.follow.Follower`;
    ``follower_args``: its other arguments)."""
    from changeflow.io.archive_slices import input_ended
    from changeflow.pipelines.follow import Follower
    return Follower(config, pipeline_options(list(beam_args)), build_pipeline,
                    read_namespace=read_namespace(config), until=input_ended, **follower_args)


def pipeline_options(beam_args) -> PipelineOptions:
    """Beam options from the remaining flags; the FnApiRunner unless a runner is named
    (the DirectRunner would first try to download Prism)."""
    if not any(a == '--runner' or a.startswith('--runner=') for a in beam_args):
        beam_args = [f'--runner={LOCAL_RUNNER}', *beam_args]
    return PipelineOptions(beam_args)


def run(argv=None):
    """Builds and runs the job; returns the finished PipelineResult."""
    return run_job(build_pipeline, __doc__.splitlines()[0], argv)


if __name__ == '__main__':
    logging.getLogger().setLevel(logging.INFO)
    run()
