"""The monitor's stored state: the two records the core keeps per patient, and their codec.

A `MetricRecord` per patient and metric (the metric's history and the episodes of its problems) and
a `PatientRecord` per patient (the kit's last message, kit-level episodes, the next deadline), as
msgpack, compressed with zstd above 1.5 KB. `streams.monitor.engine` says what a shell must persist
and when; `streams.monitor.state` reads stored records back and refuses impossible ones.
"""

from __future__ import annotations

import threading
import zlib

import msgspec
import zstandard

from streams.monitor.episodes import EpisodeState
from streams.monitor.history import History

__all__ = [
    "MetricRecord",
    "PatientRecord",
    "StateTooLargeError",
    "decode_metric",
    "decode_patient",
    "encode",
]


class MetricRecord(msgspec.Struct, array_like=True):
    history: History = msgspec.field(default_factory=History)
    episodes: dict[str, EpisodeState] = {}
    # Position in the measurement stream of the latest reading applied. A patient's readings share
    # one partition, so a reading at or before it was applied already: a replay after a crash, or a
    # partition read again from its commit, however long ago the reading was measured.
    offset: int = -1


class PatientRecord(msgspec.Struct, array_like=True):
    partition: int = 0
    last_seen: float = 0.0  # event time of the latest message from the kit (reading or status)
    missed_checked: float = 0.0  # windows ending up to this instant have been checked
    episodes: dict[str, EpisodeState] = {}
    missed: list[str] = []  # metrics of the open "measurement missed" episode
    resolve_at: dict[str, float] = {}  # problem -> when its all-clear period ends
    wake_at: float | None = None  # the next deadline (kept so the shell can rebuild its timer heap)
    reminded_checked: float = 0.0  # windows ending up to this instant have had their kit reminder
    reminders: list[tuple[str, float]] = []  # (metric, window end) of reminders in their grace


_encoder = msgspec.msgpack.Encoder()
_metric_decoder = msgspec.msgpack.Decoder(MetricRecord)
_patient_decoder = msgspec.msgpack.Decoder(PatientRecord)
# Records larger than this are stored compressed (zstd, its default level 3). Only a CGM's record
# (a reading every five minutes: two hours of readings, 32 ids, 35 days, its episodes), or a patient
# measuring many times an hour, gets there: ~2 KB as msgpack and ~1 KB compressed; the others (~1 KB after
# weeks) stay plain, so most writes and reads pay nothing. zstd, not zlib: 6-7 us to compress a
# 2 KB record where zlib (level 1) took 33 us, a quarter of the monitor's CPU at 8,000 readings/s;
# 3 us to decompress where zlib took 5; the same size or smaller.
_COMPRESS_ABOVE = 1536
# A compressed record's first bytes. A record's msgpack starts with an array header (0x90-0x9f or
# 0xdc), so plain records never start like either. zlib's is what records written before zstd
# (issue #29) carry: they are still read, and written back with zstd the next time they change.
_ZSTD = b"\x28\xb5\x2f\xfd"
_ZLIB = b"\x78"
_ZSTD_LEVEL = 3
# No record is near this decompressed (a CGM's is ~3 KB); a record that says it is larger, or
# inflates beyond it, is refused before memory is spent on it (a few KB of zstd can declare GBs).
_MAX_PLAIN = 1 << 20
# A zstd context is reused for speed and is not safe to share between threads: one per thread.
_contexts = threading.local()


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    try:
        return _contexts.pair  # type: ignore[no-any-return]
    except AttributeError:
        # The checksum (4 bytes) makes a flipped byte an error rather than another valid record,
        # as zlib's adler32 did
        compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True)
        _contexts.pair = (compressor, zstandard.ZstdDecompressor())
        return _contexts.pair  # type: ignore[no-any-return]


class StateTooLargeError(ValueError):
    """A compressed state record that would inflate beyond `_MAX_PLAIN`."""


_PATIENT_FIELDS_BEFORE_REMINDERS = 7


def encode(record: MetricRecord | PatientRecord) -> bytes:
    if isinstance(record, PatientRecord) and not record.reminded_checked and not record.reminders:
        # A patient without reminders is written as before they existed, byte for byte (the
        # reminder fields are trailing defaults the decoder fills in)
        data = _encoder.encode(msgspec.structs.astuple(record)[:_PATIENT_FIELDS_BEFORE_REMINDERS])
    else:
        data = _encoder.encode(record)
    return _zstd()[0].compress(data) if len(data) > _COMPRESS_ABOVE else data


def _plain(raw: bytes) -> bytes:
    """A stored record's msgpack. Raises on a corrupt or oversized record (the shell treats the
    record as unreadable: `streams.monitor.state.Cache.read`)."""
    if raw[:4] == _ZSTD:
        if not 0 <= zstandard.frame_content_size(raw) <= _MAX_PLAIN:  # -1: not declared
            raise StateTooLargeError(
                f"a compressed state record declares no size or more than {_MAX_PLAIN} bytes"
            )
        return _zstd()[1].decompress(raw, max_output_size=_MAX_PLAIN)
    if raw[:1] == _ZLIB:
        inflate = zlib.decompressobj()
        plain = inflate.decompress(raw, _MAX_PLAIN)
        if not inflate.eof or inflate.unconsumed_tail:
            raise StateTooLargeError(
                f"a compressed state record is cut short or inflates beyond {_MAX_PLAIN} bytes"
            )
        return plain
    return raw


def decode_metric(raw: bytes | None) -> MetricRecord:
    return MetricRecord() if raw is None else _metric_decoder.decode(_plain(raw))


def decode_patient(raw: bytes | None) -> PatientRecord:
    return PatientRecord() if raw is None else _patient_decoder.decode(_plain(raw))
