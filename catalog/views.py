import base64
import io
import logging

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, render

from catalog import selectors
from catalog.forms import PhotoSearchForm, ProductFilterForm
from catalog.models import Category, Product

PAGE_SIZE = 24
logger = logging.getLogger(__name__)


def _filtered_page(request, *, category=None):
    form = ProductFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
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


def product_detail(request, pk):
    from recommender.selectors import similar_products

    try:
        product = selectors.product_detail(pk=pk)
    except Product.DoesNotExist:
        raise Http404("No such product.")
    same_category = request.GET.get("same") == "1"
    similar = similar_products(product=product, k=6, same_category=same_category)
    return render(request, "catalog/product.html",
                  {"product": product, "similar": similar, "same_category": same_category})


def _preview_data_uri(picture) -> str:
    """A small inline preview of the shopper's own photo (never stored, so it has no URL)."""
    preview = picture.convert("RGB")
    preview.thumbnail((192, 192))
    if max(preview.size) < 96:  # tiny sources (28x28) would be a blur: scale up crisply
        scale = 96 // max(preview.size)
        preview = preview.resize((preview.width * scale, preview.height * scale), 0)
    buffer = io.BytesIO()
    preview.save(buffer, "WEBP", quality=80)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode()


def photo_search(request):
    from recommender.selectors import search_by_image

    result = preview = None
    status = 200
    if request.method == "POST":
        form = PhotoSearchForm(request.POST, request.FILES)
        if form.is_valid():
            from PIL import Image

            picture = Image.open(io.BytesIO(form.normalised.content))
            picture.load()
            preview = _preview_data_uri(picture)
            try:
                result = search_by_image(picture=picture, k=12, same_category=form.cleaned_data["same_category"])
            except Exception:
                # The model could not be loaded or run: say so instead of a bare error page.
                logger.exception("search by photo failed")
                messages.error(request, "Search by photo is unavailable right now. Please try again in a minute.")
                status = 503
        else:
            status = 400
    else:
        form = PhotoSearchForm()
    return render(request, "catalog/photo_search.html",
                  {"form": form, "result": result, "preview": preview,
                   "confidence": result.probabilities.get(result.predicted) if result and result.predicted else None,
                   "max_upload_bytes": settings.MAX_UPLOAD_BYTES}, status=status)
