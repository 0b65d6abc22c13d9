"""Staff control over the similar-items panels in the admin (catalog.merchandising): pins and
blocks inline on the product's page, category rules in their own list, and a preview of any
product's panel under the active version and each ready candidate, side by side, with the rules
applied and marked (and what they left out)."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse

from catalog import merchandising
from catalog.models import CategoryRule, PanelBlock, PanelPin, Product


class PanelPinInline(admin.TabularInline):
    model = PanelPin
    fk_name = "product"
    fields = ["pinned", "position"]
    autocomplete_fields = ["pinned"]
    extra = 0
    max_num = merchandising.PINS_MAX

    def get_formset(self, request, obj=None, **kwargs):
        return super().get_formset(request, obj, validate_max=True, **kwargs)  # max_num alone only hides forms

    verbose_name = "product pinned to the top of this product's similar items"
    verbose_name_plural = f"pinned similar items (at most {merchandising.PINS_MAX}, first position first)"


class PanelBlockInline(admin.TabularInline):
    model = PanelBlock
    fk_name = "product"
    fields = ["blocked"]
    autocomplete_fields = ["blocked"]
    extra = 0
    verbose_name = "product never shown in this product's similar items"
    verbose_name_plural = "blocked from the similar items"


@admin.register(CategoryRule)
class CategoryRuleAdmin(admin.ModelAdmin):
    list_display = ["category", "hidden", "created_at"]
    list_filter = ["category"]
    autocomplete_fields = ["category", "hidden"]
    fields = ["category", "hidden"]

    def save_model(self, request, obj, form, change):
        if change:
            merchandising.category_rule_change(rule=CategoryRule.objects.get(pk=obj.pk), category=obj.category_id,
                                               hidden=obj.hidden_id)
        else:
            obj.pk = merchandising.category_rule_add(category=obj.category_id, hidden=obj.hidden_id).pk

    def delete_model(self, request, obj):
        merchandising.category_rule_delete(rule=obj)

    def delete_queryset(self, request, queryset):
        for rule in queryset:
            merchandising.category_rule_delete(rule=rule)


def _panel(product, version, *, k):
    from recommender.selectors import similar_products

    ruled = similar_products(product=product, k=k, version=version, use_cache=False)
    plain = similar_products(product=product, k=k, version=version, apply_rules=False)
    shown = {item.product.pk for item in ruled.items}
    return {"version": version, "items": ruled.items, "source": ruled.source,
            "left_out": [item for item in plain.items if item.product.pk not in shown]}


def panel_preview_view(model_admin, request, pk, k: int = 6):
    """/admin/catalog/product/<pk>/panel/: the product's panel per version, rules applied and marked."""
    from recommender.selectors.versions import active_version, candidate_versions

    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    product = get_object_or_404(Product.objects.select_related("category"), pk=pk)
    versions = [v for v in [active_version(), *candidate_versions()] if v is not None]
    panels = [_panel(product, version, k=k) for version in versions] or [_panel(product, None, k=k)]
    rules = merchandising.panel_rules(product=product)
    if not versions:
        messages.info(request, "No model version yet: the panel comes from the backbone's features (cold start).")
    context = {**model_admin.admin_site.each_context(request), "opts": Product._meta, "product": product,
               "title": f"Similar items of {product}", "panels": panels, "rules": rules,
               "hidden_categories": CategoryRule.objects.filter(category=product.category).select_related("hidden"),
               "change_url": reverse("admin:catalog_product_change", args=[product.pk])}
    return TemplateResponse(request, "admin/catalog/product/panel_preview.html", context)
