"""The monitor's static group member id: kept in its data directory, never held by two live workers."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.settings import ConfigError
from streams.monitor.membership import ID_FILE, claim_instance_id
from streams.monitor.settings import MonitorSettings
from tests.conftest import REPO

_KAFKA_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def test_the_id_is_made_once_and_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "monitor"  # made on first use
    first = claim_instance_id(data_dir)
    assert _KAFKA_ID.match(first.value)
    assert (data_dir / ID_FILE).read_text().strip() == first.value
    first.release()
    again = claim_instance_id(data_dir)
    assert again.value == first.value
    again.release()
    other = claim_instance_id(tmp_path / "other")
    assert other.value != first.value  # each data directory, each worker, its own id
    other.release()


def test_a_second_worker_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    held = claim_instance_id(tmp_path)
    with pytest.raises(
        ConfigError, match=r"another monitor worker is running with VAKTROM_MONITOR_DATA_DIR="
    ):
        claim_instance_id(tmp_path)
    held.release()
    freed = claim_instance_id(tmp_path)  # free again once the holder lets go
    assert freed.value == held.value
    freed.release()


def test_the_claim_ends_with_a_killed_process(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: the lock must still go, and the id stay."""
    code = (
        "import sys, time; from pathlib import Path; "
        "from streams.monitor.membership import claim_instance_id; "
        "claim = claim_instance_id(Path(sys.argv[1])); print(claim.value, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        value = child.stdout.readline().strip()
        with pytest.raises(ConfigError):
            claim_instance_id(tmp_path)  # held by the live child
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
    claimed = claim_instance_id(tmp_path)
    assert claimed.value == value
    claimed.release()


@pytest.mark.parametrize("content", ["", "\n", "not an id!\n", "x" * 300])
def test_a_missing_or_damaged_id_is_replaced(tmp_path: Path, content: str) -> None:
    (tmp_path / ID_FILE).write_text(content)
    claimed = claim_instance_id(tmp_path)
    assert _KAFKA_ID.match(claimed.value)
    assert (tmp_path / ID_FILE).read_text() == claimed.value + "\n"
    claimed.release()


def test_an_unusable_directory_names_the_variable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"VAKTROM_MONITOR_DATA_DIR=.*a-file/monitor.* cannot be used"):
        claim_instance_id(blocker / "monitor")


def test_static_membership_is_on_unless_switched_off() -> None:
    assert MonitorSettings.from_env({}).static_membership is True
    assert MonitorSettings.from_env({"VAKTROM_MONITOR_STATIC_MEMBERSHIP": "false"}).static_membership is False
