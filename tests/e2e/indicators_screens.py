"""Screenshots of the indicators page and the activity export, beside a running `make up`
(issue #33, item 5; docs/indicators.md).

    .local/venv/bin/python -m tests.e2e.indicators_screens [--url http://127.0.0.1:8470] [--seed]
        [--out docs/screenshots]

Logs in with the demo login (a coordinator of the demo team), opens /indicators, waits for its five
charts and keeps `indicators.png` (the page) and `activity.png` (the month's activity table), with the
month's CSV export beside them as `activity.csv`. With `--seed` it first does what a team would have
done by then, through the console's API: a day and an evening nurse on the roster for each of the
last 14 days, and the open alerts claimed and resolved by one of them with a resolution code each
(the cohort's alerts all arrive within its first minutes, so the ones left are the queue's).
`make up` enrols the cohort when it starts and then replays nine days of the kits' history, so by
the definitions of docs/indicators.md nothing was expected of those days (nobody was enrolled yet);
`--seed` therefore also dates the demo team's enrolment and first care plans back to the first
replayed reading, in the demo database only, with the database owner's login
(VAKTROM_DATABASE_OWNER_URL): a demo fixture, never something the application does (and why this
lives with the tests, which set up their own data, and not in infra/).
Exit code 0 when the page showed its charts, 2 when the console or Chromium cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import psycopg
from playwright.sync_api import sync_playwright

from alerts.accounts import Role, add_user, new_session

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("VAKTROM_STATE_DIR", REPO / ".local")).resolve()
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
TEAM = "demo"
CODES = (
    "contacted_no_action",
    "medication_adjusted",
    "referred_to_gp",
    "false_reading",
    "contacted_no_action",
)


def _seed(url: str, database_url: str) -> None:
    """Two nurses on the roster for the last 14 days, and most open red and yellow alerts answered."""
    with psycopg.connect(database_url) as conn:
        nurses = []
        for name in ("demo-nurse-day", "demo-nurse-evening"):
            if conn.execute("SELECT 1 FROM users WHERE username = %s", (name,)).fetchone() is None:
                password = os.urandom(16).hex()  # nobody logs in as them: the seed uses API sessions
                add_user(
                    conn, username=name, display_name=name, role=Role.NURSE, password=password, team_id=TEAM
                )
            nurses.append(name)
        demo = {
            "Authorization": "Bearer "
            + new_session(conn, "demo", kind="api", lifetime=timedelta(hours=1), ip=None)
        }
        nurse = {
            "Authorization": "Bearer "
            + new_session(conn, nurses[0], kind="api", lifetime=timedelta(hours=1), ip=None)
        }
        open_alerts = conn.execute(
            "SELECT a.episode_id FROM alerts a JOIN patient_directory d USING (patient_id) "
            "WHERE d.team_id = %s AND a.state = 'new' AND a.severity IN ('red', 'yellow') "
            "ORDER BY a.received_at",
            (TEAM,),
        ).fetchall()
        conn.commit()
    oslo = ZoneInfo("Europe/Oslo")
    today = datetime.now(oslo).date()
    with httpx.Client(base_url=f"{url}/api/v1", timeout=30) as api:
        for back in range(14, -1, -1):
            day = today - timedelta(days=back)
            for who, start, hours in ((nurses[0], 7, 8), (nurses[1], 15, 8)):
                begins = datetime(day.year, day.month, day.day, start, tzinfo=oslo)
                api.post(f"/teams/{TEAM}/shifts", headers=demo, json={
                    "role": "nurse_on_duty", "username": who, "contact": "mailto:nurse@centre.example.org",
                    "starts_at": begins.isoformat(), "ends_at": (begins + timedelta(hours=hours)).isoformat(),
                })  # fmt: skip
        for k, (episode,) in enumerate(open_alerts[: max(1, len(open_alerts) * 3 // 4)]):
            api.post(f"/alerts/{episode}/claim", headers=nurse)
            api.post(f"/alerts/{episode}/resolve", headers=nurse, json={"resolution": CODES[k % len(CODES)]})


def _backdate(owner_url: str) -> None:
    """The demo team's enrolment and first plans from its first replayed reading (see above)."""
    with psycopg.connect(owner_url) as conn:
        first = conn.execute(
            "SELECT min(measured_at) FROM measurements WHERE patient_id IN "
            "(SELECT patient_id FROM patients WHERE team_id = %s)",
            (TEAM,),
        ).fetchone()
        if first is None or first[0] is None:
            return
        conn.execute("UPDATE patients SET created_at = %s WHERE team_id = %s", (first[0], TEAM))
        conn.execute("ALTER TABLE care_plans DISABLE TRIGGER care_plans_history")
        conn.execute(
            "UPDATE care_plans SET changed_at = %s WHERE version = 1 AND patient_id IN "
            "(SELECT patient_id FROM patients WHERE team_id = %s)",
            (first[0], TEAM),
        )
        conn.execute("ALTER TABLE care_plans ENABLE TRIGGER care_plans_history")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default=f"http://127.0.0.1:{os.environ.get('VAKTROM_ALERTS_HTTP_PORT', '8470')}"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--seed", action="store_true", help="roster and answered alerts first (see above)")
    args = parser.parse_args(argv)
    login = STATE / "demo" / "login"
    if not login.exists() or shutil.which(CHROMIUM) is None:
        print(
            f"indicators-screens: needs the demo login ({login}: start `make up`) and {CHROMIUM}",
            file=sys.stderr,
        )
        return 2
    if args.seed:
        _backdate(os.environ["VAKTROM_DATABASE_OWNER_URL"])
        _seed(args.url, os.environ["VAKTROM_DATABASE_URL"])
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{args.url}/login")
            page.fill("input[name=username]", "demo")
            page.fill("input[name=password]", login.read_text().strip())
            page.click("button[type=submit]")
            page.goto(f"{args.url}/indicators")
            page.wait_for_selector('#indicators[data-ready="1"] .chart canvas', timeout=20_000)
            page.wait_for_timeout(500)  # the charts' first frame
            page.screenshot(path=str(args.out / "indicators.png"), full_page=True)
            page.locator("table.activity").screenshot(path=str(args.out / "activity.png"))
            month = page.locator("input[name=month]").input_value()
            exported = page.request.get(f"{args.url}/api/v1/teams/{TEAM}/activity.csv?month={month}")
            (args.out / "activity.csv").write_text(exported.text())
        finally:
            browser.close()
    print(f"indicators-screens: ok; screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
