"""The application image without Docker: what infra/Dockerfile copies, installed as it installs it,
and each docker-compose.yml service's command as the container would run it.

There is no Docker engine where the tests run, so `assemble` reads the Dockerfile's WORKDIR, ENV and
COPY lines (and .dockerignore) and copies exactly those files into a folder; `install` makes a
virtualenv there and runs the Dockerfile's `pip install .`, offline; `service_command` reads a
compose service (command, environment, volumes) and maps its container paths into the folder. What
the image lacks is then missing here too: a stage that imports it or a script that opens it fails.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sysconfig
import venv
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "Image",
    "ServiceRun",
    "assemble",
    "compose_env",
    "install",
    "run_check",
    "seed",
    "service_command",
]

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z0-9_]+)(?:(:?[-?])([^}]*))?\}")


@dataclass
class Image:
    """The image's file system under `root`: /app (WORKDIR) at `root/app`."""

    root: Path
    workdir: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))
    env: dict[str, str] = field(default_factory=dict)
    install: list[list[str]] = field(default_factory=list)  # RUN lines that pip install

    def path(self, container: str | PurePosixPath) -> Path:
        """Where a path of the container is in this folder."""
        absolute = self.workdir / container
        return self.root / str(absolute).lstrip("/")

    @property
    def app(self) -> Path:
        return self.path(self.workdir)

    @property
    def venv(self) -> Path:
        return self.root / "venv"


def _ignored(patterns: list[str]) -> re.Pattern[str] | None:
    """.dockerignore's patterns as one regex over a file's relative path (or a parent of it)."""
    parts = []
    for line in patterns:
        pattern = line.strip().strip("/")
        if not pattern or pattern.startswith("#"):
            continue
        assert not pattern.startswith("!"), f".dockerignore exception {pattern}: teach _ignored about it"
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        parts.append(regex.replace(r"\?", "[^/]"))
    return re.compile(rf"(?:{'|'.join(parts)})(?:/.*)?") if parts else None


def assemble(repo: Path, root: Path, *, dockerfile: str, dockerignore: str = "") -> Image:
    """Copy what `dockerfile`'s COPY lines take from `repo` (minus `dockerignore`) into `root`."""
    image = Image(root=root)
    ignored = _ignored(dockerignore.splitlines())
    text = re.sub(r"\\\n", " ", dockerfile)
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        instruction, args = words[0].upper(), words[1:]
        if instruction == "WORKDIR":
            image.workdir = image.workdir / args[0]
            image.app.mkdir(parents=True, exist_ok=True)
        elif instruction == "ENV":
            for arg in args:
                name, _, value = arg.partition("=")
                image.env[name] = value
        elif instruction == "RUN" and "pip" in args and "install" in args:
            image.install.append(args)
        elif instruction == "COPY":
            assert not any(a.startswith("--") for a in args), f"COPY option not understood: {line}"
            *sources, dest = args
            for source in sources:
                _copy(repo, source, image.path(dest), dest.endswith("/"), ignored)
    return image


def _copy(repo: Path, source: str, target: Path, into: bool, ignored: re.Pattern[str] | None) -> None:
    origin = repo / source
    assert origin.exists(), f"COPY {source}: no such file in the build context"
    files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
    for path in files:
        relative = path.relative_to(repo).as_posix()
        if ignored is not None and ignored.fullmatch(relative):
            continue
        if origin.is_file():
            out = target / path.name if into else target
        else:
            out = target / path.relative_to(origin)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)


