"""date-format: parse a date/time, adjust it, and format it (the node-red-contrib-moment node).

::

    - id: last_read_date
      type: date-format
      input: payload.odrRead.readDate   # msg path, flow.<key> or global.<key>
      input_type: msg                   # msg (default) | now: the current time | str: 'input' is the date text
      input_tz: America/Chicago         # zone of dates written without an offset (default: the system zone)
      format: YYYY-MM-DD HH:mm:ss       # moment.js tokens; iso (default), date, object, fromnow, calendar
      output: payload                   # msg path, flow.<key> or global.<key>
      output_tz: America/Chicago        # zone of the result (default: input_tz)
      adjust_amount: -1                 # optional: add (or with a minus, subtract) this many ...
      adjust_unit: days                 # ... years quarters months weeks days hours minutes seconds milliseconds
      wires: [set_last_read]

What it reads, as the moment node: a number is epoch milliseconds; text is ISO 8601
(``2020-04-04T21:25:34Z``, ``2020-04-04 21:25:34``), ``D/M/Y`` or ``M/D/Y`` with ``/`` (M/D/Y
when ``input_tz`` is an ``America/`` zone or ``us_dates`` is set), ``D.M.Y``, ``Y-M-D``, each
with an optional time and AM/PM, an RFC 2822 date, or ``today`` / ``yesterday`` /
``tomorrow``; a missing property means now.  Text that is no date gives ``""`` and a warning.

``format``: moment.js tokens (``YYYY YY Q MMMM MMM MM M Do DD D DDDD DDD dddd ddd dd d E
HH H hh h kk k mm m ss s SSS SS S A a ZZ Z z X x WW W``; ``[text]`` is literal, English
names); ``iso`` gives ISO 8601 in UTC with milliseconds (``2020-04-05T02:25:34.000Z``);
``date`` a timezone-aware datetime; ``object`` a mapping of years, months (0-11), date,
hours, minutes, seconds, milliseconds; ``fromnow`` text such as ``3 hours ago``;
``calendar`` ``Today at 9:25 PM`` (``YYYY-MM-DD`` beyond a week).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ..message import MISSING, ParentMissing, lookup, set_path
from ..node import Node
from ..schema import Field
from .change import split_target

UNITS = {"years": "years", "y": "years", "quarters": "quarters", "Q": "quarters", "months": "months",
         "M": "months", "weeks": "weeks", "w": "weeks", "days": "days", "d": "days", "hours": "hours",
         "h": "hours", "minutes": "minutes", "m": "minutes", "seconds": "seconds", "s": "seconds",
         "milliseconds": "milliseconds", "ms": "milliseconds"}
SPECIAL = ("iso", "iso8601", "date", "jsdate", "object", "fromnow", "timeago", "calendar", "aroundnow")
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]

_TOKEN = re.compile(r"\[[^\]]*\]|YYYY|YY|Q|MMMM|MMM|MM|Mo|M|DDDD|DDD|Do|DD|D|dddd|ddd|dd|d|E|HH|H|hh|h|kk|k"
                    r"|mm|m|ss|s|SSS|SS|S|A|a|ZZ|Z|zz|z|X|x|WW|W")
_SLASHED = re.compile(r"(\d{1,4})([/.\-])(\d{1,2})\2(\d{1,4})"
                      r"(?:[ T,]+(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?\s*([AaPp][Mm])?)?")


def _zone(name: str | None) -> tzinfo:
    if not name:
        local = datetime.now().astimezone().tzinfo
        return local if local is not None else UTC
    if name.upper() == "UTC":
        return UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _offset(dt: datetime, sep: str) -> str:
    off = dt.utcoffset() or timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{sep}{minutes % 60:02d}"


def format_moment(dt: datetime, fmt: str) -> str:
    """Format ``dt`` with moment.js tokens (English)."""
    def tok(m: re.Match) -> str:
        t = m.group(0)
        if t.startswith("["):
            return t[1:-1]
        h12 = dt.hour % 12 or 12
        iso_week = dt.isocalendar().week
        return {
            "YYYY": f"{dt.year:04d}", "YY": f"{dt.year % 100:02d}", "Q": str((dt.month - 1) // 3 + 1),
            "MMMM": MONTHS[dt.month - 1], "MMM": MONTHS[dt.month - 1][:3], "MM": f"{dt.month:02d}",
            "Mo": _ordinal(dt.month), "M": str(dt.month),
            "DDDD": f"{dt.timetuple().tm_yday:03d}", "DDD": str(dt.timetuple().tm_yday),
            "Do": _ordinal(dt.day), "DD": f"{dt.day:02d}", "D": str(dt.day),
            "dddd": DAYS[(dt.weekday() + 1) % 7], "ddd": DAYS[(dt.weekday() + 1) % 7][:3],
            "dd": DAYS[(dt.weekday() + 1) % 7][:2], "d": str((dt.weekday() + 1) % 7), "E": str(dt.isoweekday()),
            "HH": f"{dt.hour:02d}", "H": str(dt.hour), "hh": f"{h12:02d}", "h": str(h12),
            "kk": f"{dt.hour or 24:02d}", "k": str(dt.hour or 24),
            "mm": f"{dt.minute:02d}", "m": str(dt.minute), "ss": f"{dt.second:02d}", "s": str(dt.second),
            "SSS": f"{dt.microsecond // 1000:03d}", "SS": f"{dt.microsecond // 10000:02d}", "S": str(dt.microsecond // 100000),
            "A": "AM" if dt.hour < 12 else "PM", "a": "am" if dt.hour < 12 else "pm",
            "ZZ": _offset(dt, ""), "Z": _offset(dt, ":"), "zz": dt.tzname() or "", "z": dt.tzname() or "",
            "X": str(int(dt.timestamp())), "x": str(int(dt.timestamp() * 1000)),
            "WW": f"{iso_week:02d}", "W": str(iso_week),
        }[t]

    return _TOKEN.sub(tok, fmt)


def parse_date(value: Any, zone: tzinfo, us_dates: bool) -> datetime | None:
    """A timezone-aware datetime from what the moment node accepts; None if it is no date."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, tz=UTC).astimezone(zone)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        return dt if dt.tzinfo else dt.replace(tzinfo=zone)
    except ValueError:
        pass
    m = _SLASHED.fullmatch(text)
    if m:
        a, sep, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if len(m.group(1)) == 4:
            year, month, day = a, b, c
        elif sep == "/" and us_dates:
            month, day, year = a, b, c
        else:
            day, month, year = a, b, c
        if year < 100:
            year += 2000 if year < 69 else 1900
        hour, minute = int(m.group(5) or 0), int(m.group(6) or 0)
        second = int(m.group(7) or 0)
        micro = int((m.group(8) or "0").ljust(6, "0"))
        ampm = (m.group(9) or "").lower()
        if ampm == "pm" and hour < 12:
            hour += 12
        elif ampm == "am" and hour == 12:
            hour = 0
        try:
            return datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
        except ValueError:
            return None
    from email.utils import parsedate_to_datetime

    try:
        dt = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=zone)


