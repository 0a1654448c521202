"""Audit-log changes to a replica database, Parquet backups and notifications.

    python -m changeflow.pipelines.audit_sync --config job.yaml [Beam flags]

Reads archived audit logs (Kinesis get-records JSON lines, Firehose objects or
raw server_audit.log files; see the README for the YAML), replays each
connection's transactions, turns committed writes into keyed row changes,
coalesces them per row and writes them through independent branches. Every
record that cannot be processed lands in the dead-letter output with its
reason and original bytes.

Runs on the FnApiRunner locally (the default when no --runner is given) and
unchanged on Dataflow or Flink with ``--setup_file ./setup.py``.
"""

import argparse
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from changeflow.config import JobConfig, load_config
from changeflow.io.archive import ReadArchive
from changeflow.io.dead_letter import WriteDeadLetters
from changeflow.io.notify import WriteNotifications
from changeflow.io.parquet import WriteParquetBackup
from changeflow.io.sql import WriteToDatabase
from changeflow.model import DEAD_LETTER_TAG
from changeflow.transforms.audit_log import ParseAuditLines
from changeflow.transforms.coalesce import CoalesceChanges
from changeflow.transforms.decode import DecodeCloudWatchRecords
from changeflow.transforms.follow_schema import BuildSchemaTimeline
from changeflow.transforms.route import DATABASE, NOTIFY, PARQUET, RouteChanges
from changeflow.transforms.sql_changes import ExtractRowChanges
from changeflow.transforms.transactions import ResolveTransactions

__all__ = ['build_pipeline', 'pipeline_options', 'run']

LOCAL_RUNNER = 'FnApiRunner'


def build_pipeline(p: beam.Pipeline, config: JobConfig) -> dict:
    """Adds the job to ``p``; returns the main PCollections by name (for tests)."""
    dead_letters = []
    read = p | 'ReadArchive' >> ReadArchive(config.source.format, config.source.path)
    dead_letters.append(read[DEAD_LETTER_TAG])
    if config.source.format == 'server-audit':
        log_events = read[ReadArchive.MAIN]
    else:
        decoded = read[ReadArchive.MAIN] | 'Decode' >> DecodeCloudWatchRecords()
        dead_letters.append(decoded[DEAD_LETTER_TAG])
        log_events = decoded[DecodeCloudWatchRecords.MAIN]
    parsed = log_events | 'ParseAuditLines' >> ParseAuditLines(config.query_log_limit)
    dead_letters.append(parsed[DEAD_LETTER_TAG])
    transactions = parsed[ParseAuditLines.MAIN] | 'Transactions' >> ResolveTransactions(
        config.autocommit, config.server_version, config.rollback_on_timeout)
    dead_letters.append(transactions[DEAD_LETTER_TAG])
    timeline = None
    if config.schema is not None:  # the schema the log starts with, advanced by its DDL
        timeline = transactions['transactions'] | 'SchemaTimeline' >> BuildSchemaTimeline(
            config.schema, config.table_rules, config.tables, config.server_version)
    changes = transactions['transactions'] | 'RowChanges' >> ExtractRowChanges(
        config.tables, config.schema, config.time_zone, config.server_version, timeline)
    dead_letters.append(changes[DEAD_LETTER_TAG])
    coalesce = changes['changes'] | 'Coalesce' >> CoalesceChanges(
        config.window_seconds, whole_input=True)
    dead_letters.append(coalesce[DEAD_LETTER_TAG])
    coalesced = coalesce[CoalesceChanges.MAIN]

    branches = [name for name, on in ((DATABASE, config.database_url),
                                      (PARQUET, config.parquet_path),
                                      (NOTIFY, config.notify)) if on]
    routed = coalesced | 'Route' >> RouteChanges(branches)
    dead_letters.append(routed[DEAD_LETTER_TAG])
    outputs = {'changes': coalesced}
    if config.database_url:
        written = routed[DATABASE] | 'WriteDatabase' >> WriteToDatabase(
            config.database_url, config.tables, batch_size=config.database_batch_size,
            schema_timeline=timeline)
        dead_letters.append(written[DEAD_LETTER_TAG])
        outputs[DATABASE] = written[WriteToDatabase.MAIN]
    if config.parquet_path:
        written = routed[PARQUET] | 'WriteParquet' >> WriteParquetBackup(
            config.parquet_path, config.tables)
        dead_letters.append(written[DEAD_LETTER_TAG])
        outputs[PARQUET] = written[WriteParquetBackup.MAIN]
    if config.notify:
        written = routed[NOTIFY] | 'Notify' >> WriteNotifications(
            config.notify, config.tables, schema_timeline=timeline)
        dead_letters.append(written[DEAD_LETTER_TAG])
        outputs[NOTIFY] = written[WriteNotifications.MAIN]

    all_dead = tuple(dead_letters) | 'CollectDeadLetters' >> beam.Flatten()
    all_dead | 'WriteDeadLetters' >> WriteDeadLetters(config.dead_letter_path)
    outputs['dead_letters'] = all_dead
    return outputs


def pipeline_options(beam_args) -> PipelineOptions:
    """Beam options from the remaining flags; the FnApiRunner unless a runner is named
    (the DirectRunner would first try to download Prism)."""
    if not any(a == '--runner' or a.startswith('--runner=') for a in beam_args):
        beam_args = [f'--runner={LOCAL_RUNNER}', *beam_args]
    return PipelineOptions(beam_args)


def run(argv=None):
    """Builds and runs the job; returns the finished PipelineResult."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', required=True,
                        help='YAML job configuration, read here on the launcher.')
    known, beam_args = parser.parse_known_args(argv)
    config = load_config(known.config)
    options = pipeline_options(beam_args)
    p = beam.Pipeline(options=options)
    build_pipeline(p, config)
    result = p.run()
    result.wait_until_finish()
    return result


if __name__ == '__main__':
    logging.getLogger().setLevel(logging.INFO)
    run()
