"""Serializers of the REST API: thin shapes around models and selector results (no logic here)."""

from __future__ import annotations

from django.conf import settings
from django.utils.functional import lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from catalog.models import Category, Product, ProductImage
from recommender.conf import config

# --------------------------------------------------------------------------- errors


class ErrorItemSerializer(serializers.Serializer):
    field = serializers.CharField(allow_null=True, help_text="The input the problem is about (dotted path "
                                  "for nested inputs, e.g. images.1), or null for the request as a whole.")
    code = serializers.CharField(help_text="Machine-readable reason, e.g. required, not_an_image, too_large, "
                                 "too_many_pixels, too_many_files, invalid.")
    message = serializers.CharField(help_text="What is wrong, in words a person can act on.")


class ErrorSerializer(serializers.Serializer):
    status = serializers.IntegerField(help_text="The HTTP status code, repeated.")
    code = serializers.CharField(help_text="Machine-readable reason: not_authenticated, permission_denied, "
                                 "not_found, throttled, conflict, parse_error, unsupported_media_type, or for a "
                                 "400 the code of its only problem (e.g. not_an_image), else invalid.")
    detail = serializers.CharField(help_text="One sentence saying what went wrong and what to do.")
    errors = ErrorItemSerializer(many=True, help_text="Every problem of a 400, with its field; empty otherwise.")


# --------------------------------------------------------------------------- catalog


def absolute_url(request, url: str) -> str | None:
    if not url:
        return None
    return request.build_absolute_uri(url) if request is not None else url


class CategoryRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Category
        fields = ["id", "name", "slug"]


class CategorySerializer(serializers.ModelSerializer):
    product_count = serializers.IntegerField(read_only=True, help_text="Active products in the category.")

    class Meta:
        model = Category
        fields = ["id", "name", "slug", "product_count"]


class ProductImageSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField(help_text="The normalised original (PNG or JPEG).")
    thumbnails = serializers.SerializerMethodField(
        help_text="WebP thumbnails by their longest side in pixels, e.g. {\"128\": url, \"256\": url}; "
                  "empty until the image has been processed.")
    # Lazy: a bad RECOMMENDER setting is then reported by its system check, not by an import error.
    status = serializers.ChoiceField(choices=ProductImage.Status.choices, read_only=True, help_text=lazy(lambda: (
        "Processing: pending (waiting for a worker) -> processing -> ready (features extracted, "
        "thumbnails made, embedded by the active model version), or failed (see last_error; it is retried "
        f"with backoff up to {config().max_attempts} attempts)."), str)())

    class Meta:
        model = ProductImage
        fields = ["id", "position", "url", "thumbnails", "width", "height", "original_name", "status",
                  "status_changed_at", "attempts", "last_error", "created_at"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, image) -> str:
        return absolute_url(self.context.get("request"), image.image.url if image.image else "")

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string", "format": "uri"}})
    def get_thumbnails(self, image) -> dict:
        request = self.context.get("request")
        return {str(size): absolute_url(request, settings.MEDIA_URL + name)
                for size, name in sorted((image.thumbnails or {}).items(), key=lambda kv: int(kv[0]))}


def _api_url(request, name, pk):
    from django.urls import reverse

    return absolute_url(request, reverse(name, kwargs={"pk": pk}))


class ProductSummarySerializer(serializers.ModelSerializer):
    """A product in a list of results (similar items, search by image)."""

    category = CategoryRefSerializer(read_only=True)
    thumbnail = serializers.SerializerMethodField(help_text="256 px thumbnail of the first image (the "
                                                  "original until it has been processed), or null.")
    url = serializers.SerializerMethodField(help_text="This product in the API.")

    class Meta:
        model = Product
        fields = ["id", "sku", "title", "category", "price", "in_stock", "thumbnail", "url"]
        read_only_fields = fields

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_thumbnail(self, product):
        images = list(product.images.all())  # prefetched by the selectors
        return absolute_url(self.context.get("request"), images[0].thumbnail_url(256)) if images else None

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, product) -> str:
        return _api_url(self.context.get("request"), "api:product-detail", product.pk)


class ProductSerializer(ProductSummarySerializer):
    images = ProductImageSerializer(many=True, read_only=True)
    searchable_since = serializers.DateTimeField(read_only=True, allow_null=True, help_text=(
        "Since when similar items and search by photo can find this product: the earliest time one of "
        "its images became ready with an embedding of the active model version, or that version's "
        "activation time if later (it was embedded while that version trained). Before any version is "
        "active (backbone features answer): the earliest time one of its images became ready. Null when "
        "it cannot be found yet. An image's time is when it last became ready (a retried image counts "
        "from its retry)."))
    similar_url = serializers.SerializerMethodField(help_text="Its similar products in the API.")

    class Meta(ProductSummarySerializer.Meta):
        fields = ["id", "sku", "title", "description", "category", "price", "is_active", "in_stock",
                  "thumbnail", "images", "searchable_since", "created_at", "updated_at", "url", "similar_url"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_similar_url(self, product) -> str:
        return _api_url(self.context.get("request"), "api:product-similar", product.pk)


_images_field_help = (f"Image files (JPEG, PNG, WebP, GIF, BMP or TIFF), at most {settings.MAX_FILES_PER_REQUEST} "
                      f"per request, each at most {settings.MAX_UPLOAD_BYTES:,} bytes and "
                      f"{settings.MAX_IMAGE_PIXELS:,} pixels. All or nothing: one bad file rejects the request.")


class ProductUpdateSerializer(serializers.ModelSerializer):
    category = serializers.PrimaryKeyRelatedField(queryset=Category.objects.all(), help_text="Category id.")
    # Explicit defaults: in a form or multipart body a missing boolean would otherwise read as false
    # (an unticked checkbox), and a product created by curl -F would be hidden from shoppers.
    is_active = serializers.BooleanField(default=True, help_text="Shown to shoppers.")
    in_stock = serializers.BooleanField(default=True)

    class Meta:
        model = Product
        fields = ["sku", "title", "description", "category", "price", "is_active", "in_stock"]


class ProductCreateSerializer(ProductUpdateSerializer):
    images = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True, use_url=False), required=False, write_only=True,
        max_length=settings.MAX_FILES_PER_REQUEST, help_text=_images_field_help + " Multipart only.")

    class Meta(ProductUpdateSerializer.Meta):
        fields = [*ProductUpdateSerializer.Meta.fields, "images"]


class ImageUploadSerializer(serializers.Serializer):
    images = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True, use_url=False), min_length=1,
        max_length=settings.MAX_FILES_PER_REQUEST, help_text=_images_field_help)


class AuthTokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send it as 'Authorization: Token <token>'.")
