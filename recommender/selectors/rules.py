"""Staff's rules around a panel's vector query (catalog.merchandising): pinned products first, in
their order, then the nearest of the rest, with blocked products, hidden categories and the
product's duplicates left out by the query itself (so the index's iterative scan, or the exact
scan, still finds k whenever k exist)."""

from __future__ import annotations

from django.db import connection

from catalog import duplicates, selectors as catalog_selectors
from catalog.merchandising import PINS_MAX
from recommender.selectors.diversity import pool_size

_PIN_DISTANCES_SQL = """
    SELECT e.product_id, MIN(e.vector <-> q.vector) FROM recommender_embedding q, recommender_embedding e
    WHERE q.version_id = %s AND q.image_id = %s AND e.version_id = %s AND e.product_id = ANY(%s)
    GROUP BY e.product_id"""


def _pins_shown(*, rules, k, filters, dups, version=None, image=None) -> list[tuple[int, float | None]]:
    """The pinned products a panel shows first, in staff's order: active, within the shopper's
    filters, neither blocked nor of a hidden category nor a duplicate of the product or of an
    earlier pin, at most k; with their distance under ``version`` when they have an embedding."""
    pinned = [pk for pk in rules.pinned if pk not in rules.blocked and pk not in dups][:PINS_MAX]
    if not pinned:
        return []
    qs = catalog_selectors.products_shown(**filters).filter(pk__in=pinned).exclude(
        category_id__in=rules.hidden_categories)
    shown = set(qs.values_list("pk", flat=True))
    ids = [pk for pk, _ in duplicates.duplicates_collapse(
        [(pk, None) for pk in pinned if pk in shown], duplicates.duplicate_links(product_ids=shown))][:k]
    distances = {}
    if version is not None and image is not None and ids:
        with connection.cursor() as cursor:
            cursor.execute(_PIN_DISTANCES_SQL, [version.pk, image, version.pk, ids])
            distances = {pid: float(d) for pid, d in cursor.fetchall()}
    return [(pk, distances.get(pk)) for pk in ids]


def ruled(rules, *, product, k, filters, nearest, version=None, image=None,
          rerank=None) -> list[tuple[int, float | None]]:
    """Staff's rules (catalog.merchandising) around ``nearest(n, exclude_products=,
    exclude_categories=)``: the pins first, then the nearest of the rest, neither blocked nor of a
    hidden category nor the product's duplicates, k in all whenever k exist. ``rerank(rows, n)``
    (recommender.selectors.diversity: MMR, the variant cap): the rest are n of a larger pool of the
    nearest, chosen by it (n whenever the pool holds n); the pins stay first, in staff's order."""
    dups = set(duplicates.product_duplicate_ids(product_id=product.pk))
    pins = _pins_shown(rules=rules, k=k, filters=filters, dups=dups, version=version, image=image)
    # Nor the pins' own duplicates: a panel never shows two paired products.
    partners = duplicates.partner_ids(product_ids=[pk for pk, _ in pins])
    exclude = sorted(dups | partners | rules.blocked | set(rules.pinned))
    if len(pins) >= k:
        return pins
    need = k - len(pins)
    # The pool is already without duplicates and rule-breakers, so whatever rerank keeps of it is too.
    rows = duplicates.nearest_without_duplicates(
        lambda n: nearest(n, exclude_products=exclude, exclude_categories=rules.hidden_categories),
        need if rerank is None else pool_size(need))
    return pins + (rows if rerank is None else rerank(rows, need))
