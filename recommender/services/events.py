"""Shoppers' panel views and clicks, recorded off the request's path and written in batches.

Contract:

- :func:`panel_event_record` appends one compact JSON line to a Redis list (``settings.
  EVENTS_REDIS_URL``): one RPUSH, ~0.1-0.3 ms. Nothing is written to PostgreSQL on the request.
- Redis refusing (down, timing out after EVENT_TIMEOUT_SECONDS): the event is inserted into
  PostgreSQL directly instead (one statement with its counts, committed alone: 1.0 ms of wall time
  against 0.17 ms buffered, bench/events.py), so an outage of Redis alone loses nothing. Both down:
  the event is lost and logged.
- The buffer holds at most BUFFER_MAX events; past that (no flush for a long while) new events are
  dropped and counted in the log, so a stopped beat cannot fill Redis's memory.
- :func:`panel_events_flush` (the beat, every EVENTS_FLUSH_EVERY_SECONDS) renames the buffer to a
  flushing list (atomic: events recorded meanwhile start a new buffer), inserts it in chunks of
  FLUSH_CHUNK and trims each chunk only after its insert committed. A flush that dies is taken up
  by the next one, which finishes the flushing list first and reads the same chunk again: its
  SHA-256 is claimed (PanelFlush) in the statement that writes it, so it is written once. Exactly
  once from the buffer.
- Events are what the shopper's browser asked for: nothing is recorded for a visitor who sends
  ``DNT: 1`` or ``Sec-GPC: 1`` (callers pass ``visitor=None``), and the only id is a random one
  we made (recommender.selectors.events.visitor_of).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

from django.conf import settings
from django.db import connection

from recommender.models import PanelEvent, PanelFlush

logger = logging.getLogger(__name__)

BUFFER_KEY = "lookalike:panel-events"
FLUSHING_KEY = "lookalike:panel-events:flushing"
# 230 bytes an event in Redis (bench/events.py, 6 products shown): 200,000 are ~46 MB, ~11 hours
# of 5 views a second with no flush.
BUFFER_MAX = 200_000
FLUSH_CHUNK = 2_000
FLUSH_LOCK_KEY = "lookalike:panel-events:flush-lock"
FLUSH_LOCK_SECONDS = 300  # renewed before each chunk (2,000 are written in ~0.07 s, bench/events.py)
ONCE_PREFIX = "lookalike:panel-events:once:"
ONCE_SECONDS = 1800  # a view or click of one visitor and one token counts once in half an hour (0: off)
# A Redis that does not answer must not hold the page (the direct insert takes over).
EVENT_TIMEOUT_SECONDS = 0.25

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def _redis():
    import redis

    url = settings.EVENTS_REDIS_URL
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.setdefault(url, redis.Redis.from_url(
                url, socket_connect_timeout=EVENT_TIMEOUT_SECONDS, socket_timeout=EVENT_TIMEOUT_SECONDS))
    return client


def panel_event_record(*, kind: str, channel: str, visitor: str | None, product_id: int, version_id: int | None,
                       experiment_id: int | None = None, arm: str = "", rules: str = "", shown=(),
                       target_id: int | None = None, position: int | None = None, once: str | None = None) -> bool:
    """Record a panel ``view`` (``shown``: the products, in order) or ``click`` (``target_id`` at
    ``position``). ``visitor`` None: the shopper asked not to be tracked; nothing is recorded.
    ``once``: a key (visitor and token) counted once per ONCE_SECONDS: a reload, or a token
    replayed by the same visitor, counts nothing more. True when the event was kept."""
    if visitor is None or not settings.EVENTS:
        return False
    if once is not None and ONCE_SECONDS > 0 and not _first_time(once):
        return False
    now = time.time()
    event = {"at": now, "kind": PanelEvent.Kind.VIEW if kind == "view" else PanelEvent.Kind.CLICK,
             "channel": channel, "visitor": visitor, "product_id": int(product_id), "version_id": version_id,
             "experiment_id": experiment_id, "arm": arm, "rules": rules, "shown": [int(p) for p in shown],
             "target_id": target_id, "position": position}
    try:
        length = _redis().rpush(BUFFER_KEY, json.dumps(event, separators=(",", ":")))
        if length > BUFFER_MAX:
            _redis().rpop(BUFFER_KEY)
            logger.warning("panel events buffer full (%s): event dropped; is the beat flushing?", BUFFER_MAX)
            return False
        return True
    except Exception as exc:
        if not _unsent(exc):
            # A read timed out after the command was sent: Redis may have kept it. Dropped rather
            # than risk counting it twice (at most once, under a Redis that answers too slowly).
            logger.warning("events buffer did not answer (%s); event dropped", exc)
            return False
        logger.warning("events buffer unavailable (%s); writing the event directly", exc)
    try:
        panel_events_write([event])
        return True
    except Exception:
        logger.exception("panel event lost: neither the buffer nor the database took it")
        return False


def panel_origin_record(origin, *, kind: str, channel: str, visitor: str | None, **event) -> bool:
    """:func:`panel_event_record` of a panel named by a token (recommender.selectors.events.PanelOrigin:
    its product, version, experiment, arm and rules); ``event``: shown, target_id, position, once."""
    return panel_event_record(kind=kind, channel=channel, visitor=visitor, product_id=origin.product_id,
                              version_id=origin.version_id, experiment_id=origin.experiment_id, arm=origin.arm,
                              rules=origin.rules, **event)


def _unsent(exc: Exception) -> bool:
    """Whether the command surely never reached Redis (refused, or no connection in time)."""
    import redis

    return isinstance(exc, redis.ConnectionError) or (
        isinstance(exc, redis.TimeoutError) and "connecting" in str(exc).lower())


def _first_time(key: str) -> bool:
    try:
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return bool(_redis().set(f"{ONCE_PREFIX}{digest}", 1, nx=True, ex=ONCE_SECONDS))
    except Exception:
        return True  # Redis down: counted (the direct insert has no memory of what it saw)


# One statement: the chunk claimed, its events inserted (none when it was claimed before), and those
# added to the day's counts and the versions' shown products (the dashboard reads those, never the events:
# at 1,000,000 events the scan for per-version figures took 4 s). Counts are locked in one order.
_WRITE_SQL = """
WITH claimed AS (
    INSERT INTO recommender_panelflush (chunk) SELECT %(chunk)s WHERE %(chunk)s IS NOT NULL
    ON CONFLICT DO NOTHING RETURNING 1
), incoming AS (
    SELECT * FROM jsonb_to_recordset(%(events)s::jsonb) AS e(
        at double precision, kind smallint, channel text, visitor text, product_id int, version_id int,
        experiment_id int, arm text, rules text, shown int[], target_id int, position smallint)
), new AS (
    INSERT INTO recommender_panelevent (at, kind, channel, visitor, product_id, version_id, experiment_id, arm,
                                        rules, shown, target_id, position)
    SELECT to_timestamp(at), kind, channel, visitor, product_id, version_id, experiment_id, arm, rules,
           coalesce(shown, '{}'), target_id, position FROM incoming
    WHERE %(chunk)s IS NULL OR EXISTS (SELECT FROM claimed)
    RETURNING at, kind, version_id, experiment_id, arm, shown
), counted AS (
    INSERT INTO recommender_panelcount (day, version_id, experiment_id, arm, views, clicks, items)
    SELECT (at AT TIME ZONE 'UTC')::date, version_id, experiment_id, arm, count(*) FILTER (WHERE kind = 1),
           count(*) FILTER (WHERE kind = 2), coalesce(sum(cardinality(shown)) FILTER (WHERE kind = 1), 0)
    FROM new GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (day, version_id, experiment_id, arm) DO UPDATE SET
        views = recommender_panelcount.views + excluded.views, clicks = recommender_panelcount.clicks + excluded.clicks,
        items = recommender_panelcount.items + excluded.items
    RETURNING 1
)
INSERT INTO recommender_panelshown (version_id, product_id)
SELECT DISTINCT new.version_id, s.id FROM new, unnest(new.shown) s(id) WHERE new.kind = 1 ORDER BY 1, 2
ON CONFLICT DO NOTHING"""


def chunk_digest(lines) -> str:
    return hashlib.sha256(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)).hexdigest()


def panel_events_write(events: list[dict], *, chunk: str | None = None) -> None:
    """Insert events (dicts as :func:`panel_event_record` makes them) with their counts; with a
    ``chunk`` digest, only if that chunk was not written before. The flush's and the fallback's
    one path."""
    if not events:
        return
    with connection.cursor() as cursor:
        cursor.execute(_WRITE_SQL, {"chunk": chunk, "events": json.dumps(events, separators=(",", ":"))})


def panel_events_flush(*, max_chunks: int = 500) -> int:
    """Write buffered events to PostgreSQL; returns how many were read (see the module's contract).
    At most ``max_chunks`` chunks a run (1,000,000 events), so one run stays bounded."""
    client = _redis()
    # One flush at a time: two would read the same chunk and each trim one, dropping the next.
    lock = client.lock(FLUSH_LOCK_KEY, timeout=FLUSH_LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        return 0
    try:
        return _flush_chunks(client, lock, max_chunks)
    finally:
        try:
            lock.release()
        except Exception:  # expired (a flush longer than the lock): the next one takes over
            logger.warning("panel events flush outlived its lock")


def _flush_chunks(client, lock, max_chunks: int) -> int:
    import redis

    written = 0
    for _ in range(max_chunks):
        try:
            lock.reacquire()  # FLUSH_LOCK_SECONDS again for this chunk, or stop: another flush has it
        except redis.exceptions.LockError:
            logger.warning("panel events flush lost its lock; the next flush goes on")
            break
        if not client.exists(FLUSHING_KEY):
            try:
                client.rename(BUFFER_KEY, FLUSHING_KEY)  # atomic; raises when the buffer is empty
            except Exception as exc:
                if "no such key" in str(exc).lower():
                    break
                raise
        chunk = client.lrange(FLUSHING_KEY, 0, FLUSH_CHUNK - 1)
        if not chunk:
            client.delete(FLUSHING_KEY)
            continue
        panel_events_write([json.loads(line) for line in chunk], chunk=chunk_digest(chunk))
        client.ltrim(FLUSHING_KEY, len(chunk), -1)  # an emptied list is deleted by Redis
        written += len(chunk)
    return written


def panel_events_prune(*, now: float | None = None) -> int:
    """Delete events older than settings.EVENTS_KEEP_DAYS (the hourly prune), and the digests of
    chunks written more than a day ago (a chunk is read again within seconds, if ever). Returns how
    many events were deleted. The day counts stay: they are what the dashboard reads."""
    now = time.time() if now is None else now
    deleted, _ = PanelEvent.objects.filter(at__lt=_datetime(now - settings.EVENTS_KEEP_DAYS * 86400)).delete()
    PanelFlush.objects.filter(at__lt=_datetime(now - 86400)).delete()
    return deleted


def _datetime(seconds: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def panel_events_buffered() -> int:
    """Events waiting in Redis (both lists); 0 when Redis is down."""
    try:
        client = _redis()
        return int(client.llen(BUFFER_KEY)) + int(client.llen(FLUSHING_KEY))
    except Exception:
        return 0
