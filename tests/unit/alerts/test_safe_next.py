"""Where the console sends a browser after login or the language switch (review of #32).

Browsers drop tabs and line breaks from a URL before parsing it (WHATWG URL standard), so
`/\t/evil.example` arrives as `//evil.example`, another site: an open redirect through the
language switch's or the login form's `next`.
"""

from __future__ import annotations

from urllib.parse import urljoin

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.console.context import safe_next

BASE = "https://centre.example.org/queue"


def _as_browser(target: str) -> str:
    """What a browser makes of a Location header: tabs and line breaks dropped, then resolved."""
    cleaned = "".join(c for c in target if c not in "\t\n\r")
    return urljoin(BASE, cleaned.strip("\x00 "))


@pytest.mark.parametrize(
    "hostile",
    ["/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example/x", "/\t\\evil.example", "//evil.example",
     "https://evil.example", "/\\evil.example", "\t//evil.example", " //evil.example"],
)  # fmt: skip
def test_a_next_that_a_browser_would_send_off_site_goes_home(hostile: str) -> None:
    assert safe_next(hostile) == "/"


@pytest.mark.parametrize("fine", ["/", "/queue?by=problem", "/alerts/abc#kit", "/patients/P-1"])
def test_paths_of_this_site_are_kept(fine: str) -> None:
    assert safe_next(fine) == fine


@given(st.text(alphabet=st.sampled_from("/\\\t\n\r :.@evilx%0a"), max_size=12))
def test_whatever_next_says_the_browser_stays_on_the_site(target: str) -> None:
    assert _as_browser(safe_next(target)).startswith("https://centre.example.org/")
