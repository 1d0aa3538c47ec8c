"""IEC constants (shared/reference/meter-apis.md B.1). No imports beyond the stdlib: the node
schemas use these, and ``meterflow run`` must start without loading httpx."""

from __future__ import annotations

from zoneinfo import ZoneInfo

OKTA_URL = "https://iec-ext.okta.com"
API_URL = "https://iecapi.iec.co.il/api"
#: What the flow and ``meterflow login iec --sandbox`` use: ``meterflow sandbox iec``'s defaults.
SANDBOX_OKTA_URL = "http://127.0.0.1:8765/okta"
SANDBOX_API_URL = "http://127.0.0.1:8765/api"

CLIENT_ID = "0oaqf6zr7yEcQZqqt2p7"  # IEC's mobile app: a public client, so PKCE
REDIRECT_URI = "com.iecrn:/"
SCOPE = "openid email profile offline_access"

TZ = ZoneInfo("Asia/Jerusalem")

#: RemoteReadingRange ``resolution``.
DAILY, WEEKLY, MONTHLY = 1, 2, 3

#: The one message every "log in again" failure carries, so alerts can match on it.
LOGIN_EXPIRED = "IEC login expired: run `meterflow login iec` again"
DEFAULT_CREDENTIAL = "iec"
