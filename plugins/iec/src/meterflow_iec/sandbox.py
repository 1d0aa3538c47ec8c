"""IEC sandbox: a local mock of IEC's Okta login and of the IEC API (iecapi.iec.co.il).

One plain-HTTP server on 127.0.0.1 serves both halves under two prefixes:

* ``okta_url`` = ``http://127.0.0.1:<port>/okta`` stands for ``https://iec-ext.okta.com``
  (``/api/v1/authn``, ``/api/v1/authn/factors/{fid}/verify``, ``/oauth2/default/v1/{authorize,token,keys}``);
* ``api_url`` = ``http://127.0.0.1:<port>/api`` stands for ``https://iecapi.iec.co.il/api``.

Shapes, constants and error bodies follow shared/reference/meter-apis.md Part B. Where the
reference lists an "open point", the choice made here is noted next to the code (look for "Choice:").
Pure stdlib. Embedded use::

    with IECSandbox(port=0) as sb:
        ...  # point the client at sb.okta_url / sb.api_url; sb.requests records every call

Foreground use: ``python -m meterflow_iec.sandbox --port 8765`` (see ``main``).
"""

from __future__ import annotations

import argparse
import base64
import calendar
import hashlib
import html
import json
import logging
import math
import random
import re
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

log = logging.getLogger("meterflow_iec.sandbox")

CLIENT_ID = "0oaqf6zr7yEcQZqqt2p7"
REDIRECT_URI = "com.iecrn:/"
SCOPE = "openid email profile offline_access"
TZ = ZoneInfo("Asia/Jerusalem")
INTERVAL = timedelta(minutes=15)

# Okta lifetimes nobody documents for IEC (open point 6). Choice: Okta's defaults.
SESSION_TOKEN_TTL = 300  # one-time sessionToken from the OTP step
AUTH_CODE_TTL = 300  # one-time authorization code
REFRESH_GRACE = 30  # a rotated refresh token still works this long
SMS_RESEND_WAIT = 30  # E0000109 inside this window

# Fields never written to `requests` as they are.
SECRET_FIELDS = {"passCode", "stateToken", "sessionToken", "code", "code_verifier",
                 "refresh_token", "access_token", "id_token", "password"}

NOT_YOURS = "Contract is not associated with you."


@dataclass
class RecordedRequest:
    """One request as the sandbox saw it; secret values are replaced with "***"."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0


# ---------------------------------------------------------------------------------------------
# RS256 without third-party code. Okta signs id_tokens with RS256 and clients may check them
# against /v1/keys, so the sandbox does the same. The key is derived from the seed: fine for a
# sandbox, useless as security.

_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % q for q in range(3, int(p**0.5) + 1, 2))]
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _is_probable_prime(n: int, rng: random.Random) -> bool:
    if any(n % p == 0 for p in _SMALL_PRIMES):
        return n in _SMALL_PRIMES
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(24):  # Miller-Rabin
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


@lru_cache(maxsize=8)
def _rsa_key(seed: int) -> tuple[int, int, int]:
    """(n, e, d) for a 2048-bit key; about half a second, so cached per seed."""
    rng = random.Random(f"iec-sandbox-rsa/{seed}")
    e = 65537

    def prime() -> int:
        while True:  # top two bits set so p*q has exactly 2048 bits; p % e != 1 so e is invertible
            c = rng.getrandbits(1024) | (3 << 1022) | 1
            if c % e != 1 and _is_probable_prime(c, rng):
                return c

    p, q = prime(), prime()
    return p * q, e, pow(e, -1, (p - 1) * (q - 1))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(n: int) -> str:
    return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def _sign_jwt(claims: dict, seed: int, kid: str) -> str:
    n, _e, d = _rsa_key(seed)
    header = {"kid": kid, "alg": "RS256"}
    signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    k = (n.bit_length() + 7) // 8
    t = _SHA256_DIGEST_INFO + hashlib.sha256(signing_input.encode()).digest()
    em = b"\x00\x01" + b"\xff" * (k - 3 - len(t)) + b"\x00" + t  # EMSA-PKCS1-v1_5
    sig = pow(int.from_bytes(em, "big"), d, n).to_bytes(k, "big")
    return f"{signing_input}.{_b64url(sig)}"


def pkce_challenge(verifier: str) -> str:
    """S256 code_challenge for a code_verifier (what the client must send to /authorize)."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


# ---------------------------------------------------------------------------------------------
# Deterministic meter data. A bidirectional (net) meter on a house with rooftop solar: load is a
# base plus morning and evening bumps, PV is a half-sine between sunrise and sunset scaled by a
# per-day cloudiness. Import = load above PV, export = PV above load, per 15-minute interval.


