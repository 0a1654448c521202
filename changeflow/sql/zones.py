"""MySQL ``time_zone`` values."""

import datetime
import re
import zoneinfo
from typing import Optional

__all__ = ['parse_time_zone']

_OFFSET = re.compile(r'([+-])(\d{1,2}):(\d{2})')


def parse_time_zone(name: str) -> Optional[datetime.tzinfo]:
    """The zone of a time_zone value ('+05:30', 'UTC', 'Europe/Paris'), or
    None when it is not one (or the system has no data for it)."""
    match = _OFFSET.fullmatch(name.strip())
    if match:
        offset = datetime.timedelta(hours=int(match.group(2)), minutes=int(match.group(3)))
        return datetime.timezone(-offset if match.group(1) == '-' else offset)
    try:
        return zoneinfo.ZoneInfo(name.strip())
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return None
