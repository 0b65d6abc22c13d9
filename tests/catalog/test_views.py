"""Shopper pages through the test client: every page renders, filters and pagination work, bad
uploads get clear messages, and listings run a bounded number of SQL queries (no N+1)."""

import io
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from PIL import Image

from catalog.models import Product, ProductImage
from catalog.thumbnails import thumbnails_create
from recommender.models import ModelVersion
from tests.factories import CategoryFactory, ProductFactory, ProductImageFactory, png_bytes, upload
from tests.ui.data import (  # noqa: F401 (fast_passwords: autouse)
    add_embeddings, add_features, catalog, fast_passwords, media_files, model_version)

pytestmark = pytest.mark.django_db


def cards(response) -> list[str]:
    """Titles of the product cards on a page, in order."""
    return re.findall(r'<span class="title">([^<]*)</span>', response.content.decode())


def similar_titles(response) -> list[str]:
    html = response.content.decode()
    if 'id="similar"' not in html:
        return []
    return re.findall(r'<span class="title">([^<]*)</span>', html.split('id="similar"', 1)[1])


# --------------------------------------------------------------------------- home, category, search


def test_home_lists_categories_with_counts_and_new_products(client):
    catalog(per_category=2)
    ProductFactory(category=CategoryFactory(name="Hidden", slug="hidden"), is_active=False)
    response = client.get(reverse("catalog:home"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Shoes" in html and "Bags" in html
    assert re.search(r'Shoes <span class="count">2</span>', html)
    assert re.search(r'Hidden <span class="count">0</span>', html)  # inactive products are not counted
    assert len(cards(response)) == 4


def test_empty_catalog_pages_render(client):
    for url in [reverse("catalog:home"), reverse("catalog:search"), reverse("catalog:photo_search")]:
        response = client.get(url)
        assert response.status_code == 200, url
    assert "No categories yet" in client.get(reverse("catalog:home")).content.decode()


def test_category_page_filters_by_price_and_stock(client):
    shoes = CategoryFactory(name="Shoes", slug="shoes")
    ProductFactory(category=shoes, title="Cheap", price=Decimal("5.00"))
    ProductFactory(category=shoes, title="Middle", price=Decimal("50.00"))
    ProductFactory(category=shoes, title="Sold out", price=Decimal("55.00"), in_stock=False)
    ProductFactory(category=shoes, title="Dear", price=Decimal("500.00"))
    ProductFactory(category=CategoryFactory(name="Bags", slug="bags"), title="Other category", price=Decimal("50"))
    url = reverse("catalog:category", kwargs={"slug": "shoes"})

    assert sorted(cards(client.get(url))) == ["Cheap", "Dear", "Middle", "Sold out"]
    assert sorted(cards(client.get(url, {"min_price": "10", "max_price": "100"}))) == ["Middle", "Sold out"]
    assert cards(client.get(url, {"min_price": "10", "max_price": "100", "in_stock": "on"})) == ["Middle"]
    assert cards(client.get(url, {"sort": "-price"}))[0] == "Dear"
    assert cards(client.get(url, {"q": "chea"})) == ["Cheap"]


def test_category_page_explains_an_impossible_price_range(client):
    CategoryFactory(name="Shoes", slug="shoes")
    response = client.get(reverse("catalog:category", kwargs={"slug": "shoes"}), {"min_price": "9", "max_price": "1"})
    assert response.status_code == 200
    assert "The minimum price is above the maximum price." in response.content.decode()


def test_category_page_ignores_a_non_numeric_price(client):
    shoes = CategoryFactory(name="Shoes", slug="shoes")
    ProductFactory(category=shoes, title="Kept")
    response = client.get(reverse("catalog:category", kwargs={"slug": "shoes"}), {"min_price": "abc"})
    assert response.status_code == 200
    assert cards(response) == ["Kept"]


def test_unknown_category_is_404(client):
    assert client.get(reverse("catalog:category", kwargs={"slug": "nope"})).status_code == 404


def test_category_pagination_keeps_the_filters(client):
    shoes = CategoryFactory(name="Shoes", slug="shoes")
    for i in range(30):
        ProductFactory(category=shoes, title=f"Shoe {i:02d}", price=Decimal(20 + i))
    url = reverse("catalog:category", kwargs={"slug": "shoes"})
    first = client.get(url, {"min_price": "21"})  # 29 products: 24 + 5
    assert len(cards(first)) == 24
    html = first.content.decode()
    assert "Page 1 of 2" in html
    assert "min_price=21&amp;page=2" in html
    second = client.get(url, {"min_price": "21", "page": "2"})
    assert len(cards(second)) == 5
    assert client.get(url, {"page": "99"}).status_code == 200  # past the end: the last page


def test_text_search_matches_title_sku_and_description(client):
    ProductFactory(title="Red sneaker", sku="AAA-1")
    ProductFactory(title="Blue bag", sku="BBB-2", description="A roomy leather tote")
    ProductFactory(title="Hidden sneaker", is_active=False)
    search = reverse("catalog:search")
    assert cards(client.get(search, {"q": "sneaker"})) == ["Red sneaker"]
    assert cards(client.get(search, {"q": "bbb"})) == ["Blue bag"]
    assert cards(client.get(search, {"q": "leather"})) == ["Blue bag"]
    response = client.get(search, {"q": "nothing-like-this"})
    assert "No products match." in response.content.decode()


@pytest.mark.parametrize("page", ["home", "category", "search"])
def test_listings_run_a_bounded_number_of_queries(client, page, django_assert_max_num_queries):
    """The same number of queries for 4 and for 24 products on a page: no query per product."""

    def url():
        return {"home": reverse("catalog:home"),
                "category": reverse("catalog:category", kwargs={"slug": "shoes"}),
                "search": reverse("catalog:search") + "?q=item"}[page]

    def count():
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url()).status_code == 200
        return len(queries)

    catalog(per_category=2, categories=("Shoes", "Bags"))
    few = count()
    catalog(per_category=12, categories=("Shoes", "Bags"), seed=1)
    assert count() == few
    with django_assert_max_num_queries(5):
        client.get(url())


def test_cards_use_the_worker_made_webp_thumbnails_and_pages_write_no_files(client, settings):
    image = ProductImageFactory(data=png_bytes((64, 64), seed=3))
    with image.image.open("rb") as handle:
        picture = Image.open(handle)
        picture.load()
    image.thumbnails = thumbnails_create(image_field=image.image, picture=picture, sizes=settings.THUMBNAIL_SIZES)
    image.save(update_fields=["thumbnails"])
    before = media_files(settings)

    html = client.get(reverse("catalog:home")).content.decode()
    assert settings.MEDIA_URL + image.thumbnails["256"] in html
    assert image.image.url not in html  # never the original in a listing
    product_html = client.get(image.product.get_absolute_url()).content.decode()
    assert settings.MEDIA_URL + image.thumbnails["512"] in product_html
    assert media_files(settings) == before  # no thumbnail was made during a page request


# --------------------------------------------------------------------------- product page


def test_product_page_without_similar_items_renders_without_the_panel(client):
    product = ProductFactory(title="Lonely", description="Only one of its kind")
    response = client.get(product.get_absolute_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert "Lonely" in html and "Only one of its kind" in html and "No image yet" in html
    assert 'id="similar"' not in html


def test_inactive_or_unknown_product_is_404(client):
    product = ProductFactory(is_active=False)
    assert client.get(product.get_absolute_url()).status_code == 404
    assert client.get(reverse("catalog:product", kwargs={"pk": 999999})).status_code == 404


def test_similar_items_before_any_model_come_from_backbone_features(client):
    products = catalog(per_category=4)
    add_features(products)
    shoe = products[0]
    response = client.get(shoe.get_absolute_url())
    assert response.status_code == 200
    titles = similar_titles(response)
    assert len(titles) == 6 and shoe.title not in titles
    assert all(t.startswith("Shoes") for t in titles[:3])  # the nearest share its category
    assert 'data-source="backbone"' in response.content.decode()
    same = similar_titles(client.get(shoe.get_absolute_url(), {"same": "1"}))
    assert same and all(t.startswith("Shoes") for t in same)


def test_similar_items_from_the_active_version_with_same_category_toggle(client):
    products = catalog(per_category=5)
    add_features(products)
    version = model_version()
    # The model groups shoe 0 with the bags (say, a brown boot that looks like a bag).
    add_embeddings(version, products, cluster_of=lambda p: 1 if p.category.name == "Bags" or p == products[0] else 0)
    shoe = products[0]
    response = client.get(shoe.get_absolute_url())
    html = response.content.decode()
    assert 'data-source="model"' in html and f"Model v{version.pk}" in html
    titles = similar_titles(response)
    assert len(titles) == 6 and all(t.startswith("Bags") for t in titles[:5])
    # "Same category only" keeps the products predicted in the product's own predicted category
    # (Shoes: add_embeddings predicts the catalog category).
    same = similar_titles(client.get(shoe.get_absolute_url(), {"same": "1"}))
    assert len(same) == 4 and all(t.startswith("Shoes") for t in same)
    assert 'name="same" value="1" checked' in client.get(shoe.get_absolute_url(), {"same": "1"}).content.decode()


def test_similar_items_are_cached_per_version_and_a_new_version_invalidates(client, django_assert_max_num_queries):
    products = catalog(per_category=5)
    old = model_version()
    add_embeddings(old, products)
    shoe = products[0]
    first = similar_titles(client.get(shoe.get_absolute_url()))
    assert all(t.startswith("Shoes") for t in first[:4])

    with CaptureQueriesContext(connection) as cold:
        client.get(shoe.get_absolute_url(), {"same": "1"})
    with CaptureQueriesContext(connection) as warm:
        client.get(shoe.get_absolute_url(), {"same": "1"})
    assert not any("recommender_embedding" in q["sql"] for q in warm.captured_queries)
    assert len(warm) < len(cold)
    with django_assert_max_num_queries(6):
        client.get(shoe.get_absolute_url())

    # A new version becomes active (as model_version_activate does): its neighbours are served at once.
    new = model_version(status=ModelVersion.Status.READY)
    add_embeddings(new, products, cluster_of=lambda p: 1 if p.category.name == "Bags" or p == shoe else 0)
    ModelVersion.objects.filter(pk=old.pk).update(status=ModelVersion.Status.RETIRED)
    ModelVersion.objects.filter(pk=new.pk).update(status=ModelVersion.Status.ACTIVE)
    response = client.get(shoe.get_absolute_url())
    assert f"Model v{new.pk}" in response.content.decode()
    assert all(t.startswith("Bags") for t in similar_titles(response)[:5])


def test_product_page_queries_do_not_grow_with_similar_items(client, django_assert_max_num_queries):
    from django.core.cache import cache

    products = catalog(per_category=8)
    version = model_version()
    add_embeddings(version, products)

    def count():
        cache.clear()
        with CaptureQueriesContext(connection) as queries:
            response = client.get(products[0].get_absolute_url(), {"same": "1"})
        assert len(similar_titles(response)) == 6
        return [q["sql"] for q in queries.captured_queries]

    before = count()
    for product in products[:8]:  # more images on every neighbour: still one prefetch
        ProductImageFactory(product=product, data=png_bytes(seed=9000 + product.pk))
    assert len(count()) == len(before)
    with django_assert_max_num_queries(12):  # including the savepoint of SET LOCAL hnsw.*
        client.get(products[0].get_absolute_url())


# --------------------------------------------------------------------------- search by photo


def test_photo_search_page_renders_the_upload_form(client):
    response = client.get(reverse("catalog:photo_search"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'enctype="multipart/form-data"' in html and 'type="file" name="photo"' in html
    assert "Choose a photo or drag it here" in html


@pytest.mark.parametrize("data,name,message", [
    (b"<html><body>hello</body></html>", "photo.png", "The file is not an image"),
    (b"", "empty.jpg", "The submitted file is empty."),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "drawing.svg", "The file is not an image"),
    (png_bytes((40, 40), seed=1)[:60], "truncated.png", "damaged or truncated"),
])
def test_photo_search_refuses_files_that_are_not_images(client, data, name, message):
    response = client.post(reverse("catalog:photo_search"), {"photo": upload(data, name)})
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html and 'role="alert"' in html
    assert 'id="results"' not in html


def test_photo_search_refuses_a_file_that_is_too_large(client, settings):
    settings.MAX_UPLOAD_BYTES = 1000
    data = io.BytesIO()
    Image.effect_noise((64, 64), 80).save(data, "PNG")
    assert len(data.getvalue()) > 1000
    response = client.post(reverse("catalog:photo_search"), {"photo": upload(data.getvalue())})
    assert response.status_code == 400
    assert "The file is too large" in response.content.decode()
    assert "1,000 bytes" in response.content.decode()


def test_photo_search_refuses_an_image_with_too_many_pixels(client, settings):
    settings.MAX_IMAGE_PIXELS = 1000
    response = client.post(reverse("catalog:photo_search"), {"photo": upload(png_bytes((40, 40), seed=2))})
    assert response.status_code == 400
    assert "The image is too large (40x40 = 1,600 pixels); the limit is 1,000 pixels." in response.content.decode()


def test_photo_search_without_a_file_says_so(client):
    response = client.post(reverse("catalog:photo_search"), {})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()


def test_photo_search_finds_the_nearest_products(client, settings):
    """The real backbone (random weights, 32x32) in this process; no trained model yet, so the
    nearest products come from the standardised backbone features."""
    from recommender.services import images_process

    products = catalog(per_category=3)
    images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token="t")
    assert ProductImage.objects.filter(status="ready").count() == 6
    query = ProductImage.objects.filter(product=products[0]).first()
    with query.image.open("rb") as handle:
        data = handle.read()
    before = Product.objects.count()

    response = client.post(reverse("catalog:photo_search"), {"photo": upload(data, "mine.png")})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="results"' in html
    assert len(cards(response)) == 6
    assert cards(response)[0] == products[0].title  # the same picture is the nearest
    assert 'src="data:image/webp;base64,' in html  # a preview of the shopper's photo, not stored
    assert "No trained model yet" in html
    assert Product.objects.count() == before
