"""Categories and products through the API: reads for everyone, writes for staff, images."""

from decimal import Decimal

import pytest
from django.utils import timezone

from catalog.models import Category, Product, ProductImage
from recommender.models import ModelVersion
from tests.api.conftest import media_files, png
from tests.factories import CategoryFactory, ProductFactory, ProductImageFactory, upload

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products/"


def ids(response):
    return [item["id"] for item in response.json()["results"]]


# --------------------------------------------------------------------------- categories


def test_categories_list_and_detail_are_public_with_active_counts(clients):
    shoes, bags = CategoryFactory(name="Shoes", slug="shoes"), CategoryFactory(name="Bags", slug="bags")
    ProductFactory(category=shoes)
    ProductFactory(category=shoes)
    ProductFactory(category=shoes, is_active=False)
    for who, client in clients.items():
        response = client.get("/api/v1/categories/")
        assert response.status_code == 200, who
        assert response.json() == [
            {"id": bags.pk, "name": "Bags", "slug": "bags", "product_count": 0},
            {"id": shoes.pk, "name": "Shoes", "slug": "shoes", "product_count": 2},
        ]
        detail = client.get(f"/api/v1/categories/{shoes.pk}/")
        assert detail.status_code == 200 and detail.json()["product_count"] == 2


def test_unknown_category_is_a_json_404(anon_client):
    response = anon_client.get("/api/v1/categories/999999/")
    assert response.status_code == 404
    assert response.json() == {"status": 404, "code": "not_found", "detail": "No category with id 999999.",
                               "errors": []}


@pytest.mark.parametrize("who", ["anonymous", "user", "staff"])
def test_categories_are_read_only(clients, who):
    response = clients[who].post("/api/v1/categories/", {"name": "X"}, format="json")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    assert not Category.objects.exists()


# --------------------------------------------------------------------------- product reads


@pytest.fixture
def shop():
    shoes = CategoryFactory(name="Shoes", slug="shoes")
    bags = CategoryFactory(name="Bags", slug="bags")
    products = {
        "boot": ProductFactory(sku="SH-001", title="Leather boot", category=shoes, price=Decimal("120.00"),
                               description="Brown, waterproof"),
        "sneaker": ProductFactory(sku="SH-002", title="Running sneaker", category=shoes, price=Decimal("80.00"),
                                  in_stock=False),
        "tote": ProductFactory(sku="BG-001", title="Canvas tote", category=bags, price=Decimal("25.50"),
                               description="Fits a laptop"),
        "clutch": ProductFactory(sku="BG-002", title="Evening clutch", category=bags, price=Decimal("60.00")),
        "hidden": ProductFactory(sku="BG-003", title="Old satchel", category=bags, price=Decimal("40.00"),
                                 is_active=False),
    }
    return {"shoes": shoes, "bags": bags, **products}


def test_list_is_public_and_hides_inactive_products_from_non_staff(clients, shop):
    for who in ("anonymous", "user"):
        response = clients[who].get(PRODUCTS)
        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 4
        assert shop["hidden"].pk not in ids(response)
        assert clients[who].get(PRODUCTS, {"active": "false"}).json()["count"] == 0
    staff = clients["staff"]
    assert staff.get(PRODUCTS).json()["count"] == 5
    assert ids(staff.get(PRODUCTS, {"active": "false"})) == [shop["hidden"].pk]
    assert staff.get(PRODUCTS, {"active": "true"}).json()["count"] == 4


def test_list_pagination(anon_client, shop):
    first = anon_client.get(PRODUCTS, {"page_size": 3, "ordering": "price"}).json()
    assert first["count"] == 4 and len(first["results"]) == 3
    assert first["previous"] is None and "page=2" in first["next"]
    second = anon_client.get(first["next"]).json()
    assert len(second["results"]) == 1 and second["next"] is None
    prices = [r["price"] for r in first["results"] + second["results"]]
    assert prices == ["25.50", "60.00", "80.00", "120.00"]
    missing = anon_client.get(PRODUCTS, {"page": 99})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert "Page 99" in missing.json()["detail"]
    for bad in ("0", "101", "abc", "-2"):
        response = anon_client.get(PRODUCTS, {"page_size": bad})
        assert response.status_code == 400
        assert response.json()["errors"][0]["field"] == "page_size"
        assert "from 1 to 100" in response.json()["detail"]
    assert len(anon_client.get(PRODUCTS, {"page_size": "", "page": ""}).json()["results"]) == 4


