"""The health endpoint (config/health.py): each part's check, and 503 only when the database is down."""

import contextlib
import logging
import os

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


def test_health_reports_each_part(anon_client, trained_catalog):
    _, version = trained_catalog
    response = anon_client.get("/api/v1/health/")
    assert response.status_code == 200
    body = response.json()
    checks = body["checks"]
    assert set(checks) == {"database", "redis", "worker", "model"}
    assert checks["database"]["ok"] and checks["redis"]["ok"] and checks["model"]["ok"]
    # No worker runs in this test: reported, and the site is degraded rather than down.
    assert checks["worker"] == {**checks["worker"], "ok": False, "detail": "no Celery worker answered a ping"}
    assert body["status"] == "degraded"
    assert body["active_model_version"]["id"] == version.pk
    assert body["ingestion"]["ready"] == 24
    assert response["Cache-Control"] == "no-store"


def test_health_without_a_model(anon_client):
    body = anon_client.get("/api/v1/health/").json()
    assert body["checks"]["model"]["ok"] is False and "no active model version" in body["checks"]["model"]["detail"]
    assert body["active_model_version"] is None


# A failing check answers a short reason; the exception (class, host, port, socket path) goes to the log
# only: the endpoint is public, and that text maps the deployment for whoever asks.
CLOSED_PORT_REDIS = {"default": {"BACKEND": "config.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/1",
                                 "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1}}}
LEAKS = ("Error", "Exception", "Traceback", "127.0.0.1", "port 1", "refused", "/tmp/", os.environ["VAR_DIR"])


def _leaks(text: str) -> list[str]:
    return [leak for leak in LEAKS if leak in text]


def test_a_redis_failure_answers_a_short_reason_and_logs_the_exception(anon_client, settings, caplog):
    settings.CACHES = CLOSED_PORT_REDIS
    with caplog.at_level(logging.WARNING, logger="config.health"):
        response = anon_client.get("/api/v1/health/")
    assert response.status_code == 200  # the database still answers: degraded, not down
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["detail"] == "Redis unavailable"
    assert not _leaks(response.content.decode())
    # The details are kept for the operator: the exception, with its host and port, in the log.
    (record,) = [r for r in caplog.records if r.name == "config.health"]
    assert record.exc_info and "127.0.0.1" in str(record.exc_info[1]) and "redis" in record.getMessage()


@contextlib.contextmanager
def database_down():
    """The default connection pointed at a closed TCP port while the block runs (a real failure)."""
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT="1")
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.mark.django_db(transaction=True)  # the default connection is closed and reopened: no test transaction
def test_health_is_503_with_a_short_reason_when_the_database_is_down(anon_client, caplog):
    # A real failure: the default connection pointed at a closed TCP port (psycopg: "connection to server
    # at "127.0.0.1", port 1 failed: Connection refused").
    with database_down(), caplog.at_level(logging.WARNING, logger="config.health"):
        response = anon_client.get("/api/v1/health/")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["checks"]["database"] == {**body["checks"]["database"], "ok": False,
                                          "detail": "database unavailable"}
    assert not _leaks(response.content.decode())
    records = [r for r in caplog.records if r.name == "config.health"]
    assert any(r.exc_info and "Connection refused" in str(r.exc_info[1]) for r in records)


# --------------------------------------------------------------------------- /healthz and /readyz
# The orchestrators' probes (config/health.py): plain text, public, never cached.


def _assert_never_cached(response):
    cache_control = response["Cache-Control"]  # never_cache: no proxy, browser or page cache keeps it
    assert "no-store" in cache_control and "private" in cache_control


def test_liveness_answers_without_a_query(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok\n" and response["Content-Type"].startswith("text/plain")
    _assert_never_cached(response)
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


def test_readiness_is_200_when_the_database_is_migrated_and_redis_answers(client):
    response = client.get("/readyz")
    assert (response.status_code, response.content) == (200, b"ready\n")
    assert response["Content-Type"].startswith("text/plain")
    _assert_never_cached(response)
    assert client.head("/readyz").status_code == 200


def test_readiness_is_503_when_redis_is_unreachable_and_liveness_is_not(client, settings, caplog):
    settings.CACHES = CLOSED_PORT_REDIS
    with caplog.at_level(logging.WARNING, logger="config.health"):
        response = client.get("/readyz")
    assert (response.status_code, response.content) == (503, b"cache unavailable\n")
    _assert_never_cached(response)
    assert not _leaks(response.content.decode())
    (record,) = [r for r in caplog.records if r.name == "config.health"]
    assert record.exc_info and "127.0.0.1" in str(record.exc_info[1])
    assert client.get("/healthz").status_code == 200


def _unapply_a_leaf_migration():
    """Delete one leaf migration's row from django_migrations (inside the test's transaction)."""
    from django.db.migrations.executor import MigrationExecutor
    from django.db.migrations.recorder import MigrationRecorder

    app, name = sorted(MigrationExecutor(connection).loader.graph.leaf_nodes())[-1]
    assert MigrationRecorder(connection).migration_qs.filter(app=app, name=name).delete()[0] == 1


def test_readiness_is_503_with_an_unapplied_migration(client, monkeypatch):
    from config import health

    monkeypatch.setattr(health.migrations_applied, "clean", False)
    assert client.get("/readyz").status_code == 200
    monkeypatch.setattr(health.migrations_applied, "clean", False)  # a process started after the change
    _unapply_a_leaf_migration()
    response = client.get("/readyz")
    assert (response.status_code, response.content) == (503, b"migrations not applied\n")


def test_readiness_reads_the_migrations_only_until_they_are_clean(client, monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from config import health

    monkeypatch.setattr(health.migrations_applied, "clean", False)
    with CaptureQueriesContext(connection) as first:
        assert client.get("/readyz").status_code == 200
    assert any("django_migrations" in q["sql"] for q in first.captured_queries)  # the check ran
    _unapply_a_leaf_migration()
    with CaptureQueriesContext(connection) as later:
        assert client.get("/readyz").status_code == 200  # cached clean: the table is not read again
    assert not any("django_migrations" in q["sql"] for q in later.captured_queries)


def test_the_page_cache_middleware_does_not_keep_a_probe_answer(client, settings, monkeypatch):
    from config import health

    settings.MIDDLEWARE = ["django.middleware.cache.UpdateCacheMiddleware", *settings.MIDDLEWARE,
                           "django.middleware.cache.FetchFromCacheMiddleware"]
    settings.CACHE_MIDDLEWARE_SECONDS = 600
    assert client.get("/readyz").status_code == 200
    monkeypatch.setattr(health.migrations_applied, "clean", False)
    _unapply_a_leaf_migration()
    assert client.get("/readyz").status_code == 503  # not the 200 above, served from the page cache


def test_the_probes_need_no_login_even_under_login_required_middleware(client, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.contrib.auth.middleware.LoginRequiredMiddleware"]
    assert client.get("/").status_code == 302  # the middleware is in force: the shop's home needs a login
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_behind_the_tls_redirect_a_probe_sends_x_forwarded_proto(client, settings):
    # DJANGO_ENV=production redirects plain HTTP to HTTPS, a probe included (a 301 would hide a 503):
    # docs/deployment.md's probes send the header the proxy would (SECURE_PROXY_SSL_HEADER).
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert client.get("/healthz").status_code == 301
    assert client.get("/healthz", headers={"X-Forwarded-Proto": "https"}).status_code == 200
    assert client.get("/readyz", headers={"X-Forwarded-Proto": "https"}).status_code == 200


@pytest.mark.django_db(transaction=True)  # the default connection is closed and reopened: no test transaction
def test_readiness_is_503_when_the_database_is_down_and_liveness_still_answers(client, caplog):
    with database_down():
        with caplog.at_level(logging.WARNING, logger="config.health"):
            ready = client.get("/readyz")
        live = client.get("/healthz")  # (no query counter here: it would connect to the closed port itself)
    assert (ready.status_code, ready.content) == (503, b"database unavailable\n")
    assert not _leaks(ready.content.decode())
    assert any(r.exc_info and "Connection refused" in str(r.exc_info[1]) for r in caplog.records
               if r.name == "config.health")
    assert (live.status_code, live.content) == (200, b"ok\n")


@pytest.mark.django_db(transaction=True)  # a live server: its thread has its own connection
def test_the_containers_probe_passes_only_a_ready_allowed_answer_behind_the_tls_redirect(live_server, settings):
    # deploy/probe.py, the compose file's healthcheck, as it runs in a container: production's redirect to
    # HTTPS on, the site's own host names only. It sends an allowed Host and X-Forwarded-Proto itself.
    import subprocess
    import sys
    from pathlib import Path

    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.ALLOWED_HOSTS = ["shop.example.com"]
    probe = Path(__file__).resolve().parents[2] / "deploy" / "probe.py"

    def run(*paths, allowed_hosts="shop.example.com"):
        return subprocess.run([sys.executable, str(probe), *(live_server.url + p for p in paths)], timeout=60,
                              env={**os.environ, "ALLOWED_HOSTS": allowed_hosts}, capture_output=True, text=True)

    passed = run("/readyz", "/healthz")
    assert passed.returncode == 0, passed.stderr
    assert "/readyz: 200 ready" in passed.stdout and "/healthz: 200 ok" in passed.stdout
    refused = run("/readyz", allowed_hosts="other.example.com")  # a Host the site does not serve: 400
    assert refused.returncode == 1 and "/readyz: 400" in refused.stderr
    assert run("/no-such-page").returncode == 1
    settings.CACHES = CLOSED_PORT_REDIS
    not_ready = run("/readyz")
    assert not_ready.returncode == 1 and "/readyz: 503 cache unavailable" in not_ready.stderr