def adjust(dt: datetime, amount: float, unit: str) -> datetime:
    unit = UNITS[unit]
    if unit in ("years", "quarters", "months"):
        months = int(amount) * {"years": 12, "quarters": 3, "months": 1}[unit]
        total = dt.year * 12 + dt.month - 1 + months
        year, month = divmod(total, 12)
        import calendar

        day = min(dt.day, calendar.monthrange(year, month + 1)[1])
        return dt.replace(year=year, month=month + 1, day=day)
    # Local (wall-clock) arithmetic for days and weeks, as moment does across DST changes.
    if unit in ("weeks", "days"):
        naive = dt.replace(tzinfo=None) + timedelta(days=amount * (7 if unit == "weeks" else 1))
        return naive.replace(tzinfo=dt.tzinfo)
    return (dt.astimezone(UTC) + timedelta(**{unit: amount})).astimezone(dt.tzinfo)


def _from_now(dt: datetime, now: datetime) -> str:
    secs = (dt - now).total_seconds()
    a = abs(secs)
    for limit, text in ((45, "a few seconds"), (90, "a minute")):
        if a < limit:
            phrase = text
            break
    else:
        minutes, hours, days = round(a / 60), round(a / 3600), round(a / 86400)
        if minutes < 45:
            phrase = f"{minutes} minutes"
        elif minutes < 90:
            phrase = "an hour"
        elif hours < 22:
            phrase = f"{hours} hours"
        elif hours < 36:
            phrase = "a day"
        elif days < 26:
            phrase = f"{days} days"
        elif days < 45:
            phrase = "a month"
        elif days < 320:
            phrase = f"{round(days / 30.4)} months"
        elif days < 548:
            phrase = "a year"
        else:
            phrase = f"{round(days / 365)} years"
    return f"in {phrase}" if secs > 0 else f"{phrase} ago"


def _calendar(dt: datetime, now: datetime) -> str:
    days = (dt.date() - now.astimezone(dt.tzinfo).date()).days
    at = f" at {format_moment(dt, 'h:mm A')}"
    if days == 0:
        return "Today" + at
    if days == 1:
        return "Tomorrow" + at
    if days == -1:
        return "Yesterday" + at
    if 1 < days < 7:
        return format_moment(dt, "dddd") + at
    if -7 < days < -1:
        return "Last " + format_moment(dt, "dddd") + at
    return format_moment(dt, "YYYY-MM-DD")


