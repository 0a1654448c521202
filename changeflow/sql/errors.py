"""The one error type of statement translation."""

__all__ = ['SqlChangeError', 'needs_lookup']


class SqlChangeError(Exception):
    """A statement that cannot become row changes; ``reason`` classifies it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


def needs_lookup(detail: str) -> SqlChangeError:
    """The statement alone cannot reproduce the row: the source must be read."""
    return SqlChangeError('needs-lookup', detail)
