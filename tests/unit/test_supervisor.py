"""`make up`'s supervisor: a stage that exits is started again with back-off, the others keep running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
from supervisor import RestartPolicy, StageState, Supervisor, read_status


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptStage:
    """A stage that is a real child process running a one-line script."""

    def __init__(self, name: str, script: str) -> None:
        self.name = name
        self.script = script
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, base: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", self.script])
        self.starts += 1


def _wait_exit(stage: ScriptStage) -> None:
    assert stage.process is not None
    stage.process.wait(timeout=10)


def test_back_off_doubles_for_quick_exits_and_resets_after_a_stable_run() -> None:
    """Quick exits wait 1, 2, 4 s; a run longer than the stable time starts again at 1 s."""
    state = StageState("archive", RestartPolicy(first_delay_s=1, max_delay_s=4, limit=10, stable_after_s=60))
    delays = []
    now = 0.0
    for _ in range(4):
        state.started_at = now
        now += 5
        delays.append(state.exited(1, now))
    assert delays == [1, 2, 4, 4]
    state.started_at = now
    now += 60  # exactly the stable time
    assert state.exited(1, now) == 1


def test_the_limit_gives_up_only_within_the_window() -> None:
    """The sixth exit within ten minutes gives up; spread over more than the window, it never does."""
    policy = RestartPolicy(limit=5, window_s=600)
    crowded = StageState("monitor", policy)
    for i in range(5):
        crowded.started_at = i * 10.0
        assert crowded.exited(1, i * 10.0 + 1) is not None
    crowded.started_at = 60.0
    assert crowded.exited(1, 61.0) is None
    assert crowded.gave_up
    assert crowded.state(61.0) == "failed"

    spread = StageState("monitor", policy)
    for i in range(20):
        spread.started_at = i * 200.0
        assert spread.exited(1, i * 200.0 + 1) is not None, f"gave up at exit {i + 1}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first_delay_s": 0}, "positive"),
        ({"first_delay_s": 10, "max_delay_s": 5}, "first no larger"),
        ({"limit": -1}, "positive"),
    ],
)
def test_a_nonsensical_policy_is_refused(kwargs: dict[str, float], message: str) -> None:
    """Delays and limits that cannot work fail when the policy is made, not at the first crash."""
    with pytest.raises(ValueError, match=message):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


def test_an_exiting_stage_is_restarted_while_the_others_keep_running(tmp_path: Path) -> None:
    """A stage that exits with an error is started again after its delay; a healthy one is untouched."""
    clock = FakeClock()
    lines: list[str] = []
    status = tmp_path / "run" / "pipeline.json"
    sup = Supervisor(env={}, status_file=status, say=lines.append, clock=clock)
    crashing = ScriptStage("archive", "raise SystemExit(3)")
    steady = ScriptStage("bridge", "import time; time.sleep(60)")
    for stage in (crashing, steady):
        stage.start({})
        sup.add(stage)
    try:
        _wait_exit(crashing)
        sup.tick()
        assert lines == ["up: archive exited with 3; restarting in 1 s (see .local/logs/archive.log)"]
        assert read_status(status)["archive"]["state"].startswith("restarting")  # type: ignore[index]
        sup.tick()
        assert crashing.starts == 1, "restarted before its delay"
        clock.now += 1
        sup.tick()
        assert crashing.starts == 2
        assert steady.starts == 1
        assert steady.process is not None
        assert steady.process.poll() is None
        stages = read_status(status)
        assert stages is not None
        assert stages["archive"]["restarts"] == 1
        assert stages["archive"]["last_exit"] == 3
        assert stages["bridge"]["state"] == "running"
        assert stages["bridge"]["restarts"] == 0
    finally:
        for stage in (crashing, steady):
            if stage.process is not None and stage.process.poll() is None:
                stage.process.kill()
                stage.process.wait()


def test_a_stage_that_keeps_crashing_is_left_stopped_and_said_so(tmp_path: Path) -> None:
    """Past the limit the stage stays down with a message that says what to do; no further starts."""
    clock = FakeClock()
    lines: list[str] = []
    sup = Supervisor(
        env={},
        status_file=tmp_path / "pipeline.json",
        policy=RestartPolicy(limit=2, window_s=600),
        say=lines.append,
        clock=clock,
    )
    stage = ScriptStage("monitor", "raise SystemExit(1)")
    stage.start({})
    sup.add(stage)
    for _ in range(3):
        _wait_exit(stage)
        sup.tick()
        clock.now += 120
        sup.tick()
    assert stage.starts == 3
    assert "leaving it stopped" in lines[-1]
    assert "make up" in lines[-1]
    assert sup.states["monitor"].state(clock.now) == "failed"
    clock.now += 3600
    sup.tick()
    assert stage.starts == 3


def test_stages_stopped_on_purpose_are_not_restarted(tmp_path: Path) -> None:
    """Ctrl-C stops every stage; the supervisor must not start them again while they stop."""
    clock = FakeClock()
    sup = Supervisor(env={}, status_file=tmp_path / "pipeline.json", say=lambda _: None, clock=clock)
    stage = ScriptStage("alerts", "import time; time.sleep(60)")
    stage.start({})
    sup.add(stage)
    sup.stopping(["alerts"])
    assert stage.process is not None
    stage.process.terminate()
    stage.process.wait(timeout=10)
    clock.now += 120
    sup.tick()
    assert stage.starts == 1


def test_status_of_a_supervisor_that_is_gone_is_not_shown(tmp_path: Path) -> None:
    """A status file left by a `make up` that no longer runs reads as 'not running'."""
    status = tmp_path / "pipeline.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status.write_text(f'{{"supervisor": {dead.pid}, "stages": {{"bridge": {{}}}}}}')
    assert read_status(status) is None
    status.write_text("not json")
    assert read_status(status) is None
    assert read_status(tmp_path / "missing.json") is None
