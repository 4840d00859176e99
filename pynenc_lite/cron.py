"""Cron expressions: a small parser for 5 fields and the search for scheduled moments.

    ┌──────── minute        0-59
    │ ┌────── hour          0-23
    │ │ ┌──── day of month  1-31
    │ │ │ ┌── month         1-12 or jan-dec
    │ │ │ │ ┌ day of week   0-7 or sun-sat (0 and 7 are Sunday)
    * * * * *      each field: *, a value, a range a-b, a list a,b,c, a step */n or a-b/n

As in classic cron, when both day fields are restricted a day matches if either does.

Firing the due moments exactly once across workers is the runners' upkeep
(`runner/upkeep.py`); this module only knows calendars.
"""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Optional

from pynenc_lite.errors import CronError

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    (
        "month",
        1,
        12,
        {m: i + 1 for i, m in enumerate(_MONTHS)},
    ),
    ("day of week", 0, 7, {d: i for i, d in enumerate(_WEEKDAYS)}),
)
_SEARCH_DAYS = 366 * 5  # 29 February on a Monday, say, is years apart


def _parse_field(text: str, index: int) -> frozenset[int]:
    name, low, high, names = _FIELDS[index]

    def value(token: str) -> int:
        token = token.lower()
        if token in names:
            return names[token]
        if not token.isdigit():
            raise CronError(f"cron {name} field: {token!r} is not a number ({low}-{high})")
        number = int(token)
        if not low <= number <= high:
            raise CronError(f"cron {name} field: {number} is outside {low}-{high}")
        return number

    result: set[int] = set()
    for part in text.split(","):
        part, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"cron {name} field: step {step_text!r} must be a number >= 1")
            step = int(step_text)
        if part == "*":
            first, last = low, high
        elif "-" in part:
            a, _, b = part.partition("-")
            first, last = value(a), value(b)
            if first > last:
                raise CronError(f"cron {name} field: range {part!r} runs backwards")
        elif part:
            first = value(part)
            last = high if step_text else first
        else:
            raise CronError(f"cron {name} field: empty entry in {text!r}")
        result.update(range(first, last + 1, step))
    if index == 4 and 7 in result:
        result = (result - {7}) | {0}
    return frozenset(result)


class CronSchedule:
    """A parsed 5-field cron expression.

    Raises:
        CronError: the expression is malformed (the message names the field).
    """

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        fields = expression.split()
        if len(fields) != 5:
            raise CronError(
                f"cron expression {expression!r} has {len(fields)} fields; it needs 5: "
                "minute hour day-of-month month day-of-week (e.g. '*/5 * * * *')"
            )
        self.expression = expression
        self.minutes, self.hours, self.days, self.months, self.weekdays = (
            _parse_field(text, i) for i, text in enumerate(fields)
        )
        self._any_day = fields[2] == "*"
        self._any_weekday = fields[4] == "*"
        try:
            self.tz = zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise CronError(f"unknown cron timezone {timezone!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r})"

    def _day_matches(self, day: datetime.date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self._any_day or self._any_weekday:
            return in_month and in_week
        return in_month or in_week  # both restricted: either one, as in classic cron

    def latest_at_or_before(self, when: datetime.datetime) -> Optional[datetime.datetime]:
        """The latest scheduled moment at or before `when` (aware), or None within 5 years."""
        local = when.astimezone(self.tz).replace(second=0, microsecond=0)
        day = local.date()
        for offset in range(_SEARCH_DAYS):
            current = day - datetime.timedelta(days=offset)
            if not self._day_matches(current):
                continue
            for hour in sorted(self.hours, reverse=True):
                if offset == 0 and hour > local.hour:
                    continue
                for minute in sorted(self.minutes, reverse=True):
                    if offset == 0 and hour == local.hour and minute > local.minute:
                        continue
                    naive = datetime.datetime.combine(current, datetime.time(hour, minute))
                    return naive.replace(tzinfo=self.tz)
        return None

    def moments_between(
        self, after: datetime.datetime, until: datetime.datetime, limit: int
    ) -> list[datetime.datetime]:
        """Scheduled moments in (after, until], oldest first, at most `limit` (the newest)."""
        found: list[datetime.datetime] = []
        cursor = until
        while len(found) < limit:
            moment = self.latest_at_or_before(cursor)
            if moment is None or moment <= after:
                break
            found.append(moment)
            cursor = moment - datetime.timedelta(minutes=1)
        return found[::-1]
