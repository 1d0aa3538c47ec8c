"""``meterflow login iec``: the one interactive step. Afterwards flows run unattended.

::

    meterflow login iec                         # production IEC; asks for the ID number and the SMS code
    meterflow sandbox iec &                     # or try it locally: the code is in the sandbox's log
    meterflow login iec --sandbox --user-id 123456782

It asks for the user id (the ID number IEC knows you by), has Okta send the SMS code,
asks for the code (three tries), completes the PKCE authorization, stores the tokens in
the credential store (credential ``iec`` unless ``--credential``) and checks them with
one IEC API call. ``IEC_OKTA_URL`` / ``IEC_API_URL`` set the base URLs like the flow does.
Exit codes: 0 logged in, 1 failed (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable

from meterflow.errors import AuthError, FlowError

from .const import API_URL, DEFAULT_CREDENTIAL, OKTA_URL, SANDBOX_API_URL, SANDBOX_OKTA_URL

ATTEMPTS = 3


async def login(user_id: str | None, keeper, *, okta_url: str = OKTA_URL, api_url: str = API_URL,
                ask: Callable[[str], str] = input, say: Callable[[str], None] = print,
                attempts: int = ATTEMPTS, now: Callable[[], float] = time.time, transport=None):
    """Log in interactively and store the tokens with ``keeper.save``; returns the Tokens.

    ``ask(prompt) -> str`` and ``say(text)`` do the talking (tests inject their own).
    Raises AuthError for a wrong code ``attempts`` times or an expired session.
    """
    from .client import IECClient

    if not user_id:
        user_id = ask("IEC user id (your ID number): ").strip()
    if not user_id:
        raise AuthError("no user id given")
    async with IECClient(okta_url, api_url, now=now, transport=transport) as client:
        challenge = await client.request_otp(user_id)
        say(f"IEC sent a code to {challenge.destination} (an SMS to your phone).")
        for attempt in range(1, attempts + 1):
            code = ask("Code from the SMS: ").strip()
            try:
                tokens = await client.complete_login(challenge, code)
                break
            except AuthError as e:
                if e.details.get("code") != "E0000068" and not str(e).startswith("wrong SMS code"):
                    raise
                if attempt == attempts:
                    raise AuthError(f"{e} ({attempts} wrong codes; run `meterflow login iec` again)",
                                    **e.details) from None
                say(f"{e}")
        keeper.save(tokens, user_id=user_id, okta_url=okta_url)
        try:
            customer = await client.customer(tokens.id_token)
        except FlowError as e:
            say(f"Logged in; tokens stored in credential {keeper.name!r}, but the IEC API check failed: {e}")
        else:
            who = " ".join(str(customer.get(k) or "") for k in ("firstName", "lastName")).strip() or "?"
            say(f"Logged in as {who} (BP {customer.get('bpNumber', '?')}); tokens stored in credential "
                f"{keeper.name!r}.")
    return tokens


def add_login_parser(services) -> argparse.ArgumentParser:
    p = services.add_parser("iec", help="log in to Israel Electric Corporation with an SMS code",
                            description="Log in to IEC once with your ID number and an SMS code; the tokens "
                                        "go to the credential store and flows refresh them from then on.")
    p.add_argument("--user-id", help="ID number (asked when missing)")
    p.add_argument("--okta-url", default=None,
                   help=f"Okta base URL (default: $IEC_OKTA_URL or {OKTA_URL})")
    p.add_argument("--api-url", default=None, help=f"IEC API base URL (default: $IEC_API_URL or {API_URL})")
    p.add_argument("--sandbox", action="store_true",
                   help=f"use the local sandbox ({SANDBOX_OKTA_URL}, {SANDBOX_API_URL})")
    p.add_argument("--credential", default=DEFAULT_CREDENTIAL,
                   help="credential name for the tokens (default %(default)s; the iec-account's 'credential')")
    p.add_argument("--store", metavar="FILE", help="credential store file (default: $METERFLOW_CREDENTIALS "
                                                   "or ~/.config/meterflow/credentials.json)")
    p.set_defaults(func=run_login)
    return p


def _urls(args) -> tuple[str, str]:
    okta = args.okta_url or (SANDBOX_OKTA_URL if args.sandbox else os.environ.get("IEC_OKTA_URL") or OKTA_URL)
    api = args.api_url or (SANDBOX_API_URL if args.sandbox else os.environ.get("IEC_API_URL") or API_URL)
    return okta, api


def run_login(args) -> int:
    from .tokens import TokenStore

    okta_url, api_url = _urls(args)

    def ask(prompt: str) -> str:
        try:
            return input(prompt)
        except EOFError:
            raise AuthError("no answer (end of input)") from None

    try:
        keeper = TokenStore(args.credential, path=args.store)
        if okta_url != OKTA_URL:
            print(f"Using Okta at {okta_url} and the IEC API at {api_url}.")
        asyncio.run(login(args.user_id, keeper, okta_url=okta_url, api_url=api_url, ask=ask))
    except FlowError as e:
        print(f"meterflow login iec: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
