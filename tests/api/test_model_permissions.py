"""Every write endpoint of both apps' APIs checks Django's model permissions, as the admin does:
a staff user who may only view is refused (403 naming the permission, nothing changed), and a staff
user holding exactly the permissions an operation needs succeeds.

The write endpoints are enumerated from config/api_urls.py (the routers and each app's routes), so a
new one fails test_every_write_endpoint_is_listed until it is listed here with what it needs."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import URLPattern, URLResolver

from catalog.models import CategoryRule, DuplicatePair, PanelPin, Product, ProductImage
from recommender.models import ModelVersion
from tests.api.conftest import PASSWORD, _client_for, app_permissions, grant, media_files
from tests.factories import CategoryFactory, ProductFactory, ProductImageFactory, png_bytes, upload

pytestmark = pytest.mark.django_db

SAFE = {"get", "head", "options", "trace"}
PUBLIC_WRITES = {("search-image", "post"), ("auth-token", "post"), ("event-click", "post")}  # anyone; throttled


def _write_endpoints(patterns) -> set[tuple[str, str]]:
    """(URL name, HTTP method) of every unsafe method the API answers."""
    found = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found |= _write_endpoints(pattern.url_patterns)
            continue
        assert isinstance(pattern, URLPattern)
        view = getattr(pattern.callback, "cls", None)
        if view is None:
            continue
        actions = getattr(pattern.callback, "actions", None)
        methods = actions.keys() if actions else [m for m in view.http_method_names if hasattr(view, m)]
        found |= {(pattern.name, method) for method in methods if method not in SAFE}
    return found


def _api_write_endpoints():
    from config import api_urls

    return _write_endpoints(api_urls.urlpatterns) - PUBLIC_WRITES


def _png(seed):
    return upload(png_bytes(seed=seed), name=f"photo-{seed}.png")


# (URL name, method) -> scenarios: (id, permissions needed, request). A request is
# (world -> (url, data, format)).
def _product(world):
    return f"/api/v1/products/{world['product'].pk}/"


FULL = {"sku": "S-9", "title": "Whole", "price": "3.00", "description": "", "is_active": True, "in_stock": False}
WRITES = {
    ("product-list", "post"): [
        ("create", {"catalog.add_product"}, lambda w: (
            "/api/v1/products/", {"sku": "NEW-1", "title": "New", "category": w["category"].pk}, "json")),
        ("create-with-images", {"catalog.add_product", "catalog.add_productimage"}, lambda w: (
            "/api/v1/products/", {"sku": "NEW-2", "title": "New", "category": w["category"].pk,
                                  "images": [_png(11)]}, "multipart")),
    ],
    ("product-detail", "put"): [
        ("replace", {"catalog.change_product"}, lambda w: (
            _product(w), {**FULL, "category": w["category"].pk}, "json"))],
    ("product-detail", "patch"): [
        ("change", {"catalog.change_product"}, lambda w: (_product(w), {"title": "Changed"}, "json"))],
    ("product-detail", "delete"): [
        # It has an image: deleting it deletes that too (the admin asks for both as well).
        ("delete", {"catalog.delete_product", "catalog.delete_productimage"}, lambda w: (_product(w), None, None))],
    ("product-add-images", "post"): [
        ("add-images", {"catalog.change_product", "catalog.add_productimage"}, lambda w: (
            f"{_product(w)}images/", {"images": [_png(12)]}, "multipart"))],
    ("product-remove-image", "delete"): [
        ("remove-image", {"catalog.change_product", "catalog.delete_productimage"}, lambda w: (
            f"{_product(w)}images/{w['image'].pk}/", None, None))],
    ("modelversion-train", "post"): [
        ("train", {"recommender.train_modelversion"}, lambda w: (
            "/api/v1/model-versions/train/", {"reason": "new stock"}, "json"))],
    ("modelversion-activate", "post"): [
        ("activate", {"recommender.activate_modelversion"}, lambda w: (
            f"/api/v1/model-versions/{w['retired'].pk}/activate/", None, None))],
    ("modelversion-retire", "post"): [
        ("retire", {"recommender.activate_modelversion"}, lambda w: (
            f"/api/v1/model-versions/{w['active'].pk}/retire/", None, None))],
    # A merge moves images and hides a product: the admin asks for both changes too.
    ("duplicate-merge", "post"): [
        ("merge", {"catalog.change_duplicatepair", "catalog.change_product"}, lambda w: (
            f"/api/v1/duplicates/{w['pair'].pk}/merge/", {"keep": w["product"].pk}, "json"))],
    ("duplicate-not-duplicate", "post"): [
        ("not-duplicate", {"catalog.change_duplicatepair"}, lambda w: (
            f"/api/v1/duplicates/{w['pair'].pk}/not-duplicate/", None, None))],
    ("duplicate-ignore", "post"): [
        ("ignore", {"catalog.change_duplicatepair"}, lambda w: (
            f"/api/v1/duplicates/{w['pair'].pk}/ignore/", None, None))],
    ("product-panel-rules", "put"): [
        ("panel-rules", {"catalog.change_product", "catalog.add_panelpin", "catalog.delete_panelpin",
                         "catalog.add_panelblock", "catalog.delete_panelblock"}, lambda w: (
            f"{_product(w)}panel-rules/", {"pinned": [w["pair"].product_b_id], "blocked": []}, "json"))],
    ("categoryrule-list", "post"): [
        ("add-category-rule", {"catalog.add_categoryrule"}, lambda w: (
            "/api/v1/category-rules/", {"category": w["category"].pk, "hidden": w["other_category"].pk}, "json"))],
    ("categoryrule-detail", "delete"): [
        ("delete-category-rule", {"catalog.delete_categoryrule"}, lambda w: (
            f"/api/v1/category-rules/{w['rule'].pk}/", None, None))],
    ("duplicate-reopen", "post"): [
        ("reopen", {"catalog.change_duplicatepair"}, lambda w: (
            f"/api/v1/duplicates/{w['pair'].pk}/reopen/", None, None))],
}
SCENARIOS = [pytest.param(endpoint, needs, build, id=name)
             for endpoint, scenarios in WRITES.items() for name, needs, build in scenarios]


@pytest.fixture
def world(tmp_path):
    category = CategoryFactory()
    product = ProductFactory(category=category, title="Untouched")
    image = ProductImageFactory(product=product, seed=10)
    artifacts = tmp_path / "model-files"
    artifacts.mkdir()
    version = {"backbone": "resnet50:random:32", "weights": "random", "input_size": 32, "artifacts": str(artifacts)}
    other = ProductFactory(category=category, title="Its twin")
    pair = DuplicatePair.objects.create(product_a=product, product_b=other, kind="near", distance=12)
    other_category = CategoryFactory()
    rule = CategoryRule.objects.create(category=other_category, hidden=category)
    return {"category": category, "product": product, "image": image, "pair": pair,
            "other_category": other_category, "rule": rule,
            "active": ModelVersion.objects.create(status="active", **version),
            "retired": ModelVersion.objects.create(status="retired", **version)}


def _state(settings):
    """Everything a write could change: the rows of both apps and the stored files."""
    return {"products": list(Product.objects.order_by("pk").values()),
            "images": list(ProductImage.objects.order_by("pk").values()),
            "versions": list(ModelVersion.objects.order_by("pk").values("pk", "status", "activated_at")),
            "pairs": list(DuplicatePair.objects.order_by("pk").values()),
            "rules": [list(CategoryRule.objects.order_by("pk").values_list("pk", "category", "hidden")),
                      list(PanelPin.objects.order_by("pk").values_list("product", "pinned"))],
            "files": media_files(settings)}


def _staff_client(*permissions, name="staffer"):
    user = get_user_model().objects.create_user(name, f"{name}@example.com", PASSWORD, is_staff=True)
    return _client_for(grant(user, *permissions))


def _send(client, method, build, world):
    url, data, fmt = build(world)
    return getattr(client, method)(url, data, format=fmt) if data is not None else getattr(client, method)(url)


def test_every_write_endpoint_is_listed():
    assert _api_write_endpoints() == set(WRITES)


@pytest.mark.parametrize("endpoint,needs,build", SCENARIOS)
def test_a_view_only_staff_user_is_refused_and_nothing_changes(endpoint, needs, build, world, settings):
    viewer = _staff_client(*app_permissions(prefix="view_"), name="viewer")
    before = _state(settings)
    response = _send(viewer, endpoint[1], build, world)
    assert response.status_code == 403, response.content[:300]
    body = response.json()
    assert body["code"] == "permission_denied"
    missing = [name for name in sorted(needs) if f'"{name}"' in body["detail"]]
    assert missing, body["detail"]  # it names what is missing
    assert _state(settings) == before


@pytest.mark.parametrize("endpoint,needs,build", SCENARIOS)
def test_exactly_the_needed_permissions_succeed_and_one_less_is_refused(endpoint, needs, build, world, settings):
    for lacking in sorted(needs):
        client = _staff_client(*(needs - {lacking}), name=f"lacks-{lacking.split('.')[1]}")
        before = _state(settings)
        response = _send(client, endpoint[1], build, world)
        assert response.status_code == 403, (lacking, response.content[:300])
        assert f'"{lacking}"' in response.json()["detail"]
        assert _state(settings) == before, lacking
    before = _state(settings)
    response = _send(_staff_client(*needs, name="exact"), endpoint[1], build, world)
    assert 200 <= response.status_code < 300, response.content[:300]
    assert _state(settings) != before


@pytest.mark.parametrize("endpoint,needs,build", SCENARIOS[:1] + SCENARIOS[-3:])
def test_a_user_who_is_not_staff_is_refused_as_before_even_with_the_permission(endpoint, needs, build, world):
    user = get_user_model().objects.create_user("holder", password=PASSWORD)
    response = _send(_client_for(grant(user, *needs)), endpoint[1], build, world)
    assert response.status_code == 403
    assert "Staff only" in response.json()["detail"]


def test_a_superuser_holds_every_permission(world, settings):
    admin = get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)
    response = _client_for(admin).patch(_product(world), {"title": "By root"}, format="json")
    assert response.status_code == 200 and response.json()["title"] == "By root"


# --------------------------------------------------------------------------- reads for staff


def test_model_versions_need_the_view_permission_or_the_change_one(world):
    urls = ["/api/v1/model-versions/", f"/api/v1/model-versions/{world['active'].pk}/",
            f"/api/v1/model-versions/{world['active'].pk}/progress/"]
    nothing = _staff_client(name="nothing")
    for url in urls:
        response = nothing.get(url)
        assert response.status_code == 403, url
        assert '"recommender.view_modelversion"' in response.json()["detail"]
    # As in the admin, the change permission includes viewing.
    for permission in ("recommender.view_modelversion", "recommender.change_modelversion"):
        client = _staff_client(permission, name=permission.split(".")[1])
        assert [client.get(url).status_code for url in urls] == [200, 200, 200]


def test_hidden_products_are_shown_to_staff_who_may_view_products_only(world):
    hidden = ProductFactory(category=world["category"], is_active=False)
    detail = f"/api/v1/products/{hidden.pk}/"
    nothing = _staff_client(name="nothing")
    assert nothing.get(detail).status_code == 404
    assert hidden.pk not in [p["id"] for p in nothing.get("/api/v1/products/").json()["results"]]
    assert nothing.get(f"{detail}similar/").status_code == 404
    viewer = _staff_client("catalog.view_product", name="viewer")
    assert viewer.get(detail).status_code == 200
    assert hidden.pk in [p["id"] for p in viewer.get("/api/v1/products/").json()["results"]]
    assert viewer.get(f"{detail}similar/").status_code == 200
