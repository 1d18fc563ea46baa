"""infra/backup.py's pure parts: where a set keeps its files, what a restore starts from, and that a
set whose files were altered is refused before anything is restored."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "infra"))
import backup


def test_the_identity_key_is_kept_apart_from_the_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key goes under the keys folder (VAKTROM_BACKUP_KEYS_DIR when set), the rest into the set."""
    set_dir = tmp_path / "backup" / "sets" / "20261206T000000Z"
    monkeypatch.delenv("VAKTROM_BACKUP_KEYS_DIR", raising=False)
    assert (
        backup._kept(set_dir, "identity.key") == tmp_path / "backup" / "keys" / set_dir.name / "identity.key"
    )
    assert backup._kept(set_dir, "kafka/cluster-id") == set_dir / "files" / "kafka" / "cluster-id"
    monkeypatch.setenv("VAKTROM_BACKUP_KEYS_DIR", str(tmp_path / "safe"))
    assert backup._kept(set_dir, "identity.key") == tmp_path / "safe" / set_dir.name / "identity.key"


def test_the_first_wal_file_comes_from_the_backup_label(tmp_path: Path) -> None:
    """pg_basebackup's backup_label names the WAL file a restore starts from; cleanup keeps it."""
    (tmp_path / "backup_label").write_text(
        "START WAL LOCATION: 0/11000028 (file 000000020000000000000011)\nCHECKPOINT LOCATION: 0/11000060\n"
    )
    assert backup._wal_start(tmp_path) == "000000020000000000000011"
    (tmp_path / "backup_label").write_text("LABEL: nothing\n")
    with pytest.raises(backup.BackupError, match="START WAL LOCATION"):
        backup._wal_start(tmp_path)


def test_an_altered_file_is_refused_before_anything_is_restored(tmp_path: Path) -> None:
    """A set's file whose checksum does not match stops the restore with a message naming it."""
    set_dir = tmp_path / "sets" / "s1"
    (set_dir / "files" / "mosquitto").mkdir(parents=True)
    dynsec = set_dir / "files" / "mosquitto" / "credentials.json"
    dynsec.write_text("{}")
    manifest = {"files": {"mosquitto/credentials.json": backup._sha256(dynsec)}}
    (set_dir / "manifest.json").write_text(json.dumps(manifest))
    dynsec.write_text('{"x": 1}')
    with pytest.raises(backup.BackupError, match="does not match its checksum"):
        backup.verify(set_dir, pg=None)  # type: ignore[arg-type]  # refused before PostgreSQL is asked
