"""Panels re-ranked for variety (recommender.selectors.diversity) by the real panel query on the
real database: a cluster of near-identical products makes way for distinct ones when
RECOMMENDER["DIVERSITY_LAMBDA"] is below 1, and the panel is nearest first at 1 with no variant
cap; RECOMMENDER["DIVERSITY_VARIANTS_MAX"] shows at most N of a variant group, k kept; the settings
are part of a cached panel's key; pins, blocks and duplicates are obeyed with k kept.

Embeddings are written by hand under a version created active (no training): the geometry is
known, so the expected panels are too."""

import numpy as np
import pytest
from django.utils import timezone

from catalog import merchandising
from catalog.models import DuplicatePair
from recommender.conf import config
from recommender.models import EMBEDDING_DIM, Embedding, ModelVersion
from recommender.selectors.similarity import similar_products
from tests.factories import ProductImageFactory

pytestmark = pytest.mark.django_db


def _axis(i, length=1.0):
    vector = np.zeros(EMBEDDING_DIM)
    vector[i] = length
    return vector


@pytest.fixture
def catalog():
    """The query product at the origin; five near-identical variants at distance ~1.0 (the nearest),
    five distinct products at 1.1 to 1.5, each in its own direction; one far product at 5."""
    version = ModelVersion.objects.create(status="active", backbone="resnet50:random:32", weights="random",
                                          input_size=32, classes=["x"], activated_at=timezone.now())
    rng = np.random.default_rng(0)
    vectors = {"query": np.zeros(EMBEDDING_DIM), "far": _axis(10, 5.0)}
    for i, vector in enumerate(sorted((_axis(0) + rng.normal(0, 0.001, EMBEDDING_DIM) for _ in range(5)),
                                      key=np.linalg.norm)):
        vectors[f"variant{i}"] = vector
    for i in range(5):
        vectors[f"distinct{i}"] = _axis(i + 1, 1.1 + 0.1 * i)
    products = {}
    for name, vector in vectors.items():
        image = ProductImageFactory(seed=len(products))
        Embedding.objects.create(image=image, product=image.product, version=version, predicted="x", vector=vector)
        products[name] = image.product
    return products


def _names(catalog, **options):
    by_pk = {product.pk: name for name, product in catalog.items()}
    return [by_pk[item.product.pk] for item in similar_products(product=catalog["query"], k=6, **options).items]


def _trade_off(settings, value, variants_max=0):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "DIVERSITY_LAMBDA": value, "DIVERSITY_VARIANTS_MAX": variants_max}


def test_variants_make_way_for_distinct_products_below_one_and_the_setting_keys_the_cache(settings, catalog):
    assert config().diversity_lambda == 1.0  # the default: no MMR
    _trade_off(settings, 1.0)  # and no variant cap: nearest first
    nearest = [f"variant{i}" for i in range(5)] + ["distinct0"]
    assert _names(catalog) == nearest  # computed and cached
    _trade_off(settings, 0.5)
    assert _names(catalog) == ["variant0", "distinct0", "distinct1", "distinct2", "distinct3", "distinct4"]
    _trade_off(settings, 0.9)  # a light touch: the nearest distinct product moves up, some variants stay
    assert _names(catalog) == ["variant0", "distinct0", "variant1", "variant2", "variant3", "variant4"]
    _trade_off(settings, 1.0)
    assert _names(catalog) == nearest  # the cached nearest-first panel again, not the last diversified one
    items = similar_products(product=catalog["query"], k=6).items
    assert [item.distance for item in items] == pytest.approx([np.linalg.norm(catalog_vector) for catalog_vector in (
        Embedding.objects.get(product=item.product).vector for item in items)], abs=1e-5)


def test_a_diversified_panel_keeps_pins_first_obeys_blocks_and_duplicates_and_has_k(settings, catalog):
    _trade_off(settings, 0.5)
    low, high = sorted([catalog["distinct1"].pk, catalog["distinct2"].pk])
    DuplicatePair.objects.create(product_a_id=low, product_b_id=high, kind="near", distance=10)
    merchandising.product_rules_set(product=catalog["query"], pinned=[catalog["far"].pk],
                                    blocked=[catalog["distinct0"].pk])
    shown = similar_products(product=catalog["query"], k=6).items
    names = _names(catalog)
    assert len(names) == 6 and names[0] == "far" and [item.pinned for item in shown] == [True] + [False] * 5
    assert shown[0].distance == pytest.approx(5.0)
    assert "distinct0" not in names and "distinct2" not in names  # blocked; paired with the nearer distinct1
    # The pool left once the pin, the block and the duplicate are out: one variant, every distinct
    # product, then a second variant to make k (nothing else is left).
    assert names[1:] == ["variant0", "distinct1", "distinct3", "distinct4", "variant1"]
    # The admin preview's comparison (no rules) is re-ranked too: like is compared with like.
    plain = [item.product.pk for item in similar_products(product=catalog["query"], k=6, apply_rules=False).items]
    assert plain[:2] == [catalog["variant0"].pk, catalog["distinct0"].pk]


def test_a_pool_smaller_than_the_panel_is_shown_whole(settings, catalog):
    _trade_off(settings, 0.3)
    items = similar_products(product=catalog["query"], k=20).items
    assert len(items) == len(catalog) - 1  # every other product, once
    assert len({item.product.pk for item in items}) == len(items)


@pytest.mark.parametrize("value, words", [(1.5, "between 0 (most varied) and 1"), (-0.1, "between 0"),
                                          ("0.8", "must be a number")])
def test_a_trade_off_outside_zero_to_one_is_named_by_the_system_check(settings, value, words):
    from recommender.conf import check_config

    _trade_off(settings, value)
    [error] = check_config()
    assert error.id == "recommender.E001" and "DIVERSITY_LAMBDA" in error.msg and words in error.msg


def test_the_variant_cap_shows_at_most_n_of_a_group_keeps_k_and_keys_the_cache(settings, catalog):
    _trade_off(settings, 1.0)
    assert _names(catalog)[:5] == [f"variant{i}" for i in range(5)]  # crowded, and cached
    _trade_off(settings, 1.0, variants_max=2)
    assert _names(catalog) == ["variant0", "variant1", "distinct0", "distinct1", "distinct2", "distinct3"]
    _trade_off(settings, 1.0, variants_max=1)
    assert _names(catalog) == ["variant0", "distinct0", "distinct1", "distinct2", "distinct3", "distinct4"]
    # Too few others left once the rules are obeyed: the capped variants fill the panel back in order.
    merchandising.product_rules_set(product=catalog["query"], pinned=[catalog["far"].pk],
                                    blocked=[catalog[f"distinct{i}"].pk for i in range(3)])
    names = _names(catalog)
    assert names == ["far", "variant0", "distinct3", "distinct4", "variant1", "variant2"]
