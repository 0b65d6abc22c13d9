"""Throttles for the expensive endpoints, counted in the shared Redis cache (Django's default
cache), so every web process enforces one limit per client.

Rates come from REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] and are read per request (DRF's own
classes read them once at import), so a settings change or a test's override takes effect.
"""

import logging

from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


logger = logging.getLogger(__name__)


class _RateFromSettings:
    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request, view):
        # The counts live in Redis; when it is down, serve (fail open) rather than answer 500.
        try:
            return super().allow_request(request, view)
        except Exception as exc:
            logger.warning("throttle cache unavailable (%s); request allowed", exc)
            return True


class ImageSearchAnonThrottle(_RateFromSettings, AnonRateThrottle):
    """Anonymous clients, by IP address."""

    scope = "image_search_anon"


class ImageSearchUserThrottle(_RateFromSettings, UserRateThrottle):
    """Signed-in users, by user id (anonymous clients are counted by the anonymous throttle only)."""

    scope = "image_search_user"

    def get_cache_key(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return None
        return super().get_cache_key(request, view)


class AuthTokenThrottle(_RateFromSettings, AnonRateThrottle):
    """Password guessing through the token endpoint, by IP address."""

    scope = "auth_token"
