"""Cold start (no active version: similar items by standardised backbone features), at scale: the
scaler is stored per backbone (recommender.services.features), the exact scan runs in PostgreSQL
over every row, and one request computes a missing answer while the others wait for it."""

import logging
import threading

import numpy as np
import pytest
from django.db import connection

from catalog.duplicates import duplicate_pair_decide
from catalog.models import DuplicatePair, Product, ProductImage
from recommender import db
from recommender.models import BackboneFeature
from recommender.selectors import similarity
from recommender.selectors.similarity import similar_products
from recommender.services.ingestion import images_process
from tests.factories import ProductFactory, ProductImageFactory
from tests.recommender.helpers import import_products, process_all

pytestmark = pytest.mark.django_db


def numpy_exact(product, k, category=None):
    """The answer of the former numpy implementation: scaler fitted on every active image of the
    backbone, then each other product at its nearest standardised image, ties by product id."""
    rows = list(BackboneFeature.objects.filter(image__product__is_active=True).order_by("image_id")
                .values_list("image__product_id", "image__product__category_id", "vector"))
    products = np.array([r[0] for r in rows])
    matrix = np.stack([np.asarray(r[2], dtype=np.float32) for r in rows])
    mean, std = matrix.mean(axis=0), matrix.std(axis=0) + 1e-6
    query = matrix[int(np.flatnonzero(products == product.pk)[0])]
    distances = np.linalg.norm((matrix - mean) / std - (query - mean) / std, axis=1)
    best = {}
    for index in np.argsort(distances, kind="stable"):
        pid = int(products[index])
        if pid != product.pk and pid not in best and (category is None or rows[index][1] == category):
            best[pid] = float(distances[index])
    return sorted(best.items(), key=lambda item: (item[1], item[0]))[:k]


def test_the_answers_are_the_former_numpy_exact_ones():
    from recommender.models import FeatureScale

    import_products(60)
    process_all()
    assert FeatureScale.objects.get().rows == 60  # fitted by the ingestion that stored the features
    for product in Product.objects.order_by("id")[:5]:
        for k, category in ((6, None), (60, None), (4, product.category_id)):
            expected = numpy_exact(product, k, category=category)
            got = similar_products(product=product, k=k, category=category, use_cache=False)
            assert [i.product.pk for i in got.items] == [pid for pid, _ in expected]
            assert [i.distance for i in got.items] == pytest.approx([d for _, d in expected], rel=1e-4)


