"""The similar-items API, measured: each answer (fresh or from the cache) records one view with
what answered, each result carries a click token that POST /api/v1/events/click/ counts once for
its product, X-Visitor-Id puts a storefront's shopper in an experiment consistently, DNT records
nothing, and staff's reads are not counted."""

import pytest
from django.urls import reverse

from catalog.models import Product
from recommender.models import PanelEvent
from recommender.services import events
from tests.recommender.helpers import experiment_between_two_versions, retired_and_active

pytestmark = pytest.mark.django_db
CLICK = "/api/v1/events/click/"


def similar(client, product, **headers):
    return client.get(reverse("api:product-similar", args=[product.pk]), headers=headers)


def test_views_clicks_and_experiments_through_the_api(anon_client, admin_client, settings):
    old, new, experiment, shopper = experiment_between_two_versions(settings, visitor_prefix="shopper-")
    product = Product.objects.order_by("id").first()

    for arm, version in (("a", new), ("b", old)):
        bodies = [similar(anon_client, product, **{"X-Visitor-Id": shopper[arm]}).json() for _ in range(2)]
        assert bodies[0] == bodies[1] and bodies[0]["model_version"]["id"] == version.pk  # the second cached
        assert bodies[0]["tracking"] == {"experiment": experiment.pk, "arm": arm, "rules": ""}
        result = bodies[0]["results"][1]
        click = {"token": result["click_token"], "product": result["product"]["id"]}
        assert anon_client.post(CLICK, click, format="json", headers={"X-Visitor-Id": shopper[arm]}).status_code == 204
    outside = similar(anon_client, product).json()  # no visitor id: outside the experiment
    assert outside["tracking"]["arm"] == "" and outside["model_version"]["id"] == new.pk
    assert similar(anon_client, product, DNT="1").status_code == 200
    assert similar(admin_client, product, **{"X-Visitor-Id": shopper["a"]}).status_code == 200

    assert events.panel_events_flush() == 7  # 2 views an arm, 1 click an arm, 1 view outside
    views = PanelEvent.objects.filter(kind=PanelEvent.Kind.VIEW, channel="api")
    assert sorted(views.values_list("arm", "visitor")) == [
        ("", ""), ("a", shopper["a"]), ("a", shopper["a"]), ("b", shopper["b"]), ("b", shopper["b"])]
    assert all(len(v.shown) == 6 for v in views)
    clicks = PanelEvent.objects.filter(kind=PanelEvent.Kind.CLICK)
    assert sorted(clicks.values_list("arm", "version_id", "position")) == [("a", new.pk, 2), ("b", old.pk, 2)]


def test_a_click_token_counts_only_for_its_product(anon_client, settings):
    retired_and_active(settings)
    first, other = Product.objects.order_by("id")[:2]
    result = similar(anon_client, first).json()["results"][0]
    wrong = anon_client.post(CLICK, {"token": result["click_token"], "product": result["product"]["id"] + 10_000},
                             format="json")
    assert wrong.status_code == 400 and "Not a click token of this product" in wrong.content.decode()
    assert anon_client.post(CLICK, {"token": "1.2.0.-.-.1~abc", "product": 1}, format="json").status_code == 400
    assert anon_client.post(CLICK, {"product": 1}, format="json").status_code == 400
    events.panel_events_flush()
    assert not PanelEvent.objects.filter(kind=PanelEvent.Kind.CLICK).exists()
