"""Download: an image URL from a manifest → its bytes, or a `DownloadError` with a reject reason.

A bare `urlopen(url, timeout=20).read()` has two holes that a large crawl always finds. The timeout
applies to each socket read, not to the download, so a server that trickles one byte every few
seconds (or never finishes its headers) holds a worker forever. And `.read()` takes the whole body
into memory before anyone can look at its size, so one 400 MB "image" can take a worker down. Here
every download has one overall deadline (`DownloadLimits.deadline_s`, retries and their waits
included) that every socket read is held to, and the body is streamed in blocks against a byte cap.

Every failure ends as a `DownloadError` whose `reject_reason` is a short token for the reject tables
(`REJECT_REASONS`) and whose message names the URL, so one bad host never stops a build. It is an
`OSError`, so code that already treats unreadable files as rejects also catches it.

Choices worth knowing:
- Only http:// and https://, also after redirects: the default opener has no file:, ftp: or data:
  handlers, so a manifest row or a redirect cannot make the indexer read local files.
- Retries are for what may pass (timeouts, dropped connections, truncated bodies, HTTP 408, 429 and
  5xx gateway errors); a 404 or a body over the cap will be the same next time. Waits double from
  `backoff_s`, a server's `Retry-After: <seconds>` replaces the wait, and a wait that would end past
  the deadline is not started: the download fails at once instead of sleeping only to time out.
- Non-ASCII characters and spaces in a URL's path and query are percent-encoded (as browsers do),
  since manifests hold such URLs and http.client refuses them.
"""

from __future__ import annotations

import functools
import http.client
import io
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

REJECT_REASONS = (
    "download_timeout", "download_too_large", "download_http_error", "download_failed", "download_refused"
)
USER_AGENT = "retr/0.1 (+image-text retrieval indexer)"

# HTTP statuses that say "not now" rather than "no": request timeout, rate limit, and server or gateway trouble.
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_BLOCK = 64 << 10  # bytes asked for per read: large enough to be cheap, small enough to check often
_SCHEMES = ("http", "https")
# Left as they are when percent-encoding a URL: RFC 3986 delimiters, and "%" so existing escapes survive.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


class DownloadError(OSError):
    """A URL that could not be fetched. `reject_reason` is one of `REJECT_REASONS`; the message names the URL."""

    def __init__(self, reject_reason: str, message: str) -> None:
        super().__init__(message)
        self.reject_reason = reject_reason

    def __reduce__(self):  # keep `reject_reason` when sent across processes (DataLoader workers)
        return type(self), (self.reject_reason, str(self))


@dataclass(frozen=True)
class DownloadLimits:
    timeout_s: float = 20.0  # per connect and per socket read; also never more than the time left
    deadline_s: float = 60.0  # the whole download: every attempt, read and wait between attempts
    max_bytes: int = 64 << 20  # body cap, checked while streaming and up front from Content-Length
    retries: int = 2  # extra attempts after a transient failure (so at most retries + 1 requests)
    backoff_s: float = 0.5  # first wait between attempts, doubled after each; 0 retries at once

    def __post_init__(self) -> None:
        _check_seconds("timeout_s", self.timeout_s, allow_zero=False)
        _check_seconds("deadline_s", self.deadline_s, allow_zero=False)
        _check_seconds("backoff_s", self.backoff_s, allow_zero=True)
        _check_int("max_bytes", self.max_bytes, 1)
        _check_int("retries", self.retries, 0)


