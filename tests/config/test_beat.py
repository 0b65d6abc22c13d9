"""One beat, however many are started (config/beat.py): two real ``celery beat`` processes on
the test Redis send the schedule once; when the sender is killed the other takes over within the
lock's timeout; a stopped beat (standalone or embedded in a worker) releases the lock at once; a
beat whose lock was taken stops sending, and one that loses Redis waits instead of dying."""

import sys
import time
import uuid
from types import SimpleNamespace

import pytest
import redis
from celery import Celery
from django.conf import settings
from redbeat.schedulers import acquire_distributed_beat_lock

from config.beat import Scheduler
from config.processes import ManagedProcess
from tests.conftest import database_url_for_tests, wait_for

pytestmark = pytest.mark.worker

# Short, so the takeover is seen in seconds: the holder renews every second (the loop interval is
# derived: max(1, timeout // 6)); production: 30 s and 5 s (config/settings.py).
LOCK_TIMEOUT_S = 3
LOOP_S = 1
SENT = "Sending due task recover-lost-work"


@pytest.fixture
def prefix():
    """A key prefix of the test's own: its schedule and lock meet no other test's beat."""
    key_prefix = f"test-beat-{uuid.uuid4().hex[:8]}:"
    yield key_prefix
    client = redis.Redis.from_url(settings.CELERY_REDBEAT_REDIS_URL)
    for key in client.scan_iter(f"{key_prefix}*"):
        client.delete(key)


@pytest.fixture
def broker():
    """The broker's Redis, its ``celery`` queue emptied before and after."""
    from config.celery import app

    client = redis.Redis.from_url(settings.CELERY_REDBEAT_REDIS_URL)
    app.control.purge()
    yield client
    app.control.purge()


def lock_key(prefix):
    return f"{prefix}:lock"  # redbeat's default lock key under the prefix


def start_beat(tmp_path, name, prefix, **env):
    # Only recover-lost-work is due during the test (the events' flush would share its queue).
    overrides = {"DATABASE_URL": database_url_for_tests(), "RECOVER_EVERY_SECONDS": "1",
                 "EVENTS_FLUSH_EVERY_SECONDS": "3600",
                 "BEAT_LOCK_TIMEOUT_SECONDS": str(LOCK_TIMEOUT_S), "REDBEAT_KEY_PREFIX": prefix, **env}
    return ManagedProcess([sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
                           "-s", str(tmp_path / f"{name}-schedule")],
                          name=name, env_overrides=overrides, log=tmp_path / f"{name}.log")


def sends(beat):
    return beat.output().count(SENT)


def assert_queued(broker, beat, already=0):
    """What the queue holds is what the beats logged sending: nothing else published, nothing
    twice. The queue is read first; a send logged but not yet published may be in between."""
    queued = broker.llen("celery")
    logged = already + sends(beat)
    assert logged - 1 <= queued <= logged, (queued, logged)


def test_two_beats_send_once_and_the_standby_takes_over_from_a_killed_one(transactional_db, tmp_path, prefix,
                                                                          broker):
    beats = [start_beat(tmp_path, "beat-a", prefix), start_beat(tmp_path, "beat-b", prefix)]
    try:
        for beat in beats:
            beat.wait_ready("beat: Starting...", timeout=60)
        holder = wait_for(lambda: [b for b in beats if "beat: Acquired lock" in b.output()], timeout=15,
                          message="a beat to take the lock")
        assert len(holder) == 1, [b.output()[-2000:] for b in beats]
        holder, standby = holder[0], next(b for b in beats if b is not holder[0])

        # Both run; only the holder sends, once a second, and the queue holds exactly what it sent.
        wait_for(lambda: sends(holder) >= 4, timeout=15, message="the holder to send 4 times")
        assert sends(standby) == 0, standby.output()[-2000:]
        assert_queued(broker, holder)

        holder.kill()  # SIGKILL: the lock is not released, it expires
        killed = time.monotonic()
        queued_by_holder = broker.llen("celery")
        wait_for(lambda: "beat: Acquired lock" in standby.output(), timeout=LOCK_TIMEOUT_S + LOOP_S + 10,
                 interval=0.05, message="the standby to take the lock")
        takeover = time.monotonic() - killed
        # Not before the lock expired (renewed at most LOOP_S before the kill), and within one
        # try of the standby's after it.
        assert LOCK_TIMEOUT_S - LOOP_S - 0.5 < takeover < LOCK_TIMEOUT_S + LOOP_S + 2.5, takeover
        wait_for(lambda: sends(standby) >= 2, timeout=10, message="the new holder to send")
        assert_queued(broker, standby, already=queued_by_holder)

        # Stopped (SIGTERM), the holder releases the lock at once: a next beat need not wait.
        assert standby.stop(timeout=15) == 0
        assert not broker.exists(lock_key(prefix))
    finally:
        for beat in beats:
            beat.stop(timeout=10)


