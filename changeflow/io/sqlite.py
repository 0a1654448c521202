"""SQLite engines that writers in several processes can share."""

import sqlalchemy as sa
from sqlalchemy import event

__all__ = ['begin_immediate']


def begin_immediate(engine: sa.Engine) -> None:
    """Takes over pysqlite's transaction handling (it skips BEGIN before
    SELECTs and SAVEPOINTs: SQLAlchemy's documented recipe) and takes the
    write lock at BEGIN, so a transaction's read-check-write is atomic and two
    writers never deadlock on a lock upgrade."""
    @event.listens_for(engine, 'connect')
    def _no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, 'begin')
    def _begin_immediate(connection):
        connection.exec_driver_sql('BEGIN IMMEDIATE')
