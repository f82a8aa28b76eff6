"""fetch_url against a real HTTP server on 127.0.0.1 whose misbehaviour is chosen by path.

Every server loop is bounded (a byte count, a 30 s cap, and the fixture's stop event), so nothing
outlives its test; timings assert what a user would notice: a stalled host costs the deadline, not
forever, and an oversized body is dropped after the cap, not after the whole body.
"""

from __future__ import annotations

import pickle
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from indexing.download import REJECT_REASONS, DownloadError, DownloadLimits, fetch_url

BODY = bytes(range(256)) * 300 + b"end"  # 76,803 bytes: more than one 64 KiB block
HUGE = 50 << 20  # what the oversized routes try to send
SERVER_CAP_S = 30.0  # no handler runs longer than this, whatever the client does
FAST = DownloadLimits(timeout_s=2.0, deadline_s=5.0, retries=2, backoff_s=0.01)


@dataclass
class ServerState:
    hits: Counter[str] = field(default_factory=Counter)  # requests per path
    sent: dict[str, int] = field(default_factory=dict)  # body bytes a route managed to send
    done: dict[str, threading.Event] = field(default_factory=dict)  # set when that route's handler ends
    user_agents: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)  # set at teardown: every loop ends
    lock: threading.Lock = field(default_factory=threading.Lock)

    def finished(self, path: str) -> threading.Event:
        with self.lock:
            return self.done.setdefault(path, threading.Event())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState  # set on the subclass each fixture makes

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        with self.state.lock:
            self.state.hits[url.path] += 1
            hit = self.state.hits[url.path]
            self.state.user_agents.append(self.headers.get("User-Agent", ""))
        route = getattr(self, "route_" + url.path.strip("/").replace("-", "_").replace("%", "_"), None)
        try:
            if route is None:
                self.reply(404, b"no such route")
            else:
                route(hit, query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up, which is what several tests want
        finally:
            self.state.finished(url.path).set()

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def start_unsized(self, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
        self.end_headers()
        self.close_connection = True

    def write_block(self, data: bytes, chunked: bool) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

    def send_huge(self, chunked: bool) -> None:
        self.start_unsized(chunked)
        block, sent = b"x" * (64 << 10), 0
        try:
            while sent < HUGE and not self.state.stop.is_set():
                self.write_block(block, chunked)
                sent += len(block)
        finally:
            self.state.sent[self.path] = sent

    def route_ok(self, hit: int, query: dict[str, str]) -> None:
        self.reply(200, BODY, {"Content-Type": "image/jpeg"})

    def route_caf_C3_A9_20ok(self, hit: int, query: dict[str, str]) -> None:  # /café ok, percent-encoded
        self.reply(200, b"accented")

    def route_huge_chunked(self, hit: int, query: dict[str, str]) -> None:
        self.send_huge(chunked=True)

    def route_huge_close(self, hit: int, query: dict[str, str]) -> None:
        self.send_huge(chunked=False)

    def route_declared_huge(self, hit: int, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(HUGE))
        self.end_headers()
        self.close_connection = True
        self.state.stop.wait(SERVER_CAP_S)  # the body never comes: only the header can have refused it

    def route_trickle(self, hit: int, query: dict[str, str]) -> None:
        self.start_unsized(chunked=False)
        end = time.monotonic() + SERVER_CAP_S
        while time.monotonic() < end and not self.state.stop.wait(0.2):
            self.wfile.write(b"x")

    def route_trickle_headers(self, hit: int, query: dict[str, str]) -> None:
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        end = time.monotonic() + SERVER_CAP_S
        while time.monotonic() < end and not self.state.stop.wait(0.2):
            self.wfile.write(b"a")

    def route_stall(self, hit: int, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.end_headers()
        self.close_connection = True
        self.state.stop.wait(SERVER_CAP_S)  # headers, then silence

    def route_truncated(self, hit: int, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True

    def route_flaky(self, hit: int, query: dict[str, str]) -> None:
        self.reply(503, b"busy") if hit <= 2 else self.reply(200, BODY)

    def route_retry_after(self, hit: int, query: dict[str, str]) -> None:
        self.reply(503, b"busy", {"Retry-After": query["s"]}) if hit == 1 else self.reply(200, BODY)

    def route_forbidden(self, hit: int, query: dict[str, str]) -> None:
        self.reply(403, b"no")

    def route_redirect(self, hit: int, query: dict[str, str]) -> None:
        self.reply(302, b"", {"Location": query["to"]})


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy set in the environment would otherwise carry even 127.0.0.1 requests off this machine.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@dataclass
class Server:
    state: ServerState
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(state, httpd.server_address[1])
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def fetch_error(url: str, limits: DownloadLimits = FAST, **kwargs) -> tuple[DownloadError, float]:
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_url(url, limits, **kwargs)
    return info.value, time.monotonic() - t0


def test_body_is_returned_exactly_with_our_user_agent(server: Server):
    assert fetch_url(server.url("/ok"), FAST) == BODY
    assert server.state.hits["/ok"] == 1
    assert server.state.user_agents[0].startswith("retr/")


def test_non_ascii_url_is_percent_encoded(server: Server):
    assert fetch_url(server.url("/café ok"), FAST) == b"accented"
    assert server.state.hits == {"/caf%C3%A9%20ok": 1}


@pytest.mark.parametrize("route", ["/huge-chunked", "/huge-close"])
def test_body_over_cap_is_dropped_at_cap_plus_one(server: Server, route: str):
    limits = DownloadLimits(max_bytes=1 << 20, timeout_s=2.0, deadline_s=10.0)
    err, elapsed = fetch_error(server.url(route), limits)
    assert err.reject_reason == "download_too_large"
    assert str(err) == f"{server.url(route)}: body exceeds 1.0 MiB limit (read 1,048,577 bytes)"
    assert server.state.finished(route).wait(5)  # the server noticed the hang-up and stopped sending
    # Normally ~1-8 MB (the cap plus what loopback socket buffers hold); all 50 MB means the client kept reading.
    assert server.state.sent[route] < 20 << 20
    assert server.state.hits[route] == 1  # too large is not retried
    assert elapsed < 2.0  # normally ~0.05 s


def test_declared_length_over_cap_is_refused_before_reading(server: Server):
    limits = DownloadLimits(max_bytes=1 << 20, deadline_s=10.0)
    err, elapsed = fetch_error(server.url("/declared-huge"), limits)
    assert err.reject_reason == "download_too_large"
    assert str(err).endswith(": Content-Length 52,428,800 bytes is over the 1.0 MiB limit")
    assert elapsed < 1.0  # the body never comes, so any read would wait for the 10 s deadline


def test_trickling_body_is_cut_off_at_the_deadline(server: Server):
    limits = DownloadLimits(timeout_s=1.0, deadline_s=1.5, retries=2, backoff_s=0.01)
    err, elapsed = fetch_error(server.url("/trickle"), limits)
    assert err.reject_reason == "download_timeout"
    assert "1.5 s deadline" in str(err)
    assert 1.4 < elapsed < 2.5  # normally 1.5 s: each byte comes within timeout_s, so only the deadline stops it
    assert server.state.hits["/trickle"] == 1  # no time left for a retry


def test_trickling_headers_are_cut_off_at_the_deadline(server: Server):
    limits = DownloadLimits(timeout_s=1.0, deadline_s=1.5, retries=0)
    err, elapsed = fetch_error(server.url("/trickle-headers"), limits)
    assert err.reject_reason == "download_timeout"
    assert 1.4 < elapsed < 2.5  # normally 1.5 s; without the deadline, one timeout_s per header byte


def test_silent_server_times_out_per_read_and_is_retried(server: Server):
    limits = DownloadLimits(timeout_s=0.3, deadline_s=5.0, retries=1, backoff_s=0.01)
    err, elapsed = fetch_error(server.url("/stall"), limits)
    assert err.reject_reason == "download_timeout"
    assert str(err) == f"{server.url('/stall')}: no data for 0.3 s (after 2 attempts)"
    assert server.state.hits["/stall"] == 2
    assert 0.6 < elapsed < 1.5  # two 0.3 s timeouts


def test_custom_opener_is_used_and_still_held_to_the_deadline(server: Server):
    opener = urllib.request.build_opener()
    assert fetch_url(server.url("/ok"), FAST, opener=opener) == BODY
    limits = DownloadLimits(timeout_s=1.0, deadline_s=1.0, retries=0)
    err, elapsed = fetch_error(server.url("/trickle"), limits, opener=opener)
    assert err.reject_reason == "download_timeout"
    assert 0.9 < elapsed < 1.5  # checked between blocks: at most one trickled byte (0.2 s) late


@pytest.mark.parametrize(("retries", "hits"), [(2, 3), (1, 2)])
def test_503_is_retried_up_to_retries(server: Server, retries: int, hits: int):
    limits = DownloadLimits(retries=retries, backoff_s=0.01, deadline_s=5.0)
    if retries == 2:
        assert fetch_url(server.url("/flaky"), limits) == BODY
    else:
        err, _ = fetch_error(server.url("/flaky"), limits)
        assert err.reject_reason == "download_http_error"
        assert str(err) == f"{server.url('/flaky')}: HTTP 503 Service Unavailable (after 2 attempts)"
    assert server.state.hits["/flaky"] == hits


@pytest.mark.parametrize(("route", "status"), [("/missing", "404 Not Found"), ("/forbidden", "403 Forbidden")])
def test_permanent_http_errors_are_not_retried(server: Server, route: str, status: str):
    err, _ = fetch_error(server.url(route))
    assert err.reject_reason == "download_http_error"
    assert str(err) == f"{server.url(route)}: HTTP {status}"
    assert server.state.hits[route] == 1


def test_truncated_body_is_a_failure_and_retried(server: Server):
    err, _ = fetch_error(server.url("/truncated"), DownloadLimits(retries=1, backoff_s=0.01))
    assert err.reject_reason == "download_failed"
    assert str(err) == f"{server.url('/truncated')}: body truncated: got 10 of 1,000 bytes (after 2 attempts)"
    assert server.state.hits["/truncated"] == 2


def test_retry_after_is_honoured(server: Server):
    url = server.url("/retry-after?s=1")
    t0 = time.monotonic()
    assert fetch_url(url, DownloadLimits(backoff_s=0.01, deadline_s=5.0)) == BODY
    assert 1.0 <= time.monotonic() - t0 < 2.0  # waited the server's 1 s, not the 0.01 s backoff
    assert server.state.hits["/retry-after"] == 2


def test_retry_after_past_the_deadline_fails_at_once(server: Server):
    url = server.url("/retry-after?s=3600")
    err, elapsed = fetch_error(url, DownloadLimits(deadline_s=2.0, backoff_s=0.01))
    assert err.reject_reason == "download_http_error"
    assert str(err) == f"{url}: HTTP 503 Service Unavailable (Retry-After 3600 s would pass the 2 s deadline)"
    assert elapsed < 0.5  # neither slept an hour nor waited out the deadline
    assert server.state.hits["/retry-after"] == 1


def test_refused_connection_is_retried_then_fails():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound but not listening: connections to it are refused
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.jpg"
        err, elapsed = fetch_error(url, DownloadLimits(retries=2, backoff_s=0.05, deadline_s=5.0))
        assert err.reject_reason == "download_failed"
        assert str(err).startswith(f"{url}: ConnectionRefusedError: ")
        assert str(err).endswith("Connection refused (after 3 attempts)")
        assert 0.15 <= elapsed < 1.0  # waits of 0.05 + 0.1 s

        # Backoff that outgrows the deadline: 0.4 s fits in 1 s, the next 0.8 s does not, so it stops early.
        err, elapsed = fetch_error(url, DownloadLimits(retries=5, backoff_s=0.4, deadline_s=1.0))
        assert err.reject_reason == "download_failed"
        assert str(err).endswith("(after 2 attempts; a retry in 0.8 s would pass the 1 s deadline)")
        assert 0.4 <= elapsed < 1.0


def test_redirects_are_followed_within_http_only(server: Server):
    assert fetch_url(server.url("/redirect?to=/ok"), FAST) == BODY
    url = server.url("/redirect?to=ftp://127.0.0.1/x")
    err, _ = fetch_error(url)
    assert (err.reject_reason, str(err)) == ("download_failed", f"{url}: unknown url type: ftp")
    err, _ = fetch_error(server.url("/redirect?to=file:///etc/passwd"))
    assert err.reject_reason == "download_http_error"
    assert "not allowed" in str(err)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "data:,hello", "/etc/passwd", "http:///x.jpg",
            "http://127.0.0.1:notaport/x.jpg", "javascript:alert(1)"]
)
def test_only_http_urls_with_a_host_are_fetched(url: str):
    err, elapsed = fetch_error(url)
    assert err.reject_reason == "download_failed"
    assert str(err).startswith(f"{url}: ")
    assert elapsed < 0.1  # refused without a request, so without retries


def test_error_is_an_oserror_that_pickles_with_its_reason():
    err = DownloadError("download_timeout", "https://x/y.jpg: not done within the 60 s deadline")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, OSError)
    assert (back.reject_reason, str(back)) == (err.reject_reason, str(err))
    assert err.reject_reason in REJECT_REASONS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0}, "timeout_s must be a finite number of seconds > 0"),
        ({"deadline_s": -1.0}, "deadline_s must be"),
        ({"deadline_s": float("inf")}, "deadline_s must be a finite"),
        ({"backoff_s": float("nan")}, "backoff_s must be"),
        ({"timeout_s": "20"}, "timeout_s must be"),
        ({"max_bytes": 0}, "max_bytes must be an integer >= 1"),
        ({"max_bytes": 1.5e6}, "max_bytes must be an integer"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": True}, "retries must be an integer"),
    ],
)
def test_limits_are_validated(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        DownloadLimits(**kwargs)


def test_zero_retries_and_zero_backoff_are_allowed():
    limits = DownloadLimits(retries=0, backoff_s=0)
    assert (limits.retries, limits.backoff_s) == (0, 0)
