"""The throttles of the expensive public endpoints (catalog/api/throttling.py): who a client is,
and counters that hold under parallel requests, against the test run's real Redis.

The three throttled doors are search by photo (the API and the shop's HTML page share the budget)
and the token endpoint (password guessing)."""

import threading
import uuid

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory
from django.urls import reverse
from rest_framework.throttling import SimpleRateThrottle

from catalog.api.throttling import AuthTokenThrottle, ImageSearchAnonThrottle
from tests.factories import upload

pytestmark = pytest.mark.django_db


def _rates(settings, *, num_proxies=None, **rates):
    drf = {**settings.REST_FRAMEWORK,
           "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **rates}}
    if num_proxies is not None:
        drf["NUM_PROXIES"] = num_proxies
    settings.REST_FRAMEWORK = drf


# Cheap requests (each is refused with 400 after the throttle let it through) to each throttled door.
DOORS = {
    "search-api": (ImageSearchAnonThrottle.scope, lambda client, **extra: client.post(
        "/api/v1/search/image/", {"image": upload(b"nope")}, format="multipart", **extra)),
    "search-page": (ImageSearchAnonThrottle.scope, lambda client, **extra: client.post(
        reverse("catalog:photo_search"), {"photo": upload(b"nope", "x.png")}, **extra)),
    "auth-token": (AuthTokenThrottle.scope, lambda client, **extra: client.post(
        "/api/v1/auth/token/", {"username": "nobody", "password": "guess"}, format="json", **extra)),
}


def _random_address():
    return f"198.51.100.{uuid.uuid4().int % 250 + 1}, {uuid.uuid4()}"


@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_new_x_forwarded_for_per_request_does_not_get_a_new_budget(door, anon_client, settings):
    """With no trusted proxy, the client's own X-Forwarded-For is not who it is: its socket address is."""
    scope, send = DOORS[door]
    _rates(settings, **{scope: "2/min"})
    codes = [send(anon_client, HTTP_X_FORWARDED_FOR=_random_address()).status_code for _ in range(4)]
    assert codes == [400, 400, 429, 429]
    # Another socket address is another client.
    assert send(anon_client, REMOTE_ADDR="10.9.8.7", HTTP_X_FORWARDED_FOR=_random_address()).status_code == 400


@pytest.mark.parametrize("door", sorted(DOORS))
def test_behind_one_trusted_proxy_the_address_it_appended_is_the_client(door, anon_client, settings):
    """NUM_PROXIES=1: the proxy (REMOTE_ADDR) appends the address it saw; what is left of it is the
    client's own text and does not count."""
    scope, send = DOORS[door]
    _rates(settings, num_proxies=1, **{scope: "2/min"})
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    codes = [send(anon_client, **proxy, HTTP_X_FORWARDED_FOR=f"{_random_address()}, 203.0.113.7").status_code
             for _ in range(3)]
    assert codes == [400, 400, 429]
    # Another client behind the same proxy has its own budget: the proxy's address is not the client.
    assert send(anon_client, **proxy, HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 400
    # Without X-Forwarded-For (not through the proxy) a client is its socket address: the same client.
    assert send(anon_client, REMOTE_ADDR="203.0.113.7").status_code == 429


def test_more_claimed_proxies_than_addresses_uses_the_leftmost_one(settings):
    _rates(settings, num_proxies=2)
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=" 203.0.113.9 ")
    assert ImageSearchAnonThrottle().get_ident(request) == "203.0.113.9"
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=" , ")
    assert ImageSearchAnonThrottle().get_ident(request) == "10.0.0.1"  # an empty header is no address


def test_a_signed_in_request_to_the_token_endpoint_is_throttled_too(user_client, settings):
    """DRF's anonymous throttle lets authenticated requests through: with one account of their own,
    anyone could send its token along and guess other users' passwords without a limit."""
    _rates(settings, auth_token="2/min")
    codes = [user_client.post("/api/v1/auth/token/", {"username": "nobody", "password": "guess"},
                              format="json").status_code for _ in range(3)]
    assert codes == [400, 400, 429]


def test_an_ipv6_client_is_one_client_across_its_64(anon_client, settings):
    """A host is usually given a whole /64: each of its addresses is not a new budget."""
    scope, send = DOORS["auth-token"]
    _rates(settings, **{scope: "2/min"})
    codes = [send(anon_client, REMOTE_ADDR=f"2001:db8:1:2::{n:x}").status_code for n in range(1, 4)]
    assert codes == [400, 400, 429]
    assert send(anon_client, REMOTE_ADDR="2001:db8:1:3::1").status_code == 400  # another /64


class _ReadThenWait:
    """The cache as the throttles see it, except that a read waits until every thread has read:
    the worst interleaving of a get-then-set counter, forced instead of hoped for. A counter that
    does not read before it writes never waits here."""

    def __init__(self, real, parties):
        self._real = real
        self._everyone_read = threading.Barrier(parties)

    def get(self, *args, **kwargs):
        value = self._real.get(*args, **kwargs)
        self._everyone_read.wait(timeout=30)
        return value

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.mark.parametrize("throttle_class", [ImageSearchAnonThrottle, AuthTokenThrottle])
def test_a_parallel_burst_lets_exactly_the_limit_through(throttle_class, settings, monkeypatch):
    from django.core.cache import cache

    limit, threads = 5, 16
    _rates(settings, **{throttle_class.scope: f"{limit}/min"})
    monkeypatch.setattr(SimpleRateThrottle, "cache", _ReadThenWait(cache, threads))
    start = threading.Barrier(threads)
    results, waits = [], []

    def one_request():
        request = RequestFactory().post("/", REMOTE_ADDR="192.0.2.10")
        request.user = AnonymousUser()
        throttle = throttle_class()
        start.wait(timeout=30)
        allowed = throttle.allow_request(request, None)
        results.append(allowed)
        if not allowed:
            waits.append(throttle.wait())

    workers = [threading.Thread(target=one_request) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert len(results) == threads
    assert results.count(True) == limit
    assert waits and all(0 < wait <= 60 for wait in waits)  # Retry-After of the refused ones


def test_the_throttle_serves_when_redis_is_down(anon_client, settings, caplog, tmp_path):
    """A real outage (nothing listens on the cache's socket): requests are served, and it is logged."""
    _rates(settings, auth_token="1/min")
    settings.CACHES = {"default": {**settings.CACHES["default"],
                                   "LOCATION": f"unix://{tmp_path / 'no-redis.sock'}?db=1"}}
    codes = [DOORS["auth-token"][1](anon_client).status_code for _ in range(3)]
    assert codes == [400, 400, 400]
    assert "throttle cache unavailable" in caplog.text
