"""Throttles for the expensive endpoints (search by photo, in the API and the shop's page; the token
endpoint), counted in Redis so every web process enforces one limit per client.

Contract:
- A client is its socket address (REMOTE_ADDR). Behind ``REST_FRAMEWORK["NUM_PROXIES"]`` = N trusted
  reverse proxies (env ``NUM_PROXIES``, config/settings.py) it is the Nth address from the right of
  X-Forwarded-For; with N = 0 the header is ignored, so a client cannot buy a new budget by sending a
  new header. Signed-in users of the user throttle are counted by user id.
- Each budget is a sliding window (DRF's semantics: at most ``num_requests`` in any ``duration``
  seconds) kept in a Redis sorted set, checked and recorded in one Lua script: atomic, so a parallel
  burst gets exactly the budget (DRF's SimpleRateThrottle reads the history, then writes it back, and
  every request that read before the first write passes).
- ``wait()`` (Retry-After) is the time until the oldest counted request leaves the window, by
  Redis's clock (one clock for every web host sharing a window).
- Redis down: the request is served (fail open) and a warning logged, rather than answering 500.

Rates come from REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] and are read per request (DRF's own classes
read them once at import), so a settings change or a test's override takes effect.
"""

import ipaddress
import logging
import uuid

from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)

# KEYS[1]: the window's sorted set (score: request time). ARGV: duration (s), limit, a unique member.
# Redis's clock, not each web host's: one clock for every process sharing the window. Answers
# {1, now} when the request is counted, else {0, now, oldest} (strings: Lua numbers become integers).
_SLIDING_WINDOW = """
local key, duration, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - duration)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, math.ceil(duration * 1000))
  return {1, tostring(now)}
end
return {0, tostring(now), redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]}
"""


def client_address(request) -> str:
    """Who the client is, by address (see the module's contract)."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = api_settings.NUM_PROXIES or 0
    if not proxies:
        return _bucket(remote)
    chain = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if not chain:
        return _bucket(remote)  # not through the proxies
    return _bucket(chain[-min(proxies, len(chain))])


def _bucket(address: str) -> str:
    # An IPv6 host is usually given a whole /64 and may use any address in it: one budget per /64,
    # or a client would get 2**64 budgets. IPv4 addresses (and what does not parse) stay as they are.
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)  # ::ffff:203.0.113.7 is that IPv4 client
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return address


def window_hit(cache, key: str, *, duration: float, limit: int) -> tuple[float, float | None]:
    """Count a request in ``key``'s window if it has room. Answers Redis's time and, when the window
    is full (the request not counted), the time of its oldest request. ``cache`` is Django's Redis
    cache (config/cache.py): its key prefix and its redis-py client."""
    redis_key = cache.make_key(key)
    client = cache._cache.get_client(redis_key, write=True)
    answer = client.register_script(_SLIDING_WINDOW)(keys=[redis_key], args=[duration, limit, uuid.uuid4().hex])
    return float(answer[1]), (None if int(answer[0]) else float(answer[2]))


class _AtomicRate:
    """Mixed in before a DRF rate throttle: its keys and rate parsing, these counters (see the module)."""

    _oldest = None

    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_ident(self, request):
        return client_address(request)

    def allow_request(self, request, view):
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        try:
            self.now, self._oldest = window_hit(self.cache, self.key, duration=self.duration,
                                                limit=self.num_requests)
        except Exception as exc:
            # The counts live in Redis; when it is down, serve (fail open) rather than answer 500.
            logger.warning("throttle cache unavailable (%s); request allowed", exc)
            return True
        return self._oldest is None

    def wait(self):
        if self._oldest is None:
            return None
        # Never 0: Retry-After rounds up, and "retry in 0 seconds" would be retried at once.
        return min(max(self.duration - (self.now - self._oldest), 0.001), self.duration)


class ImageSearchAnonThrottle(_AtomicRate, AnonRateThrottle):
    """Anonymous clients, by address."""

    scope = "image_search_anon"


class ImageSearchUserThrottle(_AtomicRate, UserRateThrottle):
    """Signed-in users, by user id (anonymous clients are counted by the anonymous throttle only)."""

    scope = "image_search_user"

    def get_cache_key(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return None
        return super().get_cache_key(request, view)


class AuthTokenThrottle(_AtomicRate, AnonRateThrottle):
    """Password guessing through the token endpoint, by address, signed in or not: AnonRateThrottle
    skips authenticated requests, and anyone with one account could send their own token along to
    guess other users' passwords without a limit."""

    scope = "auth_token"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class EventClickThrottle(_AtomicRate, AnonRateThrottle):
    """Click reports (POST /api/v1/events/click/), by address, signed in or not: cheap (one RPUSH),
    but each is a row; a storefront reporting for all its shoppers from one address needs a high
    rate (THROTTLE_EVENT_CLICK)."""

    scope = "event_click"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class PanelViewThrottle(EventClickThrottle):
    """The panel's beacon (GET /recommender/seen.gif), by address: a view over the rate is not
    counted (the image is still served). THROTTLE_PANEL_VIEW."""

    scope = "panel_view"
