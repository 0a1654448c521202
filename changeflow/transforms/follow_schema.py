"""The schema timeline of a run: the log's DDL gathered into one
:class:`changeflow.schema.timeline.SchemaTimeline`, for translation (a side
input: each statement is read against the schema at its position) and for
the database sink (which applies its steps to the replica before writing).

In a bounded run the timeline holds every DDL of the input before any
statement is translated. A stream has no such point: it needs the timeline
per window, which the streaming mode adds.
"""

from typing import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from changeflow.config import TableSpec
from changeflow.schema.model import SourceSchema
from changeflow.schema.timeline import SchemaTimeline, ddl_position
from changeflow.sql.literals import DEFAULT_SERVER_VERSION
from changeflow.transforms.transactions import (
    CommittedTransaction, StatementClass, classify_statement)

__all__ = ['BuildSchemaTimeline']


def _ddl_statements(transaction: CommittedTransaction, server_version: int):
    for statement in transaction.statements:
        if not statement.truncated and classify_statement(
                statement.object, server_version)[0] == StatementClass.DDL:
            yield (ddl_position(statement.timestamp_us, statement.query_id), statement.database,
                   statement.object)


class BuildSchemaTimeline(beam.PTransform):
    """PCollection[CommittedTransaction] -> PCollection[SchemaTimeline], one
    element: ``schema`` (the log's start) advanced by every DDL committed."""

    def __init__(self, schema: SourceSchema, table_rules, tables: Sequence[TableSpec],
                 server_version: int = DEFAULT_SERVER_VERSION):
        super().__init__()
        self._schema = schema
        self._rules = table_rules
        self._tables = tuple(tables)
        self._server_version = server_version

    def expand(self, transactions):
        statements = Metrics.counter('changeflow.follow_schema', 'ddl_statements')

        def timeline(ddl, schema, rules, tables) -> SchemaTimeline:
            statements.inc(len(ddl))
            return SchemaTimeline(schema, rules, tables, ddl)

        return (transactions
                | 'DdlStatements' >> beam.FlatMap(_ddl_statements, self._server_version)
                | 'AllDdl' >> beam.combiners.ToList()
                | 'Timeline' >> beam.Map(timeline, self._schema, self._rules, self._tables))
