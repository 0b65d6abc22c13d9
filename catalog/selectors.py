"""Reads of the catalog, shaped for pages and the API (no N+1: related rows are prefetched)."""

from django.db.models import Count, Prefetch, Q

from catalog.models import Category, Product, ProductImage


def _with_images(qs):
    return qs.select_related("category").prefetch_related(
        Prefetch("images", queryset=ProductImage.objects.order_by("position", "id")))


def categories_with_counts():
    return Category.objects.annotate(
        product_count=Count("products", filter=Q(products__is_active=True))).order_by("name")


def product_list(*, category=None, q=None, min_price=None, max_price=None, in_stock=None,
                 include_inactive=False, ordering=None):
    qs = Product.objects.all() if include_inactive else Product.objects.active()
    if category is not None:
        qs = qs.filter(category=category)
    if q:
        qs = qs.filter(Q(title__icontains=q) | Q(sku__icontains=q) | Q(description__icontains=q))
    if min_price is not None:
        qs = qs.filter(price__gte=min_price)
    if max_price is not None:
        qs = qs.filter(price__lte=max_price)
    if in_stock:
        qs = qs.filter(in_stock=True)
    if ordering:
        qs = qs.order_by(ordering, "id")
    return _with_images(qs)


def product_detail(*, pk):
    return _with_images(Product.objects.active()).get(pk=pk)
