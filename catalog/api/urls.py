"""The REST API (Django REST framework), mounted at /api/ by config/urls.py.

/api/v1/...           the endpoints (see the schema)
/api/schema/          OpenAPI 3 (YAML; ?format=json for JSON)
/api/schema/swagger/  Swagger UI
/api/schema/redoc/    ReDoc
"""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny
from rest_framework.routers import APIRootView, DefaultRouter

from catalog.api import views
from catalog.api.exceptions import not_found

app_name = "api"


class PublicAPIRootView(APIRootView):
    """The API's entry points (the schema documents them: /api/schema/swagger/)."""

    permission_classes = [AllowAny]


class Router(DefaultRouter):
    APIRootView = PublicAPIRootView


router = Router()
router.register("categories", views.CategoryViewSet, basename="category")
router.register("products", views.ProductViewSet, basename="product")
router.register("model-versions", views.ModelVersionViewSet, basename="modelversion")

urlpatterns = [
    path("v1/search/image/", views.ImageSearchView.as_view(), name="search-image"),
    path("v1/health/", views.HealthView.as_view(), name="health"),
    path("v1/auth/token/", views.AuthTokenView.as_view(), name="auth-token"),
    path("v1/", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("schema/swagger/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="swagger"),
    path("schema/redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    re_path(r"^", not_found),
]
