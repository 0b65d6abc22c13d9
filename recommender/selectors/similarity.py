"""Similar products and search by image, answered by pgvector (or, before any version is trained,
by standardised backbone features, scanned exactly in PostgreSQL: selectors.features)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
from django.db import connection, transaction
from django.db.models import Prefetch

from catalog import duplicates, merchandising, selectors as catalog_selectors
from catalog.models import Product, ProductImage
from recommender import db, runtime
from recommender.conf import config
from recommender.models import BackboneFeature, Embedding, ModelVersion
from recommender.selectors.lists import filter_sql, listed_products
from recommender.selectors.diversity import diversity_setting, panel_reranker
from recommender.selectors.rules import ruled
from recommender.selectors.answers import cache_get, cache_get_or_compute, cache_key, cache_set
from recommender.selectors.features import feature_scale_state, features_nearest_products
from recommender.selectors.versions import active_version

logger = logging.getLogger(__name__)


@dataclass
class SimilarItem:
    product: Product
    distance: float | None  # None: a pinned product without an embedding under the version
    pinned: bool = False  # put there by staff (catalog.merchandising), not by distance


@dataclass
class SimilarResult:
    items: list[SimilarItem]
    version: ModelVersion | None
    source: str  # "model" (active version), "backbone" (cold start) or "none"
    # catalog.selectors.products_fingerprint of the answer's products, read before they were (None
    # for cold start): a page cached with it is stale as soon as one of them changes.
    fingerprint: str | None = None
    rules: str = ""  # catalog.merchandising.PanelRules.fingerprint of the staff rules applied


@dataclass
class ImageSearchResult:
    predicted: str | None
    probabilities: dict[str, float]
    items: list[SimilarItem]
    version: ModelVersion | None
    source: str
    extras: dict = field(default_factory=dict)


def _vector_literal(vector) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in np.asarray(vector).ravel()) + "]"


def _nearest_products_sql(*, version_id, vector, k, exact, **filters) -> list[tuple[int, float]]:
    """Top-k distinct products: nearest images first, then one row per product.

    The index scan uses pgvector 0.8's iterative scan, so filters that drop most neighbours still
    return k rows; ``exact`` sorts on an expression the index cannot serve (a full scan)."""
    where, params = filter_sql(**filters)
    literal = _vector_literal(vector)
    if exact:
        # Every image is scanned, and each product keeps its nearest image: k products whenever
        # k exist, however many near-duplicate images the products have.
        sql = f"""
            SELECT product_id, distance FROM (
                SELECT DISTINCT ON (e.product_id) e.product_id, e.vector <-> %s::vector AS distance
                FROM recommender_embedding e JOIN catalog_product p ON p.id = e.product_id
                WHERE e.version_id = %s AND {where}
                ORDER BY e.product_id, distance
            ) nearest ORDER BY distance, product_id LIMIT %s"""
        with connection.cursor() as cursor:
            cursor.execute(sql, [literal, version_id, *params, k])
            return [(row[0], float(row[1])) for row in cursor.fetchall()]
    distance = "(e.vector <-> %s::vector)"
    # Several images of one product can crowd the top: fetch more candidates than k (when they
    # still cover fewer than k products, the caller falls back to the exact scan).
    candidates = max(k * 4, 24)
    sql = f"""
        SELECT product_id, MIN(distance) AS distance FROM (
            SELECT e.product_id, {distance} AS distance
            FROM recommender_embedding e JOIN catalog_product p ON p.id = e.product_id
            WHERE e.version_id = %s AND {where}
            ORDER BY {distance}
            LIMIT %s
        ) candidates GROUP BY product_id ORDER BY distance, product_id LIMIT %s"""
    with db.vector_index_watch(), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = %s" % int(config().ef_search))
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(sql, [literal, version_id, *params, literal, candidates, k])
        return [(row[0], float(row[1])) for row in cursor.fetchall()]


def nearest_products(*, version, vector=None, image=None, k=6, exact: bool = False,
                     **filters) -> list[tuple[int, float]]:
    """The k nearest other products (product id, distance) of ``vector``, or of the embedding of
    ``image`` under ``version``: a product's panel (``image`` is its query image and
    ``exclude_product`` the product) from its precomputed list, else by the HNSW index;
    ``exact``: by a full scan only (the reference the lists' and the index's recall are measured
    against)."""
    if image is not None and not exact and filters.get("exclude_product") is not None \
            and filters.get("predicted") is None:
        rows = listed_products(version_id=version.pk, image=image, k=k, **filters)
        if rows is not None:
            return rows
    if vector is None:
        vector = Embedding.objects.filter(version=version, image_id=image).values_list("vector", flat=True).first()
        if vector is None:
            return []
    rows = _nearest_products_sql(version_id=version.pk, vector=vector, k=k, exact=exact, **filters)
    if len(rows) < k and not exact:
        # The approximate scan came back short (a very selective filter, or many images per
        # product): the exact scan tells whether more exist.
        rows = _nearest_products_sql(version_id=version.pk, vector=vector, k=k, exact=True, **filters)
    return rows


def nearest_images(*, version, vector, k=6, exclude_image=None, exact=False) -> list[tuple[int, float]]:
    """Nearest images of a version (used to measure the index's recall against an exact scan)."""
    literal = _vector_literal(vector)
    distance = "(vector <-> %s::vector)" + (" + 0" if exact else "")
    with db.vector_index_watch(), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = %s" % int(config().ef_search))
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(
            f"SELECT image_id, {distance} FROM recommender_embedding WHERE version_id = %s AND image_id <> %s "
            f"ORDER BY {distance} LIMIT %s",
            [literal, version.pk, exclude_image or 0, literal, k])
        return [(row[0], float(row[1])) for row in cursor.fetchall()]


# Cold start scans every feature of the backbone, in PostgreSQL (selectors.features, a weighted L2
# with the stored scaler): no row is left out and Python holds only the k answers. Measured at
# 50,000 x 2048 random features (a 416 MB table, 2 cores shared with other work, 4 runs): the scan
# 1.0-1.3 s (with 2 parallel workers 1.2-1.8 s), similar_products uncached 1.4-2.2 s with a
# 0.08 MiB Python peak, cached 6-13 ms; the former numpy scan of the first 50,000 rows took
# 8.2-11.6 s and a 1.6 GiB Python peak, 3.2-3.4 s of it the binary read alone (so numpy with a
# precomputed scaler would still cost more than the whole scan), with the same 6 neighbours in the
# same order. The cost grows with the rows: past this many it is logged once per process and
# backbone (there is no cap): such a catalog should serve from a trained version.
COLD_START_MAX_ROWS = 50_000
_cold_start_warned: set = set()


def _cold_start_nearest(*, backbone, k, scale, image=None, vector=None, **filters) -> list[tuple[int, float]]:
    """No trained head yet: the k nearest products by standardised backbone features, exactly.

    The scaler (``scale``: selectors.features.feature_scale_state) is fitted on every active image
    of the backbone, never on the filtered subset (the notebook's drifting-scaler defect); none
    stored yet: fitted within the query."""
    once = (backbone, COLD_START_MAX_ROWS)
    if scale is not None and scale[0] > COLD_START_MAX_ROWS and once not in _cold_start_warned:
        _cold_start_warned.add(once)
        logger.warning("cold start over about %s features of %s (more than %s): every uncached similar-items "
                       "answer scans all of them (about 1 s per 50,000 on 2 cores); train a version to serve "
                       "from the index", scale[0], backbone, COLD_START_MAX_ROWS)
    return features_nearest_products(backbone=backbone, k=k, image=image, vector=vector,
                                     stored_scale=scale is not None, **filters)


def _products_in_order(rows, *, category=None, min_price=None, max_price=None, pinned=(), **_) -> list[SimilarItem]:
    """The products of (product id, distance) rows, in order (``pinned``: those staff pinned).
    Products hidden, deleted or moved out of the filters since the rows were computed (a cached
    answer) are left out."""
    ids = [pid for pid, _ in rows]
    qs = catalog_selectors.products_shown(category=category, min_price=min_price, max_price=max_price)
    products = qs.select_related("category").prefetch_related(
        Prefetch("images", queryset=ProductImage.objects.order_by("position", "id"))).in_bulk(ids)
    return [SimilarItem(product=products[pid], distance=d, pinned=pid in pinned) for pid, d in rows if pid in products]


def _cache_key(*parts) -> str:
    # "similar4": entries are (rows, fingerprint, items, (the asking product's own fingerprint, its
    # pins, their fingerprint, its rules' fingerprint)).
    return cache_key("similar4", *parts)


def _cached_answer(key, filters, product_id) -> tuple | None:
    """A cached (rows, fingerprint, items, own) still true now, or None: recomputed when any product
    it shows changed (hidden, repriced, moved to a category a rule hides, paired as a duplicate...)
    or the asking product did, or one of its pinned products (its rules and duplicates are decided
    on its row: catalog.merchandising and catalog.duplicates touch it). One query; a recomputation
    from the precomputed lists costs ~1-3 ms."""
    cached = cache_get(key)
    if not isinstance(cached, tuple) or len(cached) != 4:
        return None
    rows, fingerprint, items, (own, pinned, pinned_fingerprint, _) = cached
    ids = [pid for pid, _ in rows]
    hashes = catalog_selectors.product_row_hashes([product_id, *ids, *pinned])
    fingerprints = [catalog_selectors.products_fingerprint(group, hashes) for group in ([product_id], ids, pinned)]
    return cached if fingerprints == [own, fingerprint, pinned_fingerprint] else None


def _fresh_answer(rows, filters, own, pinned=()) -> tuple:
    # The fingerprint is read before the products: a change in between makes it stale, not the items.
    fingerprint = catalog_selectors.products_fingerprint([pid for pid, _ in rows])
    return rows, fingerprint, _products_in_order(rows, **filters, pinned=set(pinned)), own


def _version_answer(*, version, product, k, same_category, filters, apply_rules=True) -> tuple:
    """A product's panel under ``version``: (rows, fingerprint, items, own fingerprint); None when
    the product has no embedding under it. Re-ranked for variety when RECOMMENDER["DIVERSITY_LAMBDA"]
    is below 1 (recommender.selectors.diversity), rules or not (the preview compares like with like)."""
    own = catalog_selectors.products_fingerprint([product.pk])  # before its duplicates and rules are read
    rules = merchandising.panel_rules(product=product) if apply_rules else merchandising.PanelRules()
    own = (own, rules.pinned, catalog_selectors.products_fingerprint(list(rules.pinned)), rules.fingerprint())
    # The query image's id, not its vector: the list answers without it (the index reads it).
    query = (Embedding.objects.filter(version=version, product=product)
             .order_by("image__position", "image_id").values_list("image_id", "predicted").first())
    if query is None:
        return None
    image, predicted = query
    rows = ruled(rules, product=product, k=k, filters=filters, version=version, image=image,
                  rerank=panel_reranker(version=version, image=image),
                  nearest=lambda n, **exclude: nearest_products(
                      version=version, image=image, k=n, exclude_product=product.pk,
                      predicted=predicted if same_category else None, **filters, **exclude))
    return _fresh_answer(rows, filters, own, pinned=rules.pinned)


def similar_products(*, product: Product, k: int = 6, same_category: bool = False, category=None,
                     min_price=None, max_price=None, use_cache: bool = True, version=None,
                     apply_rules: bool = True) -> SimilarResult:
    """The k nearest other active products (one entry per product), by the active version's
    embeddings (``version``: another's: an experiment's candidate, or the admin's preview, which
    asks ``use_cache=False``), or by standardised
    backbone features before any version is trained; never the product's own duplicates, nor two
    products paired as duplicates (catalog.duplicates); staff's pins first and their blocks and
    category rules obeyed (catalog.merchandising; ``apply_rules`` off: the preview's comparison);
    re-ranked for variety under a version when RECOMMENDER["DIVERSITY_LAMBDA"] is below 1
    (recommender.selectors.diversity). The cold start is never re-ranked: it has no embedding to
    measure variety in, only the backbone's features, which the setting was not measured on."""
    filters = {"category": category, "min_price": min_price, "max_price": max_price}
    if not apply_rules or not product.is_active:
        use_cache = False  # a hidden product's row has no fingerprint (catalog.selectors.ROW_HASHES_SQL)
    version = version or active_version()
    if version is not None:
        key = _cache_key("v", version.pk, product.pk, k, same_category, filters, diversity_setting())
        answer = _cached_answer(key, filters, product.pk) if use_cache else None
        if answer is None:
            answer = _version_answer(version=version, product=product, k=k, same_category=same_category,
                                     filters=filters, apply_rules=apply_rules)
            if answer is None:
                return SimilarResult(items=[], version=version, source="none",
                                     fingerprint=catalog_selectors.products_fingerprint([]))
            if use_cache:
                cache_set(key, answer)
        rows, fingerprint, items, own = answer
        return SimilarResult(items=items, version=version, source="model", fingerprint=fingerprint, rules=own[3])
    return _cold_start_similar(product=product, k=k, same_category=same_category, filters=filters,
                               use_cache=use_cache, apply_rules=apply_rules)


def _cold_start_similar(*, product, k, same_category, filters, use_cache, apply_rules=True) -> SimilarResult:
    backbone = runtime.backbone_spec().identity
    image = (BackboneFeature.objects.filter(backbone=backbone, image__product=product)
             .order_by("image__position", "image_id").values_list("image_id", flat=True).first())
    if image is None:
        return SimilarResult(items=[], version=None, source="none")
    if same_category:
        filters["category"] = product.category_id  # no predictions yet: use the catalog's own category
    # Cold start scans every feature, so it is cached too, with the scaler it used and the
    # product's own row (its duplicates and rules are decided on it): new images are taken in when the cache
    # expires (as with a version) or the scaler is refitted (services.features.SCALE_REFIT_SHARE),
    # not at each new image. One request computes a missing answer; the others wait for it.
    scale = feature_scale_state(backbone=backbone)
    key = _cache_key("b", backbone, scale, product.pk, k, filters, catalog_selectors.products_fingerprint([product.pk]))

    rules = merchandising.panel_rules(product=product) if apply_rules else merchandising.PanelRules()

    def compute():
        return ruled(rules, product=product, k=k, filters=filters, nearest=lambda n, **exclude: _cold_start_nearest(
            backbone=backbone, k=n, scale=scale, image=image, exclude_product=product.pk, **filters, **exclude))

    rows = cache_get_or_compute(key, compute) if use_cache else compute()
    items = _products_in_order(rows, **filters, pinned=set(rules.pinned))
    broken = any(i.product.category_id in rules.hidden_categories for i in items if not i.pinned)
    if use_cache and (len(items) != len(rows) or broken or duplicates.duplicate_links(product_ids=[p for p, _ in rows])):
        # A product hidden, moved out of the filters or into a hidden category since cached, or two paired since.
        rows = compute()
        cache_set(key, rows)
        items = _products_in_order(rows, **filters, pinned=set(rules.pinned))
    return SimilarResult(items=items, version=None, source="backbone", rules=rules.fingerprint())


_search_lock = threading.Lock()


def search_by_image(*, picture, k: int = 6, same_category: bool = False, category=None,
                    min_price=None, max_price=None) -> ImageSearchResult:
    """An uploaded picture (a decoded PIL image) -> predicted category and nearest products, nearest
    first (never re-ranked for variety: the shopper asked for what looks like the picture).

    Loads the backbone in this process on first use (TensorFlow is imported lazily)."""
    filters = {"category": category, "min_price": min_price, "max_price": max_price}
    version = active_version()
    with _search_lock:
        if version is not None:
            # The active version's own backbone: a trained one, or the weights its head was trained on.
            # backbone_of verifies a trained backbone's weights against the version's checksums.
            features = runtime.backbone_of(runtime.version_spec(version), batch_size=1).extract([picture])
            head = runtime.load_head(version)
            proba = head.predict_proba(features)[0]
            vector = head.embed(features)[0]
        else:
            features = runtime.backbone().extract([picture])
    if version is None:
        backbone = runtime.backbone_spec().identity
        scale = feature_scale_state(backbone=backbone)
        rows = duplicates.nearest_without_duplicates(lambda n: _cold_start_nearest(backbone=backbone, k=n, scale=scale,
                                                                 vector=features[0], **filters), k)
        return ImageSearchResult(predicted=None, probabilities={}, items=_products_in_order(rows, **filters),
                                 version=None, source="backbone" if rows else "none")
    classes = head.classes
    probabilities = {c: float(p) for c, p in sorted(zip(classes, proba), key=lambda cp: -cp[1])}
    predicted = classes[int(np.argmax(proba))]
    rows = duplicates.nearest_without_duplicates(lambda n: nearest_products(
        version=version, vector=vector, k=n, predicted=predicted if same_category else None, **filters), k)
    return ImageSearchResult(predicted=predicted, probabilities=probabilities,
                             items=_products_in_order(rows, **filters),
                             version=version, source="model")

