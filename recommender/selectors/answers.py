"""Whole answers kept in the cache (Redis) and served again only while they are still true.

A product page, or a similar-items API answer, is the same for every anonymous shopper asking the
same thing. It is cached whole with what it was computed from: the active version (id, status,
kind, backbone, weights, activation time) and a fingerprint of every product it shows
(``catalog.selectors.products_fingerprint``, read *before* the products were). It is served again
only while the same version serves and every fingerprint holds (one query for all of them); any
product hidden, deleted, repriced, renamed or re-photographed since, or another version, makes it
stale. The cache is an optimisation: when it is down, answers are computed as without it.

Measured on 2 cores (bench/web_load.py's catalog, Django's test client): the product page cost
7.3 ms of CPU to render and 0.9 ms served from here; the similar-items API 10.4 ms against 2.4 ms.

An answer that is expensive to compute (cold start: one scan of every feature) is computed by one
request at a time (:func:`cache_get_or_compute`): the others asking for it meanwhile wait for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from django.core.cache import cache

from catalog import selectors as catalog_selectors
from recommender.conf import config
from recommender.selectors.diversity import diversity_setting
from recommender.selectors.versions import ACTIVE_STAMP_SQL, active_version_at

logger = logging.getLogger(__name__)


def cache_get(key):
    # The cache (Redis) is an optimisation: when it is down, answer from the database.
    try:
        return cache.get(key)
    except Exception as exc:
        logger.warning("cache unavailable (%s); answering without it", exc)
        return None


def cache_set(key, value, timeout=None) -> None:
    try:
        cache.set(key, value, config().similar_cache_seconds if timeout is None else timeout)
    except Exception as exc:
        logger.warning("cache unavailable (%s); not caching", exc)


# A request that finds an answer being computed waits for it this long at most (an uncached
# cold-start answer took 1.4-2.2 s at 50,000 features on 2 shared cores), looking every POLL, then
# computes it itself; a computing request that died frees its key after LOCK_SECONDS.
FLIGHT_WAIT_SECONDS = 5.0
FLIGHT_POLL_SECONDS = 0.02
FLIGHT_LOCK_SECONDS = 60


def cache_get_or_compute(key, compute, *, timeout=None):
    """The cached value under ``key``, else ``compute()``'s, cached: one request computes it (a
    ``SET NX`` lock per key) while the others wait for its value. When the cache is down, each
    computes its own. ``None`` is never cached."""
    value = cache_get(key)
    if value is not None:
        return value
    lock = f"{key}:computing"
    try:
        mine = cache.add(lock, 1, FLIGHT_LOCK_SECONDS)
    except Exception as exc:
        logger.warning("cache unavailable (%s); answering without it", exc)
        return compute()
    if not mine and (value := _computed_elsewhere(key, lock)) is not None:
        return value
    try:
        value = compute()
        if value is not None:
            cache_set(key, value, timeout)
        return value
    finally:
        if mine:
            try:
                cache.delete(lock)
            except Exception as exc:  # it expires by itself
                logger.warning("cache unavailable (%s); lock %s left to expire", exc, lock)


def _computed_elsewhere(key, lock):
    """The value another request is computing, once it is cached; None when that request gave up
    (its lock is gone and nothing was cached) or took longer than FLIGHT_WAIT_SECONDS."""
    logger.debug("waiting for another request's answer to %s", key)
    deadline = time.monotonic() + FLIGHT_WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(FLIGHT_POLL_SECONDS)
        try:
            found = cache.get_many([key, lock])  # one read: the value is set before the lock goes
        except Exception:
            return None
        if found.get(key) is not None:
            return found[key]
        if lock not in found:
            return None
    logger.warning("gave up waiting %.0f s for another request's answer to %s; computing it", FLIGHT_WAIT_SECONDS, key)
    return None


def cache_key(prefix: str, *parts) -> str:
    return f"{prefix}:" + hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()


def version_shown(version) -> list | None:
    """What an answer shows of the version that answered (or None: no version yet)."""
    if version is None:
        return None
    # The panels' variety setting too: a restart with another setting makes every cached answer stale.
    return [version.pk, version.status, version.kind, version.backbone, version.weights, str(version.activated_at),
            diversity_setting()]


# The active version's row stamp and the hashes of an answer's products, in one query: a cached
# page or answer is checked with one round trip to PostgreSQL (and one to Redis). Measured on 2
# cores (bench/web_load.py's catalog, Django's test client, one client): the two queries apart were
# 0.6 of a cached page's 1.65 ms; at 32 clients each round trip is also a hand-off between
# processes on busy cores, which is where the tail's waits come from.
_STAMP_AND_HASHES_SQL = f"""
    SELECT {ACTIVE_STAMP_SQL}, h.id, h.hash
    FROM (SELECT 1) one LEFT JOIN ({catalog_selectors.ROW_HASHES_SQL}) AS h(id, hash) ON true"""


def _active_stamp_and_hashes(ids) -> tuple[str | None, dict[int, str]]:
    from django.db import connection

    from recommender.models import ModelVersion

    with connection.cursor() as cursor:
        cursor.execute(_STAMP_AND_HASHES_SQL, [ModelVersion.Status.ACTIVE, sorted({int(i) for i in ids})])
        rows = cursor.fetchall()
    return rows[0][0], {pid: h for _, pid, h in rows if pid is not None}


def answer_get(key: str):
    """The cached payload under ``key`` if it is still true (see above), else None."""
    entry = cache_get(key)
    if not isinstance(entry, dict):
        return None
    stamp, hashes = _active_stamp_and_hashes([pid for ids in entry["ids"] for pid in ids])
    if entry.get("version") != version_shown(active_version_at(stamp=stamp)):
        return None
    holds = catalog_selectors.fingerprints_hold(entry["ids"], entry["fingerprints"], hashes)
    return entry["payload"] if holds else None


def answer_set(key: str, payload, *, version, ids: list[list[int]], fingerprints: list[str]) -> None:
    """Keep ``payload``, computed with ``version`` from the products ``ids`` (groups), each group's
    fingerprint read before its products were. As long as the panel's own cache: new products show
    up in panels on the same schedule."""
    cache_set(key, {"payload": payload, "version": version_shown(version), "ids": ids, "fingerprints": fingerprints})
