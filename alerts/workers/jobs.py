"""The periodic jobs of the response centre, each run by the supervisor as its own worker
(`alerts.workers.supervisor.periodic`): escalation, the session purge, notifications and the
registry's care-plan relay, and the EHR outbox when it is on.

A job holds its own database connection. While the database is away a tick logs it and returns
(the round is done; the next one tries again): that is the database's trouble, which the feed's
health reports, not the job's. So is a deadlock or serialisation failure. Anything else a tick
raises, a lock or statement timeout included (the database is there, only this job fails), goes to
the supervisor, which starts the job again with a back-off and says so in /health.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import Counter, Gauge
from psycopg_pool import ConnectionPool

from alerts.accounts import purge
from alerts.duty import route_out_of_hours
from alerts.settings import AlertsSettings
from alerts.workers.ehr_outbox import EhrEndpoint
from alerts.workers.ehr_outbox import deliver_due as deliver_ehr
from alerts.workers.escalation import escalate_due, oldest_unclaimed_red, open_by_severity
from alerts.workers.notify import Channel, Email, Webhook, deliver_due
from registry import Registry

__all__ = [
    "CarePlanRelay",
    "EhrOutboxJob",
    "EscalationJob",
    "NotifierJob",
    "SessionPurge",
    "discard",
    "reopen",
]

log = logging.getLogger(__name__)

PURGE_EVERY_S = 3600.0  # ended sessions and old failed logins are forgotten hourly
CAREPLANS_EVERY_S = 30.0


def reopen(conn: psycopg.Connection[Any] | None, url: str) -> psycopg.Connection[Any]:
    """`conn`, or a new connection when there is none (raises OperationalError while the database is away)."""
    return conn if conn is not None and not conn.closed else psycopg.connect(url, connect_timeout=10)


def discard(conn: psycopg.Connection[Any] | None) -> None:
    """Close a connection that failed; the next `reopen` makes a new one."""
    if conn is not None:
        conn.close()


def _answered(conn: psycopg.Connection[Any] | None, exc: psycopg.OperationalError) -> bool:
    """Whether `exc` came from a database that is there: the connection is sound and the error is not
    a transaction's race (deadlock, serialisation), which the next round retries. Such an error is
    the job's to report, since the feed, whose health tells that the database is away, does not see it."""
    sound = conn is not None and not conn.closed and not conn.broken
    return sound and not isinstance(exc, psycopg.errors.TransactionRollback)


