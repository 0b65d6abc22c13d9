"""Views of the REST API: parse and check input, call one service or selector, shape the answer.

Permissions are chosen per view; the project default (IsAdminUser) closes anything that forgets.
"""

from __future__ import annotations

import io
import logging
import time
import uuid

from django.core.cache import cache
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog import selectors as catalog_selectors
from catalog.api import serializers as s
from catalog.api.exceptions import Conflict, SearchUnavailable
from catalog.api.filters import Ordering, ProductFilter, TextSearch
from catalog.api.permissions import IsStaff, IsStaffOrReadOnly
from catalog.api.selectors import products_for_api
from catalog.api.throttling import AuthTokenThrottle, ImageSearchAnonThrottle, ImageSearchUserThrottle
from catalog.api.uploads import images_attach, normalise_one, normalise_uploads, product_create_with_images
from catalog.models import Category, Product
from catalog.services import product_delete, product_image_delete, product_update
from recommender import selectors as recommender_selectors

logger = logging.getLogger(__name__)
from recommender import services as recommender_services
from recommender.models import ModelVersion

ID = r"[0-9]+"


def _is_staff(request) -> bool:
    return IsStaff().has_permission(request, None)


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
    permission_classes = [IsStaffOrReadOnly]
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
        return products_for_api(include_inactive=_is_staff(self.request))

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
        pk = self.kwargs["pk"]
        try:
            product = self.get_queryset().get(pk=pk)
        except Product.DoesNotExist:
            raise NotFound(f"No product with id {pk}." if _is_staff(self.request)
                           else f"No active product with id {pk}.")
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
        product_delete(product=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Similar products",
        description=("The recommender's nearest other active products (one entry per product), with their "
                     "distances and the model version that answered. Before any version is active, standardised "
                     "backbone features answer (source backbone). Cached for a few minutes per query."),
        parameters=[_product_id, s.SimilarQuerySerializer], responses={200: s.SimilarResponseSerializer})
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def similar(self, request, pk=None):
        product = self.get_object()
        query = s.SimilarQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        result = recommender_selectors.similar_products(product=product, **query.validated_data)
        return Response(s.SimilarResponseSerializer(
            {"product": product.pk, "source": result.source, "version": result.version, "items": result.items},
            context=self.get_serializer_context()).data)

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


# --------------------------------------------------------------------------- search by image


class ImageSearchView(APIView):
    permission_classes = [AllowAny]
    parser_classes = [MultiPartParser]
    throttle_classes = [ImageSearchAnonThrottle, ImageSearchUserThrottle]

    @extend_schema(
        summary="Search by photo",
        description=("Upload a photo: the active model predicts its category (with each category's "
                     "probability) and the nearest products are returned. Throttled per client "
                     "(REST_FRAMEWORK throttle rates image_search_anon / image_search_user): 429 with "
                     "Retry-After. The photo is not stored."),
        request={"multipart/form-data": s.ImageSearchRequestSerializer},
        responses={200: s.ImageSearchResponseSerializer,
                   503: OpenApiResponse(s.ErrorSerializer, description="The model cannot be loaded or run.")},
        tags=["search"])
    def post(self, request):
        serializer = s.ImageSearchRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        params = dict(serializer.validated_data)
        normalised = normalise_one(params.pop("image"), field="image")
        from PIL import Image

        picture = Image.open(io.BytesIO(normalised.content))
        picture.load()
        try:
            result = recommender_selectors.search_by_image(picture=picture, **params)
        except Exception as exc:
            # A model whose files cannot be loaded or run: 503, not a bare 500.
            logger.exception("search by photo failed")
            raise SearchUnavailable() from exc
        category = Category.objects.filter(name=result.predicted).first() if result.predicted else None
        return Response(s.ImageSearchResponseSerializer(
            {"predicted": result.predicted, "predicted_category": category, "probabilities": result.probabilities,
             "source": result.source, "version": result.version, "items": result.items},
            context={"request": request}).data)


# --------------------------------------------------------------------------- model versions


_version_id = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH, description="Model version id.")


