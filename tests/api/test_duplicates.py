"""The possible duplicates over the API (catalog/api/duplicates.py): staff with the permissions see
the list and decide; others are refused; decisions and merges go through the services."""

import pytest
from django.contrib.auth import get_user_model

from catalog.models import DuplicatePair, Product
from tests.api.conftest import PASSWORD, _client_for, grant
from tests.catalog.test_duplicates import encoded, photo, process, product_with

pytestmark = pytest.mark.django_db
URL = "/api/v1/duplicates/"


@pytest.fixture
def pairs():
    source = product_with(encoded(photo(1)))
    copy = product_with(encoded(photo(1).resize((100, 90)), "JPEG", quality=50))
    twin = product_with(encoded(photo(1)))
    other = product_with(encoded(photo(2)))
    process(source, copy, twin, other)
    return source, copy, twin, other


def test_staff_list_open_pairs_closest_first_with_both_pictures(staff_client, pairs):
    source, copy, twin, _ = pairs
    body = staff_client.get(URL).json()
    assert body["count"] == 3  # source, copy and twin pair with each other; the other photo with none
    first = body["results"][0]
    assert first["kind"] == "exact" and first["distance"] == 0 and first["status"] == "open"
    assert {first["product_a"]["id"], first["product_b"]["id"]} == {source.pk, twin.pk}
    assert first["product_a"]["picture"].startswith("http") and first["product_a"]["sku"] == source.sku
    assert [r["distance"] for r in body["results"]] == sorted(r["distance"] for r in body["results"])
    assert staff_client.get(URL, {"kind": "near"}).json()["count"] == 2
    assert staff_client.get(URL, {"status": "bogus"}).status_code == 400


def test_decisions_and_merge_over_the_api(staff_client, pairs):
    source, copy, twin, _ = pairs
    near = DuplicatePair.objects.get(product_a=source, product_b=copy)
    answer = staff_client.post(f"{URL}{near.pk}/not-duplicate/")
    assert answer.status_code == 200 and answer.json()["status"] == "not_duplicate"
    assert staff_client.get(URL).json()["count"] == 2
    exact = DuplicatePair.objects.get(kind="exact")
    assert staff_client.post(f"{URL}{exact.pk}/merge/", {"keep": copy.pk}, format="json").status_code == 400
    merged = staff_client.post(f"{URL}{exact.pk}/merge/", {"keep": source.pk}, format="json")
    assert merged.status_code == 200 and merged.json()["status"] == "merged" and merged.json()["kept"] == source.pk
    assert not Product.objects.get(pk=twin.pk).is_active
    conflict = staff_client.post(f"{URL}{exact.pk}/ignore/")
    assert conflict.status_code == 409 and "merged" in conflict.json()["detail"]
    near.refresh_from_db()
    assert near.decided_by_id == staff_client.user.pk


def test_refusals(anon_client, user_client, pairs):
    pair = DuplicatePair.objects.first()
    assert anon_client.get(URL).status_code == 401
    assert user_client.get(URL).status_code == 403
    reader = get_user_model().objects.create_user("rita", "r@example.com", PASSWORD, is_staff=True)
    client = _client_for(grant(reader, "catalog.view_duplicatepair"))
    assert client.get(URL).status_code == 200
    refused = client.post(f"{URL}{pair.pk}/ignore/")
    assert refused.status_code == 403 and "catalog.change_duplicatepair" in refused.json()["detail"]
    decider = _client_for(grant(get_user_model().objects.create_user("dan", "d@example.com", PASSWORD, is_staff=True),
                                "catalog.change_duplicatepair"))
    merge = decider.post(f"{URL}{pair.pk}/merge/", {"keep": pair.product_a_id}, format="json")
    assert merge.status_code == 403 and "catalog.change_product" in merge.json()["detail"]
    assert DuplicatePair.objects.get(pk=pair.pk).status == "open"