def _check_seconds(field: str, value: object, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{field} must be a finite number of seconds {bound}, got {value!r}")


def _check_int(field: str, value: object, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{field} must be an integer >= {lo}, got {value!r}")


def fetch_url(
    url: str,
    limits: DownloadLimits = DownloadLimits(),
    *,
    opener: urllib.request.OpenerDirector | None = None,
) -> bytes:
    """The body of `url`, fetched within `limits`. Only http:// and https://; raises `DownloadError`.

    `opener` replaces the default opener (tests, proxies, cookies). Its connections are its own, so the
    deadline is then checked between body blocks only, not inside each socket read or the headers, and
    its redirects go wherever its handlers allow.
    """
    target = _request_target(url)
    deadline = _Deadline(limits, time.monotonic() + limits.deadline_s)
    opener = opener if opener is not None else _opener(deadline)
    attempt = 0
    while True:
        attempt += 1
        try:
            return _fetch_once(opener, target, limits, deadline)
        except _Failure as failure:
            wait = failure.retry_after_s if failure.retry_after_s is not None else limits.backoff_s * 2 ** (attempt - 1)
            if not failure.transient or attempt > limits.retries or wait >= deadline.left():
                note = _give_up_note(failure, attempt, wait, limits, deadline)
                raise DownloadError(failure.reject_reason, f"{_shown(url)}: {failure.detail}{note}") from failure.cause
            time.sleep(wait)


class _Failure(Exception):
    """One attempt's failure, before we know whether it is the last."""

    def __init__(
        self, reject_reason: str, detail: str, *, transient: bool = False, retry_after_s: float | None = None
    ) -> None:
        super().__init__(detail)
        self.reject_reason, self.detail = reject_reason, detail
        self.transient, self.retry_after_s = transient, retry_after_s
        self.cause: BaseException | None = None


def _give_up_note(failure: _Failure, attempt: int, wait: float, limits: DownloadLimits, deadline: _Deadline) -> str:
    """Why there was no further attempt, when that is not obvious from the failure itself."""
    tries = f"after {attempt} attempts" if attempt > 1 else ""
    if failure.transient and attempt <= limits.retries and deadline.left() > 0:
        waited = f"Retry-After {wait:g} s" if failure.retry_after_s is not None else f"a retry in {wait:g} s"
        why = f"{waited} would pass the {limits.deadline_s:g} s deadline"
        return f" ({tries}; {why})" if tries else f" ({why})"
    return f" ({tries})" if tries else ""


def _shown(url: str, limit: int = 300) -> str:
    # Signed URLs can run to kilobytes; a reject message only has to say which one it was.
    return url if len(url) <= limit else url[: limit - 3] + "..."


def _request_target(url: str) -> str:
    """`url` checked (http(s) with a host) and with its path and query percent-encoded where needed."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises ValueError on a bad port
    except ValueError as e:
        raise DownloadError("download_failed", f"{_shown(url)}: not a valid URL ({e})") from e
    if parts.scheme not in _SCHEMES:
        shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise DownloadError("download_failed", f"{_shown(url)}: only http:// and https:// URLs are fetched ({shown})")
    if not host:
        raise DownloadError("download_failed", f"{_shown(url)}: URL has no host")
    quote = functools.partial(urllib.parse.quote, safe=_URL_SAFE)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, quote(parts.path), quote(parts.query), ""))


@dataclass(frozen=True)
class _Deadline:
    limits: DownloadLimits
    end: float  # on the time.monotonic() clock

    def left(self) -> float:
        return self.end - time.monotonic()

    def read_timeout(self) -> float:
        """The socket timeout for the next connect or read; raises TimeoutError once the deadline has passed."""
        left = self.left()
        if left <= 0:
            raise TimeoutError(f"the {self.limits.deadline_s:g} s deadline passed")
        return min(self.limits.timeout_s, left)


def _fetch_once(opener: urllib.request.OpenerDirector, url: str, limits: DownloadLimits, deadline: _Deadline) -> bytes:
    """One request. Every failure leaves as a `_Failure` saying whether another attempt may help."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with opener.open(request, timeout=deadline.read_timeout()) as response:
            return _read_body(response, limits, deadline)
    except urllib.error.HTTPError as e:  # before OSError: HTTPError is one
        e.close()  # it holds the response, and with it the connection
        raise _caused(_http_failure(e), e) from e
    except (OSError, http.client.HTTPException, ValueError) as e:  # ValueError: http.client's InvalidURL, IDNA
        raise _caused(_io_failure(e, deadline), e) from e


def _caused(failure: _Failure, cause: BaseException) -> _Failure:
    failure.cause = cause
    return failure


def _read_body(response: http.client.HTTPResponse, limits: DownloadLimits, deadline: _Deadline) -> bytes:
    """The body, read block by block so that both the byte cap and the deadline stop it early."""
    declared = _declared_length(response)
    if declared is not None and declared > limits.max_bytes:
        raise _Failure("download_too_large", f"Content-Length {declared:,} bytes is over the {_size(limits)} limit")
    # read1 returns what one socket read brings; read(n) would wait for all n bytes of a trickle.
    read = getattr(response, "read1", response.read)
    blocks, n = [], 0
    while True:
        deadline.read_timeout()  # raises once the deadline has passed, even while bytes keep coming
        # Never ask for more than one byte past the cap, so an oversized body costs at most max_bytes + 1.
        block = read(min(_BLOCK, limits.max_bytes + 1 - n))
        if not block:
            break
        n += len(block)
        if n > limits.max_bytes:
            raise _Failure("download_too_large", f"body exceeds {_size(limits)} limit (read {n:,} bytes)")
        blocks.append(block)
    if declared is not None and n < declared:
        # http.client's read1 ends quietly when the connection drops mid-body; a cut-off image is not an image.
        raise _Failure("download_failed", f"body truncated: got {n:,} of {declared:,} bytes", transient=True)
    return b"".join(blocks)


def _declared_length(response: http.client.HTTPResponse) -> int | None:
    if "chunked" in (response.headers.get("Transfer-Encoding") or "").lower():
        return None  # a Content-Length next to chunked framing is ignored by HTTP/1.1 and by http.client
    try:
        n = int(response.headers.get("Content-Length") or "")
    except ValueError:
        return None
    return n if n >= 0 else None


def _size(limits: DownloadLimits) -> str:
    n = limits.max_bytes
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 10):.1f} KiB" if n >= 1 << 10 else f"{n:,} byte"


