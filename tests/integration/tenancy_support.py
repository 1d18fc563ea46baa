"""The response centre's route table as the tenancy tests and docs/access-control.md read it.

Each route of the real application (`alerts.console.web.create_app`) declares its scope in `openapi_extra`
(`alerts.console.context.scope`); the roles it admits come from its role dependencies (`roles_of`). A route
that declares no scope, or names an object in its path that the tests cannot make, is an error that
says what to add.

    python -m tests.integration.tenancy_support     # prints the table of docs/access-control.md
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from psycopg_pool import ConnectionPool
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from alerts.accounts import Role
from alerts.console.context import SCOPES, roles_of
from alerts.console.live import Live
from alerts.console.web import create_app
from alerts.settings import AlertsSettings

__all__ = ["OBJECT_PARAMS", "ROLES", "RouteSpec", "access_table", "application", "route_table"]

# Path parameters the matrix makes objects for: own team, other team and (where the kind has them)
# centre-wide. A route addressing another kind of object needs an entry here and in the fixtures.
OBJECT_PARAMS: dict[str, str] = {
    "patient_id": "a patient (of a team)",
    "kit_id": "a kit (with a team's patient, or centre-wide stock)",
    "episode_id": "an alert (of its patient's team)",
    "username": "a user account (of a team, or centre-wide)",
    "token_id": "an API token (of its user)",
    "team_id": "a team (its service hours and duty roster)",
    "shift_id": "a duty shift (of its team's roster)",
    "device_id": "a kit's measuring device (of the kit's team)",
    "observation_id": "a stored reading, as a FHIR Observation (of its patient's team)",
}
ROLES: tuple[str, ...] = ("anonymous", "nurse", "physician", "coordinator", "admin")
BEGIN, END = "<!-- routes: begin (generated) -->", "<!-- routes: end -->"


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    scope: str
    roles: frozenset[Role] | None  # None: every logged-in user (or nobody needs to be, if public)
    params: tuple[str, ...]

    @property
    def api(self) -> bool:
        return self.path.startswith("/api/")

    def who(self) -> str:
        if self.scope == "public":
            return "anyone"
        if self.roles is None:
            return "any logged-in user"
        return ", ".join(r.value for r in Role if r in self.roles)


def application() -> FastAPI:
    """The service's application, built as `python -m alerts` builds it (no connection is opened)."""
    url = "postgresql://route-table.invalid/vaktrom"
    pool = ConnectionPool(url, open=False)
    return create_app(pool=pool, settings=AlertsSettings.from_env({}), live=Live(url))


def _flat(routes: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    """(full path, route) for every route. FastAPI 0.16x keeps an included router as one entry
    whose `effective_route_contexts()` yields its routes with the prefix applied; if a FastAPI
    upgrade changes that, `test_every_route_declares_its_scope` finds no API routes and fails."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for context in contexts():
                yield context.path, context.original_route
        else:
            yield getattr(route, "path", ""), route


def _roles(dependant: Dependant) -> frozenset[Role] | None:
    found: frozenset[Role] | None = None
    for dep in dependant.dependencies:
        for gate in (roles_of(dep.call) if dep.call else None, _roles(dep)):
            if gate is not None:
                found = gate if found is None else found & gate
    return found


def route_table(app: FastAPI) -> tuple[list[RouteSpec], list[str]]:
    """Every HTTP route of `app` with its declaration, and the problems: what to add where."""
    specs: list[RouteSpec] = []
    problems: list[str] = []
    framework = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    for path, route in _flat(app.routes):
        if isinstance(route, APIRoute):
            scope = (route.openapi_extra or {}).get("x-vaktrom-scope")
            params = tuple(p.name for p in route.dependant.path_params)
            if scope not in SCOPES:
                problems.append(
                    f"{sorted(route.methods)} {path}: declare its scope, e.g. "
                    f'openapi_extra=scope("team") (one of {", ".join(SCOPES)}; see docs/access-control.md)'
                )
                continue
            for name in params:
                if name not in OBJECT_PARAMS:
                    problems.append(
                        f"{path}: path parameter {name!r} is not an object the tenancy matrix knows; name "
                        f"it after the object it addresses ({', '.join(OBJECT_PARAMS)}) or add it to "
                        "OBJECT_PARAMS in tests/integration/tenancy_support.py and a maker in "
                        "tests/integration/test_attack_tenancy.py"
                    )
            for method in sorted(route.methods - {"HEAD"}):
                specs.append(RouteSpec(method, path, scope, _roles(route.dependant), params))
        elif isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            specs.append(RouteSpec("GET", f"{path}/{{file}}", "public", None, ()))
        elif isinstance(route, Route) and path in framework:
            specs.append(RouteSpec("GET", path, "public", None, ()))
        else:
            problems.append(
                f"{path}: a {type(route).__name__} the tenancy test cannot check; make it an APIRoute "
                'with openapi_extra=scope("...")'
            )
    return specs, problems


def access_table(specs: Iterable[RouteSpec]) -> str:
    """The Markdown table of docs/access-control.md, between its markers."""
    lines = [BEGIN, "| Method | Path | Scope | Roles |", "|---|---|---|---|"]
    for spec in sorted(specs, key=lambda s: (s.path, s.method)):
        lines.append(f"| {spec.method} | `{spec.path}` | {spec.scope} | {spec.who()} |")
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    print(access_table(route_table(application())[0]))
