"""Cron expressions as Node-RED's inject (cronosjs) and cron-plus read them.

Field counts::

    5 fields   minute hour day-of-month month day-of-week          (second = 0)
    6 fields   SECOND minute hour day-of-month month day-of-week   (seconds come first)
    7 fields   second minute hour day-of-month month day-of-week year

So ``0 55 * * * *`` and ``0 55 * * * * *`` both fire at HH:55:00 every hour (the SMT
flow's schedule), while plain Unix ``55 * * * *`` does the same with five fields.

Supported per field: ``*``, numbers, ``a-b`` ranges (wrapping on cyclic fields, e.g.
``FRI-MON``, ``22-2``), ``/step`` increments, lists, ``JAN-DEC`` and ``SUN-SAT`` names
(day of week 0 and 7 are Sunday), ``?`` in the day fields, ``L`` and ``15W`` in the
day-of-month field, ``5#2`` (second Friday) and ``5L`` / ``FriL`` (last Friday) in the
day-of-week field.  As in cronosjs, when both day fields are restricted either may match.

Time zones and daylight saving follow cronosjs' defaults: the expression is matched
against the wall clock of the zone (an IANA name such as ``America/Chicago``, ``UTC``,
a fixed offset such as ``+05:30``, or the system zone when none is given).  Times that
fall into the hour skipped when clocks go forward fire once, at the instant of the
change ("insert"); wall times that happen twice when clocks go back fire only the first
time ("skip repeated hour").

The matching itself is croniter's (imported lazily: ``meterflow run`` must start fast);
this module adds the cronosjs field order, precise validation messages and the DST rules.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache

__all__ = ["next_fire", "validate", "zone", "CronError"]


class CronError(ValueError):
    """An invalid cron expression or time zone (the message says which field and why)."""


# name, low, high, cyclic (wrap-around ranges allowed)
_SECOND = ("second", 0, 59, True)
_MINUTE = ("minute", 0, 59, True)
_HOUR = ("hour", 0, 23, True)
_DOM = ("day-of-month", 1, 31, False)
_MONTH = ("month", 1, 12, True)
_DOW = ("day-of-week", 0, 7, True)
_YEAR = ("year", 1970, 2099, False)  # croniter's range (cronosjs allows 0-275759)

_LAYOUTS = {
    5: (_MINUTE, _HOUR, _DOM, _MONTH, _DOW),
    6: (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW),
    7: (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW, _YEAR),
}
_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_ALIASES = {
    "@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *", "@hourly": "0 0 * * * *",
}


class _FieldError(Exception):
    pass


def _value(text: str, field: tuple) -> int:
    name, low, high, _ = field
    t = text.lower()
    if t.isdigit():
        v = int(t)
    elif name == "month" and t in _MONTHS:
        v = _MONTHS[t]
    elif name == "day-of-week" and t in _DAYS:
        v = _DAYS[t]
    else:
        hint = ""
        if name == "month":
            hint = " (use 1-12 or JAN-DEC)"
        elif name == "day-of-week":
            hint = " (use 0-7 or SUN-SAT)"
        elif t.startswith("-"):
            hint = " (negative numbers are not allowed)"
        raise _FieldError(f"{text!r} is not a valid value{hint}")
    if not low <= v <= high:
        raise _FieldError(f"{v} is out of range {low}-{high}")
    return v


def _base(text: str, field: tuple) -> str:
    """Validate ``*`` | ``v`` | ``a-b`` and return it in croniter's numeric form."""
    name, low, high, cyclic = field
    if text == "*":
        return "*"
    if text.count("-") == 1 and not text.startswith("-"):
        a, b = text.split("-")
        va, vb = _value(a, field), _value(b, field)
        if va > vb and not cyclic:
            raise _FieldError(f"range {text!r} goes backwards ({name} ranges do not wrap around)")
        if name == "day-of-week" and (va == 7 or vb == 7) and va != vb:
            # croniter knows 7 only as a single value; 5-7 is 5-6,0
            if vb == 7:
                return f"{va}-6,0" if va <= 6 else "0"
            return f"0-{vb}"
        return f"{va}-{vb}"
    if text.count("-") > 1:
        raise _FieldError(f"{text!r} is not a valid range (write a-b)")
    return str(_value(text, field) % 7 if name == "day-of-week" else _value(text, field))


