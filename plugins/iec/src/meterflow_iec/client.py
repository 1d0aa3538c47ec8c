"""IEC client: Okta login with an SMS code and PKCE, token refresh, and the IEC API calls.

Implements shared/reference/meter-apis.md Part B with httpx (async)::

    client = IECClient(okta_url, api_url)
    challenge = await client.request_otp("123456782")     # authn + "send the SMS"
    tokens = await client.complete_login(challenge, "123456")  # verify -> authorize (PKCE) -> token
    data = await client.customer(tokens.id_token)         # IEC takes the id_token as the Bearer

:class:`IECSession` keeps the tokens of one login: it refreshes them before they expire,
refreshes once and retries on a 401, stores every rotated refresh token, and once Okta
refuses the refresh token for good raises :data:`~meterflow_iec.const.LOGIN_EXPIRED`
without calling Okta again until a new login appears in the store.

Every failure is a :class:`meterflow.errors.FlowError`: ``AuthError`` (kind ``auth``: wrong
code, expired session, refused token), ``HttpError`` (kind ``http``, with ``status``; IEC's
own ``{"Error": ..., "Code": ...}`` text in the message), ``ParseError`` (kind ``parse``:
an answer that is not what Part B describes), ``ConnectError`` / ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from meterflow.errors import AuthError, ConnectError, CredentialsError, FlowError, HttpError, ParseError
from meterflow.errors import TimeoutError as FlowTimeoutError

from .const import API_URL, CLIENT_ID, LOGIN_EXPIRED, OKTA_URL, REDIRECT_URI, SCOPE

log = logging.getLogger("meterflow_iec.client")
T = TypeVar("T")

# What IEC's website sends; whether IEC needs them is unknown (B.1), they cost nothing.
BROWSER_HEADERS = {
    "accept": "application/json, text/plain, */*",
    "accept-language": "en,he;q=0.9",
    "origin": "https://www.iec.co.il",
    "referer": "https://www.iec.co.il/",
    "x-iec-idt": "1",
    "x-iec-webview": "1",
}
#: Refresh this long before the id_token's expiry instead of waiting for a 401.
EXPIRY_MARGIN = 60.0


@dataclass
class Tokens:
    """One login's tokens. ``expires_at`` is epoch seconds on the clock of whoever asked."""

    id_token: str
    access_token: str
    refresh_token: str
    expires_at: float

    @classmethod
    def from_response(cls, data: Any, now: float) -> Tokens:
        if not isinstance(data, dict) or not data.get("id_token") or not data.get("refresh_token"):
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ParseError(f"Okta token answer without id_token/refresh_token (got {keys})")
        try:
            ttl = float(data.get("expires_in") or 3600)
        except (TypeError, ValueError):
            ttl = 3600.0
        return cls(str(data["id_token"]), str(data.get("access_token") or ""), str(data["refresh_token"]), now + ttl)


@dataclass
class OtpChallenge:
    """An Okta authn transaction waiting for the SMS code."""

    state_token: str
    factor_id: str
    factor_type: str
    destination: str  # where the code went, e.g. 05XXXXX67@sns.iec.co.il
    expires_at: str  # Okta's text, for messages


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge); the verifier is 64 chars of [A-Za-z0-9_-]."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    return verifier, challenge


_JS_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})")
_HIDDEN = re.compile(r"<input\b[^>]*\btype=\"hidden\"[^>]*>", re.I)
_ATTR = re.compile(r"\b(name|value)=\"([^\"]*)\"", re.I)


def scrape_form(page: str) -> dict[str, str]:
    """The hidden inputs of Okta's form_post page. Okta writes some characters inside values
    as JavaScript escapes (``-`` as ``\\x2D``): undo those, then HTML entities. Unlike
    ``codecs.decode(page, "unicode-escape")`` this leaves non-ASCII text intact."""
    fields: dict[str, str] = {}
    for tag in _HIDDEN.findall(page):
        attrs = {k.lower(): v for k, v in _ATTR.findall(tag)}
        if "name" in attrs:
            raw = _JS_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), attrs.get("value", ""))
            fields[attrs["name"]] = html.unescape(raw)
    return fields


