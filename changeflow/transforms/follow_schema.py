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
from changeflow.schema.timeline import SchemaTimeline

__all__ = ['BuildSchemaTimeline']


class BuildSchemaTimeline(beam.PTransform):
    """PCollection[(position, database, sql)] of the DDL the log committed
    (ParseToConnectionRuns' ``DDL`` output) -> PCollection[SchemaTimeline], one
    element: ``schema`` (the log's start) advanced by every DDL statement."""

    def __init__(self, schema: SourceSchema, table_rules, tables: Sequence[TableSpec]):
        super().__init__()
        self._schema = schema
        self._rules = table_rules
        self._tables = tuple(tables)

    def expand(self, ddl):
        statements = Metrics.counter('changeflow.follow_schema', 'ddl_statements')

        def timeline(ddl, schema, rules, tables) -> SchemaTimeline:
            statements.inc(len(ddl))
            return SchemaTimeline(schema, rules, tables, ddl)

        return (ddl
                | 'AllDdl' >> beam.combiners.ToList()
                | 'Timeline' >> beam.Map(timeline, self._schema, self._rules, self._tables))