def _item(text: str, field: tuple, only: bool) -> str:
    name = field[0]
    if text == "":
        raise _FieldError("empty list element (check the commas)")
    if text == "?":
        if name not in ("day-of-month", "day-of-week"):
            raise _FieldError("'?' is only allowed in the day-of-month and day-of-week fields")
        if not only:
            raise _FieldError("'?' cannot be part of a list")
        return "*"
    low = text.lower()
    if name == "day-of-month":
        if low == "l":
            return "L"
        if low == "lw":
            raise _FieldError("'LW' (last weekday of the month) is not supported (L is the last day of the month)")
        m = re.fullmatch(r"(\d+)w", low)
        if m:
            if not only:
                raise _FieldError("'W' (nearest weekday) cannot be part of a list")
            return f"{_value(m.group(1), field)}W"
        if "w" in low:
            raise _FieldError("'W' only follows a single day, e.g. 15W")
        if "l" in low:
            raise _FieldError("'L' (last day of the month) must stand alone")
    if name == "day-of-week":
        if "#" in low:
            day, _, nth = low.partition("#")
            if not nth.isdigit() or not 1 <= int(nth) <= 5:
                raise _FieldError("the number after '#' must be 1-5 (the nth weekday of the month)")
            if "-" in day or day == "*" or "/" in day:
                raise _FieldError("'#' follows a single day, e.g. 5#2 or FRI#2")
            return f"{_value(day, field) % 7}#{nth}"
        if low.endswith("l") and len(low) > 1:
            day = low[:-1]
            if "-" in day or day == "*" or "/" in day:
                raise _FieldError("'L' follows a single day here, e.g. 5L or FRIL (last Friday)")
            return f"L{_value(day, field) % 7}"
        if low.startswith("l") and len(low) > 1 and low[1:].isdigit():
            return f"L{_value(low[1:], field) % 7}"  # croniter's own spelling, L5
    if "/" in text:
        rng, _, step = text.partition("/")
        if not step.isdigit():
            raise _FieldError("the step after '/' must be a whole number")
        if int(step) == 0:
            raise _FieldError("the step after '/' must be 1 or more")
        if rng == "":
            raise _FieldError(f"nothing before '/' (write */{step} or a-b/{step})")
        if "-" not in rng and rng != "*":
            start = _value(rng, field)
            return f"{start % 7 if name == 'day-of-week' else start}-{min(field[2], 6 if name == 'day-of-week' else field[2])}/{step}"
        base = _base(rng, field)
        if "," in base:
            raise _FieldError("a stepped range cannot end at 7 (use 0-6)")
        return f"{base}/{step}"
    return _base(text, field)


def _parse(expr: str) -> tuple[str, int]:
    """Validate ``expr`` and translate it to croniter syntax; returns (expression, field count)."""
    if not isinstance(expr, str):
        raise CronError(f"a cron expression is text, got {type(expr).__name__}")
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in _ALIASES:
            raise CronError(f"unknown cron shortcut {text!r} (known: {', '.join(_ALIASES)})")
        text = _ALIASES[text.lower()]
    parts = text.split()
    layout = _LAYOUTS.get(len(parts))
    if layout is None:
        raise CronError(
            f"cron {expr!r} has {len(parts)} field(s); expected 5 (minute hour day-of-month month day-of-week), "
            "6 (second first: second minute hour day-of-month month day-of-week) or 7 (6 plus year)")
    out = []
    for i, (part, field) in enumerate(zip(parts, layout, strict=True)):
        items = part.split(",")
        done = []
        for it in items:
            try:
                done.append(_item(it, field, len(items) == 1))
            except _FieldError as e:
                where = f" item {it!r}" if len(items) > 1 and it else ""
                raise CronError(f"cron {expr!r}: field {i + 1} of {len(parts)} ({field[0]}) {part!r}{where}: {e}") from None
        out.append(",".join(done))
    if len(parts) == 5:
        out.insert(0, "0")
    return " ".join(out), len(parts)


