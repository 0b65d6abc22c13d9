"""Staff's rules for the similar-items panels over the API (catalog.merchandising):

    GET/PUT /api/v1/products/<id>/panel-rules/   {"pinned": [ids, in order], "blocked": [ids]}
    GET/POST /api/v1/category-rules/, DELETE /api/v1/category-rules/<id>/   {"category", "hidden"}

A product's rules need catalog.view_product to read; changing them catalog.change_product and
adding/deleting pins and blocks, as its inlines in the admin; category rules their own model
permissions. A PUT replaces both lists.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog import merchandising
from catalog.api.permissions import StaffWithPermissions
from catalog.api.selectors import product_for_api
from catalog.models import CategoryRule


class PanelRulesSerializer(serializers.Serializer):
    pinned = serializers.ListField(child=serializers.IntegerField(min_value=1), max_length=merchandising.PINS_MAX,
                                   help_text="Product ids shown first in this product's panel, in this order.")
    blocked = serializers.ListField(child=serializers.IntegerField(min_value=1), max_length=1000,
                                    help_text="Product ids never shown in this product's panel.")


def _rules_data(rules) -> dict:
    return {"pinned": list(rules.pinned), "blocked": sorted(rules.blocked),
            "hidden_categories": list(rules.hidden_categories)}


class PanelRulesView(APIView):
    permission_classes = [StaffWithPermissions]
    # As the admin's inlines: changing the product, and adding and deleting its pins and blocks.
    required_permissions = {"get": ["catalog.view_product"],
                            "put": ["catalog.change_product", "catalog.add_panelpin", "catalog.delete_panelpin",
                                    "catalog.add_panelblock", "catalog.delete_panelblock"]}

    def initial(self, request, *args, **kwargs):
        self.action = request.method.lower()  # StaffWithPermissions reads the action
        super().initial(request, *args, **kwargs)

    @extend_schema(summary="A product's panel rules (staff)", responses={200: PanelRulesSerializer},
                   parameters=[OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)], tags=["products"])
    def get(self, request, pk):
        product = product_for_api(pk=pk, include_inactive=True)
        return Response(_rules_data(merchandising.panel_rules(product=product)))

    @extend_schema(summary="Replace a product's panel rules (staff)", request=PanelRulesSerializer,
                   responses={200: PanelRulesSerializer},
                   parameters=[OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)], tags=["products"])
    def put(self, request, pk):
        product = product_for_api(pk=pk, include_inactive=True)
        body = PanelRulesSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            rules = merchandising.product_rules_set(product=product, **body.validated_data)
        except ValueError as exc:
            raise serializers.ValidationError({"pinned": str(exc)})
        return Response(_rules_data(rules))


class CategoryRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = CategoryRule
        fields = ["id", "category", "hidden", "created_at"]
        read_only_fields = ["id", "created_at"]
        validators = []  # the service is idempotent: the same pair twice is the same rule

    def validate(self, data):
        if data["category"] == data["hidden"]:
            raise serializers.ValidationError({"hidden": "A category rule needs two different categories."})
        return data


@extend_schema_view(
    list=extend_schema(summary="Category rules (staff)", description="Never recommend `hidden`'s products under "
                       "`category`'s (in every panel of the category)."),
    create=extend_schema(summary="Add a category rule (staff)"),
    destroy=extend_schema(summary="Remove a category rule (staff)"),
)
class CategoryRuleViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin,
                          viewsets.GenericViewSet):
    permission_classes = [StaffWithPermissions]
    required_permissions = {"list": ["catalog.view_categoryrule"], "create": ["catalog.add_categoryrule"],
                            "destroy": ["catalog.delete_categoryrule"]}
    serializer_class = CategoryRuleSerializer
    queryset = CategoryRule.objects.select_related("category", "hidden")
    pagination_class = None  # a shop has few
    lookup_value_regex = r"[0-9]+"

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = merchandising.category_rule_add(category=data["category"], hidden=data["hidden"])

    def perform_destroy(self, instance):
        merchandising.category_rule_delete(rule=instance)
