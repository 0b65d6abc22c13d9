"""Views of the catalog's REST API: parse and check input, call one service or selector, shape the
answer. The recommender's endpoints (similar items, search by photo, model versions) are in
recommender/api/, the health check in config/health.py.

Permissions are chosen per view; the project default (IsAdminUser) closes anything that forgets.
Writes need the model permissions the admin asks for the same change (catalog/api/permissions.py).
"""

from __future__ import annotations

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from catalog import selectors as catalog_selectors
from catalog.api import serializers as s
from catalog.api.filters import Ordering, ProductFilter, TextSearch
from catalog.api.permissions import StaffWithPermissionsOrReadOnly, permissions_require, staff_holds
from catalog.api.selectors import product_for_api, products_for_api
from catalog.api.throttling import AuthTokenThrottle
from catalog.api.uploads import images_attach, normalise_uploads, product_create_with_images
from catalog.models import Category, Product
from catalog.services import product_delete, product_image_delete, product_update

ID = r"[0-9]+"


def _sees_hidden(request) -> bool:
    """Inactive products are shown to staff who may view products (as in the admin)."""
    return staff_holds(request, "catalog.view_product")


# --------------------------------------------------------------------------- categories


@extend_schema_view(
    list=extend_schema(summary="List categories", description="All categories with their number of active "
                       "products, by name (not paginated: a catalog has few)."),
    retrieve=extend_schema(summary="A category", parameters=[
        OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH, description="Category id.")]),
)
class CategoryViewSet(viewsets.ReadOnlyModelViewSet):
    permission_classes = [AllowAny]
    serializer_class = s.CategorySerializer
    pagination_class = None
    filter_backends = []
    lookup_value_regex = ID

    def get_queryset(self):
        return catalog_selectors.categories_with_counts()

    def get_object(self):
        try:
            return self.get_queryset().get(pk=self.kwargs["pk"])
        except Category.DoesNotExist:
            raise NotFound(f"No category with id {self.kwargs['pk']}.")


# --------------------------------------------------------------------------- products


_product_id = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH, description="Product id.")


