"""Panel events (recommender.services.events) through the real Redis buffer into PostgreSQL: batched
writes, redelivery written once, Redis down, a full buffer, Do Not Track, one flush at a time."""

import json

import pytest

from recommender.models import PanelEvent
from recommender.services import events

pytestmark = pytest.mark.django_db


@pytest.fixture
def empty_buffer():
    """The buffer's Redis (emptied before every test by tests/conftest.py)."""
    return events._redis()


def view(product_id=1, visitor="v1", **extra):
    return events.panel_event_record(kind="view", channel="page", visitor=visitor, product_id=product_id,
                                     version_id=3, shown=[5, 6, 7], **extra)


def test_events_wait_in_redis_and_are_written_in_batches(empty_buffer, settings):
    for n in range(5):
        assert view(product_id=n + 1)
    assert events.panel_event_record(kind="click", channel="page", visitor="v1", product_id=1, version_id=3,
                                     target_id=6, position=2)
    assert PanelEvent.objects.count() == 0 and events.panel_events_buffered() == 6  # nothing on the request
    assert events.panel_events_flush() == 6
    assert PanelEvent.objects.filter(kind=PanelEvent.Kind.VIEW).count() == 5
    click = PanelEvent.objects.get(kind=PanelEvent.Kind.CLICK)
    assert (click.target_id, click.position, click.version_id, click.visitor) == (6, 2, 3, "v1")
    assert events.panel_events_buffered() == 0 and events.panel_events_flush() == 0


def test_a_chunk_written_twice_is_stored_once(empty_buffer, monkeypatch):
    for n in range(5):
        view(product_id=n + 1)
    monkeypatch.setattr(events, "FLUSH_CHUNK", 2)
    # A flush that died after its insert and before trimming: the next one reads the chunk again.
    empty_buffer.rename(events.BUFFER_KEY, events.FLUSHING_KEY)
    chunk = empty_buffer.lrange(events.FLUSHING_KEY, 0, 1)
    events.panel_events_write([json.loads(line) for line in chunk], chunk=events.chunk_digest(chunk))
    assert events.panel_events_flush() == 5
    assert PanelEvent.objects.count() == 5
    assert sorted(PanelEvent.objects.values_list("product_id", flat=True)) == [1, 2, 3, 4, 5]


def test_redis_down_writes_the_event_directly(settings, tmp_path):
    settings.EVENTS_REDIS_URL = f"unix://{tmp_path / 'nothing.sock'}?db=2"
    assert view()
    assert PanelEvent.objects.count() == 1  # not lost: written on the request instead


def test_a_full_buffer_drops_new_events_instead_of_growing(empty_buffer, monkeypatch):
    monkeypatch.setattr(events, "BUFFER_MAX", 3)
    assert [view() for _ in range(5)] == [True, True, True, False, False]
    assert empty_buffer.llen(events.BUFFER_KEY) == 3


def test_do_not_track_and_switched_off_record_nothing(settings):
    assert not view(visitor=None)
    settings.EVENTS = False
    assert not view()
    assert events.panel_events_buffered() == 0


def test_one_flush_at_a_time(empty_buffer):
    view()
    lock = empty_buffer.lock(events.FLUSH_LOCK_KEY, timeout=30)
    assert lock.acquire(blocking=False)
    assert events.panel_events_flush() == 0  # another flush holds the buffer
    lock.release()
    assert events.panel_events_flush() == 1


@pytest.mark.worker
def test_the_beat_and_a_real_worker_write_the_buffer(empty_buffer, start_worker):
    import uuid

    import redis
    from django.conf import settings

    from tests.conftest import wait_for

    prefix = f"test-events-{uuid.uuid4().hex[:8]}:"
    try:
        start_worker(queues="celery", beat=True, env_overrides={
            "REDBEAT_KEY_PREFIX": prefix, "EVENTS_FLUSH_EVERY_SECONDS": "1", "RECOVER_EVERY_SECONDS": "3600"})
        for n in range(20):
            view(product_id=n + 1)
        wait_for(lambda: PanelEvent.objects.count() == 20, timeout=60, message="the beat's flush")
        assert events.panel_events_buffered() == 0
    finally:
        client = redis.Redis.from_url(settings.CELERY_REDBEAT_REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_events_older_than_the_retention_are_pruned(settings):
    import time

    settings.EVENTS_KEEP_DAYS = 30
    now = time.time()
    for age_days in (31, 29, 0):
        events.panel_events_write([{"at": now - age_days * 86400, "kind": 1, "channel": "page", "visitor": "v",
                                    "product_id": 1, "version_id": None, "experiment_id": None, "arm": "",
                                    "rules": "", "shown": [], "target_id": None, "position": None}])
    assert events.panel_events_prune(now=now) == 1
    assert PanelEvent.objects.count() == 2


def test_counts_and_coverage_per_version_come_from_the_written_events():
    from recommender.selectors.events import version_panel_stats
    from tests.factories import ProductFactory

    products = [ProductFactory().pk for _ in range(4)]
    common = {"at": 1.7e9, "channel": "page", "visitor": "v", "product_id": products[0], "version_id": 7,
              "experiment_id": None, "arm": "", "rules": "", "target_id": None, "position": None}
    written = [{**common, "kind": 1, "shown": products[1:3]}, {**common, "kind": 1, "shown": products[2:4]},
               {**common, "kind": 2, "shown": [], "target_id": products[2], "position": 1}]
    events.panel_events_write(written, chunk="c1")
    events.panel_events_write(written, chunk="c1")  # the same chunk again: nothing counted twice
    stats = version_panel_stats(version_ids=[7, 8])
    assert (stats[7]["views"], stats[7]["clicks"], stats[7]["per_1000"]) == (2, 1, 250.0)
    assert stats[7]["coverage_shown"] == 0.75 and stats[7]["coverage_lists"] is None  # 3 of 4 products shown
    assert stats[8]["views"] == 0 and stats[8]["ctr"] is None


def test_a_view_or_click_keyed_once_counts_once_and_a_slow_redis_is_not_counted_twice(monkeypatch):
    import redis

    assert view(once="view:v1:token") and not view(once="view:v1:token")  # a reload
    assert view(once="view:v2:token")  # another visitor
    assert events.panel_events_buffered() == 2
    client = events._redis()

    def answered_too_late(*args, **kwargs):
        raise redis.TimeoutError("Timeout reading from socket")  # Redis may have kept it

    monkeypatch.setattr(client, "rpush", answered_too_late)
    assert not view()
    assert PanelEvent.objects.count() == 0  # not also written directly
