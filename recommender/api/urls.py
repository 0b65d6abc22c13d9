"""The recommender's API routes (similar items, search by photo, model versions); config/api_urls.py
mounts them under /api/v1/ beside the catalog's."""

from django.urls import path, re_path
from rest_framework.routers import SimpleRouter
from rest_framework.urlpatterns import format_suffix_patterns

from recommender.api import views

router = SimpleRouter()
router.register("model-versions", views.ModelVersionViewSet, basename="modelversion")

urlpatterns = [
    # With format suffixes (similar.json), as the product routes the router makes.
    *format_suffix_patterns([re_path(r"^products/(?P<pk>[0-9]+)/similar/$", views.SimilarProductsView.as_view(),
                                     name="product-similar")]),
    path("search/image/", views.ImageSearchView.as_view(), name="search-image"),
    path("events/click/", views.PanelClickView.as_view(), name="event-click"),
]
