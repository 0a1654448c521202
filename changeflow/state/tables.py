"""Creating the state store's tables from workers that start at the same time."""

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

__all__ = ['create_tables']


def create_tables(metadata: sa.MetaData, engine: sa.Engine) -> None:
    """``metadata.create_all`` that tolerates another process creating the
    same tables between its check and its CREATE (the second try sees them)."""
    try:
        metadata.create_all(engine)
    except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.IntegrityError):
        metadata.create_all(engine)
