"""The image check: every docker-compose.yml service that runs the application image starts in check
mode (settings valid, every file it needs found, nothing connected to) inside exactly what
infra/Dockerfile copies, installed as the image installs it. No Docker engine runs here, so
tests/support/image.py builds the image's file system in a temporary folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.image import Image, assemble, compose_env, install, run_check, seed, service_command

REPO = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_IMAGE = SERVICES["init"]["image"]
APP_SERVICES = sorted(name for name, s in SERVICES.items() if s.get("image") == APP_IMAGE)
DOCKERFILE = (REPO / "infra" / "Dockerfile").read_text()
DOCKERIGNORE = (REPO / ".dockerignore").read_text()
ENV = compose_env((REPO / ".env.example").read_text())


def _build(root: Path, *, dockerfile: str = DOCKERFILE, dockerignore: str = DOCKERIGNORE) -> Image:
    image = assemble(REPO, root, dockerfile=dockerfile, dockerignore=dockerignore)
    # what mosquitto-init leaves in the shared mqtt-tls volume before anything else starts
    first = service_command(image, SERVICES["mosquitto-init"], ENV)
    ca_dir = image.root / "volumes" / "mqtt-tls"
    seed(first, [sys.executable, str(REPO / "infra" / "tls.py"), str(ca_dir), "--host", "mosquitto"])
    return image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    built = _build(tmp_path_factory.mktemp("image"))
    install(built)
    return built


def _rebuild(image: Image, root: Path, **changed: str) -> Image:
    """The same image with another Dockerfile or ignore file; the installed virtualenv is reused."""
    other = _build(root, **changed)
    other.root.joinpath("venv").symlink_to(image.venv)
    return other


def test_the_app_services_are_the_ones_expected() -> None:
    """The check covers every service that runs the application image (a new one is checked too)."""
    assert set(APP_SERVICES) >= {
        "mosquitto-init",
        "kafka-init",
        "init",
        "ingest",
        "monitor",
        "archive",
        "alerts",
    }


@pytest.mark.parametrize("service", APP_SERVICES)
def test_each_service_starts_in_check_mode_inside_the_image(image: Image, service: str) -> None:
    """The service's own command, environment and volumes, in the image's working directory, reads
    its settings, finds its files and exits 0 (it would have caught the image without infra/tls.py)."""
    done = run_check(service_command(image, SERVICES[service], ENV))
    assert done.returncode == 0, f"{service} failed its check in the image:\n{done.stderr}"
    assert "check only" in done.stderr, done.stderr


def test_a_file_the_dockerfile_does_not_copy_fails_the_check(image: Image, tmp_path: Path) -> None:
    """The check is not vacuous: an image whose COPY line leaves out infra/tls.py fails
    mosquitto-init and kafka-init, naming the file."""
    dockerfile = DOCKERFILE.replace(" infra/tls.py", "")
    assert dockerfile != DOCKERFILE
    planted = _rebuild(image, tmp_path, dockerfile=dockerfile)
    for service in ("mosquitto-init", "kafka-init"):
        done = run_check(service_command(planted, SERVICES[service], ENV))
        assert done.returncode != 0, f"{service} passed without infra/tls.py"
        assert "tls" in done.stderr, done.stderr


def test_a_console_file_left_out_by_dockerignore_fails_the_check(image: Image, tmp_path: Path) -> None:
    """An ignore rule that drops the console's vendored chart script fails the alerts service's check,
    which names the file."""
    planted = _rebuild(image, tmp_path, dockerignore=DOCKERIGNORE + "\nalerts/console/static/vendor/\n")
    done = run_check(service_command(planted, SERVICES["alerts"], ENV))
    assert done.returncode == 2, done.stderr
    assert "static/vendor/uplot/uPlot.iife.min.js" in done.stderr


def test_a_migration_left_out_by_dockerignore_fails_the_check(image: Image, tmp_path: Path) -> None:
    """An image without the newest migration would report its schema current and run code that
    needs it: init's check (infra/migrate.py) refuses it and names the version."""
    newest = sorted((REPO / "infra" / "postgres" / "migrations").glob("*.sql"))[-1].name
    planted = _rebuild(image, tmp_path, dockerignore=DOCKERIGNORE + f"\ninfra/postgres/migrations/{newest}\n")
    done = run_check(service_command(planted, SERVICES["init"], ENV))
    assert done.returncode == 2, done.stderr
    assert newest[:4] in done.stderr, done.stderr
