"""NCRONTAB, the six-field schedule of a timer trigger: `{second} {minute} {hour} {day} {month} {day-of-week}`.

Fields take `*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, and comma lists; months and days of the week
also take their English three-letter names, and day-of-week 0 (or 7) is Sunday. As in cron, when both day fields
are restricted a day matches either. Times are UTC, as on Linux plans where WEBSITE_TIME_ZONE is not honoured.
(learn.microsoft.com/azure/azure-functions/functions-bindings-timer#ncrontab-expressions)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (low, high, names) per field, in NCRONTAB's order.
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
_SEARCH_DAYS = 366 * 5  # a schedule such as "0 0 0 29 2 *" fires once in four years


class ScheduleError(ValueError):
    """The expression is not a six-field NCRONTAB expression."""


@dataclass(frozen=True)
class Schedule:
    """A parsed expression; `next_after(moment)` is the first firing strictly after `moment`."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_restricted: bool
    weekday_restricted: bool

    def _day_matches(self, day: dt.date) -> bool:
        weekday = (day.weekday() + 1) % 7  # Python: Monday = 0; cron: Sunday = 0
        in_days, in_weekdays = day.day in self.days, weekday in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The next firing after `moment` (an aware datetime), in UTC. Raises ScheduleError when there is none
        within five years (e.g. the 31st of February)."""
        start = moment.astimezone(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
        day = start.date()
        for _ in range(_SEARCH_DAYS):
            if day.month in self.months and self._day_matches(day):
                first = start.time() if day == start.date() else dt.time(0, 0, 0)
                found = self._first_time_on_or_after(first)
                if found is not None:
                    return dt.datetime.combine(day, found, tzinfo=dt.UTC)
            day += dt.timedelta(days=1)
        raise ScheduleError(f"schedule {self.expression!r} never fires")

    def _first_time_on_or_after(self, first: dt.time) -> dt.time | None:
        for hour in sorted(h for h in self.hours if h >= first.hour):
            for minute in sorted(self.minutes):
                if (hour, minute) < (first.hour, first.minute):
                    continue
                for second in sorted(self.seconds):
                    if (hour, minute, second) >= (first.hour, first.minute, first.second):
                        return dt.time(hour, minute, second)
        return None


def parse(expression: str) -> Schedule:
    """Parse a six-field NCRONTAB expression. Raises ScheduleError naming the field that is wrong."""
    fields = expression.split()
    if len(fields) != 6:
        raise ScheduleError(
            f"schedule {expression!r} must have six fields ({{second}} {{minute}} {{hour}} {{day}} {{month}} "
            "{day-of-week}); a TimeSpan schedule is not supported here"
        )
    values = [_field(text, *spec) for text, spec in zip(fields, _FIELDS, strict=True)]
    weekdays = frozenset(v % 7 for v in values[5])
    return Schedule(
        expression=expression,
        seconds=values[0],
        minutes=values[1],
        hours=values[2],
        days=values[3],
        months=values[4],
        weekdays=weekdays,
        day_restricted=fields[3] != "*",
        weekday_restricted=fields[5] != "*",
    )


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    found: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
        except ValueError:
            raise ScheduleError(f"{name} step {step_text!r} is not a number") from None
        if step < 1:
            raise ScheduleError(f"{name} step must be at least 1")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = _value(start, name, low, high, names), _value(end, name, low, high, names)
        else:
            first = _value(base, name, low, high, names)
            last = high if step_text else first
        if first > last:
            raise ScheduleError(f"{name} range {base!r} runs backwards")
        found.update(range(first, last + 1, step))
    return frozenset(found)


def _value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + (1 if names is _MONTHS else 0)
    try:
        value = int(text)
    except ValueError:
        raise ScheduleError(f"{name} value {text!r} is not a number or a name") from None
    if not low <= value <= high:
        raise ScheduleError(f"{name} value {value} is outside {low}-{high}")
    return value
