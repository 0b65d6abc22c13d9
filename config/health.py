"""Health: the status endpoint (/api/v1/health/: database, Redis, workers and the active model) and
the orchestrators' probes (/healthz: liveness, /readyz: readiness; docs/deployment.md).

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

from django.contrib.auth.decorators import login_not_required
from django.core.cache import cache
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
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


# --------------------------------------------------------------------------- orchestrators' probes
# Plain Django views, routed at the root (config/urls.py): no REST framework, no authentication (and
# exempt from LoginRequiredMiddleware should it be added), never cached (never_cache: "no-store" and
# "private"; Django's page cache middleware skips such responses), GET and HEAD only.

READY_STATEMENT_TIMEOUT_MS = 2000  # the database part of /readyz, server-side
NOT_READY_STATUS = 503


def _probe_response(text: str, status_code: int = 200) -> HttpResponse:
    return HttpResponse(text, status=status_code, content_type="text/plain; charset=utf-8")


@login_not_required
@never_cache
@require_safe
def liveness(request):
    """/healthz: this process answers. Touches no database, Redis or model: a failure of those must not
    get a working process restarted (that is /readyz's business: taken out of rotation, not killed)."""
    return _probe_response("ok\n")


class MigrationsApplied:
    """Has the default database every migration this code knows of? Cached per process once it has:
    a release migrates before its processes serve, and nothing unapplies migrations under them."""

    def __init__(self):
        self.clean = False

    def __call__(self) -> bool:
        if not self.clean:
            executor = MigrationExecutor(connection)
            self.clean = not executor.migration_plan(executor.loader.graph.leaf_nodes())
        return self.clean


migrations_applied = MigrationsApplied()


def _database_ready() -> str | None:
    """None when the database answers and is migrated, else the short reason."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(READY_STATEMENT_TIMEOUT_MS)])
                cursor.execute("SELECT 1")
                cursor.fetchone()
            if not migrations_applied():
                return "migrations not applied"
    except Exception:  # a finding, not an error of this endpoint: the exception goes to the log only
        logger.warning("readiness: database check failed", exc_info=True)
        return "database unavailable"
    return None


def _cache_ready() -> str | None:
    try:
        ok, _ = _redis()
    except Exception:
        logger.warning("readiness: cache check failed", exc_info=True)
        return "cache unavailable"
    return None if ok else "cache unavailable"


@login_not_required
@never_cache
@require_safe
def readiness(request):
    """/readyz: 200 "ready" when this process can serve pages: the database answers (a statement timeout
    of READY_STATEMENT_TIMEOUT_MS; the connection itself is bounded by DATABASE_URL's connect_timeout)
    and has no unapplied migration, and the cache (Redis) answers (settings.CACHES: 1 s to connect, 1 s
    a command). 503 with one short fixed reason a line otherwise. No worker ping, no model."""
    reasons = [reason for reason in (_database_ready(), _cache_ready()) if reason]
    if reasons:
        return _probe_response("".join(f"{reason}\n" for reason in reasons), NOT_READY_STATUS)
    return _probe_response("ready\n")
