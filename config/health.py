"""The health endpoint (/api/v1/health/): database, Redis, workers and the active model.

Project-level, not an app's: it probes the services every app relies on; the recommender is read
through its selectors and shown in its API's reference shape.

Public (load balancers and monitors call it without credentials), so a failing check answers only a
short fixed reason such as "database unavailable", for every caller, staff included: exception text
names hosts, ports, socket paths and library versions. The exception itself is logged (logger
``config.health``, WARNING with its traceback), where operators read it.
"""

from __future__ import annotations

import logging
import time
import uuid

from django.core.cache import cache
from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from recommender.api.serializers import ModelVersionRefSerializer
from recommender.selectors import active_version, ingestion_counts


class HealthCheckSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    detail = serializers.CharField(help_text="What was found, or a short reason (the error is in the server log).")
    latency_ms = serializers.FloatField(allow_null=True)


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded", "down"], help_text=(
        "ok: everything works; degraded: the database works (pages and reads are served) but Redis, the "
        "worker or the model is missing; down: the database is unreachable (HTTP 503)."))
    checks = serializers.DictField(child=HealthCheckSerializer(), help_text=(
        "database, redis, worker and model, each {ok, detail, latency_ms}."))
    active_model_version = ModelVersionRefSerializer(allow_null=True)
    ingestion = serializers.DictField(child=serializers.IntegerField(), allow_null=True, help_text=(
        "Images by processing status: pending, processing, ready, failed (null if the database is down)."))


WORKER_CACHE_SECONDS = 5

logger = logging.getLogger(__name__)


def _check(name: str, probe, *, failure: str) -> dict:
    """Run ``probe`` (returning ``(ok, detail)``); an exception answers ``failure`` and is logged."""
    started = time.perf_counter()
    try:
        ok, detail = probe()
    except Exception:  # every failure is a finding, not an error of this endpoint
        logger.warning("health check %s failed", name, exc_info=True)
        ok, detail = False, failure
    return {"ok": ok, "detail": detail, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return True, "SELECT 1 answered"


def _redis():
    key, value = f"health:{uuid.uuid4().hex}", "pong"
    cache.set(key, value, 10)
    found = cache.get(key)
    cache.delete(key)
    return found == value, "cache write and read back" if found == value else "cache did not return the value"


def _worker():
    # A ping waits its whole timeout for replies; reuse a recent answer so that frequent health checks
    # (load balancers) stay fast.
    count = cache.get("health:workers")
    if count is None:
        from config.celery import app

        replies = app.control.inspect(timeout=1.0).ping() or {}
        count = len(replies)
        cache.set("health:workers", count, WORKER_CACHE_SECONDS)
    return count > 0, f"{count} worker(s) answered a ping" if count else "no Celery worker answered a ping"


def _model(version):
    if version is None:
        return False, "no active model version: similar items use backbone features until a version is trained"
    return True, f"v{version.pk} ({version.backbone}) is active"


class HealthView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Health",
        description=("Database, Redis, worker and active-model status. 200 while the database answers (the "
                     "site can serve reads), 503 when it does not. `status` is ok when everything works and "
                     "degraded when Redis, the worker or an active model is missing. Worker pings are reused "
                     f"for {WORKER_CACHE_SECONDS} s."),
        responses={
            200: OpenApiResponse(HealthSerializer, description="The database answers (status ok or degraded)."),
            503: OpenApiResponse(HealthSerializer, description="The database does not answer (status down)."),
        },
        tags=["health"])
    def get(self, request):
        checks = {"database": _check("database", _database, failure="database unavailable"),
                  "redis": _check("redis", _redis, failure="Redis unavailable")}
        if checks["redis"]["ok"]:
            checks["worker"] = _check("worker", _worker, failure="worker ping failed")
        else:
            checks["worker"] = {"ok": False, "detail": "not checked: Redis (the broker) is unreachable",
                                "latency_ms": None}
        version, ingestion = None, None
        if checks["database"]["ok"]:
            version = active_version()
            checks["model"] = _check("model", lambda: _model(version), failure="model check failed")
            ingestion = ingestion_counts()
        else:
            checks["model"] = {"ok": False, "detail": "not checked: the database is unreachable", "latency_ms": None}
        database_ok = checks["database"]["ok"]
        overall = "down" if not database_ok else ("ok" if all(c["ok"] for c in checks.values()) else "degraded")
        body = {"status": overall, "checks": checks,
                "active_model_version": ModelVersionRefSerializer(version).data if version else None,
                "ingestion": ingestion}
        response = Response(body, status=status.HTTP_200_OK if database_ok else status.HTTP_503_SERVICE_UNAVAILABLE)
        response["Cache-Control"] = "no-store"
        return response
