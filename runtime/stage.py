"""Running a stage as a process: one command line, log format, settings load, signal handling and
set of exit codes for every long-running stage.

    def main(argv=None) -> int:
        return run_stage(
            prog="vaktrom-archive", description="...", settings=(KafkaSettings, ..., ArchiveSettings),
            build=lambda kafka, database, settings: Archive(...), logger="streams.archive", argv=argv,
        )

Exit codes: 0 stopped cleanly (SIGTERM or Ctrl-C), 2 bad configuration (a `ConfigError`, at
loading or at start, e.g. a taken metrics port), 3 a service could not be reached (a retriable
`StageError`: starting again later may help), 1 anything else.

Check mode (`--check`, or VAKTROM_CHECK_ONLY=1 for a command line one cannot extend, such as a
compose service's): load and validate the settings, run the stage's `check` (the files it needs are
there, its directories writable), print one line and exit 0, or 2 with what is wrong. Nothing is
built and nothing is connected to. The image check (tests/unit/test_image.py) runs every compose
service this way inside a copy of what infra/Dockerfile copies; the infra scripts compose runs
honour the same variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Protocol

from runtime.settings import ConfigError, Settings

__all__ = ["CHECK_ONLY_ENV", "Stage", "StageError", "check_only", "run_stage"]

CHECK_ONLY_ENV = "VAKTROM_CHECK_ONLY"


def check_only(environ: Mapping[str, str] | None = None) -> bool:
    """True when VAKTROM_CHECK_ONLY asks a process to check its configuration and files only."""
    environ = os.environ if environ is None else environ
    return environ.get(CHECK_ONLY_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class StageError(Exception):
    """The stage cannot do its job; `retriable` says whether starting again later may help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class Stage(Protocol):
    def start(self) -> None: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...


def run_stage(
    *,
    prog: str,
    description: str,
    settings: Sequence[type[Settings]],
    build: Callable[..., Stage],
    logger: str,
    argv: Sequence[str] | None = None,
    check: Callable[..., None] | None = None,
) -> int:
    """Parse the command line, load `settings` (in order) into `build`, run the stage until a signal.

    `check` gets the loaded settings in check mode and raises `ConfigError` for a missing file or a
    directory the stage cannot write; the settings' own validation has run before it."""
    lines = [f"  {env:38} {text}" for cls in settings for env, text in cls.variables().items()]
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="environment:\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"check the settings and the files they name, connect to nothing, exit ({CHECK_ONLY_ENV}=1 too)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its debug lines carry record values
    try:
        loaded = [cls.from_env() for cls in settings]
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    log = logging.getLogger(logger)
    for one in loaded:
        for env, value in one.describe():
            log.debug("setting %s=%s", env, value)
    if args.check or check_only():
        return _check(prog, check, loaded)
    stage = build(*loaded)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: %s received; finishing what is in hand and stopping", prog, signal.Signals(signum).name)
        stage.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        stage.start()
        stage.run()
    except ConfigError as exc:  # found only when starting, e.g. the metrics port is taken
        print(f"{prog}: {exc}", file=sys.stderr)
        stage.stop()
        return 2
    except StageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        stage.stop()
        return 3 if exc.retriable else 1
    return 0


def _check(prog: str, check: Callable[..., None] | None, loaded: Sequence[Settings]) -> int:
    try:
        if check is not None:
            check(*loaded)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(f"{prog}: check only: settings valid, files found; nothing started", file=sys.stderr)
    return 0
