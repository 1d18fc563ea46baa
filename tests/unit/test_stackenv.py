"""The test harness and the benchmarks point at the stack's test database, never the demo's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
import stackenv

DEMO = "postgresql://vaktrom:pw@127.0.0.1:15432/vaktrom"
TEST = "postgresql://vaktrom:pw@127.0.0.1:15432/vaktrom_test"


def _write(state: Path, **values: str) -> None:
    (state / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def test_tests_get_the_test_database_and_everything_else_unchanged(tmp_path: Path) -> None:
    _write(tmp_path, VAKTROM_MQTT_PORT="11883", VAKTROM_DATABASE_URL=DEMO, VAKTROM_TEST_DATABASE_URL=TEST)
    env = stackenv.for_tests(tmp_path)
    assert env["VAKTROM_DATABASE_URL"] == TEST
    assert env["VAKTROM_MQTT_PORT"] == "11883"
    assert stackenv.read(tmp_path)["VAKTROM_DATABASE_URL"] == DEMO  # what `make up` reads


def test_a_url_with_an_equals_sign_in_its_options_is_kept_whole(tmp_path: Path) -> None:
    url = f"{TEST}?options=-csearch_path%3Dx&sslmode=disable"
    _write(tmp_path, VAKTROM_DATABASE_URL=DEMO, VAKTROM_TEST_DATABASE_URL=url)
    assert stackenv.for_tests(tmp_path)["VAKTROM_DATABASE_URL"] == url


def test_an_env_file_from_an_older_stack_says_to_run_stack_up_again(tmp_path: Path) -> None:
    _write(tmp_path, VAKTROM_DATABASE_URL=DEMO)
    with pytest.raises(stackenv.StackEnvError, match=r"no VAKTROM_TEST_DATABASE_URL.*infra/stack up"):
        stackenv.for_tests(tmp_path)


def test_a_stack_never_started_says_how_to_start_it(tmp_path: Path) -> None:
    with pytest.raises(stackenv.StackEnvError, match=r"never started.*make stack-up"):
        stackenv.read(tmp_path)


def test_the_plain_flavour_reads_its_own_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """VAKTROM_STACK_POSTGRES_FLAVOUR=plain points at the plain cluster's stack-plain.env and leaves
    the TimescaleDB stack's stack.env alone (both run beside each other)."""
    plain = TEST.replace("15432", "15433")
    _write(tmp_path, VAKTROM_DATABASE_URL=DEMO, VAKTROM_TEST_DATABASE_URL=TEST)
    (tmp_path / "stack-plain.env").write_text(
        f"VAKTROM_DATABASE_URL={DEMO}\nVAKTROM_TEST_DATABASE_URL={plain}\n"
    )
    monkeypatch.setenv("VAKTROM_STACK_POSTGRES_FLAVOUR", "plain")
    assert stackenv.for_tests(tmp_path)["VAKTROM_DATABASE_URL"] == plain
    monkeypatch.setenv("VAKTROM_STACK_POSTGRES_FLAVOUR", "timescaledb")
    assert stackenv.for_tests(tmp_path)["VAKTROM_DATABASE_URL"] == TEST
