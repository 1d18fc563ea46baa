"""The bridge's check of a kit's acknowledgement: any bytes in, an ack record or a rejection out."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import (
    MAX_COMMAND_TEXT,
    CommandKind,
    KitCommandRequest,
    RejectReason,
    command_problem,
    reminder_id,
)
from ingest.kit_commands import KnownCommands, check_ack, to_kit
from ingest.registry import Assignment, KitEntry, Registry

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
TOPIC = "vaktrom/v1/kits/KIT-1/acks"
CID = uuid.UUID(int=1).hex


def _request(command_id: str = CID, patient: str = "P-1", sent_at: datetime = NOW - timedelta(hours=1),
             expires_at: datetime = NOW + timedelta(days=1)) -> KitCommandRequest:  # fmt: skip
    return KitCommandRequest(
        command_id=command_id, patient_id=patient, kind=CommandKind.MESSAGE, text="Ring oss",
        sent_at=sent_at, expires_at=expires_at, origin="alerts",
    )  # fmt: skip


def _known() -> KnownCommands:
    known = KnownCommands()
    known.remember(_request())
    return known


def _kit(kit_id: str, *assignments: Assignment, retired_at: datetime | None = None) -> KitEntry:
    return KitEntry(kit_id, "assigned", retired_at, assignments, {})


# KIT-1 with P-1 for weeks, KIT-2 with P-2
REGISTRY = Registry({
    "KIT-1": _kit("KIT-1", Assignment("P-1", NOW - timedelta(days=30), None)),
    "KIT-2": _kit("KIT-2", Assignment("P-2", NOW - timedelta(days=30), None)),
}, 0.0)  # fmt: skip


def _ack(**kw: object) -> bytes:
    body = {
        "schema": "vaktrom.kit-ack.v1",
        "kit": "KIT-1",
        "command_id": CID,
        "shown_at": NOW.isoformat(),
        **kw,
    }
    return json.dumps(body).encode()


def _check(payload: bytes, kit: str = "KIT-1", known: KnownCommands | None = None):  # type: ignore[no-untyped-def]
    return check_ack(
        topic=TOPIC, kit_id=kit, payload=payload, received_at=NOW, known=known or _known(), registry=REGISTRY
    )


def test_a_valid_ack_names_the_patient_the_command_went_to() -> None:
    """The ack record carries the patient the bridge remembered, not anything the kit said."""
    out = _check(_ack(read_at=(NOW + timedelta(minutes=1)).isoformat()))
    assert out.rejections == []
    assert out.ack is not None
    assert (out.ack.patient_id, out.ack.kit_id, out.ack.command_id) == ("P-1", "KIT-1", CID)
    assert out.record_count == 1


def test_an_ack_of_a_command_never_sent_is_unknown_command() -> None:
    """A command id the bridge did not relay is refused, with the reason code."""
    (rejection,) = _check(_ack(command_id=uuid.uuid4().hex)).rejections
    assert rejection.reason is RejectReason.UNKNOWN_COMMAND


def test_an_ack_of_another_kits_command_is_foreign_command() -> None:
    """KIT-2 cannot acknowledge (or learn anything about) KIT-1's command."""
    known = _known()
    payload = _ack(kit="KIT-2")
    (rejection,) = check_ack(
        topic="vaktrom/v1/kits/KIT-2/acks",
        kit_id="KIT-2",
        payload=payload,
        received_at=NOW,
        known=known,
        registry=REGISTRY,
    ).rejections
    assert rejection.reason is RejectReason.FOREIGN_COMMAND


def test_an_ack_naming_another_kit_than_its_topic_is_topic_mismatch() -> None:
    (rejection,) = _check(_ack(kit="KIT-2")).rejections
    assert rejection.reason is RejectReason.TOPIC_MISMATCH


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_become_an_ack_or_a_rejection_never_a_crash(payload: bytes) -> None:
    """Hostile bytes on the acks channel: exactly one record, never an exception."""
    out = _check(payload)
    assert (out.ack is not None) + len(out.rejections) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["kit", "command_id", "shown_at", "read_at", "extra"]), st.text(max_size=80)
    )
)
def test_any_fields_become_an_ack_or_a_rejection(fields: dict[str, str]) -> None:
    """Every field replaced with any text: still one record, and an ack only for the known command."""
    out = _check(_ack(**fields))
    assert (out.ack is not None) + len(out.rejections) == 1
    if out.ack is not None:
        assert out.ack.command_id == CID


def test_the_known_commands_forget_the_oldest_first() -> None:
    known = KnownCommands(limit=2)
    for i in range(3):
        assert known.remember(_request(f"{i:032x}"))
    assert not known.remember(_request(f"{2:032x}"))  # known already
    assert known.get(f"{0:032x}") is None
    found = known.get(f"{2:032x}")
    assert found is not None
    assert found.patient_id == "P-1"


def test_the_kit_gets_the_command_without_the_patient() -> None:
    request = KitCommandRequest(
        command_id=CID, patient_id="P-1", kind=CommandKind.MESSAGE, text="Hei", sent_at=NOW,
        expires_at=NOW + timedelta(days=1), origin="alerts",
    )  # fmt: skip
    command = to_kit(request, "KIT-1")
    assert (command.kit, command.command_id, command.text) == ("KIT-1", CID, "Hei")
    assert not hasattr(command, "patient_id")


def test_message_text_limits_at_the_boundary() -> None:
    """500 characters go, 501 do not; empty, blank and control characters do not."""
    assert command_problem("x" * MAX_COMMAND_TEXT) is None
    assert command_problem("x" * (MAX_COMMAND_TEXT + 1)) is not None
    assert command_problem("Ring 22 33 44 55 i dag") is None
    for control in ("\u202e", "\u2066", "\u200f"):  # "Ring 55 44 33 22" shown as written backwards
        assert "text-direction" in (command_problem(f"Ring {control}22 33 44 55") or "")
    assert command_problem("") is not None
    assert command_problem("   ") is not None
    assert command_problem("line one\nline two") is None
    assert command_problem("bell\x07") is not None
    assert command_problem("c1\x85") is not None


