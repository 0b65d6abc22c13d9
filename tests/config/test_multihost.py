"""A rehearsal of a deployment across hosts (issue 18): a web server, a ``features`` worker and a
``training`` worker as separate process groups, each with its own empty VAR_DIR and MODELS_ROOT,
sharing only the database, Redis and the storages (media and "models": file-system storages in a
folder of their own here, the stand-in for an object store; no host's local folder is read by
another).

Upload -> searchable; train -> activated; the features host and the web load the new version's
files from the models storage (their caches start empty); the web imports no TensorFlow until its
first search by photo; a training host killed mid-training leaves the active version serving.
"""

from __future__ import annotations

import io
import socket
import sys
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from catalog.models import ProductImage
from config.processes import CELERY_READY, ManagedProcess, celery_worker_command, stop_all
from recommender.models import Embedding, ModelVersion
from recommender.services.training import model_version_start
from tests.api.conftest import png
from tests.conftest import database_url_for_tests, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Hosts:
    """The process groups of the rehearsal, each with a folder of its own (its "disk")."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.shared = {"DATABASE_URL": database_url_for_tests(), "MEDIA_ROOT": str(tmp / "object-store" / "media"),
                       "MODELS_STORAGE_ROOT": str(tmp / "object-store" / "models")}
        self.processes: list[ManagedProcess] = []

    def env(self, host: str, **extra) -> dict:
        disk = self.tmp / host
        return {**self.shared, "VAR_DIR": str(disk / "var"), "MODELS_ROOT": str(disk / "models"),
                "STATIC_ROOT": str(disk / "static"), **extra}

    def models_cache(self, host: str) -> Path:
        return self.tmp / host / "models"

    def worker(self, host: str, queues: str, **extra) -> ManagedProcess:
        process = ManagedProcess(celery_worker_command(queues=queues, node_name=f"{host}-{time.monotonic_ns()}@%h"),
                                 name=host, env_overrides=self.env(host, **extra), log=self.tmp / f"{host}.log")
        self.processes.append(process)
        process.wait_ready(CELERY_READY, timeout=90)
        return process

    def web(self, port: int) -> ManagedProcess:
        command = [sys.executable, "-m", "gunicorn", "config.wsgi:application", "-c", str(ROOT / "config" / "gunicorn.py"),
                   "--bind", f"127.0.0.1:{port}"]
        process = ManagedProcess(command, name="web", env_overrides=self.env("web", WEB_WORKERS=1, WEB_THREADS=4),
                                 log=self.tmp / "web.log")
        self.processes.append(process)
        process.wait_ready(lambda: answers(f"http://127.0.0.1:{port}/api/v1/health/"), timeout=60)
        return process


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).ok
    except requests.ConnectionError:
        return False


def loads_tensorflow(process: ManagedProcess) -> bool:
    """Whether any process of the group has TensorFlow's library mapped (imported)."""
    for pid in [process.pid, *process.child_pids()]:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if "libtensorflow" in maps or "_pywrap_tensorflow" in maps:
            return True
    return False


def cached_versions(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.exists() else set()


@pytest.fixture
def hosts(tmp_path, settings):
    from config.celery import app

    app.control.purge()
    # This test process is the operator's shell: it reads and writes the same shared storages.
    settings.MEDIA_ROOT = tmp_path / "object-store" / "media"
    settings.MODELS_ROOT = tmp_path / "shell" / "models"
    settings.STORAGES = {**settings.STORAGES, "models": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path / "object-store" / "models")}}}
    group = Hosts(tmp_path)
    yield group
    stop_all(group.processes)
    # The killed training host's task stays unacknowledged in the broker (redelivered after the
    # visibility timeout, an hour): it names rows this test's database no longer has.
    app.control.purge()
    with app.connection_for_write() as conn:
        conn.default_channel.client.delete("unacked", "unacked_index")