class _DatabaseJob:
    """A job with one connection, opened on demand and dropped when the database goes away."""

    what = "a job"

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._conn: psycopg.Connection[Any] | None = None
        self._cancelled = False

    def tick(self) -> None:
        try:
            self._conn = reopen(self._conn, self._url)
            self.work(self._conn)
        except psycopg.OperationalError as exc:
            if self._cancelled:  # the service stops
                log.debug("%s: round cancelled (%s)", self.what, exc)
            elif _answered(self._conn, exc):
                raise  # the database is there and refused the round (a lock or statement timeout)
            else:
                log.warning("%s: the database is away (%s); trying again", self.what, exc)
            discard(self._conn)
            self._conn = None

    def work(self, conn: psycopg.Connection[Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        discard(self._conn)
        self._conn = None

    def cancel(self) -> None:
        """Cancel the statement the round is waiting on (from another thread: the service stops)."""
        self._cancelled = True
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.cancel_safe(timeout=2.0)
            except (psycopg.Error, OSError) as exc:
                log.debug("%s: could not cancel its statement (%s)", self.what, exc)


class EscalationJob(_DatabaseJob):
    """Route what arrives while a team's centre is closed (`route_out_of_hours`), take due escalation
    steps (`escalate_due`) every VAKTROM_ALERTS_ESCALATION_EVERY_S, and note
    each team's oldest unclaimed red alert (`oldest_red`) and the open alerts by severity (`open`)
    for the metrics, when given."""

    what = "escalation"

    def __init__(
        self,
        database_url: str,
        settings: AlertsSettings,
        steps: Counter,
        oldest_red: Gauge | None = None,
        open_alerts: Gauge | None = None,
    ) -> None:
        super().__init__(database_url)
        self._settings, self._steps = settings, steps
        self._oldest_red, self._open = oldest_red, open_alerts
        self._teams: set[str] = set()
        if oldest_red is not None:
            oldest_red.clear()  # a job started again does not know the teams its predecessor noted

    def work(self, conn: psycopg.Connection[Any]) -> None:
        s = self._settings
        now = datetime.now(UTC)
        # Out of hours first, so a red finding of a closed centre goes to its out-of-hours route
        # instead of escalating inside it (issue #32).
        routed = route_out_of_hours(conn, now=now)
        if routed:
            log.info("escalation: %d alert(s) handled by service hours", len(routed))
        taken = escalate_due(conn, now=now, targets=s.targets, routes=s.routes)
        for step in taken:
            self._steps.labels(step.step.name.lower()).inc()
        if taken:
            log.info("escalation: %d alert(s) past their response-time target escalated", len(taken))
        if self._oldest_red is not None:
            self._note_oldest_red(conn, self._oldest_red)
        if self._open is not None:
            for severity, count in open_by_severity(conn).items():
                self._open.labels(severity).set(count)

    def _note_oldest_red(self, conn: psycopg.Connection[Any], gauge: Gauge) -> None:
        ages = oldest_unclaimed_red(conn, now=datetime.now(UTC))
        for team in self._teams - set(ages):
            gauge.remove(team)  # claimed since: the team's series ends
        for team, age in ages.items():
            gauge.labels(team).set(age)
        self._teams = set(ages)


class SessionPurge(_DatabaseJob):
    """Forget ended sessions and old failed logins (hourly)."""

    what = "housekeeping"

    def work(self, conn: psycopg.Connection[Any]) -> None:
        sessions, failures = purge(conn)
        if sessions or failures:
            log.info("housekeeping: %d ended sessions and %d old failed logins forgotten", sessions, failures)


def channels(settings: AlertsSettings) -> dict[str, Channel]:
    """The notification channels the settings configure (webhook, e-mail)."""
    s = settings
    found: dict[str, Channel] = {}
    if s.webhook_secret:
        found["webhook"] = Webhook(s.webhook_secret.encode())
    if s.smtp_host:
        found["email"] = Email(
            host=s.smtp_host, port=s.smtp_port, sender=s.smtp_from, starttls=s.smtp_starttls,
            username=s.smtp_user, password=s.smtp_password,
        )  # fmt: skip
    return found


class NotifierJob(_DatabaseJob):
    """Send what escalation put in the outbox, every VAKTROM_ALERTS_NOTIFY_EVERY_S."""

    what = "notifications"

    def __init__(self, database_url: str, settings: AlertsSettings, outcomes: Counter) -> None:
        super().__init__(database_url)
        self._settings, self._outcomes = settings, outcomes
        self._channels = channels(settings)

    def work(self, conn: psycopg.Connection[Any]) -> None:
        sent, failed = deliver_due(
            conn, self._channels, now=datetime.now(UTC), link_base=self._settings.link_base,
            language=self._settings.language,
        )  # fmt: skip
        self._outcomes.labels("sent").inc(sent)
        self._outcomes.labels("failed").inc(failed)

    def close(self) -> None:
        super().close()
        for channel in self._channels.values():
            if isinstance(channel, Webhook):
                channel.close()


class EhrOutboxJob(_DatabaseJob):
    """Deliver the record documents in the EHR outbox, every VAKTROM_ALERTS_EHR_EVERY_S (only while
    VAKTROM_ALERTS_EHR_URL is set; `alerts.workers.ehr_outbox`)."""

    what = "record documents"

    def __init__(
        self, database_url: str, settings: AlertsSettings, outcomes: Counter | None = None, *, round_s: float
    ) -> None:
        super().__init__(database_url)
        self._endpoint = EhrEndpoint(settings.ehr_url, timeout_s=settings.ehr_timeout_s)
        self._outcomes = outcomes
        self._round_s = round_s
        # a claimed row is not taken again before its attempt surely ended (connect + reads + recording)
        self._lease = timedelta(seconds=max(60.0, 4 * settings.ehr_timeout_s))

    def work(self, conn: psycopg.Connection[Any]) -> None:
        done = deliver_ehr(conn, self._endpoint, round_s=self._round_s, lease=self._lease)
        if self._outcomes is not None:
            self._outcomes.labels("delivered").inc(done.delivered)
            self._outcomes.labels("failed").inc(done.failed)
            self._outcomes.labels("given_up").inc(done.given_up)

    def close(self) -> None:
        super().close()
        self._endpoint.close()


class CarePlanRelay:
    """Care-plan versions stored while Kafka was away go out once it is back (every 30 s)."""

    def __init__(self, registry: Registry, pool: ConnectionPool) -> None:
        self._registry, self._pool = registry, pool

    def tick(self) -> None:
        try:
            with self._pool.connection() as conn:
                sent = self._registry.publish_pending(conn)
            if sent:
                log.info("care plans: %d pending version(s) published", sent)
        except Exception as exc:  # retried on the next round: the versions are stored
            log.warning("care plans: pending versions not published yet (%s); retrying in 30 s", exc)

    def close(self) -> None:
        pass
