"""Panel rules over the API (catalog/api/merchandising.py)."""

import pytest

from catalog.models import CategoryRule
from tests.factories import CategoryFactory, ProductFactory

pytestmark = pytest.mark.django_db


def test_a_products_rules_are_read_and_replaced(staff_client, anon_client):
    product, a, b = ProductFactory(), ProductFactory(), ProductFactory()
    url = f"/api/v1/products/{product.pk}/panel-rules/"
    assert anon_client.get(url).status_code == 401
    assert staff_client.get(url).json() == {"pinned": [], "blocked": [], "hidden_categories": []}
    answer = staff_client.put(url, {"pinned": [b.pk, a.pk], "blocked": []}, format="json")
    assert answer.status_code == 200 and answer.json()["pinned"] == [b.pk, a.pk]
    refused = staff_client.put(url, {"pinned": [product.pk], "blocked": []}, format="json")
    assert refused.status_code == 400 and "own panel" in refused.json()["detail"]
    assert staff_client.get(url).json()["pinned"] == [b.pk, a.pk]  # unchanged
    assert staff_client.put(url, {"pinned": list(range(1, 8)), "blocked": []}, format="json").status_code == 400


def test_category_rules_are_listed_added_once_and_removed(staff_client):
    suits, socks = CategoryFactory(), CategoryFactory()
    for _ in range(2):  # the same pair twice is the same rule
        answer = staff_client.post("/api/v1/category-rules/", {"category": suits.pk, "hidden": socks.pk}, format="json")
        assert answer.status_code == 201
    assert CategoryRule.objects.count() == 1
    listed = staff_client.get("/api/v1/category-rules/").json()
    assert [(r["category"], r["hidden"]) for r in listed] == [(suits.pk, socks.pk)]
    same = staff_client.post("/api/v1/category-rules/", {"category": suits.pk, "hidden": suits.pk}, format="json")
    assert same.status_code == 400
    assert staff_client.delete(f"/api/v1/category-rules/{listed[0]['id']}/").status_code == 204
    assert not CategoryRule.objects.exists()
