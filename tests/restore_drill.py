"""The restore drill as a crash-matrix fault: the database lost under load, restored from a base
backup and the archived WAL, the database writers rewound (docs/backup-restore.md).

    1. a base backup (infra/backup.py), which notes the archive's and the alert store's offsets
    2. load keeps flowing; one WAL segment is switched and archived, as archive_timeout would
    3. more load, whose rows reach only WAL that is never archived
    4. PostgreSQL SIGKILLed and its data folder deleted: the disk is gone
    5. the restore procedure: the archive and the response centre stopped, the base backup restored
       into a new data folder on the same port and the archived WAL replayed, the two consumer groups
       rewound to the backup's offsets, the two stages started again

The bridge and the monitor run throughout and are never touched. The crash matrix's checks then
show whether anything confirmed was lost or doubled; FIGURES keeps the drill's own numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import TYPE_CHECKING

import psycopg

from tests.conftest import REPO, STATE

sys.path.insert(0, str(REPO / "infra"))
import backup
from services import Postgres
from stack import StackSettings, build

if TYPE_CHECKING:
    from tests.crash_matrix import Pipeline

__all__ = ["FIGURES", "lose_and_restore", "stack_postgres"]

ARCHIVED_LOAD_S = 8.0  # load after the base backup that reaches an archived WAL segment
UNARCHIVED_LOAD_S = 8.0  # load after that, whose WAL is lost with the disk
WRITERS = ("archive", "alerts")  # the stages that write the database from Kafka

FIGURES: dict[str, float] = {}


def stack_postgres() -> tuple[StackSettings, Postgres]:
    settings = StackSettings.from_env({**os.environ, "VAKTROM_STATE_DIR": str(STATE)})
    pg = build(settings)["postgres"]
    assert isinstance(pg, Postgres)
    return settings, pg


def _rows(pipe: Pipeline) -> int:
    with psycopg.connect(pipe.stack.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM measurements WHERE kit_id LIKE %s", (f"{pipe.name}%",)
        ).fetchone()
    return int(row[0]) if row else 0


def _switch_and_archive(pg: Postgres, timeout: float = 60.0) -> None:
    """What archive_timeout does on its own, now: close the WAL segment and wait until it is archived."""
    segment = pg.psql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[:24] < segment:
        if time.monotonic() > deadline:
            raise RuntimeError(f"WAL segment {segment} was not archived within {timeout:.0f} s")
        time.sleep(0.2)


def lose_and_restore(pipe: Pipeline) -> None:
    settings, pg = stack_postgres()
    groups = pipe.groups()
    began = time.monotonic()
    FIGURES["rows_at_backup"] = _rows(pipe)
    set_dir = backup.base_backup(pg, groups=[groups[w] for w in WRITERS], kafka=pipe.stack.kafka(), keep=2)
    FIGURES["backup_s"] = round(time.monotonic() - began, 1)
    time.sleep(ARCHIVED_LOAD_S)
    FIGURES["rows_archived"] = _rows(pipe)  # committed before the switch: in the archived segment
    _switch_and_archive(pg)
    time.sleep(UNARCHIVED_LOAD_S)
    FIGURES["rows_at_loss"] = _rows(pipe)

    lost = time.monotonic()
    pg.kill()
    shutil.rmtree(pg.data)
    print("    postgres-restore: PostgreSQL killed and its data folder deleted", flush=True)
    for label in WRITERS:
        pipe.stages[label].stop()
    backup.restore(set_dir, pg, source_wal=pg.wal_archive, only="database")
    backup.start(settings)
    FIGURES["restore_s"] = round(time.monotonic() - lost, 1)
    FIGURES["rows_restored"] = _rows(pipe)
    offsets = json.loads((set_dir / "manifest.json").read_text())["offsets"]
    backup.rewind(pipe.stack.kafka(), offsets)
    for label in WRITERS:
        pipe.stages[label].start(wait=False)
    FIGURES["writers_back_s"] = round(time.monotonic() - lost, 1)
    print(f"    postgres-restore: {FIGURES}", flush=True)