@pytest.mark.parametrize("params, expected", [
    ({"category": "shoes"}, ["boot", "sneaker"]),
    ({"category": "bags"}, ["clutch", "tote"]),
    ({"min_price": "60"}, ["boot", "clutch", "sneaker"]),
    ({"max_price": "60"}, ["clutch", "tote"]),
    ({"min_price": "30", "max_price": "100"}, ["clutch", "sneaker"]),
    ({"in_stock": "false"}, ["sneaker"]),
    ({"in_stock": "true", "category": "shoes"}, ["boot"]),
    ({"search": "sh-00"}, ["boot", "sneaker"]),          # SKU, case-insensitive
    ({"search": "laptop"}, ["tote"]),                   # description
    ({"search": "evening CLUTCH"}, ["clutch"]),         # every word, title
    ({"search": "boot laptop"}, []),
])
def test_list_filters(anon_client, shop, params, expected):
    params = {k: (shop[v].pk if k == "category" else v) for k, v in params.items()}
    response = anon_client.get(PRODUCTS, {**params, "ordering": "title"})
    assert response.status_code == 200, response.json()
    assert ids(response) == [shop[name].pk for name in sorted(expected, key=lambda n: shop[n].title)]


@pytest.mark.parametrize("ordering, expected", [
    ("price", ["tote", "clutch", "sneaker", "boot"]),
    ("-price", ["boot", "sneaker", "clutch", "tote"]),
    ("title", ["tote", "clutch", "boot", "sneaker"]),
    ("-title", ["sneaker", "boot", "clutch", "tote"]),
])
def test_list_ordering(anon_client, shop, ordering, expected):
    assert ids(anon_client.get(PRODUCTS, {"ordering": ordering})) == [shop[n].pk for n in expected]


def test_list_ordering_by_creation(anon_client, shop):
    newest_first = ids(anon_client.get(PRODUCTS, {"ordering": "-created_at"}))
    assert newest_first == sorted(newest_first, reverse=True)  # created in id order


@pytest.mark.parametrize("params, field, code", [
    ({"min_price": "abc"}, "min_price", "invalid"),
    ({"min_price": "-1"}, "min_price", "min_value"),
    ({"min_price": "50", "max_price": "10"}, None, "invalid_range"),
    ({"category": "999999"}, "category", "invalid_choice"),
    ({"in_stock": "perhaps"}, "in_stock", "invalid"),
])
def test_list_rejects_bad_filters_with_a_400_naming_the_field(anon_client, shop, params, field, code):
    response = anon_client.get(PRODUCTS, params)
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == 400 and body["code"] == code
    assert [e["field"] for e in body["errors"]] == [field]
    assert body["detail"]


def test_detail_has_images_with_urls_status_and_searchable_since(anon_client, settings):
    product = ProductFactory(title="Boot")
    first = ProductImageFactory(product=product, seed=1)
    ProductImageFactory(product=product, seed=2)
    body = anon_client.get(f"{PRODUCTS}{product.pk}/").json()
    assert body["id"] == product.pk and body["title"] == "Boot"
    assert body["category"] == {"id": product.category.pk, "name": product.category.name,
                                "slug": product.category.slug}
    assert [i["status"] for i in body["images"]] == ["pending", "pending"]
    assert body["images"][0]["url"].startswith("http://testserver/media/products/")
    assert body["images"][0]["thumbnails"] == {}
    assert body["searchable_since"] is None
    assert body["similar_url"] == f"http://testserver/api/v1/products/{product.pk}/similar/"

    # Ready with thumbnails: the image's own URLs, and searchable (cold start: features answer).
    became_ready = timezone.now()
    ProductImage.objects.filter(pk=first.pk).update(status="ready", status_changed_at=became_ready,
                                                    thumbnails={"128": "thumbs/a.webp", "256": "thumbs/b.webp"})
    body = anon_client.get(f"{PRODUCTS}{product.pk}/").json()
    assert [i["status"] for i in body["images"]] == ["ready", "pending"]
    assert body["images"][0]["thumbnails"] == {"128": "http://testserver/media/thumbs/a.webp",
                                               "256": "http://testserver/media/thumbs/b.webp"}
    assert body["thumbnail"] == "http://testserver/media/thumbs/b.webp"
    assert body["searchable_since"] == became_ready.isoformat().replace("+00:00", "Z")


def test_searchable_since_with_an_active_version_needs_its_embedding(anon_client, trained_catalog):
    products, version = trained_catalog
    body = anon_client.get(f"{PRODUCTS}{products[0].pk}/").json()
    # Embedded while the version trained: searchable from its activation.
    assert body["searchable_since"] == version.activated_at.isoformat().replace("+00:00", "Z")
    late = ProductFactory(category=products[0].category)
    image = ProductImageFactory(product=late, seed=5)
    ProductImage.objects.filter(pk=image.pk).update(status="ready", status_changed_at=timezone.now())
    # Ready but not embedded by the active version: not found by similar items yet.
    assert anon_client.get(f"{PRODUCTS}{late.pk}/").json()["searchable_since"] is None
    assert ModelVersion.objects.filter(status="active").count() == 1


