"""Receive N QoS-1 messages with paho-mqtt and nothing else (PUBACK at once, no work), as the bridge's
MQTT client would if the bridge did nothing: the Python MQTT client's own share of a message.

    python bench/_paho_sink.py HOST PORT USER PASSWORD TOPIC_FILTER N

Prints "ready" once subscribed, then one JSON line: messages, first and last arrival (epoch
seconds), and the CPU this process spent from the first message to the last.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sim_publish import cpu_seconds  # bench/ is this script's directory


def main() -> int:
    host, port, user, password, topic, wanted = sys.argv[1:7]
    n = int(wanted)
    seen: dict[str, Any] = {"messages": 0}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{time.time_ns()}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(user, password)

    def on_message(c: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
        seen["messages"] += 1
        if seen["messages"] == 1:
            seen["first"], seen["cpu_first"] = time.time(), cpu_seconds(os.getpid())
        if seen["messages"] >= n:
            seen["last"], seen["cpu"] = time.time(), cpu_seconds(os.getpid()) - seen["cpu_first"]
            c.disconnect()

    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: print("ready", flush=True)
    client.on_message = on_message
    client.connect(host, int(port))
    client.loop_forever()
    print(json.dumps({k: seen[k] for k in ("messages", "first", "last", "cpu")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