def _http_failure(e: urllib.error.HTTPError) -> _Failure:
    transient = e.code in _TRANSIENT_STATUS
    retry_after = _retry_after_s(e.headers.get("Retry-After") if e.headers else None) if transient else None
    return _Failure("download_http_error", f"HTTP {e.code} {e.reason}", transient=transient, retry_after_s=retry_after)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After in its seconds form. The HTTP-date form is left to the backoff: it trusts the server's clock."""
    value = (value or "").strip()
    return float(value) if value.isdigit() else None


def _io_failure(e: BaseException, deadline: _Deadline) -> _Failure:
    # urllib wraps errors raised while connecting or sending in URLError; what happened is its .reason.
    if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, BaseException):
        return _Failure("download_failed", str(e.reason))  # e.g. "unknown url type: ftp" after a redirect
    cause = e.reason if isinstance(e, urllib.error.URLError) else e
    limits = deadline.limits
    if isinstance(cause, TimeoutError):
        if deadline.left() <= 0:
            return _Failure("download_timeout", f"not done within the {limits.deadline_s:g} s deadline", transient=True)
        return _Failure("download_timeout", f"no data for {limits.timeout_s:g} s", transient=True)
    detail = f"{type(cause).__name__}: {cause}"
    # Dropped and refused connections and cut-off bodies may pass; bad certificates, bad URLs and unknown hosts
    # will not (EAI_AGAIN is the resolver saying "try again").
    transient = isinstance(cause, (ConnectionError, http.client.IncompleteRead)) or (
        isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_AGAIN
    )
    return _Failure("download_failed", detail, transient=transient)


class _DeadlineReader(io.RawIOBase):
    """A response's socket reader that sets each read's timeout to min(timeout_s, time left) first.

    http.client reads the status line, the headers and the body through this, so a server that
    trickles any of them is cut off at the deadline, not after one timeout_s per byte.
    """

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: _Deadline) -> None:
        super().__init__()
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int | None:
        self._sock.settimeout(self._deadline.read_timeout())
        return self._raw.readinto(b)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args, deadline: _Deadline, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        # Nothing has been read yet, so the buffered reader can be taken apart and rebuilt over our reader.
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))


class _DeadlineHandler(urllib.request.AbstractHTTPHandler):
    """http and https through connections whose responses read under one download's deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection(http.client.HTTPConnection), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection(http.client.HTTPSConnection), req)

    http_request = urllib.request.AbstractHTTPHandler.do_request_
    https_request = urllib.request.AbstractHTTPHandler.do_request_

    def _connection(self, base: type[http.client.HTTPConnection]):
        def connect(host: str, **kwargs) -> http.client.HTTPConnection:
            conn = base(host, **kwargs)
            conn.response_class = functools.partial(_DeadlineResponse, deadline=self._deadline)
            return conn

        return connect


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib's usual http(s) chain (proxies from the environment, redirects, errors) and nothing else:
    without file:, ftp: and data: handlers a redirect can only lead to another http(s) URL."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _DeadlineHandler(deadline),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def check_public_url(url: str) -> None:
    """Refuse a URL whose host resolves to a loopback, private, link-local or otherwise non-public
    address: a server that fetches URLs for clients must not become their way into its own network.

    The check resolves the name once; a name whose answer changes between this check and the fetch
    (DNS rebinding) is not covered, so keep URL fetching off where that matters."""
    import ipaddress
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError("download_failed", f"{_shown(url)}: only http(s) URLs with a host are fetched")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (OSError, UnicodeError) as e:
        raise DownloadError("download_failed", f"{_shown(url)}: cannot resolve {parts.hostname}: {e}") from e
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if not addr.is_global or addr.is_multicast:
            raise DownloadError("download_refused", f"{_shown(url)}: {parts.hostname} is {addr}, not a public address")
