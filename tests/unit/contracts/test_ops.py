"""The operations endpoint every stage serves: /metrics, /health, and a clear error for a taken port."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from runtime.ops import listen, serve
from runtime.settings import ConfigError


def test_metrics_and_health_are_served_and_an_unhealthy_stage_answers_503() -> None:
    """/health is 200 with status ok, 200 with status degraded while late, 503 when not ok."""
    state = {"ok": True}
    server = serve(
        host="127.0.0.1", port=_free_port(), port_env="VAKTROM_X_PORT",
        exposition=lambda: b"vaktrom_x_total 3\\n", health=lambda: dict(state),
    )  # fmt: skip
    assert server is not None
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:  # noqa: S310 (local http)
            assert response.read() == b"vaktrom_x_total 3\\n"
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:  # noqa: S310 (local http)
            assert json.loads(response.read()) == {"ok": True, "status": "ok"}
        state["delays"] = ["the oldest reading waiting here is 45 s old"]  # type: ignore[assignment]
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:  # noqa: S310 (local http)
            assert json.loads(response.read())["status"] == "degraded"  # still working: 200
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/health", timeout=5)  # noqa: S310 (local http)
        assert refused.value.code == 503
        refused.value.close()
    finally:
        server.stop()


def test_port_zero_turns_it_off() -> None:
    assert serve(host="127.0.0.1", port=0, port_env="V", exposition=bytes, health=dict) is None


def test_a_taken_port_is_a_configuration_error_naming_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ConfigError, match=f"cannot serve /metrics on 127.0.0.1:{port}.*set VAKTROM_X_PORT"
        ):
            serve(host="127.0.0.1", port=port, port_env="VAKTROM_X_PORT", exposition=bytes, health=dict)


def test_a_stage_s_http_port_taken_is_a_configuration_error_naming_the_variable() -> None:
    """The console's and the FHIR gateway's listening socket (`listen`), as the ops endpoint's."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve the console on 127.0.0.1:{port}.*set VAKTROM_Y"):
            listen("127.0.0.1", port, what="the console", port_env="VAKTROM_Y")
    with listen("127.0.0.1", 0, what="the console", port_env="VAKTROM_Y") as bound:
        assert bound.getsockname()[1] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