@extend_schema_view(
    list=extend_schema(summary="List model versions (staff)", description="Newest first."),
    retrieve=extend_schema(summary="A model version (staff)", parameters=[_version_id], description=(
        "Status, backbone identity and weights, metrics on held-out images, training history and, while it "
        "trains, its progress.")),
)
class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    permission_classes = [IsStaff]
    filter_backends = [DjangoFilterBackend]
    filterset_fields = ["status"]
    lookup_value_regex = ID
    queryset = ModelVersion.objects.all()

    def get_serializer_class(self):
        return s.ModelVersionDetailSerializer if self.action == "retrieve" else s.ModelVersionSerializer

    def get_queryset(self):
        qs = ModelVersion.objects.order_by("-id")
        return qs.defer("history", "metrics") if self.action == "list" else qs

    def get_object(self):
        try:
            return self.get_queryset().get(pk=self.kwargs["pk"])
        except ModelVersion.DoesNotExist:
            raise NotFound(f"No model version with id {self.kwargs['pk']}.")

    @extend_schema(
        summary="Start a retraining (staff)",
        description=("Creates a version in `training` and queues its training on a worker: features of every "
                     "ready image, a new head, embeddings of the catalog, evaluation, and activation if it "
                     "passes the quality gate. Only one training runs at a time: if one is running, that "
                     "version is returned (200) instead of a new one (202). Follow it with .../progress/."),
        request=s.TrainRequestSerializer,
        responses={202: OpenApiResponse(s.ModelVersionSerializer, description="A new version, queued for training."),
                   200: OpenApiResponse(s.ModelVersionSerializer, description="The training already running.")})
    @action(detail=False, methods=["post"], filter_backends=[], pagination_class=None, parser_classes=[JSONParser])
    def train(self, request):
        serializer = s.TrainRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        running = ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING).first()
        reason = serializer.validated_data.get("reason") or "manual"
        version = running or recommender_services.model_version_start(
            trigger=f"api ({request.user.get_username()}): {reason}")
        code = status.HTTP_200_OK if running else status.HTTP_202_ACCEPTED
        return Response(s.ModelVersionSerializer(version).data, status=code)

    def _transition(self, service):
        version = self.get_object()
        try:
            version = service(version=version)
        except DjangoValidationError as exc:
            raise Conflict(" ".join(exc.messages))
        return Response(s.ModelVersionDetailSerializer(version).data)

    @extend_schema(summary="Activate a version (staff)", parameters=[_version_id], request=None, description=(
        "Serve this version from now on (a ready or retired one); the active one is retired. Images it has not "
        "embedded yet are embedded first."),
        responses={200: s.ModelVersionDetailSerializer,
                   409: OpenApiResponse(s.ErrorSerializer, description="The version cannot be activated.")})
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def activate(self, request, pk=None):
        return self._transition(recommender_services.model_version_activate)

    @extend_schema(summary="Retire a version (staff)", parameters=[_version_id], request=None, description=(
        "Stop serving an active (or ready) version. With no active version, similar items fall back to "
        "backbone features until another version is activated."),
        responses={200: s.ModelVersionDetailSerializer,
                   409: OpenApiResponse(s.ErrorSerializer, description="The version cannot be retired.")})
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def retire(self, request, pk=None):
        return self._transition(recommender_services.model_version_retire)

    @extend_schema(summary="Progress of a training (staff)", parameters=[_version_id],
                   description="Phase, epoch, accuracy, images embedded and ETA; cheap enough to poll.",
                   responses={200: s.TrainingProgressSerializer})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def progress(self, request, pk=None):
        return Response(s.TrainingProgressSerializer(self.get_object()).data)


# --------------------------------------------------------------------------- health


WORKER_CACHE_SECONDS = 5


def _check(probe) -> dict:
    started = time.perf_counter()
    try:
        ok, detail = probe()
    except Exception as exc:  # every failure is a finding, not an error of this endpoint
        ok, detail = False, f"{type(exc).__name__}: {exc}"[:300]
    return {"ok": ok, "detail": detail, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return True, "SELECT 1 answered"


def _redis():
    key, value = f"health:{uuid.uuid4().hex}", "pong"
    cache.set(key, value, 10)
    found = cache.get(key)
    cache.delete(key)
    return found == value, "cache write and read back" if found == value else "cache did not return the value"


def _worker():
    # A ping waits its whole timeout for replies; reuse a recent answer so that frequent health checks
    # (load balancers) stay fast.
    count = cache.get("health:workers")
    if count is None:
        from config.celery import app

        replies = app.control.inspect(timeout=1.0).ping() or {}
        count = len(replies)
        cache.set("health:workers", count, WORKER_CACHE_SECONDS)
    return count > 0, f"{count} worker(s) answered a ping" if count else "no Celery worker answered a ping"


class HealthView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Health",
        description=("Database, Redis, worker and active-model status. 200 while the database answers (the "
                     "site can serve reads), 503 when it does not. `status` is ok when everything works and "
                     "degraded when Redis, the worker or an active model is missing. Worker pings are reused "
                     f"for {WORKER_CACHE_SECONDS} s."),
        responses={
            200: OpenApiResponse(s.HealthSerializer, description="The database answers (status ok or degraded)."),
            503: OpenApiResponse(s.HealthSerializer, description="The database does not answer (status down)."),
        },
        tags=["health"])
    def get(self, request):
        checks = {"database": _check(_database), "redis": _check(_redis)}
        if checks["redis"]["ok"]:
            checks["worker"] = _check(_worker)
        else:
            checks["worker"] = {"ok": False, "detail": "not checked: Redis (the broker) is unreachable",
                                "latency_ms": None}
        version, ingestion = None, None
        if checks["database"]["ok"]:
            version = recommender_selectors.active_version()
            checks["model"] = _check(lambda: (True, f"v{version.pk} ({version.backbone}) is active") if version
                                     else (False, "no active model version: similar items use backbone features "
                                                  "until a version is trained"))
            ingestion = recommender_services.ingestion_backlog()
        else:
            checks["model"] = {"ok": False, "detail": "not checked: the database is unreachable", "latency_ms": None}
        database_ok = checks["database"]["ok"]
        overall = "down" if not database_ok else ("ok" if all(c["ok"] for c in checks.values()) else "degraded")
        body = {"status": overall, "checks": checks,
                "active_model_version": s.ModelVersionRefSerializer(version).data if version else None,
                "ingestion": ingestion}
        response = Response(body, status=status.HTTP_200_OK if database_ok else status.HTTP_503_SERVICE_UNAVAILABLE)
        response["Cache-Control"] = "no-store"
        return response


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
