"""The catalog's API routes (categories, products and their images, API tokens); config/api_urls.py
mounts them under /api/v1/ beside the recommender's."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from catalog.api import views

router = SimpleRouter()
router.register("categories", views.CategoryViewSet, basename="category")
router.register("products", views.ProductViewSet, basename="product")

urlpatterns = [
    path("auth/token/", views.AuthTokenView.as_view(), name="auth-token"),
]
