"""End-to-end tests of flows/smt.yaml, one per branch.

The flow runs on the harness's virtual clock against the SMT sandbox over real mutual TLS
(the sandbox follows the same clock, so its rate limit and read dates move with virtual
time), publishes to a real mosquitto and mails through a real SMTP server (aiosmtpd over
STARTTLS); Home Assistant is a local HTTP recorder.  Every assertion is about what the
outside world saw: sandbox requests (with the client certificate each one presented),
MQTT messages, e-mails, Home Assistant service calls.  docs/smt.md maps branches to tests.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from smt_env import ESIID, METER, USER, smt_env, start_of_minute_54

T55 = start_of_minute_54() + 60  # the first scheduled read
READ1, READ2 = b"23459.133", b"23460.383"  # the sandbox's first two readings (1.25 kWh apart)
HA_BOOL = "input_boolean.cert_updated"


@pytest.fixture
def smt(tmp_path, monkeypatch, mosquitto, smtp):
    made = []

    def make(**kw):
        env = smt_env(tmp_path, monkeypatch, mosquitto, smtp, **kw)
        made.append(env)
        return env

    yield make
    for env in made:
        env.sandbox.stop()


@pytest.fixture
def sub_of():
    subs = []

    def make(env):
        s = env.subscribe()
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


def ha_stand_in(http_recorder):
    http_recorder.default = (200, {"Content-Type": "application/json"}, b"[]")
    return http_recorder


def on(sub, topic: str) -> list[bytes]:
    with sub.lock:
        return [p for t, p, _ in sub.got if t == topic]


async def quiet(seconds: float = 0.3) -> None:
    """Real time for late (wrong) deliveries to show up before asserting their absence."""
    await asyncio.sleep(seconds)


def codes(h) -> list[str]:
    return [m["payload"].get("statusCode") for m in h.messages("status")]


async def test_happy_path_cron_odr_pen_pen_reading(smt, sub_of):
    env = smt()
    sub = sub_of(env)
    async with env.harness() as h:
        await h.advance(59)
        assert env.requests() == []  # nothing before minute 55
        await h.advance(31)
        assert await env.wait_for(sub, "smt/reading") == [READ1]
        assert await env.wait_for(sub, "smt/correlationid") == [b"100001"]
        assert h.flow_context.get("readrequested") == 0 and h.flow_context.get("correlationId") == "100001"
        assert h.errors == []
    odr, *polls = env.requests()
    assert odr.path == "/odr/" and [p.path for p in polls] == ["/odrstatus/"] * 3
    assert [r.at - T55 for r in env.requests()] == [0, 10, 15, 20]
    assert codes(h) == ["PEN", "PEN", "0"]
    assert {r.client_cert for r in env.requests()} == {env.current_fp} and {r.status for r in env.requests()} == {200}
    assert odr.json == {"trans_id": "", "requesterType": "RES", "requestorID": USER, "reportFormat": "JSON",
                        "ESIID": ESIID, "MeterNumber": METER, "deliveryMode": "API", "SMTTermsandConditions": "Y"}
    assert polls[0].json == {"trans_id": "123", "requestorID": USER, "correlationId": "100001",
                             "SMTTermsandConditions": "Y"}
    assert odr.headers["authorization"] == "Basic ***"  # the sandbox redacts; it checked the password
    await quiet()
    assert on(sub, "smt/reading") == [READ1] and on(sub, "smt/alert") == []  # published once
    assert await env.retained("smt/reading") == [(READ1, True)]
    assert env.emails() == []


async def test_pen_three_times(smt, sub_of):
    env = smt(pending_polls=3)
    sub = sub_of(env)
    async with env.harness() as h:
        await h.advance(120)
        assert await env.wait_for(sub, "smt/reading") == [READ1]
    assert codes(h) == ["PEN", "PEN", "PEN", "0"]
    assert [r.at - T55 for r in env.requests("odrstatus")] == [10, 15, 20, 25]
    assert len(env.requests("odr")) == 1


async def test_status_1_waits_3_minutes_and_requests_again(smt, sub_of):
    env = smt()
    env.sandbox.fail_next_odr()  # the first read ends with statusCode "1"
    sub = sub_of(env)
    async with env.harness() as h:
        await h.advance(60 + 25)
        assert codes(h) == ["PEN", "PEN", "1"]
        assert h.flow_context.get("readrequested") == 0  # not stuck "pending"
        assert len(env.requests("odr")) == 1
        await h.advance(180 + 25)
        assert await env.wait_for(sub, "smt/reading") == [READ2]  # the second ODR's reading
    first, second = env.requests("odr")
    failed_at = env.requests("odrstatus")[2].at
    assert second.at - failed_at == 180
    assert codes(h) == ["PEN", "PEN", "1", "PEN", "PEN", "0"]
    await quiet()
    assert on(sub, "smt/reading") == [READ2] and on(sub, "smt/alert") == []



async def test_unexpected_status_polls_again_after_30_seconds(smt, sub_of):
    env = smt()
    env.sandbox.fail_next("smt_error", path="odrstatus")  # 200 {"errorCode": "1", ...}: no statusCode
    sub = sub_of(env)
    async with env.harness() as h:
        await h.advance(60 + 60)
        assert await env.wait_for(sub, "smt/reading") == [READ1]
    assert codes(h) == [None, "PEN", "PEN", "0"]
    assert [r.at - T55 for r in env.requests("odrstatus")] == [10, 40, 45, 50]
    assert len(env.requests("odr")) == 1


async def test_pending_forever_gives_up_after_the_poll_limit(smt, sub_of):
    env = smt(pending_polls=10_000)
    sub = sub_of(env)
    async with env.harness(SMT_MAX_POLLS="4") as h:
        await h.advance(60 + 10 * 60)
        [alert] = [json.loads(p) for p in await env.wait_for(sub, "smt/alert")]
        assert "too many status polls" in alert["error"] and alert["correlationId"] == "100001"
        assert len(env.requests("odrstatus")) == 4 and h.flow_context.get("readrequested") == 0
        await h.advance(3600)  # not stuck: the next schedule requests a new read
    assert len(env.requests("odr")) == 2 and on(sub, "smt/reading") == []

@pytest.mark.parametrize("fault", ["http500", "garbled"])
async def test_status_error_never_stalls_retries_are_bounded(smt, sub_of, fault):
    env = smt()
    env.sandbox.fail_next(fault, path="odrstatus", count=1000)  # SMT broken for the whole hour
    sub = sub_of(env)
    async with env.harness(SMT_MAX_RETRIES="3") as h:
        await h.advance(60 + 10)
        assert env.requests("odrstatus")[-1].fault == fault
        assert h.flow_context.get("readrequested") == 0  # the seed stayed at 1 here, forever
        await h.advance(30 * 60)
        # ODR, then 3 retries 3 minutes apart (the last two refused by SMT's 2-per-hour limit)
        odrs = env.requests("odr")
        assert len(odrs) == 4 and len(env.requests("odrstatus")) == 2
        [alert] = [json.loads(p) for p in await env.wait_for(sub, "smt/alert")]
        assert "limit of two On Demand Read" in alert["error"]
        assert h.flow_context.get("readrequested") == 0 and on(sub, "smt/reading") == []
        env.sandbox.clear_faults()
        await h.advance(60 * 60)  # the next schedule works (SMT's third accepted read)
        assert await env.wait_for(sub, "smt/reading") == [b"23461.633"]
    assert len(env.requests("odr")) == 5
    assert env.emails() == [] and h.messages("odr-previous") == []


async def test_tcp_reset_on_odr_is_not_a_certificate_problem(smt, sub_of):
    env = smt()
    env.sandbox.fail_next("reset", path="odr")
    sub = sub_of(env)
    async with env.harness() as h:
        await h.advance(60)
        [reset] = env.requests()
        assert reset.fault == "reset" and reset.status is None
        await h.advance(180 + 30)
        assert await env.wait_for(sub, "smt/reading") == [READ1]
    assert [r.at - T55 for r in env.requests("odr")] == [0, 180]
    # no fallback: the previous certificate was never presented, nothing was emailed
    assert {r.client_cert for r in env.requests()} == {env.current_fp}
    assert h.messages("odr-previous") == [] and h.messages("email") == []
    assert h.flow_context.get("cert_fallback") is None
    await quiet()
    assert env.emails() == []


async def test_certificate_fallback_email_once_then_current_again(smt, sub_of, http_recorder):
    env = smt(ha=ha_stand_in(http_recorder), support="cert-fallback@smt.test")
    env.sandbox.unregister_client_cert(env.current_cert)  # SMT has not installed the renewal yet
    sub = sub_of(env)
    async with env.harness() as h:
        await h.advance(90)
        assert await env.wait_for(sub, "smt/reading") == [READ1]
        # every request that reached SMT presented the previous certificate
        assert [r.path for r in env.requests()] == ["/odr/"] + ["/odrstatus/"] * 3
        assert {r.client_cert for r in env.requests()} == {env.previous_fp}
        assert h.node("odr-request").config["tls"] == "current"  # ... after the current one failed:
        assert [m["error"]["kind"] for m in h.messages("odr-why")] == ["tls"]
        assert h.messages("odr-why")[0]["error"]["reason"] == "SSLV3_ALERT_BAD_CERTIFICATE"
        await env_wait(lambda: len(env.emails()) == 1, "the certificate email")
        await env_wait(lambda: len(env.ha_calls()) == 2, "two HA calls")
        assert sorted(env.ha_calls()) == ["input_boolean/turn_on " + HA_BOOL,
                                          "input_datetime/set_datetime input_datetime.energy_last_read"]
        date = [json.loads(r.body) for r in http_recorder.requests if "set_datetime" in r.path][0]["datetime"]
        assert len(date) == 19 and date[4] == "-" and date[10] == " "  # YYYY-MM-DD HH:MM:SS

        # SMT support installs the certificate; the next hourly read uses it
        env.sandbox.register_client_cert(env.current_cert)
        n = len(env.requests())
        await h.advance(3600)
        assert await env.wait_for(sub, "smt/reading", 2) == [READ1, READ2]
        assert {r.client_cert for r in env.requests()[n:]} == {env.current_fp}
        await env_wait(lambda: len(env.ha_calls()) == 4, "turn_off and the second read date")
        assert env.ha_calls()[2:].count("input_boolean/turn_off " + HA_BOOL) == 1
        assert h.flow_context.get("cert_fallback") is False
    await quiet()
    [mail] = env.emails()  # the switch turning off sends no second email
    assert mail["To"] == "cert-fallback@smt.test"
    assert mail["Subject"] == f"Please update the SSL certificate for {USER}"
    [att] = list(mail.iter_attachments())
    assert att.get_filename() == "fullchain.pem"
    assert att.get_payload(decode=True) == open(env.current_cert, "rb").read()
    assert [c.split()[0] for c in env.ha_calls()].count("input_boolean/turn_on") == 1


async def env_wait(cond, what: str) -> None:
    from services import until

    await until(cond, 10, what)


async def test_restart_while_polling_resumes_without_a_second_odr(smt, sub_of):
    env = smt()
    sub = sub_of(env)
    async with env.harness() as first:
        await first.advance(65)  # ODR accepted at :55:00, first poll due at :55:10
        assert first.flow_context.get("readrequested") == 1
        stopped_at = first.clock.time()
    assert [r.path for r in env.requests()] == ["/odr/"]  # stopping fired no early poll
    async with env.harness(start_time=stopped_at) as second:
        assert second.flow_context.get("readrequested") == 1 and second.flow_context.get("correlationId") == "100001"
        await second.advance(30)
        assert await env.wait_for(sub, "smt/reading") == [READ1]
    assert [r.path for r in env.requests()] == ["/odr/"] + ["/odrstatus/"] * 3
    assert [r.at - stopped_at for r in env.requests("odrstatus")] == [0, 5, 10]  # resume fires at start
    assert {r.json["correlationId"] for r in env.requests("odrstatus")} == {"100001"}
    await quiet()
    assert on(sub, "smt/reading") == [READ1]


async def test_both_certificates_rejected_bounded_for_a_day(smt, sub_of, caplog):
    caplog.set_level(logging.INFO, logger="meterflow.sandbox.smt")
    env = smt(support="both-rejected@smt.test")
    env.sandbox.unregister_client_cert(env.current_cert)
    env.sandbox.unregister_client_cert(env.previous_cert)
    sub = sub_of(env)
    async with env.harness() as h:
        await h.advance(24 * 3600)
        schedules = len(h.messages("guard"))
        assert 23 <= schedules <= 25  # 24, give or take a DST change
        alerts = [json.loads(p) for p in await env.wait_for(sub, "smt/alert", schedules)]
        await env_wait(lambda: len(env.emails()) == 1, "one certificate email")
    handshakes = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(handshakes) == 2 * schedules  # current, then previous, once per schedule
    assert env.requests() == []  # no HTTP request ever got through
    assert len(alerts) == schedules and "both the current and the previous" in alerts[0]["error"]
    assert h.messages("wait-3m") == []  # no retry loop on top of the schedule
    await quiet()
    assert len(env.emails()) == 1 and on(sub, "smt/reading") == []


async def test_requests_never_carry_the_previous_responses_headers(smt, sub_of):
    env = smt()  # Content-Length framing: a leaked content-length would cut the next body
    env.sandbox.fail_next_odr()  # the "1" re-request is where the seed's leak broke the body
    sub = sub_of(env)
    async with env.harness() as h:
        await h.advance(60 + 25 + 180 + 25)
        assert await env.wait_for(sub, "smt/reading") == [READ2]
    reqs = env.requests()
    assert len(reqs) == 8
    allowed = {"host", "accept", "accept-encoding", "connection", "user-agent", "content-length", "content-type",
               "authorization"}
    for r in reqs:
        assert {name.lower() for name, _ in r.raw_headers} <= allowed, r.raw_headers
        assert "server" not in r.headers and "date" not in r.headers and "transfer-encoding" not in r.headers
        assert r.headers["content-type"] == "application/json" and r.headers["accept"] == "application/json"
        assert r.body_error is None and r.json is not None and r.status == 200
        assert int(r.headers["content-length"]) == len(json.dumps(r.json, separators=(",", ":")))


async def test_manual_request_now_and_read_now(smt, sub_of):
    env = smt()
    sub = sub_of(env)
    async with env.harness(start_time=start_of_minute_54() - 44 * 60) as h:  # minute 10: no schedule near
        await h.advance(5)  # past the start-up resume check
        await h.trigger("read-now")  # nothing requested yet: nothing to poll
        assert env.requests() == []
        alert = json.loads((await env.wait_for(sub, "smt/alert"))[0])
        assert "no correlation id" in alert["error"]

        await h.trigger("request-now")
        assert [r.path for r in env.requests()] == ["/odr/"]
        await h.trigger("read-now")  # a poll loop is about to run: no second loop
        await h.advance(30)
        assert await env.wait_for(sub, "smt/reading") == [READ1]
        assert [r.path for r in env.requests()] == ["/odr/"] + ["/odrstatus/"] * 3

        await h.trigger("read-now")  # read the stored correlation id again, on demand
        assert [r.path for r in env.requests()][-1] == "/odrstatus/" and len(env.requests()) == 5
        assert await env.wait_for(sub, "smt/reading", 2) == [READ1, READ1]
        assert await env.wait_for(sub, "smt/correlationid", 2) == [b"100001", b"100001"]
        await h.advance(60)
    assert len(env.requests("odr")) == 1 and h.flow_context.get("readrequested") == 0



async def test_request_now_while_a_poll_is_on_the_wire_publishes_only_the_new_read(smt, sub_of):
    env = smt(pending_polls=0)  # the first poll of a read already has the reading
    env.sandbox.fail_next("slow", path="odrstatus", delay=0.5)  # real seconds
    sub = sub_of(env)
    async with env.harness() as h:
        await h.advance(60)  # ODR at :55
        polling = asyncio.create_task(h.advance(10))  # the first poll goes out at :55:10 ...
        await env_wait(lambda: len(env.requests("odrstatus")) == 1, "the slow poll")
        h.node("request-now").fire()  # ... and a manual request arrives before its reply
        await polling
        await h.advance(15)
        assert await env.wait_for(sub, "smt/reading") == [READ2]
        assert h.flow_context.get("readrequested") == 0
    assert [(r.path, (r.json or {}).get("correlationId")) for r in env.requests()] == [
        ("/odr/", None), ("/odrstatus/", "100001"), ("/odr/", None), ("/odrstatus/", "100002")]
    assert codes(h) == ["0"]  # the stale reply for 100001 never reached the status switch
    await quiet()
    assert on(sub, "smt/reading") == [READ2] and on(sub, "smt/correlationid") == [b"100002"]

async def test_untrusted_smt_server_is_not_a_client_certificate_problem(smt, sub_of, smtp):
    env = smt()
    sub = sub_of(env)
    async with env.harness(SMT_CA=str(smtp.ca_path)) as h:  # a CA that did not sign the sandbox
        await h.advance(90)
        [alert] = [json.loads(p) for p in await env.wait_for(sub, "smt/alert")]
    assert "not trusted" in alert["error"]
    assert env.requests() == [] and h.messages("odr-previous") == [] and h.messages("email") == []
    assert h.flow_context.get("cert_fallback") is None


async def test_renewed_certificate_emailed_once_by_daily_check_or_fallback(smt, sub_of):
    env = smt(support="renewal@smt.test")
    original = env.current_fp
    sub = sub_of(env)

    def renew(name: str) -> bytes:
        """A Let's Encrypt renewal: a new pair at the same paths, not installed at SMT yet."""
        cert, key = env.sandbox.issue_client_cert(name, register=False)
        for src, dst in ((cert, env.current_cert), (key, env.current_key)):
            with open(src, "rb") as f, open(dst, "wb") as out:
                out.write(f.read())
        return open(cert, "rb").read()

    async def at(seconds_after_first_read: float) -> None:
        await h.advance(T55 + seconds_after_first_read - h.clock.time())

    async with env.harness(SMT_CERT_CRON="0 0 * * * *") as h:  # the "daily" check every hour at :00
        await at(6 * 60)  # read at :55, first check at :00 only records the certificate in use
        assert len(h.messages("cert-check")) == 1 and h.messages("cert-email") == []

        await at(3600 + 60)  # renewed between a read and the next check: the check emails it
        first = renew("renewed1")
        await at(3600 + 6 * 60)
        await env_wait(lambda: len(env.emails()) == 1, "the renewal email")
        await at(2 * 3600 + 60)  # SMT rejects it at :55: fallback, but it was emailed already
        assert [m["error"]["reason"] for m in h.messages("odr-why")] == ["SSLV3_ALERT_BAD_CERTIFICATE"]
        assert h.messages("cert-email")[-1]["filename"] == env.current_cert and len(h.messages("cert-email")) == 1

        await at(2 * 3600 + 6 * 60)  # renewed between a check and the next read: the fallback emails it
        second = renew("renewed2")
        await at(3 * 3600 + 60)
        await env_wait(lambda: len(env.emails()) == 2, "the fallback email")
        await at(3 * 3600 + 6 * 60)  # and the next check does not send it again
        assert len(h.messages("cert-check")) == 4 and len(h.messages("cert-email")) == 2
    await quiet()
    mails = env.emails()
    assert len(mails) == 2
    assert [next(m.iter_attachments()).get_payload(decode=True) for m in mails] == [first, second]
    # every hourly read still worked: with the original certificate, then with the previous one
    assert [r.client_cert for r in env.requests("odr")] == [original] * 2 + [env.previous_fp] * 2
    assert {r.status for r in env.requests()} == {200} and len(on(sub, "smt/reading")) == 4


def test_docs_name_every_branch_test():
    """docs/smt.md maps each branch to its test: keep the two in step."""
    import re
    import sys
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "smt.md").read_text()
    named = set(re.findall(r"`(test_\w+)", doc))
    here = {n for n in dir(sys.modules[__name__]) if n.startswith("test_") and n != "test_docs_name_every_branch_test"}
    assert named == here
