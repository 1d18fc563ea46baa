"""Fair share: how much one kit may send, so that one kit cannot delay other patients' alerts.

Each kit has two token buckets, one counting readings and one counting payload bytes. A bucket holds
at most `burst` tokens and refills at `per_minute / 60` tokens a second; a message passes when both
buckets hold enough for it, and then takes its cost from both. A full bucket is what lets a kit that
was offline for hours send its stored readings at once (store and forward); after that it gets the
sustained rate.

The check is on the bridge's hot path, so it is a dict lookup and a little arithmetic: no lock (only
the worker thread calls it), no clock call of its own (the caller passes `now`).

A refused readings message costs nothing: the kit keeps it and resends it later (`rate_limited`
receipt). Status and FHIR messages take from the same buckets (they have no receipt: a status
message over the limit is dropped, a FHIR one recorded as one `rate_limited` rejection, at most one
per kit per minute: `OncePer`).
"""

from __future__ import annotations

import msgspec

from contracts import MAX_KIT_PAYLOAD_BYTES, MAX_READINGS_PER_MESSAGE

__all__ = ["KitLimiter", "OncePer", "TokenBucket", "fhir_cost", "message_cost"]


class _Envelope(msgspec.Struct):
    """Only what the limit needs: the message's seq (for its receipt) and how many readings it has."""

    seq: int | None = None
    readings: list[msgspec.Raw] | None = None
    responses: list[msgspec.Raw] | None = None  # an answers message: one receipt outcome per response


_envelope = msgspec.json.Decoder(_Envelope)


class _Bundle(msgspec.Struct):
    """Only what the limit needs of a FHIR payload: its Bundle entries, left unread."""

    entry: list[msgspec.Raw] | None = None


_bundle = msgspec.json.Decoder(_Bundle)


def message_cost(payload: bytes) -> tuple[int | None, int, int]:
    """(seq or None, readings, bytes) of a readings payload, read cheaply (0.4 µs for two readings).

    A payload that is not even an envelope counts as one reading. The cost is capped at what one
    valid message may hold, so that no message can cost more than a full bucket: an over-long one is
    refused by the normaliser (too large, schema) rather than here forever. A payload over the size
    limit is not read at all (a refusal must stay cheap): it costs a full message and has no seq.
    """
    if len(payload) > MAX_KIT_PAYLOAD_BYTES:  # too large anyway: a 1 MB list of 500,000 items would
        return None, MAX_READINGS_PER_MESSAGE, MAX_KIT_PAYLOAD_BYTES  # take the worker 20 ms to count
    try:
        envelope = _envelope.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):  # deep JSON
        seq, count = None, 1
    else:
        seq = envelope.seq if envelope.seq is not None and envelope.seq >= 0 else None
        count = len(envelope.readings or envelope.responses or ()) or 1
    return seq, min(count, MAX_READINGS_PER_MESSAGE), min(len(payload), MAX_KIT_PAYLOAD_BYTES)


def fhir_cost(payload: bytes) -> tuple[int, int]:
    """(readings, bytes) of a FHIR payload, read cheaply: a Bundle costs one reading per entry (45 µs
    for 125 entries in 64 KiB, against 1.8 ms to normalise them), anything else one. Capped and
    unread over the size limit, as `message_cost`."""
    if len(payload) > MAX_KIT_PAYLOAD_BYTES:
        return MAX_READINGS_PER_MESSAGE, MAX_KIT_PAYLOAD_BYTES
    try:
        entries = _bundle.decode(payload).entry
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        entries = None
    count = len(entries) if entries else 1
    return min(count, MAX_READINGS_PER_MESSAGE), len(payload)


class OncePer:
    """Whether a kit is due another report: at most one per `interval` seconds each (a flood of
    refusals must not become a flood of records). Forgets kits not reported for `interval`."""

    __slots__ = ("_interval", "_last", "_swept")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._swept = 0.0

    def __len__(self) -> int:
        return len(self._last)

    def due(self, kit: str, now: float) -> bool:
        """True (and `now` noted) when `kit` had no report in the last `interval` seconds."""
        last = self._last.get(kit)
        if last is not None and now - last < self._interval:
            return False
        if now - self._swept >= self._interval:
            self._swept = now
            self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
        self._last[kit] = now
        return True


class TokenBucket:
    """`burst` tokens at most, refilled at `rate` tokens per second; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, *, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"a token bucket needs a positive rate and burst, got {rate} and {burst}")
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def refill(self, now: float) -> float:
        """Add what `now - stamp` seconds earned (never past `burst`); the tokens now held."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, cost: float, now: float) -> bool:
        """Take `cost` tokens if the bucket holds them (exactly `cost` is enough); else take nothing."""
        if self.refill(now) >= cost:
            self.tokens -= cost
            return True
        return False


class KitLimiter:
    """Per-kit readings and bytes buckets; `allow(kit, readings, size, now)` decides one message."""

    __slots__ = ("_buckets", "_bytes", "_idle_after", "_last_sweep", "_readings", "refused")

    def __init__(
        self,
        *,
        readings_per_minute: float,
        readings_burst: float,
        bytes_per_minute: float,
        bytes_burst: float,
    ) -> None:
        self._readings = (readings_per_minute / 60.0, float(readings_burst))
        self._bytes = (bytes_per_minute / 60.0, float(bytes_burst))
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}
        # A kit whose buckets would be full again is the same as a kit never seen: forget it, so the
        # table holds only the kits that sent lately.
        self._idle_after = max(readings_burst / self._readings[0], bytes_burst / self._bytes[0])
        self._last_sweep = 0.0
        self.refused = 0  # messages refused so far (one writer: the worker)

    def __len__(self) -> int:
        return len(self._buckets)

    def _pair(self, kit: str, now: float) -> tuple[TokenBucket, TokenBucket]:
        pair = self._buckets.get(kit)
        if pair is None:
            if now - self._last_sweep > self._idle_after:
                self._sweep(now)
            pair = self._buckets[kit] = (
                TokenBucket(rate=self._readings[0], burst=self._readings[1], now=now),
                TokenBucket(rate=self._bytes[0], burst=self._bytes[1], now=now),
            )
        return pair

    def roomy(self, kit: str, now: float) -> bool:
        """True when `kit` holds enough for the largest valid message: it passes whatever it sent, and
        the caller charges it afterwards (`charge`) without reading the payload twice."""
        counted, sized = self._pair(kit, now)
        return counted.refill(now) >= MAX_READINGS_PER_MESSAGE and sized.refill(now) >= MAX_KIT_PAYLOAD_BYTES

    def charge(self, kit: str, readings: int, size: int) -> None:
        """Take the cost of a message let through by `roomy` (never more than it held)."""
        counted, sized = self._buckets[kit]
        counted.tokens = max(0.0, counted.tokens - min(readings, MAX_READINGS_PER_MESSAGE))
        sized.tokens = max(0.0, sized.tokens - min(size, MAX_KIT_PAYLOAD_BYTES))

    def allow(self, kit: str, readings: int, size: int, now: float) -> bool:
        """True (and the cost taken) when `kit` may send a message of `readings` readings and `size` bytes."""
        counted, sized = self._pair(kit, now)
        if counted.refill(now) >= readings and sized.refill(now) >= size:
            counted.tokens -= readings
            sized.tokens -= size
            return True
        self.refused += 1
        return False

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        idle = [kit for kit, (counted, _s) in self._buckets.items() if now - counted.stamp > self._idle_after]
        for kit in idle:
            del self._buckets[kit]
