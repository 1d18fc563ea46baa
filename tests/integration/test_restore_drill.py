"""The restore drill (docs/backup-restore.md): the database lost under load and restored from a base
backup and the archived WAL, and a fresh state folder restored from the same backup.

The database part runs as the crash matrix's `postgres-restore` scenario (tests/restore_drill.py), so
it is checked exactly as the other faults are: every reading the kits had a receipt for stored once,
every alert episode there once with the right count.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import sys
import threading
import uuid
from datetime import date
from pathlib import Path

import paho.mqtt.client as mqtt_client
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from registry.identity import Identity, Sealer
from tests.conftest import REPO, STATE, Stack
from tests.crash_matrix import markdown, run
from tests.integration.stage_support import broker_login, free_port
from tests.restore_drill import FIGURES, stack_postgres

sys.path.insert(0, str(REPO / "infra"))
import backup
from services import Mosquitto, Postgres


@pytest.mark.timeout(1200)  # a load run with a backup, a loss, a restore and a replay, then the drain
def test_a_database_restored_from_backup_and_wal_loses_and_duplicates_nothing(
    stack: Stack, kafka_bootstrap: str, database_url: str, mqtt: object, artefacts: Path
) -> None:
    """Readings stored after the last archived WAL segment are gone from the restored database; the
    rewound archive reads them again from Kafka, so in the end nothing confirmed is missing or doubled."""
    rate, seconds, kits = 100, 45.0, 2000
    results = run(stack, ["postgres-restore"], rate=rate, seconds=seconds, kits=kits, work=artefacts)
    table = markdown(results, rate=rate, seconds=seconds, kits=kits)
    (artefacts / "restore_drill.md").write_text(table + "\n" + json.dumps(FIGURES) + "\n")
    print(table, FIGURES)
    (r,) = results
    # the drill did what it says: the WAL replay carried rows past the base backup, and rows written
    # after the last archived segment were missing until the archive read them again
    assert FIGURES["rows_restored"] >= FIGURES["rows_archived"] > FIGURES["rows_at_backup"], FIGURES
    assert FIGURES["rows_restored"] < FIGURES["rows_at_loss"], FIGURES
    assert r.readings == r.confirmed > 0, table
    assert (r.lost, r.duplicated, r.held) == (0, 0, 0), table
    assert r.episodes_expected > 0, table
    assert (r.episodes_missing, r.episodes_unexpected, r.episodes_duplicated) == (0, 0, 0), table
    assert r.episode_count_mismatches == 0, table


def _signs_in(host: str, port: int, username: str, password: str, client_id: str) -> bool:
    client = mqtt_client.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.username_pw_set(username, password)
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        accepted.append(not getattr(reason, "is_failure", True))
        answered.set()

    client.on_connect = on_connect
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        answered.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return accepted == [True]


@pytest.mark.timeout(300)
def test_a_fresh_state_folder_restored_from_a_set_lets_kits_sign_in_and_opens_identities(
    stack: Stack, mqtt: object
) -> None:
    """The broker's identities, its CA and the identity key come back from a set into an empty state
    folder: a broker started there lets an account made before the backup sign in (and no one with a
    wrong password), kits' pinned CA still verifies it, and the restored key opens an identity sealed
    with the live one."""
    name = f"rd{uuid.uuid4().hex[:8]}"
    password = broker_login(stack, f"{name}-kit", role="load", client_id=f"{name}-kit")
    live_key = stack.values["VAKTROM_IDENTITY_KEY"]
    sealed, key_id = Sealer.from_key(live_key).seal(
        f"{name}P1", Identity(name="Test", birth_date=date(1950, 1, 2))
    )

    _settings, pg = stack_postgres()
    set_dir = backup.base_backup(pg, groups=[], kafka=None, keep=2)
    fresh = STATE / "restore-drill" / name
    to = Postgres(state=fresh, host=pg.host, port=free_port(), database="vaktrom", role="vaktrom",
                  test_database="vaktrom_test")  # fmt: skip
    backup.restore(set_dir, to, source_wal=pg.wal_archive, only="files")
    assert oct((fresh / "identity.key").stat().st_mode & 0o777) == "0o600"
    restored_key = Sealer.from_key((fresh / "identity.key").read_text().strip())
    assert oct((fresh / "mosquitto" / "data" / "dynamic-security.json").stat().st_mode & 0o777) == "0o600"

    broker = Mosquitto(state=fresh, host=stack.mqtt_host, port=free_port(), tls_port=free_port(),
                       mtls_port=free_port())  # fmt: skip
    try:
        broker.start(timeout=60)
        assert _signs_in(broker.host, broker.port, f"{name}-kit", password, f"{name}-kit")
        assert not _signs_in(broker.host, broker.port, f"{name}-kit", "wrong", f"{name}-kit")
        live_ca = STATE / "mosquitto" / "tls" / "ca.crt"
        context = ssl.create_default_context(cafile=str(live_ca))  # what the kits hold
        with (
            socket.create_connection((broker.host, broker.tls_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=broker.host),
        ):
            pass
    finally:
        broker.stop()
        shutil.rmtree(fresh, ignore_errors=True)

    assert restored_key.open(f"{name}P1", sealed, key_id).birth_date == date(1950, 1, 2)
