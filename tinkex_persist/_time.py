"""Time parsing and formatting shared by the library and the command line."""

import datetime
import re
from typing import Any, Optional

__all__ = ("format_time", "parse_date", "parse_duration", "parse_seconds", "parse_time")


def parse_time(value: Any) -> Optional[datetime.datetime]:
    """Parse the service's timestamps (RFC 3339, ``Z`` or offset, any fraction length) as aware UTC datetimes."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        dt = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc)
    else:
        text = str(value).strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return datetime.datetime.fromtimestamp(float(text), tz=datetime.timezone.utc)
        m = re.fullmatch(
            r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?)?\s*(Z|z|[+-]\d{2}:?\d{2})?", text
        )
        if not m:
            raise ValueError("not an ISO 8601 time: %r" % text[:64])
        date, clock, fraction, zone = m.groups()
        iso = date + "T" + (clock or "00:00")
        if fraction:
            iso += "." + (fraction + "000000")[:6]  # Python 3.9's fromisoformat takes only 3 or 6 digits
        if zone and zone not in ("Z", "z"):
            iso += zone if ":" in zone else zone[:3] + ":" + zone[3:]
        dt = datetime.datetime.fromisoformat(iso)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)  # the service speaks UTC
    return dt.astimezone(datetime.timezone.utc)


def format_time(value: Optional[datetime.datetime]) -> Optional[str]:
    """Format an aware datetime as RFC 3339 UTC with microseconds (``...Z``); ``None`` stays ``None``."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")



def parse_date(text: str) -> datetime.datetime:
    """Parse a date given by a user (``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM]``) as aware UTC.

    Raises:
        ValueError: ``text`` is not such a date; the message says which forms are accepted.
    """
    try:
        value = parse_time(text)
    except ValueError:
        value = None
    if value is None:
        raise ValueError("%r is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM]" % text)
    return value


def parse_seconds(text: str) -> int:
    """Parse a duration given by a user as a whole number of seconds.

    Raises:
        ValueError: ``text`` is not a whole number.
    """
    try:
        return int(text)
    except ValueError:
        raise ValueError("%r is not a whole number of seconds" % text) from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> datetime.timedelta:
    """Parse a duration given by a user: a whole number with an optional unit ``s``, ``m``, ``h``, ``d`` or ``w``
    (``90m``, ``12h``, ``7d``, ``2w``; a bare number is seconds).

    Raises:
        ValueError: ``text`` is not such a duration; the message says which forms are accepted.
    """
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text.lower())
    if not m:
        raise ValueError("%r is not a duration; use a whole number with s, m, h, d or w, e.g. 12h or 7d" % text)
    return datetime.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2) or "s"])
