"""Staff's rules for the similar-items panels (catalog.merchandising), applied by the real panel
queries (recommender.selectors.similarity) on a real catalog: pins first in order, blocks and
category rules obeyed, still k results, under every version and before any, cache included."""

import pytest
from django.urls import reverse

from catalog import merchandising
from catalog.models import Category, CategoryRule, PanelPin, Product
from recommender.selectors.similarity import similar_products
from tests.recommender.helpers import import_products, process_all, train_inline

pytestmark = pytest.mark.django_db


def panel(product, k=6, **options):
    return [item.product.pk for item in similar_products(product=product, k=k, **options).items]


@pytest.fixture
def catalog_products():
    import_products(60)
    process_all()
    return list(Product.objects.order_by("id"))


def _rules_apply(query, others):
    before = panel(query, use_cache=False)
    far = [p.pk for p in others if p.pk not in before and p.pk != query.pk][:2]
    blocked = before[0]
    merchandising.product_rules_set(product=query, pinned=far, blocked=[blocked])
    after = panel(query)  # through the cache, which the change made stale
    assert after[:2] == far and blocked not in after and len(after) == 6
    items = similar_products(product=query, k=6).items
    assert [i.pinned for i in items] == [True, True, False, False, False, False]
    hidden = next(p.category for p in Product.objects.filter(pk__in=after[2:]) if p.category_id != query.category_id)
    merchandising.category_rule_add(category=query.category, hidden=hidden)
    ruled = panel(query)
    assert len(ruled) == 6 and ruled[:2] == far
    assert not Product.objects.filter(pk__in=ruled[2:], category=hidden).exists()
    return far, blocked


def test_rules_apply_before_any_version_and_under_each_version(settings, catalog_products):
    query, others = catalog_products[0], catalog_products[1:]
    far, blocked = _rules_apply(query, others)  # cold start: no version yet
    first = train_inline(settings, epochs=2)
    assert first.status == "active"
    assert panel(query)[:2] == far and blocked not in panel(query)
    second = train_inline(settings, epochs=2)  # a new version: the rules still hold
    assert second.status == "active" and panel(query)[:2] == far and blocked not in panel(query)
    distances = [i.distance for i in similar_products(product=query, k=6).items[:2]]
    assert all(d is not None and d > 0 for d in distances)  # pinned products keep their real distance


def test_a_hidden_pinned_product_gives_its_place_back(settings, catalog_products):
    query, pin = catalog_products[0], catalog_products[-1]
    assert train_inline(settings, epochs=2).status == "active"
    merchandising.product_rules_set(product=query, pinned=[pin.pk], blocked=[])
    assert panel(query)[0] == pin.pk
    Product.objects.filter(pk=pin.pk).update(is_active=False)
    assert pin.pk not in panel(query) and len(panel(query)) == 6


@pytest.mark.parametrize("pinned,blocked,message", [
    ([1], [], "own panel"), (list(range(2, 9)), [], "at most 6"), ([2, 2], [], "named twice"),
    ([2], [2], "pinned and blocked"), ([999999], [], "no such product")])
def test_bad_rules_are_refused_and_change_nothing(catalog_products, pinned, blocked, message):
    query = catalog_products[0]
    ids = {i + 1: p.pk for i, p in enumerate(catalog_products[:9])}
    pinned = [ids.get(i, query.pk if i == 1 else i) for i in pinned]
    blocked = [ids.get(i, i) for i in blocked]
    with pytest.raises(ValueError, match=message):
        merchandising.product_rules_set(product=query, pinned=pinned, blocked=blocked)
    assert not PanelPin.objects.exists()


def test_the_admin_preview_marks_pins_and_lists_what_rules_left_out(admin_client, settings, catalog_products):
    query = catalog_products[0]
    assert train_inline(settings, epochs=2).status == "active"
    plain = panel(query, use_cache=False)
    merchandising.product_rules_set(product=query, pinned=[catalog_products[-1].pk], blocked=[plain[0]])
    page = admin_client.get(reverse("admin:catalog_product_panel", args=[query.pk])).content.decode()
    assert 'class="lk-pinned"' in page and f'data-left-out="{plain[0]}"' in page and "(Active)" in page
    change = admin_client.get(reverse("admin:catalog_product_change", args=[query.pk])).content.decode()
    assert "Preview its panel" in change and "Pinned similar items" in change


def test_category_rules_in_the_admin_change_the_category_panels(admin_client, catalog_products):
    query = catalog_products[0]
    hidden = Category.objects.exclude(pk=query.category_id).first()
    url = reverse("admin:catalog_categoryrule_add")
    answer = admin_client.post(url, {"category": query.category_id, "hidden": hidden.pk})
    assert answer.status_code == 302 and CategoryRule.objects.filter(category=query.category, hidden=hidden).exists()
    assert not Product.objects.filter(pk__in=panel(query), category=hidden).exists()
    refused = admin_client.post(url, {"category": hidden.pk, "hidden": hidden.pk})
    assert refused.status_code == 200 and "two different categories" in refused.content.decode()


def test_pins_obey_blocks_category_rules_and_duplicates(settings, catalog_products):
    from catalog.models import DuplicatePair

    query = catalog_products[0]
    assert train_inline(settings, epochs=2).status == "active"
    plain = panel(query, use_cache=False)
    others = [p for p in catalog_products[1:] if p.category_id != query.category_id and p.pk not in plain]
    a, b = others[0], next(p for p in others if p.category_id != others[0].category_id)
    partner = plain[0]  # a's duplicate, though a nearer product of the query
    low, high = sorted([a.pk, partner])
    DuplicatePair.objects.create(product_a_id=low, product_b_id=high, kind="near", distance=10)
    merchandising.product_rules_set(product=query, pinned=[a.pk, b.pk], blocked=[])
    merchandising.category_rule_add(category=query.category, hidden=b.category)
    shown = panel(query)
    assert shown[0] == a.pk and b.pk not in shown and partner not in shown and len(shown) == 6


def test_a_cached_panel_follows_a_product_moved_into_a_hidden_category(settings, catalog_products):
    query = catalog_products[0]
    assert train_inline(settings, epochs=2).status == "active"
    mover = Product.objects.get(pk=panel(query)[0])
    hidden = Category.objects.exclude(pk__in=[query.category_id, mover.category_id]).first()
    merchandising.category_rule_add(category=query.category, hidden=hidden)
    assert mover.pk in panel(query)  # cached with the rule in force
    mover.category = hidden
    mover.save()
    assert mover.pk not in panel(query) and len(panel(query)) == 6
