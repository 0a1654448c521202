"""The schema timeline of a run: the log's DDL gathered into one
:class:`changeflow.schema.timeline.SchemaTimeline`, for translation (a side
input: each statement is read against the schema at its position) and for
the database sink (which applies its steps to the replica before writing).

In a bounded run the timeline holds every DDL of the input before any
statement is translated. A catch-up cycle of a stream also replays the DDL
of the cycles before it, carried in the checkpoint state
(:func:`carried_ddl`, :func:`with_ddl`): each cycle's timeline starts from
the configured schema and advances through every DDL the stream committed
so far, so a statement is read against the schema the earlier cycles' DDL
left. The unbounded mode does not follow DDL.
"""

from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from changeflow.config import TableSpec
from changeflow.schema.model import SourceSchema
from changeflow.schema.timeline import SchemaTimeline

__all__ = ['BuildSchemaTimeline', 'carried_ddl', 'with_ddl']

Ddl = Tuple[tuple, Optional[str], str]   # (position, database, sql)


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


def carried_ddl(state) -> List[Ddl]:
    """The DDL a committed checkpoint state carries (None before the first
    commit): every DDL statement the earlier cycles committed."""
    return [(tuple(position), database, sql)
            for position, database, sql in (state or {}).get('ddl', ())]


def with_ddl(state: Optional[dict], ddl: Sequence[Ddl]) -> Optional[dict]:
    """The checkpoint state with ``ddl`` (the carried and this cycle's DDL),
    in log order, each statement once; as given when there is none. The
    list grows with the source's DDL statements, not with its writes."""
    entries = sorted({(tuple(p), d, s) for p, d, s in ddl},
                     key=lambda entry: (entry[0], entry[1] or '', entry[2]))
    if not entries:
        return state
    return {**(state or {}), 'ddl': [[list(p), d, s] for p, d, s in entries]}
