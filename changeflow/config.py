"""The YAML job configuration, validated into typed records."""

from typing import NamedTuple, Optional, Tuple

__all__ = ['TableSpec']

# Column types a table spec may declare; sinks map them to SQL and Arrow types.
COLUMN_TYPES = ('integer', 'bigint', 'decimal', 'float', 'string', 'text',
                'boolean', 'date', 'datetime', 'binary', 'json')


class TableSpec(NamedTuple):
    """How one source table is replicated.

    ``columns``: (name, type) pairs in table order, types from COLUMN_TYPES; a
    decimal may carry precision and scale as 'decimal(10,2)'. Empty when not
    declared: the database sink then reflects the target table, which must exist.
    """
    source: str                   # 'database.table' as the audit log names it
    key: Tuple[str, ...]
    target: str                   # replica table name
    columns: Tuple[Tuple[str, str], ...] = ()
    redact: Tuple[str, ...] = ()  # columns never shown in notifications or logs

    def column_type(self, name: str) -> Optional[str]:
        return dict(self.columns).get(name)
