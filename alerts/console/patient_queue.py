"""The queue a row per patient: every open problem (episode) of a patient together, the patient
ranked by their most urgent one.

`alerts.workers.escalation.queue` already returns the episodes in urgency order (severity, then the
share of the response-time target used, that is the waiting time, which escalation follows;
episodes resolved before review last). Grouping keeps that order: a patient's place is their first,
most urgent episode, and their problems are listed most urgent first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["by_patient"]


def by_patient(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per patient, in the order of each patient's most urgent episode: the patient's
    fields, `top` (the most urgent episode) and `problems` (all of them, most urgent first)."""
    patients: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = patients.get(row["patient_id"])
        if entry is None:
            patients[row["patient_id"]] = {
                "patient_id": row["patient_id"],
                "display_name": row.get("display_name"),
                "team_id": row.get("team_id"),
                "top": row,
                "problems": [row],
            }
        else:
            entry["problems"].append(row)
    for entry in patients.values():
        entry["escalated"] = max((p.get("escalation_step") or 0 for p in entry["problems"]), default=0)
    return list(patients.values())
