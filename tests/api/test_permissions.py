"""Every endpoint of the schema as anonymous, ordinary user and staff: public reads are open, and
everything else is staff-only (a new endpoint that is not listed as public here must refuse)."""

import pytest
from django.urls import reverse

from recommender.models import ModelVersion
from tests.factories import CategoryFactory, ProductFactory, ProductImageFactory

pytestmark = pytest.mark.django_db

PUBLIC = {
    ("get", "/api/v1/categories/"), ("get", "/api/v1/categories/{id}/"),
    ("get", "/api/v1/products/"), ("get", "/api/v1/products/{id}/"), ("get", "/api/v1/products/{id}/similar/"),
    ("post", "/api/v1/search/image/"), ("get", "/api/v1/health/"), ("post", "/api/v1/auth/token/"),
    ("post", "/api/v1/events/click/"),
}


@pytest.fixture
def operations(anon_client):
    schema = anon_client.get(reverse("api:schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    found = [(method, path) for path, item in schema["paths"].items() for method in item]
    # Deletions last: the other requests need the objects.
    return sorted(found, key=lambda op: op[0] == "delete")


def concrete(path, objects):
    if path.startswith("/api/v1/categories/"):
        return path.replace("{id}", str(objects["category"]))
    if path.startswith("/api/v1/model-versions/"):
        return path.replace("{id}", str(objects["version"]))
    return path.replace("{image_id}", str(objects["image"])).replace("{id}", str(objects["product"]))


def test_every_endpoint_for_every_kind_of_caller(clients, operations):
    product = ProductFactory(category=CategoryFactory())
    image = ProductImageFactory(product=product, seed=1)
    version = ModelVersion.objects.create(status="failed", backbone="b", weights="random", input_size=32)
    objects = {"category": product.category_id, "product": product.pk, "image": image.pk, "version": version.pk}
    assert len(operations) >= 20
    assert PUBLIC <= set(operations), "a public endpoint is missing from the schema"
    for method, path in operations:
        url = concrete(path, objects)
        for who in ("anonymous", "user", "staff"):
            send = getattr(clients[who], method)
            response = send(url) if method == "get" else send(url, {}, format="json")
            code = response.status_code
            if (method, path) in PUBLIC or who == "staff":
                assert code not in (401, 403), (who, method, path, response.content[:300])
                assert code < 500, (who, method, path)
            else:
                assert code == (401 if who == "anonymous" else 403), (who, method, path, code)
                assert response.json()["status"] == code
