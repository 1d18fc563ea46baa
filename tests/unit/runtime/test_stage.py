"""runtime.stage's check mode: settings loaded and validated, the stage's own check run, nothing built."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from runtime.settings import ConfigError, Settings, check_writable_dir, setting
from runtime.stage import check_only, run_stage


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Demo(Settings):
    folder: str = setting("/nowhere", env="VAKTROM_TEST_STAGE_FOLDER", help="a folder the stage writes")


def _never_built(*_settings: object) -> object:
    raise AssertionError("check mode built the stage")


def _main(argv: list[str], check: object = None) -> int:
    return run_stage(
        prog="demo", description="demo", settings=(_Demo,), build=_never_built, logger="demo",
        argv=argv, check=check,  # type: ignore[arg-type]
    )  # fmt: skip


def test_check_mode_runs_the_check_and_builds_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--check` and VAKTROM_CHECK_ONLY=1 both exit 0 after the stage's check, without building it."""
    monkeypatch.setenv("VAKTROM_TEST_STAGE_FOLDER", str(tmp_path))
    seen: list[str] = []
    assert _main(["--check"], lambda s: seen.append(s.folder)) == 0
    monkeypatch.setenv("VAKTROM_CHECK_ONLY", "1")
    assert _main([], lambda s: seen.append(s.folder)) == 0
    assert seen == [str(tmp_path), str(tmp_path)]
    assert "check only" in capsys.readouterr().err


def test_a_failed_check_exits_2_with_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    """The stage's check raising ConfigError is bad configuration: exit 2, the message on stderr."""

    def missing(_settings: _Demo) -> None:
        raise ConfigError("templates/queue.html is missing")

    assert _main(["--check"], missing) == 2
    assert "demo: templates/queue.html is missing" in capsys.readouterr().err


def test_check_only_reads_the_variable() -> None:
    """Only a true value asks for check mode."""
    assert check_only({"VAKTROM_CHECK_ONLY": "1"})
    assert check_only({"VAKTROM_CHECK_ONLY": " Yes "})
    assert not check_only({"VAKTROM_CHECK_ONLY": "0"})
    assert not check_only({})


def test_a_directory_the_process_cannot_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing directory under a writable parent passes (the stage makes it); a file in the way,
    or a parent this process may not write, is refused naming the variable."""
    check_writable_dir("VAKTROM_X_DIR", tmp_path / "state" / "monitor")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"VAKTROM_X_DIR=.*is not a directory"):
        check_writable_dir("VAKTROM_X_DIR", tmp_path / "file" / "monitor")
    locked = tmp_path / "locked"
    locked.mkdir()
    # the tests may run as root, who writes anywhere: the permission answer is the kernel's, faked
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real(path, mode))
    with pytest.raises(ConfigError, match=rf"{locked} is not writable by uid"):
        check_writable_dir("VAKTROM_X_DIR", locked / "monitor")
