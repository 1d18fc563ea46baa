"""Process plumbing for the local stack: the `Service` base class and /proc helpers.

A service started here writes a pid file; `stop` only ever signals a process whose pid file we
wrote *and* whose command line names our state folder, so `down` never touches a system broker or
database that happens to run on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "REPO",
    "Health",
    "Service",
    "StackError",
    "as_user",
    "chown_tree",
    "cmdline",
    "log_tail",
    "pid_alive",
    "service_user",
    "tree_memory_kib",
]

REPO = Path(__file__).resolve().parent.parent


class StackError(Exception):
    """A service could not be configured, started or reached; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str


# ------------------------------------------------------------------ process helpers
def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        return "X"
    return "?"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the parent pid is the 2nd field after the parenthesised command name
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def tree_memory_kib(pid: int) -> tuple[int, int]:
    """(current RSS, sum of peak RSS) in KiB over a process and its children."""
    rss = hwm = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
        except OSError:
            continue
    return rss, hwm


def service_user(name: str) -> pwd.struct_passwd | None:
    """The system user a service drops to when we run as root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise StackError(
            f"running as root, but there is no '{name}' user; run infra/bootstrap first"
        ) from None


def chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def as_user(cmd: list[str], user: pwd.struct_passwd | None) -> list[str]:
    return cmd if user is None else ["runuser", "-u", user.pw_name, "--", *cmd]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


class Service:
    """Common start/stop/status plumbing; subclasses fill in the specifics."""

    name: str = ""

    def __init__(self, *, state: Path, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.home = state / self.name
        self.pid_file = state / "run" / f"{self.name}.pid"
        self.log = state / "logs" / f"{self.name}.log"

    # -- what subclasses provide
    def prepare(self) -> None:
        """Write configuration and initialise storage; idempotent."""

    def spawn(self) -> int:
        raise NotImplementedError

    def check(self, timeout: float) -> Health:
        raise NotImplementedError

    # -- shared
    def pid(self) -> int | None:
        """The pid of the process we started, if it is still ours and alive."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not pid_alive(pid) or str(self.state) not in cmdline(pid):
            return None
        return pid

    def start(self, *, timeout: float) -> float:
        """Start (unless running) and wait until really ready; returns seconds to ready."""
        began = time.monotonic()
        pid = self.pid()
        if pid is None:
            self.home.mkdir(parents=True, exist_ok=True)
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self.prepare()
            pid = self.spawn()
            self.pid_file.write_text(f"{pid}\n")
        self.wait_ready(pid, timeout=timeout)
        self.after_ready()
        return time.monotonic() - began

    def after_ready(self) -> None:
        """Create what the stages need (topics, database, schema); idempotent."""

    def wait_ready(self, pid: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = Health(False, "not checked yet")
        while time.monotonic() < deadline:
            # the pid, not self.pid(): right after the fork the command line is still Python's
            if not pid_alive(pid):
                raise StackError(
                    f"{self.name} exited during start-up. Last lines of {self.log}:\n{log_tail(self.log)}"
                )
            last = self.check(timeout=min(3.0, max(0.5, deadline - time.monotonic())))
            if last.ok:
                return
            time.sleep(0.25)
        raise StackError(
            f"{self.name} did not become ready within {timeout:.0f} s ({last.detail}). "
            f"Last lines of {self.log}:\n{log_tail(self.log)}"
        )

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop our process (SIGTERM, then SIGKILL after `timeout`); False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """SIGKILL our process and its children at once, as a power cut or the OOM killer would; no
        clean shutdown, no flush. For crash tests: `up` afterwards recovers from what is on disk.
        False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        tree = [pid, *_children(pid)]
        for p in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(pid_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    def _popen(self, cmd: list[str], *, env: dict[str, str] | None = None) -> int:
        with self.log.open("ab") as out:
            out.write(f"\n---- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
                env=env,
            )
        # Reap the child when it exits so it never lingers as a zombie that looks alive.
        threading.Thread(target=proc.wait, daemon=True).start()
        return proc.pid
