"""The recommender's REST API (recommender/api/): similar items, search by photo, and the model
versions with training control. Clients and catalogs: tests/api/conftest.py."""

import pytest
from django.core.cache import cache

from catalog.models import DuplicatePair, ProductImage
from recommender.models import ModelVersion
from tests.api.conftest import media_files, png
from tests.factories import ProductFactory, upload

pytestmark = pytest.mark.django_db

SEARCH = "/api/v1/search/image/"
VERSIONS = "/api/v1/model-versions/"


def similar(client, product, **params):
    return client.get(f"/api/v1/products/{product.pk}/similar/", params)


# --------------------------------------------------------------------------- similar items


def test_similar_without_features_answers_none(anon_client):
    product = ProductFactory()
    body = similar(anon_client, product).json()
    assert body == {"product": product.pk, "source": "none", "model_version": None, "results": [],
                    "tracking": {"experiment": None, "arm": "", "rules": ""}}


def test_similar_cold_start_uses_backbone_features_and_is_public(clients, small_catalog):
    product = small_catalog[0]
    for who, client in clients.items():
        response = similar(client, product, k=4)
        assert response.status_code == 200, who
        body = response.json()
        assert body["source"] == "backbone" and body["model_version"] is None
        assert len(body["results"]) == 4
        assert product.pk not in [r["product"]["id"] for r in body["results"]]
        distances = [r["distance"] for r in body["results"]]
        assert distances == sorted(distances)
        item = body["results"][0]["product"]
        assert set(item) == {"id", "sku", "title", "category", "price", "in_stock", "thumbnail", "url"}
        assert item["thumbnail"].startswith("http://testserver/media/") and item["thumbnail"].endswith(".webp")


def test_similar_with_the_active_model_and_filters(anon_client, trained_catalog):
    products, version = trained_catalog
    product = products[0]
    body = similar(anon_client, product, k=6).json()
    assert body["source"] == "model"
    assert body["model_version"]["id"] == version.pk and body["model_version"]["status"] == "active"
    assert body["model_version"]["backbone"] == version.backbone
    assert len(body["results"]) == 6

    same = similar(anon_client, product, k=20, same_category="true").json()["results"]
    predicted = set(version.embeddings.filter(product_id__in=[r["product"]["id"] for r in same])
                    .values_list("predicted", flat=True))
    mine = version.embeddings.get(product=product).predicted
    assert predicted == {mine}

    other = next(p.category for p in products if p.category != product.category)
    in_category = similar(anon_client, product, k=20, category=other.pk).json()["results"]
    assert in_category and {r["product"]["category"]["id"] for r in in_category} == {other.pk}

    prices = sorted(float(p.price) for p in products)
    low, high = prices[3], prices[-4]
    priced = similar(anon_client, product, k=20, min_price=low, max_price=high).json()["results"]
    assert priced and all(low <= float(r["product"]["price"]) <= high for r in priced)
    # The issue's own URL form: empty values mean "no filter".
    response = anon_client.get(f"/api/v1/products/{product.pk}/similar/?k=3&same_category=true&category="
                               "&min_price=&max_price=")
    assert response.status_code == 200 and len(response.json()["results"]) == 3