@lru_cache(maxsize=4096)
def _day_intervals(seed: int, day: date) -> tuple[tuple[datetime, float, float], ...]:
    """(interval start in UTC, import kWh, export kWh) for every 15 minutes of a local day.

    Iterates in UTC between two local midnights, so DST days have 92 or 100 intervals.
    """
    rng = random.Random(f"iec-sandbox/{seed}/{day.isoformat()}")  # str seeds are stable across runs
    load_scale = rng.uniform(0.8, 1.2)
    evening = rng.uniform(18.5, 20.5)
    cloud = rng.uniform(0.35, 1.0)
    season = math.sin(2 * math.pi * (day.timetuple().tm_yday - 80) / 365)  # +1 midsummer, -1 midwinter
    sunrise, sunset = 6.0 - 0.9 * season, 17.6 + 1.6 * season
    pv_peak = 3.2 * (0.75 + 0.25 * season) * cloud  # kW
    hvac = 1.0 + 0.35 * abs(season)  # air conditioning in summer, heating in winter

    start = datetime.combine(day, dtime(0), TZ).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), dtime(0), TZ).astimezone(UTC)
    rows = []
    t = start
    while t < end:
        local = (t + INTERVAL / 2).astimezone(TZ)
        h = local.hour + local.minute / 60
        load = load_scale * hvac * (0.35 + 0.9 * math.exp(-((h - 7.5) / 1.2) ** 2)
                                    + 1.6 * math.exp(-((h - evening) / 2.0) ** 2))
        pv = pv_peak * math.sin(math.pi * (h - sunrise) / (sunset - sunrise)) if sunrise < h < sunset else 0.0
        rows.append((t, round(max(load - pv, 0.0) / 4, 3), round(max(pv - load, 0.0) / 4, 3)))
        t += INTERVAL
    return tuple(rows)


