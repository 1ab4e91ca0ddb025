"""Who is sending, and may they send now: HMAC signature or API key per source, body size, rate limit.

Every ingest webhook goes through `read_body` then `authenticate`. Failures are `Problem`s
(413, 401, 429); each interface renders them in its own format (problem+json, OperationOutcome).
"""

from __future__ import annotations

import math
import time
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


def too_large(limit: int) -> Problem:
    return Problem(413, "too-large", "Request body too large", f"the limit is {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


def authenticate(request: Request, runtime: Runtime, body: bytes) -> str:
    """The authenticated source of this request (API key or HMAC signature), within its rate limit."""
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
        raise Problem(
            401,
            "bad-signature",
            "Webhook not authenticated",
            f"{exc.detail} (sign with {SIGNATURE_HEADER} or send {API_KEY_HEADER})",
        ) from exc
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
