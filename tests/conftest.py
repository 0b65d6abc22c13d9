import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated(settings, tmp_path):
    """Each test gets an empty MEDIA_ROOT and models folder, and an empty cache."""
    from django.core.cache import cache

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MODELS_ROOT = tmp_path / "models"
    cache.clear()
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


class WorkerProcess:
    """A real ``celery worker`` subprocess on the test database."""

    def __init__(self, env_overrides=None, queues="celery,features,training", concurrency=1, beat=False):
        env = dict(os.environ)
        env["DATABASE_URL"] = database_url_for_tests()
        env["MEDIA_ROOT"] = str(settings.MEDIA_ROOT)
        env["MODELS_ROOT"] = str(settings.MODELS_ROOT)
        env.update(env_overrides or {})
        self.log = Path(settings.VAR_DIR) / f"worker-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-c", str(concurrency),
               "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
               "-n", f"test-{time.monotonic_ns()}@%h"]
        if beat:
            cmd += ["-B", "-s", str(Path(settings.VAR_DIR) / f"beat-{time.monotonic_ns()}")]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while "ready." not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def child_pids(self) -> list[int]:
        import psutil

        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]

    def kill(self, sig=signal.SIGKILL):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


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
    for worker in workers:
        worker.stop()


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
