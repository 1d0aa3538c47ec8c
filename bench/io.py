"""I/O benchmark (not a timed test): MQTT QoS 1 publish rate through mqtt-out against a bare
paho loop, and influx-out points/s with batching against one point per request.

    python bench/io.py [--quick]

Starts its own mosquitto and influxd (Debian packages) on free loopback ports, as the
tests do (``tests/services.py``), and runs the engine on the real clock.  A message counts
when it is acknowledged: PUBACK for MQTT, a 204 for InfluxDB.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from services import Influxd, Mosquitto, _binary  # noqa: E402

from meterflow.flowfile import load_flow  # noqa: E402
from meterflow.runtime import Engine  # noqa: E402


async def run_flow(text: str, node_id: str, n: int, make_msg) -> float:
    """Seconds from the first inject until ``node_id``'s outbox delivered ``n`` messages."""
    spec = load_flow("bench.yaml", text=text)
    if spec.errors:
        raise SystemExit("\n".join(map(str, spec.errors)))
    engine = Engine()
    engine.load(spec)
    await engine.start()
    node = engine.find(node_id)
    broker = engine.find("broker") if "mqtt" in text else None
    while broker is not None and not broker.connected:
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    for i in range(n):
        engine.queue.append((node, make_msg(i)))
    engine._schedule()
    while node.outbox.delivered < n:
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    await engine.stop()
    return elapsed


def bare_paho(port: int, n: int) -> float:
    import paho.mqtt.client as paho

    done = threading.Event()
    acked = 0

    def on_publish(client, userdata, mid, rc, props):
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.max_inflight_messages_set(100)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    for i in range(n):
        c.publish("bench/bare", str(i), qos=1)
    done.wait(60)
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return elapsed


def mqtt_flow(port: int) -> str:
    return f"""meterflow: 1
config:
  - id: broker
    type: mqtt-broker
    host: 127.0.0.1
    port: {port}
nodes:
  - id: out
    type: mqtt-out
    broker: broker
    topic: bench/flow
    qos: 1
"""


def influx_flow(url: str, batch: int) -> str:
    return f"""meterflow: 1
config:
  - id: influx
    type: influxdb
    url: {url}
    version: 1
    database: bench
    precision: ns
nodes:
  - id: out
    type: influx-out
    server: influx
    measurement: IEC_Meter
    batch_size: {batch}
    batch_interval: 0.05s
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer messages")
    args = ap.parse_args()
    n_mqtt = 2000 if args.quick else 10000
    n_influx = 2000 if args.quick else 10000
    n_single = 300 if args.quick else 1000
    tmp = Path(tempfile.mkdtemp(prefix="meterflow-bench-"))
    mosq_bin, influx_bin = _binary("/usr/sbin/mosquitto", "mosquitto"), _binary("/usr/bin/influxd", "influxd")
    rows = []
    if mosq_bin:
        m = Mosquitto(mosq_bin, tmp / "mosquitto")
        m.start()
        try:
            bare = bare_paho(m.port, n_mqtt)
            flow = asyncio.run(run_flow(mqtt_flow(m.port), "out", n_mqtt, lambda i: {"payload": i}))
        finally:
            m.stop()
        rows.append(("MQTT QoS 1, bare paho loop", n_mqtt, bare))
        rows.append(("MQTT QoS 1, mqtt-out (outbox, PUBACK)", n_mqtt, flow))
    else:
        print("mosquitto not installed: MQTT skipped")
    if influx_bin:
        (tmp / "influxd").mkdir()
        db = Influxd(influx_bin, tmp / "influxd")
        db.start()
        try:
            db.create_db("bench")
            t0 = 1_700_000_000_000

            def point(i):
                return {"payload": {"value": i * 0.5, "export": 0.25}, "timestamp": t0 + i}

            batched = asyncio.run(run_flow(influx_flow(db.url, 1000), "out", n_influx, point))
            single = asyncio.run(run_flow(influx_flow(db.url, 1), "out", n_single, point))
        finally:
            db.stop()
        rows.append(("influx-out, batches of 1000", n_influx, batched))
        rows.append(("influx-out, one point per request", n_single, single))
    else:
        print("influxd not installed: InfluxDB skipped")
    print(f"{'case':42} {'messages':>9} {'seconds':>8} {'per second':>11}")
    for name, n, s in rows:
        print(f"{name:42} {n:9d} {s:8.3f} {n / s:11.0f}")


if __name__ == "__main__":
    main()
