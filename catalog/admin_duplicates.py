"""The admin's "possible duplicates" list (catalog.duplicates): both pictures side by side, the
distance and the SKUs, filters, and the decisions as actions. Registered by catalog.admin."""

from django.contrib import admin, messages
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from catalog import duplicates
from catalog.models import DuplicatePair

PICTURE = '<img src="{}" style="height:{}px;width:{}px;object-fit:contain;background:#f4f4f4" alt="">'


def _side(product, image, size: int):
    link = reverse("admin:catalog_product_change", args=[product.pk])
    picture = format_html(PICTURE, image.thumbnail_url(size), size, size) if image else "(image removed)"
    hidden = "" if product.is_active else " (hidden)"
    return (link, picture, product.sku, hidden)


def pictures_html(pair: DuplicatePair, size: int = 128):
    cells = [_side(pair.product_a, pair.image_a, size), _side(pair.product_b, pair.image_b, size)]
    return format_html('<div style="display:flex;gap:12px">{}</div>', format_html_join(
        "", '<a href="{}" style="text-align:center">{}<br><b>{}</b>{}</a>', cells))


@admin.register(DuplicatePair)
class DuplicatePairAdmin(admin.ModelAdmin):
    list_display = ["pictures", "distance", "kind", "skus", "status", "created_at"]
    list_display_links = ["distance"]
    list_filter = ["status", "kind", ("product_a__category", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["product_a__sku", "product_b__sku", "product_a__title", "product_b__title"]
    list_select_related = ["product_a", "product_b", "image_a", "image_b"]
    actions = ["merge_into_older", "merge_into_newer", "mark_not_duplicate", "mark_ignored", "reopen"]
    fields = ["large_pictures", "kind", "distance", "status", "kept", "decided_by", "decided_at", "created_at"]
    readonly_fields = fields
    list_per_page = 50

    def has_add_permission(self, request):
        return False  # pairs are found by the worker

    def changelist_view(self, request, extra_context=None):
        # Open pairs unless another filter was asked for (the list is a review queue); the
        # status filter's "All" comes back from the list itself, and is kept.
        from_list = request.path in request.META.get("HTTP_REFERER", "")
        if not request.GET and request.method == "GET" and not from_list:
            return redirect(f"{request.path}?status__exact={DuplicatePair.Status.OPEN}")
        return super().changelist_view(request, extra_context)

    @admin.display(description="Pictures (A, the older product, then B)")
    def pictures(self, obj):
        return pictures_html(obj)

    @admin.display(description="Pictures")
    def large_pictures(self, obj):
        return pictures_html(obj, size=320)

    @admin.display(description="SKUs")
    def skus(self, obj):
        return f"{obj.product_a.sku} / {obj.product_b.sku}"

    def _each(self, request, queryset, decide, done: str):
        changed, refused = 0, []
        for pair in queryset:
            try:
                decide(pair)
                changed += 1
            except ValueError as exc:
                refused.append(f"{pair.product_a.sku} / {pair.product_b.sku}: {exc}")
        if changed:
            self.message_user(request, f"{changed} pair(s) {done}.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not changed: " + "; ".join(refused), messages.ERROR)

    def has_merge_permission(self, request):
        # A merge moves pictures and hides a product: the product change permission too (as the API).
        return self.has_change_permission(request) and request.user.has_perm("catalog.change_product")

    @admin.action(description="Merge: keep the older product (A), hide B", permissions=["merge"])
    def merge_into_older(self, request, queryset):
        self._each(request, queryset, lambda p: duplicates.duplicate_pair_merge(
            pair=p, keep=p.product_a_id, user=request.user), "merged into A")

    @admin.action(description="Merge: keep the newer product (B), hide A", permissions=["merge"])
    def merge_into_newer(self, request, queryset):
        self._each(request, queryset, lambda p: duplicates.duplicate_pair_merge(
            pair=p, keep=p.product_b_id, user=request.user), "merged into B")

    @admin.action(description="Not a duplicate (never shown again)", permissions=["change"])
    def mark_not_duplicate(self, request, queryset):
        self._each(request, queryset, lambda p: duplicates.duplicate_pair_decide(
            pair=p, status=DuplicatePair.Status.NOT_DUPLICATE, user=request.user), "marked not a duplicate")

    @admin.action(description="Ignore: duplicates, keep both", permissions=["change"])
    def mark_ignored(self, request, queryset):
        self._each(request, queryset, lambda p: duplicates.duplicate_pair_decide(
            pair=p, status=DuplicatePair.Status.IGNORED, user=request.user), "ignored")

    @admin.action(description="Reopen for review", permissions=["change"])
    def reopen(self, request, queryset):
        self._each(request, queryset, lambda p: duplicates.duplicate_pair_decide(
            pair=p, status=DuplicatePair.Status.OPEN, user=request.user), "reopened")