@lru_cache(maxsize=256)
def _compiled(expr: str) -> str:
    croniter_expr, _ = _parse(expr)
    from croniter import croniter

    try:
        croniter(croniter_expr, datetime(2000, 1, 1), second_at_beginning=True)
    except Exception as e:  # anything our own checks let through
        raise CronError(f"cron {expr!r}: {e}") from None
    return croniter_expr


def validate(expr: str) -> str | None:
    """None for a valid expression, else a message naming the field and the reason."""
    try:
        _compiled(expr)
    except CronError as e:
        return str(e)
    return None


_OFFSET = re.compile(r"(?:UTC|GMT)?([+-])(\d{1,2}):?(\d{2})?")


@lru_cache(maxsize=64)
def zone(tz: str | None = None) -> tzinfo:
    """The tzinfo for an IANA name, ``UTC``, a fixed offset ``+05:30``, or None (the system zone)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if tz in (None, ""):
        name = os.environ.get("TZ", "").lstrip(":")
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                pass
        try:
            with open("/etc/localtime", "rb") as f:
                return ZoneInfo.from_file(f, key="localtime")
        except (OSError, ValueError):
            return UTC
    assert tz is not None
    if tz.upper() in ("UTC", "Z", "GMT"):
        return UTC
    m = _OFFSET.fullmatch(tz.strip())
    if m:
        sign = -1 if m.group(1) == "-" else 1
        hours, minutes = int(m.group(2)), int(m.group(3) or 0)
        if hours > 14 or minutes > 59:
            raise CronError(f"invalid UTC offset {tz!r}")
        return timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {tz!r} (use an IANA name such as Europe/London, UTC or +02:00)") from None


def validate_tz(tz: str | None) -> str | None:
    try:
        zone(tz)
    except CronError as e:
        return str(e)
    return None


def _epoch(wall: datetime, tz: tzinfo) -> float:
    """Epoch of a naive wall time in ``tz``: the first one when it happens twice,
    the instant the clocks change when it falls into the skipped hour (cronosjs' "insert")."""
    first = wall.replace(tzinfo=tz, fold=0)
    back = first.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if back == wall:
        return first.timestamp()
    # In the gap: fold=1 reads it with the new offset (an earlier instant), fold=0 with the
    # old one (a later instant); the offset change lies between.  Bisect to the second.
    lo = wall.replace(tzinfo=tz, fold=1).timestamp()
    hi = first.timestamp()
    if lo > hi:
        lo, hi = hi, lo
    off_lo = datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == off_lo:
            lo = mid
        else:
            hi = mid
    return float(hi)


def next_fire(expr: str, after: float, tz: str | tzinfo | None = None) -> float | None:
    """The first epoch time strictly after ``after`` at which ``expr`` fires in zone ``tz``.

    None when the expression has no further match (e.g. a year in the past)."""
    from croniter import CroniterBadDateError, croniter

    croniter_expr = _compiled(expr)
    zi = tz if isinstance(tz, tzinfo) else zone(tz)
    # Match against the zone's wall clock (naive datetimes), then map each candidate back to
    # an instant with the DST rules above; a candidate at or before ``after`` (the second pass
    # through a repeated hour) is skipped.
    start = datetime.fromtimestamp(after, zi).replace(tzinfo=None, microsecond=0)
    it = croniter(croniter_expr, start, second_at_beginning=True)
    for _ in range(100_000):
        try:
            wall = it.get_next(datetime)
        except (CroniterBadDateError, StopIteration):
            return None
        when = _epoch(wall, zi)
        if when > after:
            return when
    return None  # pragma: no cover - an expression that only matches inside repeated hours


def fires(expr: str, after: float, count: int, tz: str | tzinfo | None = None) -> list[float]:
    """The next ``count`` fire times (for ``meterflow`` tooling and tests)."""
    out: list[float] = []
    t = after
    for _ in range(count):
        nxt = next_fire(expr, t, tz)
        if nxt is None:
            break
        out.append(nxt)
        t = nxt
    return out
