"""The state store's engine and tables, shared by the checkpoint store and the ledger."""

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from changeflow.io.sqlite import begin_immediate

__all__ = ['StateTables', 'create_tables', 'store_engine']


def create_tables(metadata: sa.MetaData, engine: sa.Engine) -> None:
    """``metadata.create_all`` that tolerates other processes creating the
    same tables between its checks and its CREATEs.

    Each failed try means another creator made one of the tables, so one try
    per table, plus one, is enough however the creators interleave.
    """
    for _ in range(len(metadata.tables)):
        try:
            metadata.create_all(engine)
            return
        except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.IntegrityError):
            pass
    metadata.create_all(engine)


def store_engine(url) -> sa.Engine:
    """An Engine as given, else one for the URL; SQLite's takes its write
    lock at BEGIN, so writers in several processes never deadlock."""
    if isinstance(url, sa.engine.Engine):
        return url
    engine = sa.create_engine(url)
    if engine.dialect.name == 'sqlite':
        begin_immediate(engine)
    return engine


class StateTables:
    """Base of the stores: their engine and tables, created on first use
    (a store built in a pipeline's construction may never be used there)."""

    def __init__(self, url):
        self.engine = store_engine(url)
        self._metadata = sa.MetaData()
        self._created = False

    def _create(self):
        if not self._created:
            create_tables(self._metadata, self.engine)
            self._created = True
