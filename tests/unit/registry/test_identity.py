"""Identities sealed at rest: what opens, what does not, and the national identity number check."""

from __future__ import annotations

import base64
import os
from datetime import date

import pytest

from registry.identity import Identity, IdentityError, Sealer, check_national_id

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()
OTHER = base64.urlsafe_b64encode(bytes(range(1, 33))).decode()
PERSON = Identity(name="Kari Nordmann", birth_date=date(1950, 1, 1), national_id="01015012397")


def test_a_sealed_identity_opens_with_its_key_and_pseudonym() -> None:
    sealer = Sealer.from_key(KEY)
    sealed, key_id = sealer.seal("P-1", PERSON)
    assert b"Kari" not in sealed
    assert b"01015012397" not in sealed
    assert sealer.open("P-1", sealed, key_id) == PERSON


def test_the_same_identity_seals_differently_every_time() -> None:
    sealer = Sealer.from_key(KEY)
    assert sealer.seal("P-1", PERSON)[0] != sealer.seal("P-1", PERSON)[0]


def test_a_sealed_identity_moved_to_another_patient_does_not_open() -> None:
    sealer = Sealer.from_key(KEY)
    sealed, key_id = sealer.seal("P-1", PERSON)
    with pytest.raises(IdentityError, match="another patient"):
        sealer.open("P-2", sealed, key_id)


def test_a_tampered_identity_does_not_open() -> None:
    sealer = Sealer.from_key(KEY)
    sealed, key_id = sealer.seal("P-1", PERSON)
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(IdentityError, match="altered"):
        sealer.open("P-1", flipped, key_id)


def test_an_old_key_still_opens_what_it_sealed_and_new_rows_use_the_new_key() -> None:
    old = Sealer.from_key(OTHER)
    sealed, old_id = old.seal("P-1", PERSON)
    rotated = Sealer.from_key(KEY, old=OTHER)
    assert rotated.open("P-1", sealed, old_id) == PERSON
    assert rotated.seal("P-1", PERSON)[1] != old_id
    with pytest.raises(IdentityError, match="not configured"):
        Sealer.from_key(KEY).open("P-1", sealed, old_id)


@pytest.mark.parametrize(
    "raw", ["", "short", base64.urlsafe_b64encode(os.urandom(16)).decode(), "!!not base64!!"]
)
def test_a_key_that_is_not_32_bytes_is_a_configuration_error(raw: str) -> None:
    with pytest.raises(IdentityError, match="32 random bytes"):
        Sealer.from_key(raw)


def test_the_number_digest_is_stable_under_one_key_and_differs_between_numbers() -> None:
    sealer = Sealer.from_key(KEY)
    assert sealer.digest("01015012397") == sealer.digest("01015012397")
    assert sealer.digest("01015012397") != sealer.digest("01017045640")
    assert len(sealer.digest("01015012397")) == 32


@pytest.mark.parametrize("number", ["01015012397", "01017045640", "15038578968", "010150 12397"])
def test_valid_national_identity_numbers_pass(number: str) -> None:
    assert check_national_id(number) == number.replace(" ", "")


@pytest.mark.parametrize("position", range(11))
def test_a_typing_error_in_any_digit_is_caught(position: int) -> None:
    number = "01015012397"
    wrong = number[:position] + str((int(number[position]) + 1) % 10) + number[position + 1 :]
    with pytest.raises(IdentityError):
        check_national_id(wrong)


@pytest.mark.parametrize("number", ["0101501239", "010150123977", "0101501239x"])
def test_a_number_without_eleven_digits_is_refused(number: str) -> None:
    with pytest.raises(IdentityError, match="11 digits"):
        check_national_id(number)


def test_the_masked_number_shows_the_birth_date_part_only() -> None:
    assert PERSON.masked_id == "010150*****"