class DateFormat(Node):
    type = "date-format"
    summary = "Parse, adjust and format a date/time with moment.js tokens and time zones"
    schema = {
        "input": Field("str", "where the date is: a msg path, flow.<key> or global.<key> (input_type str: the date text)",
                       default="payload"),
        "input_type": Field("str", "msg: read 'input'; now: the current time; str: 'input' is the date text",
                            choices=("msg", "now", "str"), default="msg"),
        "input_tz": Field("str", "IANA zone of dates written without an offset (default: the system zone)"),
        "us_dates": Field("bool", "read a/b/c dates as month/day/year (default: when input_tz is an America/ zone)"),
        "format": Field("str", "moment.js format tokens, or iso, date, object, fromnow, calendar", default="iso"),
        "output": Field("str", "where the result goes: a msg path, flow.<key> or global.<key>", default="payload"),
        "output_tz": Field("str", "IANA zone of the result (default: input_tz)"),
        "adjust_amount": Field("number", "add this many units (negative: subtract)", default=0),
        "adjust_unit": Field("str", "unit of adjust_amount", choices=tuple(UNITS), default="days"),
        "topic": Field("str", "when set, msg.topic becomes this"),
    }

    @classmethod
    def check(cls, config: dict) -> list:
        problems = []
        for field in ("input_tz", "output_tz"):
            if config.get(field):
                try:
                    _zone(config[field])
                except Exception:
                    problems.append(((field,), f"unknown time zone {config[field]!r} (an IANA name such as America/Chicago)"))
        for field in ("input", "output"):
            if field == "input" and config["input_type"] != "msg":
                continue
            try:
                split_target(config[field])
            except ValueError as e:
                problems.append(((field,), str(e)))
        return problems

    def setup(self) -> None:
        cfg = self.config
        self.in_zone = _zone(cfg.get("input_tz"))
        self.out_zone = _zone(cfg.get("output_tz") or cfg.get("input_tz"))
        us = cfg.get("us_dates")
        self.us_dates = us if us is not None else str(cfg.get("input_tz") or "").startswith("America/")
        self.source = split_target(cfg["input"]) if cfg["input_type"] == "msg" else None
        self.target = split_target(cfg["output"])

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), tz=UTC)

    def _read(self, msg: dict) -> Any:
        cfg = self.config
        if cfg["input_type"] == "now":
            return self._now()
        if cfg["input_type"] == "str":
            return cfg["input"]
        scope, path = self.source
        if scope != "msg":
            ctx = self.flow_context if scope == "flow" else self.global_context
            value = ctx.get(".".join(map(str, path)))
            return self._now() if value is None else value
        try:
            value = lookup(msg, path)
        except ParentMissing:
            self.warn(f"input property msg.{cfg['input']} does not exist; using now")
            return self._now()
        return self._now() if value is MISSING else value

    def on_input(self, msg: dict):
        value = self._read(msg)
        shift = None
        if isinstance(value, str) and value.strip().lower() in ("today", "yesterday", "tomorrow"):
            shift = {"today": 0, "yesterday": -1, "tomorrow": 1}[value.strip().lower()]
            value = self._now()
        dt = parse_date("" if value is None else value, self.in_zone, self.us_dates)
        if dt is None:
            self.warn(f"not a recognisable date: {value!r}; the result is an empty string")
            result: Any = ""
        else:
            if shift:
                dt = adjust(dt, shift, "days")
            if self.config["adjust_amount"]:
                dt = adjust(dt.astimezone(self.in_zone), self.config["adjust_amount"], self.config["adjust_unit"])
            dt = dt.astimezone(self.out_zone)
            result = self._format(dt)
        if self.config.get("topic"):
            msg["topic"] = self.config["topic"]
        scope, path = self.target
        if scope == "msg":
            if not set_path(msg, path, result):
                self.warn(f"cannot set msg.{self.config['output']}")
        else:
            (self.flow_context if scope == "flow" else self.global_context).set(".".join(map(str, path)), result)
        return msg

    def _format(self, dt: datetime) -> Any:
        fmt = self.config["format"]
        low = fmt.lower()
        if low in ("", "iso", "iso8601"):
            utc = dt.astimezone(UTC)
            return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
        if low in ("date", "jsdate"):
            return dt
        if low == "object":
            return {"years": dt.year, "months": dt.month - 1, "date": dt.day, "hours": dt.hour,
                    "minutes": dt.minute, "seconds": dt.second, "milliseconds": dt.microsecond // 1000}
        if low in ("fromnow", "timeago"):
            return _from_now(dt, self._now())
        if low in ("calendar", "aroundnow"):
            return _calendar(dt, self._now())
        return format_moment(dt, fmt)


NODE_TYPES = [DateFormat]