def test_inactive_product_detail_is_staff_only(clients):
    hidden = ProductFactory(is_active=False)
    for who in ("anonymous", "user"):
        response = clients[who].get(f"{PRODUCTS}{hidden.pk}/")
        assert response.status_code == 404
        assert response.json()["detail"] == f"No active product with id {hidden.pk}."
    assert clients["staff"].get(f"{PRODUCTS}{hidden.pk}/").json()["is_active"] is False


def test_list_does_not_query_per_product(anon_client, django_assert_max_num_queries):
    for n in range(6):
        ProductImageFactory(product=ProductFactory(), seed=n)
    with django_assert_max_num_queries(8):
        response = anon_client.get(PRODUCTS)
    assert response.json()["count"] == 6


# --------------------------------------------------------------------------- product writes


def test_create_product_json_staff_only(clients):
    category = CategoryFactory()
    payload = {"sku": "NEW-1", "title": "New thing", "category": category.pk, "price": "12.50",
               "description": "d", "in_stock": True}
    assert clients["anonymous"].post(PRODUCTS, payload, format="json").status_code == 401
    assert clients["user"].post(PRODUCTS, payload, format="json").status_code == 403
    assert not Product.objects.exists()
    response = clients["staff"].post(PRODUCTS, payload, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["sku"] == "NEW-1" and body["price"] == "12.50" and body["images"] == []
    assert response["Location"] == body["url"]
    assert Product.objects.get(sku="NEW-1").category == category


def test_create_product_multipart_with_images(staff_client, settings):
    category = CategoryFactory()
    response = staff_client.post(PRODUCTS, {
        "sku": "MP-1", "title": "With photos", "category": category.pk, "price": "5",
        "images": [upload(png(colour=(1, 2, 3)), "a.png"), upload(png(colour=(9, 9, 9)), "b.png")],
    }, format="multipart")
    assert response.status_code == 201, response.json()
    # Booleans left out of a form default to true (not to an unticked checkbox's false).
    assert response.json()["is_active"] is True and response.json()["in_stock"] is True
    images = response.json()["images"]
    assert [i["original_name"] for i in images] == ["a.png", "b.png"]
    assert {i["status"] for i in images} == {"pending"}
    assert len(media_files(settings)) == 2


def test_create_product_with_one_bad_image_stores_nothing(staff_client, settings):
    category = CategoryFactory()
    response = staff_client.post(PRODUCTS, {
        "sku": "MP-2", "title": "Bad", "category": category.pk, "price": "5",
        "images": [upload(png(), "good.png"), upload(b"<html>not an image</html>", "evil.png")],
    }, format="multipart")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "not_an_image"
    assert body["errors"][0]["field"] == "images.1"
    assert body["errors"][0]["message"].startswith("evil.png: The file is not an image")
    assert not Product.objects.exists() and not ProductImage.objects.exists()
    assert media_files(settings) == []


def test_create_product_validation_errors(staff_client):
    ProductFactory(sku="DUP")
    response = staff_client.post(PRODUCTS, {"sku": "DUP", "title": "", "category": 999999, "price": "-1"},
                                 format="json")
    assert response.status_code == 400
    fields = {e["field"]: e["code"] for e in response.json()["errors"]}
    assert fields == {"sku": "unique", "title": "blank", "category": "does_not_exist", "price": "min_value"}
    assert Product.objects.count() == 1


def test_create_product_malformed_json(staff_client):
    response = staff_client.post(PRODUCTS, data="{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "parse_error"


def test_update_and_partial_update(clients):
    product = ProductFactory(title="Old", price=Decimal("10"))
    other = CategoryFactory()
    url = f"{PRODUCTS}{product.pk}/"
    assert clients["anonymous"].patch(url, {"title": "x"}, format="json").status_code == 401
    assert clients["user"].patch(url, {"title": "x"}, format="json").status_code == 403
    staff = clients["staff"]
    response = staff.patch(url, {"title": "New", "is_active": False}, format="json")
    assert response.status_code == 200 and response.json()["title"] == "New"
    product.refresh_from_db()
    assert product.title == "New" and not product.is_active and product.price == Decimal("10")
    full = {"sku": "S-9", "title": "Whole", "category": other.pk, "price": "3.00", "description": "",
            "is_active": True, "in_stock": False}
    response = staff.put(url, full, format="json")
    assert response.status_code == 200
    assert {k: response.json()[k] for k in ("sku", "title", "price", "in_stock")} == {
        "sku": "S-9", "title": "Whole", "price": "3.00", "in_stock": False}
    assert response.json()["category"]["id"] == other.pk
    assert staff.put(url, {"title": "missing fields"}, format="json").status_code == 400
    assert staff.patch(f"{PRODUCTS}999999/", {"title": "x"}, format="json").status_code == 404


def test_delete_product_removes_its_files(clients, settings, django_capture_on_commit_callbacks):
    product = ProductFactory()
    ProductImageFactory(product=product, seed=3)
    url = f"{PRODUCTS}{product.pk}/"
    assert clients["anonymous"].delete(url).status_code == 401
    assert clients["user"].delete(url).status_code == 403
    assert len(media_files(settings)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert clients["staff"].delete(url).status_code == 204
    assert not Product.objects.filter(pk=product.pk).exists()
    assert media_files(settings) == []
    assert clients["staff"].delete(url).status_code == 404


# --------------------------------------------------------------------------- images


def test_add_images_staff_only_and_idempotent_per_picture(clients, settings):
    product = ProductFactory()
    url = f"{PRODUCTS}{product.pk}/images/"
    files = lambda: {"images": [upload(png(colour=(5, 5, 5)), "one.png"), upload(png(colour=(6, 6, 6)), "two.png")]}
    assert clients["anonymous"].post(url, files(), format="multipart").status_code == 401
    assert clients["user"].post(url, files(), format="multipart").status_code == 403
    response = clients["staff"].post(url, files(), format="multipart")
    assert response.status_code == 201
    created = response.json()
    assert [i["original_name"] for i in created] == ["one.png", "two.png"]
    assert [i["position"] for i in created] == [0, 1]
    assert all(i["status"] == "pending" for i in created)
    again = clients["staff"].post(url, files(), format="multipart").json()
    assert [i["id"] for i in again] == [i["id"] for i in created]
    assert product.images.count() == 2 and len(media_files(settings)) == 2


@pytest.mark.parametrize("case", ["not_an_image", "too_large", "too_many_pixels", "empty"])
def test_add_images_rejects_bad_files_and_stores_nothing(staff_client, settings, case):
    product = ProductFactory()
    ProductImageFactory(product=product, seed=1)
    before = media_files(settings)
    if case == "too_large":
        settings.MAX_UPLOAD_BYTES = 200
        bad = upload(png((64, 64), colour=None) + b"\0" * 300, "big.png")
    elif case == "too_many_pixels":
        settings.MAX_IMAGE_PIXELS = 100
        bad = upload(png((20, 20)), "huge.png")
    elif case == "empty":
        bad = upload(b"", "empty.png")
    else:
        bad = upload(b"GIF89a but not really", "fake.gif", "image/gif")
    good = upload(png((8, 8), colour=(1, 1, 1)), "good.png")
    response = staff_client.post(f"{PRODUCTS}{product.pk}/images/", {"images": [good, bad]}, format="multipart")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == case
    assert body["errors"][0]["field"] == "images.1"
    assert bad.name in body["detail"]
    word = {"not_an_image": "not an image", "too_large": "too large", "too_many_pixels": "pixels",
            "empty": "empty"}[case]
    assert word in body["detail"]
    assert product.images.count() == 1
    assert media_files(settings) == before


def test_add_images_too_many_files(staff_client, settings):
    settings.MAX_FILES_PER_REQUEST = 2
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    product = ProductFactory()
    files = [upload(png(colour=(i, i, i)), f"{i}.png") for i in range(3)]
    response = staff_client.post(f"{PRODUCTS}{product.pk}/images/", {"images": files}, format="multipart")
    assert response.status_code == 400
    assert response.json()["code"] == "too_many_files"
    assert "the limit is 2" in response.json()["detail"]
    assert not product.images.exists() and media_files(settings) == []


def test_add_images_needs_at_least_one_file_and_multipart(staff_client):
    product = ProductFactory()
    url = f"{PRODUCTS}{product.pk}/images/"
    response = staff_client.post(url, {}, format="multipart")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "images"
    response = staff_client.post(url, {"images": []}, format="json")
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    assert staff_client.post(f"{PRODUCTS}999999/images/", {"images": [upload(png())]},
                             format="multipart").status_code == 404


def test_remove_image(clients, settings, django_capture_on_commit_callbacks):
    product = ProductFactory()
    keep = ProductImageFactory(product=product, seed=1)
    drop = ProductImageFactory(product=product, seed=2)
    other = ProductImageFactory(product=ProductFactory(), seed=3)
    url = f"{PRODUCTS}{product.pk}/images/{drop.pk}/"
    assert clients["anonymous"].delete(url).status_code == 401
    assert clients["user"].delete(url).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        assert clients["staff"].delete(url).status_code == 204
    assert list(product.images.values_list("id", flat=True)) == [keep.pk]
    assert len(media_files(settings)) == 2
    # An image of another product is not reachable through this one.
    response = clients["staff"].delete(f"{PRODUCTS}{product.pk}/images/{other.pk}/")
    assert response.status_code == 404
    assert response.json()["detail"] == f"Product {product.pk} has no image with id {other.pk}."
    assert clients["staff"].delete(url).status_code == 404
    assert Category.objects.exists()
