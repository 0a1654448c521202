"""The one error type of statement translation."""

from typing import Any, Optional, Sequence, Tuple, Union

__all__ = ['SqlChangeError', 'needs_lookup']


class SqlChangeError(Exception):
    """A statement that cannot become row changes; ``reason`` classifies it.

    ``table``: the source table ('database.table') the refused statement
    writes, or a tuple of them, when known; the SQL stage then marks what it
    wrote diverged. ``keys``: the (raw) keys of the rows it writes in that one
    table when the statement names them; None when it cannot (the whole table
    is marked).
    """

    def __init__(self, reason: str, detail: str,
                 table: Union[None, str, Tuple[str, ...]] = None,
                 keys: Optional[Sequence[Tuple[Any, ...]]] = None):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail
        self.table = table
        self.keys = None if keys is None else tuple(keys)

    @property
    def tables(self) -> Tuple[str, ...]:
        if self.table is None:
            return ()
        return (self.table,) if isinstance(self.table, str) else tuple(self.table)

    def on(self, table, keys=None) -> 'SqlChangeError':
        """The same refusal, naming what the statement writes."""
        return SqlChangeError(self.reason, self.detail, table, keys)


def needs_lookup(detail: str) -> SqlChangeError:
    """The statement alone cannot reproduce the row: the source must be read."""
    return SqlChangeError('needs-lookup', detail)