class FeatureReads:
    """Rows of the feature table that reach Python: the binary reads (recommender.db) and every
    statement on Django's connection that names the table."""

    def __init__(self, monkeypatch):
        self.rows = 0
        original = db.fetch_binary

        def counted(sql, params):
            found = original(sql, params)
            if "recommender_backbonefeature" in sql:
                self.rows += len(found)
            return found

        monkeypatch.setattr(db, "fetch_binary", counted)

    def __call__(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "recommender_backbonefeature" in sql:
            self.rows += max(context["cursor"].rowcount, 0)
        return result


def test_a_new_image_does_not_make_the_next_answer_read_every_feature(monkeypatch):
    import_products(40)
    process_all()
    product = Product.objects.order_by("id").first()
    reads = FeatureReads(monkeypatch)
    with connection.execute_wrapper(reads):
        first = similar_products(product=product, k=6)
    assert first.source == "backbone" and len(first.items) == 6
    assert reads.rows <= 1 + 6  # the query image's id and the k answers, never the 40 x 2048 floats
    import_products(41)  # one more image, processed
    images_process(image_ids=list(ProductImage.objects.filter(status="pending").values_list("id", flat=True)),
                   token="one-more")
    reads.rows = 0
    with connection.execute_wrapper(reads):
        again = similar_products(product=product, k=6)
    assert [i.product.pk for i in again.items] == [i.product.pk for i in first.items]
    assert reads.rows <= 1  # the scaler still holds (2.5% more rows): the cached answer is served


def test_images_past_the_former_cap_are_considered(monkeypatch, caplog):
    monkeypatch.setattr(similarity, "COLD_START_MAX_ROWS", 10)
    import_products(30)
    process_all()
    query = Product.objects.order_by("id").first()
    twin = ProductFactory()  # the same picture, stored last: far past the first 10 rows
    ProductImageFactory(product=twin, data=query.images.get().image.read())
    images_process(image_ids=[twin.images.get().pk], token="twin")
    # The same file is a duplicate (catalog.duplicates), left out of panels until staff say otherwise.
    assert similar_products(product=query, k=1, use_cache=False).items[0].product.pk != twin.pk
    duplicate_pair_decide(pair=DuplicatePair.objects.get(product_b=twin), status=DuplicatePair.Status.NOT_DUPLICATE)
    with caplog.at_level(logging.WARNING, logger="recommender.selectors.similarity"):
        nearest = similar_products(product=query, k=1, use_cache=False).items
        similar_products(product=Product.objects.order_by("id")[1], k=1, use_cache=False)
    assert [(i.product.pk, round(i.distance, 3)) for i in nearest] == [(twin.pk, 0.0)]
    warned = [r for r in caplog.records if r.name == similarity.__name__ and "cold start" in r.getMessage()]
    assert len(warned) == 1 and "30 features" in warned[0].getMessage()  # once, as its scaler counted them


class Signal(logging.Handler):
    """Sets ``event`` when a record containing ``text`` is logged (by any thread)."""

    def __init__(self, text, event):
        super().__init__(logging.DEBUG)
        self.text, self.event = text, event

    def emit(self, record):
        if self.text in record.getMessage():
            self.event.set()


@pytest.mark.django_db(transaction=True)
def test_concurrent_misses_compute_the_answer_once(monkeypatch):
    from recommender.selectors import answers

    # The waiter must not give up while the first request is held by the test (a loaded machine).
    monkeypatch.setattr(answers, "FLIGHT_WAIT_SECONDS", 120.0)
    import_products(30)
    process_all()
    product = Product.objects.order_by("id").first()
    computing, release, waiting = threading.Event(), threading.Event(), threading.Event()
    computed, results = [], {}
    original = similarity._cold_start_nearest

    def compute(**kwargs):
        computed.append(threading.current_thread().name)
        if threading.current_thread().name == "first":
            computing.set()
            assert release.wait(60), "the test never let the first request finish"
        return original(**kwargs)

    def ask(name):
        try:
            results[name] = [i.product.pk for i in similar_products(product=product, k=6).items]
        finally:
            connection.close()
            waiting.set()  # (also when it did not wait at all: the old behaviour, to fail fast)

    monkeypatch.setattr(similarity, "_cold_start_nearest", compute)
    answers_logger = logging.getLogger("recommender.selectors.answers")
    handler = Signal("waiting for", waiting)
    answers_logger.addHandler(handler)
    level = answers_logger.level
    answers_logger.setLevel(logging.DEBUG)
    try:
        first = threading.Thread(target=ask, args=("first",), name="first")
        first.start()
        assert computing.wait(60)
        second = threading.Thread(target=ask, args=("second",), name="second")
        second.start()
        assert waiting.wait(60)  # the second request found the answer being computed
        release.set()
        for thread in (first, second):
            thread.join(60)
    finally:
        answers_logger.removeHandler(handler)
        answers_logger.setLevel(level)
        release.set()
    assert computed == ["first"]
    assert results["first"] == results["second"] and len(results["first"]) == 6


def test_without_a_stored_scaler_the_answer_is_the_same():
    """Features stored before migration 0006 fitted them (or a refit that failed): the scaler is
    fitted within the query, with the same answer."""
    from recommender.models import FeatureScale

    import_products(30)
    process_all()
    product = Product.objects.order_by("id").first()
    stored = similar_products(product=product, k=8, use_cache=False).items
    FeatureScale.objects.all().delete()
    fitted = similar_products(product=product, k=8, use_cache=False).items
    assert [i.product.pk for i in fitted] == [i.product.pk for i in stored]
    assert [i.distance for i in fitted] == pytest.approx([i.distance for i in stored], rel=1e-6)
