"""The replica follows the source's DDL.

:class:`ApplyReplicaSchema` applies a :class:`changeflow.schema.timeline.SchemaTimeline`'s
steps to the replica database, in log order, before the database sink writes:
ADD COLUMN (existing rows get the value MySQL gave them), DROP COLUMN, RENAME
COLUMN, a column's new type (SQLite keeps any value in any column, so it is
left as it is there), RENAME TABLE (the bookkeeping follows), DROP TABLE (its
row versions and marks go with it) and CREATE TABLE. The DDL is Alembic's
(``alembic.operations.Operations``), which knows each dialect's ALTER.

Each step is applied once: ``changeflow_schema`` (see :func:`changeflow.io.sql.schema_table`)
records the position of the last one, in the step's own transaction where the
database has transactional DDL; every step also checks the replica first (a
column already added, a table already renamed), so a step MariaDB committed
before a crash is not applied twice. Then it records the specs the sink writes
with, one row per source table ('' for a dropped one). A step the database
refuses marks its table diverged (``schema-change``) and the others go on.
"""

import logging
from typing import Optional

import apache_beam as beam
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from apache_beam.metrics import Metrics

from changeflow.io.sql import (
    bookkeeping_tables, create_engine, replica_table, schema_table, spec_json, sql_type)
from changeflow.schema.timeline import ReplicaStep, SchemaTimeline
from changeflow.sql.secrets import mask_url_passwords

__all__ = ['ApplyReplicaSchema', 'apply_steps']

_STEP = 'replica_schema'


def _position_text(position: tuple) -> str:
    return '.'.join(f'{part:020d}' for part in position)


def _columns(conn, table: str) -> dict:
    return {c['name'].lower(): c for c in sa.inspect(conn).get_columns(table)}


def _apply(conn: sa.Connection, step: ReplicaStep, prefix: str) -> bool:
    """Applies one step unless the replica already shows it; whether it changed anything."""
    inspector = sa.inspect(conn)
    operations = Operations(MigrationContext.configure(conn))
    exists = inspector.has_table(step.target)
    if step.action == 'create':
        if exists:
            return False
        replica_table(step.spec, sa.MetaData()).create(conn)
        return True
    if not exists:
        return False
    if step.action == 'drop':
        operations.drop_table(step.target)
        for bookkeeping in bookkeeping_tables(sa.MetaData(), prefix):
            if inspector.has_table(bookkeeping.name):
                conn.execute(bookkeeping.delete().where(bookkeeping.c.table_name == step.target))
        return True
    if step.action == 'rename':
        if inspector.has_table(step.new_name):
            return False
        operations.rename_table(step.target, step.new_name)
        for bookkeeping in bookkeeping_tables(sa.MetaData(), prefix):
            if inspector.has_table(bookkeeping.name):
                conn.execute(bookkeeping.update().where(bookkeeping.c.table_name == step.target)
                             .values(table_name=step.new_name))
        return True
    columns = _columns(conn, step.target)
    present = step.column.lower() in columns
    if step.action == 'add-column':
        if present:
            return False
        operations.add_column(step.target, sa.Column(
            step.column, sql_type(step.spec.column_type(step.column)), server_default=step.fill))
        return True
    if not present:
        return False
    existing = columns[step.column.lower()]
    if step.action == 'drop-column':
        operations.drop_column(step.target, existing['name'])
    elif step.action == 'rename-column':
        if step.new_name.lower() in columns:
            return False
        operations.alter_column(step.target, existing['name'], new_column_name=step.new_name,
                                existing_type=existing['type'], existing_nullable=True)
    elif step.action == 'modify-column':
        if conn.dialect.name == 'sqlite':
            return False  # any column holds any value; the sink coerces by the new type
        operations.alter_column(step.target, existing['name'],
                                type_=sql_type(step.spec.column_type(step.column)),
                                existing_type=existing['type'], existing_nullable=True)
    return True


