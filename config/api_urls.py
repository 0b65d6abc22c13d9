"""The REST API (Django REST framework), mounted at /api/ by config/urls.py. Each app owns its
routes (catalog/api/urls.py, recommender/api/urls.py); this module puts them under one version
prefix and one browsable root.

/api/v1/...           the endpoints (see the schema)
/api/schema/          OpenAPI 3 (YAML; ?format=json for JSON)
/api/schema/swagger/  Swagger UI
/api/schema/redoc/    ReDoc
"""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny
from rest_framework.routers import APIRootView, DefaultRouter

from catalog.api import urls as catalog_api
from catalog.api.exceptions import not_found
from config.health import HealthView
from recommender.api import urls as recommender_api

app_name = "api"


class PublicAPIRootView(APIRootView):
    """The API's entry points (the schema documents them: /api/schema/swagger/)."""

    permission_classes = [AllowAny]


class Router(DefaultRouter):
    APIRootView = PublicAPIRootView


router = Router()
for app_router in (catalog_api.router, recommender_api.router):
    router.registry.extend(app_router.registry)

urlpatterns = [
    path("v1/health/", HealthView.as_view(), name="health"),
    path("v1/", include(catalog_api.urlpatterns)),
    path("v1/", include(recommender_api.urlpatterns)),
    path("v1/", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("schema/swagger/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="swagger"),
    path("schema/redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    re_path(r"^", not_found),
]
