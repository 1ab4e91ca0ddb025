"""How many requests one client address may have refused before authentication, and what is kept of
the count: per window, bounded however many addresses send."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ingest.source_auth import OTHER_ADDRESSES, FailedAuthLimiter, address_key
from shared.problems import Problem
from shared.settings import Settings

pytestmark = pytest.mark.unit

WINDOW = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def unauthenticated() -> Problem:
    return Problem(401, "bad-signature", "Webhook not authenticated", "no signature")


def limiter(clock: Clock, *, limit: int = 3, addresses: int = 100) -> FailedAuthLimiter:
    return FailedAuthLimiter(limit, WINDOW, addresses, clock=clock)


def test_an_address_is_answered_as_refused_up_to_the_limit_then_429_until_its_window_ends() -> None:
    clock = Clock()
    failures = limiter(clock)
    assert [failures.refuse("192.0.2.7", unauthenticated()).status for _ in range(3)] == [401] * 3

    clock.now += 20
    over = failures.refuse("192.0.2.7", unauthenticated())
    assert over.status == 429 and over.kind == "too-many-auth-failures"
    assert over.headers == {"Retry-After": "40"}  # the window started at the first failure
    assert "no signature" in over.detail
    clock.now += 39.5
    assert failures.refuse("192.0.2.7", unauthenticated()).headers == {"Retry-After": "1"}
    assert failures.refused_total == 2
    assert failures.current() == [
        {"address": "192.0.2.7", "failures": 3, "refused": 2, "window_ends_in_seconds": 1}
    ]

    # another address has a count of its own
    assert failures.refuse("192.0.2.8", unauthenticated()).status == 401

    clock.now += 0.5  # the window has ended: the address starts again
    assert failures.refuse("192.0.2.7", unauthenticated()).status == 401
    assert [w["address"] for w in failures.current()] == ["192.0.2.8", "192.0.2.7"]


def test_any_refusal_before_authentication_counts_and_the_429_says_which() -> None:
    clock = Clock()
    failures = limiter(clock, limit=1)
    too_large = Problem(413, "too-large", "Request body too large", "the limit is 10 bytes")
    assert failures.refuse("192.0.2.7", too_large) is too_large
    over = failures.refuse("192.0.2.7", unauthenticated())
    assert over.status == 429 and "401: no signature" in over.detail


def test_the_table_of_addresses_is_bounded_and_further_addresses_share_one_count() -> None:
    clock = Clock()
    failures = limiter(clock, limit=2, addresses=3)
    for n in range(1000):  # each from an address of its own
        failures.refuse(f"10.0.{n // 256}.{n % 256}", unauthenticated())
    assert list(failures.windows) == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]
    assert failures.current()[-1] == {
        "address": OTHER_ADDRESSES,
        "failures": 2,
        "refused": 1000 - 3 - 2,
        "window_ends_in_seconds": 60,
    }
    assert failures.refuse("203.0.113.1", unauthenticated()).status == 429  # a new address shares it

    clock.now += WINDOW  # every window has ended: all are dropped, the table fills again
    assert failures.current() == []
    assert failures.refuse("203.0.113.1", unauthenticated()).status == 401
    assert list(failures.windows) == ["203.0.113.1"]


def test_an_ipv6_address_counts_by_its_64_and_a_mapped_ipv4_address_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("") == "unknown"

    clock = Clock()
    failures = limiter(clock, limit=1)
    failures.refuse("2001:db8:1:2::1", unauthenticated())
    assert failures.refuse("2001:db8:1:2::2", unauthenticated()).status == 429


def test_a_limit_of_0_turns_it_off() -> None:
    failures = limiter(Clock(), limit=0)
    assert {failures.refuse("192.0.2.7", unauthenticated()).status for _ in range(100)} == {401}
    assert failures.current() == []


def test_the_settings_default_and_trusted_proxies_must_be_addresses_or_networks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "ICC_AUTH_FAILURE_LIMIT",
        "ICC_AUTH_FAILURE_WINDOW_SECONDS",
        "ICC_AUTH_FAILURE_ADDRESSES",
        "ICC_TRUSTED_PROXIES",
    ):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert (
        defaults.auth_failure_limit,
        defaults.auth_failure_window_seconds,
        defaults.auth_failure_addresses,
        defaults.trusted_proxies,
    ) == (10, 300.0, 10_000, "")

    monkeypatch.setenv("ICC_TRUSTED_PROXIES", " 10.0.0.5, 10.1.0.0/16 ,::1")
    assert Settings().trusted_proxies == "10.0.0.5/32,10.1.0.0/16,::1/128"
    monkeypatch.setenv("ICC_TRUSTED_PROXIES", "10.0.0.5,proxy.example")
    with pytest.raises(ValidationError, match=r"ICC_TRUSTED_PROXIES entry 'proxy\.example'"):
        Settings()