def test_a_worker_stopped_with_its_embedded_beat_releases_the_lock(start_worker, prefix, broker):
    worker = start_worker(queues="celery", beat=True,
                          env_overrides={"REDBEAT_KEY_PREFIX": prefix, "RECOVER_EVERY_SECONDS": "3600"})
    wait_for(lambda: broker.exists(lock_key(prefix)), timeout=30, message="the embedded beat to take the lock")
    assert broker.pttl(lock_key(prefix)) > 20_000  # the production timeout (30 s): it would outlive the test
    worker.stop(timeout=30)
    assert worker.returncode == 0, worker.output()[-3000:]
    assert not broker.exists(lock_key(prefix)), worker.output()[-3000:]


def scheduler_app(prefix):
    """A Celery app with the project's configuration and the test's key prefix (redbeat keeps its
    configuration and its Redis client on the app)."""
    app = Celery("beat-test", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.redbeat_key_prefix = prefix
    app.conf.beat_schedule = {"recover-lost-work": {"task": "recommender.tasks.recover_lost_work",
                                                    "schedule": 0.1}}
    return app


def test_a_beat_whose_lock_was_taken_stops_sending_and_stands_by(transactional_db, prefix, broker):
    app = scheduler_app(prefix)
    scheduler = Scheduler(app, lock_timeout=LOCK_TIMEOUT_S, max_interval=LOOP_S)
    acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=scheduler))  # as beat's start does
    time.sleep(0.2)
    scheduler.tick()
    assert broker.llen("celery") == 1
    # Its lock expired while it was paused, and another beat took it.
    broker.set(lock_key(prefix), "another beat", px=1500)
    time.sleep(0.2)
    assert scheduler.tick() == 0  # not an exception: beat goes on
    assert scheduler.lock is None and broker.llen("celery") == 1
    started = time.monotonic()
    scheduler.tick()  # waits for the lock (the other beat "dies": it expires), then sends
    assert time.monotonic() - started > 1.0
    assert scheduler.lock.owned()
    assert broker.llen("celery") == 2
    scheduler.close()
    assert not broker.exists(lock_key(prefix))


def test_a_beat_waits_out_a_redis_outage(transactional_db, prefix, broker):
    from config import embedded

    redis_server = embedded._services.get("redis")
    if redis_server is None:
        pytest.skip("Redis is external (REDIS_URL set): cannot stop it from here")
    app = scheduler_app(prefix)
    scheduler = Scheduler(app, lock_timeout=LOCK_TIMEOUT_S * 10, max_interval=LOOP_S)
    acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=scheduler))
    redis_server.stop()  # the lock survives it (appendonly): the holder goes on holding it
    try:
        assert scheduler.tick() == LOOP_S  # logged and retried, not raised
    finally:
        redis_server.start()
    time.sleep(0.2)
    scheduler.tick()
    assert broker.llen("celery") == 1
    scheduler.close()
    assert not broker.exists(lock_key(prefix))