def _where(url: str) -> str:
    """scheme://host/path of a URL, without the query (sessionToken and codes live there)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}"


def _snippet(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


class IECClient:
    """Okta + IEC API over one httpx.AsyncClient. Base URLs are configurable (the sandbox).

    ``now`` stamps token expiry (pass the engine clock's ``time``); ``transport`` is for tests.
    """

    def __init__(self, okta_url: str = OKTA_URL, api_url: str = API_URL, *, timeout: float = 30.0,
                 now: Callable[[], float] = time.time, transport: Any = None) -> None:
        import httpx

        self.okta_url = okta_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.now = now
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, headers=BROWSER_HEADERS,
                                       follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> IECClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- plumbing --------------------------------------------------------------------------
    async def _request(self, what: str, method: str, url: str, **kw: Any):
        import httpx

        try:
            return await self._http.request(method, url, **kw)
        except httpx.TimeoutException:
            raise FlowTimeoutError(f"{what}: no answer from {_where(url)} within {self.timeout:g} s") from None
        except httpx.HTTPError as e:
            raise ConnectError(f"{what}: cannot reach {_where(url)}: {e or type(e).__name__}") from None

    @staticmethod
    def _json(resp, what: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            ctype = resp.headers.get("content-type", "?").split(";")[0]
            raise ParseError(f"{what}: expected JSON, got {ctype} (HTTP {resp.status_code}): "
                             f"{_snippet(resp.text)!r}", status=resp.status_code) from None

    @staticmethod
    def _okta_error(resp, what: str) -> FlowError:
        """Okta's authn errors ({errorCode, errorSummary, errorCauses}) and OAuth errors
        ({error, error_description}) as FlowErrors with a message a person can act on."""
        status = resp.status_code
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        code = str(body.get("errorCode") or "")
        summary = str(body.get("errorSummary") or "")
        causes = [str(c.get("errorSummary")) for c in body.get("errorCauses") or [] if isinstance(c, dict)]
        detail = causes[0] if causes else summary
        if code == "E0000068":
            return AuthError(f"wrong SMS code: {detail or summary}", status=status, code=code)
        if code == "E0000011":
            return AuthError("the login session expired (an SMS code is valid for a few minutes): "
                             "start the login again", status=status, code=code)
        if code == "E0000004":
            return AuthError(f"{what}: IEC does not know this user id ({summary})", status=status, code=code)
        if code == "E0000109":
            return HttpError(f"{what}: {summary or 'an SMS was sent recently; wait 30 seconds'}", status, code=code)
        if body.get("error"):
            error, desc = str(body["error"]), str(body.get("error_description") or "")
            text = f"{what}: {error}" + (f": {desc}" if desc else "")
            if error in ("invalid_grant", "invalid_client", "access_denied") or status in (401, 403):
                return AuthError(text, status=status, error=error)
            return HttpError(text, status, error=error)
        text = f"{what}: HTTP {status}" + (f": {summary}" if summary else f": {_snippet(resp.text)!r}" if resp.text else "")
        if code:
            text += f" ({code}{': ' + detail if detail and detail != summary else ''})"
        if status in (401, 403):
            return AuthError(text, status=status, code=code)
        return HttpError(text, status, code=code)

    # ---- Okta login (B.2) ------------------------------------------------------------------
    async def request_otp(self, user_id: str) -> OtpChallenge:
        """authn for ``<user_id>@iec.co.il`` (no password), then ask Okta to send the SMS."""
        user_id = str(user_id).strip()
        if not user_id:
            raise AuthError("an IEC user id (ID number) is needed")
        username = user_id if "@" in user_id else f"{user_id}@iec.co.il"
        resp = await self._request("Okta authn", "POST", f"{self.okta_url}/api/v1/authn",
                                   json={"username": username})
        if resp.status_code != 200:
            raise self._okta_error(resp, "Okta authn")
        body = self._json(resp, "Okta authn")
        state_token = body.get("stateToken") if isinstance(body, dict) else None
        factors = ((body.get("_embedded") or {}).get("factors") or []) if isinstance(body, dict) else []
        if not state_token or body.get("status") != "MFA_REQUIRED" or not factors:
            status = body.get("status") if isinstance(body, dict) else None
            raise ParseError(f"Okta authn: expected status MFA_REQUIRED with factors, got {status!r}")
        # IEC's "SMS" is an Okta email factor addressed to an email-to-SMS gateway; a real sms
        # factor would do as well. Anything else (push, question) cannot be answered here.
        usable = [f for f in factors if isinstance(f, dict) and f.get("factorType") in ("email", "sms")]
        if not usable:
            kinds = ", ".join(str(f.get("factorType")) for f in factors if isinstance(f, dict))
            raise AuthError(f"Okta offers no SMS/email code factor for this user (only: {kinds})")
        usable.sort(key=lambda f: not str((f.get("profile") or {}).get("email", "")).endswith("sns.iec.co.il"))
        factor = usable[0]
        profile = factor.get("profile") or {}
        challenge = OtpChallenge(str(state_token), str(factor["id"]), str(factor["factorType"]),
                                 str(profile.get("email") or profile.get("phoneNumber") or "your phone"),
                                 str(body.get("expiresAt") or ""))
        # "Send the SMS": the verify URL with only the stateToken (without it no code goes out).
        resp = await self._request("Okta send code", "POST", self._verify_url(challenge),
                                   json={"stateToken": challenge.state_token})
        if resp.status_code != 200:
            raise self._okta_error(resp, "Okta send code")
        result = self._json(resp, "Okta send code")
        if not isinstance(result, dict) or result.get("status") != "MFA_CHALLENGE":
            got = result.get("status") if isinstance(result, dict) else result
            raise ParseError(f"Okta send code: expected status MFA_CHALLENGE, got {got!r}")
        return challenge

    def _verify_url(self, challenge: OtpChallenge) -> str:
        # Built from our base URL rather than Okta's _links, which name the production host.
        return f"{self.okta_url}/api/v1/authn/factors/{challenge.factor_id}/verify"

    async def verify_otp(self, challenge: OtpChallenge, code: str) -> str:
        """The sessionToken for a correct code; AuthError for a wrong code or an expired session."""
        code = str(code).strip()
        if not code:
            raise AuthError("wrong SMS code: the code is empty")
        resp = await self._request("Okta verify code", "POST", self._verify_url(challenge),
                                   json={"stateToken": challenge.state_token, "passCode": code})
        if resp.status_code != 200:
            raise self._okta_error(resp, "Okta verify code")
        body = self._json(resp, "Okta verify code")
        if not isinstance(body, dict) or body.get("status") != "SUCCESS" or not body.get("sessionToken"):
            got = body.get("status") if isinstance(body, dict) else body
            raise AuthError(f"Okta verify code: expected status SUCCESS with a sessionToken, got {got!r}")
        return str(body["sessionToken"])

    async def authorize(self, session_token: str) -> tuple[str, str]:
        """Trade the one-time sessionToken for an authorization code: (code, code_verifier)."""
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        params = {"client_id": CLIENT_ID, "response_type": "id_token code", "response_mode": "form_post",
                  "scope": SCOPE, "redirect_uri": REDIRECT_URI, "state": state, "nonce": nonce,
                  "code_challenge_method": "S256", "sessionToken": session_token, "code_challenge": challenge}
        resp = await self._request("Okta authorize", "GET", f"{self.okta_url}/oauth2/default/v1/authorize",
                                   params=params)
        if resp.status_code != 200:
            raise self._okta_error(resp, "Okta authorize")
        fields = scrape_form(resp.text)
        if fields.get("error"):
            desc = fields.get("error_description") or ""
            raise AuthError(f"Okta authorize: {fields['error']}" + (f": {desc}" if desc else ""), error=fields["error"])
        if fields.get("state") not in (None, state):
            raise AuthError("Okta authorize: the answer belongs to another login (state mismatch)")
        if not fields.get("code"):
            raise ParseError(f"Okta authorize: no code in the answer page (hidden fields: {sorted(fields)})")
        return fields["code"], verifier

    async def exchange_code(self, code: str, verifier: str) -> Tokens:
        data = {"client_id": CLIENT_ID, "code_verifier": verifier, "grant_type": "authorization_code",
                "redirect_uri": REDIRECT_URI, "code": code}
        return await self._token("Okta token", data)

    async def complete_login(self, challenge: OtpChallenge, code: str) -> Tokens:
        """Code -> sessionToken -> authorization code (PKCE S256) -> tokens."""
        session_token = await self.verify_otp(challenge, code)
        auth_code, verifier = await self.authorize(session_token)
        return await self.exchange_code(auth_code, verifier)

    async def refresh(self, refresh_token: str) -> Tokens:
        """New tokens, including a new refresh token (Okta rotates them: keep the new one)."""
        data = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "refresh_token": refresh_token,
                "grant_type": "refresh_token", "scope": SCOPE}
        return await self._token("Okta token refresh", data)

    async def _token(self, what: str, form: dict) -> Tokens:
        resp = await self._request(what, "POST", f"{self.okta_url}/oauth2/default/v1/token", data=form,
                                   headers={"accept": "application/json"})
        if resp.status_code != 200:
            raise self._okta_error(resp, what)
        return Tokens.from_response(self._json(resp, what), self.now())

    # ---- IEC API (B.3) -----------------------------------------------------------------------
    async def api(self, what: str, method: str, path: str, id_token: str, *, json: Any = None,
                  params: dict | None = None) -> Any:
        """One API call with the id_token as Bearer; unwraps ``{"data", "reponseDescriptor"}``."""
        headers = {"Authorization": f"Bearer {id_token}"}
        resp = await self._request(what, method, f"{self.api_url}/{path.lstrip('/')}", headers=headers,
                                   json=json, params=params)
        if resp.status_code != 200:
            raise self._iec_error(resp, what)
        body = self._json(resp, what)
        if isinstance(body, dict):
            desc = body.get("reponseDescriptor", body.get("responseDescriptor"))  # IEC spells it "repo..."
            if isinstance(desc, dict):
                if desc.get("isSuccess") is False:
                    text = desc.get("description") or f"code {desc.get('code')}"
                    raise HttpError(f"{what}: IEC answered isSuccess=false: {text}", resp.status_code,
                                    code=desc.get("code"))
                return body.get("data")
        return body

    @staticmethod
    def _iec_error(resp, what: str) -> HttpError:
        """IEC's error bodies look like {"Error": "...", "Code": 401, "Rid": "..."}."""
        iec_error = None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and (body.get("Error") or body.get("error")):
            iec_error = str(body.get("Error") or body.get("error"))
            text = f"{what}: {iec_error} (HTTP {resp.status_code})"
        else:
            text = f"{what}: HTTP {resp.status_code}" + (f": {_snippet(resp.text)!r}" if resp.text else "")
        details = {"iec_error": iec_error} if iec_error else {}
        if isinstance(body, dict) and body.get("Rid"):
            details["rid"] = str(body["Rid"])
        return HttpError(text, resp.status_code, **details)

    async def accounts(self, id_token: str) -> list:
        data = await self.api("IEC accounts", "GET", "outages/accounts", id_token)
        return _expect(data, list, "IEC accounts")

    async def customer(self, id_token: str) -> dict:
        data = await self.api("IEC customer", "GET", "customer", id_token)
        return _expect(data, dict, "IEC customer")

    async def contracts(self, id_token: str, bp_number: str) -> dict:
        data = await self.api("IEC contracts", "GET", f"customer/contract/{bp_number}", id_token)
        return _expect(data, dict, "IEC contracts")

    async def devices(self, id_token: str, contract_id: str) -> list:
        data = await self.api("IEC devices", "GET", f"Device/{contract_id}", id_token)
        return _expect(data, list, "IEC devices")

    async def electric_bills(self, id_token: str, contract_id: str, bp_number: str) -> dict:
        data = await self.api("IEC bills", "GET", f"ElectricBillsDrawers/ElectricBills/{contract_id}/{bp_number}",
                              id_token)
        return _expect(data, dict, "IEC bills")

    async def remote_reading(self, id_token: str, contract_id: str, *, meter_serial: str, meter_code: str,
                             from_date: date, resolution: int, last_invoice_date: date | None = None,
                             meter_kind: str = "Backstream") -> dict:
        """RemoteReadingRange in the body format IEC uses since Feb 2026 (B.3)."""
        body = {"contractNumber": contract_id,
                "lastInvoiceDate": (last_invoice_date or from_date).isoformat(),
                "fromDate": from_date.isoformat(), "resolution": resolution,
                "smartMetersList": [{"meterKind": meter_kind, "meterCode": meter_code, "meterSerial": meter_serial}]}
        data = await self.api("IEC readings", "POST", f"Consumption/RemoteReadingRange/{contract_id}", id_token,
                              json=body)
        return _expect(data, dict, "IEC readings")


def _expect(data: Any, kind: type, what: str) -> Any:
    if not isinstance(data, kind):
        raise ParseError(f"{what}: expected a JSON {'list' if kind is list else 'object'}, "
                         f"got {type(data).__name__}")
    return data


# ---- a login's tokens over time -----------------------------------------------------------------
class TokenKeeper(Protocol):
    """Where a session's tokens live (see :class:`meterflow_iec.tokens.TokenStore`)."""

    name: str

    def load(self) -> Tokens | None: ...

    def save(self, tokens: Tokens) -> None: ...


class IECSession:
    """The tokens of one login plus the refresh rules of the issue:

    * before a call, refresh when the id_token expires within a minute (by ``now``);
    * on a 401, refresh once and retry once;
    * every refresh stores the rotated tokens; a store that cannot be written is logged and
      the new tokens are kept in memory (the old refresh token is already spent);
    * Okta's ``invalid_grant`` means the login is gone: :data:`LOGIN_EXPIRED`, and no more
      calls to Okta until the store holds a different refresh token (a new ``meterflow login``).

    Concurrent callers share one refresh (a lock, and "did someone refresh meanwhile?").
    """

    def __init__(self, client: IECClient, keeper: TokenKeeper, *, now: Callable[[], float] = time.time) -> None:
        self.client = client
        self.keeper = keeper
        self.now = now
        self.tokens: Tokens | None = None
        self.dead_refresh_token: str | None = None  # set when Okta refused it for good
        self.refreshes = 0
        self._lock = asyncio.Lock()

    @property
    def expired_for_good(self) -> bool:
        return self.dead_refresh_token is not None

    def _adopt_stored(self) -> bool:
        """Take the stored tokens when they differ from ours (a new login, or another process
        refreshed); True when something changed."""
        stored = self.keeper.load()
        if stored is None:
            return False
        ours = self.tokens
        if ours is not None and stored.refresh_token == ours.refresh_token:
            return False
        if stored.refresh_token == self.dead_refresh_token:
            return False
        self.tokens = stored
        self.dead_refresh_token = None
        return True

    async def valid_tokens(self) -> Tokens:
        if self.dead_refresh_token is not None and not self._adopt_stored():
            raise AuthError(LOGIN_EXPIRED, credential=self.keeper.name)
        if self.tokens is None:
            self._adopt_stored()
            if self.tokens is None:
                raise AuthError(f"no IEC login in credential {self.keeper.name!r}: run `meterflow login iec` first",
                                credential=self.keeper.name)
        if self.now() >= self.tokens.expires_at - EXPIRY_MARGIN:
            await self._refresh_after(self.tokens.id_token)
        return self.tokens  # type: ignore[return-value]

    async def refresh(self) -> Tokens:
        """Refresh now (the scheduled refresh); returns the new tokens."""
        before = self.refreshes
        tokens = await self.valid_tokens()
        if self.refreshes == before:  # unless valid_tokens just refreshed: no need for two
            await self._refresh_after(tokens.id_token)
        return self.tokens  # type: ignore[return-value]

    async def _refresh_after(self, used_id_token: str) -> None:
        async with self._lock:
            assert self.tokens is not None
            if self.tokens.id_token != used_id_token:
                return  # someone refreshed while we waited for the lock
            if self._adopt_stored():
                if self.now() < self.tokens.expires_at - EXPIRY_MARGIN:
                    return  # a newer login or another process's refresh: use it
            current = self.tokens
            try:
                new = await self.client.refresh(current.refresh_token)
            except AuthError as e:
                if e.details.get("error") == "invalid_grant":
                    self.dead_refresh_token = current.refresh_token
                    log.warning("IEC refresh token refused (%s): the login has to be repeated", e)
                    raise AuthError(LOGIN_EXPIRED, credential=self.keeper.name, okta=str(e)) from None
                raise
            self.tokens = new
            self.refreshes += 1
            try:
                self.keeper.save(new)
            except CredentialsError as e:
                log.error("IEC tokens refreshed but not stored (%s); a restart will need "
                          "`meterflow login iec`", e)

    async def call(self, fn: Callable[[str], Awaitable[T]]) -> T:
        """``fn(id_token)`` with the refresh rules above."""
        tokens = await self.valid_tokens()
        try:
            return await fn(tokens.id_token)
        except HttpError as e:
            if e.status != 401:
                raise
        await self._refresh_after(tokens.id_token)
        assert self.tokens is not None
        try:
            return await fn(self.tokens.id_token)
        except HttpError as e:
            if e.status == 401 and e.details.get("iec_error") in (None, "Unauthorized"):
                raise AuthError(f"{e} even with a fresh token; if it persists run `meterflow login iec` again",
                                status=401) from None
            raise
