"""Who a patient is, sealed at rest: name, birth date and national identity number.

The pipeline knows patients only by pseudonym. The registry keeps the person behind it sealed with
AES-256-GCM under `VAKTROM_IDENTITY_KEY`, a key the database never sees, with the pseudonym as
associated data (a sealed row moved to another patient does not open). A keyed HMAC of the
national identity number lets the registry refuse a second enrolment of the same person without
storing the number. Keys are named by a short digest, so older keys (`VAKTROM_IDENTITY_OLD_KEYS`)
still open what they sealed while new rows use the current key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import date

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Identity", "IdentityError", "Sealer", "check_national_id"]

_NONCE = 12
_W1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_W2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


class IdentityError(ValueError):
    """An identity that cannot be accepted, or a sealed one that cannot be opened; says why."""


class Identity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    birth_date: date | None = None
    national_id: str | None = None

    @property
    def masked_id(self) -> str:
        """The number as staff may see it in lists: birth date part only."""
        return f"{self.national_id[:6]}*****" if self.national_id else ""


def _control(digits: list[int], weights: tuple[int, ...]) -> int | None:
    rest = 11 - sum(d * w for d, w in zip(digits, weights, strict=False)) % 11
    return 0 if rest == 11 else None if rest == 10 else rest


def check_national_id(number: str) -> str:
    """A Norwegian national identity number (fødselsnummer, D-number or synthetic), or IdentityError.

    Both control digits are checked (mod 11); a typing error in any one digit is always caught.
    """
    value = number.replace(" ", "")
    if len(value) != 11 or not value.isdigit():
        raise IdentityError("a national identity number has 11 digits (DDMMYYIIICC)")
    digits = [int(c) for c in value]
    k1 = _control(digits[:9], _W1)
    k2 = _control([*digits[:9], k1 or 0], _W2) if k1 is not None else None
    if k1 != digits[9] or k2 != digits[10]:
        raise IdentityError(
            "the national identity number's control digits do not match: check for a typing error"
        )
    return value


def _decode_key(raw: str, env: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(raw.strip() + "=" * (-len(raw.strip()) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise IdentityError(
            f"{env} must be 32 random bytes in URL-safe base64, e.g. from "
            '`python -c "import base64,os;print(base64.urlsafe_b64encode(os.urandom(32)).decode())"`'
        )
    return key


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"vaktrom-identity-key" + key).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Sealer:
    """Seals and opens identities; `current` seals, every key in `keys` opens."""

    current: str
    keys: dict[str, bytes]

    @classmethod
    def from_key(cls, raw: str, *, old: str = "", env: str = "VAKTROM_IDENTITY_KEY") -> Sealer:
        key = _decode_key(raw, env)
        keys = {_key_id(key): key}
        for item in filter(None, (part.strip() for part in old.split(","))):
            older = _decode_key(item, "VAKTROM_IDENTITY_OLD_KEYS")
            keys.setdefault(_key_id(older), older)
        return cls(_key_id(key), keys)

    def seal(self, patient_id: str, identity: Identity) -> tuple[bytes, str]:
        nonce = os.urandom(_NONCE)
        box = AESGCM(self.keys[self.current]).encrypt(
            nonce, msgspec.json.encode(identity), patient_id.encode()
        )
        return nonce + box, self.current

    def open(self, patient_id: str, sealed: bytes, key_id: str) -> Identity:
        key = self.keys.get(key_id)
        if key is None:
            raise IdentityError(
                f"identity sealed with key {key_id}, which is not configured (VAKTROM_IDENTITY_OLD_KEYS)"
            )
        try:
            plain = AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], patient_id.encode())
        except InvalidTag as exc:
            raise IdentityError(
                "a sealed identity did not open: it was altered or belongs to another patient"
            ) from exc
        return msgspec.json.decode(plain, type=Identity)

    def digest(self, national_id: str) -> bytes:
        """The keyed digest the registry looks a number up by (same number, same digest, under one key)."""
        return hmac.new(self.keys[self.current], b"nin:" + national_id.encode(), hashlib.sha256).digest()