def test_a_reminder_id_is_the_same_for_the_same_window_and_differs_for_another() -> None:
    due = NOW
    first = reminder_id(patient_id="P-1", metric="body_weight", due=due)
    assert first == reminder_id(patient_id="P-1", metric="body_weight", due=due)
    assert first != reminder_id(patient_id="P-1", metric="body_weight", due=due + timedelta(days=1))
    assert first != reminder_id(patient_id="P-2", metric="body_weight", due=due)


_T0 = datetime(2026, 1, 1, tzinfo=UTC)


@st.composite
def _registries(draw: st.DrawFn) -> Registry:
    """Kits handed between a few patients over days: assignments sorted, never overlapping, some
    kits retired."""
    kits = {}
    for k in range(draw(st.integers(0, 6))):
        t, assignments = _T0, []
        for _ in range(draw(st.integers(0, 4))):
            start = t + timedelta(hours=draw(st.integers(0, 48)))
            length = draw(st.one_of(st.none(), st.integers(1, 72)))
            end = None if length is None else start + timedelta(hours=length)
            assignments.append(Assignment(draw(st.sampled_from(["P-A", "P-B", "P-C"])), start, end))
            if end is None:
                break
            t = end
        retired = draw(st.one_of(st.none(), st.integers(0, 400).map(lambda h: _T0 + timedelta(hours=h))))
        kits[f"K{k}"] = KitEntry(f"K{k}", "assigned", retired, tuple(assignments), {})
    return Registry(kits, 0.0)


@given(_registries(), st.sampled_from(["P-A", "P-B", "P-C", "P-none"]), st.integers(-10, 500))
def test_the_kit_of_a_patient_is_the_one_a_scan_of_every_kit_finds(
    registry: Registry, patient: str, hour: int
) -> None:
    """The index by patient answers as the scan of every kit it replaced (which cost 0.36 ms a command
    with 10,000 kits, at every bridge start for 48 h of commands)."""
    at = _T0 + timedelta(hours=hour)
    scanned = [kit.kit_id for kit in registry.kits.values() if kit.patient_at(at) == patient]
    assert registry.kit_of(patient, at) == (scanned[0] if scanned else None)


def _ack_from(kit: str, known: KnownCommands, registry: Registry, received_at: datetime):  # type: ignore[no-untyped-def]
    return check_ack(
        topic=f"vaktrom/v1/kits/{kit}/acks",
        kit_id=kit,
        payload=_ack(kit=kit),
        received_at=received_at,
        known=known,
        registry=registry,
    )


def test_after_a_kit_swap_the_old_kit_and_the_new_one_may_acknowledge_and_no_other() -> None:
    """The command went out while the patient had KIT-1; KIT-2 replaced it. A bridge that read the
    command back cannot know which kit the relay sent it to: either may acknowledge it (the old kit
    was returned to stock, not given on), a kit of another patient may not."""
    swap = NOW - timedelta(minutes=30)
    registry = Registry({
        "KIT-1": _kit("KIT-1", Assignment("P-1", NOW - timedelta(days=9), swap)),
        "KIT-2": _kit("KIT-2", Assignment("P-1", swap, None)),
        "KIT-3": _kit("KIT-3", Assignment("P-2", NOW - timedelta(days=9), None)),
    }, 0.0)  # fmt: skip
    known = _known()  # sent an hour ago
    new = _ack_from("KIT-2", known, registry, NOW)
    assert new.ack is not None
    assert new.ack.patient_id == "P-1"
    (other,) = _ack_from("KIT-3", known, registry, NOW).rejections
    assert other.reason is RejectReason.FOREIGN_COMMAND


def test_a_kit_handed_on_to_another_patient_cannot_mark_the_first_patients_message_read() -> None:
    """KIT-1 showed P-1's message, then went to P-2 (perhaps another team's) without being wiped: an
    ack from it now would tell P-1's nurse "read" when P-2 read it. Refused."""
    handover = NOW - timedelta(minutes=30)
    registry = Registry({
        "KIT-1": _kit("KIT-1", Assignment("P-1", NOW - timedelta(days=9), handover),
                      Assignment("P-2", handover, None)),
    }, 0.0)  # fmt: skip
    (refused,) = _ack_from("KIT-1", _known(), registry, NOW).rejections
    assert refused.reason is RejectReason.FOREIGN_COMMAND
    assert "no longer with the patient" in refused.detail


def test_a_kit_the_patient_got_after_the_command_expired_may_not_acknowledge_it() -> None:
    expired = NOW - timedelta(hours=20)
    registry = Registry({
        "KIT-1": _kit("KIT-1", Assignment("P-1", NOW - timedelta(days=9), expired - timedelta(hours=1))),
        "KIT-3": _kit("KIT-3", Assignment("P-1", expired + timedelta(hours=2), None)),
    }, 0.0)  # fmt: skip
    known = KnownCommands()
    known.remember(_request(sent_at=expired - timedelta(hours=5), expires_at=expired))
    (refused,) = _ack_from("KIT-3", known, registry, NOW).rejections
    assert refused.reason is RejectReason.FOREIGN_COMMAND


def test_without_a_registry_no_ack_is_taken() -> None:
    (refused,) = check_ack(
        topic=TOPIC, kit_id="KIT-1", payload=_ack(), received_at=NOW, known=_known(), registry=None
    ).rejections
    assert refused.reason is RejectReason.FOREIGN_COMMAND
