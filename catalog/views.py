import base64
import io
import logging
import math

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, render

from catalog import selectors
from catalog.forms import PhotoSearchForm, ProductFilterForm
from catalog.cropping import MIN_BOX_SIDE
from catalog.models import Category, Product
from catalog.validators import SEARCH_PREVIEW_SIZE

PAGE_SIZE = 24
logger = logging.getLogger(__name__)


def _filtered_page(request, *, category=None):
    form = ProductFilterForm(request.GET or None)
    filters = form.applicable_filters()
    products = selectors.product_list(
        category=category, q=filters.get("q"), min_price=filters.get("min_price"),
        max_price=filters.get("max_price"), in_stock=filters.get("in_stock"), ordering=filters.get("sort") or None)
    page = Paginator(products, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return form, page, query.urlencode()


def home(request):
    categories = selectors.categories_with_counts()
    latest = selectors.product_list(ordering="-created_at")[:12]
    return render(request, "catalog/home.html", {"categories": categories, "latest": latest})


def category_detail(request, slug):
    category = get_object_or_404(Category, slug=slug)
    form, page, query = _filtered_page(request, category=category)
    return render(request, "catalog/category.html",
                  {"category": category, "form": form, "page": page, "query": query,
                   "categories": selectors.categories_with_counts()})


def search(request):
    form, page, query = _filtered_page(request)
    return render(request, "catalog/search.html", {"form": form, "page": page, "query": query})


# --------------------------------------------------------------------------- product page
# The product page of a shopper without a session is the same for all of them: it is cached whole
# and served again only while it is still true (recommender.selectors.answers): rendering it cost
# 7.3 ms of CPU on 2 cores (five queries, the panel's products read, the template), serving it from
# the cache 0.9 ms (two queries).
PAGE_CACHE_PREFIX = "product-page"


def _shared_page(request) -> bool:
    """Nothing personal on the page: no session (so no signed-in user and no stored messages), no
    messages cookie, no query string but the panel's toggle and the link parameter of a click
    (recorded, then the page is the one everyone in the same experiment arm sees)."""
    from django.contrib.messages.storage.cookie import CookieStorage

    return (request.method in ("GET", "HEAD") and not request.COOKIES.get(settings.SESSION_COOKIE_NAME)
            and not request.COOKIES.get(CookieStorage.cookie_name) and set(request.GET) <= {"same", "via"})


def _cache_page(request, response, *, key, pk, fingerprint, answers, active):
    """Keep a rendered page whose every part can be checked: fingerprints read before their products.
    ``active``: the version serving the site (the candidate's arm stores it too: the page is true
    while it serves and the experiment runs, which its key says)."""
    from recommender.selectors.answers import answer_set

    if (response.status_code != 200 or response.cookies or request.META.get("CSRF_COOKIE_NEEDS_UPDATE")
            or any(a.source != "model" or a.fingerprint is None for a in answers)):
        return  # cold start (answers follow the features' count), or something personal was set
    answer_set(key, response.content, version=active,
               ids=[[pk]] + [[item.product.pk for item in a.items] for a in answers],
               fingerprints=[fingerprint] + [a.fingerprint for a in answers])


def _click_record(request, *, pk, visitor):
    """A shopper arrived from a panel's link (``?via=``): one click, on the product it was signed for,
    from a browser with a visitor id (given by the panel's beacon: a crawler following the link
    without loading images, or without cookies, counts nothing)."""
    from recommender.selectors.events import click_token_read
    from recommender.services.events import panel_origin_record

    read = click_token_read(request.GET.get("via", ""), target_id=int(pk))
    if read is not None and visitor:
        origin, position = read
        panel_origin_record(origin, kind="click", channel="page", visitor=visitor, target_id=int(pk),
                            position=position, once=f"click:{visitor}:{request.GET.get('via', '')}")


def _panel_tracking(similar, *, product, arm) -> dict:
    """The panel's beacon token and each product's link parameter (recommender.selectors.events)."""
    from recommender.selectors.events import PanelOrigin, click_token, view_token

    origin = PanelOrigin(product.pk, similar.version.pk if similar.version else None, arm.experiment_id, arm.name,
                         similar.rules)
    links = [(item, click_token(origin, target_id=item.product.pk, position=n))
             for n, item in enumerate(similar.items, start=1)]
    return {"beacon": view_token(origin, [item.product.pk for item in similar.items]), "links": links}


def product_detail(request, pk):
    from recommender.selectors import similar_products
    from recommender.selectors.answers import answer_get, cache_key
    from recommender.selectors.events import visitor_of
    from recommender.selectors.experiments import arm_for

    visitor = visitor_of(request)
    if "via" in request.GET:
        _click_record(request, pk=pk, visitor=visitor)
    arm = arm_for(visitor=visitor)  # the active version, or an experiment's candidate
    same_category = request.GET.get("same") == "1"
    shared = _shared_page(request)
    key = cache_key(PAGE_CACHE_PREFIX, int(pk), same_category, arm.experiment_id, arm.name) if shared else None
    if shared and (html := answer_get(key)) is not None:
        return HttpResponse(html)
    fingerprint = selectors.products_fingerprint([pk]) if shared else None  # before the product is read
    try:
        product = selectors.product_detail(pk=pk)
    except Product.DoesNotExist:
        raise Http404("No such product.")
    similar = similar_products(product=product, k=6, same_category=same_category, version=arm.version)
    # The panel (and its toggle) shows whenever the product has similar items without the toggle,
    # so that ticking "same category only" with no match can be unticked again.
    unfiltered = (similar_products(product=product, k=6, same_category=False, version=arm.version)
                  if same_category else similar)
    has_similar = bool(similar.items) or bool(unfiltered.items)
    response = render(request, "catalog/product.html",
                      {"product": product, "similar": similar, "same_category": same_category,
                       "has_similar": has_similar, **_panel_tracking(similar, product=product, arm=arm)})
    if shared:
        active = arm.experiment.control if arm.version is not None else similar.version
        _cache_page(request, response, key=key, pk=pk, fingerprint=fingerprint, active=active,
                    answers=[similar, unfiltered] if same_category else [similar])
    return response


def _preview_data_uri(picture, *, box=None) -> str:
    """A small inline preview of the shopper's own photo (never stored, so it has no URL), made
    from the picture already reduced by search_photo_open (its shorter side >= the preview's);
    with the box searched inside outlined, and the rest of the photo dimmed."""
    preview = picture.convert("RGB")
    preview.thumbnail((SEARCH_PREVIEW_SIZE, SEARCH_PREVIEW_SIZE))
    if max(preview.size) < 96:  # tiny sources (28x28) would be a blur: scale up crisply
        scale = 96 // max(preview.size)
        preview = preview.resize((preview.width * scale, preview.height * scale), 0)
    if box is not None:
        preview = _box_outlined(preview, box=box)
    buffer = io.BytesIO()
    preview.save(buffer, "WEBP", quality=80)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode()


def _box_outlined(preview, *, box):
    """The preview with the part outside ``box`` dimmed and the box outlined (the site's accent)."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = box.pixels(preview.size)
    dimmed = Image.blend(preview, Image.new("RGB", preview.size, (255, 255, 255)), 0.6)
    dimmed.paste(preview.crop((left, top, right, bottom)), (left, top))
    line = max(2, max(preview.size) // 64)
    ImageDraw.Draw(dimmed).rectangle((left, top, max(left, right - 1), max(top, bottom - 1)),
                                     outline=(59, 91, 219), width=line)
    return dimmed


def _photo_search_wait(request) -> int | None:
    """Seconds to wait when this client has used up its searches by photo, else None.

    The same throttles, rates (REST_FRAMEWORK image_search_anon / image_search_user) and Redis
    counters as POST /api/v1/search/image/: one budget per client for the expensive operation,
    whichever way it is called. They fail open when the cache is down."""
    from catalog.api.throttling import ImageSearchAnonThrottle, ImageSearchUserThrottle

    waits = []
    for throttle in (ImageSearchAnonThrottle(), ImageSearchUserThrottle()):
        if not throttle.allow_request(request, None):
            waits.append(throttle.wait() or 1)
    return max(1, math.ceil(max(waits))) if waits else None


def photo_search(request):
    from recommender.selectors import search_by_image

    result = preview = None
    status = 200
    retry_after = _photo_search_wait(request) if request.method == "POST" else None
    if retry_after is not None:
        form = PhotoSearchForm()
        messages.error(request, f"You have searched by photo many times in a short while. Please try again in "
                                f"{retry_after} second{'s' if retry_after != 1 else ''}.")
        status = 429
    elif request.method == "POST":
        form = PhotoSearchForm(request.POST, request.FILES)
        if form.is_valid():
            # Decoded reduced, never re-encoded (catalog.validators); searched by the box's part of
            # it when the shopper drew one (catalog.cropping), previewed whole with the box outlined.
            preview = _preview_data_uri(form.picture, box=form.box)
            try:
                result = search_by_image(picture=form.query, k=12, same_category=form.cleaned_data["same_category"])
            except Exception:
                # The model could not be loaded or run: say so instead of a bare error page.
                logger.exception("search by photo failed")
                messages.error(request, "Search by photo is unavailable right now. Please try again in a minute.")
                status = 503
        else:
            status = 400
    else:
        form = PhotoSearchForm()
    response = render(request, "catalog/photo_search.html",
                      {"form": form, "result": result, "preview": preview, "min_box_side": MIN_BOX_SIDE,
                       "confidence": result.probabilities.get(result.predicted) if result and result.predicted else None,
                       "max_upload_bytes": settings.MAX_UPLOAD_BYTES}, status=status)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response
