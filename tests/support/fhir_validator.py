"""HAPI FHIR's validator for the tests: one long-lived Java process per test session.

    validator = FhirValidator.start()       compiles infra/fhir-validator/src once, starts it
    validator.validate(resource, profile)   the errors and warnings that matter, as strings
    validator.close()

The jars (HAPI FHIR 8.6.5 and the R4 definitions with the vital-signs profiles) are fetched by
`infra/bootstrap` into `.local/fhir-validator/libs`. A validator that cannot start raises
`ValidatorUnavailableError` with what to do: the tests that need it fail, they are never skipped.

What counts: every error and fatal issue, and every warning except the ones listed in `_IGNORED`,
each with the reason it is ignored (best-practice advice and terminology this set-up cannot check).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["FhirValidator", "ValidatorUnavailableError", "register", "shared", "validate"]

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "infra" / "fhir-validator" / "src" / "Validate.java"

# Warnings that say nothing about the resource's correctness here, each with why.
_IGNORED = (
    # dom-6: narrative is for human display; the API's resources are data for systems.
    "dom-6",
    # advice that an Observation "should" have a performer: a home device measurement has none.
    "all observations should have a performer",
    # LOINC is not loaded (no terminology server in the tests): HAPI says it cannot check the
    # code's display; the profiles' fixed LOINC codes are still checked as patterns.
    "http://loinc.org",
    "A definition for CodeSystem 'http://loinc.org'",
    # Vaktrom's own code systems (alert rules, severities) publish no CodeSystem resource: their
    # codes are Vaktrom's ids, which HAPI says it cannot look up.
    "CodeSystem is unknown and can't be validated: urn:vaktrom:",
)


class ValidatorUnavailableError(RuntimeError):
    """The validator could not be started: the message says what to run."""


def _state_dir() -> Path:
    return Path(os.environ.get("VAKTROM_STATE_DIR", REPO / ".local"))


class FhirValidator:
    """A running validator process; `validate` is one request and answer over its pipes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process

    @classmethod
    def start(cls) -> FhirValidator:
        libs = _state_dir() / "fhir-validator" / "libs"
        if not (libs / ".stamp").is_file():
            raise ValidatorUnavailableError(
                f"the HAPI FHIR validator's jars are not in {libs}: run `make bootstrap` (it fetches them "
                "with Maven, from infra/fhir-validator/pom.xml)"
            )
        classes = _state_dir() / "fhir-validator" / "classes"
        compiled = classes / "Validate.class"
        if not compiled.is_file() or compiled.stat().st_mtime < SOURCE.stat().st_mtime:
            classes.mkdir(parents=True, exist_ok=True)
            try:
                subprocess.run(
                    ["javac", "-d", str(classes), "-cp", f"{libs}/*", str(SOURCE)],
                    check=True, capture_output=True, text=True, timeout=300,
                )  # fmt: skip
            except FileNotFoundError:
                raise ValidatorUnavailableError(
                    "javac is missing: install openjdk-17-jdk-headless (make bootstrap does)"
                ) from None
            except subprocess.CalledProcessError as exc:
                raise ValidatorUnavailableError(f"compiling {SOURCE} failed:\n{exc.stderr}") from None
        process = subprocess.Popen(
            ["java", "-Xss4m", "-cp", f"{classes}{os.pathsep}{libs}/*", "Validate"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            encoding="utf-8",
        )  # fmt: skip
        assert process.stdout is not None
        first = process.stdout.readline().strip()  # the process says "ready" once it has loaded
        if first != "ready":
            process.kill()
            raise ValidatorUnavailableError(
                f"the HAPI FHIR validator did not start (it said {first!r}); run it by hand to see why: "
                f"java -cp '{classes}:{libs}/*' Validate"
            )
        return cls(process)

    def issues(self, resource: dict[str, Any], profile: str | None = None) -> list[dict[str, str]]:
        """Every issue HAPI reports, unfiltered: severity, location, message."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write((profile or "") + "\n" + json.dumps(resource) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise ValidatorUnavailableError("the HAPI FHIR validator stopped while validating")
        return json.loads(line)["issues"]  # type: ignore[no-any-return]

    def register(self, resource: dict[str, Any]) -> None:
        """Make a conformance resource (a Questionnaire, a profile) known to the validator: later
        resources that name it are checked against it."""
        found = self.issues(resource, "!register")
        if found:
            raise ValidatorUnavailableError(f"the validator did not take the resource: {found}")

    def validate(self, resource: dict[str, Any], profile: str | None = None) -> list[str]:
        """The errors and the warnings that matter (see `_IGNORED`), as `SEVERITY location: message`;
        an empty list means the resource is valid against base R4 and `profile` (and its own
        `meta.profile`)."""
        found = []
        for issue in self.issues(resource, profile):
            severity, message = issue["severity"], issue["message"]
            if severity == "INFORMATION":
                continue
            if severity == "WARNING" and any(text in message for text in _IGNORED):
                continue
            found.append(f"{severity} {issue['location']}: {message}")
        return found

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


_SHARED: FhirValidator | None = None


def shared() -> FhirValidator:
    """The one validator of the session (started on first use)."""
    global _SHARED  # noqa: PLW0603 (one process per session, started lazily)
    if _SHARED is None:
        _SHARED = FhirValidator.start()
    return _SHARED


def validate(resource: dict[str, Any], profile: str | None = None) -> list[str]:
    """`FhirValidator.validate` on the session's shared validator."""
    return shared().validate(resource, profile)


def register(resource: dict[str, Any]) -> None:
    """`FhirValidator.register` on the session's shared validator."""
    shared().register(resource)
