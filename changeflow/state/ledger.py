"""A ledger of side effects that succeeded, so replays never repeat them.

A handler call, an SNS publish or a webhook post cannot be undone or made
idempotent by the receiver, so changeflow remembers each one that succeeded:
one row per (scope, id) in ``changeflow_ledger``, where ``scope`` names the
side effect (a handler's name, a notification target) and ``id`` the change
(its content-derived change id). The protocol is *check before, record
after*: :meth:`Ledger.done` filters out what already happened, the caller
performs the rest, and :meth:`Ledger.record` writes what succeeded. A crash
between a side effect and its record repeats that one effect on the replay
(at most one bundle's worth); nothing that was recorded is ever repeated.

The store is a SQLAlchemy database: a SQLite file beside the job by default,
the replica database or any shared database in production (workers on
several machines must share it). Tested on SQLite, PostgreSQL and MariaDB.
"""

import time
from typing import Iterable, Set

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from changeflow.state.tables import StateTables

__all__ = ['Ledger']

_CHUNK = 500  # ids per IN (...) query: well under every dialect's parameter limit


class Ledger(StateTables):
    """Which (scope, id) side effects already succeeded.

    Args:
      url: a SQLAlchemy URL or Engine.
      prefix: table-name prefix.
    """

    def __init__(self, url, prefix: str = 'changeflow_'):
        super().__init__(url)
        self.table = sa.Table(
            f'{prefix}ledger', self._metadata,
            sa.Column('scope', sa.String(200), primary_key=True),
            sa.Column('id', sa.String(128), primary_key=True),
            sa.Column('done_us', sa.BigInteger, nullable=False))

    def done(self, scope: str, ids: Iterable[str]) -> Set[str]:
        """The ids of ``ids`` already recorded under ``scope``."""
        self._create()
        ids = list(dict.fromkeys(ids))
        found = set()
        with self.engine.connect() as connection:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                found.update(connection.execute(sa.select(self.table.c.id).where(
                    self.table.c.scope == scope, self.table.c.id.in_(chunk))).scalars())
        return found

    def record(self, scope: str, ids: Iterable[str]) -> None:
        """Records ``ids`` as done under ``scope``; ids already there are kept as they are."""
        self._create()
        ids = list(dict.fromkeys(ids))
        if not ids:
            return
        try:
            self._insert_new(scope, ids)
        except sa_exc.IntegrityError:  # a concurrent writer recorded some of them first
            self._insert_new(scope, ids)

    def _insert_new(self, scope, ids):
        now_us = time.time_ns() // 1000
        with self.engine.begin() as connection:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                known = set(connection.execute(sa.select(self.table.c.id).where(
                    self.table.c.scope == scope, self.table.c.id.in_(chunk))).scalars())
                new = [{'scope': scope, 'id': i, 'done_us': now_us} for i in chunk if i not in known]
                if new:
                    connection.execute(sa.insert(self.table), new)

    def dispose(self):
        self.engine.dispose()
