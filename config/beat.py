"""Celery beat, once, however many are started: ``settings.CELERY_BEAT_SCHEDULER`` names
:class:`Scheduler`, celery-redbeat's Redis scheduler with the few failure paths it leaves open closed.

The contract:

- **One sender.** A beat sends CELERY_BEAT_SCHEDULE only while it holds a lock in Redis (the
  broker's Redis, ``CELERY_REDBEAT_REDIS_URL``): ``celery -A config beat`` on two hosts by
  mistake, or a worker with an embedded beat (``-B``) beside a standalone one, publish each due
  task once. The others wait for the lock: hot standbys.
- **Takeover.** The holder renews the lock on every tick (at least every
  ``CELERY_BEAT_MAX_LOOP_INTERVAL`` seconds) to ``CELERY_REDBEAT_LOCK_TIMEOUT`` seconds. A holder that
  dies without releasing it (SIGKILL, a host lost) lets it expire; a standby, which tries every
  max-loop-interval seconds, takes over within timeout + interval. The schedule's last run times
  live in Redis too, so the new holder sends what fell due meanwhile at once, and nothing twice.
- **Stopping releases the lock.** SIGTERM ends beat with SystemExit (``celery beat``'s handler;
  billiard's in the beat process a worker embeds with ``-B``), and closing the scheduler releases
  the lock: a restarted beat, a test's next worker or a standby sends at once, not after the timeout.
- **Redis trouble is waited out, not fatal.** redbeat as it is lets a Redis error out of a tick,
  which ends beat: a standalone one is restarted by its supervisor, but the beat a worker embeds
  would be gone for the worker's life, silently. Here a tick that cannot reach Redis logs and is
  retried; a holder whose lock expired meanwhile (another beat took it) goes back to standby
  instead of sending beside the new holder.

Checked by tests/config/test_beat.py with two real ``celery beat`` processes.
"""

from __future__ import annotations

from types import SimpleNamespace

from celery.utils.log import get_logger
from redbeat import RedBeatScheduler
from redbeat.schedulers import acquire_distributed_beat_lock
from redis.exceptions import LockError, RedisError

logger = get_logger("celery.beat")

# A tick that met a Redis error is retried after this long (or max_loop_interval, if shorter).
REDIS_RETRY_S = 1.0


class Scheduler(RedBeatScheduler):
    """RedBeatScheduler that survives Redis errors and a lost lock (module docstring)."""

    def __init__(self, app, **kwargs):
        _redbeat_settings_by_their_own_names(app)
        super().__init__(app, **kwargs)

    def tick(self, **kwargs):
        if self.lock_key and self.lock is None:
            # Acquiring failed at start-up (redbeat's beat_init receiver: Celery logs the error and
            # carries on without a lock), or the lock was lost: stand by until it is free again.
            try:
                acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self))
            except RedisError as exc:
                logger.warning("beat: cannot reach Redis for the lock (%r); retrying", exc)
                return min(REDIS_RETRY_S, self.max_interval)
        try:
            return super().tick(**kwargs)
        except LockError:
            # Our lock expired (this process paused, or cut off from Redis, for longer than the
            # timeout), and another beat may hold it now: send nothing until this one holds it again.
            logger.warning("beat: lost the lock %s (it expired); standing by", self.lock_key)
            self.lock = None
            return 0
        except RedisError as exc:
            logger.warning("beat: Redis error during a tick (%r); retrying", exc)
            return min(REDIS_RETRY_S, self.max_interval)

    def close(self):
        try:
            super().close()
        except RedisError as exc:
            # Redis is gone: the lock expires by itself after the timeout.
            logger.warning("beat: could not release the lock (%r); it expires by itself", exc)
            self.lock = None


def _redbeat_settings_by_their_own_names(app):
    """redbeat tells a setting it was given from one it was not by looking for its bare name among
    the configuration's keys, where Django's ``CELERY_`` namespace hides it: it would warn that
    ``redbeat_redis_url`` is missing (while using it), and would not pass
    ``redbeat_redis_options`` (the socket timeouts) to its Redis client. Give them their own names."""
    for key in list(app.conf.keys()):
        if key.upper().startswith("CELERY_REDBEAT_"):
            name = key[len("CELERY_"):].lower()
            app.conf[name] = app.conf.first(name)
