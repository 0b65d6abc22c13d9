"""Reads shaped for the API on top of catalog.selectors."""

from django.db.models import Case, DateTimeField, F, Min, Q, Value, When
from django.db.models.functions import Greatest
from rest_framework.exceptions import NotFound

from catalog import selectors
from catalog.models import Product, ProductImage
from recommender.selectors import active_version

READY = ProductImage.Status.READY


def products_for_api(*, include_inactive: bool):
    """Products with their images (prefetched) and ``searchable_since`` (see ProductSerializer)."""
    # Explicit order: Django drops Meta.ordering from queries with aggregates (GROUP BY).
    qs = selectors.product_list(include_inactive=include_inactive).order_by("title", "id")
    version = active_version()
    if version is None:
        # Cold start: a ready image has backbone features, which similar items and search use.
        return qs.annotate(searchable_since=Min("images__status_changed_at", filter=Q(images__status=READY)))
    first_embedded = Min("images__status_changed_at",
                         filter=Q(images__status=READY, images__embeddings__version=version))
    # PostgreSQL's GREATEST ignores NULLs: keep "not searchable" (NULL) explicitly.
    return qs.annotate(_first_embedded=first_embedded).annotate(searchable_since=Case(
        When(_first_embedded__isnull=True, then=Value(None)),
        default=Greatest(F("_first_embedded"), Value(version.activated_at or version.created_at)),
        output_field=DateTimeField()))


def product_for_api(*, pk, include_inactive: bool) -> Product:
    """One product as the API shows it; 404 in words that say whether it may exist but be hidden."""
    try:
        return products_for_api(include_inactive=include_inactive).get(pk=pk)
    except Product.DoesNotExist:
        raise NotFound(f"No product with id {pk}." if include_inactive else f"No active product with id {pk}.")
