import time
from pathlib import Path

import pytest
from django.conf import settings

from config.processes import CELERY_QUEUES, CELERY_READY, ManagedProcess, celery_worker_command, stop_all

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated(settings, tmp_path):
    """Each test gets an empty MEDIA_ROOT, models storage and models cache, and an empty cache."""
    from django.core.cache import cache

    from recommender.selectors.experiments import experiment_cache_clear
    from recommender.services import events

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODELS_ROOT = tmp_path / "models"
    settings.MODELS_STORAGE_ROOT = tmp_path / "model-store"
    settings.STORAGES = {**settings.STORAGES, "models": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(settings.MODELS_STORAGE_ROOT)}}}
    cache.clear()
    experiment_cache_clear()  # no running experiment read by an earlier test
    events._redis().delete(events.BUFFER_KEY, events.FLUSHING_KEY, events.FLUSH_LOCK_KEY)  # nor its events
    yield


def database_url_for_tests() -> str:
    """The URL of the *test* database pytest-django created (workers must use it too)."""
    from urllib.parse import quote

    from django.db import connection

    db = connection.settings_dict
    host = quote(db["HOST"] or "", safe="")
    auth = db["USER"] + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{auth}@{host}{port}/{db['NAME']}"


class WorkerProcess(ManagedProcess):
    """A real ``celery worker`` subprocess on the test database, ready when constructed.

    A :class:`config.processes.ManagedProcess`: ``output()``, ``child_pids()``, ``kill(sig)``
    (the whole process group, SIGKILL by default) and ``stop()`` (SIGTERM, SIGKILL after 30 s)."""

    def __init__(self, env_overrides=None, queues=CELERY_QUEUES, concurrency=1, beat=False):
        var_dir = Path(settings.VAR_DIR)
        cmd = celery_worker_command(queues=queues, concurrency=concurrency, node_name=f"test-{time.monotonic_ns()}@%h",
                                    beat_schedule=var_dir / f"beat-{time.monotonic_ns()}" if beat else None)
        env = {"DATABASE_URL": database_url_for_tests(), "MEDIA_ROOT": str(settings.MEDIA_ROOT),
               "MODELS_ROOT": str(settings.MODELS_ROOT), "MODELS_STORAGE_ROOT": str(settings.MODELS_STORAGE_ROOT),
               **(env_overrides or {})}
        super().__init__(cmd, name="celery worker", env_overrides=env,
                         log=var_dir / f"worker-{time.monotonic_ns()}.log")
        self.wait_ready(CELERY_READY, timeout=60)


@pytest.fixture
def start_worker(transactional_db):
    """Start real Celery worker processes against the test database; stopped after the test."""
    from config.celery import app

    app.control.purge()  # messages published by earlier tests name rows that no longer exist
    workers = []

    def start(**kwargs):
        worker = WorkerProcess(**kwargs)
        workers.append(worker)
        return worker

    yield start
    stop_all(workers)


def wait_for(predicate, timeout=120, interval=0.25, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture
def fashion_mnist():
    from keras.datasets import fashion_mnist

    return fashion_mnist.load_data()
