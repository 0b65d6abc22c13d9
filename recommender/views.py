"""Staff-only JSON for the live progress bars of the admin (polled by catalog/admin-progress.js)."""

from functools import wraps

from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from recommender import presentation
from recommender.selectors.ingestion import ingestion_status
from recommender.selectors.versions import training_status


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
