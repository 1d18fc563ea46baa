"""Blood pressure through the real bridge and archive, as an outsider sends it: one cuff reading with
mosquitto_pub becomes its component measurements, hostile cuff readings become rejections with their
reasons, and the console's trend and evidence show systolic and diastolic together."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from alerts.console.trend import cuff_reading, trend
from contracts import topics
from tests.conftest import Stack
from tests.integration.archive_support import ArchiveProcess
from tests.integration.bridge_support import (
    BridgeProcess,
    consume,
    kit_rows,
    mosquitto_login,
    publish,
    reading_topic,
    register,
)


def _cuff(device: str, ago: timedelta, **fields: Any) -> dict[str, Any]:
    reading = {"device": device, "metric": "blood_pressure", "unit": "mmHg",
               "measured_at": (datetime.now(UTC) - ago).isoformat(timespec="milliseconds")}  # fmt: skip
    return reading | fields


def _message(kit: str, seq: int, *readings: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "schema": "vaktrom.kit-reading.v1",
            "kit": kit,
            "seq": seq,
            "sent_at": datetime.now(UTC).isoformat(),
            "readings": list(readings),
        }
    ).encode()


def test_a_cuff_reading_is_stored_as_its_components_and_hostile_ones_are_refused(
    bridge: BridgeProcess, archive: ArchiveProcess, stack: Stack
) -> None:
    """Good cuff readings: systolic, diastolic (and pulse) stored with one measured time; hostile ones
    (crossed pressures, strings, NaN, huge numbers, cuff fields on SpO2) each refused with its reason."""
    row = kit_rows(f"{bridge.name[:20]}B", 1)[0]
    kit, patient = str(row["kit"]), str(row["patient_id"])
    cuff = f"{kit}-BP"
    row["devices"] = [*row["devices"], {"serial": cuff, "kind": "bp_cuff", "model": "VS-BP-7"}]
    register(stack, [row])
    bridge.start()
    archive.start()
    topic = reading_topic(bridge, kit)
    receipts = subprocess.Popen(  # the kit's side: the receipts the bridge sends back
        ["mosquitto_sub", "-h", stack.mqtt_host, "-p", str(stack.mqtt_port), *mosquitto_login(stack),
         "-q", "1", "-t", reading_topic(bridge, kit, "receipts"), "-W", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # subscribed before the first message is published
    good = _message(
        kit, 1,
        _cuff(cuff, timedelta(minutes=30), systolic=186, diastolic=104, pulse=88),
        _cuff(cuff, timedelta(minutes=20), systolic=131, diastolic=79),  # a cuff without pulse
    )  # fmt: skip
    publish(stack, topic, good)
    ago = timedelta(minutes=9)
    spo2 = {"device": f"{kit}-OX", "metric": "spo2", "value": 96, "unit": "%",
            "measured_at": datetime.now(UTC).isoformat(), "systolic": 120}  # fmt: skip
    nan = _message(kit, 8, _cuff(cuff, ago, systolic=120, diastolic=80)).replace(b"120", b"NaN")
    hostile = [
        (_message(kit, 2, _cuff(cuff, ago, systolic=80, diastolic=120, pulse=70)), "inconsistent"),
        (_message(kit, 3, _cuff(cuff, ago, systolic="120", diastolic=80)), "schema"),
        (_message(kit, 4, _cuff(cuff, ago, systolic=1e300, diastolic=80)), "implausible"),
        (_message(kit, 5, _cuff(cuff, ago, diastolic=80, pulse=70)), "missing_value"),
        (_message(kit, 6, _cuff(cuff, ago, value=120, systolic=120, diastolic=80)), "inconsistent"),
        (_message(kit, 7, spo2), "inconsistent"),
        (nan, "malformed"),
    ]
    for payload, _reason in hostile:
        publish(stack, topic, payload)

    out, err = receipts.communicate(timeout=90)
    outcomes = {
        entry["seq"]: entry["readings"] for line in out.splitlines() for entry in json.loads(line)["messages"]
    }
    # every message answered, but the NaN one: not JSON, its seq unreadable (the kit gives up on it)
    assert set(outcomes) == set(range(1, 8)), (out, err)
    assert [len(o["ids"]) for o in outcomes[1]] == [3, 2], "the receipt names every component"
    assert [o["id"] for o in outcomes[1]] == [o["ids"][0] for o in outcomes[1]]
    assert {seq: outcomes[seq][0]["rejected"] for seq in range(2, 8)} == {
        seq: reason for seq, (_p, reason) in enumerate(hostile[:-1], start=2)
    }

    measurements = [v for _k, v, _h in consume(stack, topics.measurement_topic(bridge.prefix), until=5)]
    assert len(measurements) == 5, bridge.tail()
    assert [m["metric"] for m in measurements] == [
        "bp_systolic",
        "bp_diastolic",
        "pulse",
        "bp_systolic",
        "bp_diastolic",
    ]
    assert [m["value"] for m in measurements] == [186.0, 104.0, 88.0, 131.0, 79.0]
    assert len({m["measurement_id"] for m in measurements}) == 5
    assert len({m["panel_id"] for m in measurements[:3]}) == 1
    assert measurements[0]["panel_id"] != measurements[3]["panel_id"]
    assert all(m["unit"] == ("/min" if m["metric"] == "pulse" else "mm[Hg]") for m in measurements)

    # QoS 1 is at least once: a payload redelivered is rejected again under the same rejection id
    records = consume(stack, topics.rejection_topic(bridge.prefix), until=None, idle=3)
    rejections = list({v["rejection_id"]: v for _k, v, _h in records}.values())
    assert sorted(r["reason"] for r in rejections) == sorted(reason for _p, reason in hostile), bridge.tail()
    crossed = next(r for r in rejections if "not below systolic" in r["detail"])
    assert crossed["patient_id"] == patient
    assert "diastolic 120 is not below systolic 80 mm[Hg]" in crossed["detail"]

    archive.wait_stored(stack, kit, 5)
    with psycopg.connect(stack.database_url) as conn:
        first = measurements[0]
        alert = {
            "patient_id": patient,
            "metric": "bp_systolic",
            "opened_at": datetime.now(UTC),
            "last_seen_at": datetime.now(UTC),
            "event": {
                "latest": {"measurement_id": first["measurement_id"], "measured_at": first["measured_at"]},
                "threshold": {"op": ">=", "value": 180.0, "unit": "mm[Hg]"},
            },
        }
        shown = cuff_reading(conn, alert)
        charts = trend(conn, alert)
    assert shown is not None
    assert (shown["systolic"], shown["diastolic"], shown["pulse"]) == (186.0, 104.0, 88.0)
    (chart,) = charts
    assert chart["metric"] == "bp_systolic"
    assert [p[1] for p in chart["points"]] == [186.0, 131.0]
    assert [p[1] for p in chart["companion"]["points"]] == [104.0, 79.0]
    assert [p[0] for p in chart["companion"]["points"]] == [p[0] for p in chart["points"]]