def test_an_anonymous_answer_is_served_again_with_one_query_until_another_version_serves(
        anon_client, trained_catalog):
    """recommender.selectors.answers: the active version's stamp and the shown products' hashes are
    read in one query; another version activated (or the same row changed in what an answer
    shows) is seen at once."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    products, version = trained_catalog
    first = similar(anon_client, products[0], k=6).json()
    with CaptureQueriesContext(connection) as queries:
        again = similar(anon_client, products[0], k=6).json()
    assert again == first
    assert len(queries) == 1, [q["sql"] for q in queries.captured_queries]
    ModelVersion.objects.filter(pk=version.pk).update(kind="backbone")  # shown in the answer's version
    changed = similar(anon_client, products[0], k=6).json()
    assert changed["model_version"]["id"] == version.pk and changed != first
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.RETIRED)
    assert similar(anon_client, products[0], k=6).json()["source"] != "model"


@pytest.mark.parametrize("params, field, code", [
    ({"k": "0"}, "k", "min_value"),
    ({"k": "51"}, "k", "max_value"),
    ({"k": "many"}, "k", "invalid"),
    ({"category": "999999"}, "category", "does_not_exist"),
    ({"min_price": "-1"}, "min_price", "min_value"),
    ({"min_price": "9", "max_price": "1"}, "min_price", "invalid_range"),
    ({"same_category": "maybe"}, "same_category", "invalid"),
])
def test_similar_rejects_bad_parameters(anon_client, params, field, code):
    response = similar(anon_client, ProductFactory(), **params)
    assert response.status_code == 400
    assert [(e["field"], e["code"]) for e in response.json()["errors"]] == [(field, code)]


def test_similar_of_unknown_or_inactive_product_is_404(clients):
    hidden = ProductFactory(is_active=False)
    response = clients["anonymous"].get("/api/v1/products/999999/similar/")
    assert response.status_code == 404 and response.json()["detail"] == "No active product with id 999999."
    assert similar(clients["anonymous"], hidden).status_code == 404
    assert similar(clients["staff"], hidden).status_code == 200


def test_similar_is_read_only_and_has_format_suffixes(clients):
    product = ProductFactory()
    url = f"/api/v1/products/{product.pk}/similar/"
    # Writes are refused like on the product's own routes: 401 before the method is looked at.
    assert clients["anonymous"].post(url).status_code == 401
    assert clients["user"].post(url).status_code == 403
    assert clients["staff"].post(url).status_code == 405
    response = clients["anonymous"].get(f"/api/v1/products/{product.pk}/similar.json")
    assert response.status_code == 200 and response.json()["product"] == product.pk


def test_progress_in_the_api_is_the_dashboards_representation(staff_client):
    from recommender.selectors.versions import version_progress

    version = ModelVersion.objects.create(
        status="training", backbone="resnet50:random-seed1:32", weights="random", input_size=32,
        progress={"phase": "training", "epoch": 3, "epochs": 8, "accuracy": 0.51234, "eta_seconds": 12.34})
    body = staff_client.get(f"{VERSIONS}{version.pk}/progress/").json()
    expected = version_progress(version)
    assert body["accuracy"] == expected["accuracy"] == 0.5123 and body["eta_seconds"] == 12.3
    assert {k: body[k] for k in body if k != "heartbeat_at"} == {k: expected[k] for k in body if k != "heartbeat_at"}


# --------------------------------------------------------------------------- search by image


def test_search_by_image_with_the_active_model(clients, trained_catalog, fashion_mnist, settings):
    products, version = trained_catalog
    (x_train, _), _ = fashion_mnist
    before = (media_files(settings), ProductImage.objects.count())
    for who, client in clients.items():
        response = client.post(SEARCH, {"image": upload(png(x_train[0])), "k": 5}, format="multipart")
        assert response.status_code == 200, (who, response.json())
        body = response.json()
        assert body["source"] == "model" and body["model_version"]["id"] == version.pk
        assert body["predicted"] in version.classes
        assert body["predicted_category"]["name"] == body["predicted"]
        assert list(body["probabilities"]) [0] == body["predicted"]
        assert set(body["probabilities"]) == set(version.classes)
        assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        assert len(body["results"]) == 5
    # Filters as for similar items.
    category = products[0].category
    response = clients["anonymous"].post(SEARCH, {"image": upload(png(x_train[1])), "k": 30,
                                                  "category": category.pk}, format="multipart")
    assert {r["product"]["category"]["id"] for r in response.json()["results"]} == {category.pk}
    assert (media_files(settings), ProductImage.objects.count()) == before  # nothing stored


def test_search_by_image_is_503_when_the_model_files_cannot_be_loaded(anon_client, trained_catalog, fashion_mnist,
                                                                    settings):
    import shutil

    from recommender import runtime

    _, version = trained_catalog
    (x_train, _), _ = fashion_mnist
    shutil.rmtree(settings.MODELS_STORAGE_ROOT)  # a lost bucket, a half-restored backup
    shutil.rmtree(runtime.artifacts_dir(version.pk))
    runtime.forget_head(version.pk)
    response = anon_client.post(SEARCH, {"image": upload(png(x_train[0]))}, format="multipart")
    assert response.status_code == 503
    assert response.json()["code"] == "search_unavailable" and "try again" in response.json()["detail"]


def test_search_by_image_filters_same_category_and_price(anon_client, trained_catalog, fashion_mnist):
    products, version = trained_catalog
    (x_train, _), _ = fashion_mnist

    def search(**params):
        response = anon_client.post(SEARCH, {"image": upload(png(x_train[0])), "k": 30, **params}, format="multipart")
        assert response.status_code == 200, response.json()
        return response.json()

    def predicted_of(results):
        ids = [r["product"]["id"] for r in results]
        return set(version.embeddings.filter(product_id__in=ids).values_list("predicted", flat=True))

    # Staff said none of these is a duplicate of another (Fashion-MNIST has near-identical photos of
    # distinct products): else a pair's farther product is left out (catalog.duplicates).
    DuplicatePair.objects.update(status=DuplicatePair.Status.NOT_DUPLICATE)
    everything = search()
    assert len(everything["results"]) == len(products)  # unfiltered, k=30 returns the whole catalog
    assert len(predicted_of(everything["results"])) > 1

    same = search(same_category="true")
    assert same["results"] and len(same["results"]) < len(products)
    assert predicted_of(same["results"]) == {same["predicted"]} == {everything["predicted"]}

    prices = sorted(float(p.price) for p in products)
    low, high = prices[3], prices[-4]
    above = search(min_price=low)["results"]
    assert above and all(float(r["product"]["price"]) >= low for r in above)
    assert len(above) == sum(1 for p in prices if p >= low)
    below = search(max_price=high)["results"]
    assert below and all(float(r["product"]["price"]) <= high for r in below)
    assert len(below) == sum(1 for p in prices if p <= high)
    between = search(min_price=low, max_price=high, same_category="true")["results"]
    assert all(low <= float(r["product"]["price"]) <= high for r in between)
    assert {r["product"]["id"] for r in between} <= {r["product"]["id"] for r in same["results"]}


@pytest.mark.parametrize("params, field, code", [
    ({"min_price": "9", "max_price": "1"}, "min_price", "invalid_range"),
    ({"min_price": "-1"}, "min_price", "min_value"),
    ({"max_price": "cheap"}, "max_price", "invalid"),
    ({"same_category": "maybe"}, "same_category", "invalid"),
])
def test_search_by_image_rejects_bad_filters(anon_client, params, field, code):
    response = anon_client.post(SEARCH, {"image": upload(png((8, 8))), **params}, format="multipart")
    assert response.status_code == 400
    assert [(e["field"], e["code"]) for e in response.json()["errors"]] == [(field, code)]


def test_search_by_image_before_any_model_uses_backbone_features(anon_client, small_catalog):
    response = anon_client.post(SEARCH, {"image": upload(png((40, 40)))}, format="multipart")
    body = response.json()
    assert response.status_code == 200
    assert body["source"] == "backbone" and body["predicted"] is None and body["probabilities"] == {}
    assert body["predicted_category"] is None and len(body["results"]) == 6


@pytest.mark.parametrize("case", ["not_an_image", "too_large", "too_many_pixels", "empty", "missing"])
def test_search_by_image_rejects_bad_uploads(anon_client, settings, case):
    data = {"k": 3}
    if case == "too_large":
        settings.MAX_UPLOAD_BYTES = 100
        data["image"] = upload(png((50, 50), colour=None) + b"\0" * 200)
    elif case == "too_many_pixels":
        settings.MAX_IMAGE_PIXELS = 100
        data["image"] = upload(png((11, 10)))
    elif case == "empty":
        data["image"] = upload(b"")
    elif case == "not_an_image":
        data["image"] = upload(b"%PDF-1.4 this is a document", "doc.pdf", "application/pdf")
    response = anon_client.post(SEARCH, data, format="multipart")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == ("required" if case == "missing" else case)
    assert body["errors"][0]["field"] == "image"
    assert body["detail"].startswith("image: ")
    assert media_files(settings) == []


def test_search_by_image_needs_multipart(anon_client):
    response = anon_client.post(SEARCH, {"image": "aGVsbG8="}, format="json")
    assert response.status_code == 415


def _throttle(settings, **rates):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
                                                          **rates}}


def test_search_by_image_is_throttled_per_anonymous_client_in_redis(anon_client, settings, user_client):
    _throttle(settings, image_search_anon="2/min", image_search_user="3/min")
    bad = lambda: {"image": upload(b"nope")}  # noqa: E731 - cheap requests; the throttle runs first
    assert [anon_client.post(SEARCH, bad(), format="multipart").status_code for _ in range(2)] == [400, 400]
    throttled = anon_client.post(SEARCH, bad(), format="multipart")
    assert throttled.status_code == 429
    assert 0 < int(throttled["Retry-After"]) <= 60
    body = throttled.json()
    assert body["status"] == 429 and body["code"] == "throttled" and "seconds" in body["detail"]
    # The history lives in the shared cache's Redis (a sorted set per window), keyed by client address.
    key = cache.make_key("throttle_image_search_anon_127.0.0.1")
    assert cache._cache.get_client(key).zcard(key) == 2
    # Another client address, and a signed-in user, have their own budgets.
    other = anon_client.post(SEARCH, bad(), format="multipart", REMOTE_ADDR="10.1.2.3")
    assert other.status_code == 400
    codes = [user_client.post(SEARCH, bad(), format="multipart").status_code for _ in range(4)]
    assert codes == [400, 400, 400, 429]


# --------------------------------------------------------------------------- model versions


def test_model_versions_are_staff_only(clients):
    version = ModelVersion.objects.create(status="failed", backbone="b", weights="random", input_size=32)
    urls = [("get", VERSIONS), ("get", f"{VERSIONS}{version.pk}/"), ("get", f"{VERSIONS}{version.pk}/progress/"),
            ("post", f"{VERSIONS}train/"), ("post", f"{VERSIONS}{version.pk}/activate/"),
            ("post", f"{VERSIONS}{version.pk}/retire/")]
    for method, url in urls:
        anon = getattr(clients["anonymous"], method)(url)
        assert anon.status_code == 401, url
        assert anon["WWW-Authenticate"] == "Token"
        assert anon.json()["code"] == "not_authenticated"
        user = getattr(clients["user"], method)(url)
        assert user.status_code == 403, url
        assert user.json()["code"] == "permission_denied" and "Staff only" in user.json()["detail"]
    assert ModelVersion.objects.count() == 1


def test_model_version_list_detail_and_training_control(staff_client, trained_catalog, settings):
    products, version = trained_catalog
    listing = staff_client.get(VERSIONS).json()
    assert listing["count"] == 1
    item = listing["results"][0]
    assert item["id"] == version.pk and item["status"] == "active"
    assert item["backbone"] == version.backbone and item["weights"] == "random"
    assert item["uses_random_weights"] is True
    assert "metrics" not in item and "history" not in item
    assert staff_client.get(VERSIONS, {"status": "failed"}).json()["count"] == 0
    assert staff_client.get(VERSIONS, {"status": "bogus"}).status_code == 400

    detail = staff_client.get(f"{VERSIONS}{version.pk}/").json()
    assert set(detail["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(detail["history"]["loss"]) == 4
    assert 0 <= detail["metrics"]["accuracy"] <= 1 and "precision_at_6" in detail["metrics"]
    assert "holdout_image_ids" not in detail["metrics"]
    assert detail["hyperparameters"]["epochs"] == 4
    assert detail["progress"]["phase"] == "done" and detail["progress"]["running"] is False

    # Start a retraining (queued for a worker; none runs here), then ask again: the same version.
    started = staff_client.post(f"{VERSIONS}train/", {"reason": "new stock"}, format="json")
    assert started.status_code == 202
    new = started.json()
    assert new["status"] == "training" and new["trigger"] == "api (sam): new stock"
    assert new["progress"] == {**new["progress"], "running": True, "phase": "queued"}
    again = staff_client.post(f"{VERSIONS}train/", {}, format="json")
    assert again.status_code == 200 and again.json()["id"] == new["id"]

    # A training reports its progress.
    ModelVersion.objects.filter(pk=new["id"]).update(progress={
        "phase": "embedding", "epoch": 4, "epochs": 4, "images_embedded": 10, "images_total": 24,
        "eta_seconds": 3.5})
    progress = staff_client.get(f"{VERSIONS}{new['id']}/progress/").json()
    assert progress["phase"] == "embedding" and progress["epoch"] == 4
    assert (progress["images_embedded"], progress["images_total"], progress["eta_seconds"]) == (10, 24, 3.5)
    # A training version can be neither activated nor retired.
    conflict = staff_client.post(f"{VERSIONS}{new['id']}/activate/")
    assert conflict.status_code == 409 and conflict.json()["code"] == "conflict"
    assert "ready or retired" in conflict.json()["detail"]
    assert staff_client.post(f"{VERSIONS}{new['id']}/retire/").status_code == 409
    ModelVersion.objects.filter(pk=new["id"]).delete()

    # Retire the active version: similar items fall back to backbone features; activate it again.
    retired = staff_client.post(f"{VERSIONS}{version.pk}/retire/")
    assert retired.status_code == 200 and retired.json()["status"] == "retired"
    assert similar(staff_client, products[0]).json()["source"] == "backbone"
    activated = staff_client.post(f"{VERSIONS}{version.pk}/activate/")
    assert activated.status_code == 200 and activated.json()["status"] == "active"
    assert similar(staff_client, products[0]).json()["model_version"]["id"] == version.pk
    assert staff_client.get(f"{VERSIONS}999999/").status_code == 404
    assert staff_client.post(f"{VERSIONS}999999/activate/").status_code == 404


def test_a_training_reason_that_is_not_a_string_is_refused(staff_client):
    from recommender.models import ModelVersion

    response = staff_client.post(f"{VERSIONS}train/", {"reason": 3.4e278}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "reason", "code": "invalid", "message": "Not a valid string."}]
    assert not ModelVersion.objects.exists()
