"""The health endpoint (config/health.py): each part's check, and 503 only when the database is down."""

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


@pytest.mark.django_db(transaction=True)  # the default connection is closed and reopened: no test transaction
def test_health_is_503_with_a_short_reason_when_the_database_is_down(anon_client, caplog):
    # A real failure: the default connection pointed at a closed TCP port (psycopg: "connection to server
    # at "127.0.0.1", port 1 failed: Connection refused").
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT="1")
    try:
        with caplog.at_level(logging.WARNING, logger="config.health"):
            response = anon_client.get("/api/v1/health/")
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["checks"]["database"] == {**body["checks"]["database"], "ok": False,
                                          "detail": "database unavailable"}
    assert not _leaks(response.content.decode())
    records = [r for r in caplog.records if r.name == "config.health"]
    assert any(r.exc_info and "Connection refused" in str(r.exc_info[1]) for r in records)
