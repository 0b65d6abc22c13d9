"""The product page's panel, measured: its beacon counts a view, its links count clicks, Do Not
Track is honoured, a forged token counts nothing, and an A/B experiment answers each visitor by
its arm, consistently, cached per arm (real catalog, versions, Redis buffer and PostgreSQL)."""

import re
from html import unescape

import pytest
from django.contrib.auth.models import User

from catalog import merchandising
from catalog.models import Product
from recommender.models import PanelEvent
from recommender.selectors.events import VISITOR_COOKIE
from recommender.services import events
from tests.recommender.helpers import experiment_between_two_versions, trained_catalog

pytestmark = pytest.mark.django_db


def beacon_and_links(html: str) -> tuple[str, list[str]]:
    beacon = unescape(re.search(r'<img class="beacon" src="([^"]+)"', html).group(1))
    section = html[html.index('id="similar"'):]
    links = [unescape(h) for h in re.findall(r'<a class="card" href="([^"]+)"', section)]
    return beacon, links


def test_a_view_and_a_click_are_recorded_with_what_answered(client, settings):
    version = trained_catalog(settings, count=60)
    product = Product.objects.order_by("id").first()
    pin = Product.objects.order_by("-id").first()
    merchandising.product_rules_set(product=product, pinned=[pin.pk], blocked=[])
    html = client.get(product.get_absolute_url()).content.decode()
    beacon, links = beacon_and_links(html)
    assert len(links) == 6 and all("?via=" in link for link in links)
    assert f'<link rel="canonical" href="{product.get_absolute_url()}">' in html and 'rel="nofollow"' in html
    seen = client.get(beacon)
    assert seen.status_code == 200 and seen["Content-Type"] == "image/gif"
    visitor = seen.cookies[VISITOR_COOKIE].value
    assert re.fullmatch(r"[0-9a-f]{32}", visitor) and seen.cookies[VISITOR_COOKIE]["httponly"]
    assert client.get(links[2]).status_code == 200  # the third product, from the panel
    assert client.get(links[2]).status_code == 200 and client.get(beacon).status_code == 200  # reloads: not again
    assert PanelEvent.objects.count() == 0  # buffered, not written on the request
    assert events.panel_events_flush() == 2
    view = PanelEvent.objects.get(kind=PanelEvent.Kind.VIEW)
    click = PanelEvent.objects.get(kind=PanelEvent.Kind.CLICK)
    target = int(re.search(r"/p/(\d+)/", links[2]).group(1))
    assert (view.product_id, view.version_id, view.visitor, view.arm) == (product.pk, version.pk, visitor, "")
    assert view.rules == merchandising.panel_rules(product=product).fingerprint() and len(view.rules) == 8
    assert view.shown[0] == pin.pk
    assert len(view.shown) == 6 and view.shown[2] == target
    assert (click.product_id, click.target_id, click.position, click.visitor) == (product.pk, target, 3, visitor)


def test_forged_tokens_crawlers_and_do_not_track_count_nothing(client, settings):
    trained_catalog(settings, count=60)
    product = Product.objects.order_by("id").first()
    beacon, links = beacon_and_links(client.get(product.get_absolute_url()).content.decode())
    other = Product.objects.exclude(pk=product.pk).order_by("-id").first()
    client.cookies[VISITOR_COOKIE] = "b" * 32
    moved = re.sub(r"/p/\d+/", f"/p/{other.pk}/", links[0])  # a token on another product's page
    assert client.get(moved).status_code == 200
    assert client.get(beacon.replace("t=", "t=9")).status_code == 200  # a tampered view token
    client.cookies.pop(VISITOR_COOKIE)
    assert client.get(links[0]).status_code == 200  # a crawler: no visitor id, so no click
    dnt = client.get(beacon, HTTP_DNT="1")
    assert dnt.status_code == 200 and VISITOR_COOKIE not in dnt.cookies
    client.cookies[VISITOR_COOKIE] = "a" * 32
    client.get(links[0], HTTP_SEC_GPC="1")
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)  # staff browsing the shop: not a shopper
    client.get(beacon)
    client.get(links[0])
    assert events.panel_events_flush() == 0


def test_an_experiment_answers_each_visitor_by_its_arm(client, settings):
    old, new, experiment, visitors = experiment_between_two_versions(settings, visitor_prefix="0" * 24)
    product = Product.objects.order_by("id").first()
    for arm, version in (("a", new), ("b", old)):
        client.cookies[VISITOR_COOKIE] = visitors[arm]
        pages = [client.get(product.get_absolute_url()).content.decode() for _ in range(2)]
        assert pages[0] == pages[1]  # the same arm every time (the second from the page cache)
        assert f"Model v{version.pk} " in pages[0]
        beacon, links = beacon_and_links(pages[0])
        client.get(beacon)
        client.get(links[0])
    client.cookies.pop(VISITOR_COOKIE)
    assert f"Model v{new.pk} " in client.get(product.get_absolute_url()).content.decode()  # no id yet: outside
    events.panel_events_flush()
    rows = set(PanelEvent.objects.values_list("kind", "arm", "version_id", "experiment_id"))
    assert rows == {(1, "a", new.pk, experiment.pk), (2, "a", new.pk, experiment.pk),
                    (1, "b", old.pk, experiment.pk), (2, "b", old.pk, experiment.pk)}
