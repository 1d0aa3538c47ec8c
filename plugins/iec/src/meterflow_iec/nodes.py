"""IEC (Israel Electric Corporation) nodes: one account, a token refresh, customer, contracts,
devices, consumption and bill. Log in once with ``meterflow login iec``; see flows/iec.yaml::

    config:
      - id: iec
        type: iec-account
        user_id: "123456782"             # the ID number used with `meterflow login iec` (quote it)
        okta_url: https://iec-ext.okta.com
        api_url: https://iecapi.iec.co.il/api
        credential: iec                  # tokens in the credential store (`meterflow creds list`)
        # bp_number / contract_id / meter_serial / meter_code: looked up once when not given
    nodes:
      - {id: refresh, type: iec-refresh, account: iec}          # input: any message
      - {id: customer, type: iec-customer, account: iec}        # payload.bp_number, names
      - {id: contracts, type: iec-contracts, account: iec}      # payload.contracts[].contract_id
      - {id: devices, type: iec-devices, account: iec}          # payload.meter_serial / meter_code
      - id: consumption
        type: iec-consumption
        account: iec
        periods: [today, yesterday, two_days_ago, this_month]
        measurement: IEC_Meter
        wires: {periods: [to_mqtt], points: [to_influx]}
      - {id: bill, type: iec-bill, account: iec}                # payload.total_amount_to_pay, last_invoice

``iec-consumption`` asks RemoteReadingRange for today, yesterday and two days ago at daily
resolution (15-minute rows) and for this month at monthly resolution (daily rows), dates
in Asia/Jerusalem by the engine clock. Output ``periods`` sends one message per period,
``topic`` = the period name, ``payload`` = ``{period, date, resolution, consumption, export,
unit, start_date, end_date, total_import, total_export, meter_serial, intervals: [{start,
consumption, export}]}`` where consumption = ``totalConsumptionForPeriod`` and export =
``totalBackStreamForPeriod``. Output ``points`` sends, per daily period, one message whose
payload is the list of InfluxDB points ``{measurement: IEC_Meter, fields: {value, export},
time}``, one per 15-minute interval at its start in UTC epoch nanoseconds: the Hubitat
app's line protocol ``IEC_Meter value=<consumption>,export=<backStream> <ns>`` (write them
with ``influx-out`` and ``time_unit: ns``). The month has no points: its daily rows would
land on the same timestamps as the 15-minute rows.

Errors reach catch nodes with a kind: ``auth`` (login expired: "IEC login expired: run
`meterflow login iec` again", raised once per message and without calling Okta again until
a new login is stored), ``http`` (IEC's ``{"Error": ..., "Code": ...}`` text, e.g. a contract
that is not yours, with ``status``), ``parse`` (an answer not shaped as expected: the
period is skipped whole, never a partial point), ``connect``/``timeout``, ``credentials``
(the store cannot be read), and ``nodata``: IEC has no readings for a period yet (an empty
reading list; common for today, IEC lags up to two days). A period with an error produces
neither a periods message nor points; the other periods still go out.

Tokens: every call uses the id_token as Bearer; it is refreshed when it expires within a
minute, on a 401 (once, then the call is retried once), and by ``iec-refresh`` on a
schedule. Each refresh stores Okta's rotated refresh token.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from typing import Any

from meterflow.errors import AuthError, FlowError, ParseError
from meterflow.message import clone
from meterflow.node import Node
from meterflow.schema import Field, parse_duration

from .const import API_URL, DAILY, DEFAULT_CREDENTIAL, LOGIN_EXPIRED, MONTHLY, OKTA_URL, TZ

PERIODS = ("today", "yesterday", "two_days_ago", "this_month")
DAYS_BACK = {"today": 0, "yesterday": 1, "two_days_ago": 2, "this_month": 0}


def same_id(a: Any, b: Any) -> bool:
    """IEC ids are zero-padded strings in most answers and ints in invoices."""
    sa, sb = str(a).strip().lstrip("0"), str(b).strip().lstrip("0")
    return sa == sb and str(a).strip() != ""


def _id_text(value: Any, width: int) -> str | None:
    """A configured id as IEC writes it: YAML numbers lose leading zeros, so pad them back."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).zfill(width)
    return str(value).strip()


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParseError(f"{what}: expected a number, got {value!r}")
    return float(value)


def _iso_date(value: Any) -> str | None:
    """"2026-01-16T00:00:00" or "16/01/2026" -> "2026-01-16"; other text as it is."""
    if value in (None, ""):
        return None
    text = str(value)
    for fmt in ("%d/%m/%Y", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text[:19] if "T" in fmt else text, fmt).date().isoformat()
        except ValueError:
            continue
    return text


