"""The second half every bounded job shares, whatever its source: runs of
changes per (table, shard) coalesced into one batch per shard, fanned out to
the configured sinks, and every dead letter written.

A source's job (:mod:`changeflow.pipelines.audit_sync`,
:mod:`changeflow.pipelines.dynamodb_sync`) turns its input into
``((table, shard), run of Changes sorted by version)`` elements, sharded by
:func:`changeflow.io.sql.shards_of` and packed by
:func:`changeflow.transforms.runs.make_run` with
:func:`changeflow.transforms.connections.change_version`, and hands them here
with the dead letters of its own steps. The steps are applied to the
pipeline root with the labels the audit job has always used.
"""

from typing import List, Mapping, Optional

import apache_beam as beam

from changeflow.config import JobConfig
from changeflow.handlers.transforms import RunHandlers
from changeflow.io.dead_letter import WriteDeadLetters
from changeflow.io.notify import WriteNotifications
from changeflow.io.parquet import WriteParquetBackup
from changeflow.io.sql import WriteBatchesToDatabase, WriteToDatabase
from changeflow.model import DEAD_LETTER_TAG
from changeflow.transforms.route import DATABASE, NOTIFY, PARQUET
from changeflow.transforms.shard_batches import FoldShards, RouteShardBatches

__all__ = ['write_branches', 'written_outputs', 'job_handlers', 'run_job', 'HANDLERS']

HANDLERS = 'handlers'  # the handlers branch's output name


def write_branches(runs, config: JobConfig, dead_letters: List, *, timeline=None,
                   before_sink: Optional[Mapping[str, beam.PTransform]] = None,
                   events=None, handlers=None, stream_windows=None) -> dict:
    """Coalesces ``runs`` per shard and writes them to every sink ``config`` names.

    Args:
        runs: PCollection of ((table, shard), run of Changes).
        dead_letters: the PCollections of DeadLetters of the job's earlier
            steps; each sink's are added, and all are written to
            ``config.dead_letter_path``.
        timeline: the schema timeline (audit jobs with a schema), for every sink.
        before_sink: a branch name (DATABASE, PARQUET, NOTIFY) -> a transform
            applied to that branch's batches before its sink (the database's
            coalesced batches, the change-log branches' log batches of source
            ops), e.g. to keep a table's initial state out of notifications.
        events: the handlers' input, ((table, shard), run of ChangeEvents)
            (:mod:`changeflow.handlers.events`); None: ``runs`` themselves
            (audit-log Changes, turned into events by the handlers branch).
        handlers: a :class:`changeflow.handlers.Handlers` registry (or
            Handler definitions) run besides ``config.handlers``.
        stream_windows: an unbounded job's WindowFn (``runs`` are in its
            windows): the handlers get each key's events in order across
            windows (:class:`~changeflow.handlers.transforms.RunHandlers`).

    Returns the main PCollections by name: 'batches' (one per shard), each
    configured branch's sink output ('handlers': a HandlerOutcome per
    handler and shard batch), 'dead_letters' and 'dead_letters_written'
    (the dead-letter files, once written).
    """
    dead_letters = list(dead_letters)
    before_sink = dict(before_sink or {})
    folded = runs | 'Coalesce' >> FoldShards()
    dead_letters.append(folded[DEAD_LETTER_TAG])
    batches = folded[FoldShards.MAIN]

    branches = [name for name, on in ((DATABASE, config.database_url),
                                      (PARQUET, config.parquet_path),
                                      (NOTIFY, config.notify)) if on]
    unknown = sorted(set(before_sink) - set(branches))
    if unknown:
        raise ValueError(f'before_sink names branches the job does not write: {unknown}')
    routed = ({FoldShards.MAIN: batches, FoldShards.LOG: folded[FoldShards.LOG]}
              | 'Route' >> RouteShardBatches(branches))
    for branch, step in before_sink.items():
        routed[branch] = routed[branch] | f'BeforeSink_{branch}' >> step
    outputs = {'batches': batches}
    if config.database_url:
        written = routed[DATABASE] | 'WriteDatabase' >> WriteBatchesToDatabase(
            config.database_url, config.tables, batch_size=config.database_batch_size,
            schema_timeline=timeline)
        dead_letters.append(written[DEAD_LETTER_TAG])
        outputs[DATABASE] = written[WriteToDatabase.MAIN]
    if config.parquet_path:
        written = routed[PARQUET] | 'WriteParquet' >> WriteParquetBackup(
            config.parquet_path, config.tables, batched=True, schema_timeline=timeline)
        dead_letters.append(written[DEAD_LETTER_TAG])
        outputs[PARQUET] = written[WriteParquetBackup.MAIN]
    if config.notify:
        written = routed[NOTIFY] | 'Notify' >> WriteNotifications(
            config.notify, config.tables, schema_timeline=timeline, batched=True,
            state_url=config.state_url)
        dead_letters.append(written[DEAD_LETTER_TAG])
        outputs[NOTIFY] = written[WriteNotifications.MAIN]

    handling = job_handlers(config, handlers, stream_windows)
    if handling is not None:  # its own branch, from the uncoalesced changes: every event counts
        handled = (runs if events is None else events) | 'Handlers' >> handling
        dead_letters.append(handled[DEAD_LETTER_TAG])
        outputs[HANDLERS] = handled[handling.MAIN]

    all_dead = tuple(dead_letters) | 'CollectDeadLetters' >> beam.Flatten()
    written = all_dead | 'WriteDeadLetters' >> WriteDeadLetters(config.dead_letter_path)
    outputs['dead_letters'] = all_dead
    outputs['dead_letters_written'] = written[WriteDeadLetters.MAIN]
    return outputs


def job_handlers(config: JobConfig, handlers=None, stream_windows=None) -> Optional[RunHandlers]:
    """The handlers branch of a job: the config's handlers and those of the
    ``handlers`` registry (its models too), or None when there are none."""
    all_handlers = tuple(config.handlers) + tuple(handlers or ())
    if not all_handlers:
        return None
    models = {**getattr(handlers, 'models', {}),
              **{spec.source: spec.model for spec in config.tables if spec.model}}
    return RunHandlers(all_handlers, config.state_url, models,
                       [spec.source for spec in config.tables], stream_windows=stream_windows)


def written_outputs(outputs: Mapping) -> List:
    """What ``write_branches`` wrote, as the PCollections a cycle's checkpoint
    commit waits for: every sink's and handler branch's output, and the dead
    letters once written."""
    return [outputs[name] for name in (DATABASE, PARQUET, NOTIFY, HANDLERS)
            if name in outputs] + [outputs['dead_letters_written']]


def run_job(build_pipeline, description: str, argv=None):
    """A job's ``run(argv)``: ``--config`` read here on the launcher, the rest
    Beam's flags (:func:`changeflow.pipelines.audit_sync.pipeline_options`);
    returns the finished PipelineResult."""
    import argparse

    from changeflow.config import load_config
    from changeflow.pipelines.audit_sync import pipeline_options
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--config', required=True,
                        help='YAML job configuration, read here on the launcher.')
    known, beam_args = parser.parse_known_args(argv)
    config = load_config(known.config)
    p = beam.Pipeline(options=pipeline_options(beam_args))
    build_pipeline(p, config)
    result = p.run()
    result.wait_until_finish()
    return result