def apply_steps(engine: sa.Engine, timeline: SchemaTimeline, prefix: str = 'changeflow_',
                counters: Optional[dict] = None) -> int:
    """Brings the replica to the timeline's last schema; returns the steps applied."""
    metadata = sa.MetaData()
    schema = schema_table(metadata, prefix)
    _, _, diverged = bookkeeping_tables(metadata, prefix)
    with engine.begin() as conn:
        metadata.create_all(conn, tables=[schema, diverged], checkfirst=True)
        done = conn.scalar(sa.select(schema.c.position).where(schema.c.source == ''))
        if done is None:  # a replica that did not follow DDL before: the log's first tables
            for spec in timeline.initial_specs:
                if spec.columns and not sa.inspect(conn).has_table(spec.target):
                    replica_table(spec, sa.MetaData()).create(conn)
            conn.execute(schema.insert().values(source='', spec='', position=''))
            done = ''
    applied = 0
    for step in timeline.steps:
        position = _position_text(step.position)
        if position <= done:
            continue
        try:
            with engine.begin() as conn:
                applied += _apply(conn, step, prefix)
                conn.execute(schema.update().where(schema.c.source == '')
                             .values(position=position))
        except sa.exc.SQLAlchemyError as exc:
            logging.error('%s: cannot %s %s on the replica: %s', _STEP, step.action,
                          step.target, exc)
            if counters:
                counters['steps_failed'].inc()
            with engine.begin() as conn:
                conn.execute(diverged.delete().where(diverged.c.table_name == step.target)
                             .where(diverged.c.row_key == ''))
                conn.execute(diverged.insert().values(
                    table_name=step.target, row_key='', version=position,
                    reason='schema-change',
                    detail=f'the replica could not follow {step.action} {step.column}: '
                           f'{str(exc)[:500]}'))
                conn.execute(schema.update().where(schema.c.source == '')
                             .values(position=position))
        done = position
    with engine.begin() as conn:
        conn.execute(schema.delete().where(schema.c.source != ''))
        rows = [{'source': spec.source, 'spec': spec_json(spec), 'position': done}
                for spec in timeline.final_specs]
        rows += [{'source': source, 'spec': '', 'position': done}
                 for source in timeline.dropped_sources]
        if rows:
            conn.execute(schema.insert(), rows)
    return applied


class _ApplyStepsFn(beam.DoFn):
    def __init__(self, url: str, prefix: str):
        self._url = url
        self._prefix = prefix
        self._counters = {name: Metrics.counter('changeflow.write_database', name)
                          for name in ('schema_steps_applied', 'steps_failed')}

    def setup(self):
        self._engine = create_engine(self._url)

    def process(self, timeline: SchemaTimeline):
        try:
            applied = apply_steps(self._engine, timeline, self._prefix, self._counters)
        except sa.exc.SQLAlchemyError as exc:
            # The replica is unreachable: its branch dead-letters its batches (the
            # sink's circuit breaker), the other branches go on.
            logging.error('%s: cannot bring the replica to the log\'s schema: %s', _STEP,
                          mask_url_passwords(f'{type(exc).__name__}: {exc}')[:500])
            self._counters['steps_failed'].inc()
            yield -1
            return
        self._counters['schema_steps_applied'].inc(applied)
        yield applied

    def teardown(self):
        self._engine.dispose()


class ApplyReplicaSchema(beam.PTransform):
    """PCollection[SchemaTimeline] (one) -> PCollection[int] (one: the steps
    applied), once the replica has the timeline's last schema."""

    def __init__(self, url: str, bookkeeping_prefix: str = 'changeflow_'):
        super().__init__()
        self._url = url
        self._prefix = bookkeeping_prefix

    def expand(self, timeline):
        return timeline | 'ApplySteps' >> beam.ParDo(_ApplyStepsFn(self._url, self._prefix))
