"""What a kit's tablet asks its patient, and what the patient answers: daily symptom checks and
"please contact me", as `contracts/schemas/kit-answers.v1.json` has them (the simulator knows only
the published schema and the questionnaires' ids, link ids and codes, as a tablet app would).

Patients answer their condition's check once a day in a window after the morning measurements, and
sometimes skip it (the cohort's `skip` fault). A stable patient almost always answers "same" and
"no"; during an injected episode the patient reports what it does to them (heart-failure fluid gain:
more breathless, more ankle swelling, breathless lying flat; a COPD exacerbation: more breathless,
more and coloured sputum; a fever: feeling feverish; a heart-failure patient whose pressure has
fallen, a cuff `hypotension` episode: light-headed or dizzy). Now and then a patient asks to be contacted,
more often during an episode. What a patient reported that the monitor should find goes into the
ground truth (kit.py's `truth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time

import msgspec
import numpy as np

__all__ = [
    "CHECK_OF",
    "CHECK_WINDOW",
    "KIT_ANSWERS_SCHEMA",
    "Answered",
    "answer_check",
    "answers_payload",
    "contact_chance",
    "response",
]

KIT_ANSWERS_SCHEMA = "vaktrom.kit-answers.v1"
CHECK_OF = {"heart_failure": "hf-daily", "copd": "copd-check", "infection": "infection-check"}
CHECK_WINDOW = (time(9), time(11))  # after the morning weighing (07-10) and oximetry (08-10)

_STABLE_WORSE = 0.004  # a stable patient's odd day: "more breathless" without an episode
_STABLE_CONTACT = 0.005  # per day: a question about the equipment, the medication, ...
_EPISODE_CONTACT = 0.12  # per day while an episode is at half its strength or more
_STABLE_DIZZY = 0.003  # a stable patient's odd dizzy day
# dizzy while a hypotension episode (gateway_sim.cuff) is at half its strength or more: most patients,
# most days (symptomatic hypotension is common in heart failure after a diuretic is raised)
_LOW_BP_DIZZY = 0.75


@dataclass(frozen=True, slots=True)
class Answered:
    """One completed check: its items (linkId -> value) and the symptoms the patient reported."""

    questionnaire: str
    items: tuple[tuple[str, str | bool | int], ...]
    reported: tuple[str, ...]  # "breathless", "swelling", "orthopnoea", "sputum", "feverish", ...


def _pick(rng: np.random.Generator, chance: float) -> bool:
    return float(rng.random()) < chance


def answer_check(
    condition: str,
    episode_kind: str | None,
    strength: float,
    rng: np.random.Generator,
    *,
    hypotension: float = 0.0,
) -> Answered | None:
    """The patient's answers to their condition's check; `strength`: the episode's shape now (0-1);
    `hypotension`: a cuff hypotension episode's shape now (0-1). Each answer takes the same draws
    whatever the episodes, so an episode changes no other answer of the stream."""
    questionnaire = CHECK_OF.get(condition)
    if questionnaire is None:
        return None
    strong = strength >= 0.5
    if questionnaire == "hf-daily":
        fluid = strong and episode_kind == "fluid_gain"
        breathless = _pick(rng, 0.75 if fluid else _STABLE_WORSE)
        swelling = _pick(rng, 0.7 if fluid else 0.0)
        flat = _pick(rng, 0.4 if fluid else 0.0)
        if fluid and not (breathless or swelling or flat):
            swelling = _pick(rng, 0.6)
        dizzy = _pick(rng, _LOW_BP_DIZZY if hypotension >= 0.5 else _STABLE_DIZZY)
        items: tuple[tuple[str, str | bool | int], ...] = (
            ("breathless", "worse" if breathless else ("better" if _pick(rng, 0.05) else "same")),
            ("breathless-lying-flat", flat),
            ("ankle-swelling", "worse" if swelling else "same"),
            ("dizzy", dizzy),
        )
        signs = (("breathless", breathless), ("swelling", swelling), ("orthopnoea", flat), ("dizzy", dizzy))
        reported = [n for n, on in signs if on]
        return Answered(questionnaire, items, tuple(reported))
    if questionnaire == "copd-check":
        flare = strong and episode_kind == "copd_exacerbation"
        breathless = _pick(rng, 0.85 if flare else _STABLE_WORSE)
        more, coloured = _pick(rng, 0.7 if flare else 0.02), _pick(rng, 0.5 if flare else 0.01)
        puffs = int(rng.integers(4, 12)) if flare else int(rng.integers(0, 3))
        items = (
            ("breathless", "worse" if breathless else "same"),
            ("sputum-more", more),
            ("sputum-coloured", coloured),
            ("reliever-puffs", puffs),
        )
        return Answered(questionnaire, items, ("breathless",) if breathless else ())
    fever = strong and episode_kind == "fever"
    feverish = _pick(rng, 0.9 if fever else 0.01)
    items = (
        ("feverish", feverish),
        ("new-cough", _pick(rng, 0.3 if fever else 0.01)),
        ("confused", False),
        ("little-urine", False),
    )
    return Answered(questionnaire, items, ("feverish",) if feverish else ())


def contact_chance(strength: float) -> float:
    return _EPISODE_CONTACT if strength >= 0.5 else _STABLE_CONTACT


def _item(link_id: str, value: str | bool | int) -> dict[str, object]:
    if isinstance(value, bool):
        answer: dict[str, object] = {"valueBoolean": value}
    elif isinstance(value, int):
        answer = {"valueInteger": value}
    else:
        answer = {"valueCoding": {"code": value}}
    return {"linkId": link_id, "answer": [answer]}


def response(
    response_id: str, questionnaire: str, authored: str, items: tuple[tuple[str, str | bool | int], ...]
) -> dict[str, object]:
    return {
        "id": response_id,
        "questionnaire": questionnaire,
        "version": "1",
        "status": "completed",
        "authored": authored,
        "item": [_item(link_id, value) for link_id, value in items],
    }


def answers_payload(kit: str, seq: int, sent_at: datetime, responses: list[dict[str, object]]) -> bytes:
    return msgspec.json.encode(
        {
            "schema": KIT_ANSWERS_SCHEMA,
            "kit": kit,
            "seq": seq,
            "sent_at": sent_at.isoformat(timespec="milliseconds"),
            "responses": responses,
        }
    )
