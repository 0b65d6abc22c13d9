"""The catalog's API routes (categories, products and their images, possible duplicates, API tokens); config/api_urls.py
mounts them under /api/v1/ beside the recommender's."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from catalog.api import duplicates, merchandising, views

router = SimpleRouter()
router.register("categories", views.CategoryViewSet, basename="category")
router.register("products", views.ProductViewSet, basename="product")
router.register("duplicates", duplicates.DuplicatePairViewSet, basename="duplicate")
router.register("category-rules", merchandising.CategoryRuleViewSet, basename="categoryrule")

urlpatterns = [
    path("auth/token/", views.AuthTokenView.as_view(), name="auth-token"),
    path("products/<int:pk>/panel-rules/", merchandising.PanelRulesView.as_view(), name="product-panel-rules"),
]
