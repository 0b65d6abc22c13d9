"""One JSON shape for every error the API returns (set as REST_FRAMEWORK["EXCEPTION_HANDLER"]).

    {"status": 400, "code": "not_an_image",
     "detail": "image: The file is not an image (...)",
     "errors": [{"field": "image", "code": "not_an_image", "message": "The file is not an image (...)"}]}

``detail`` is a sentence a person can act on; ``errors`` lists every problem with the field it
belongs to (``null`` for the request as a whole) so that a client can place it next to an input.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from catalog.services import CatalogConflict

logger = logging.getLogger(__name__)


class Conflict(exceptions.APIException):
    """The request is valid but the resource's state forbids it (e.g. activating a failed version)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The resource is not in a state that allows this."
    default_code = "conflict"


class SearchUnavailable(exceptions.APIException):
    """The recommender could not answer (its model files cannot be loaded or run)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Search by photo is unavailable right now; please try again in a minute."
    default_code = "search_unavailable"


def _too_many_files_message() -> str:
    return (f"Too many files in one request; the limit is {settings.MAX_FILES_PER_REQUEST}. "
            "Send them in several requests.")


def _translate(exc):
    """Exceptions DRF does not know about, as the API exceptions they mean."""
    if isinstance(exc, Http404):
        return exceptions.NotFound(*(str(a) for a in exc.args[:1]))
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied(*(str(a) for a in exc.args[:1]))
    if isinstance(exc, CatalogConflict):
        # A write that lost a race with another one (the same SKU saved meanwhile): 409, not a 500.
        return Conflict(str(exc))
    if isinstance(exc, DjangoValidationError):
        # Raised by services (model full_clean, state checks): the client sent something invalid.
        return exceptions.ValidationError(as_serializer_error(exc))
    if isinstance(exc, TooManyFieldsSent):
        return exceptions.ValidationError(
            {"detail": exceptions.ErrorDetail("Too many form fields in one request.", code="too_many_fields")})
    if isinstance(exc, SuspiciousOperation) and type(exc).__name__ == "TooManyFilesSent":
        return exceptions.ValidationError(
            {"detail": exceptions.ErrorDetail(_too_many_files_message(), code="too_many_files")})
    if isinstance(exc, RequestDataTooBig):
        return exceptions.ValidationError(
            {"detail": exceptions.ErrorDetail("The request body is too large.", code="request_too_large")})
    return exc


def _flatten(detail, field=None) -> list[dict]:
    """DRF's nested {field: [ErrorDetail]} / [ErrorDetail] as a flat list of {field, code, message}."""
    if isinstance(detail, dict):
        items = []
        for key, value in detail.items():
            key = str(key)
            if key in ("non_field_errors", "__all__", "detail") and field is None:
                name = None
            else:
                name = key if field is None else f"{field}.{key}"
            items.extend(_flatten(value, name))
        return items
    if isinstance(detail, list):
        items = []
        for value in detail:
            items.extend(_flatten(value, field))
        return items
    return [{"field": field, "code": getattr(detail, "code", None) or "invalid", "message": str(detail)}]


def error_body(*, status_code: int, code: str, detail: str, errors=()) -> dict:
    return {"status": status_code, "code": code, "detail": detail, "errors": list(errors)}


def exception_handler(exc, context):
    exc = _translate(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        # An unexpected error: log it with its traceback, answer JSON (never an HTML page).
        logger.error("unhandled API error in %s", context.get("view").__class__.__name__, exc_info=exc)
        set_rollback()
        return JsonResponse(error_body(status_code=500, code="server_error",
                                       detail="Internal server error; it has been logged."), status=500)
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        codes = {e["code"] for e in errors}
        code = codes.pop() if len(codes) == 1 else "invalid"
        detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
        response.data = error_body(status_code=response.status_code, code=code,
                                   detail=detail or "Invalid request.", errors=errors)
    else:
        detail = getattr(exc, "detail", None) or str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", None) or "error"
        response.data = error_body(status_code=response.status_code, code=code, detail=str(detail))
    return response


@csrf_exempt  # a POST to a wrong URL is a 404, not a CSRF failure (HTML 403 from the middleware)
def not_found(request, *args, **kwargs):
    """JSON 404 for any path under /api/ that no endpoint matches."""
    return JsonResponse(error_body(
        status_code=404, code="not_found",
        detail=f"No API endpoint at {request.path}. The endpoints are listed at /api/schema/swagger/."),
        status=404)
