"""Who is sending, and may they send now: HMAC signature or API key per source, body size, rate limit.

Every ingest webhook goes through `read_body` then `authenticate`. Failures are `Problem`s
(413, 401, 429); each interface renders them in its own format (problem+json, OperationOutcome).

Two limits answer 429 with Retry-After: the rate of each authenticated source (`RateLimiter`), and
the requests each client address may have refused before authentication (`FailedAuthLimiter`),
which anyone who can reach the port can send and which would otherwise each be kept.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from shared.auth import (
    API_KEY_HEADER,
    SIGNATURE_HEADER,
    SOURCE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    verify_api_key,
    verify_webhook,
)
from shared.problems import Problem
from shared.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class TokenBucket:
    rate: float
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; return 0 when allowed, else the seconds until a token is available."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class RateLimiter:
    """One token bucket per source, in this process: the limit holds per ingest replica.

    `rate` 0 turns limiting off (a load test on one machine, say).
    """

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def check(self, source: str) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        bucket = self.buckets.get(source)
        if bucket is None:
            bucket = self.buckets[source] = TokenBucket(self.rate, self.burst, float(self.burst), now)
        wait = bucket.take(now)
        if wait > 0:
            raise Problem(
                429,
                "rate-limited",
                "Too many requests",
                f"source {source!r} may send {self.rate:g} requests/s (bursts of {self.burst}); "
                f"retry after {math.ceil(wait)} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )


@dataclass
class FailureWindow:
    """One client address's requests refused before authentication, since the first of its window."""

    started: float
    failures: int = 0  # answered as they were refused (401, 413), and so kept in the quarantine
    refused: int = 0  # answered 429 instead, and not kept


# The window that addresses share once `FailedAuthLimiter.max_addresses` have one each.
OTHER_ADDRESSES = "other addresses"


def address_key(address: str) -> str:
    """What failures are counted under: the address; an IPv6 address's /64, which one host usually
    holds whole (so cycling through it gains nothing); an IPv4-mapped IPv6 address as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:  # not an IP address (a Unix socket's path, say): as given
        return address[:100] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class FailedAuthLimiter:
    """How many requests each client address may have refused before authentication, per window.

    Anyone who can reach ingest can send a request that fails authentication (or is too large to
    read), and each is kept in the quarantine, in part. So up to `limit` of them per address and
    window are answered as they are and kept; after that, until the window ends, they are answered
    429 with Retry-After and nothing is kept but this count (logged when the address reaches the
    limit and when its window ends, and listed by `GET /v1/auth-failures`). Only refusals count: a
    request that authenticates is never refused here, so a trust's integration engine goes on while
    a misconfigured second sender on the same host fails.

    A window starts at an address's first refusal and lasts `window` seconds. At most
    `max_addresses` windows are kept (ended ones are dropped first); further addresses then share
    one window, so the memory used stays bounded however many addresses send. Kept per ingest
    replica, like `RateLimiter`. `limit` 0 turns it off.
    """

    limit: int
    window: float
    max_addresses: int
    clock: Callable[[], float] = time.monotonic
    windows: OrderedDict[str, FailureWindow] = field(default_factory=OrderedDict)
    others: FailureWindow | None = None
    refused_total: int = 0

    def refuse(self, address: str, problem: Problem) -> Problem:
        """The answer to a request from `address` refused before authentication with `problem`:
        `problem` itself while the address is within its limit, else a 429."""
        if self.limit <= 0:
            return problem
        now = self.clock()
        key, window = self._window_of(address_key(address), now)
        if window.failures < self.limit:
            window.failures += 1
            return problem
        window.refused += 1
        self.refused_total += 1
        retry = max(1, math.ceil(window.started + self.window - now))
        if window.refused == 1:
            log.warning(
                "%d requests from %s refused before authentication within %g s: more are answered 429 "
                "and not kept for the next %d s",
                window.failures,
                key,
                self.window,
                retry,
            )
        return Problem(
            429,
            "too-many-auth-failures",
            "Too many requests that failed authentication",
            f"{window.failures} requests from this address were refused before authentication "
            f"within {self.window:g} s ({problem.status}: {problem.detail}); until the window ends, "
            f"such requests are refused without being kept; retry after {retry} s",
            headers={"Retry-After": str(retry)},
        )

    def current(self) -> list[dict[str, object]]:
        """The windows still open: who is failing authentication now, and how much was refused."""
        now = self.clock()
        self._expire(now)
        open_windows = list(self.windows.items())
        if self.others is not None and self.others.started + self.window > now:
            open_windows.append((OTHER_ADDRESSES, self.others))
        return [
            {
                "address": key,
                "failures": w.failures,
                "refused": w.refused,
                "window_ends_in_seconds": max(0, math.ceil(w.started + self.window - now)),
            }
            for key, w in open_windows
        ]

    def _window_of(self, key: str, now: float) -> tuple[str, FailureWindow]:
        self._expire(now)
        window = self.windows.get(key)
        if window is None and len(self.windows) < self.max_addresses:
            window = self.windows[key] = FailureWindow(now)
        if window is not None:
            return key, window
        if self.others is None or self.others.started + self.window <= now:
            if self.others is not None:
                self._ended(OTHER_ADDRESSES, self.others)
            self.others = FailureWindow(now)
        return OTHER_ADDRESSES, self.others

    def _expire(self, now: float) -> None:
        """Drop the windows that have ended. All are as long and are added as they start, so the
        ended ones are the first in the table."""
        while self.windows:
            key, first = next(iter(self.windows.items()))
            if first.started + self.window > now:
                return
            del self.windows[key]
            self._ended(key, first)

    def _ended(self, key: str, window: FailureWindow) -> None:
        if window.refused:
            log.warning(
                "window of %g s ended for %s: %d requests refused before authentication were kept, "
                "%d more answered 429 and not kept",
                self.window,
                key,
                window.failures,
                window.refused,
            )


def failed_auth_limiter(runtime: Runtime) -> FailedAuthLimiter:
    found = runtime.extra.get("failed_auth_limiter")
    if found is None:
        settings = runtime.settings
        found = runtime.extra["failed_auth_limiter"] = FailedAuthLimiter(
            settings.auth_failure_limit,
            settings.auth_failure_window_seconds,
            settings.auth_failure_addresses,
        )
    assert isinstance(found, FailedAuthLimiter)
    return found


def client_address(request: Request) -> str:
    """The connection's peer; the client behind it only when the server was told to believe the
    peer's X-Forwarded-For (`ICC_TRUSTED_PROXIES`, which `icc` hands to uvicorn)."""
    client = request.client
    return client.host if client is not None else ""


