"""The replica follows the source's DDL (io/replica_schema.py) on SQLite,
PostgreSQL and MariaDB: rows that existed before an ALTER keep their values
under the new names and get the added column's value; the bookkeeping
follows a renamed table; applying the same timeline again changes nothing."""

import sqlalchemy as sa

from changeflow.config import resolve_tables
from changeflow.io.replica_schema import apply_steps
from changeflow.io.sql import bookkeeping_tables, read_followed_specs
from changeflow.schema.readers import read_schema_text
from changeflow.schema.timeline import SchemaTimeline


def make_timeline(prefix, ddl):
    schema = read_schema_text(f"""
        CREATE TABLE {prefix}people (id INT NOT NULL PRIMARY KEY, name VARCHAR(100), age INT);
        CREATE TABLE {prefix}pets (id INT NOT NULL PRIMARY KEY, name VARCHAR(50));
        CREATE TABLE {prefix}logs (id INT NOT NULL PRIMARY KEY, msg TEXT);
        """, 'app')
    rules = [f'app.{prefix}*']
    return SchemaTimeline(schema, rules, resolve_tables(rules, schema),
                          [((t, t), 'app', sql.format(p=prefix)) for t, sql in ddl])


DDL = [(10, "ALTER TABLE {p}people ADD COLUMN city VARCHAR(20) NOT NULL DEFAULT 'unknown'"),
       (20, 'ALTER TABLE {p}people DROP COLUMN age'),
       (30, 'ALTER TABLE {p}people RENAME COLUMN name TO full_name'),
       (40, 'RENAME TABLE {p}pets TO {p}animals'),
       (50, 'DROP TABLE {p}logs')]


def test_the_replica_follows_ddl_and_keeps_its_rows(database_url, table_prefix):
    prefix, bookkeeping = table_prefix, f'{table_prefix}cf_'
    engine = sa.create_engine(database_url)
    try:
        assert apply_steps(engine, make_timeline(prefix, []), bookkeeping) == 0
        _, _, diverged = bookkeeping_tables(sa.MetaData(), bookkeeping)
        with engine.begin() as conn:  # rows from an earlier run, and a mark on pets
            conn.execute(sa.text(f"INSERT INTO {prefix}people (id, name, age) VALUES (1, 'Ann', 3)"))
            conn.execute(sa.text(f"INSERT INTO {prefix}pets (id, name) VALUES (7, 'Rex')"))
            conn.execute(diverged.insert().values(table_name=f'{prefix}pets', row_key='[7]',
                                                  version='v', reason='r', detail='d'))
        timeline = make_timeline(prefix, DDL)
        assert apply_steps(engine, timeline, bookkeeping) == 5
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert [c['name'] for c in inspector.get_columns(f'{prefix}people')] == [
                'id', 'full_name', 'city']
            assert conn.execute(sa.text(f'SELECT id, full_name, city FROM {prefix}people')
                                ).all() == [(1, 'Ann', 'unknown')]
            assert not inspector.has_table(f'{prefix}pets')
            assert not inspector.has_table(f'{prefix}logs')
            assert conn.execute(sa.text(f'SELECT id, name FROM {prefix}animals')).all() == [
                (7, 'Rex')]
            assert conn.execute(sa.select(diverged.c.table_name)).scalars().all() == [
                f'{prefix}animals']
            specs, dropped = read_followed_specs(conn, bookkeeping)
        assert sorted(s.target for s in specs) == [f'{prefix}animals', f'{prefix}people']
        assert dropped == (f'app.{prefix}logs',)
        assert apply_steps(engine, timeline, bookkeeping) == 0  # a replay: nothing again
    finally:
        with engine.begin() as conn:
            for name in sa.inspect(conn).get_table_names():
                if name.startswith(prefix):
                    conn.execute(sa.text(f'DROP TABLE {name}'))
        engine.dispose()


def test_a_step_already_on_the_replica_is_not_applied_twice(sqlite_url, table_prefix):
    """A crash after MariaDB committed an ALTER but before the position was
    recorded: the step finds the replica already changed."""
    prefix = table_prefix
    engine = sa.create_engine(sqlite_url)
    try:
        apply_steps(engine, make_timeline(prefix, []), 'cf_')
        with engine.begin() as conn:
            conn.execute(sa.text(f'ALTER TABLE {prefix}people ADD COLUMN city VARCHAR(20)'))
        assert apply_steps(engine, make_timeline(prefix, DDL[:1]), 'cf_') == 0
    finally:
        engine.dispose()


def test_an_unreachable_replica_does_not_stop_a_job_that_follows_ddl(tmp_path):
    """The DDL step cannot reach the replica: the database branch dead-letters
    its changes as the outage's, the job completes and the other sinks write."""
    import collections
    import os
    import socket

    import yaml

    import real_traffic
    from changeflow.io.dead_letter import read_dead_letters
    from changeflow.pipelines import audit_sync

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    config = real_traffic.write_job(os.path.join(real_traffic.APP, 'ddl'), str(tmp_path),
                                    'job-schema.yaml')
    with open(config, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['sinks'] = {'database': {'url': f'postgresql+psycopg2://cf@127.0.0.1:{port}/test'},
                    'notify': [{'to': f'file:{tmp_path}/notes.jsonl'}]}
    with open(config, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f)
    audit_sync.run(['--config', config])
    reasons = collections.Counter(letter.reason for letter in read_dead_letters(
        str(tmp_path / 'dead-letter')) if letter.step == 'write_database')
    assert set(reasons) <= {'sink-unavailable', 'database-error'} and reasons
    assert (tmp_path / 'notes.jsonl').read_text().count('\n') > 100


def test_parquet_and_notifications_follow_ddl_too(tmp_path):
    """After RENAME TABLE, ADD/DROP/RENAME COLUMN and DROP + CREATE, the change
    logs take the tables' new specs from the timeline: nothing is refused as
    an unknown table or column, and the renamed table's rows are backed up
    under its new name."""
    import os

    import pyarrow.dataset as ds
    import yaml

    import real_traffic
    from changeflow.io.dead_letter import read_dead_letters
    from changeflow.pipelines import audit_sync

    config = real_traffic.write_job(os.path.join(real_traffic.APP, 'ddl'), str(tmp_path),
                                    'job-schema.yaml')
    with open(config, encoding='utf-8') as f:
        raw = yaml.safe_load(f)
    raw['sinks'].update({'parquet': {'path': str(tmp_path / 'backup')},
                         'notify': [{'to': f'file:{tmp_path}/notes.jsonl'}]})
    with open(config, 'w', encoding='utf-8') as f:
        yaml.safe_dump(raw, f)
    audit_sync.run(['--config', config])
    assert list(read_dead_letters(str(tmp_path / 'dead-letter'))) == []
    animals = ds.dataset(str(tmp_path / 'backup' / 'table=animals'), format='parquet').to_table()
    assert 'species' in animals.column_names and animals.num_rows >= 39
    people = ds.dataset(str(tmp_path / 'backup' / 'table=people'), format='parquet').to_table()
    assert 'full_name' in people.column_names and 'age' not in people.column_names
    assert '"table":"cf_app_ddl.animals"' in (tmp_path / 'notes.jsonl').read_text()
