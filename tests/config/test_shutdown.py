"""Graceful shutdown with real processes (a SIGKILLed worker is tests/recommender/test_faults.py's).

- SIGTERM to a Celery worker's main process (``docker stop``, Kubernetes, systemd with
  KillMode=mixed) is a warm shutdown: the batch in progress finishes before the worker exits 0,
  and the messages it had not started stay in the queue.
- SIGTERM to the worker's whole process group (systemd's default KillMode=control-group) reaches
  its pool process too, which Celery leaves with SIGTERM's default action: the batch's process dies
  at once, and its message goes back to the queue (acks_late, reject_on_worker_lost) and is
  redelivered to the next worker, which finishes the batch. Nothing is lost, nothing done twice.
- SIGTERM to gunicorn (config/gunicorn.py, config.wsgi) answers the request in flight, refuses
  new connections at once, and exits within graceful_timeout; a reload (HUP) keeps listening.

The slow things are slow for a real reason: a cold worker's first batch, and a web worker's first
search by photo, load TensorFlow and the backbone (9-14 s on 2 cores).
"""

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings
from django.db.models import Count

from catalog.models import ProductImage
from config.processes import BASE_DIR, ManagedProcess
from recommender.models import BackboneFeature
from tests.conftest import database_url_for_tests, wait_for
from tests.factories import png_bytes
from tests.recommender.helpers import import_products

pytestmark = pytest.mark.worker

IMAGES = 130  # the first drain claims 64 (INGEST_CHUNK) and leaves a backlog behind it


@pytest.fixture
def broker():
    return redis.Redis.from_url(settings.CELERY_REDBEAT_REDIS_URL)  # the broker's Redis (database 0)


def batch_in_progress() -> set[int]:
    return set(ProductImage.objects.filter(status="processing").values_list("id", flat=True))


def test_sigterm_to_a_worker_finishes_its_batch_before_it_exits(start_worker, broker):
    import_products(IMAGES)
    worker = start_worker()
    batch = wait_for(batch_in_progress, timeout=60, interval=0.05, message="a batch in progress")
    os.kill(worker.pid, signal.SIGTERM)  # the main process only
    assert worker.wait(60) == 0, worker.output()[-3000:]
    # Finished by this worker before it exited (there is no other), and nothing else started.
    assert set(ProductImage.objects.filter(status="ready").values_list("id", flat=True)) == batch
    assert ProductImage.objects.filter(status="pending", attempts=0).count() == IMAGES - len(batch)
    # The drain for the rest waits in its queue, none is held unacknowledged (it would come back
    # only after the visibility timeout, an hour).
    assert broker.llen("features") >= 1 and broker.hlen("unacked") == 0


def test_sigterm_to_a_workers_process_group_returns_its_batch_to_the_queue(start_worker, broker):
    import_products(IMAGES)
    worker = start_worker()
    batch = wait_for(batch_in_progress, timeout=60, interval=0.05, message="a batch in progress")
    worker.send_signal(signal.SIGTERM)  # the whole group, pool process included
    assert worker.wait(60) == 0, worker.output()[-3000:]
    assert "WorkerLostError" in worker.output()  # the pool process died mid-batch...
    assert batch_in_progress() == batch  # ...leaving its claim, whose message is back in the queue
    assert broker.hlen("unacked") == 0
    # The next worker (no beat: only the redelivery, not the periodic recovery, can finish it).
    start_worker()
    wait_for(lambda: ProductImage.objects.filter(status="ready").count() == IMAGES, timeout=120,
             message="every image ready after the redelivery")
    per_image = BackboneFeature.objects.values("image_id").annotate(n=Count("id"))
    assert per_image.count() == IMAGES and {row["n"] for row in per_image} == {1}


# --------------------------------------------------------------------------- web server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def refuses(port) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def loads_tensorflow(pids) -> bool:
    """Whether one of these processes has TensorFlow's library mapped: a search is loading it."""
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if "libtensorflow" in maps or "_pywrap_tensorflow" in maps:
            return True
    return False


def test_sigterm_to_the_web_server_answers_the_request_in_flight_and_refuses_new_ones(transactional_db, tmp_path):
    import runpy

    graceful_timeout = runpy.run_path(str(BASE_DIR / "config" / "gunicorn.py"))["graceful_timeout"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    web = ManagedProcess([sys.executable, "-m", "gunicorn", "config.wsgi:application",
                          "-c", str(BASE_DIR / "config" / "gunicorn.py"), "--bind", f"127.0.0.1:{port}"],
                         name="web", env_overrides={"DATABASE_URL": database_url_for_tests(), "WEB_WORKERS": 1},
                         log=tmp_path / "web.log")
    try:
        web.wait_ready(lambda: answers(url + "/"), timeout=60)
        # A reload replaces the worker, and the old one's stop leaves the socket listening.
        first = web.child_pids()
        os.kill(web.pid, signal.SIGHUP)
        wait_for(lambda: web.child_pids() and not set(first) & set(web.child_pids()), timeout=30,
                 message="the reloaded worker")
        assert answers(url + "/"), web.output()[-3000:]

        # A cold worker's first search by photo: seconds of loading TensorFlow and the backbone.
        outcome = {}

        def search():
            try:
                outcome["status"] = requests.post(url + "/api/v1/search/image/", headers={"Connection": "close"},
                                                  files={"image": ("p.png", png_bytes(seed=1), "image/png")},
                                                  timeout=120).status_code
            except requests.RequestException as exc:
                outcome["error"] = repr(exc)
            outcome["at"] = time.monotonic()

        in_flight = threading.Thread(target=search)
        in_flight.start()
        wait_for(lambda: loads_tensorflow(web.child_pids()), timeout=30, interval=0.05,
                 message="the search to be loading the model")
        os.kill(web.pid, signal.SIGTERM)  # the master, as a supervisor does
        stopped = time.monotonic()
        wait_for(lambda: refuses(port), timeout=5, interval=0.05, message="new connections to be refused")
        assert "at" not in outcome  # refused while the search is still in flight...
        in_flight.join(graceful_timeout + 10)
        assert outcome.get("status") == 200, (outcome, web.output()[-3000:])  # ...which is answered
        assert outcome["at"] - stopped < graceful_timeout
        assert web.wait(graceful_timeout + 5) == 0
        exited = time.monotonic()
        assert exited - stopped < graceful_timeout and exited - outcome["at"] < 3, (exited - stopped,
                                                                                   exited - outcome["at"])
    finally:
        web.stop(timeout=10)
