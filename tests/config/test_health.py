"""The health endpoint (config/health.py): each part's check, and 503 only when the database is down."""

import pytest

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


def test_health_is_503_when_the_database_is_down(anon_client, monkeypatch):
    from config import health

    def refuse():
        raise ConnectionError("connection refused")

    monkeypatch.setattr(health, "_database", refuse)
    response = anon_client.get("/api/v1/health/")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down" and body["checks"]["database"]["ok"] is False
    assert "connection refused" in body["checks"]["database"]["detail"]
