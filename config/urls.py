from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path

from catalog.media import serve_media
from config import health

urlpatterns = [
    # Orchestrators' probes (config/health.py, docs/deployment.md): first, public, never cached.
    path("healthz", health.liveness, name="healthz"),
    path("readyz", health.readiness, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/", include("config.api_urls")),
    path("recommender/", include("recommender.urls")),
    path("", include("catalog.urls")),
]

if settings.DEBUG or settings.SERVE_MEDIA:
    urlpatterns += [re_path(r"^media/(?P<path>.*)$", serve_media)]