def _iso_utc(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()  # "2026-02-09T22:00:00+00:00", as IEC writes it


def _okta_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _same_id(a: Any, b: str) -> bool:
    """IEC ids are strings with leading zeros, but invoices carry them as ints."""
    return str(a).lstrip("0") == b.lstrip("0") and str(a) != ""


class _Handler(BaseHTTPRequestHandler):
    server_version = "IECSandbox/1.0"

    def do_GET(self) -> None:
        self.server.sandbox._handle(self)  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.server.sandbox._handle(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class IECSandbox:
    """Mock of IEC's Okta tenant and IEC API on one local HTTP server.

    Args:
        host, port: where to listen; port 0 picks a free port (read ``.port`` after ``start()``).
        otp: the fixed SMS code; it is logged (logger ``meterflow_iec.sandbox``) when the SMS is "sent".
        token_ttl: lifetime in seconds of access and id tokens (``expires_in``, JWT ``exp``).
        state_token_ttl: lifetime of the Okta stateToken (the OTP session).
        seed: drives meter data, ids and the signing key; equal seeds give equal data.
        now: clock returning Unix seconds; ``advance()`` shifts it further.
        reading_format: "current" (Feb 2026 on, ``smartMetersList``/``meterList``) or "legacy".
        empty_days: local dates for which RemoteReadingRange has no readings.
        id_number: the customer's Israeli ID (Okta username is ``<id_number>@iec.co.il``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, otp: str = "123456",
                 token_ttl: int = 3600, state_token_ttl: int = 300, seed: int = 0,
                 now: Callable[[], float] | None = None, reading_format: str = "current",
                 empty_days: Iterable[date] = (), id_number: str = "123456782") -> None:
        if reading_format not in ("current", "legacy"):
            raise ValueError("reading_format must be 'current' or 'legacy'")
        self.host, self._want_port = host, port
        self.otp, self.token_ttl, self.state_token_ttl = otp, token_ttl, state_token_ttl
        self.seed, self.reading_format = seed, reading_format
        self.empty_days: set[date] = set(empty_days)
        self._clock = now or time.time
        self._offset = 0.0
        self.requests: list[RecordedRequest] = []

        # The customer. Contract/meter ids follow the reference's examples.
        ids = random.Random(f"iec-sandbox-ids/{seed}")
        self.id_number = id_number
        self.username = f"{id_number}@iec.co.il"
        self.first_name, self.last_name = "Israel", "Israeli"
        self.mobile_phone = "0501234567"
        self.bp_number = f"{ids.randrange(10**9):010d}"
        self.contract_id = f"{ids.randrange(10**9, 10**10):012d}"
        self.meter_serial = f"{ids.randrange(2 * 10**7, 3 * 10**7)}"
        self.meter_code = "503"
        self.account_id = str(uuid.UUID(int=ids.getrandbits(128), version=4))
        self.user_id = "00u" + "".join(ids.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=17))
        self.factor_id = "emf" + "".join(ids.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=17))
        self.key_id = _b64url(hashlib.sha256(f"kid/{seed}".encode()).digest()[:12])

        # Okta state, keyed by token value.
        self._transactions: dict[str, dict] = {}  # stateToken -> {expires, sms_at}
        self._sessions: dict[str, float] = {}  # sessionToken -> expires
        self._codes: dict[str, dict] = {}  # code -> {expires, challenge, redirect_uri, nonce}
        self._refresh: dict[str, dict] = {}  # refresh_token -> {rotated_at, revoked}
        self._id_tokens: dict[str, float] = {}  # id_token -> exp

        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.meter_start_date = self.today() - timedelta(days=300)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> IECSandbox:
        server = ThreadingHTTPServer((self.host, self._want_port), _Handler)
        server.daemon_threads = True
        server.sandbox = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name="iec-sandbox", daemon=True)
        self._thread.start()
        log.info("IEC sandbox listening: okta_url=%s api_url=%s (user %s)", self.okta_url, self.api_url,
                 self.id_number)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()  # type: ignore[union-attr]
            self._server = self._thread = None

    def __enter__(self) -> IECSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("sandbox is not running")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def okta_url(self) -> str:
        """Replaces https://iec-ext.okta.com (no trailing slash)."""
        return f"{self.base_url}/okta"

    @property
    def api_url(self) -> str:
        """Replaces https://iecapi.iec.co.il/api (no trailing slash)."""
        return f"{self.base_url}/api"

    # -- test controls -----------------------------------------------------------------------

    def now(self) -> float:
        """Sandbox time in Unix seconds: the injected clock plus ``advance()`` offsets."""
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def today(self) -> date:
        return datetime.fromtimestamp(self.now(), TZ).date()

    def revoke_refresh_tokens(self) -> None:
        """Make every refresh token issued so far fail with invalid_grant (as if expired)."""
        with self._lock:
            for entry in self._refresh.values():
                entry["revoked"] = True

    # -- HTTP plumbing -----------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        path = re.sub(r"/{2,}", "/", split.path)  # py-iec-api builds some URLs with "api//"
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        ctype = (h.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        body: Any = None
        if raw:
            if ctype == "application/x-www-form-urlencoded":
                body = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
            else:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = _Invalid(raw)
        rec = RecordedRequest(h.command, path, _redact(query), _redact(body))
        with self._lock:
            self.requests.append(rec)
            try:
                status, payload = self._route(h.command, path, query, body, h.headers.get("Authorization", ""))
            except Exception:  # a bug here should show up as a 500, not a hung client
                log.exception("sandbox error on %s %s", h.command, path)
                status, payload = 500, {"Error": "Internal error", "Code": 500, "Rid": str(uuid.uuid4())}
            rec.status = status
        if isinstance(payload, str):
            data, ctype_out = payload.encode(), "text/html; charset=utf-8"
        else:
            data, ctype_out = json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8"
        h.send_response(status)
        h.send_header("Content-Type", ctype_out)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method: str, path: str, query: dict, body: Any, auth: str) -> tuple[int, Any]:
        if path.startswith("/okta/"):
            return self._route_okta(method, path[len("/okta"):], query, body)
        if path.lower().startswith("/api/"):
            return self._route_api(method, path[len("/api/"):].rstrip("/"), query, body, auth)
        return 404, {"error": "not_found"}

    # -- Okta --------------------------------------------------------------------------------

    def _route_okta(self, method: str, path: str, query: dict, body: Any) -> tuple[int, Any]:
        m = re.fullmatch(r"/api/v1/authn/factors/([^/]+)/verify", path)
        if method == "POST" and path == "/api/v1/authn":
            return self._authn(body)
        if method == "POST" and m:
            return self._verify_factor(m.group(1), body)
        if method == "GET" and path == "/oauth2/default/v1/authorize":
            return self._authorize(query)
        if method == "POST" and path == "/oauth2/default/v1/token":
            return self._token(body if isinstance(body, dict) else {})
        if method == "GET" and path == "/oauth2/default/v1/keys":
            n, e, _d = _rsa_key(self.seed)
            return 200, {"keys": [{"kty": "RSA", "alg": "RS256", "kid": self.key_id, "use": "sig",
                                   "e": _int_b64(e), "n": _int_b64(n)}]}
        if method == "GET" and path == "/oauth2/default/.well-known/openid-configuration":
            base = f"{self.okta_url}/oauth2/default"
            return 200, {"issuer": base, "authorization_endpoint": f"{base}/v1/authorize",
                         "token_endpoint": f"{base}/v1/token", "jwks_uri": f"{base}/v1/keys",
                         "response_modes_supported": ["form_post", "query", "fragment"],
                         "code_challenge_methods_supported": ["S256"]}
        return 404, _okta_error(404, "E0000022", "The endpoint does not support the provided HTTP method")[1]

    def _authn(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return _okta_error(400, "E0000003", "The request body was not well-formed.")
        if not body.get("username"):
            return _okta_error(400, "E0000001", "Api validation failed: username",
                               ["username: The field cannot be left blank"])
        if body["username"].lower() != self.username:
            return _okta_error(401, "E0000004", "Authentication failed")
        state_token = "00" + secrets.token_urlsafe(30)
        expires = self.now() + self.state_token_ttl
        self._transactions[state_token] = {"expires": expires, "sms_at": None}
        return 200, {"stateToken": state_token, "expiresAt": _okta_time(expires), "status": "MFA_REQUIRED",
                     "_embedded": {"user": self._okta_user(), "factors": [self._factor()]},
                     "_links": {"cancel": {"href": f"{self.okta_url}/api/v1/authn/cancel",
                                           "hints": {"allow": ["POST"]}}}}

    def _verify_factor(self, factor_id: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return _okta_error(400, "E0000003", "The request body was not well-formed.")
        tx = self._transactions.get(body.get("stateToken") or "")
        if tx is None or self.now() >= tx["expires"]:
            return _okta_error(401, "E0000011", "Invalid token provided")
        if factor_id != self.factor_id:
            return _okta_error(404, "E0000007", f"Not found: Resource not found: {factor_id} (UserFactor)")
        now = self.now()
        pass_code = body.get("passCode")
        if not pass_code:  # "send the SMS"
            if tx["sms_at"] is not None and now - tx["sms_at"] < SMS_RESEND_WAIT:
                return _okta_error(429, "E0000109", "An SMS message was recently sent. Please wait 30 seconds "
                                                    "before trying again.")
            tx["sms_at"] = now
            # WARNING so it reaches stderr even when nobody configured logging (embedded use).
            log.warning("SMS to %s: your IEC verification code is %s", self.mobile_phone, self.otp)
            return 200, {"stateToken": body["stateToken"], "expiresAt": _okta_time(tx["expires"]),
                         "status": "MFA_CHALLENGE", "factorResult": "CHALLENGE",
                         "_embedded": {"user": self._okta_user(), "factor": self._factor()}}
        # Choice: a code is only right after an SMS went out in this transaction; a wrong code
        # leaves the stateToken usable (Okta counts attempts; the sandbox does not lock out).
        if tx["sms_at"] is None or str(pass_code) != self.otp:
            return _okta_error(403, "E0000068", "Invalid Passcode/Answer",
                               ["Your passcode doesn't match our records. Please try again."])
        del self._transactions[body["stateToken"]]
        session_token = secrets.token_urlsafe(32)
        self._sessions[session_token] = now + SESSION_TOKEN_TTL
        return 200, {"expiresAt": _okta_time(now + SESSION_TOKEN_TTL), "status": "SUCCESS",
                     "sessionToken": session_token, "_embedded": {"user": self._okta_user()}}

    def _authorize(self, q: dict) -> tuple[int, Any]:
        if q.get("client_id") != CLIENT_ID:
            return 400, {"errorCode": "invalid_client", "errorSummary": "Invalid value for 'client_id' parameter.",
                         "errorCauses": []}
        if q.get("redirect_uri") != REDIRECT_URI:
            return 400, {"errorCode": "invalid_request",
                         "errorSummary": "The 'redirect_uri' parameter must be a Login redirect URI in the "
                                         "client app settings", "errorCauses": []}
        state = q.get("state", "")
        if "code" not in q.get("response_type", "").split():
            return 200, _form_post({"error": "unsupported_response_type",
                                    "error_description": "The response type is not supported.", "state": state})
        challenge = q.get("code_challenge", "")
        if q.get("code_challenge_method") != "S256" or not re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge):
            return 200, _form_post({"error": "invalid_request", "state": state,
                                    "error_description": "PKCE code challenge is required when the token "
                                                         "endpoint authentication method is 'NONE'."})
        # Choice: a missing, used or expired sessionToken answers login_required in the form
        # (real Okta would show its sign-in page, which a headless client cannot use either).
        expires = self._sessions.pop(q.get("sessionToken", ""), None)
        if expires is None or self.now() >= expires:
            return 200, _form_post({"error": "login_required", "state": state,
                                    "error_description": "The client specified not to prompt, but the user "
                                                         "is not logged in."})
        # Always has a "-" so a client that forgets to undo Okta's \x2D escaping fails every time.
        code = secrets.token_urlsafe(16) + "-" + secrets.token_urlsafe(8)
        nonce = q.get("nonce")
        self._codes[code] = {"expires": self.now() + AUTH_CODE_TTL, "challenge": challenge,
                             "redirect_uri": q["redirect_uri"], "nonce": nonce}
        id_token = self._issue_id_token(nonce)
        return 200, _form_post({"id_token": id_token, "code": code, "state": state})

    def _token(self, f: dict) -> tuple[int, Any]:
        if f.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed. Either "
                         "the client or the client credentials are invalid."}
        grant = f.get("grant_type")
        if grant == "authorization_code":
            entry = self._codes.pop(f.get("code", ""), None)  # one-time, even when the rest fails
            if entry is None or self.now() >= entry["expires"]:
                return _invalid_grant("The authorization code is invalid or has expired.")
            if f.get("redirect_uri") != entry["redirect_uri"]:
                return _invalid_grant("The 'redirect_uri' does not match the redirection URI used in the "
                                      "authorization request.")
            verifier = f.get("code_verifier")
            if not verifier:
                return 400, {"error": "invalid_request", "error_description": "PKCE code verifier is required "
                             "when the parameters code_challenge_method and code_challenge are included in the "
                             "authorization request."}
            if not re.fullmatch(r"[A-Za-z0-9._~-]{43,128}", verifier):
                return 400, {"error": "invalid_request", "error_description": "The code_verifier is invalid."}
            if not secrets.compare_digest(pkce_challenge(verifier), entry["challenge"]):
                return _invalid_grant("PKCE verification failed.")
            return 200, self._issue_tokens(entry["nonce"])
        if grant == "refresh_token":
            token = f.get("refresh_token", "")
            entry = self._refresh.get(token)
            if (entry is None or entry["revoked"]
                    or (entry["rotated_at"] is not None and self.now() - entry["rotated_at"] > REFRESH_GRACE)):
                return _invalid_grant("The refresh token is invalid or expired.")
            if entry["rotated_at"] is None:
                entry["rotated_at"] = self.now()  # rotation: the old token dies after the grace period
            return 200, self._issue_tokens(None)
        if not grant:
            return 400, {"error": "invalid_request",
                         "error_description": "The request is missing a required parameter: grant_type."}
        return 400, {"error": "unsupported_grant_type",
                     "error_description": f"The authorization grant type is not supported: '{grant}'."}

    def _issue_id_token(self, nonce: str | None) -> str:
        iat = int(self.now())
        claims = {"sub": self.user_id, "ver": 1, "iss": f"{self.okta_url}/oauth2/default", "aud": CLIENT_ID,
                  "iat": iat, "exp": iat + self.token_ttl, "jti": "ID." + secrets.token_urlsafe(16),
                  "amr": ["mfa", "otp", "sms"], "idp": "00o" + self.user_id[3:], "auth_time": iat,
                  "preferred_username": self.username, "name": f"{self.first_name} {self.last_name}"}
        if nonce:
            claims["nonce"] = nonce
        token = _sign_jwt(claims, self.seed, self.key_id)
        self._id_tokens[token] = claims["exp"]
        return token

    def _issue_tokens(self, nonce: str | None) -> dict:
        iat = int(self.now())
        access = _sign_jwt({"ver": 1, "jti": "AT." + secrets.token_urlsafe(16),
                            "iss": f"{self.okta_url}/oauth2/default", "aud": "api://default", "iat": iat,
                            "exp": iat + self.token_ttl, "cid": CLIENT_ID, "uid": self.user_id,
                            "scp": SCOPE.split(), "auth_time": iat, "sub": self.username},
                           self.seed, self.key_id)
        refresh = secrets.token_urlsafe(32)
        self._refresh[refresh] = {"rotated_at": None, "revoked": False}
        return {"token_type": "Bearer", "expires_in": self.token_ttl, "access_token": access, "scope": SCOPE,
                "refresh_token": refresh, "id_token": self._issue_id_token(nonce)}

    def _okta_user(self) -> dict:
        return {"id": self.user_id, "passwordChanged": None,
                "profile": {"login": self.username, "firstName": self.first_name, "lastName": self.last_name,
                            "locale": "he_IL", "timeZone": "Asia/Jerusalem"}}

    def _factor(self) -> dict:
        # IEC's "SMS" is an Okta email factor addressed to an email-to-SMS gateway.
        masked = self.mobile_phone[:2] + "XXXXX" + self.mobile_phone[-2:]
        return {"id": self.factor_id, "factorType": "email", "provider": "OKTA", "vendorName": "OKTA",
                "profile": {"email": f"{masked}@sns.iec.co.il"},
                "_links": {"verify": {"href": f"{self.okta_url}/api/v1/authn/factors/{self.factor_id}/verify",
                                      "hints": {"allow": ["POST"]}}}}

    # -- IEC API -----------------------------------------------------------------------------

    def _route_api(self, method: str, path: str, query: dict, body: Any, auth: str) -> tuple[int, Any]:
        # Choice (open point 5): only a live id_token we issued is accepted; an access_token,
        # an expired or unknown token all get the same 401 body.
        scheme, _, token = auth.partition(" ")
        exp = self._id_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if exp is None or self.now() >= exp:
            return _iec_error(401, "Unauthorized")
        parts = path.split("/")
        key = "/".join(parts[:2]).lower()
        args = parts[2:] if len(parts) > 2 else []
        if method == "GET" and path.lower() == "outages/accounts":
            return 200, _wrap([self._account()])
        if method == "GET" and path.lower() == "customer":
            return 200, self._customer()  # not wrapped
        if method == "GET" and key == "customer/contract" and len(args) == 1:
            if not _same_id(args[0], self.bp_number):
                return _iec_error(401, NOT_YOURS)
            return 200, _wrap(self._contracts())
        if method == "GET" and parts[0].lower() in ("device", "devicein") and len(parts) == 2:
            if not _same_id(parts[1], self.contract_id):
                return _iec_error(401, NOT_YOURS)
            device = {"isActive": True, "deviceType": 3, "deviceNumber": self.meter_serial,
                      "deviceCode": self.meter_code}
            if parts[0].lower() == "device":
                return 200, [device]  # a bare array, no descriptor
            return 200, {"status": 0, "isActive": True, "devices": [{**device, "meterKind": "דו כיווני"}]}
        if method == "POST" and key == "consumption/remotereadingrange" and len(args) == 1:
            if not _same_id(args[0], self.contract_id):
                return _iec_error(401, NOT_YOURS)
            return self._remote_reading(body)
        if method == "GET" and key in ("electricbillsdrawers/electricbills", "billingcollection/invoices") \
                and len(args) == 2:
            if not (_same_id(args[0], self.contract_id) and _same_id(args[1], self.bp_number)):
                return _iec_error(401, NOT_YOURS)
            if key.startswith("billing"):
                return 200, _wrap(self._invoices(only_open=query.get("onlyOpen", "").lower() == "true"))
            return 200, _wrap(self._electric_bills())
        return _iec_error(404, "Not Found")

    def _account(self) -> dict:
        return {"accountNumber": self.bp_number, "accountType": 1, "id": self.account_id, "email": None,
                "telephone": None, "governmentNumber": self.id_number,
                "name": f"{self.first_name} {self.last_name}", "viewTypeCode": 1}

    def _customer(self) -> dict:
        return {"bpNumber": self.bp_number, "idType": 1, "customerStatus": 1, "idNumber": self.id_number,
                "firstName": self.first_name, "lastName": self.last_name, "mobilePhone": self.mobile_phone,
                "email": "israel@example.com",
                "accounts": [{"mainContractId": self.contract_id, "mainContractIdType": 1, "companyId": "1000",
                              "name": self.first_name, "lastName": self.last_name, "bpNumber": self.bp_number,
                              "bpType": 1, "isActiveAccount": True, "customerRole": 0, "accountType": 1}]}

    def _contracts(self) -> dict:
        latest = self._invoice_list()[0]
        debt = latest["amountToPay"]
        due = datetime.strptime(latest["lastDate"], "%d/%m/%Y").date()
        return {"contracts": [{"address": "הרצל 1, תל אביב - יפו", "contractId": self.contract_id,
                               "dueDate": due.isoformat(), "totalDebt": debt, "frequency": 2, "status": 1,
                               "fromPativteProducer": True, "cityCode": "000000005000",
                               "cityName": "תל אביב - יפו", "streetCode": "000000000101", "streetName": "הרצל",
                               "houseNumber": "1",
                               "debtForInvoicesDueDateNotPassed": debt if due >= self.today() else 0.0,
                               "isTouz": False, "smartMeter": True, "producerType": 1, "isDomestic": True}],
                "contractAmount": 1, "totalToPay": debt}

    # Readings --------------------------------------------------------------------------------

    def _visible(self, day: date) -> list[tuple[datetime, float, float]]:
        """The intervals of a local day that IEC has: completed ones, none on an empty day."""
        if day in self.empty_days:
            return []
        now = datetime.fromtimestamp(self.now(), UTC)
        return [r for r in _day_intervals(self.seed, day) if r[0] + INTERVAL <= now]

    def _register(self, until: date) -> tuple[float, float]:
        """Meter registers (totalImport, totalExport) at the end of local day `until`, or now if earlier."""
        imp, exp = 4210.0, 1325.0  # readings carried over from the meter's earlier life
        day = self.meter_start_date
        now = datetime.fromtimestamp(self.now(), UTC)
        while day <= until:
            for t, i, e in _day_intervals(self.seed, day):
                if t + INTERVAL <= now:
                    imp, exp = imp + i, exp + e
            day += timedelta(days=1)
        return round(imp, 3), round(exp, 3)

    def _sum(self, first: date, last: date) -> tuple[float, float, int]:
        imp = exp = 0.0
        n = 0
        day = first
        while day <= last:
            for _t, i, e in self._visible(day):
                imp, exp, n = imp + i, exp + e, n + 1
            day += timedelta(days=1)
        return round(imp, 3), round(exp, 3), n

    def _remote_reading(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return _iec_error(400, "Invalid request body")
        # Choice: the sandbox speaks one format at a time; a body of the other format is a 400,
        # so a client can notice and switch.
        legacy = self.reading_format == "legacy"
        if ("smartMetersList" in body) == legacy:
            return _iec_error(400, "Invalid request body")
        try:
            day = date.fromisoformat(body["fromDate"][:10])
            resolution = int(body["resolution"])
        except (KeyError, TypeError, ValueError):
            return _iec_error(400, "Invalid request body")
        if resolution not in (1, 2, 3):
            return _iec_error(400, "Invalid resolution")
        meters = ([{"meterSerial": body.get("meterSerialNumber")}] if legacy
                  else body.get("smartMetersList") or [])
        if not any(_same_id(m.get("meterSerial", ""), self.meter_serial) for m in meters if isinstance(m, dict)):
            return _iec_error(400, "Meter is not associated with the contract.")

        # Choice (open point 7): WEEKLY is Sunday..Saturday; MONTHLY runs to the end of the month
        # with rows only for days that have data. WEEKLY/MONTHLY rows are per day, stamped at local midnight.
        if resolution == 1:
            first = last = day
        elif resolution == 2:
            first = day - timedelta(days=(day.weekday() + 1) % 7)
            last = first + timedelta(days=6)
        else:
            first = day.replace(day=1)
            last = day.replace(day=calendar.monthrange(day.year, day.month)[1])
        rows: list[tuple[datetime, float, float]] = []
        d = first
        while d <= last:
            visible = self._visible(d)
            if resolution == 1:
                rows.extend(visible)
            elif visible:
                rows.append((visible[0][0], round(sum(r[1] for r in visible), 3),
                             round(sum(r[2] for r in visible), 3)))
            d += timedelta(days=1)
        imp, exp, n = self._sum(first, last)

        today = self.today()
        last_invoice = body.get("lastInvoiceDate")
        try:
            since = date.fromisoformat(str(last_invoice)[:10])
        except ValueError:
            since = today
        fut_imp, fut_exp, _ = self._sum(max(since, self.meter_start_date), today)
        reg_imp, reg_exp = self._register(today)
        future = {"lastInvoiceDate": last_invoice, "currentDate": today.isoformat(), "futureConsumption": fut_imp,
                  "futureBackStream": fut_exp, "totalImport": reg_imp, "totalExport": reg_exp,
                  "totalImportDate": today.isoformat(), "multiplierFactor": 1.0}
        period_date = min(last, today).isoformat()
        if legacy:
            return 200, {"status": 0, "futureConsumptionInfo": future, "fromDate": first.isoformat(),
                         "toDate": last.isoformat(), "totalConsumptionForPeriod": imp,
                         "totalImportDateForPeriod": period_date,
                         "meterStartDate": self.meter_start_date.isoformat(), "totalImport": reg_imp,
                         "data": [{"status": 0, "value": i,
                                   "date": t.astimezone(TZ).strftime("%Y-%m-%dT%H:%M:%S.000000")}
                                  for t, i, _e in rows]}
        return 200, {
            "reportStatus": 0, "contractNumber": self.contract_id, "reportStatusText": None, "taozList": [],
            "meterList": [{
                "meterKind": 2, "reportResultStatus": 0, "meterSerial": self.meter_serial,
                "meterCode": self.meter_code, "futureConsumptionInfo": future,
                "startDate": first.isoformat(), "endDate": last.isoformat(), "numberOfPeriodAggregated": n,
                "totalConsumptionForPeriod": imp, "totalBackStreamForPeriod": exp,
                "totalImport": reg_imp, "totalExport": reg_exp, "totalImportDateForPeriod": period_date,
                "statusForPeriod": 0, "meterStartDate": self.meter_start_date.isoformat(),
                "periodConsumptions": [{"interval": _iso_utc(t), "consumption": i, "backStream": e, "status": 0}
                                       for t, i, e in rows],
            }],
        }

    # Bills -----------------------------------------------------------------------------------

    def _invoice_list(self, count: int = 4) -> list[dict]:
        """Newest first. Choice (open point 7): bi-monthly periods ending on the 16th of odd months,
        issued 3 days later, due 19 days after issue; only the newest is unpaid."""
        today = self.today()
        y, m = today.year, today.month
        ends: list[date] = []
        while len(ends) < count + 1:  # one extra to know the oldest period's start
            end = date(y, m, 16)
            if m % 2 == 1 and end + timedelta(days=3) <= today:
                ends.append(end)
            y, m = (y, m - 1) if m > 1 else (y - 1, 12)
        out = []
        for k in range(count):
            to_d, from_d = ends[k], ends[k + 1] + timedelta(days=1)
            issued = to_d + timedelta(days=3)
            imp, exp = _raw_sum(self.seed, from_d, to_d)
            amount = round(max(30.0 + imp * 0.6402 - exp * 0.4800, 0.0), 2)  # made-up tariff and credit
            paid = k > 0
            out.append({"fullDate": f"{issued.isoformat()}T00:00:00", "fromDate": f"{from_d.isoformat()}T00:00:00",
                        "toDate": f"{to_d.isoformat()}T00:00:00", "amountOrigin": amount,
                        "amountToPay": 0.0 if paid else amount, "amountPaid": amount if paid else 0.0,
                        "invoiceId": 700000000 + to_d.toordinal(), "contractNumber": int(self.contract_id),
                        "orderNumber": 0, "lastDate": (issued + timedelta(days=19)).strftime("%d/%m/%Y"),
                        "invoicePaymentStatus": 1 if paid else 0, "documentID": "1",
                        "daysPeriod": (to_d - from_d).days + 1, "hasDirectDebit": False, "invoiceType": 0,
                        "_consumption": imp, "_to": to_d})
        return out

    def _electric_bills(self) -> dict:
        invoices = [{k: v for k, v in inv.items() if not k.startswith("_")} for inv in self._invoice_list()]
        unpaid = [inv for inv in invoices if inv["amountToPay"] > 0]
        return {"totalAmountToPay": round(sum(inv["amountToPay"] for inv in unpaid), 2),
                "totalInvoicesToPay": len(unpaid),
                "lastDateToPay": unpaid[0]["lastDate"] if unpaid else None, "invoices": invoices}

    def _invoices(self, only_open: bool) -> dict:
        out = []
        for inv in self._invoice_list():
            if only_open and inv["amountToPay"] <= 0:
                continue
            reading = int(self._register(inv["_to"])[0])
            public = {k: v for k, v in inv.items() if not k.startswith("_")}
            out.append({**public, "consumption": round(inv["_consumption"]), "readingCode": 1,
                        "meterReadings": [{"reading": reading, "readingCode": None,
                                           "readingDate": f"{inv['_to'].isoformat()}T00:00:00", "usage": None,
                                           "serialNumber": self.meter_serial.zfill(18)}]})
        return {"property": {"areaId": "111", "districtId": 1}, "invoices": out}


# ---------------------------------------------------------------------------------------------


class _Invalid:
    """A request body that was not JSON; recorded as its length only."""

    def __init__(self, raw: bytes) -> None:
        self.length = len(raw)

    def __repr__(self) -> str:
        return f"<invalid body, {self.length} bytes>"


def _raw_sum(seed: int, first: date, last: date) -> tuple[float, float]:
    imp = exp = 0.0
    day = first
    while day <= last:
        for _t, i, e in _day_intervals(seed, day):
            imp, exp = imp + i, exp + e
        day += timedelta(days=1)
    return round(imp, 3), round(exp, 3)


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if k in SECRET_FIELDS else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _wrap(data: Any) -> dict:
    # "reponseDescriptor" is IEC's own spelling.
    return {"data": data, "reponseDescriptor": {"isSuccess": True, "code": "00", "description": ""}}


def _iec_error(status: int, message: str) -> tuple[int, dict]:
    return status, {"Error": message, "Code": status, "Rid": str(uuid.uuid4())}


def _okta_error(status: int, code: str, summary: str, causes: Iterable[str] = ()) -> tuple[int, dict]:
    return status, {"errorCode": code, "errorSummary": summary, "errorLink": code,
                    "errorId": "oae" + secrets.token_urlsafe(15),
                    "errorCauses": [{"errorSummary": c} for c in causes]}


def _invalid_grant(description: str) -> tuple[int, dict]:
    return 400, {"error": "invalid_grant", "error_description": description}


def _form_post(fields: dict[str, str]) -> str:
    """Okta's response_mode=form_post page: one hidden input per line, as the clients' regexes
    expect. Okta writes "-" inside values as the JS escape \\x2D; clients decode the page with
    unicode-escape to undo it."""
    inputs = "\n".join(
        f'<input type="hidden" name="{name}" value="{html.escape(str(value)).replace("-", chr(92) + "x2D")}"/>'
        for name, value in fields.items())
    return ("<!DOCTYPE html>\n<html>\n<head><title>Redirecting</title></head>\n"
            '<body onload="document.forms[0].submit()">\n'
            f'<form method="post" action="{REDIRECT_URI}">\n{inputs}\n</form>\n</body>\n</html>\n')


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="meterflow sandbox iec", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--otp", default="123456", help="the fixed SMS code (default %(default)s)")
    parser.add_argument("--token-ttl", type=int, default=3600, help="access/id token lifetime, seconds")
    parser.add_argument("--state-token-ttl", type=int, default=300, help="OTP session lifetime, seconds")
    parser.add_argument("--seed", type=int, default=0, help="meter data and ids")
    parser.add_argument("--id-number", default="123456782", help="the customer's ID number (Okta username)")
    parser.add_argument("--format", choices=("current", "legacy"), default="current",
                        help="RemoteReadingRange format: since Feb 2026 (current) or before (legacy)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sandbox = IECSandbox(args.host, args.port, otp=args.otp, token_ttl=args.token_ttl,
                         state_token_ttl=args.state_token_ttl, seed=args.seed, reading_format=args.format,
                         id_number=args.id_number)
    stop = threading.Event()
    try:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    except ValueError:  # not the main thread: Ctrl-C only
        pass
    sandbox.start()
    log.info("login as ID %s; the OTP is %s; BP %s, contract %s, meter %s/%s", sandbox.id_number, sandbox.otp,
             sandbox.bp_number, sandbox.contract_id, sandbox.meter_serial, sandbox.meter_code)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
