"""The recommender's API routes (similar items, search by photo, model versions); config/api_urls.py
mounts them under /api/v1/ beside the catalog's."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from recommender.api import views

router = SimpleRouter()
router.register("model-versions", views.ModelVersionViewSet, basename="modelversion")

urlpatterns = [
    path("products/<int:pk>/similar/", views.SimilarProductsView.as_view(), name="product-similar"),
    path("search/image/", views.ImageSearchView.as_view(), name="search-image"),
]
