"""tls-request: an HTTP(S) request with an optional client certificate (aiohttp).

The request node of the Smart Meter Texas flows (Node-RED's ``http request`` /
``node-red-contrib-https``), with errors that carry a kind::

    - id: odr
      type: tls-request
      method: POST                 # GET POST PUT DELETE PATCH HEAD OPTIONS, or use: msg.method
      url: https://services.smartmetertexas.net/odr/   # {{ }} / {{{ }}} from msg; empty: msg.url
      tls: smt_cert                # a tls-profile config node (client certificate, CA, ...)
      auth: {type: basic, user: "${creds:smt.user}", password: "${creds:smt.password}"}
      request_headers: {Accept: application/json}
      body: auto                   # auto | json | text | form: how msg.payload is sent
      ret: obj                     # txt | obj (parsed JSON) | bin (bytes)
      timeout: 30s                 # network inactivity per phase (connect, read, write)
      follow_redirects: true
      http_errors: false           # true: a status >= 400 is an error of kind http
      retry: {attempts: 3, backoff: 2s, max_backoff: 1m, jitter: 0.2, on: [connect, timeout]}
      wires: [check_status]

**Request headers** come from ``request_headers`` and then ``msg.request_headers`` (a
mapping; a ``null`` value removes a configured header).  ``msg.headers`` is *never* sent:
after a request it holds the *response's* headers, and sending those on (as Node-RED
does) leaks ``content-length`` / ``date`` into the next request and cut its body in the
original SMT flow.

**Body** (not for GET/HEAD; none when msg.payload is missing or null): ``auto`` sends a
string or bytes as they are, a mapping or list as JSON (``Content-Type:
application/json`` unless set; as a form when the content type set is
``application/x-www-form-urlencoded``), a number or boolean as its JSON text; ``json``
serialises anything but a string or bytes (taken as JSON text already); ``text`` sends
text; ``form`` URL-encodes a mapping.

**Result**, on the same message: ``msg.statusCode`` (a number), ``msg.headers`` (the
response headers, lower-case names; ``set-cookie`` is a list), ``msg.responseUrl`` (after
redirects), ``msg.redirectList`` (``[{location}]``), ``msg.payload`` as ``ret`` says.  An
empty body with ``ret: obj`` gives ``""``.

**Errors** (to catch nodes; nothing leaves the output): ``tls`` (handshake failure,
certificate rejected or not trusted; ``msg.error.reason`` is OpenSSL's name such as
``SSLV3_ALERT_BAD_CERTIFICATE``), ``connect`` (refused, reset, closed), ``timeout``,
``http`` (status >= 400, only with ``http_errors: true``; ``msg.error.status``),
``parse`` (``ret: obj`` and the body is not JSON; the message keeps the text as payload),
``config`` (a bad URL).  For transport errors (tls, connect, timeout) the message reaches
the catch node unchanged, so it can be sent again (e.g. with another certificate); for
http and parse errors it carries the response.

**Retry**: ``attempts`` counts every try (1 = no retry); the wait before try n+1 is
``backoff * 2**(n-1)``, capped at ``max_backoff`` and shortened by up to ``jitter`` (a
fraction) at random.  ``on`` lists the kinds retried: ``connect``, ``timeout`` (default),
``http`` (statuses 408, 429, 500, 502, 503, 504, honouring ``Retry-After``), ``tls`` (not
advised: a rejected certificate stays rejected until it is renewed).  A request that
was sent may be retried: keep ``on`` to what is safe for the endpoint.
"""

from __future__ import annotations

import base64
import codecs
import functools
import json
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from .. import redact
from ..errors import ConfigError, FlowError, ParseError
from ..errors_http import classify, safe_url, status_error
from ..message import MISSING, get
from ..node import Node
from ..schema import Field, parse_duration

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "use")
RETRY_KINDS = ("connect", "timeout", "http", "tls")
RETRY_STATUSES = frozenset((408, 429, 500, 502, 503, 504))
MAX_REDIRECTS = 20  # followed; the 21st is an error of kind http

