from decimal import Decimal

import django_filters
from django import forms
from rest_framework.filters import OrderingFilter, SearchFilter

from catalog.models import Category, Product


class _ProductFilterForm(forms.Form):
    def clean(self):
        data = super().clean()
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            raise forms.ValidationError(f"min_price ({low}) is above max_price ({high}).", code="invalid_range")
        return data


class _StrictBooleanField(forms.NullBooleanField):
    """true/false (or 1/0); anything else is an error, not silently "no filter"."""

    def to_python(self, value):
        if value in (None, ""):
            return None
        text = str(value).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise forms.ValidationError(f"'{value}' is not a boolean: use true or false.", code="invalid")

    def validate(self, value):
        pass


class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = _StrictBooleanField

    def __init__(self, *args, **kwargs):
        # The default select widget turns unknown values into None before the field sees them.
        kwargs.setdefault("widget", forms.TextInput)
        super().__init__(*args, **kwargs)


class ProductFilter(django_filters.FilterSet):
    category = django_filters.ModelChoiceFilter(queryset=Category.objects.all(), help_text="Category id.")
    min_price = django_filters.NumberFilter(field_name="price", lookup_expr="gte", min_value=Decimal("0"),
                                            max_digits=10, decimal_places=2, help_text="Price at least this.")
    max_price = django_filters.NumberFilter(field_name="price", lookup_expr="lte", min_value=Decimal("0"),
                                            max_digits=10, decimal_places=2, help_text="Price at most this.")
    active = StrictBooleanFilter(field_name="is_active", help_text=(
        "Staff: active (true) or inactive (false) products; all when absent. Others only ever see active "
        "products."))
    in_stock = StrictBooleanFilter(help_text="In stock (true) or not (false).")

    class Meta:
        model = Product
        fields = ["category", "min_price", "max_price", "active", "in_stock"]
        form = _ProductFilterForm


class TextSearch(SearchFilter):
    search_description = ("Text search: products whose title, SKU or description contain every word "
                          "(case-insensitive).")

    def get_search_terms(self, request):
        # PostgreSQL refuses NUL in text; a NUL cannot match anything anyway.
        return [t.replace("\x00", "") for t in super().get_search_terms(request) if t.replace("\x00", "")]


class Ordering(OrderingFilter):
    ordering_description = "Sort by price, title, created_at or id; prefix with - for descending."

    def filter_queryset(self, request, queryset, view):
        ordering = self.get_ordering(request, queryset, view)
        if ordering:
            # A unique last key: pages never repeat or skip products that tie.
            ordering = [*ordering, "id"] if not {"id", "-id"} & set(ordering) else list(ordering)
            return queryset.order_by(*ordering)
        return queryset
