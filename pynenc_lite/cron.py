"""Cron: a small parser for 5-field expressions, and firing due moments exactly once.

    ┌──────── minute        0-59
    │ ┌────── hour          0-23
    │ │ ┌──── day of month  1-31
    │ │ │ ┌── month         1-12 or jan-dec
    │ │ │ │ ┌ day of week   0-7 or sun-sat (0 and 7 are Sunday)
    * * * * *      each field: *, a value, a range a-b, a list a,b,c, a step */n or a-b/n

As in classic cron, when both day fields are restricted a day matches if either does.

Firing: every runner calls `fire_due()` about twice a second. For each cron task it reads the
latest moment already handled and asks the backend to move it forward in one conditional
write (`advance_cron`), storing the invocation in the same transaction — so each moment fires
exactly once however many workers run. After downtime, the missed moments fire once in
total (catch-up "once", the default), once each ("all", at most 100), or not at all unless
the latest is less than a minute old ("skip"). The first time a task is seen, nothing fires:
its schedule starts from then.
"""

from __future__ import annotations

import datetime
import logging
import zoneinfo
from typing import TYPE_CHECKING, Optional

from pynenc_lite import serializer
from pynenc_lite.backend.base import NewInvocation
from pynenc_lite.errors import CronError

if TYPE_CHECKING:
    from pynenc_lite.app import Pynenc

logger = logging.getLogger(__name__)

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
CATCH_UP_MODES = ("once", "all", "skip")
MAX_CATCH_UP = 100
SKIP_TOLERANCE_SECONDS = 60.0
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


def fire_due(app: Pynenc, now: float, catch_up: str = "once") -> int:
    """Store the invocations of every cron task of `app` whose moment has come.

    Safe to call from any number of workers at once: each moment fires once.
    Returns how many invocations this call stored.
    """
    if catch_up not in CATCH_UP_MODES:
        raise ValueError(f"catch_up must be one of {CATCH_UP_MODES}, got {catch_up!r}")
    fired = 0
    backend = app.backend
    for task in app.tasks.values():
        if task.options.cron is None:
            continue
        schedule = CronSchedule(task.options.cron, app.conf.cron_timezone)
        now_utc = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        latest = schedule.latest_at_or_before(now_utc)
        if latest is None:
            continue
        handled = backend.get_cron_moment(app.app_id, task.name)
        if handled is not None and latest.timestamp() <= handled:
            continue
        moments: list[datetime.datetime] = []
        if handled is not None:  # first sight fires nothing: the schedule starts now
            if catch_up == "all":
                after = datetime.datetime.fromtimestamp(handled, datetime.timezone.utc)
                moments = schedule.moments_between(after, latest, MAX_CATCH_UP)
            elif catch_up == "once" or now - latest.timestamp() < SKIP_TOLERANCE_SECONDS:
                moments = [latest]
        invocations = [
            NewInvocation(
                f"cron-{task.name}-{int(m.timestamp())}",
                app.app_id,
                task.name,
                serializer.dumps_call(task.name, (), {}),
                m.timestamp(),
                now,
            )
            for m in moments
        ]
        if backend.advance_cron(app.app_id, task.name, handled, latest.timestamp(), invocations):
            fired += len(invocations)
            if invocations:
                logger.info(
                    "cron %s (%s): fired for %s", task.name, schedule.expression,
                    ", ".join(m.isoformat() for m in moments),
                )
    return fired
