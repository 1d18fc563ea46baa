"""The indicators page in Chromium (issue #33, item 5): its five uPlot charts draw under the console's
Content-Security-Policy, with the activity table beside them, and nothing is blocked."""

from __future__ import annotations

from playwright.sync_api import Browser, expect

from tests.conftest import Stack
from tests.e2e.test_console_browser import browser, readings  # noqa: F401  (the module's browser fixture)
from tests.e2e.test_console_csp import Watched, _ward, service  # noqa: F401  (its fixture and helpers)
from tests.integration.alerts_support import AlertsProcess


def test_the_indicators_page_draws_its_charts_under_the_csp(
    stack: Stack,
    service: AlertsProcess,  # noqa: F811  (the fixture imported above)
    browser: Browser,  # noqa: F811
    unique: str,
) -> None:
    """A coordinator opens Indicators from the menu: five charts (one per indicator) and the month's
    activity with the ward's patient, and no CSP report or console error."""
    ward = _ward(stack, unique)
    view = Watched(browser, service.url)
    view.login(ward["coordinator"])
    view.page.click('header nav a[href="/indicators"]')
    charts = view.page.locator('#indicators[data-ready="1"] .chart canvas')
    expect(charts.first).to_be_visible(timeout=10_000)
    assert charts.count() == 5
    expect(view.page.locator("table.activity")).to_contain_text(ward["patient"])
    view.check("/indicators")
    view.page.close()
