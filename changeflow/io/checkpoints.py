"""The checkpoint store of the stream readers: a table in a SQLAlchemy database.

A SQLite file beside the job by default (:func:`sqlite_url_beside`), the
replica database in production; tested on SQLite, PostgreSQL and MariaDB.
Two tables (prefix ``changeflow_`` configurable):

* ``changeflow_checkpoints(job, stream, shard, sequence, finished, parents,
  updated_us)``, primary key ``(job, stream, shard)``: per shard the last
  sequence number read (decimal text, compared as an integer), whether the
  shard is read to its end, and its parents (JSON list), the lineage needed to
  keep parents before children after a restart when the listing no longer
  shows the parents.
* ``changeflow_checkpoint_state(job, stream, state, updated_us)``: one opaque
  JSON value per (job, stream) that the caller persists with the positions
  (the per-connection state of a catch-up cycle: its open transactions).
* ``changeflow_stream_start(job, stream, start_ms)``: when the job first read
  the stream (:meth:`CheckpointStore.start_time_ms`), so a reader starting at
  the newest records starts at the same point in every cycle, also on shards
  that received nothing before their first checkpoint.

:meth:`CheckpointStore.commit` writes the positions and the state in one
transaction, so they always describe the same cycle. Commit only after every
sink has committed the cycle's output: a crash in between replays the cycle,
which the idempotent sinks absorb. A commit is idempotent, and it never moves
a shard backwards: a commit that would (an older sequence, a finished shard
unfinished: a stale or concurrent writer of the same job) raises
:class:`CheckpointConflict` and changes nothing.
"""

import json
import os
import time
from typing import Any, Dict, Mapping, NamedTuple

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql

from changeflow.io.shards import ShardPosition, sequence_key
from changeflow.state.tables import StateTables

__all__ = ['Checkpoint', 'CheckpointStore', 'CheckpointConflict', 'sqlite_url_beside']

_LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), 'mysql', 'mariadb')


class CheckpointConflict(ValueError):
    """A commit would move a shard backwards; nothing was written."""


class Checkpoint(NamedTuple):
    """What :meth:`CheckpointStore.load` returns for one (job, stream)."""
    positions: Dict[str, ShardPosition]    # shard id -> position; {} before the first commit
    state: Any                             # the JSON value last committed; None before


def sqlite_url_beside(job_path: str) -> str:
    """The default store: ``<job>.checkpoints.db`` next to the job's config file."""
    base, _ = os.path.splitext(os.path.abspath(job_path))
    return f'sqlite:///{base}.checkpoints.db'


