"""Production settings and security behaviour."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import ProductImageFactory, png_bytes, upload

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {"DJANGO_ENV": "production", "SECRET_KEY": "x" * 20 + "-a-real-secret-key-of-50-characters-or-more-for-sure",
              "DEBUG": "false", "ALLOWED_HOSTS": "shop.example.com"}


def manage(*args, env):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_check_deploy_passes_with_the_production_environment():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("override,message", [
    ({"SECRET_KEY": ""}, "real SECRET_KEY"),
    ({"SECRET_KEY": "short"}, "real SECRET_KEY"),
    ({"DEBUG": "true"}, "DEBUG on"),
])
def test_production_refuses_to_start_unsafely(override, message):
    env = {**PRODUCTION, **override}
    if not override.get("SECRET_KEY", "x"):
        env.pop("SECRET_KEY")
    result = manage("check", env=env)
    assert result.returncode != 0 and message in result.stderr


@pytest.mark.django_db
def test_csrf_is_enforced_on_forms():
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    response = client.post("/search/photo/", {"photo": upload(png_bytes())})
    assert response.status_code == 403


@pytest.mark.django_db
def test_uploaded_files_are_served_with_safe_headers(client):
    image = ProductImageFactory()
    response = client.get(image.image.url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["../../etc/passwd.png", "a\x00b.png", "ünïcødé 写真.png", "x" * 300 + ".png",
                                  "shell.html", "photo.svg"])
def test_client_file_names_never_become_storage_names(name, settings):
    from catalog.models import Product
    from catalog.services import product_create
    from tests.factories import CategoryFactory

    product = product_create(sku="N-1", title="t", category=CategoryFactory(), uploads=[upload(png_bytes(), name=name)])
    image = product.images.get()
    stored = Path(image.image.path)
    assert stored.is_relative_to(Path(settings.MEDIA_ROOT)) and stored.exists()
    assert stored.suffix == ".png" and len(stored.name) == 36  # <uuid4 hex>.png
    assert "\x00" not in image.original_name and "/" not in image.original_name
    assert len(image.original_name) <= 255
    assert Product.objects.count() == 1


def test_every_periodic_task_is_a_registered_task():
    from django.conf import settings

    from config.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"recommender.tasks.recover_lost_work", "recommender.tasks.retrain_if_needed",
            "recommender.tasks.prune_embeddings"} <= scheduled
    assert scheduled <= set(app.tasks), scheduled - set(app.tasks)


def test_the_production_server_keeps_database_connections_and_checks_them():
    """config/gunicorn.py (what README's Operations runs and bench/web_load.py measures) gives its
    workers persistent connections; other processes keep closing theirs."""
    import runpy

    conf = runpy.run_path(str(ROOT / "config" / "gunicorn.py"))
    assert conf["worker_class"] == "gthread" and conf["threads"] > 1 and conf["workers"] >= 2
    env = dict(item.split("=", 1) for item in conf["raw_env"]) if "CONN_MAX_AGE" not in os.environ else {}
    result = manage("shell", "-c", "from django.conf import settings; d = settings.DATABASES['default']; "
                    "print(d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS'])", env={**PRODUCTION, **env})
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()[-1].split()
    assert printed == [env.get("CONN_MAX_AGE", os.environ.get("CONN_MAX_AGE")), "True"]
    assert int(printed[0]) > 0


def test_the_cache_reuses_its_redis_client():
    """Django's backend built a redis-py client (and its ~170 response callbacks) for every call."""
    from django.core.cache import cache

    cache.set("reuse", {"a": 1}, 10)
    assert cache.get("reuse") == {"a": 1}
    assert cache._cache.get_client("reuse") is cache._cache.get_client("other", write=True)
