"""Pure builders of the FHIR resources for what surrounds the measurements: the kit's devices
(Device) and the patient's questionnaire answers (QuestionnaireResponse). No database, no HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from contracts import QUESTIONNAIRES
from streams.archive.fhir import DEVICE_SYSTEM, PATIENT_SYSTEM

__all__ = ["ANSWER_SYSTEM", "QUESTIONNAIRE_BASE", "device", "questionnaire", "questionnaire_response"]

ANSWER_SYSTEM = "urn:vaktrom:answer-id"
ANSWER_CODES = "urn:vaktrom:answer-code"
KIT_SYSTEM = "urn:vaktrom:kit"
# Vaktrom's questionnaires (contracts/_questionnaires.py) by canonical name; not published as FHIR
# Questionnaire resources (yet), so the link is an identifying URN.
QUESTIONNAIRE_BASE = "urn:vaktrom:questionnaire:"


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def device(device_id: str, *, kit_id: str, kind: str, patient_id: str | None) -> dict[str, Any]:
    """A kit's measuring device by serial (the identifier the Observations' `device` carries); its
    patient while the kit is assigned to one."""
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id,
        "identifier": [
            {"system": DEVICE_SYSTEM, "value": device_id},
            {"system": KIT_SYSTEM, "value": kit_id},
        ],
        "status": "active",
        "serialNumber": device_id,
        "deviceName": [{"name": kind, "type": "user-friendly-name"}],
        "type": {"text": kind},
    }
    if patient_id is not None:
        resource["patient"] = {
            "reference": f"Patient/{patient_id}",
            "identifier": {"system": PATIENT_SYSTEM, "value": patient_id},
        }
    return resource


def _answer(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, int):
        return {"valueInteger": value}
    return {"valueCoding": {"system": ANSWER_CODES, "code": str(value)}}


def questionnaire_response(answer: Any, *, patient_id: str) -> dict[str, Any]:
    """A stored questionnaire answer (`streams.archive.read.StoredAnswer`) as a completed
    QuestionnaireResponse, each item with the question's text as the questionnaire asks it."""
    questionnaire = QUESTIONNAIRES.get(answer.questionnaire)
    items = []
    for item in answer.items:
        link_id = str(item.get("link_id"))
        value = next((item[k] for k in ("code", "boolean", "integer") if k in item), None)
        if value is None:
            continue
        entry: dict[str, Any] = {"linkId": link_id, "answer": [_answer(value)]}
        question = questionnaire.question(link_id) if questionnaire is not None else None
        if question is not None:
            entry["text"] = question.text
        items.append(entry)
    resource: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": answer.answer_id,
        "identifier": {"system": ANSWER_SYSTEM, "value": answer.answer_id},
        "questionnaire": f"{QUESTIONNAIRE_BASE}{answer.questionnaire}|{answer.version}",
        "status": "completed",
        "subject": {
            "reference": f"Patient/{patient_id}",
            "identifier": {"system": PATIENT_SYSTEM, "value": patient_id},
        },
        "authored": _instant(answer.authored_at),
    }
    if items:
        resource["item"] = items
    return resource


def questionnaire(questionnaire_id: str) -> dict[str, Any]:
    """One of Vaktrom's questionnaires (contracts/_questionnaires.py) as a FHIR Questionnaire, the
    definition its QuestionnaireResponses name and are checked against."""
    spec = QUESTIONNAIRES[questionnaire_id]
    items = []
    for q in spec.questions:
        item: dict[str, Any] = {
            "linkId": q.link_id, "text": q.text, "type": q.kind if q.kind != "coding" else "choice",
            "required": q.link_id in spec.required,
        }  # fmt: skip
        if q.kind == "coding":
            item["answerOption"] = [{"valueCoding": {"system": ANSWER_CODES, "code": c}} for c in q.codes]
        if q.kind == "integer":
            item["answerOption"] = [{"valueInteger": n} for n in range(q.low, q.high + 1)]
        items.append(item)
    return {
        "resourceType": "Questionnaire",
        "id": spec.id,
        "url": f"{QUESTIONNAIRE_BASE}{spec.id}",
        "version": spec.version,
        "name": spec.id.replace("-", "_").upper(),
        "title": spec.title,
        "status": "active",
        "subjectType": ["Patient"],
        "item": items,
    }