@extend_schema_view(
    list=extend_schema(summary="List products", description=(
        "Active products (staff: all, see `active`), paginated, with filters, text search and ordering."),
        parameters=[OpenApiParameter(name, {"type": "number", "minimum": 0, "maximum": 99999999.99},
                                     description=f"Price {word} this (at most 2 decimal places).")
                    for name, word in (("min_price", "at least"), ("max_price", "at most"))]),
    retrieve=extend_schema(summary="A product", description=(
        "A product with its images (original and thumbnail URLs, processing status of each) and the time it "
        "became searchable. Inactive products are visible to staff only."), parameters=[_product_id]),
    create=extend_schema(
        summary="Create a product (staff)",
        description="JSON, form or multipart; with multipart, `images` may carry image files (all or nothing).",
        request={"multipart/form-data": s.ProductCreateSerializer,
                 "application/x-www-form-urlencoded": s.ProductUpdateSerializer,
                 "application/json": s.ProductUpdateSerializer},
        responses={201: s.ProductSerializer}),
    update=extend_schema(summary="Replace a product's fields (staff)", parameters=[_product_id],
                         request={"application/json": s.ProductUpdateSerializer},
                         responses={200: s.ProductSerializer}),
    partial_update=extend_schema(summary="Change some fields of a product (staff)", parameters=[_product_id],
                                 request={"application/json": s.ProductUpdateSerializer},
                                 responses={200: s.ProductSerializer}),
    destroy=extend_schema(summary="Delete a product and its images (staff)", parameters=[_product_id]),
)
class ProductViewSet(viewsets.ModelViewSet):
    permission_classes = [StaffWithPermissionsOrReadOnly]
    # What the admin asks for the same change: images are added and removed on the product's change
    # page (its inline). Data-dependent extras are checked in the action: images sent with a new
    # product need add_productimage; deleting a product with images needs delete_productimage.
    required_permissions = {
        "create": ["catalog.add_product"],
        "update": ["catalog.change_product"],
        "partial_update": ["catalog.change_product"],
        "destroy": ["catalog.delete_product"],
        "add_images": ["catalog.change_product", "catalog.add_productimage"],
        "remove_image": ["catalog.change_product", "catalog.delete_productimage"],
    }
    serializer_class = s.ProductSerializer
    parser_classes = [JSONParser, FormParser, MultiPartParser]
    filter_backends = [DjangoFilterBackend, TextSearch, Ordering]
    filterset_class = ProductFilter
    search_fields = ["title", "sku", "description"]
    ordering_fields = ["price", "title", "created_at", "id"]
    lookup_value_regex = ID

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Product.objects.none()
        return products_for_api(include_inactive=_sees_hidden(self.request))

    def initialize_request(self, request, *args, **kwargs):
        drf_request = super().initialize_request(request, *args, **kwargs)
        if self.action in ("update", "partial_update"):
            # Changes are JSON: a form body that does not parse would read as "no fields" and pass.
            drf_request.parsers = [JSONParser()]
        return drf_request

    def filter_queryset(self, queryset):
        # The list's filters are not conditions on fetching one product (detail, similar, images).
        return super().filter_queryset(queryset) if self.action == "list" else queryset

    def get_object(self):
        product = product_for_api(pk=self.kwargs["pk"], include_inactive=_sees_hidden(self.request))
        self.check_object_permissions(self.request, product)
        return product

    def _answer(self, product, code=status.HTTP_200_OK):
        fresh = self.get_queryset().get(pk=product.pk)
        data = s.ProductSerializer(fresh, context=self.get_serializer_context()).data
        return Response(data, status=code, headers={"Location": data["url"]} if code == 201 else None)

    def create(self, request, *args, **kwargs):
        serializer = s.ProductCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        if fields.get("images"):
            permissions_require(request, "catalog.add_productimage")
        accepted = normalise_uploads(fields.pop("images", []))
        product = product_create_with_images(accepted=accepted, **fields)
        return self._answer(product, status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        product = self.get_object()
        serializer = s.ProductUpdateSerializer(product, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        product_update(product=product, **serializer.validated_data)
        return self._answer(product)

    def destroy(self, request, *args, **kwargs):
        product = self.get_object()
        if product.images.exists():
            permissions_require(request, "catalog.delete_productimage")
        product_delete(product=product)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Add images to a product (staff)",
        description=("Multipart upload of one or more files in the field `images`. Every file is validated "
                     "first; one bad file rejects the request and nothing is stored. Accepted images start "
                     "`pending` and a worker makes them `ready` (features, thumbnails, embedding). A file "
                     "identical to an image the product already has returns that image."),
        parameters=[_product_id], request={"multipart/form-data": s.ImageUploadSerializer},
        responses={201: s.ProductImageSerializer(many=True)})
    @action(detail=True, methods=["post"], url_path="images", parser_classes=[MultiPartParser],
            pagination_class=None, filter_backends=[])
    def add_images(self, request, pk=None):
        product = self.get_object()
        serializer = s.ImageUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        accepted = normalise_uploads(serializer.validated_data["images"])
        images = images_attach(product=product, accepted=accepted)
        return Response(s.ProductImageSerializer(images, many=True, context=self.get_serializer_context()).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Remove an image from a product (staff)",
        description="Deletes the image, its thumbnails and its embeddings.",
        parameters=[_product_id, OpenApiParameter("image_id", OpenApiTypes.INT, OpenApiParameter.PATH,
                                                  description="Image id (see the product's images).")],
        request=None, responses={204: None})
    @action(detail=True, methods=["delete"], url_path=rf"images/(?P<image_id>{ID})",
            pagination_class=None, filter_backends=[])
    def remove_image(self, request, pk=None, image_id=None):
        product = self.get_object()
        image = product.images.filter(pk=image_id).first()
        if image is None:
            raise NotFound(f"Product {product.pk} has no image with id {image_id}.")
        product_image_delete(image=image)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- auth


class AuthTokenView(ObtainAuthToken):
    permission_classes = [AllowAny]
    throttle_classes = [AuthTokenThrottle]

    @extend_schema(
        summary="Get an API token",
        description=("Exchange a username and password for the user's token; send it as "
                     "`Authorization: Token <token>`. Throttled per client address."),
        request=AuthTokenSerializer, responses={200: s.AuthTokenResponseSerializer}, tags=["auth"])
    def post(self, request, *args, **kwargs):
        return super().post(request, *args, **kwargs)
