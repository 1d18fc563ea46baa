"""The EHR outbox against hostile or broken endpoints, URLs, notes and key files (issue #33 item 2;
regression tests of the review of the outbox): no transaction held while posting, an attempt bounded
in time and bytes, what is retried and what is given up, the narrative always well-formed XHTML."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alerts.ehr import Signer, SigningKeyError
from alerts.record import document_bytes
from alerts.service import ehr_round_s, stall_after
from alerts.settings import AlertsSettings
from alerts.workers.ehr_outbox import Answer, EhrEndpoint, deliver_due
from runtime.settings import ConfigError
from tests.unit.alerts.test_record_document import build

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


# --- a hostile endpoint ----------------------------------------------------------------------------


class _Hostile:
    """A one-connection HTTP server that answers with `head` and then `body_chunks()`, counting what
    it managed to write before the client hung up."""

    def __init__(self, head: bytes, chunks: Iterator[bytes]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/fhir"
        self.head, self.chunks = head, chunks
        self.written = 0
        self.finished = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(30)
            got = b""
            while b"\r\n\r\n" not in got:
                got += conn.recv(65536)
            head, _, body = got.partition(b"\r\n\r\n")
            sizes = [line.split(b":")[1] for line in head.split(b"\r\n") if b"content-length" in line.lower()]
            length = int(sizes[0]) if sizes else 0
            while len(body) < length:
                body += conn.recv(65536)
            try:
                conn.sendall(self.head)
                for chunk in self.chunks:
                    conn.sendall(chunk)
                    self.written += len(chunk)
                self.finished = True
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass
            except OSError:
                return  # the client hung up: what we want

    def close(self) -> None:
        self.thread.join(timeout=30)
        self.sock.close()


def test_a_huge_answer_is_not_read_whole() -> None:
    """An endpoint answering 400 with a 64 MiB body: the client reads at most a few KiB of it (only
    200 characters are kept) and hangs up, rather than buffer all of it in memory."""
    size = 64 * 1024 * 1024
    chunk = b"x" * 65536
    server = _Hostile(
        f"HTTP/1.1 400 Bad Request\r\nContent-Length: {size}\r\n\r\n".encode(),
        iter([chunk] * (size // len(chunk))),
    )
    answer = EhrEndpoint(server.url, timeout_s=5).post(b"{}", {})
    server.close()
    assert answer.status == 400
    assert server.written < 4 * 1024 * 1024, f"the client read {server.written} bytes of the answer"


def test_a_trickling_answer_is_cut_at_the_attempt_timeout() -> None:
    """VAKTROM_ALERTS_EHR_TIMEOUT_S is 'how long one delivery attempt may take'. An endpoint that
    sends one byte every 0.1 s (below httpx's per-read timeout) for 8 s is cut at ~0.5 s: the attempt
    does not last as long as the endpoint likes (a never-ending one would wedge the worker)."""

    def drip() -> Iterator[bytes]:
        for _ in range(80):
            threading.Event().wait(0.1)
            yield b"x"

    server = _Hostile(b"HTTP/1.1 200 OK\r\nContent-Length: 80\r\n\r\n", drip())
    EhrEndpoint(server.url, timeout_s=0.5).post(b"{}", {})
    server.close()
    assert not server.finished, "the attempt waited for the whole trickling body"


@pytest.mark.parametrize("url", ["http://ehr..example/fhir", "http://[::1/fhir"])
def test_a_malformed_url_fails_at_start_up_or_answers_unreachable(url: str, tmp_path: Path) -> None:
    """A URL httpx cannot use (an empty IDNA label, an unclosed IPv6 bracket) is refused at start-up;
    were one to get through, post() answers 'unreachable' rather than raise UnicodeError or
    InvalidURL past deliver_due (which left the row 'queued' forever, never attempted)."""
    key = tmp_path / "k.pem"
    key.write_bytes(_pem())
    key.chmod(0o600)
    try:
        AlertsSettings.from_env({"VAKTROM_ALERTS_EHR_URL": url, "VAKTROM_ALERTS_EHR_SIGNING_KEY": str(key)})
    except ConfigError:
        return  # refused at start-up: fine
    answer = EhrEndpoint(url, timeout_s=0.5).post(b"{}", {})  # must not raise
    assert answer.status is None
    assert answer.error


# --- delivery decisions (a fake connection: no database needed) ------------------------------------


class _Cursor:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> None:
        self.conn.sql.append((sql, params))

    def fetchone(self) -> Any:
        """A due row for a claim; nothing for anything else (no overdue rows)."""
        claim = "RETURNING outbox_id" in self.conn.sql[-1][0]
        return self.conn.rows.pop(0) if claim and self.conn.rows else None


class _Conn:
    def __init__(self, rows: list[Any]) -> None:
        self.rows, self.sql = rows, []  # type: ignore[var-annotated]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def cursor(self) -> _Cursor:
        return _Cursor(self)


class _Says:
    def __init__(self, status: int | None) -> None:
        self.status = status

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        return Answer(self.status, "nope")


def _one_row() -> list[Any]:
    return [(1, "6f1c2a9e-0b7d-4c1e-9a35-2d8f0e4b7c11", "e" * 32, b"{}", "ed25519=x", "kid", 0,
             NOW + timedelta(hours=24))]  # fmt: skip


@pytest.mark.parametrize("status", [301, 302, 307, 401, 403, 404])
def test_endpoint_trouble_is_retried_not_given_up_at_once(status: int) -> None:
    """401/403 (an expired credential or ACL at the EHR), 404 (a wrong path, a deploy in progress) and
    3xx (http->https or a moved endpoint) say nothing about the document: they are the centre's or
    the EHR's configuration trouble, so they are retried until the deadline, not given up at once
    (ten minutes of a broken EHR proxy must not turn those minutes' resolutions into 'document by
    hand')."""
    conn = _Conn(_one_row())
    done = deliver_due(conn, _Says(status), now=NOW)  # type: ignore[arg-type]
    assert done.given_up == 0
    assert done.failed == 1


@pytest.mark.parametrize("status", [400, 409, 413, 415, 422])
def test_a_refusal_of_the_document_itself_is_given_up_at_once(status: int) -> None:
    """400, 409, 413, 415 and 422 say the document itself is refused: the same bytes cannot fare
    better, so it is given up at the first attempt, with the reason kept."""
    conn = _Conn(_one_row())
    done = deliver_due(conn, _Says(status), now=NOW)  # type: ignore[arg-type]
    assert (done.failed, done.given_up) == (0, 1)
    assert any(f"HTTP {status}: nope" in str(params) for _sql, params in conn.sql)


def test_control_characters_in_an_answer_are_not_stored() -> None:
    """NUL and other control characters an endpoint answers with are replaced before the reason is
    written (PostgreSQL's text and JSONB refuse NUL, which made the outcome unrecordable)."""
    conn = _Conn(_one_row())

    class Binary:
        def post(self, body: bytes, headers: dict[str, str]) -> Answer:
            return Answer(400, "\x00\x01bin\x1b[0m")

    deliver_due(conn, Binary(), now=NOW)  # type: ignore[arg-type]
    written = " ".join(
        str(value) for _sql, params in conn.sql if isinstance(params, tuple) for value in params if value
    )
    assert "\x00" not in written
    assert "\x1b" not in written
    assert "bin" in written


# --- hostile note text ------------------------------------------------------------------------------


@pytest.mark.parametrize("note", ["a\x0bb", "esc \x1b[31m red", "form\x0cfeed", "bom \ufffe"])
def test_a_pasted_control_character_keeps_the_narrative_well_formed_xhtml(note: str) -> None:
    """FHIR narrative is XHTML (XML 1.0): characters such as VT, ESC, FF, U+FFFE are not allowed in
    XML at all, and html.escape leaves them in: they are replaced, so a note pasted from a word
    processor keeps the Composition's div parsable (the EHR would refuse it and it be given up)."""
    doc = build(note=note)
    for section in doc["entry"][0]["resource"]["section"]:
        ET.fromstring(section["text"]["div"])  # noqa: S314 (our own text)


def test_bidi_overrides_in_the_note_do_not_reach_the_record() -> None:
    """U+202E (right-to-left override) in a note would make the record show text other than what it
    holds ('Gave 10 mg' displayed as 'gm 01 evaG'): it is replaced before it reaches the document."""
    body = document_bytes(build(note="Gave \u202e01 mg\u202c")).decode()
    assert "\u202e" not in body


# --- signing key ------------------------------------------------------------------------------------


def _pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_a_world_readable_signing_key_is_refused(tmp_path: Path) -> None:
    """Anyone who can read the key can sign 'nurse notes' the EHR will file in a patient's record.
    Like the project's other secrets (identity.key, credentials) the key must be 0600: a 0644 file
    is refused at start-up, saying to chmod it."""
    key = tmp_path / "ehr-signing.pem"
    key.write_bytes(_pem())
    os.chmod(key, 0o644)
    with pytest.raises(SigningKeyError, match=r"0600|readable"):
        Signer.from_file(str(key), env="VAKTROM_ALERTS_EHR_SIGNING_KEY")


class _Clock:
    """A monotonic clock that each post moves on by `step` seconds (no real waiting)."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        return self.t


class _Slow:
    """An endpoint whose every answer takes `clock.step` seconds."""

    def __init__(self, clock: _Clock, status: int | None) -> None:
        self.clock, self.status, self.posts = clock, status, 0

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        self.posts += 1
        self.clock.t += self.clock.step
        return Answer(self.status, "" if self.status else "endpoint unreachable: ConnectTimeout")


@pytest.mark.parametrize("status", [None, 500, 503])
def test_a_round_ends_at_the_first_unreachable_or_server_error_answer(status: int | None) -> None:
    """With the EHR down (packets dropped, 5xx) a round makes one attempt, not one per due row:
    twenty rows of ten-second timeouts would outlast the worker's stall limit of 62 s."""
    conn = _Conn(_one_row() * 20)
    endpoint = _Slow(_Clock(10.0), status)
    done = deliver_due(conn, endpoint, now=NOW, clock=endpoint.clock)  # type: ignore[arg-type]
    assert endpoint.posts == 1
    assert (done.failed, done.given_up) == (1, 0)


@pytest.mark.parametrize(("timeout_s", "every_s"), [(10.0, 2.0), (30.0, 0.1), (0.5, 600.0), (30.0, 600.0)])
def test_a_round_of_slow_answers_fits_in_the_stall_budget(timeout_s: float, every_s: float) -> None:
    """An EHR that accepts every document but takes the whole attempt timeout to answer: the worker
    starts no attempt past its round budget, so the round (its last attempt included) ends within
    half the stall limit the supervisor gives the worker, for any allowed timeout and period."""
    s = AlertsSettings.from_env(
        {"VAKTROM_ALERTS_EHR_TIMEOUT_S": str(timeout_s), "VAKTROM_ALERTS_EHR_EVERY_S": str(every_s)}
    )
    stall = stall_after(s.ehr_every_s)
    clock = _Clock(s.ehr_timeout_s)
    endpoint = _Slow(clock, 201)
    done = deliver_due(  # type: ignore[arg-type]
        _Conn(_one_row() * 20), endpoint, now=NOW, clock=clock, round_s=ehr_round_s(s, stall)
    )
    assert done.delivered == endpoint.posts >= 1
    assert clock.t <= stall / 2


def test_an_attempt_timeout_over_thirty_seconds_is_refused() -> None:
    """One attempt may not take half the stall limit on its own."""
    with pytest.raises(ConfigError, match="VAKTROM_ALERTS_EHR_TIMEOUT_S"):
        AlertsSettings.from_env({"VAKTROM_ALERTS_EHR_TIMEOUT_S": "31"})


class _Catcher:
    """A local HTTP server that records every POST it gets (a proxy, or the host a redirect names)."""

    def __init__(self, status: int = 201, location: str = "") -> None:
        got: list[tuple[str, bytes]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                got.append((self.path, self.rfile.read(int(self.headers.get("Content-Length", "0")))))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.got = got
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_proxy_from_the_environment_does_not_get_the_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy set in the service's environment (HTTP_PROXY) for other traffic never receives the
    signed patient documents: the endpoint's client does not read the environment."""
    proxy = _Catcher()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    EhrEndpoint("http://ehr.hospital.invalid/fhir", timeout_s=2).post(b'{"note":"..."}', {})
    proxy.close()
    assert proxy.got == []


def test_a_redirect_to_another_host_is_not_followed() -> None:
    """A 307 naming another host is not followed; the other host gets nothing."""
    other = _Catcher()
    ehr = _Catcher(status=307, location=f"{other.url}/steal")
    answer = EhrEndpoint(f"{ehr.url}/fhir", timeout_s=2).post(b"{}", {})
    ehr.close()
    other.close()
    assert answer.status == 307
    assert other.got == []
