"""The response-centre service's own settings; connections use the shared ones (`runtime.settings`)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from datetime import timedelta
from urllib.parse import urlsplit

from alerts.accounts import MAX_TOKEN_DAYS, Role
from alerts.ehr import Signer, SigningKeyError
from alerts.i18n import LANGUAGES
from alerts.sso import ClaimRules, parse_role_map
from alerts.workers.ehr_outbox import check_url
from alerts.workers.escalation import Step, Targets
from alerts.workers.notify import Route, parse_routes
from runtime.settings import ConfigError, Settings, check_ranges, check_time_zone, setting

__all__ = ["AlertsSettings"]

_GROUP = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MIN_CLIENT_SECRET = 32  # a provider-generated secret: it also keys the login's state cookie


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlertsSettings(Settings):
    group_id: str = setting(
        "vaktrom-alerts",
        env="VAKTROM_ALERTS_GROUP",
        help="Kafka consumer group of the alert-store feed; instances in one group share the partitions",
    )
    session_timeout_s: float = setting(
        10.0,
        env="VAKTROM_ALERTS_SESSION_TIMEOUT_S",
        help="how long Kafka waits for a silent (crashed) instance before moving its partitions",
    )
    batch_ms: int = setting(
        50,
        env="VAKTROM_ALERTS_BATCH_MS",
        help="longest wait for more alert events before applying what was fetched (bounds the delay)",
    )
    red_target_min: float = setting(
        5.0, env="VAKTROM_ALERTS_RED_TARGET_MIN", help="a red alert must be claimed within this many minutes"
    )
    yellow_target_min: float = setting(
        120.0,
        env="VAKTROM_ALERTS_YELLOW_TARGET_MIN",
        help="a yellow alert must be claimed within this many minutes",
    )
    escalation_every_s: float = setting(
        5.0, env="VAKTROM_ALERTS_ESCALATION_EVERY_S", help="how often due escalation steps are looked for"
    )
    metrics_host: str = setting(
        "127.0.0.1", env="VAKTROM_ALERTS_METRICS_HOST", help="address of the /metrics and /health endpoint"
    )
    metrics_port: int = setting(
        9467, env="VAKTROM_ALERTS_METRICS_PORT", help="port of the /metrics and /health endpoint (0: off)"
    )
    alert_path_max_age_s: float = setting(
        30.0,
        env="VAKTROM_ALERTS_ALERT_PATH_MAX_AGE_S",
        help="/health says degraded (alerts may be delayed) while the oldest alert event not yet in the "
        "store is older than this",
    )
    watch_stages: str = setting(
        "bridge=http://127.0.0.1:9464/health,monitor=http://127.0.0.1:9466/health,"
        "archive=http://127.0.0.1:9465/health",
        env="VAKTROM_ALERTS_WATCH_STAGES",
        help="the other stages' /health URLs as name=url,...; the console shows nurses a banner while "
        "one is degraded or does not answer (this service's own feed is always watched; empty: no others)",
    )
    watch_every_s: float = setting(
        5.0, env="VAKTROM_ALERTS_WATCH_EVERY_S", help="how often the stages' /health are asked"
    )
    http_host: str = setting(
        "127.0.0.1", env="VAKTROM_ALERTS_HTTP_HOST", help="address the console and the HTTP API listen on"
    )
    http_port: int = setting(
        8470, env="VAKTROM_ALERTS_HTTP_PORT", help="port of the console and the HTTP API"
    )
    public_url: str = setting(
        "",
        env="VAKTROM_ALERTS_PUBLIC_URL",
        help="the console's address as staff reach it, for links in notifications (default: http://HOST:PORT)",
    )
    time_zone: str = setting(
        "Europe/Oslo",
        env="VAKTROM_ALERTS_TIME_ZONE",
        help="the response centre's time zone for every time shown",
    )
    language: str = setting(
        "nb",
        env="VAKTROM_ALERTS_LANGUAGE",
        help="the console's and notifications' language when a user has chosen none and their browser "
        "asks for neither: nb (Norwegian bokmål) or en",
    )
    session_hours: float = setting(
        12.0, env="VAKTROM_ALERTS_SESSION_HOURS", help="a console login lasts at most this long (one shift)"
    )
    idle_minutes: float = setting(
        60.0, env="VAKTROM_ALERTS_IDLE_MINUTES", help="a console session unused this long ends"
    )
    cookie_secure: bool = setting(
        True,
        env="VAKTROM_ALERTS_COOKIE_SECURE",
        help="send the session cookie over HTTPS only (browsers also accept it on http://localhost)",
    )
    trusted_proxies: str = setting(
        "",
        env="VAKTROM_ALERTS_TRUSTED_PROXIES",
        help="addresses or networks of the reverse proxies in front of the console, comma-separated "
        "(e.g. 10.0.0.5,172.16.0.0/12); only from these are X-Forwarded-For and X-Forwarded-Proto "
        "believed (empty: from nobody)",
    )
    token_days: int = setting(
        90,
        env="VAKTROM_ALERTS_TOKEN_DAYS",
        help="how long a new API bearer token lasts unless a shorter life is asked for (at most 90 days)",
    )
    notify_team: str = setting(
        "",
        env="VAKTROM_ALERTS_NOTIFY_TEAM",
        help="escalation step 1 goes to these: https:// webhooks, mailto: addresses and role:nurse_on_duty, "
        "role:coordinator or role:on_call_physician (whoever the team's roster names at the step), "
        "comma-separated",
    )
    notify_coordinator: str = setting(
        "",
        env="VAKTROM_ALERTS_NOTIFY_COORDINATOR",
        help="escalation step 2 (the coordinator on duty), as above",
    )
    notify_physician: str = setting(
        "", env="VAKTROM_ALERTS_NOTIFY_PHYSICIAN", help="escalation step 3 (the on-call physician), as above"
    )
    webhook_secret: str = setting(
        "",
        env="VAKTROM_ALERTS_WEBHOOK_SECRET",
        help="shared secret of the webhooks' HMAC-SHA256 signature (at least 16 characters)",
        secret=True,
    )
    smtp_host: str = setting("", env="VAKTROM_ALERTS_SMTP_HOST", help="SMTP server for e-mail notifications")
    smtp_port: int = setting(25, env="VAKTROM_ALERTS_SMTP_PORT", help="its port")
    smtp_starttls: bool = setting(
        False, env="VAKTROM_ALERTS_SMTP_STARTTLS", help="upgrade to TLS with STARTTLS"
    )
    smtp_user: str = setting("", env="VAKTROM_ALERTS_SMTP_USER", help="SMTP login (empty: none)")
    smtp_password: str = setting("", env="VAKTROM_ALERTS_SMTP_PASSWORD", help="SMTP password", secret=True)
    smtp_from: str = setting(
        "vaktrom@localhost", env="VAKTROM_ALERTS_SMTP_FROM", help="sender address of e-mail notifications"
    )
    notify_every_s: float = setting(
        2.0, env="VAKTROM_ALERTS_NOTIFY_EVERY_S", help="how often the notification outbox is looked at"
    )
    oidc_issuer: str = setting(
        "",
        env="VAKTROM_OIDC_ISSUER",
        help="single sign-on: the OpenID provider's issuer URL (its discovery document is at "
        "ISSUER/.well-known/openid-configuration); empty: local accounts only",
    )
    oidc_client_id: str = setting("", env="VAKTROM_OIDC_CLIENT_ID", help="the console's client id there")
    oidc_client_secret: str = setting(
        "", env="VAKTROM_OIDC_CLIENT_SECRET", help="the console's client secret there", secret=True
    )
    oidc_role_claim: str = setting(
        "roles",
        env="VAKTROM_OIDC_ROLE_CLAIM",
        help="the ID token claim that holds a person's roles (a dotted path such as realm_access.roles)",
    )
    oidc_team_claim: str = setting(
        "team", env="VAKTROM_OIDC_TEAM_CLAIM", help="the ID token claim that holds a person's team id"
    )
    oidc_role_map: str = setting(
        "",
        env="VAKTROM_OIDC_ROLE_MAP",
        help="the provider's role names to ours, provider_role=ROLE,... (ROLE: nurse, coordinator, "
        "physician or admin); other roles are ignored; empty: the provider uses our names",
    )
    oidc_centre_roles: str = setting(
        "admin",
        env="VAKTROM_OIDC_CENTRE_ROLES",
        help="our roles that may come without a team claim and then see every team (comma-separated); "
        "any other role without exactly one team gets no access",
    )
    oidc_label: str = setting(
        "the hospital's login",
        env="VAKTROM_OIDC_LABEL",
        help='what the login page\'s single-sign-on button names ("Log in with ...")',
    )

    ehr_url: str = setting(
        "",
        env="VAKTROM_ALERTS_EHR_URL",
        help="where each resolution's record document (a FHIR document Bundle) is POSTed, http(s)://; "
        "empty: documentation into the record is off (the console says so)",
    )
    ehr_signing_key: str = setting(
        "",
        env="VAKTROM_ALERTS_EHR_SIGNING_KEY",
        help="path of the Ed25519 private key (PEM) that signs the record documents; the EHR holds its "
        "public key (required with VAKTROM_ALERTS_EHR_URL)",
    )
    ehr_timeout_s: float = setting(
        10.0,
        env="VAKTROM_ALERTS_EHR_TIMEOUT_S",
        help="how long one delivery attempt may take (at most 30 s: a round of attempts must stay well "
        "inside the worker's stall limit)",
    )
    ehr_give_up_h: float = setting(
        24.0,
        env="VAKTROM_ALERTS_EHR_GIVE_UP_H",
        help="a record document not delivered this many hours after the resolution is given up and shown "
        "as not delivered",
    )
    ehr_every_s: float = setting(
        2.0, env="VAKTROM_ALERTS_EHR_EVERY_S", help="how often the record outbox is looked at"
    )
    ehr_readings_days: float = setting(
        3.0,
        env="VAKTROM_ALERTS_EHR_READINGS_DAYS",
        help="the document carries the readings from this many days before the alert opened until it "
        "was resolved",
    )

    def validate(self) -> None:
        if not _GROUP.match(self.group_id):
            raise ConfigError(
                f"VAKTROM_ALERTS_GROUP={self.group_id!r} must be 1-128 letters, digits, '.', '_' or '-'"
            )
        check_ranges(
            {
                "VAKTROM_ALERTS_SESSION_TIMEOUT_S": (self.session_timeout_s, 6, 300),
                "VAKTROM_ALERTS_BATCH_MS": (self.batch_ms, 1, 10_000),
                "VAKTROM_ALERTS_METRICS_PORT": (self.metrics_port, 0, 65535),
                "VAKTROM_ALERTS_RED_TARGET_MIN": (self.red_target_min, 0.1, 24 * 60),
                "VAKTROM_ALERTS_YELLOW_TARGET_MIN": (self.yellow_target_min, 0.1, 7 * 24 * 60),
                "VAKTROM_ALERTS_ESCALATION_EVERY_S": (self.escalation_every_s, 0.1, 600),
                "VAKTROM_ALERTS_HTTP_PORT": (self.http_port, 0, 65535),
                "VAKTROM_ALERTS_SESSION_HOURS": (self.session_hours, 0.1, 24 * 7),
                "VAKTROM_ALERTS_IDLE_MINUTES": (self.idle_minutes, 1, 24 * 60),
                "VAKTROM_ALERTS_SMTP_PORT": (self.smtp_port, 1, 65535),
                "VAKTROM_ALERTS_NOTIFY_EVERY_S": (self.notify_every_s, 0.1, 600),
                "VAKTROM_ALERTS_ALERT_PATH_MAX_AGE_S": (self.alert_path_max_age_s, 1, 86400),
                "VAKTROM_ALERTS_WATCH_EVERY_S": (self.watch_every_s, 0.5, 600),
                "VAKTROM_ALERTS_TOKEN_DAYS": (self.token_days, 1, MAX_TOKEN_DAYS),
                "VAKTROM_ALERTS_EHR_TIMEOUT_S": (self.ehr_timeout_s, 0.5, 30),
                "VAKTROM_ALERTS_EHR_GIVE_UP_H": (self.ehr_give_up_h, 0.01, 24 * 30),
                "VAKTROM_ALERTS_EHR_EVERY_S": (self.ehr_every_s, 0.1, 600),
                "VAKTROM_ALERTS_EHR_READINGS_DAYS": (self.ehr_readings_days, 0, 30),
            }
        )
        self._validate_ehr()
        _ = self.watched  # parses, so a typo fails here
        check_time_zone("VAKTROM_ALERTS_TIME_ZONE", self.time_zone)
        if self.language not in LANGUAGES:
            raise ConfigError(
                f"VAKTROM_ALERTS_LANGUAGE must be one of {', '.join(LANGUAGES)}, not {self.language!r}"
            )
        routes = [r for rs in self.routes.values() for r in rs]  # parses, so a typo fails here
        if any(r.channel == "webhook" for r in routes) and len(self.webhook_secret) < 16:
            raise ConfigError(
                "webhook notifications are configured but VAKTROM_ALERTS_WEBHOOK_SECRET is missing or "
                "shorter than 16 characters; set one and give it to the receivers"
            )
        if any(r.channel == "email" for r in routes) and not self.smtp_host:
            raise ConfigError(
                "e-mail notifications are configured but VAKTROM_ALERTS_SMTP_HOST is empty; "
                "name the SMTP server"
            )
        _ = self.proxies  # parses, so a typo fails here
        self._validate_oidc()
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"VAKTROM_ALERTS_PUBLIC_URL={self.public_url!r} must start with http:// or https://"
            )

    def _validate_ehr(self) -> None:
        if not self.ehr_url:
            if self.ehr_signing_key:
                raise ConfigError(
                    "VAKTROM_ALERTS_EHR_SIGNING_KEY is set but VAKTROM_ALERTS_EHR_URL is empty; name the EHR "
                    "endpoint, or unset the key to leave documentation into the record off"
                )
            return
        wrong = check_url(self.ehr_url)
        if wrong:
            raise ConfigError(f"VAKTROM_ALERTS_EHR_URL={self.ehr_url!r} {wrong}")
        if not self.ehr_signing_key:
            raise ConfigError(
                "VAKTROM_ALERTS_EHR_URL is set but VAKTROM_ALERTS_EHR_SIGNING_KEY is empty; make a key with "
                "`openssl genpkey -algorithm ed25519 -out ehr-signing.pem`, name its path, and give the EHR "
                "its public key (docs/ehr-documentation.md)"
            )
        _ = self.ehr_signer  # reads the key, so a wrong path or kind fails here

    @property
    def ehr_signer(self) -> Signer | None:
        """The record documents' signing key, or None while the EHR outbox is off."""
        if not self.ehr_url:
            return None
        try:
            return Signer.from_file(self.ehr_signing_key, env="VAKTROM_ALERTS_EHR_SIGNING_KEY")
        except SigningKeyError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def claim_rules(self) -> ClaimRules | None:
        """How the single sign-on reads roles and teams (None: no single sign-on)."""
        if not self.oidc_issuer:
            return None
        try:
            role_map = parse_role_map(self.oidc_role_map, env="VAKTROM_OIDC_ROLE_MAP")
            centre = frozenset(
                Role(r.strip().lower()) for r in self.oidc_centre_roles.split(",") if r.strip()
            )
        except ValueError as exc:
            if "VAKTROM_OIDC_ROLE_MAP" in str(exc):
                raise ConfigError(str(exc)) from None
            raise ConfigError(
                f"VAKTROM_OIDC_CENTRE_ROLES={self.oidc_centre_roles!r}: list roles among "
                f"{', '.join(r.value for r in Role)}, comma-separated"
            ) from None
        return ClaimRules(
            role_claim=self.oidc_role_claim, team_claim=self.oidc_team_claim, role_map=role_map,
            centre_roles=centre,
        )  # fmt: skip

    def _validate_oidc(self) -> None:
        if not self.oidc_issuer:
            return
        if self.oidc_client_secret and len(self.oidc_client_secret) < MIN_CLIENT_SECRET:
            # it keys the login's signed state cookie, which anyone can fetch: a short one could be
            # guessed offline from it
            raise ConfigError(
                f"VAKTROM_OIDC_CLIENT_SECRET is shorter than {MIN_CLIENT_SECRET} characters; have the "
                "provider generate one (Keycloak, Entra ID and ADFS do)"
            )
        if not self.oidc_client_id or not self.oidc_client_secret:
            raise ConfigError(
                "VAKTROM_OIDC_ISSUER is set but VAKTROM_OIDC_CLIENT_ID or VAKTROM_OIDC_CLIENT_SECRET is "
                "empty; register the console as a confidential client at the provider and set both "
                "(or empty VAKTROM_OIDC_ISSUER for local accounts only)"
            )
        parts = urlsplit(self.oidc_issuer)
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if (parts.scheme != "https" and not (parts.scheme == "http" and local)) or not parts.hostname:
            raise ConfigError(
                f"VAKTROM_OIDC_ISSUER={self.oidc_issuer!r} must be an https:// URL (plain http only for "
                "a provider on localhost), e.g. https://login.hospital.example/realms/staff"
            )
        if not self.oidc_role_claim.strip() or not self.oidc_team_claim.strip():
            raise ConfigError("VAKTROM_OIDC_ROLE_CLAIM and VAKTROM_OIDC_TEAM_CLAIM must name a claim")
        _ = self.claim_rules  # parses, so a typo fails here

    @property
    def routes(self) -> dict[Step, list[Route]]:
        try:
            return {
                Step.TEAM: parse_routes(self.notify_team, env="VAKTROM_ALERTS_NOTIFY_TEAM"),
                Step.COORDINATOR: parse_routes(
                    self.notify_coordinator, env="VAKTROM_ALERTS_NOTIFY_COORDINATOR"
                ),
                Step.PHYSICIAN: parse_routes(self.notify_physician, env="VAKTROM_ALERTS_NOTIFY_PHYSICIAN"),
            }
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def proxies(self) -> list[str]:
        """The trusted proxies (VAKTROM_ALERTS_TRUSTED_PROXIES) as addresses and networks."""
        found: list[str] = []
        for item in filter(None, (part.strip() for part in self.trusted_proxies.split(","))):
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(
                    f"VAKTROM_ALERTS_TRUSTED_PROXIES: {item!r} is not an IP address or network; list the "
                    "proxies' addresses, e.g. 10.0.0.5,172.16.0.0/12 (names and '*' are not accepted)"
                ) from None
            found.append(str(network.network_address) if network.num_addresses == 1 else str(network))
        return found

    @property
    def link_base(self) -> str:
        return self.public_url or f"http://{self.http_host}:{self.http_port}"

    @property
    def targets(self) -> Targets:
        return Targets(
            red=timedelta(minutes=self.red_target_min), yellow=timedelta(minutes=self.yellow_target_min)
        )

    @property
    def watched(self) -> dict[str, str]:
        """The stages whose /health the console watches, by name (VAKTROM_ALERTS_WATCH_STAGES)."""
        stages: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in self.watch_stages.split(","))):
            name, _, url = item.partition("=")
            name, url = name.strip(), url.strip()
            if not name or not url.startswith(("http://", "https://")) or name in stages:
                raise ConfigError(
                    f"VAKTROM_ALERTS_WATCH_STAGES: {item!r} is not name=http://host:port/health (each name "
                    "once), e.g. bridge=http://127.0.0.1:9464/health,monitor=http://127.0.0.1:9466/health"
                )
            stages[name] = url
        return stages

    @property
    def own_health_url(self) -> str | None:
        """This service's own /health (its feed's alert-path age), or None when it is not served."""
        if not self.metrics_port:
            return None
        host = "127.0.0.1" if self.metrics_host in ("0.0.0.0", "::", "") else self.metrics_host  # noqa: S104  (a wildcard is reached on loopback)
        return f"http://{host}:{self.metrics_port}/health"