class CheckpointStore(StateTables):
    """Checkpoints of stream readers, keyed by (job name, stream, shard).

    Args:
      url: a SQLAlchemy URL or Engine (an Engine is used as given).
      prefix: table-name prefix.
    """

    def __init__(self, url='sqlite:///changeflow-checkpoints.db', prefix: str = 'changeflow_'):
        super().__init__(url)
        metadata = self._metadata
        self.shards = sa.Table(
            f'{prefix}checkpoints', metadata,
            sa.Column('job', sa.String(128), primary_key=True),
            sa.Column('stream', sa.String(400), primary_key=True),
            sa.Column('shard', sa.String(128), primary_key=True),
            sa.Column('sequence', sa.String(128), nullable=True),
            sa.Column('finished', sa.Boolean, nullable=False),
            sa.Column('parents', sa.String(1024), nullable=False),
            sa.Column('updated_us', sa.BigInteger, nullable=False))
        self.states = sa.Table(
            f'{prefix}checkpoint_state', metadata,
            sa.Column('job', sa.String(128), primary_key=True),
            sa.Column('stream', sa.String(400), primary_key=True),
            sa.Column('state', _LONG_TEXT, nullable=False),
            sa.Column('updated_us', sa.BigInteger, nullable=False))
        self.starts = sa.Table(
            f'{prefix}stream_start', metadata,
            sa.Column('job', sa.String(128), primary_key=True),
            sa.Column('stream', sa.String(400), primary_key=True),
            sa.Column('start_ms', sa.BigInteger, nullable=False))

    def load(self, job: str, stream: str) -> Checkpoint:
        """The positions and state last committed for (job, stream)."""
        self._create()
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(self.shards).where(
                self.shards.c.job == job, self.shards.c.stream == stream)).all()
            state = connection.execute(sa.select(self.states.c.state).where(
                self.states.c.job == job, self.states.c.stream == stream)).scalar()
        return Checkpoint({r.shard: _position(r) for r in rows},
                          None if state is None else json.loads(state))

    def start_time_ms(self, job: str, stream: str, now_ms: int) -> int:
        """The time (epoch ms) the job first read the stream: ``now_ms`` at the
        first call, stored at once, and the stored time ever after.

        Stored before the cycle's sinks commit: it names where the job starts,
        not how far it got, so a cycle that crashes starts again at the same time.
        """
        self._create()
        try:
            return self._start_time_ms(job, stream, now_ms)
        except sa_exc.IntegrityError:  # a concurrent first call stored its time first
            return self._start_time_ms(job, stream, now_ms)

    def _start_time_ms(self, job, stream, now_ms):
        with self.engine.begin() as connection:
            stored = connection.execute(sa.select(self.starts.c.start_ms).where(
                self.starts.c.job == job, self.starts.c.stream == stream)).scalar()
            if stored is not None:
                return stored
            connection.execute(self.starts.insert().values(job=job, stream=stream,
                                                           start_ms=now_ms))
        return now_ms

    def commit(self, job: str, stream: str, positions: Mapping[str, ShardPosition],
               state: Any = None) -> None:
        """Store ``positions`` (the shards read this cycle; others are kept as
        they are) and ``state`` (replacing the last) in one transaction.

        Raises CheckpointConflict, writing nothing, when a shard would move
        backwards. A concurrent first commit of the same keys is retried.
        """
        self._create()
        encoded_state = json.dumps(state, sort_keys=True, separators=(',', ':'))
        for attempt in range(5):
            try:
                with self.engine.begin() as connection:
                    self._commit(connection, job, stream, positions, encoded_state)
                return
            except sa_exc.DBAPIError as e:
                if attempt == 4 or not _retryable(e):
                    raise

    def _commit(self, connection, job, stream, positions, encoded_state):
        now_us = time.time_ns() // 1000
        t, s = self.shards, self.states
        where = (s.c.job == job, s.c.stream == stream)
        # The state row is the (job, stream) lock: commits of one job take turns.
        # A first commit inserts it (a concurrent one fails on the key and retries);
        # locking a row that does not exist yet would deadlock on InnoDB gap locks.
        if connection.execute(sa.select(s.c.job).where(*where)).first() is None:
            connection.execute(s.insert().values(
                job=job, stream=stream, state=encoded_state, updated_us=now_us))
            old_state = encoded_state
        else:
            old_state = connection.execute(
                sa.select(s.c.state).where(*where).with_for_update()).scalar()
        stored = {r.shard: r for r in connection.execute(  # a locking read sees the newest rows
            sa.select(t).where(t.c.job == job, t.c.stream == stream).with_for_update())}
        for shard_id, position in sorted(positions.items()):
            old = stored.get(shard_id)
            if old is None:
                connection.execute(t.insert().values(
                    job=job, stream=stream, shard=shard_id, sequence=position.sequence,
                    finished=position.finished, parents=json.dumps(list(position.parents)),
                    updated_us=now_us))
                continue
            old_position = _position(old)
            _check_forward(stream, shard_id, old_position, position)
            new = position._replace(parents=position.parents or old_position.parents)
            if new != old_position:
                connection.execute(t.update().where(
                    t.c.job == job, t.c.stream == stream, t.c.shard == shard_id).values(
                    sequence=new.sequence, finished=new.finished,
                    parents=json.dumps(list(new.parents)), updated_us=now_us))
        if old_state != encoded_state:
            connection.execute(s.update().where(*where).values(
                state=encoded_state, updated_us=now_us))


def _retryable(error: sa_exc.DBAPIError) -> bool:
    """A lost race worth running the transaction again: a duplicate first
    insert, a deadlock (MariaDB 1213, PostgreSQL 40P01), a lock wait timeout."""
    if isinstance(error, sa_exc.IntegrityError):
        return True
    orig = getattr(error, 'orig', None)
    code = getattr(orig, 'pgcode', None) or (orig.args[0] if getattr(orig, 'args', None) else None)
    return code in (1213, 1205, '40P01', '40001')


def _position(row) -> ShardPosition:
    return ShardPosition(row.sequence, bool(row.finished), tuple(json.loads(row.parents)))


def _check_forward(stream, shard_id, old: ShardPosition, new: ShardPosition):
    backwards = (
        (old.finished and not new.finished)
        or (old.sequence is not None and new.sequence is None)
        or (old.sequence is not None and sequence_key(new.sequence) < sequence_key(old.sequence)))
    if backwards:
        raise CheckpointConflict(
            f'{stream}/{shard_id}: checkpoint would move back from {old.sequence} '
            f'(finished={old.finished}) to {new.sequence} (finished={new.finished}); '
            f'is another run of this job committing?')