def epoch_ns(stamp: str) -> int:
    """Interval start -> UTC epoch ns. IEC writes UTC with an offset; old payloads were local
    and naive (Asia/Jerusalem)."""
    try:
        t = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise ParseError(f"IEC readings: invalid interval time {stamp!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=TZ)
    return calendar.timegm(t.utctimetuple()) * 1_000_000_000 + t.microsecond * 1000


class NoData(FlowError):
    """IEC has no readings for the period (yet)."""

    kind = "nodata"


# ---- the account ------------------------------------------------------------------------------
class IECAccount(Node):
    type = "iec-account"
    summary = "An IEC login (tokens in the credential store) with its Okta/API URLs and ids"
    is_config = True
    schema = {
        "user_id": Field("str|int", "the ID number used with `meterflow login iec` (quote it to keep leading "
                                    "zeros); a stored login for another user is reported"),
        "okta_url": Field("str", "Okta base URL (the sandbox: http://127.0.0.1:8765/okta)", default=OKTA_URL),
        "api_url": Field("str", "IEC API base URL (the sandbox: http://127.0.0.1:8765/api)", default=API_URL),
        "credential": Field("str", "credential name holding the tokens (`meterflow login iec --credential`)",
                            default=DEFAULT_CREDENTIAL),
        "store": Field("str", "credential store file (default: $METERFLOW_CREDENTIALS or "
                              "~/.config/meterflow/credentials.json)"),
        "bp_number": Field("str|int", "BP (customer) number; default: looked up once from /customer"),
        "contract_id": Field("str|int", "contract id (12 digits); default: the BP's first smart-meter contract"),
        "meter_serial": Field("str|int", "meter serial (deviceNumber); default: the contract's first active device"),
        "meter_code": Field("str|int", "meter code (deviceCode); default: with the serial"),
        "timeout": Field("duration", "per HTTP request", default="30s"),
    }

    @classmethod
    def check(cls, config: dict) -> list:
        problems = []
        for key in ("okta_url", "api_url"):
            url = config.get(key)
            if isinstance(url, str) and not url.startswith(("http://", "https://")):
                problems.append(((key,), f"{key} must start with http:// or https://, got {url!r}"))
        cred = config.get("credential")
        if isinstance(cred, str):
            from meterflow.credentials import check_name
            from meterflow.errors import CredentialsError

            try:
                check_name("credential name", cred)
            except CredentialsError as e:
                problems.append((("credential",), str(e)))
        return problems

    def setup(self) -> None:
        c = self.config
        self.user_id = _id_text(c.get("user_id"), 9)  # Israeli ID numbers have 9 digits
        self.bp = _id_text(c.get("bp_number"), 10)
        self.contract = _id_text(c.get("contract_id"), 12)
        self.serial = _id_text(c.get("meter_serial"), 0)
        self.code = _id_text(c.get("meter_code"), 0)
        self.last_invoice_date: date | None = None  # set by iec-bill; drives lastInvoiceDate
        self.client = self.session = self.keeper = None

    async def start(self) -> None:
        from .client import IECClient, IECSession
        from .tokens import TokenStore

        c = self.config
        self.client = IECClient(c["okta_url"], c["api_url"], timeout=parse_duration(c["timeout"]),
                                now=self.clock.time)
        self.keeper = TokenStore(c["credential"], path=c.get("store"))
        self.session = IECSession(self.client, self.keeper, now=self.clock.time)
        try:  # only a warning now: the nodes report login problems to catch nodes when they run
            info = self.keeper.info()
        except FlowError as e:
            self.warn(f"cannot read the IEC login: {e}")
            return
        if not info:
            self.warn(f"no IEC login in credential {c['credential']!r} yet: run `meterflow login iec`")
        elif self.user_id and info.get("user_id") and info["user_id"] != self.user_id:
            self.warn(f"credential {c['credential']!r} holds a login for another user id than {self.user_id}")
        elif info.get("okta_url") and info["okta_url"].rstrip("/") != c["okta_url"].rstrip("/"):
            self.warn(f"credential {c['credential']!r} was made with {info['okta_url']}, this account uses "
                      f"{c['okta_url']}: run `meterflow login iec --okta-url {c['okta_url']}`")

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def call(self, method: str, *args: Any, **kw: Any) -> Any:
        """``IECClient.<method>(id_token, *args, **kw)`` under the session's refresh rules."""
        fn = getattr(self.client, method)
        return await self.session.call(lambda token: fn(token, *args, **kw))

    # Ids, looked up once when the config does not give them.
    async def bp_number(self) -> str:
        if self.bp is None:
            customer = await self.call("customer")
            if not customer.get("bpNumber"):
                raise ParseError("IEC customer: no bpNumber in the answer")
            self.bp = str(customer["bpNumber"])
        return self.bp

    async def contract_id(self) -> str:
        if self.contract is None:
            data = await self.call("contracts", await self.bp_number())
            contracts = [c for c in data.get("contracts") or [] if isinstance(c, dict) and c.get("contractId")]
            if not contracts:
                raise ParseError(f"IEC contracts: BP {self.bp} has no contracts")
            contracts.sort(key=lambda c: not c.get("smartMeter"))
            self.contract = str(contracts[0]["contractId"])
        return self.contract

    async def meter(self) -> tuple[str, str]:
        if self.serial is None or self.code is None:
            devices = await self.call("devices", await self.contract_id())
            devices = [d for d in devices if isinstance(d, dict) and d.get("deviceNumber")]
            if self.serial is not None:
                devices = [d for d in devices if same_id(d["deviceNumber"], self.serial)] or devices
            if not devices:
                raise ParseError(f"IEC devices: contract {self.contract} has no meter")
            devices.sort(key=lambda d: d.get("isActive") is False)
            self.serial = self.serial or str(devices[0]["deviceNumber"])
            self.code = self.code or str(devices[0].get("deviceCode") or "")
        return self.serial, self.code  # type: ignore[return-value]

    def today(self) -> date:
        return datetime.fromtimestamp(self.clock.time(), TZ).date()


ACCOUNT = Field("ref", "the iec-account config node", ref="iec-account", required=True)


class _IECNode(Node):
    """Shared: the account reference, status, and errors left to catch nodes."""

    schema = {"account": ACCOUNT}


    def setup(self) -> None:
        ref = self.config["account"]
        try:
            self.account: IECAccount = self.config_node(ref)  # type: ignore[assignment]
        except AttributeError:  # a core whose Engine has no config_nodes table yet
            self.account = self.flow.engine.find(ref)  # type: ignore[assignment]

    async def on_input(self, msg: dict) -> Any:
        try:
            out = await self.fetch(msg)
        except AuthError as e:
            self.status("red", "ring", "login expired" if str(e) == LOGIN_EXPIRED else "auth failed")
            raise
        except FlowError as e:
            self.status("red", "ring", f"{e.kind} error")
            raise
        self.status("green", "dot", f"ok {datetime.fromtimestamp(self.clock.time(), TZ):%H:%M}")
        return out

    async def fetch(self, msg: dict) -> Any:
        raise NotImplementedError


class IECRefresh(_IECNode):
    type = "iec-refresh"
    summary = "Refresh the IEC login's tokens now (schedule it every 45 minutes)"

    async def fetch(self, msg: dict) -> dict:
        tokens = await self.account.session.refresh()
        now = self.clock.time()
        msg["payload"] = {"expires_at": datetime.fromtimestamp(tokens.expires_at, TZ).isoformat(),
                          "expires_in": round(tokens.expires_at - now),
                          "refreshes": self.account.session.refreshes}
        return msg


class IECCustomer(_IECNode):
    type = "iec-customer"
    summary = "The IEC customer: BP number, name, contact and accounts"

    async def fetch(self, msg: dict) -> dict:
        c = await self.account.call("customer")
        if not c.get("bpNumber"):
            raise ParseError("IEC customer: no bpNumber in the answer")
        self.account.bp = self.account.bp or str(c["bpNumber"])
        msg["payload"] = {
            "bp_number": str(c["bpNumber"]), "first_name": c.get("firstName"), "last_name": c.get("lastName"),
            "id_number": c.get("idNumber"), "email": c.get("email"), "mobile_phone": c.get("mobilePhone"),
            "accounts": [{"bp_number": a.get("bpNumber"), "contract_id": a.get("mainContractId"),
                          "active": a.get("isActiveAccount")} for a in c.get("accounts") or [] if isinstance(a, dict)],
        }
        return msg


class IECContracts(_IECNode):
    type = "iec-contracts"
    summary = "The IEC contracts of the account's BP number (ids, debt, smart meter)"

    async def fetch(self, msg: dict) -> dict:
        bp = await self.account.bp_number()
        data = await self.account.call("contracts", bp)
        contracts = [c for c in data.get("contracts") or [] if isinstance(c, dict)]
        msg["payload"] = {
            "bp_number": bp, "total_to_pay": data.get("totalToPay"), "count": len(contracts),
            "contracts": [{"contract_id": str(c.get("contractId")), "address": c.get("address"),
                           "total_debt": c.get("totalDebt"), "due_date": _iso_date(c.get("dueDate")),
                           "smart_meter": c.get("smartMeter"), "private_producer": c.get("fromPativteProducer"),
                           "status": c.get("status"), "domestic": c.get("isDomestic")} for c in contracts],
        }
        return msg


class IECDevices(_IECNode):
    type = "iec-devices"
    summary = "The meters of the account's contract (serial = deviceNumber, code = deviceCode)"

    async def fetch(self, msg: dict) -> dict:
        contract = await self.account.contract_id()
        devices = [d for d in await self.account.call("devices", contract) if isinstance(d, dict)]
        rows = [{"meter_serial": str(d.get("deviceNumber")), "meter_code": str(d.get("deviceCode")),
                 "active": d.get("isActive"), "device_type": d.get("deviceType")} for d in devices]
        if not rows:
            raise ParseError(f"IEC devices: contract {contract} has no meter")
        first = next((r for r in rows if r["active"] is not False), rows[0])
        msg["payload"] = {"contract_id": contract, "meter_serial": first["meter_serial"],
                          "meter_code": first["meter_code"], "devices": rows}
        return msg


# ---- consumption ------------------------------------------------------------------------------
def parse_reading(data: dict, serial: str) -> dict:
    """The useful part of a RemoteReadingRange answer, checked whole (B.3): import, export and
    the rows. Raises ParseError for anything off, so no partial point is ever written."""
    meters = data.get("meterList")
    if isinstance(meters, list) and meters:
        ok = [m for m in meters if isinstance(m, dict)]
        m = next((x for x in ok if same_id(x.get("meterSerial", ""), serial)), ok[0] if ok else None)
        if m is None:
            raise ParseError("IEC readings: meterList holds no meter")
        rows_raw, legacy = m.get("periodConsumptions"), False
    elif "totalConsumptionForPeriod" in data:  # answers before Feb 2026: top level, data[]
        m, rows_raw, legacy = data, data.get("data"), True
    else:
        raise ParseError(f"IEC readings: no meterList in the answer (keys: {sorted(data)})")
    if rows_raw is None:
        rows_raw = []
    if not isinstance(rows_raw, list):
        raise ParseError(f"IEC readings: the interval list is {type(rows_raw).__name__}, not a list")
    consumption = _number(m.get("totalConsumptionForPeriod"), "IEC readings: totalConsumptionForPeriod")
    export = None if legacy else _number(m.get("totalBackStreamForPeriod"), "IEC readings: totalBackStreamForPeriod")
    rows = []
    for i, r in enumerate(rows_raw):
        if not isinstance(r, dict):
            raise ParseError(f"IEC readings: row {i} is not an object")
        if legacy:
            stamp, c, e = r.get("date"), r.get("value"), None
        else:
            stamp, c, e = r.get("interval"), r.get("consumption"), r.get("backStream")
        if not stamp:
            raise ParseError(f"IEC readings: row {i} has no interval time")
        ns = epoch_ns(stamp)
        c = _number(c, f"IEC readings: row {i} ({stamp}) consumption")
        e = None if legacy else _number(e, f"IEC readings: row {i} ({stamp}) backStream")
        start = datetime.fromtimestamp(ns // 1_000_000_000, UTC).isoformat() if legacy else str(stamp)
        rows.append({"start": start, "time": ns, "consumption": c, "export": e})
    return {"consumption": consumption, "export": export, "rows": rows,
            "start_date": m.get("startDate") or m.get("fromDate"), "end_date": m.get("endDate") or m.get("toDate"),
            "total_import": m.get("totalImport"), "total_export": m.get("totalExport"),
            "meter_serial": str(m.get("meterSerial") or serial)}


class IECConsumption(_IECNode):
    type = "iec-consumption"
    summary = "IEC consumption and export: today, yesterday, two days ago (15-min) and this month, plus Influx points"
    outputs = 2
    schema = {
        "account": ACCOUNT,
        "periods": Field("list", "which periods to read, in this order", item=Field("str", choices=PERIODS),
                         default=list(PERIODS)),
        "measurement": Field("str", "measurement of the points", default="IEC_Meter"),
        "points": Field("bool", "send InfluxDB points for the daily periods on output 'points'", default=True),
    }

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        return ["periods", "points"]

    @classmethod
    def check(cls, config: dict) -> list:
        periods = config.get("periods")
        if isinstance(periods, list):
            if not periods:
                return [(("periods",), "list at least one period: " + ", ".join(PERIODS))]
            for i, p in enumerate(periods):
                if periods.index(p) != i:
                    return [(("periods", i), f"period {p!r} is listed twice")]
        return []

    async def fetch(self, msg: dict) -> list:
        account = self.account
        contract = await account.contract_id()
        serial, code = await account.meter()
        today = account.today()
        period_msgs, point_msgs = [], []
        for period in self.config["periods"]:
            day = today - timedelta(days=DAYS_BACK[period])
            monthly = period == "this_month"
            try:
                data = await account.call("remote_reading", contract, meter_serial=serial, meter_code=code,
                                          from_date=day, resolution=MONTHLY if monthly else DAILY,
                                          last_invoice_date=account.last_invoice_date)
                reading = parse_reading(data, serial)
                if not reading["rows"]:
                    what = f"{today:%B %Y}" if monthly else day.isoformat()
                    raise NoData(f"IEC has no readings for {period.replace('_', ' ')} ({what}) yet; nothing sent",
                                 period=period, date=day.isoformat())
            except AuthError:
                raise  # the login is the problem, not this period: one error for the message
            except FlowError as e:
                if e.kind in ("connect", "timeout"):
                    raise
                failed = clone(msg)
                failed["topic"] = period
                self.error(e, failed)
                continue
            payload = {"period": period, "date": day.isoformat(), "resolution": "monthly" if monthly else "daily",
                       "consumption": reading["consumption"], "export": reading["export"], "unit": "kWh",
                       "start_date": reading["start_date"], "end_date": reading["end_date"],
                       "total_import": reading["total_import"], "total_export": reading["total_export"],
                       "meter_serial": reading["meter_serial"],
                       "intervals": [{"start": r["start"], "consumption": r["consumption"], "export": r["export"]}
                                     for r in reading["rows"]]}
            out = clone(msg)
            out["topic"], out["payload"] = period, payload
            period_msgs.append(out)
            if self.config["points"] and not monthly:
                points = []
                for r in reading["rows"]:
                    fields = {"value": r["consumption"]}
                    if r["export"] is not None:
                        fields["export"] = r["export"]
                    points.append({"measurement": self.config["measurement"], "fields": fields, "time": r["time"]})
                pm = clone(msg)
                pm["topic"], pm["payload"] = period, points
                point_msgs.append(pm)
        return [period_msgs or None, point_msgs or None]


# ---- bill -----------------------------------------------------------------------------------------
def _invoice(inv: dict, contract: str) -> dict:
    number = inv.get("contractNumber")
    return {
        "from_date": _iso_date(inv.get("fromDate")), "to_date": _iso_date(inv.get("toDate")),
        "amount_origin": _number(inv.get("amountOrigin"), "IEC bills: amountOrigin"),
        "amount_to_pay": _number(inv.get("amountToPay"), "IEC bills: amountToPay"),
        "amount_paid": _number(inv.get("amountPaid") or 0, "IEC bills: amountPaid"),
        "days_period": inv.get("daysPeriod"), "last_date": _iso_date(inv.get("lastDate")),
        "payment_status": inv.get("invoicePaymentStatus"), "invoice_id": inv.get("invoiceId"),
        # Invoices carry the contract as an int: give it back as the zero-padded id.
        "contract_id": contract if number is None or same_id(number, contract) else str(number),
    }


class IECBill(_IECNode):
    type = "iec-bill"
    summary = "The IEC bill: total to pay, invoices to pay, due date and the last invoice's fields"

    async def fetch(self, msg: dict) -> dict:
        account = self.account
        contract = await account.contract_id()
        bp = await account.bp_number()
        data = await account.call("electric_bills", contract, bp)
        invoices = [_invoice(i, contract) for i in data.get("invoices") or [] if isinstance(i, dict)]
        last = invoices[0] if invoices else None  # newest first
        if last and last["to_date"]:
            try:  # what IEC's website sends as lastInvoiceDate: the day after the last invoice
                account.last_invoice_date = date.fromisoformat(last["to_date"]) + timedelta(days=1)
            except ValueError:
                pass
        msg["payload"] = {
            "total_amount_to_pay": _number(data.get("totalAmountToPay") or 0, "IEC bills: totalAmountToPay"),
            "total_invoices_to_pay": data.get("totalInvoicesToPay") or 0,
            "last_date_to_pay": _iso_date(data.get("lastDateToPay")),
            "contract_id": contract, "bp_number": bp, "last_invoice": last, "invoices": invoices,
        }
        return msg


NODE_TYPES = [IECAccount, IECRefresh, IECCustomer, IECContracts, IECDevices, IECConsumption, IECBill]
