"""Staff-only JSON for the live progress bars of the admin (polled by catalog/admin-progress.js),
and the panel's beacon (a 1x1 image: no script, nothing from a third party)."""

import base64
import secrets
from functools import wraps

from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from recommender import presentation
from recommender.selectors.ingestion import ingestion_status
from catalog.api.throttling import PanelViewThrottle
from recommender.selectors.events import VISITOR_COOKIE, VISITOR_COOKIE_AGE, view_token_read, visitor_of
from recommender.selectors.versions import training_status
from recommender.services.events import panel_origin_record


def staff_json(permission):
    """403 as JSON for anyone but active staff holding ``permission`` (the API's rule: being staff is
    not enough): a poller must not follow a redirect to a login page."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            user = request.user
            if not (user.is_authenticated and user.is_active and user.is_staff):
                return JsonResponse({"detail": "Staff only."}, status=403)
            if not user.has_perm(permission):
                return JsonResponse({"detail": f"You need the permission {permission!r}."}, status=403)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


@require_GET
@never_cache
@staff_json("recommender.view_modelversion")
def training_progress(request):
    status = training_status()
    return JsonResponse({**status, "display": presentation.training_display(status)})


@require_GET
@never_cache
@staff_json("catalog.view_productimage")
def ingestion_progress(request):
    status = ingestion_status()
    return JsonResponse({**status, "display": presentation.ingestion_display(status)})


_PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@require_GET
@never_cache
def panel_seen(request):
    """The panel's beacon (its <img>, loaded lazily: when the panel comes near the screen): records
    one view of the panel its token names (once per visitor and token in ONCE_SECONDS; at most
    THROTTLE_PANEL_VIEW per address), and gives the browser its random visitor id when it has
    none. A browser that asked not to be tracked, or staff, get the image and nothing else."""
    response = HttpResponse(_PIXEL, content_type="image/gif")
    visitor = visitor_of(request)
    if visitor is None:
        return response
    if not visitor:
        visitor = secrets.token_hex(16)
        response.set_cookie(VISITOR_COOKIE, visitor, max_age=VISITOR_COOKIE_AGE, httponly=True, samesite="Lax",
                            secure=request.is_secure())
    token = request.GET.get("t", "")
    read = view_token_read(token)
    if read is not None and PanelViewThrottle().allow_request(request, None):
        origin, shown = read
        panel_origin_record(origin, kind="view", channel="page", visitor=visitor, shown=shown,
                            once=f"view:{visitor}:{token}")
    return response
