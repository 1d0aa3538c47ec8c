"""meterflow.cron: cronosjs field order, time zones, DST, validation messages."""

from datetime import UTC, datetime

import pytest

from meterflow import cron


def ts(*args, tz=UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def local(t: float, tz: str) -> str:
    return datetime.fromtimestamp(t, cron.zone(tz)).isoformat()


T0 = ts(2024, 3, 1, 10, 20, 30)


@pytest.mark.parametrize("expr", ["55 * * * *", "0 55 * * * *", "0 55 * * * * *"])
def test_hh55_in_five_six_and_seven_fields(expr):
    assert cron.fires(expr, T0, 3, "UTC") == [ts(2024, 3, 1, h, 55) for h in (10, 11, 12)]


def test_six_fields_are_seconds_first():
    # "*/15 * * * * *" = every 15 s (Node-RED's), not "every 15 min with a seconds field last"
    assert cron.fires("*/15 * * * * *", T0, 3, "UTC") == [T0 + 15, T0 + 30, T0 + 45]
    assert cron.next_fire("30 * * * * *", T0, "UTC") == T0 + 60  # strictly after


def test_seven_fields_year():
    assert cron.next_fire("0 30 8 * * * 2025", T0, "UTC") == ts(2025, 1, 1, 8, 30)
    assert cron.next_fire("0 0 12 * * * 2020", T0, "UTC") is None


def test_names_and_special_days():
    assert cron.next_fire("0 0 12 * * FriL", T0, "UTC") == ts(2024, 3, 29, 12)  # last Friday
    assert cron.next_fire("0 0 12 * * 5#2", T0, "UTC") == ts(2024, 3, 8, 12)  # second Friday
    assert cron.next_fire("0 0 9 ? * MON-FRI", T0, "UTC") == ts(2024, 3, 4, 9)  # 1 March is a Friday
    assert cron.next_fire("0 0 12 * * 7", T0, "UTC") == ts(2024, 3, 3, 12)  # 7 is Sunday
    assert cron.next_fire("0 0 12 L * *", T0, "UTC") == ts(2024, 3, 31, 12)
    assert cron.next_fire("@hourly", T0, "UTC") == ts(2024, 3, 1, 11)


def test_time_zone_wall_clock():
    # 08:00 in Chicago (CST, UTC-6) is 14:00 UTC
    assert cron.next_fire("0 0 8 * * *", T0, "America/Chicago") == ts(2024, 3, 1, 14)
    assert cron.next_fire("0 0 8 * * *", T0, "+05:30") == ts(2024, 3, 2, 2, 30)


def test_dst_gap_fires_once_at_the_change():
    tz = "America/New_York"  # 2024-03-10 02:00 EST -> 03:00 EDT
    got = cron.fires("0 30 2 * * *", ts(2024, 3, 10, 0), 2, tz)
    assert [local(t, tz) for t in got] == ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"]
    got = cron.fires("*/20 2 * * *", ts(2024, 3, 10, 0), 2, tz)  # three slots in the gap: one fire
    assert [local(t, tz) for t in got] == ["2024-03-10T03:00:00-04:00", "2024-03-11T02:00:00-04:00"]


def test_dst_repeated_hour_fires_once():
    tz = "America/New_York"  # 2024-11-03 02:00 EDT -> 01:00 EST
    got = cron.fires("0 55 * * * *", ts(2024, 11, 3, 4), 3, tz)
    assert [local(t, tz) for t in got] == [
        "2024-11-03T00:55:00-04:00", "2024-11-03T01:55:00-04:00", "2024-11-03T02:55:00-05:00"]
    # hourly, so two real hours pass between the last two
    assert got[2] - got[1] == 7200


@pytest.mark.parametrize(("expr", "message"), [
    ("0 61 * * * *", "field 2 of 6 (minute) '61': 61 is out of range 0-59"),
    ("61 * * * *", "field 1 of 5 (minute) '61': 61 is out of range 0-59"),
    ("0 0 25 * * *", "field 3 of 6 (hour) '25': 25 is out of range 0-23"),
    ("0 0 12 32 * *", "field 4 of 6 (day-of-month) '32': 32 is out of range 1-31"),
    ("0 0 12 * FOO *", "field 5 of 6 (month) 'FOO': 'FOO' is not a valid value (use 1-12 or JAN-DEC)"),
    ("0 0 12 * * 8", "field 6 of 6 (day-of-week) '8': 8 is out of range 0-7"),
    ("0 0 12 * * * 2200", "field 7 of 7 (year) '2200': 2200 is out of range 1970-2099"),
    ("*/0 * * * *", "field 1 of 5 (minute) '*/0': the step after '/' must be 1 or more"),
    ("1,x * * * *", "field 1 of 5 (minute) '1,x' item 'x': 'x' is not a valid value"),
    ("0 0 12 27-5 * *", "range '27-5' goes backwards (day-of-month ranges do not wrap around)"),
    ("0 0 12 * ? *", "field 5 of 6 (month) '?': '?' is only allowed in the day-of-month and day-of-week fields"),
    ("0 0 12 * * 5#6", "the number after '#' must be 1-5"),
    ("* * * *", "has 4 field(s); expected 5 (minute hour day-of-month month day-of-week), 6 (second first"),
    ("@often", "unknown cron shortcut '@often'"),
])
def test_validation_messages(expr, message):
    err = cron.validate(expr)
    assert err is not None and message in err, err
    assert err.startswith("cron ") or err.startswith("unknown")


@pytest.mark.parametrize("expr", ["0 55 * * * * *", "*/5 * * * *", "0 0 9 ? * MON-FRI", "0 0 12 * * FRI-MON",
                                  "0 0 22-2 * * *", "0 0 12 15W * *", "0 0 0 1 JAN-MAR * 2030"])
def test_valid_expressions(expr):
    assert cron.validate(expr) is None


def test_time_zone_validation():
    assert cron.validate_tz("Europe/London") is None
    assert cron.validate_tz(None) is None
    assert "unknown time zone 'Mars/Base'" in cron.validate_tz("Mars/Base")
