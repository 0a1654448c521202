"""The state store creates its tables however other creators interleave with it."""

import sqlalchemy as sa

from changeflow.state.tables import create_tables


def test_tables_made_by_another_creator_between_check_and_create_are_taken_as_made(tmp_path):
    """A rival creates each table after this creator checked for it and before
    its CREATE, so every try fails on a different table; the tables are still made."""
    url = f'sqlite:///{tmp_path}/state.db'
    engine, rival = sa.create_engine(url), sa.create_engine(url)
    metadata, rival_metadata = sa.MetaData(), sa.MetaData()
    for name in ('checkpoints', 'checkpoint_state', 'stream_start'):
        sa.Table(name, metadata, sa.Column('job', sa.String(10), primary_key=True))
        sa.Table(name, rival_metadata, sa.Column('job', sa.String(10), primary_key=True))
    raced = []

    def rival_creates_it_first(table, connection, **kw):
        if table.name not in raced:
            raced.append(table.name)
            rival_metadata.tables[table.name].create(rival)
    for table in metadata.tables.values():
        sa.event.listen(table, 'before_create', rival_creates_it_first)

    create_tables(metadata, engine)

    assert sorted(raced) == sorted(metadata.tables)
    assert sorted(sa.inspect(engine).get_table_names()) == sorted(metadata.tables)