def test_web_features_and_training_hosts_share_nothing_but_the_services_and_storages(hosts, fashion_mnist):
    (_, _), (x_test, _) = fashion_mnist
    call_command("import_fashion_mnist", count=60, verbosity=0, stdout=io.StringIO())  # publishes on commit
    features = hosts.worker("features", "features")
    training = hosts.worker("training", "training,celery", RECOMMENDER_EPOCHS=3)
    port = free_port()
    web = hosts.web(port)
    base = f"http://127.0.0.1:{port}"
    staff = get_user_model().objects.create_user("ops", password="x", is_staff=True, is_superuser=True)
    auth = {"Authorization": f"Token {Token.objects.create(user=staff).key}"}

    # Ingestion on the features host.
    wait_for(lambda: ProductImage.objects.filter(status="ready").count() == 60, timeout=240,
             message="the 60 imported images to be processed by the features host")

    # Train -> activated, on the training host; its files are in the models storage.
    version = model_version_start(trigger="rehearsal")
    wait_for(lambda: ModelVersion.objects.get(pk=version.pk).status in ("active", "failed"), timeout=240,
             message="the training host to train and activate the version")
    version.refresh_from_db()
    assert version.status == "active", version.error
    stored = Path(hosts.shared["MODELS_STORAGE_ROOT"], f"v{version.pk}")
    assert sorted(p.name.split("-", 1)[1] for p in stored.iterdir()) == sorted(version.checksums)
    assert cached_versions(hosts.models_cache("training")) == {f"v{version.pk}"}
    assert cached_versions(hosts.models_cache("features")) == set()
    assert cached_versions(hosts.models_cache("web")) == set()

    # Upload through the web -> searchable: the features host fetches the head from the storage.
    product = ProductImage.objects.first().product
    response = requests.post(f"{base}/api/v1/products/{product.pk}/images/", headers=auth, timeout=30,
                             files={"images": ("shoe.png", png(x_test[0]), "image/png")})
    assert response.status_code == 201, response.text
    image_id = response.json()[0]["id"]
    wait_for(lambda: Embedding.objects.filter(image_id=image_id, version=version).exists(), timeout=120,
             message="the uploaded image to be embedded by the active version on the features host")
    assert f"v{version.pk}" in cached_versions(hosts.models_cache("features"))

    # The web imports TensorFlow only for a search by photo, and loads the model from the storage.
    similar = requests.get(f"{base}/api/v1/products/{product.pk}/similar/", timeout=30)
    assert similar.status_code == 200 and similar.json()["model_version"]["id"] == version.pk
    assert not loads_tensorflow(web)
    found = requests.post(f"{base}/api/v1/search/image/", headers=auth, timeout=120,
                          files={"image": ("query.png", png(x_test[1]), "image/png")})
    assert found.status_code == 200, found.text
    assert found.json()["model_version"]["id"] == version.pk and found.json()["results"]
    assert loads_tensorflow(web)
    assert cached_versions(hosts.models_cache("web")) == {f"v{version.pk}"}

    # The training host dies mid-training: the active version keeps serving.
    training.stop()
    training = hosts.worker("training", "training,celery", RECOMMENDER_EPOCHS=10000)
    doomed = model_version_start(trigger="rehearsal: killed")
    wait_for(lambda: (ModelVersion.objects.get(pk=doomed.pk).progress or {}).get("epoch", 0) >= 1, timeout=180,
             message="the second training to be in its epochs")
    training.kill()
    assert ModelVersion.objects.get(pk=version.pk).status == "active"
    assert ModelVersion.objects.get(pk=doomed.pk).status == "training"  # until the recovery fails it
    found = requests.post(f"{base}/api/v1/search/image/", headers=auth, timeout=60,
                          files={"image": ("query.png", png(x_test[2]), "image/png")})
    assert found.status_code == 200 and found.json()["model_version"]["id"] == version.pk
    similar = requests.get(f"{base}/api/v1/products/{product.pk}/similar/", timeout=30)
    assert similar.status_code == 200 and similar.json()["model_version"]["id"] == version.pk
    assert features.running and web.running
