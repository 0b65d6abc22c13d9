"""Views of the recommender's REST API: similar items, search by photo and the model versions
(list, train, activate, retire, progress). Each parses and checks its input, calls one selector or
service and shapes the answer; permissions are chosen per view. Model versions need the model
permissions the admin's dashboard asks for (view, and the custom train / activate ones).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from django.core.exceptions import ValidationError as DjangoValidationError
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError as DRFValidationError
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.api.exceptions import Conflict, SearchUnavailable
from catalog.api.permissions import IsStaffOrReadOnly, StaffWithPermissions, staff_holds
from catalog.api.selectors import product_for_api
from catalog.selectors import products_fingerprint
from catalog.api.serializers import ErrorSerializer
from catalog.api.throttling import EventClickThrottle, ImageSearchAnonThrottle, ImageSearchUserThrottle
from catalog.api.uploads import search_photo_one
from catalog.models import Category
from recommender.api import serializers as s
from recommender.models import ModelVersion
from recommender.selectors.answers import answer_get, cache_key, answer_set
from recommender.selectors.events import PanelOrigin, click_token, click_token_read, visitor_of
from recommender.selectors.experiments import arm_for
from recommender.selectors.similarity import search_by_image, similar_products
from recommender.selectors.versions import training_version
from recommender.services.training import model_version_start
from recommender.services.events import panel_event_record, panel_origin_record
from recommender.services.versions import model_version_activate, model_version_retire

logger = logging.getLogger(__name__)
ID = r"[0-9]+"

# --------------------------------------------------------------------------- similar items


_product_id = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH, description="Product id.")


class SimilarProductsView(APIView):
    """/api/v1/products/{id}/similar/: beside the catalog's product routes, answered by the recommender.
    Permissions as the product's own routes (reads public, anything else staff)."""

    permission_classes = [IsStaffOrReadOnly]

    @extend_schema(
        summary="Similar products",
        description=("The recommender's nearest other active products (one entry per product), with their "
                     "distances and the model version that answered. Before any version is active, standardised "
                     "backbone features answer (source backbone). Cached for a few minutes per query."),
        parameters=[_product_id, s.SimilarQuerySerializer], responses={200: s.SimilarResponseSerializer})
    def get(self, request, pk, format=None):
        staff = staff_holds(request, "catalog.view_product")  # hidden products, as the product routes
        # Anonymous answers are the same for everyone asking the same thing: cached whole and served
        # while still true (recommender.selectors.answers); the absolute URLs in the answer depend on
        # the scheme and host asked for. 2.4 ms instead of 10.4 ms for one client, 550-790 instead
        # of 136-159 req/s at 32 (2 cores, bench/web_load.py).
        visitor = None if staff else visitor_of(request, api=True)  # staff's reads are not shoppers'
        arm = arm_for(visitor=visitor)
        key = None if staff else cache_key("similar-api", request.scheme, request.get_host(), int(pk),
                                            sorted(request.query_params.lists()), arm.experiment_id, arm.name)
        if key and (data := answer_get(key)) is not None:
            _panel_view_record(data, visitor=visitor)
            return Response(data)
        fingerprint = products_fingerprint([pk]) if key else None  # before the product is read
        product = product_for_api(pk=pk, include_inactive=staff)
        query = s.SimilarQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        result = similar_products(product=product, version=arm.version, **query.validated_data)
        data = s.SimilarResponseSerializer(_panel_answer(product, result, arm),
                                           context={"request": request, "view": self}).data
        if key and result.source == "model" and result.fingerprint is not None:
            active = arm.experiment.control if arm.version is not None else result.version
            answer_set(key, data, version=active, ids=[[int(pk)], [item.product.pk for item in result.items]],
                       fingerprints=[fingerprint, result.fingerprint])
        _panel_view_record(data, visitor=visitor)
        return Response(data)


def _panel_answer(product, result, arm) -> dict:
    origin = PanelOrigin(product.pk, result.version.pk if result.version else None, arm.experiment_id, arm.name,
                         result.rules)
    items = [SimpleNamespace(distance=item.distance, pinned=item.pinned, product=item.product,
                             click_token=click_token(origin, target_id=item.product.pk, position=n))
             for n, item in enumerate(result.items, start=1)]
    return {"product": product.pk, "source": result.source, "version": result.version, "items": items,
            "tracking": {"experiment": arm.experiment_id, "arm": arm.name, "rules": result.rules}}


def _panel_view_record(data, *, visitor) -> None:
    """One view of the panel, from the answer itself (fresh or cached): one RPUSH."""
    if visitor is None or not data["results"]:
        return
    tracking = data["tracking"]
    panel_event_record(kind="view", channel="api", visitor=visitor, product_id=data["product"],
                       version_id=(data["model_version"] or {}).get("id"), experiment_id=tracking["experiment"],
                       arm=tracking["arm"], rules=tracking["rules"], shown=[r["product"]["id"] for r in data["results"]])