RETRY = Field("map", "retry transient failures with capped exponential backoff", fields={
    "attempts": Field("int", "tries in all, the first included", default=3, minimum=1, maximum=100),
    "backoff": Field("duration", "wait before the second try; doubles each time", default=1.0),
    "max_backoff": Field("duration", "longest wait", default=60.0),
    "jitter": Field("number", "shorten each wait by up to this fraction, at random", default=0.2, minimum=0, maximum=1),
    "on": Field("list", "error kinds to retry: connect, timeout, http, tls", item=Field("str", choices=RETRY_KINDS),
                default=["connect", "timeout"]),
})
AUTH = Field("map", "authentication", fields={
    "type": Field("str", "basic or bearer", choices=("basic", "bearer"), required=True),
    "user": Field("str", "user name (basic)"),
    "password": Field("str", "password (basic); write ${creds:NAME.FIELD}", secret=True),
    "token": Field("str", "token (bearer); write ${creds:NAME.FIELD}", secret=True),
})


def _render(template: str, msg: dict) -> str:
    if "{{" not in template:
        return template
    import chevron

    return chevron.render(template, msg)


def _mustache_problem(template: str) -> str | None:
    if "{{" not in template:
        return None
    import chevron

    try:
        list(chevron.tokenizer.tokenize(template))
    except chevron.ChevronError as e:
        return f"invalid mustache template: {e}"
    return None


def _scheme_problem(url: str) -> str | None:
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme and scheme not in ("http", "https"):
        return f"unsupported URL scheme {scheme!r}: use http:// or https://"
    return None


@dataclass
class _Response:
    """What is kept of a response: read whole, so the connection is back in its pool."""

    status: int
    reason: str
    headers: list[tuple[str, str]]  # in order, repeated names repeated
    url: str  # after redirects
    redirects: list[str]  # the Location of each redirect followed, made absolute
    body: bytes
    charset: str | None  # from Content-Type

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @functools.cached_property
    def text(self) -> str:
        # Like httpx before: the declared charset, else UTF-8; never fails on bad bytes.
        encoding = "utf-8"
        if self.charset:
            try:
                encoding = codecs.lookup(self.charset).name
            except LookupError:
                pass
        return self.body.decode(encoding, errors="replace")