def refused_before_authentication(request: Request, runtime: Runtime, problem: Problem) -> Problem:
    """`problem` (401, 413), or a 429 once the client's address has had too many refused."""
    return failed_auth_limiter(runtime).refuse(client_address(request), problem)


def too_large(limit: int) -> Problem:
    return Problem(413, "too-large", "Request body too large", f"the limit is {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _refused_as_too_large(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise _refused_as_too_large(request, limit)
    return bytes(body)


def _refused_as_too_large(request: Request, limit: int) -> Problem:
    """A body too large to read is refused before it can be authenticated: it counts as a failure."""
    runtime: Runtime = request.app.state.runtime
    return refused_before_authentication(request, runtime, too_large(limit))


def authenticate(request: Request, runtime: Runtime, body: bytes) -> str:
    """The authenticated source of this request (API key or HMAC signature), within its rate limit.

    Only a request that fails is counted against its client address (`FailedAuthLimiter`)."""
    claimed = request.headers.get(SOURCE_HEADER)
    api_key = request.headers.get(API_KEY_HEADER)
    try:
        if api_key is not None:
            source = verify_api_key(runtime.secrets.api_keys, presented=api_key, source=claimed)
        else:
            source = verify_webhook(
                runtime.secrets.webhook_secrets,
                source=claimed,
                timestamp=request.headers.get(TIMESTAMP_HEADER),
                signature=request.headers.get(SIGNATURE_HEADER),
                body=body,
                max_skew_seconds=runtime.settings.webhook_max_skew_seconds,
            )
    except AuthError as exc:
        unauthenticated = Problem(
            401,
            "bad-signature",
            "Webhook not authenticated",
            f"{exc.detail} (sign with {SIGNATURE_HEADER} or send {API_KEY_HEADER})",
        )
        raise refused_before_authentication(request, runtime, unauthenticated) from exc
    limiter(runtime).check(source)
    return source


def limiter(runtime: Runtime) -> RateLimiter:
    found = runtime.extra.get("rate_limiter")
    if found is None:
        settings = runtime.settings
        found = runtime.extra["rate_limiter"] = RateLimiter(
            settings.rate_limit_per_second, settings.rate_limit_burst
        )
    assert isinstance(found, RateLimiter)
    return found
