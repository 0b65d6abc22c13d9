"""The possible duplicates over the API, for staff: the admin's list and its actions.

    GET  /api/v1/duplicates/?status=open&kind=near&category=<id>   closest first
    GET  /api/v1/duplicates/<id>/
    POST /api/v1/duplicates/<id>/merge/           {"keep": <product id>}
    POST /api/v1/duplicates/<id>/not-duplicate/
    POST /api/v1/duplicates/<id>/ignore/
    POST /api/v1/duplicates/<id>/reopen/

Reading needs catalog.view_duplicatepair; deciding catalog.change_duplicatepair, and a merge also
catalog.change_product (it moves images and hides a product), as in the admin. A decision on a
merged pair is 409.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from catalog import duplicates
from catalog.api.exceptions import Conflict
from catalog.api.permissions import StaffWithPermissions
from catalog.api.serializers import absolute_url
from catalog.models import DuplicatePair, Product


class DuplicateSideSerializer(serializers.ModelSerializer):
    picture = serializers.SerializerMethodField(help_text="256 px thumbnail of the matched picture, or null.")

    class Meta:
        model = Product
        fields = ["id", "sku", "title", "is_active", "picture"]
        read_only_fields = fields

    def get_picture(self, product) -> str | None:
        image = self.context["images"].get(product.pk)
        return absolute_url(self.context.get("request"), image.thumbnail_url(256)) if image else None


class DuplicatePairSerializer(serializers.ModelSerializer):
    product_a = serializers.SerializerMethodField()
    product_b = serializers.SerializerMethodField()

    class Meta:
        model = DuplicatePair
        fields = ["id", "kind", "distance", "status", "product_a", "product_b", "kept", "decided_at", "created_at"]
        read_only_fields = fields

    def _side(self, product, image):
        return DuplicateSideSerializer(product, context={**self.context, "images": {product.pk: image}}).data

    @extend_schema_field(DuplicateSideSerializer)
    def get_product_a(self, pair) -> dict:
        return self._side(pair.product_a, pair.image_a)

    @extend_schema_field(DuplicateSideSerializer)
    def get_product_b(self, pair) -> dict:
        return self._side(pair.product_b, pair.image_b)


class MergeSerializer(serializers.Serializer):
    keep = serializers.IntegerField(help_text="The product to keep: one of the pair's two products.")


_pair_id = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH, description="Pair id.")


@extend_schema_view(
    list=extend_schema(summary="Possible duplicates (staff)", parameters=[
        OpenApiParameter("status", OpenApiTypes.STR, enum=DuplicatePair.Status.values,
                         description="Default: open (to review)."),
        OpenApiParameter("kind", OpenApiTypes.STR, enum=DuplicatePair.Kind.values),
        OpenApiParameter("category", OpenApiTypes.INT, description="Either product in this category.")]),
    retrieve=extend_schema(summary="A possible duplicate (staff)", parameters=[_pair_id]),
)
class DuplicatePairViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    permission_classes = [StaffWithPermissions]
    required_permissions = {
        "list": ["catalog.view_duplicatepair"],
        "retrieve": ["catalog.view_duplicatepair"],
        "merge": ["catalog.change_duplicatepair", "catalog.change_product"],
        "not_duplicate": ["catalog.change_duplicatepair"],
        "ignore": ["catalog.change_duplicatepair"],
        "reopen": ["catalog.change_duplicatepair"],
    }
    serializer_class = DuplicatePairSerializer
    lookup_value_regex = r"[0-9]+"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False) or self.action != "list":
            return DuplicatePair.objects.select_related("product_a", "product_b", "image_a", "image_b")
        params = self.request.query_params
        status = params.get("status", DuplicatePair.Status.OPEN)
        if status not in DuplicatePair.Status.values:
            raise serializers.ValidationError({"status": f"One of {', '.join(DuplicatePair.Status.values)}."})
        kind = params.get("kind") or None
        if kind is not None and kind not in DuplicatePair.Kind.values:
            raise serializers.ValidationError({"kind": f"One of {', '.join(DuplicatePair.Kind.values)}."})
        category = params.get("category") or None
        if category is not None and not (category.isascii() and category.isdigit()):
            raise serializers.ValidationError({"category": "A category id."})
        return duplicates.duplicate_pairs(status=status, kind=kind, category=category)

    def _decided(self, status):
        try:
            duplicates.duplicate_pair_decide(pair=self.get_object(), status=status, user=self.request.user)
        except ValueError as exc:
            raise Conflict(str(exc))
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(summary="Merge a pair into one product (staff)", request=MergeSerializer,
                   parameters=[_pair_id], description=(
                       "The other product's images move to the kept one (files it already has are deleted), "
                       "the other product is hidden, and the pair is 'merged'."))
    @action(detail=True, methods=["post"])
    def merge(self, request, pk=None):
        body = MergeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        pair = self.get_object()
        if body.validated_data["keep"] not in (pair.product_a_id, pair.product_b_id):
            raise serializers.ValidationError({"keep": f"One of this pair's products: {pair.product_a_id} or "
                                                       f"{pair.product_b_id}."})
        try:
            duplicates.duplicate_pair_merge(pair=pair, keep=body.validated_data["keep"], user=request.user)
        except ValueError as exc:
            raise Conflict(str(exc))
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(summary="Mark a pair 'not a duplicate' (staff)", request=None, parameters=[_pair_id],
                   description="The pair never comes back, also after a new model version.")
    @action(detail=True, methods=["post"], url_path="not-duplicate")
    def not_duplicate(self, request, pk=None):
        return self._decided(DuplicatePair.Status.NOT_DUPLICATE)

    @extend_schema(summary="Ignore a pair: duplicates, both kept (staff)", request=None, parameters=[_pair_id])
    @action(detail=True, methods=["post"])
    def ignore(self, request, pk=None):
        return self._decided(DuplicatePair.Status.IGNORED)

    @extend_schema(summary="Reopen a decided pair for review (staff)", request=None, parameters=[_pair_id])
    @action(detail=True, methods=["post"])
    def reopen(self, request, pk=None):
        return self._decided(DuplicatePair.Status.OPEN)
