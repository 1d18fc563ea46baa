"""Back up and restore what the local stack cannot rebuild: the database, the MQTT broker's identities,
Kafka's credentials and the identity key (docs/backup-restore.md).

    infra/backup.py base [--keep N] [--group G ...]   a backup set: base backup, files, offsets
    infra/backup.py wal-status                        the WAL archive and the backup sets
    infra/backup.py restore --to DIR [--set NAME] [--start]
    infra/backup.py rewind [--set NAME]               the database writers' offsets back to the set's

PostgreSQL archives every WAL segment into <backup>/wal (infra/postgres/postgresql.conf), so a
restore replays the base backup plus the archived WAL to the last archived segment. What was written
after that segment is gone from the database but not from Kafka: `rewind` sets the consumer groups
that write the database (archive, alert store) back to the offsets they had committed when the base
backup began, and they read again everything since; their writes are idempotent (by measurement id,
by episode and version), so nothing is doubled.

A set lives in <backup>/sets/<UTC time>/: pgdata/ (pg_basebackup, plain, with its own
backup_manifest that pg_verifybackup checks), files/ (paths relative to the state folder) and
manifest.json (SHA-256 of every file, the backup's WAL start, the consumer groups' offsets). The
identity key goes apart, to $VAKTROM_BACKUP_KEYS_DIR/<set> (default <backup>/keys/<set>): keep that
on other media. Everything is 0700/0600, owned by the database's user.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stackenv
from processes import StackError, as_user, chown_tree
from services import Postgres
from stack import StackSettings, build, write_env_file

from runtime import kafka as rk
from runtime.settings import ConfigError, KafkaSettings

__all__ = ["BackupError", "base_backup", "latest_set", "restore", "rewind", "snapshot_offsets", "start"]

# What the stack made once and cannot make again without breaking kits or identities, relative to the
# state folder. The broker's identities pair with its accounts' passwords, the TLS folder holds the CA
# kits trust, the database roles' passwords pair with the roles in the restored database.
FILES = (
    "identity.key",  # stored apart from the set (KEY_FILES): with it a backup shows names, not pseudonyms
    "mosquitto/data/dynamic-security.json",
    "mosquitto/credentials.json",
    "mosquitto/tls",
    "kafka/credentials.json",
    "kafka/cluster-id",
    "kafka-single/credentials.json",  # VAKTROM_STACK_KAFKA_NODES=1 keeps its own (infra/kafka_cluster.py)
    "kafka-single/cluster-id",
    "secrets/postgres-password",
    "secrets/postgres-app-password",
)
KEY_FILES = ("identity.key",)
PRIVATE_DIRS = ("secrets", "tls", "data")
DEFAULT_GROUPS = ("VAKTROM_ARCHIVE_GROUP", "vaktrom-archive"), ("VAKTROM_ALERTS_GROUP", "vaktrom-alerts")


class BackupError(Exception):
    """A backup or restore step failed; the message says what to do."""


def say(text: str) -> None:
    print(text, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _copy_private(src: Path, dst: Path) -> None:
    """A 0600 copy. A folder made on the way is 0755 (the services' users pass through the state
    folder, each service's start-up gives its own folders their owner), except the private ones."""
    if not dst.parent.exists():
        dst.parent.mkdir(parents=True)
        if dst.parent.name in PRIVATE_DIRS:
            dst.parent.chmod(0o700)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, src.open("rb") as f:
        shutil.copyfileobj(f, out)
    dst.chmod(0o600)


def keys_dir(set_dir: Path) -> Path:
    """Where a set's key files go: $VAKTROM_BACKUP_KEYS_DIR/<set>, default <backup>/keys/<set>. Put
    it on other media than the sets: the database's backup alone holds pseudonyms only."""
    root = os.environ.get("VAKTROM_BACKUP_KEYS_DIR") or set_dir.parent.parent / "keys"
    return Path(root) / set_dir.name


def _kept(set_dir: Path, rel: str) -> Path:
    """Where a set keeps one of its files."""
    return keys_dir(set_dir) / rel if rel in KEY_FILES else set_dir / "files" / rel


def _run(pg: Postgres, cmd: list[str], what: str, *, live: bool = False) -> str:
    """A PostgreSQL tool as the cluster's owner; `live` lets its progress reach the terminal."""
    if live:
        result = subprocess.run(as_user(cmd, pg.user), stdout=subprocess.PIPE, text=True, check=False)
        if result.returncode != 0:
            raise BackupError(f"{what} failed (its messages are above)")
        return result.stdout
    result = subprocess.run(as_user(cmd, pg.user), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"{what} failed:\n{result.stdout}{result.stderr}".strip())
    return result.stdout + result.stderr


# ------------------------------------------------------------------ Kafka offsets
def kafka_admin_settings(state: Path) -> KafkaSettings:
    """The operator's VAKTROM_KAFKA_* when set; else the local stack's admin principal."""
    if os.environ.get("VAKTROM_KAFKA_USERNAME"):
        return KafkaSettings.from_env(dict(os.environ))
    env = stackenv.read(state)
    return KafkaSettings.from_env({**env, **stackenv.kafka_principal(env, "admin")})


def default_groups() -> list[str]:
    return [os.environ.get(env, default) for env, default in DEFAULT_GROUPS]


def snapshot_offsets(kafka: KafkaSettings, groups: list[str]) -> dict[str, dict[str, int]]:
    """{group: {"topic:partition": committed offset}}. Taken before the base backup begins: an
    offset is committed only after its records are in the database, so the backup holds them.

    Read through a consumer of each group that never joins it, not the admin API: librdkafka's
    ListConsumerGroupOffsets can crash the process when the group's coordinator moves (infra/topics.py)."""
    reader = rk.consumer(kafka, group_id="vaktrom-backup", client_id="vaktrom-backup")
    try:
        metadata = reader.list_topics(timeout=30).topics
    finally:
        reader.close()
    tps = [
        rk.TopicPartition(name, p)
        for name, topic in sorted(metadata.items())
        if not name.startswith("__")
        for p in topic.partitions
    ]
    out: dict[str, dict[str, int]] = {}
    for group in groups:
        consumer = rk.consumer(kafka, group_id=group, client_id="vaktrom-backup")
        try:
            committed = consumer.committed(tps, timeout=30)
        finally:
            consumer.close()
        out[group] = {f"{tp.topic}:{tp.partition}": tp.offset for tp in committed if tp.offset >= 0}
    return out


def rewind(kafka: KafkaSettings, offsets: dict[str, dict[str, int]], *, wait_s: float = 120.0) -> None:
    """Set each group's committed offsets to `offsets`. Kafka moves only the offsets of a group with
    no members: stop its processes first. A stopped static member (VAKTROM_ARCHIVE_INSTANCE_ID)
    stays a member until its session times out, so this waits up to `wait_s` for that."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition  # noqa: PLC0415

    admin = rk.admin(kafka, client_id="vaktrom-backup")
    wanted = {
        group: [
            TopicPartition(key.rsplit(":", 1)[0], int(key.rsplit(":", 1)[1]), offset)
            for key, offset in sorted(by_partition.items())
        ]
        for group, by_partition in offsets.items()
    }
    _refuse_if_gone(admin, [tp for partitions in wanted.values() for tp in partitions])
    for group, partitions in wanted.items():
        if not partitions:
            say(f"    {group}: no offsets in the set (it had committed nothing); left as it is")
            continue
        request = [ConsumerGroupTopicPartitions(group, partitions)]
        deadline = time.monotonic() + wait_s
        while True:
            try:
                answer = rk.wait(admin.alter_consumer_group_offsets(request)[group], admin, timeout=30)
                # Kafka answers a group that still has members per partition, not for the request:
                # the future succeeds and every partition carries the error.
                refused = next((tp.error for tp in answer.topic_partitions if tp.error is not None), None)
            except rk.KafkaException as exc:
                refused = exc.args[0]
            if refused is None:
                break
            if time.monotonic() > deadline:
                raise BackupError(
                    f"Kafka refused to move the offsets of consumer group {group} "
                    f"({refused.str()}): stop every process of that group (the archive, the "
                    "response centre) and run `infra/backup.py rewind` again"
                )
            time.sleep(1.0)  # a member's session has not expired yet
        say(f"    {group}: {len(partitions)} partitions set back to the backup's offsets")


def _refuse_if_gone(admin: Any, partitions: list[Any]) -> None:
    """Raise before moving any offset when Kafka no longer holds a partition's records from the
    set's offset on (retention deleted them, or the topic is gone): the groups' consumers would
    start at the first record Kafka still has and skip the rest without a word."""
    from confluent_kafka import TopicPartition  # noqa: PLC0415 - the venv's
    from confluent_kafka.admin import OffsetSpec  # noqa: PLC0415

    if not partitions:
        return
    futures = admin.list_offsets(
        {TopicPartition(tp.topic, tp.partition): OffsetSpec.earliest() for tp in partitions}
    )
    gone: list[str] = []
    for tp in partitions:
        key = f"{tp.topic}:{tp.partition}"
        try:
            first = rk.wait(futures[TopicPartition(tp.topic, tp.partition)], admin, timeout=30)
        except rk.KafkaException as exc:
            gone.append(f"{key} ({exc.args[0].str()})")
            continue
        if first.offset > tp.offset:
            gone.append(f"{key} (the set needs offset {tp.offset}, Kafka's first is {first.offset})")
    if gone:
        raise BackupError(
            "Kafka no longer holds every record since this backup set, so a rewind would lose the "
            f"ones in between without a trace: {'; '.join(gone)}. Nothing was moved. Restore a newer "
            "set if there is one; otherwise what the database lost after the last archived WAL "
            "segment is gone for those partitions (docs/backup-restore.md, RPO)"
        )


# ------------------------------------------------------------------ sets
def sets_dir(state: Path) -> Path:
    return state / "backup" / "sets"


def latest_set(state: Path) -> Path:
    found = sorted(p for p in sets_dir(state).glob("*") if (p / "manifest.json").exists())
    if not found:
        raise BackupError(f"no backup set in {sets_dir(state)}: run `infra/backup.py base` first")
    return found[-1]


def _wal_start(pgdata: Path) -> str:
    """The first WAL file a restore of this base backup needs (backup_label's START WAL LOCATION)."""
    for line in (pgdata / "backup_label").read_text().splitlines():
        if line.startswith("START WAL LOCATION:"):
            return line.rsplit("file ", 1)[1].rstrip(")")
    raise BackupError(f"{pgdata}/backup_label names no START WAL LOCATION")


def base_backup(pg: Postgres, *, groups: list[str], kafka: KafkaSettings | None, keep: int = 2) -> Path:
    """A new set: the groups' offsets, then pg_basebackup (verified), then the files; then the sets
    beyond `keep` and the WAL only they needed are removed."""
    state = pg.state
    began = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    _private_dir(state / "backup")
    target = _private_dir(_private_dir(sets_dir(state)) / stamp)
    chown_tree(state / "backup", pg.user)
    try:
        manifest = _take(pg, target, groups=groups, kafka=kafka)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # a half-made set is never restored from
        shutil.rmtree(keys_dir(target), ignore_errors=True)
        raise
    say(
        f"    {len(manifest['files'])} files kept beside it; "
        f"set {stamp} done in {time.monotonic() - began:.1f} s"
    )
    _prune(pg, keep)
    return target


def _take(pg: Postgres, target: Path, *, groups: list[str], kafka: KafkaSettings | None) -> dict[str, Any]:
    state, stamp = pg.state, target.name
    began = time.monotonic()
    offsets = snapshot_offsets(kafka, groups) if kafka and groups else {}
    say(f"==> offsets of {', '.join(offsets) or 'no consumer group'} noted")
    say(f"==> base backup into {target}/pgdata (pg_basebackup, with the WAL it needs)")
    interactive = sys.stderr.isatty()  # pg_basebackup's progress line, for a person watching
    _run(pg, [
        str(pg.bin / "pg_basebackup"), "-h", str(pg.sock), "-p", str(pg.port), "-U", "postgres",
        "-D", str(target / "pgdata"), "-Fp", "-X", "stream", "--checkpoint=fast",
        "--manifest-checksums=SHA256", "--label", f"vaktrom {stamp}", *(["-P"] if interactive else []),
    ], "pg_basebackup", live=interactive)  # fmt: skip
    took = time.monotonic() - began
    say(f"    copied in {took:.1f} s; verifying (pg_verifybackup)")
    _run(pg, [str(pg.bin / "pg_verifybackup"), "-q", str(target / "pgdata")], "pg_verifybackup")
    files: dict[str, str] = {}
    _private_dir(keys_dir(target).parent)
    _private_dir(keys_dir(target))
    for name in FILES:
        src = state / name
        for path in sorted(src.rglob("*")) if src.is_dir() else [src]:
            if path.is_file():
                rel = path.relative_to(state)
                _copy_private(path, _kept(target, str(rel)))
                files[str(rel)] = _sha256(path)
    manifest = {
        "created": stamp,
        "database": {"wal_start": _wal_start(target / "pgdata"), "seconds": round(took, 1)},
        "files": files,
        "offsets": offsets,
    }
    fd = os.open(target / "manifest.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(manifest, out, indent=1)
    chown_tree(target, pg.user)
    return manifest


def _prune(pg: Postgres, keep: int) -> None:
    sets = sorted(p for p in sets_dir(pg.state).glob("*") if (p / "manifest.json").exists())
    for old in sets[: max(0, len(sets) - keep)]:
        shutil.rmtree(old)
        shutil.rmtree(keys_dir(old), ignore_errors=True)
        say(f"    removed the old set {old.name} (keeping {keep})")
    if sets:
        oldest = json.loads((sets[-keep:][0] / "manifest.json").read_text())["database"]["wal_start"]
        _run(pg, [str(pg.bin / "pg_archivecleanup"), "-x", ".gz", str(pg.wal_archive), oldest],
             "pg_archivecleanup")  # fmt: skip
        for label in pg.wal_archive.glob("*.backup.gz"):  # pg_archivecleanup leaves backup labels
            if label.name[:24] < oldest:
                label.unlink()
        say(f"    WAL archive: segments before {oldest} removed")


def wal_status(pg: Postgres) -> None:
    stats = pg.psql(
        "SELECT archived_count, coalesce(last_archived_wal, '-'), "
        "coalesce(last_archived_time::text, '-'), failed_count, coalesce(last_failed_wal, '-'), "
        "coalesce(last_failed_time::text, '-') FROM pg_stat_archiver"
    ).split("|")
    segments = sorted(pg.wal_archive.glob("*.gz"))
    size = sum(p.stat().st_size for p in segments)
    say(f"archiver: {stats[0]} segments archived, last {stats[1]} at {stats[2]}")
    say(f"failures: {stats[3]} (last {stats[4]} at {stats[5]})")
    say(f"archive {pg.wal_archive}: {len(segments)} files, {size / 2**20:.1f} MiB")
    for path in sorted(p for p in sets_dir(pg.state).glob("*") if (p / "manifest.json").exists()):
        manifest = json.loads((path / "manifest.json").read_text())
        say(f"set {path.name}: WAL from {manifest['database']['wal_start']}, {len(manifest['files'])} files, "
            f"offsets of {', '.join(manifest['offsets']) or 'no group'}")  # fmt: skip


# ------------------------------------------------------------------ restore
def verify(set_dir: Path, pg: Postgres) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((set_dir / "manifest.json").read_text())
    for rel, digest in manifest["files"].items():
        kept = _kept(set_dir, rel)
        if not kept.exists():
            raise BackupError(f"{kept} is missing: bring the set's keys back (VAKTROM_BACKUP_KEYS_DIR)")
        if _sha256(kept) != digest:
            raise BackupError(f"{kept} does not match its checksum: take another set")
    _run(pg, [str(pg.bin / "pg_verifybackup"), "-q", str(set_dir / "pgdata")], "pg_verifybackup")
    return manifest


def check_wal(wal: Path, wal_start: str) -> int:
    """Every archived WAL segment a restore from `wal_start` replays decompresses whole, and each
    timeline's run of segments has no hole; returns how many. Recovery stops without an error at
    the first segment it cannot read and opens the database there, so a bad segment would drop
    what came after it (nurses' actions Kafka cannot replay) without a word."""
    by_timeline: dict[str, list[Path]] = {}
    for seg in sorted(wal.glob("*.gz")):
        name = seg.name.removesuffix(".gz")
        if len(name) == 24 and all(c in "0123456789ABCDEF" for c in name) and name >= wal_start:
            by_timeline.setdefault(name[:8], []).append(seg)
    checked = 0
    for segments in by_timeline.values():
        numbers = [int(s.name[8:16], 16) * 0x100 + int(s.name[16:24], 16) for s in segments]
        for before, after, seg in zip(numbers, numbers[1:], segments[1:], strict=False):
            if after != before + 1:
                raise BackupError(
                    f"the WAL archive {wal} has no segment between {segments[numbers.index(before)].name} "
                    f"and {seg.name}: recovery would stop at the hole. Find the missing segments, or "
                    "move those after the hole away to accept losing them (docs/backup-restore.md)"
                )
        for seg in segments:
            try:
                with gzip.open(seg, "rb") as f:
                    while f.read(1 << 20):
                        pass
            except (OSError, EOFError, zlib.error) as exc:
                raise BackupError(
                    f"the archived WAL segment {seg} is damaged ({exc}): recovery would stop before it. "
                    "Bring an intact copy, or move it and every later segment away to accept losing "
                    "what they hold (docs/backup-restore.md)"
                ) from exc
            checked += 1
    return checked


def restore(set_dir: Path, to: Postgres, *, source_wal: Path, only: str | None = None) -> dict[str, Any]:
    """The set's files and database into `to`'s state folder, the database ready for archive
    recovery; `only` "files" or "database". The database's data folder must be absent or empty
    (PostgreSQL stopped); files are written over (stop the broker first)."""
    if not (set_dir / "manifest.json").exists():
        raise BackupError(
            f"no backup set {set_dir.name} in {set_dir.parent}: `infra/backup.py wal-status` lists them"
        )
    if only != "files" and to.data.exists() and any(to.data.iterdir()):
        raise BackupError(
            f"{to.data} is not empty: stop PostgreSQL (`infra/stack down postgres`) and move that "
            "folder away first; a restore never writes over a database"
        )
    say(f"==> verifying set {set_dir.name} (checksums, pg_verifybackup, the archived WAL)")
    manifest = verify(set_dir, to)
    if only != "files":
        say(
            f"    {check_wal(source_wal, manifest['database']['wal_start'])} archived WAL segments read whole"
        )
    if only != "database":
        for rel in manifest["files"]:
            _copy_private(_kept(set_dir, rel), to.state / rel)
        say(f"    {len(manifest['files'])} files restored under {to.state}")
    if only == "files":
        return manifest
    shutil.rmtree(to.data, ignore_errors=True)
    shutil.copytree(set_dir / "pgdata", to.data)
    (to.data / "backup_manifest").unlink(missing_ok=True)
    (to.data / "recovery.signal").touch(mode=0o600)
    to.data.chmod(0o700)
    chown_tree(to.home, to.user)
    say(f"    base backup copied into {to.data}; recovery.signal placed")
    if source_wal.resolve() != to.wal_archive.resolve():
        _private_dir(to.wal_archive)
        copied = 0
        for seg in source_wal.glob("*.gz"):
            if not (to.wal_archive / seg.name).exists():
                shutil.copy2(seg, to.wal_archive / seg.name)
                copied += 1
        chown_tree(to.wal_archive.parent, to.user)
        say(f"    {copied} archived WAL files copied into {to.wal_archive}")
    return manifest


def start(settings: StackSettings, *, timeout: float = 3600.0) -> float:
    """Start the restored PostgreSQL, wait until it has replayed the archive and left recovery, then
    check the roles as `infra/stack up postgres` does and write stack.env. The schema is the
    backup's: `infra/stack up postgres` applies migrations newer than the backup. Returns seconds."""
    began = time.monotonic()
    pg = build(settings)["postgres"]
    assert isinstance(pg, Postgres)
    if pg.pid() is None:
        for folder in (pg.home, pg.pid_file.parent, pg.log.parent):
            folder.mkdir(parents=True, exist_ok=True)
        pg.prepare()
        pg.pid_file.write_text(f"{pg.spawn()}\n")
    say("==> replaying the archived WAL")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pg.psql("SELECT pg_is_in_recovery()") == "f":
                break
        except StackError:
            pass  # not accepting connections yet
        if time.monotonic() > deadline:
            raise BackupError(f"PostgreSQL was still recovering after {timeout:.0f} s; see {pg.log}")
        time.sleep(0.5)
    pg.start(timeout=settings.start_timeout)  # running: waits, then roles and databases
    write_env_file(settings, build(settings))
    took = time.monotonic() - began
    say(f"    PostgreSQL recovered and open for writes in {took:.1f} s")
    return took


# ------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infra/backup.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("base", help="a new backup set")
    base.add_argument("--keep", type=int, default=2, help="sets to keep (older ones and their WAL go)")
    base.add_argument("--group", action="append", help="a consumer group that writes the database")
    sub.add_parser("wal-status", help="the WAL archive and the sets")
    rest = sub.add_parser("restore", help="a set into a state folder")
    rest.add_argument("--to", type=Path, required=True, help="the state folder to restore into")
    rest.add_argument("--set", dest="set_name", help="the set's name (default: the newest)")
    rest.add_argument("--only", choices=["database", "files"], help="restore only one part")
    rest.add_argument("--start", action="store_true", help="then start PostgreSQL and wait for recovery")
    back = sub.add_parser("rewind", help="the database writers' offsets back to the set's")
    back.add_argument("--set", dest="set_name", help="the set's name (default: the newest)")
    args = parser.parse_args(argv)
    try:
        settings = StackSettings.from_env()
        state = settings.state_dir.resolve()
        pg = build(settings)["postgres"]
        assert isinstance(pg, Postgres)
        if args.command == "base":
            if pg.pid() is None:
                raise BackupError("PostgreSQL is not running: `infra/stack up postgres` first")
            groups = args.group or default_groups()
            base_backup(pg, groups=groups, kafka=kafka_admin_settings(state), keep=max(1, args.keep))
        elif args.command == "wal-status":
            wal_status(pg)
        elif args.command == "restore":
            set_dir = sets_dir(state) / args.set_name if args.set_name else latest_set(state)
            target = StackSettings.from_env({**os.environ, "VAKTROM_STATE_DIR": str(args.to.resolve())})
            to = build(target)["postgres"]
            assert isinstance(to, Postgres)
            restore(set_dir, to, source_wal=pg.wal_archive, only=args.only)
            if args.start and args.only != "files":
                start(target)
            say(
                "next: stop the archive and the response centre, then "
                f"`infra/backup.py rewind --set {set_dir.name}`"
            )
        else:
            set_dir = sets_dir(state) / args.set_name if args.set_name else latest_set(state)
            offsets = json.loads((set_dir / "manifest.json").read_text())["offsets"]
            rewind(kafka_admin_settings(state), offsets)
        return 0
    except (BackupError, StackError, ConfigError, stackenv.StackEnvError, OSError) as exc:
        print(f"infra/backup.py {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
