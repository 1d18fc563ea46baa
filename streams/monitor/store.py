"""The monitor's local state store: the encoded state of the partitions a worker holds, and per
partition the changelog offset it holds up to.

    memory://   a dict per partition; forgotten when the partition leaves, so a worker restores a
                partition from the start of its changelog each time it gets it (tests use it)
    rocksdb://  one RocksDB database in the data directory; kept when a partition leaves, so a
                restart or a partition coming back restores only the changelog's tail

The worker writes a batch's state here only after Kafka has acknowledged it on the changelog, in one
write together with the new checkpoint (`write`): the store is never ahead of the changelog, and
restoring from the checkpoint onwards always brings it level.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["MemoryStore", "RocksStore", "Store", "open_store"]

log = logging.getLogger(__name__)

# RocksDB's defaults (64 MiB memtables, several of them) let a worker's memory grow by hundreds of
# MiB under steady writes (the faust monitor's 30-minute soak went from 84 to 426 MiB). State
# records are small and rewritten often: small memtables do.
_WRITE_BUFFER = 4 * 1024 * 1024
_WRITE_BUFFERS = 2


class Store(Protocol):
    def get(self, partition: int, key: bytes) -> bytes | None: ...
    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...
    def checkpoint(self, partition: int) -> int:
        """The changelog offset to restore from (0: nothing held)."""
        ...

    def write(self, puts: Mapping[int, Mapping[bytes, bytes | None]], checkpoints: Mapping[int, int]) -> None:
        """Put (None: delete) the keys of each partition and move its checkpoint, all at once."""
        ...

    def leave(self, partition: int) -> None:
        """The partition went to another worker."""
        ...

    def reset(self, partition: int) -> None:
        """Forget the partition's state and checkpoint (its changelog no longer matches them)."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[int, dict[bytes, bytes]] = {}
        self._checkpoints: dict[int, int] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        held = self._data.get(partition)
        return None if held is None else held.get(key)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        yield from list(self._data.get(partition, {}).items())

    def checkpoint(self, partition: int) -> int:
        return self._checkpoints.get(partition, 0)

    def write(self, puts: Mapping[int, Mapping[bytes, bytes | None]], checkpoints: Mapping[int, int]) -> None:
        for partition, values in puts.items():
            held = self._data.setdefault(partition, {})
            for key, value in values.items():
                if value is None:
                    held.pop(key, None)
                else:
                    held[key] = value
        self._checkpoints.update(checkpoints)

    def leave(self, partition: int) -> None:
        self.reset(partition)  # nothing survives a restart here anyway: restore from the start

    def reset(self, partition: int) -> None:
        self._data.pop(partition, None)
        self._checkpoints.pop(partition, None)

    def close(self) -> None:
        self._data.clear()


def _prefix(partition: int) -> bytes:
    return partition.to_bytes(2, "big")


class RocksStore:
    """Keys are the partition (2 bytes), then b"s" and the state key, or b"c" for the checkpoint."""

    def __init__(self, path: Path) -> None:
        from rocksdict import Options, Rdict  # noqa: PLC0415 - only a rocksdb:// worker needs it

        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(_WRITE_BUFFER)
        options.set_max_write_buffer_number(_WRITE_BUFFERS)
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=options)

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self._db.get(_prefix(partition) + b"s" + key)
        return value if isinstance(value, bytes) else None

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        start = _prefix(partition) + b"s"
        for key, value in self._db.items(from_key=start):
            assert isinstance(key, bytes)
            assert isinstance(value, bytes)
            if not key.startswith(start):
                return
            yield key[len(start) :], value

    def checkpoint(self, partition: int) -> int:
        value = self._db.get(_prefix(partition) + b"c")
        return int.from_bytes(value, "big") if isinstance(value, bytes) else 0

    def write(self, puts: Mapping[int, Mapping[bytes, bytes | None]], checkpoints: Mapping[int, int]) -> None:
        from rocksdict import WriteBatch  # noqa: PLC0415 - see __init__

        batch = WriteBatch(raw_mode=True)
        for partition, values in puts.items():
            prefix = _prefix(partition) + b"s"
            for key, value in values.items():
                if value is None:
                    batch.delete(prefix + key)
                else:
                    batch.put(prefix + key, value)
        for partition, offset in checkpoints.items():
            batch.put(_prefix(partition) + b"c", offset.to_bytes(8, "big"))
        self._db.write(batch)

    def leave(self, partition: int) -> None:
        """Kept: if the partition comes back, only what others wrote since is restored."""

    def reset(self, partition: int) -> None:
        start = _prefix(partition)
        self._db.delete_range(start, _prefix(partition + 1))

    def close(self) -> None:
        self._db.close()


def open_store(url: str, data_dir: Path) -> Store:
    """The store `url` names (settings have checked it is memory:// or rocksdb://).

    A RocksDB database damaged on disk is moved aside and a new one opened: the store is a copy of
    the changelog, which restores it (a worker that stopped on it helped nobody)."""
    if not url.startswith("rocksdb://"):
        return MemoryStore()
    path = data_dir / "state"
    try:
        return RocksStore(path)
    except Exception as exc:  # rocksdict raises a bare Exception; only "Corruption" is ours to mend
        if "Corruption" not in str(exc):
            raise
        aside = path.with_name(f"state.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        path.rename(aside)
        log.warning(
            "the state store in %s is damaged (%s): moved to %s, restoring from the changelog",
            path,
            exc,
            aside,
        )
        return RocksStore(path)
