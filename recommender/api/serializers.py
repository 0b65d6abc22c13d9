"""Serializers of the recommender's API: similar items, search by photo, model versions and their
training progress (thin shapes around selector results and rows; no logic here)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from catalog import cropping
from catalog.api.serializers import CategoryRefSerializer, ProductSummarySerializer
from catalog.models import Category
from recommender.models import ModelVersion
from recommender.selectors.versions import version_progress


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


@extend_schema_field({"type": "string", "example": cropping.EXAMPLE})
class BoxField(serializers.Field):
    """The box of search by photo as "x,y,width,height" (catalog.cropping.box_parse): a SearchBox,
    or None when blank; catalog.cropping's messages and codes on a refusal."""

    default_error_messages = {"invalid": "The box must be a string: x,y,width,height."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            return cropping.box_parse(data)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages, code=exc.code)

    def to_representation(self, value):
        return None if value is None else ",".join(f"{v:g}" for v in value.as_dict().values())


class ImageSearchRequestSerializer(_ResultFilters):
    image = serializers.FileField(allow_empty_file=True, use_url=False, help_text=(
        f"The photo: JPEG, PNG, WebP, GIF, BMP or TIFF, at most {settings.MAX_UPLOAD_BYTES:,} bytes and "
        f"{settings.SEARCH_MAX_IMAGE_PIXELS:,} pixels (a JPEG counts as decoded at up to 1/8 of its size). "
        "It is not stored."))
    box = BoxField(required=False, allow_null=True, help_text=(
        "Search only the part of the photo inside this box: four numbers separated by commas, "
        "x,y,width,height, as fractions of the photo (0 to 1, the photo as shown, EXIF rotation applied): "
        f"the top-left corner, then the size; x + width and y + height at most 1, each side at least "
        f"{cropping.MIN_BOX_SIDE:g} of the photo's and {cropping.MIN_BOX_PIXELS} pixels. For example "
        f"{cropping.EXAMPLE}; 0.5,0,0.5,1 is the right half. Empty or absent: the whole photo. Refused with "
        "400 and a code: box_invalid, box_outside, box_empty, box_too_small."))


class ModelVersionRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "status", "kind", "backbone", "weights", "activated_at"]
        read_only_fields = fields


class SimilarItemSerializer(serializers.Serializer):
    distance = serializers.FloatField(allow_null=True, help_text=(
        "Euclidean distance between embeddings; smaller is more similar (null: a pinned product without an "
        "embedding yet)."))
    pinned = serializers.BooleanField(help_text="Put there by staff (panel rules), not by distance.")
    product = ProductSummarySerializer()


_source_help = ("Who answered: model (the active model version's embeddings), backbone (no version is "
                "active yet: standardised backbone features) or none (no features for the query yet).")


class PanelItemSerializer(SimilarItemSerializer):
    click_token = serializers.CharField(help_text=(
        "Report a shopper's click on this product with POST /api/v1/events/click/ {token}, or link to the "
        "product's page with ?via=<token>: it counts once, for this product, in the panel's results."))


class PanelTrackingSerializer(serializers.Serializer):
    experiment = serializers.IntegerField(allow_null=True, help_text="The A/B experiment the visitor is in, or null.")
    arm = serializers.ChoiceField(choices=["", "a", "b"], help_text=(
        "a: the active version answered; b: the experiment's candidate; empty outside an experiment."))
    rules = serializers.CharField(allow_blank=True, help_text="Fingerprint of the staff rules applied (empty: none).")


class SimilarResponseSerializer(serializers.Serializer):
    product = serializers.IntegerField(help_text="The product the results are similar to.")
    source = serializers.ChoiceField(choices=["model", "backbone", "none"], help_text=_source_help)
    model_version = ModelVersionRefSerializer(source="version", allow_null=True,
                                              help_text="The version that answered (null unless source is model).")
    results = PanelItemSerializer(source="items", many=True)
    tracking = PanelTrackingSerializer(help_text=(
        "What answered, as recorded with this view of the panel (send X-Visitor-Id: a random id of the shopper, "
        "to put them in an A/B experiment consistently; DNT: 1 records nothing)."))


class ClickSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200, help_text="A result's click_token.")
    product = serializers.IntegerField(help_text="The product clicked (the result's product id).")


class SearchBoxSerializer(serializers.Serializer):
    x = serializers.FloatField(help_text="Left edge, a fraction of the photo's width.")
    y = serializers.FloatField(help_text="Top edge, a fraction of the photo's height.")
    width = serializers.FloatField(help_text="A fraction of the photo's width.")
    height = serializers.FloatField(help_text="A fraction of the photo's height.")


class ImageSearchResponseSerializer(serializers.Serializer):
    box = SearchBoxSerializer(allow_null=True, help_text=(
        "The box searched inside, as fractions of the photo (a right or bottom edge a rounding error past the "
        "photo is clipped); null: the whole photo was searched."))
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
        ", ".join(ModelVersion.Phase.values[:-1]) + f" or {ModelVersion.Phase.values[-1]}."))
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
        # The one progress representation (selectors.versions.version_progress), as a datetime here.
        return super().to_representation({**version_progress(version), "heartbeat_at": version.heartbeat_at})


class ModelVersionSerializer(serializers.ModelSerializer):
    uses_random_weights = serializers.BooleanField(read_only=True, help_text=(
        "The backbone had random (not ImageNet) weights: similar items are much worse."))
    progress = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "status", "kind", "kind_reason", "backbone", "weights", "uses_random_weights", "input_size",
                  "classes", "trigger",
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
        bookkeeping = ("holdout_image_ids", "trained_image_ids")
        return {k: v for k, v in (version.metrics or {}).items() if k not in bookkeeping}


class StrictCharField(serializers.CharField):
    """A string, and only a string: DRF's CharField turns a JSON number into its text (a training
    whose reason was 3.4e+278 was accepted; the schema says string)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class TrainRequestSerializer(serializers.Serializer):
    reason = StrictCharField(required=False, allow_blank=True, max_length=150,
                                   help_text="Why (recorded as the version's trigger).")
    kind = serializers.ChoiceField(choices=ModelVersion.Kind.choices, required=False, help_text=(
        "head (frozen backbone, the original method) or backbone (trained end to end); by default "
        "RECOMMENDER_TRAINING decides (auto: see the dashboard for its reason)."))
