"""IEC tokens in meterflow's encrypted credential store (:mod:`meterflow.credentials`).

One credential (default name ``iec``) holds the fields::

    refresh_token   Okta's rotating refresh token (the one secret that matters)
    id_token        the Bearer for the IEC API
    access_token    kept because Okta issues it; IEC does not accept it
    expires_at      epoch seconds when id_token expires (text)
    user_id         the ID number the login was made for (text)
    okta_url        the Okta base URL that issued the tokens (sandbox or production)

``meterflow creds list`` shows them, ``meterflow creds delete iec`` forgets the login.
"""

from __future__ import annotations

import os
from typing import Any

from meterflow.errors import CredentialsError

from .client import Tokens
from .const import DEFAULT_CREDENTIAL

# Saved together in one atomic write (CredentialStore.set_many): a crash never leaves a new
# refresh token next to an old id token, or an old refresh token, already rotated away, that
# would cost a new login.
TOKEN_FIELDS = ("refresh_token", "id_token", "access_token", "expires_at")


class TokenStore:
    """Load and save one login's :class:`~meterflow_iec.client.Tokens` under a credential name.

    ``store`` is a :class:`meterflow.credentials.CredentialStore`; by default the user's store
    (``METERFLOW_CREDENTIALS`` / ``METERFLOW_KEY`` apply); ``path`` picks another store file.
    """

    def __init__(self, name: str = DEFAULT_CREDENTIAL, store: Any = None, *,
                 path: str | os.PathLike | None = None) -> None:
        from meterflow.credentials import CredentialStore, check_name

        self.name = check_name("credential name", name)
        self.store = store if store is not None else CredentialStore(path)

    def exists(self) -> bool:
        return self.name in self.store.names()

    def load(self) -> Tokens | None:
        """The stored tokens, or None when there is no such credential (never logged in).
        A store that cannot be read (no key, wrong key) raises CredentialsError."""
        if not self.exists():
            return None
        fields = self.store.fields(self.name)
        missing = [f for f in ("refresh_token", "id_token") if not fields.get(f)]
        if missing:
            raise CredentialsError(f"credential {self.name!r} has no {', '.join(missing)}: "
                                   "run `meterflow login iec` again")
        try:
            expires_at = float(fields.get("expires_at") or 0)
        except ValueError:
            expires_at = 0.0  # unknown: the first call refreshes
        return Tokens(fields["id_token"], fields.get("access_token", ""), fields["refresh_token"], expires_at)

    def info(self) -> dict[str, str]:
        """The non-token fields (user_id, okta_url) of the stored login, {} when there is none."""
        if not self.exists():
            return {}
        fields = self.store.fields(self.name)
        return {k: v for k, v in fields.items() if k not in TOKEN_FIELDS}

    def save(self, tokens: Tokens, **extra: str) -> None:
        values = {"refresh_token": tokens.refresh_token, "id_token": tokens.id_token,
                  "access_token": tokens.access_token, "expires_at": f"{tokens.expires_at:.0f}", **extra}
        # One write: a crash never leaves a new refresh token next to an old id token.
        self.store.set_many((self.name, field, str(values[field]))
                            for field in (*TOKEN_FIELDS, *extra) if values[field])  # no empty values


class MemoryTokenStore:
    """A TokenStore without a file (tests, or embedding with your own persistence)."""

    def __init__(self, tokens: Tokens | None = None, name: str = DEFAULT_CREDENTIAL) -> None:
        self.name = name
        self.tokens = tokens
        self.saved = 0

    def load(self) -> Tokens | None:
        return self.tokens

    def save(self, tokens: Tokens, **extra: str) -> None:
        self.tokens = tokens
        self.saved += 1