class PanelClickView(APIView):
    """/api/v1/events/click/: a shopper clicked a result of a similar-items answer (its click_token).
    Public, like the answer; throttled by address (THROTTLE_EVENT_CLICK); nothing recorded under DNT."""

    permission_classes = [AllowAny]
    parser_classes = [JSONParser]
    throttle_classes = [EventClickThrottle]

    @extend_schema(summary="Record a click on a similar item", request=s.ClickSerializer,
                   responses={204: None, 400: ErrorSerializer}, tags=["events"])
    def post(self, request):
        body = s.ClickSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        read = click_token_read(body.validated_data["token"], target_id=body.validated_data["product"])
        if read is None:
            raise DRFValidationError({"token": ["Not a click token of this product."]}, code="invalid_token")
        origin, position = read
        visitor = visitor_of(request, api=True)
        panel_origin_record(origin, kind="click", channel="api", visitor=visitor,
                            target_id=body.validated_data["product"], position=position,
                            once=f"click:{visitor}:{body.validated_data['token']}" if visitor else None)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- search by image


class ImageSearchView(APIView):
    permission_classes = [AllowAny]
    parser_classes = [MultiPartParser]
    throttle_classes = [ImageSearchAnonThrottle, ImageSearchUserThrottle]

    @extend_schema(
        summary="Search by photo",
        description=("Upload a photo: the active model predicts its category (with each category's "
                     "probability) and the nearest products are returned. With `box` (x,y,width,height as "
                     "fractions of the photo), only the part of the photo inside it is searched, and the answer "
                     "echoes the box. Throttled per client "
                     "(REST_FRAMEWORK throttle rates image_search_anon / image_search_user): 429 with "
                     "Retry-After. The photo is not stored."),
        request={"multipart/form-data": s.ImageSearchRequestSerializer},
        responses={200: s.ImageSearchResponseSerializer,
                   503: OpenApiResponse(ErrorSerializer, description="The model cannot be loaded or run.")},
        tags=["search"])
    def post(self, request):
        serializer = s.ImageSearchRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        params = dict(serializer.validated_data)
        box = params.pop("box", None)
        # Decoded reduced toward the backbone's input within search by photo's own pixel budget
        # (SEARCH_MAX_IMAGE_PIXELS), never re-encoded: see catalog.validators.search_photo_open; with
        # a box, the box's part of it (catalog.cropping: the same crop as the page's).
        picture = search_photo_one(params.pop("image"), field="image", box=box)
        try:
            result = search_by_image(picture=picture, **params)
        except Exception as exc:
            # A model whose files cannot be loaded or run: 503, not a bare 500.
            logger.exception("search by photo failed")
            raise SearchUnavailable() from exc
        category = Category.objects.filter(name=result.predicted).first() if result.predicted else None
        return Response(s.ImageSearchResponseSerializer(
            {"box": box, "predicted": result.predicted, "predicted_category": category,
             "probabilities": result.probabilities, "source": result.source, "version": result.version,
             "items": result.items},
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
    permission_classes = [StaffWithPermissions]
    # ModelVersion.Meta.permissions: starting a training and changing which version serves are
    # granted apart from change_modelversion (activate covers retire); recommender/admin.py agrees.
    required_permissions = {
        "list": ["recommender.view_modelversion"],
        "retrieve": ["recommender.view_modelversion"],
        "progress": ["recommender.view_modelversion"],
        "train": ["recommender.train_modelversion"],
        "activate": ["recommender.activate_modelversion"],
        "retire": ["recommender.activate_modelversion"],
    }
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
                     "ready image (or, for the backbone kind, their pixels: the backbone is trained too and the "
                     "catalog re-extracted with it), a new head, embeddings of the catalog, evaluation, and activation if it "
                     "passes the quality gate. Only one training runs at a time: if one is running, that "
                     "version is returned (200) instead of a new one (202). Follow it with .../progress/."),
        request=s.TrainRequestSerializer,
        responses={202: OpenApiResponse(s.ModelVersionSerializer, description="A new version, queued for training."),
                   200: OpenApiResponse(s.ModelVersionSerializer, description="The training already running.")})
    @action(detail=False, methods=["post"], filter_backends=[], pagination_class=None, parser_classes=[JSONParser])
    def train(self, request):
        serializer = s.TrainRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        running = training_version()
        reason = serializer.validated_data.get("reason") or "manual"
        version = running or model_version_start(
            trigger=f"api ({request.user.get_username()}): {reason}", kind=serializer.validated_data.get("kind"))
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
                   409: OpenApiResponse(ErrorSerializer, description="The version cannot be activated.")})
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def activate(self, request, pk=None):
        return self._transition(model_version_activate)

    @extend_schema(summary="Retire a version (staff)", parameters=[_version_id], request=None, description=(
        "Stop serving an active (or ready) version. With no active version, similar items fall back to "
        "backbone features until another version is activated."),
        responses={200: s.ModelVersionDetailSerializer,
                   409: OpenApiResponse(ErrorSerializer, description="The version cannot be retired.")})
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def retire(self, request, pk=None):
        return self._transition(model_version_retire)

    @extend_schema(summary="Progress of a training (staff)", parameters=[_version_id],
                   description="Phase, epoch, accuracy, images embedded and ETA; cheap enough to poll.",
                   responses={200: s.TrainingProgressSerializer})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def progress(self, request, pk=None):
        return Response(s.TrainingProgressSerializer(self.get_object()).data)
