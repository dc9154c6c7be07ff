"""Calendar budget periods (day, week from Monday, month, total) in the configured time zone."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

UTC = ZoneInfo("UTC")


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _local_start(period: str, now: float, zone: ZoneInfo) -> datetime | None:
    if period == "total":
        return None
    local = datetime.fromtimestamp(now, zone)
    day = _midnight(local)
    if period == "day":
        return day
    if period == "week":
        return _midnight(day - timedelta(days=day.weekday()))
    return day.replace(day=1)


def period_start(period: str, now: float, zone: ZoneInfo = UTC) -> float:
    """Unix time at which the budget period holding `now` began (0.0 for `total`).

    Midnight is local midnight in `zone`; across a daylight-saving change it is still the
    wall-clock midnight of that day.
    """
    start = _local_start(period, now, zone)
    return 0.0 if start is None else _wall(start, zone).timestamp()


def period_end(period: str, now: float, zone: ZoneInfo = UTC) -> float | None:
    """Unix time at which the budget period holding `now` ends and a new one begins."""
    start = _local_start(period, now, zone)
    if start is None:
        return None
    if period == "day":
        end = start + timedelta(days=1)
    elif period == "week":
        end = start + timedelta(days=7)
    else:
        end = (start + timedelta(days=32)).replace(day=1)
    return _wall(end, zone).timestamp()


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    """A naive wall-clock time in `zone` (timedelta arithmetic keeps the old offset)."""
    return moment.replace(tzinfo=None).replace(tzinfo=zone)


def iso(moment: float | None, zone: ZoneInfo = UTC) -> str | None:
    """An ISO 8601 time with its offset in `zone`, as the API and messages show it."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, zone).isoformat(timespec="seconds")
