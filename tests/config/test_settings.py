"""Production settings and security behaviour."""

import io
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


@pytest.mark.parametrize("mode, frozen", [(None, True), ("default", False)])
def test_the_production_servers_workers_freeze_the_garbage_collector_after_start_up(mode, frozen):
    """config/gunicorn.py's post_worker_init (WEB_GC, default "freeze"): a worker's start-up objects
    (Django, its URLs and views) are out of the collector's reach, so a full collection stops
    walking them; in a process of its own (freezing is for the rest of a process's life)."""
    code = ("import gc, runpy; from django.urls import get_resolver; "
            "conf = runpy.run_path('config/gunicorn.py'); conf['post_worker_init'](None); "
            "print(gc.get_freeze_count(), len(get_resolver().url_patterns) > 0)")
    env = {key: value for key, value in os.environ.items() if key != "WEB_GC"}
    if mode:
        env["WEB_GC"] = mode
    result = manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    count, resolved = result.stdout.strip().splitlines()[-1].split()
    assert (int(count) > 10_000) is frozen and resolved == "True"


def test_the_cache_reuses_its_redis_client():
    """Django's backend built a redis-py client (and its ~170 response callbacks) for every call."""
    from django.core.cache import cache

    cache.set("reuse", {"a": 1}, 10)
    assert cache.get("reuse") == {"a": 1}
    assert cache._cache.get_client("reuse") is cache._cache.get_client("other", write=True)


def _settings_printed(expression, env, *, drop=()):
    """``expression`` evaluated on the settings of a fresh process with ``env`` (and without ``drop``)."""
    environ = {k: v for k, v in {**os.environ, **env}.items() if k not in drop}
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c",
                             f"from django.conf import settings as s; print(repr({expression}))"],
                            cwd=ROOT, capture_output=True, text=True, env=environ, timeout=120)
    return result


@pytest.mark.parametrize("django_env", ["local", "test"])
def test_debug_is_off_unless_asked_for(django_env):
    result = _settings_printed("(s.DEBUG, s.SERVE_MEDIA)", {"DJANGO_ENV": django_env}, drop=("DEBUG", "SERVE_MEDIA"))
    assert result.returncode == 0, result.stderr
    # Off by default; uploaded images are still served by Django outside production (safe headers).
    assert result.stdout.strip().splitlines()[-1] == "(False, True)"
    asked = _settings_printed("s.DEBUG", {"DJANGO_ENV": django_env, "DEBUG": "1"})
    assert asked.stdout.strip().splitlines()[-1] == "True", asked.stderr


def test_production_serves_no_media_by_default():
    result = _settings_printed("s.SERVE_MEDIA", PRODUCTION, drop=("SERVE_MEDIA",))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("value,expected", [(None, 0), ("0", 0), ("2", 2)])
def test_trusted_proxies_come_from_the_environment(value, expected):
    env = {} if value is None else {"NUM_PROXIES": value}
    result = _settings_printed("s.REST_FRAMEWORK['NUM_PROXIES']", env, drop=() if value else ("NUM_PROXIES",))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(expected)


@pytest.mark.parametrize("value", ["-1", "one", "1.5"])
def test_a_bad_proxy_count_is_refused_with_a_clear_message(value):
    result = _settings_printed("s.REST_FRAMEWORK['NUM_PROXIES']", {"NUM_PROXIES": value})
    assert result.returncode != 0
    assert "NUM_PROXIES must be a whole number of 0 or more" in result.stderr and repr(value) in result.stderr


def test_the_demo_asks_for_debug_for_its_web_server_only(monkeypatch):
    """``make run`` (rundemo) serves with runserver, which needs DEBUG for static files and tracebacks;
    its worker does not get it (DEBUG keeps every query in memory). An explicit DEBUG is kept."""
    from catalog.management.commands import rundemo

    for key in ("RECOMMENDER_INPUT_SIZE", "RECOMMENDER_BACKBONE_WEIGHTS"):  # _run writes them
        monkeypatch.setenv(key, os.environ.get(key, "32" if key == "RECOMMENDER_INPUT_SIZE" else "random"))
    monkeypatch.setattr(rundemo, "call_command", lambda *a, **k: None)
    monkeypatch.setattr(rundemo.Command, "_admin", lambda self: None)
    monkeypatch.setattr(rundemo, "Product", type("Product", (), {"objects": type("Manager", (), {
        "exists": staticmethod(lambda: True)})}))
    monkeypatch.setattr(rundemo.Command, "_stop", lambda self, children: None)

    def wait(self, children):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundemo.Command, "_wait", wait)
    for debug, expected in ((None, "1"), ("0", "0")):
        spawned = {}
        monkeypatch.setattr(rundemo.Command, "_spawn", lambda self, name, cmd, env: spawned.setdefault(name, env))
        if debug is None:
            monkeypatch.delenv("DEBUG", raising=False)
        else:
            monkeypatch.setenv("DEBUG", debug)
        rundemo.Command(stdout=io.StringIO(), stderr=io.StringIO())._run("127.0.0.1:0", 10, 1)
        assert spawned["web"]["DEBUG"] == expected
        assert spawned["worker"].get("DEBUG") == debug