def install(image: Image) -> None:
    """Make the image's Python (a virtualenv) and run its `pip install .` in the WORKDIR.

    Offline: the package is built with the build backend the project's own virtualenv holds
    (`--no-build-isolation`; its dev extras carry setuptools>=77, as [build-system] asks) and
    installed without its dependencies, which the virtualenv reads from the running interpreter's
    site-packages through a .pth line (a plain path: the editable install's finder there is not run,
    so `vaktrom` comes from this install only)."""
    assert image.install == [["pip", "install", "."]], (
        f"infra/Dockerfile installs with {image.install}; teach tests/support/image.py the new way"
    )
    venv.EnvBuilder(with_pip=False, symlinks=True).create(image.venv)
    site = next((image.venv / "lib").glob("python3*/site-packages"))
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "vaktrom-image-deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    command = [str(image.venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "."]
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--ignore-installed"]
    done = subprocess.run(
        [*command, *offline], cwd=image.app, env=_env(image, {}), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"pip install . in the image failed:\n{done.stdout}\n{done.stderr}"


def _env(image: Image, extra: dict[str, str]) -> dict[str, str]:
    """A container's environment: the image's ENV, its user's home, its Python first on PATH."""
    path = f"{image.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    return {"PATH": path, "HOME": str(image.app), "LANG": "C.UTF-8", **image.env, **extra}


def compose_env(example: str) -> dict[str, str]:
    """Values for every variable .env.example names: its own when set, else a fresh secret (the
    identity key as 32 bytes of URL-safe base64, the TLS names as a host name)."""
    values = {}
    for line in example.splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        values[name] = value or secrets.token_urlsafe(24)
    values["VAKTROM_IDENTITY_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
    values["MQTT_TLS_HOSTS"] = "mqtt.vaktrom.example.org,10.0.0.8"
    for optional in ("VAKTROM_ALERTS_NOTIFY_TEAM", "VAKTROM_ALERTS_NOTIFY_COORDINATOR",
                     "VAKTROM_ALERTS_NOTIFY_PHYSICIAN", "VAKTROM_ALERTS_SMTP_HOST",
                     "VAKTROM_ALERTS_PUBLIC_URL", "VAKTROM_ALERTS_TRUSTED_PROXIES",
                     # single sign-on and the record outbox: off, as .env.example leaves them
                     "VAKTROM_OIDC_ISSUER", "VAKTROM_OIDC_CLIENT_ID", "VAKTROM_OIDC_CLIENT_SECRET",
                     "VAKTROM_OIDC_ROLE_MAP", "VAKTROM_OIDC_LABEL", "VAKTROM_ALERTS_EHR_URL",
                     "VAKTROM_ALERTS_EHR_SIGNING_KEY"):  # fmt: skip
        values[optional] = ""
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}` and `$$`."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, kind, rest = match.groups()
        found = env.get(name, "")
        if kind in (":?", "?") and not found:
            raise AssertionError(f"compose needs {name}: {rest}")
        if kind == "-":  # the default only when unset: set but empty stays empty
            return env.get(name, rest)
        return found or (rest if kind == ":-" else "")

    return _VARIABLE.sub(one, value)


@dataclass(frozen=True)
class ServiceRun:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def service_command(image: Image, service: dict[str, Any], env: dict[str, str]) -> ServiceRun:
    """A compose service's command line and environment as the image would run it, its volumes in
    `image.root/volumes/NAME` and every container path in them mapped into the folder."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        host = image.root / "volumes" / source if not source.startswith(".") else Path(source).resolve()
        host.mkdir(parents=True, exist_ok=True)
        mounts[target] = host

    def local(text: str) -> str:
        text = interpolate(str(text), env)
        for target in sorted(mounts, key=len, reverse=True):
            text = re.sub(rf"(?<![\w/.-]){re.escape(target)}(?=/|\s|$|')", str(mounts[target]), text)
        return text

    command = service.get("command")
    entrypoint = service.get("entrypoint")
    assert entrypoint is None, "the image has no ENTRYPOINT: a service names its whole command"
    assert command, "the image has no CMD: a service names its command"
    argv = [local(c) for c in (shlex.split(command) if isinstance(command, str) else command)]
    environment = {k: local(v) for k, v in (service.get("environment") or {}).items()}
    return ServiceRun(argv=argv, env=_env(image, environment), cwd=image.app)


def run_check(run: ServiceRun, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The service in check mode (VAKTROM_CHECK_ONLY=1, runtime/stage.py)."""
    return subprocess.run(
        run.argv, cwd=run.cwd, env={**run.env, "VAKTROM_CHECK_ONLY": "1"}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def seed(run: ServiceRun, argv: list[str]) -> None:
    """Run one of the image's commands for real (no check mode) in a service's environment: what an
    earlier service leaves in a shared volume, such as the CA mosquitto-init makes."""
    done = subprocess.run(
        argv, cwd=run.cwd, env=run.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
