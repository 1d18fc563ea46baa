"""Bulk export of a team's data as NDJSON, run in the background (the FHIR Bulk Data pattern:
kick-off answers 202 with a status URL, the status answers 202 until the files are ready, then a
manifest with one NDJSON file per resource type).

    Exports                 the jobs of one service process: start, find (by owner), cancel, expire
    Job                     one export: its files in a private temporary folder, progress, error
    write_team(conn, job)   writes every resource of the team's patients into the job's files

Jobs live in the process that serves the console; a restart loses them (the client starts again).
Files are kept `KEEP` after they are finished and then deleted with their folder.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from alerts.fhir import records, resources, source

__all__ = ["KEEP", "TYPES", "Exports", "Job", "write_team"]

log = logging.getLogger(__name__)

TYPES = ("Patient", "Observation", "Flag", "Device", "QuestionnaireResponse")
KEEP = timedelta(hours=1)
MAX_JOBS_PER_USER = 3  # running at once: an export reads a whole team's history
MAX_JOBS = 3  # running at once in the service: each holds one of the console's pooled connections
_PREFIX = "vaktrom-export-"
_FROM = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass
class Job:
    job_id: str
    owner: str
    team_id: str
    types: tuple[str, ...]
    request_url: str
    started_at: datetime
    folder: Path
    patients_total: int = 0
    patients_done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    finished_at: datetime | None = None
    error: str | None = None
    cancelled: bool = False  # the client asked to stop: the writer stops at the next patient

    def path(self, kind: str) -> Path:
        return self.folder / f"{kind}.ndjson"


class Exports:
    """The export jobs of this process, each visible to the user who started it only."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(
        self,
        *,
        owner: str,
        team_id: str,
        types: tuple[str, ...],
        request_url: str,
        run: Callable[[Job], None],
    ) -> Job:
        """A new job, run on its own thread; `run` fills its files. Refused (ValueError) when the user
        has MAX_JOBS_PER_USER running."""
        self.expire()
        with self._lock:
            running = [j for j in self._jobs.values() if j.finished_at is None]
            if sum(j.owner == owner for j in running) >= MAX_JOBS_PER_USER:
                raise ValueError(
                    f"{MAX_JOBS_PER_USER} of your exports are still running; wait for one to finish"
                )
            if len(running) >= MAX_JOBS:
                raise ValueError(
                    f"{len(running)} exports are running in the service; try again in a few minutes"
                )
            job = Job(
                job_id=secrets.token_hex(16), owner=owner, team_id=team_id, types=types,
                request_url=request_url, started_at=datetime.now(UTC),
                folder=Path(tempfile.mkdtemp(prefix=_PREFIX)),  # mode 0700: the service's only
            )  # fmt: skip
            self._jobs[job.job_id] = job
        threading.Thread(
            target=self._run, args=(job, run), name=f"export-{job.job_id[:8]}", daemon=True
        ).start()
        return job

    def _run(self, job: Job, run: Callable[[Job], None]) -> None:
        try:
            run(job)
        except Exception as exc:
            log.exception("export %s failed", job.job_id[:8])
            job.error = f"the export failed ({type(exc).__name__}); start it again, or ask the operator"
        job.finished_at = datetime.now(UTC)
        if job.cancelled:  # it counted as running until here: it held a pooled connection
            self._forget(job)

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.job_id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def cancel(self, job_id: str, owner: str, team_id: str | None) -> bool:
        """Stop the job (`find`'s rules say whose) and delete its files: at once when it has finished,
        else when its writer notices, at the next patient. Unknown from now on either way."""
        job = self.find(job_id, owner, team_id)
        if job is None:
            return False
        with self._lock:  # of two cancels that both found it, only one says so
            if job.cancelled:
                return False
            job.cancelled = True
        if job.finished_at is not None:
            self._forget(job)
        return True

    def find(self, job_id: str, owner: str, team_id: str | None) -> Job | None:
        """The job, when `owner` started it and is still of its team (`team_id` None: centre-wide);
        anyone else's, and one older than KEEP, answers as unknown."""
        self.expire()
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.cancelled or job.owner != owner:
            return None
        if team_id is not None and team_id != job.team_id:
            return None
        return job

    def expire(self, now: datetime | None = None) -> None:
        """Delete the jobs finished more than KEEP ago, with their files, and the folders of exports
        this process does not know (a previous process's, after a restart or crash) older than KEEP."""
        now = now or datetime.now(UTC)
        with self._lock:
            old = [j for j in self._jobs.values() if j.finished_at is not None and now - j.finished_at > KEEP]
            for job in old:
                del self._jobs[job.job_id]
            known = {j.folder for j in self._jobs.values()}
        for job in old:
            shutil.rmtree(job.folder, ignore_errors=True)
        for folder in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
            try:
                stale = (
                    folder not in known and now.timestamp() - folder.stat().st_mtime > KEEP.total_seconds()
                )
                if stale and folder.is_dir() and folder.stat().st_uid == os.getuid():
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue  # gone meanwhile


def _line(out: IO[str], resource: dict[str, Any]) -> None:
    out.write(json.dumps(resource, separators=(",", ":")) + "\n")


def write_team(conn: Any, job: Job) -> None:
    """Every resource of the team's patients (those it follows now) into the job's NDJSON files."""
    patients = source.patients(conn, job.team_id, limit=1_000_000, offset=0)
    job.patients_total = len(patients)
    files = {kind: job.path(kind).open("w", encoding="utf-8") for kind in job.types}
    counts = dict.fromkeys(job.types, 0)
    try:
        for row in patients:
            if job.cancelled:
                return
            found = _patient_resources(conn, row, job.types)
            for kind, items in found.items():
                for resource in items:
                    _line(files[kind], resource)
                counts[kind] += len(items)
            job.patients_done += 1
    finally:
        for out in files.values():
            out.close()
    job.counts = counts


def _patient_resources(
    conn: Any, row: source.PatientRow, types: tuple[str, ...]
) -> dict[str, list[dict[str, Any]]]:
    pid = row.patient_id
    end = datetime.now(UTC) + timedelta(days=2)
    found: dict[str, list[dict[str, Any]]] = {}
    if "Patient" in types:
        found["Patient"] = [resources.patient(pid, active=row.discharged_at is None)]
    if "Observation" in types:
        readings, _ = source.readings(conn, pid, _FROM, end, metrics=None, observations=25_000)
        found["Observation"] = resources.observations(readings, patient_id=pid)
    if "Flag" in types:
        found["Flag"] = [
            resources.flag(a) for a in source.alerts(conn, row.team_id, patient_id=pid, limit=100_000)
        ]
    if "Device" in types:
        found["Device"] = [
            records.device(d.device_id, kit_id=d.kit_id, kind=d.kind, patient_id=d.patient_id)
            for d in source.devices(conn, pid)
        ]
    if "QuestionnaireResponse" in types:
        answers = source.answers(conn, pid, limit=50_000)
        found["QuestionnaireResponse"] = [records.questionnaire_response(a, patient_id=pid) for a in answers]
    return found