class TlsRequest(Node):
    type = "tls-request"
    summary = "HTTP(S) request with an optional client certificate; errors carry a kind (tls, connect, timeout, ...)"
    schema = {
        "method": Field("str", "HTTP method; 'use' takes msg.method", choices=METHODS, default="GET"),
        "url": Field("str", "URL; {{x}} / {{{x}}} insert msg properties (the first escapes HTML); empty: msg.url"),
        "tls": Field("ref", "a tls-profile (client certificate, CA, verification)", ref="tls-profile"),
        "request_headers": Field("dict", "headers to send; msg.request_headers adds to / overrides them"),
        "auth": AUTH,
        "body": Field("str", "how msg.payload is sent", choices=("auto", "json", "text", "form"), default="auto"),
        "ret": Field("str", "payload of the result: txt (text), obj (parsed JSON), bin (bytes)",
                     choices=("txt", "obj", "bin"), default="txt"),
        "timeout": Field("duration", "network inactivity timeout (connect, read, write)", default=120.0),
        "follow_redirects": Field("bool", "follow redirects (up to 20)", default=True),
        "http_errors": Field("bool", "treat a status >= 400 as an error of kind http", default=False),
        "retry": RETRY,
    }


    @classmethod
    def check(cls, config: dict) -> list:
        problems = []
        url = config.get("url")
        if url:
            problem = _mustache_problem(url) or (None if "{{" in url else _scheme_problem(url))
            if problem:
                problems.append((("url",), problem))
        for name, value in (config.get("request_headers") or {}).items():
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                problems.append((("request_headers", name), f"header {name!r}: the value must be text"))
            elif isinstance(value, str) and (p := _mustache_problem(value)):
                problems.append((("request_headers", name), p))
        auth = config.get("auth")
        if auth:
            if auth["type"] == "basic" and not (auth.get("user") and auth.get("password") is not None):
                problems.append((("auth",), "basic auth needs user and password"))
            if auth["type"] == "bearer" and not (auth.get("token") or auth.get("password")):
                problems.append((("auth",), "bearer auth needs token"))
        retry = config.get("retry")
        if retry and parse_duration(retry["max_backoff"]) < parse_duration(retry["backoff"]):
            problems.append((("retry", "max_backoff"), "max_backoff is shorter than backoff"))
        return problems

    def setup(self) -> None:
        c = self.config
        self.method = c["method"]
        self.url = c.get("url") or ""
        self.timeout = parse_duration(c["timeout"])
        self.ret = c["ret"]
        self.body_mode = c["body"]
        self.follow = bool(c["follow_redirects"])
        self.http_errors = bool(c["http_errors"])
        self.base_headers = {str(k): str(v) for k, v in (c.get("request_headers") or {}).items()}
        self.auth_header = self._auth_header(c.get("auth"))
        retry = c.get("retry")
        if retry:
            self.attempts = int(retry["attempts"])
            self.backoff = parse_duration(retry["backoff"])
            self.max_backoff = parse_duration(retry["max_backoff"])
            self.jitter = float(retry["jitter"])
            self.retry_on = set(retry["on"])
        else:
            self.attempts, self.retry_on = 1, set()
        self.profile_node = self.config_node(c["tls"]) if c.get("tls") else None
        if self.profile_node is not None:
            self.clients = self.profile_node.clients
            self._shared = None
        else:
            from ..tlsprofile import TlsSettings, acquire

            self._shared = TlsSettings()  # system trust store, no client certificate
            _, self.clients = acquire(self._shared, "default")
        self._warned_url = False
        self._failing = False

    async def stop(self) -> None:
        if self._shared is not None:
            from ..tlsprofile import release

            await release(self._shared, self.clients)

    @staticmethod
    def _auth_header(auth: dict | None) -> str | None:
        if not auth:
            return None
        if auth["type"] == "basic":
            token = base64.b64encode(f"{auth.get('user', '')}:{auth.get('password') or ''}".encode()).decode()
            value = f"Basic {token}"
            redact.add(auth.get("password"))
        else:
            secret = auth.get("token") or auth.get("password") or ""
            value = f"Bearer {secret}"
            redact.add(secret)
        redact.add(value.split(" ", 1)[1])  # the encoded form must not show up in output either
        return value

    # ---- building the request -----------------------------------------------------------------
    def _target(self, msg: dict) -> str:
        url = self.url
        msg_url = msg.get("url")
        if url:
            if isinstance(msg_url, str) and msg_url and msg_url != url and not self._warned_url:
                self._warned_url = True
                self.warn("msg.url is ignored: the node's url is set (and wins, as in Node-RED)")
        elif isinstance(msg_url, str) and msg_url:
            url = msg_url
        else:
            raise ConfigError("no URL: set url on the node or msg.url")
        url = _render(url, msg).strip()
        if "://" not in url:
            url = ("https://" if self.profile_node is not None else "http://") + url
        problem = _scheme_problem(url)
        if problem:
            raise ConfigError(problem)
        return url

    def _headers(self, msg: dict) -> dict[str, str]:
        headers: dict[str, str] = {}
        lower: dict[str, str] = {}

        def put(name: str, value: Any) -> None:
            old = lower.pop(name.lower(), None)
            if old is not None:
                del headers[old]
            if value is not None:
                headers[name] = value if isinstance(value, str) else str(value)
                lower[name.lower()] = name

        for name, value in self.base_headers.items():
            put(name, _render(value, msg))
        extra = msg.get("request_headers")
        if extra is not None:
            if not isinstance(extra, dict):
                raise FlowError("msg.request_headers must be a mapping of header name to value")
            for name, value in extra.items():
                put(str(name), value)
        if self.auth_header and "authorization" not in lower:
            headers["Authorization"] = self.auth_header
        return headers

    def _body(self, msg: dict, method: str, headers: dict[str, str]) -> bytes | None:
        payload = msg.get("payload", MISSING)
        if method in ("GET", "HEAD") or payload is MISSING or payload is None:
            return None
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "").lower()
        mode = self.body_mode
        if mode == "auto":
            if isinstance(payload, dict) and ctype.startswith("application/x-www-form-urlencoded"):
                mode = "form"
            elif isinstance(payload, dict | list):
                mode = "json"
        if mode == "form":
            if not isinstance(payload, dict):
                raise FlowError(f"body: form needs msg.payload to be a mapping, not {type(payload).__name__}")
            if not ctype:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            return urlencode(payload, doseq=True).encode()
        if isinstance(payload, bytes | bytearray):
            return bytes(payload)
        if isinstance(payload, str):
            text = payload
        else:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        if not ctype and mode == "json":
            headers["Content-Type"] = "application/json"
        elif not ctype and mode == "text":
            headers["Content-Type"] = "text/plain; charset=utf-8"
        return text.encode("utf-8")

    # ---- sending --------------------------------------------------------------------------------
    async def _send(self, method: str, url: str, headers: dict, content: bytes | None,
                    server_name: str | None) -> _Response:
        from yarl import URL

        from ..tlsprofile import inactivity_timeout

        timeout = inactivity_timeout(self.timeout)
        async with self.clients.use() as client:
            try:
                async with client.request(method, url, headers=headers, data=content, timeout=timeout,
                                          allow_redirects=self.follow, max_redirects=MAX_REDIRECTS + 1,
                                          server_hostname=server_name) as r:
                    body = await r.read()  # inside: the connection goes back to the pool after this
                    redirects = [str(h.url.join(URL(h.headers.get("location", "")))) for h in r.history]
                    return _Response(r.status, r.reason or "", list(r.headers.items()), str(r.url), redirects,
                                     body, r.charset)
            except Exception as e:
                raise classify(e, url, self.timeout) from e

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        if retry_after is not None:
            return min(self.max_backoff, max(base, retry_after))
        return base * (1 - self.jitter * random.random())

    def _retry_after(self, response: _Response) -> float | None:
        value = response.header("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - self.clock.time())
        except (TypeError, ValueError):
            return None

    async def on_input(self, msg: dict):
        method = self.method
        if method == "use":
            method = str(get(msg, "method", "GET")).upper()
        url = self._target(msg)
        headers = self._headers(msg)
        content = self._body(msg, method, headers)
        server_name = self.profile_node.profile.settings.server_name if self.profile_node is not None else None
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._send(method, url, headers, content, server_name)
            except FlowError as err:
                if err.kind in self.retry_on and attempt < self.attempts:
                    await self._wait(attempt, err.kind, None)
                    continue
                self._failing = True
                self.status("red", "ring", err.kind)
                raise
            if ("http" in self.retry_on and response.status in RETRY_STATUSES and attempt < self.attempts):
                await self._wait(attempt, f"HTTP {response.status}", self._retry_after(response))
                continue
            break
        if self._failing:
            self._failing = False
            self.status(text="")
        return self._result(msg, response)

    async def _wait(self, attempt: int, why: str, retry_after: float | None) -> None:
        delay = self._delay(attempt, retry_after)
        self.status("yellow", "ring", f"{why}: try {attempt + 1}/{self.attempts} in {delay:.1f}s")
        self.log.info("[%s] %s; trying again in %.1fs (%d/%d)", self.id, why, delay, attempt + 1, self.attempts)
        await self.clock.sleep(delay)

    def _result(self, msg: dict, r: _Response) -> dict:
        headers: dict[str, Any] = {}
        for name, value in r.headers:
            name = name.lower()
            if name == "set-cookie":
                headers.setdefault(name, []).append(value)
            elif name in headers:
                headers[name] = f"{headers[name]}, {value}"
            else:
                headers[name] = value
        msg["statusCode"] = r.status
        msg["headers"] = headers
        msg["responseUrl"] = r.url
        msg["redirectList"] = [{"location": location} for location in r.redirects]
        if self.ret == "bin":
            msg["payload"] = r.body
        else:
            msg["payload"] = r.text
        if self.http_errors and r.status >= 400:
            if self.ret == "obj":
                try:
                    msg["payload"] = json.loads(r.text) if r.body else ""
                except ValueError:
                    pass
            raise status_error(r.status, r.reason, r.url)
        if self.ret == "obj" and r.body:
            try:
                msg["payload"] = json.loads(r.text)
            except ValueError as e:
                where = safe_url(r.url)
                detail = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
                raise ParseError(f"the response from {where} (HTTP {r.status}) is not valid JSON: {detail}",
                                 status=r.status, url=where) from None
        return msg


NODE_TYPES = [TlsRequest]
