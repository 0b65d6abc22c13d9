"""Serializers of the REST API: thin shapes around models and selector results (no logic here)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from catalog.models import Category, Product, ProductImage
from recommender.models import ModelVersion

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


def _absolute(request, url: str) -> str | None:
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
    status = serializers.ChoiceField(choices=ProductImage.Status.choices, read_only=True, help_text=(
        "Processing: pending (waiting for a worker) -> processing -> ready (features extracted, "
        "thumbnails made, embedded by the active model version), or failed (see last_error; it is retried "
        f"with backoff up to {settings.RECOMMENDER['MAX_ATTEMPTS']} attempts)."))

    class Meta:
        model = ProductImage
        fields = ["id", "position", "url", "thumbnails", "width", "height", "original_name", "status",
                  "status_changed_at", "attempts", "last_error", "created_at"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, image) -> str:
        return _absolute(self.context.get("request"), image.image.url if image.image else "")

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string", "format": "uri"}})
    def get_thumbnails(self, image) -> dict:
        request = self.context.get("request")
        return {str(size): _absolute(request, settings.MEDIA_URL + name)
                for size, name in sorted((image.thumbnails or {}).items(), key=lambda kv: int(kv[0]))}


def _api_url(request, name, pk):
    from django.urls import reverse

    return _absolute(request, reverse(name, kwargs={"pk": pk}))


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
        return _absolute(self.context.get("request"), images[0].thumbnail_url(256)) if images else None

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


# --------------------------------------------------------------------------- recommender


class _ResultFilters(serializers.Serializer):
    """Filters shared by similar items and search by image."""

    k = serializers.IntegerField(min_value=1, max_value=50, default=6, help_text="How many products (1-50).")
    same_category = serializers.BooleanField(default=False, help_text=(
        "Only products the active model predicts to be in the same category (before any model is trained: "
        "the catalog category of the product; for search by image without a model, ignored)."))
    category = serializers.PrimaryKeyRelatedField(queryset=Category.objects.all(), required=False,
                                                  help_text="Only products of this catalog category (id).")
    min_price = serializers.DecimalField(max_digits=10, decimal_places=2, min_value=0, required=False,
                                         coerce_to_string=False, help_text="Only products at this price or above.")
    max_price = serializers.DecimalField(max_digits=10, decimal_places=2, min_value=0, required=False,
                                         coerce_to_string=False, help_text="Only products at this price or below.")

    def validate(self, data):
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            raise serializers.ValidationError(
                {"min_price": f"min_price ({low}) is above max_price ({high})."}, code="invalid_range")
        return data


class SimilarQuerySerializer(_ResultFilters):
    pass


class ImageSearchRequestSerializer(_ResultFilters):
    image = serializers.FileField(allow_empty_file=True, use_url=False, help_text=(
        f"The photo: JPEG, PNG, WebP, GIF, BMP or TIFF, at most {settings.MAX_UPLOAD_BYTES:,} bytes and "
        f"{settings.MAX_IMAGE_PIXELS:,} pixels. It is not stored."))


class ModelVersionRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "status", "backbone", "weights", "activated_at"]
        read_only_fields = fields


class SimilarItemSerializer(serializers.Serializer):
    distance = serializers.FloatField(help_text="Euclidean distance between embeddings; smaller is more similar.")
    product = ProductSummarySerializer()


_source_help = ("Who answered: model (the active model version's embeddings), backbone (no version is "
                "active yet: standardised backbone features) or none (no features for the query yet).")


class SimilarResponseSerializer(serializers.Serializer):
    product = serializers.IntegerField(help_text="The product the results are similar to.")
    source = serializers.ChoiceField(choices=["model", "backbone", "none"], help_text=_source_help)
    model_version = ModelVersionRefSerializer(source="version", allow_null=True,
                                              help_text="The version that answered (null unless source is model).")
    results = SimilarItemSerializer(source="items", many=True)


class ImageSearchResponseSerializer(serializers.Serializer):
    predicted = serializers.CharField(allow_null=True, help_text="Predicted category name (null without a model).")
    predicted_category = CategoryRefSerializer(allow_null=True, help_text="The catalog category of that name.")
    probabilities = serializers.DictField(child=serializers.FloatField(), help_text=(
        "Probability of each category, most likely first (empty without a model)."))
    source = serializers.ChoiceField(choices=["model", "backbone", "none"], help_text=_source_help)
    model_version = ModelVersionRefSerializer(source="version", allow_null=True)
    results = SimilarItemSerializer(source="items", many=True)


class TrainingProgressSerializer(serializers.Serializer):
    """What a running training reports (``ModelVersion.progress``), with its status."""

    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=ModelVersion.Status.choices)
    running = serializers.BooleanField(help_text="True while the version is training.")
    phase = serializers.CharField(allow_blank=True, help_text=(
        "queued, loading features, training, saving, embedding, evaluating, activating, done or failed."))
    epoch = serializers.IntegerField(allow_null=True, help_text="Epochs finished.")
    epochs = serializers.IntegerField(allow_null=True)
    accuracy = serializers.FloatField(allow_null=True, help_text="Training accuracy of the last epoch.")
    val_accuracy = serializers.FloatField(allow_null=True, help_text="Validation accuracy of the last epoch.")
    loss = serializers.FloatField(allow_null=True)
    images_embedded = serializers.IntegerField(allow_null=True, help_text="Embedding phase: images done.")
    images_total = serializers.IntegerField(allow_null=True)
    eta_seconds = serializers.FloatField(allow_null=True, help_text="Estimated seconds left in the current phase.")
    heartbeat_at = serializers.DateTimeField(allow_null=True, help_text="Last sign of life of the training.")

    def to_representation(self, version):
        progress = version.progress or {}
        running = version.status == ModelVersion.Status.TRAINING
        return super().to_representation({
            "id": version.pk, "status": version.status, "running": running,
            "phase": progress.get("phase") or ("queued" if running else ""),
            **{key: progress.get(key) for key in ("epoch", "epochs", "accuracy", "val_accuracy", "loss",
                                                  "images_embedded", "images_total")},
            "eta_seconds": progress.get("eta_seconds") if running else None,
            "heartbeat_at": version.heartbeat_at,
        })


class ModelVersionSerializer(serializers.ModelSerializer):
    uses_random_weights = serializers.BooleanField(read_only=True, help_text=(
        "The backbone had random (not ImageNet) weights: similar items are much worse."))
    progress = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "status", "backbone", "weights", "uses_random_weights", "input_size", "classes", "trigger",
                  "n_images", "n_train", "n_val", "val_accuracy", "error", "progress", "created_at", "started_at",
                  "finished_at", "activated_at"]
        read_only_fields = fields

    @extend_schema_field(TrainingProgressSerializer)
    def get_progress(self, version):
        return TrainingProgressSerializer(version).data


class ModelVersionDetailSerializer(ModelVersionSerializer):
    metrics = serializers.SerializerMethodField(help_text=(
        "Held-out evaluation: accuracy, per_class {category: {precision, recall, support}}, confusion_matrix, "
        "classes, precision_at_1, precision_at_6, map_at_6, hnsw_recall_at_6, training_seconds, evaluated_at; "
        "embeddings_pruned {at, rows} when its embeddings were deleted after retirement (activating it again "
        "re-embeds the catalog)."))
    history = serializers.JSONField(read_only=True, help_text=(
        "Per-epoch training history: {loss, accuracy, val_loss, val_accuracy} lists."))
    hyperparameters = serializers.JSONField(read_only=True)

    class Meta(ModelVersionSerializer.Meta):
        fields = [*ModelVersionSerializer.Meta.fields, "hyperparameters", "history", "metrics"]
        read_only_fields = fields

    @extend_schema_field({"type": "object", "additionalProperties": True})
    def get_metrics(self, version):
        # The held-out image ids are bookkeeping (thousands of numbers), not a metric.
        return {k: v for k, v in (version.metrics or {}).items() if k != "holdout_image_ids"}


class TrainRequestSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=150,
                                   help_text="Why (recorded as the version's trigger).")


# --------------------------------------------------------------------------- health


class HealthCheckSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    detail = serializers.CharField(help_text="What was found, or the error.")
    latency_ms = serializers.FloatField(allow_null=True)


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded", "down"], help_text=(
        "ok: everything works; degraded: the database works (pages and reads are served) but Redis, the "
        "worker or the model is missing; down: the database is unreachable (HTTP 503)."))
    checks = serializers.DictField(child=HealthCheckSerializer(), help_text=(
        "database, redis, worker and model, each {ok, detail, latency_ms}."))
    active_model_version = ModelVersionRefSerializer(allow_null=True)
    ingestion = serializers.DictField(child=serializers.IntegerField(), allow_null=True, help_text=(
        "Images by processing status: pending, processing, ready, failed (null if the database is down)."))


class AuthTokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send it as 'Authorization: Token <token>'.")
