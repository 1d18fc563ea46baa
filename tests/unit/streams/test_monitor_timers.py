"""The deadline timer keeps one live entry per patient: the earliest time asked since it last came
up. Before, every record write pushed an entry (a day ahead), and the heap grew without bound in
the soak (`bench/soak.py`)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import Metric
from streams.monitor.timers import Timer
from tests.unit.streams.test_monitor_agent import NAMES, T0, Harness, reading

_PATIENTS = st.sampled_from([b"a", b"b", b"c"])
_TIMES = st.floats(min_value=0, max_value=100, allow_nan=False)
_STEPS = st.lists(
    st.one_of(st.tuples(st.just("ask"), _PATIENTS, st.none() | _TIMES), st.tuples(st.just("pop"), _TIMES)),
    max_size=60,
)


@settings(max_examples=300)
@given(start=st.dictionaries(_PATIENTS, _TIMES), steps=_STEPS)
def test_the_timer_gives_each_patient_at_the_earliest_time_asked_once(
    start: dict[bytes, float], steps: list[tuple]
) -> None:
    timer, model = Timer(start), dict(start)  # model: patient -> the earliest time asked, not yet given
    for step in steps:
        if step[0] == "ask":
            _, patient, wake = step
            timer.ask(patient, wake)
            if wake is not None:
                model[patient] = min(wake, model.get(patient, wake))
        else:
            now = step[1]
            given_now = []
            while (due := timer.pop(now)) is not None:
                given_now.append(due)
            expected = sorted((wake, p) for p, wake in model.items() if wake <= now)
            assert given_now == expected
            for _, patient in given_now:
                del model[patient]
            assert not timer.due(now)
        assert len(timer) == len(model)
        assert timer.entries <= 2 * len(steps) + len(start)


def test_a_patient_sending_all_day_holds_one_timer_entry() -> None:
    """Every reading moves the "kit silent" deadline on; the timer must not keep each one."""
    harness = Harness()
    for i in range(400):
        at = T0 + timedelta(minutes=3 * i)
        key, raw = reading("P1", Metric.PULSE if i % 2 else Metric.SPO2, 70.0 if i % 2 else 96.0, at)
        harness.put(NAMES["measurements"], key, raw, 0, None)
        if i % 50 == 0:
            harness.put(NAMES["ticks"], None, b"", 0, None)
    timer = harness.processor.timers[0]
    assert len(timer) == 1
    assert timer.entries <= 3
