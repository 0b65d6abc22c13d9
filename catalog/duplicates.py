"""Near-duplicate products: found when an image becomes searchable, reviewed by staff.

Detection (:func:`duplicates_detect`, called by the worker once an image is ready, and by the
periodic recovery for any it missed): the image's perceptual hash (catalog.perceptual), and its
mirror image's, against the hashes of every ready image of other active products, through an HNSW
index on the hashes (pgvector's ``bit`` type, Hamming distance). A match within MAX_BITS is a
pair: "exact" when the files are the same (equal SHA-256), else "near". Idempotent: running it
twice on an image finds the same pairs and adds none.

Decisions (:func:`duplicate_pair_decide`, :func:`duplicate_pair_merge`) are the pair's status. A
pair is keyed by its two products, so finding it again (another image of either, a re-check, a new
model version: detection reads no model) updates an open pair's match and never reopens one that
staff decided. A merge moves the other product's images (and their embeddings) to the kept one,
the files that the kept product already has excepted, and hides the other product.

Similar items (recommender.selectors.similarity) leave out, from a product's panel, the products
paired with it (open, merged or ignored: all but "not a duplicate"), and keep only the nearest of
two paired products in any panel or search answer.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from catalog.models import DuplicatePair, ImageDownload, Product, ProductImage
from catalog.services import product_image_delete
from catalog.signals import images_moved

logger = logging.getLogger(__name__)

# Calibrated by bench/duplicates.py (docs/benchmarks.md, section 9) on re-encodes, resizes, crops,
# mirror images and recolourings of four unlike catalogs against distinct products: the largest
# threshold with a precision of at least 0.97 on the calibration set, because an open pair hides
# two products from each other's panels until staff decide. On the test set at 56 of 256 bits:
# precision 0.971, recall 0.748 (re-encodes, resizes and mirror images all found; small crops are
# what it misses). 64-68 bits would have the highest F1 (0.865; precision 0.92-0.95); the trained
# head's embeddings, calibrated the same way, F1 0.696. DUPLICATES_MAX_BITS overrides it.
MAX_BITS = 56
# Nearest images looked at per hash (and per mirror hash) of a new image: several may be of one
# product (its other shots), so a few more than the pairs expected. Copies of the same file are
# paired with at most SAME_FILE_PAIRS other products per image (a placeholder picture shared by
# thousands of products is not worth thousands of pairs per new copy).
CANDIDATES = 12
SAME_FILE_PAIRS = 50
# The periodic recovery checks at most this many images a run (those a worker missed, and images
# stored before detection existed: their hash is computed from the file, ~2 ms each).
BACKLOG_LIMIT = 500


def max_bits() -> int:
    """settings.DUPLICATES_MAX_BITS (the environment's), else MAX_BITS."""
    return int(getattr(settings, "DUPLICATES_MAX_BITS", None) or MAX_BITS)


# The nearest images of other active products to each image's hash and mirror hash (two index
# scans per image), within the threshold, and the same file (a flat picture has no hash: only
# this finds its copies); iterative scan keeps CANDIDATES rows under the filters.
_OTHERS = "c.product_id <> q.product_id AND c.status = 'ready' AND p.is_active"
_MATCHES_SQL = f"""
    SELECT q.id, q.product_id, m.id, m.product_id, m.distance, m.content_hash = q.content_hash
    FROM catalog_productimage q
    JOIN catalog_product qp ON qp.id = q.product_id AND qp.is_active
    CROSS JOIN LATERAL (
        SELECT * FROM (
            (SELECT c.id, c.product_id, c.content_hash, (c.perceptual_hash <~> q.perceptual_hash) AS distance
             FROM catalog_productimage c JOIN catalog_product p ON p.id = c.product_id
             WHERE {_OTHERS} AND q.perceptual_hash IS NOT NULL
             ORDER BY c.perceptual_hash <~> q.perceptual_hash LIMIT %(n)s)
            UNION ALL
            (SELECT c.id, c.product_id, c.content_hash, (c.perceptual_hash <~> q.mirror_hash) AS distance
             FROM catalog_productimage c JOIN catalog_product p ON p.id = c.product_id
             WHERE {_OTHERS} AND q.mirror_hash IS NOT NULL
             ORDER BY c.perceptual_hash <~> q.mirror_hash LIMIT %(n)s)
            UNION ALL
            (SELECT c.id, c.product_id, c.content_hash, 0 FROM catalog_productimage c
             JOIN catalog_product p ON p.id = c.product_id
             WHERE {_OTHERS} AND c.content_hash = q.content_hash LIMIT %(same)s)
        ) nearest WHERE distance <= %(bits)s
    ) m
    WHERE q.id = ANY(%(ids)s)"""

# New pairs are added; an open pair takes a closer match; a decided pair is left as it is.
_UPSERT_SQL = """
    INSERT INTO catalog_duplicatepair
        (product_a_id, product_b_id, image_a_id, image_b_id, kind, distance, status, created_at, updated_at)
    VALUES {values}
    ON CONFLICT (product_a_id, product_b_id) DO UPDATE SET
        image_a_id = EXCLUDED.image_a_id, image_b_id = EXCLUDED.image_b_id, kind = EXCLUDED.kind,
        distance = EXCLUDED.distance, updated_at = EXCLUDED.updated_at
    WHERE catalog_duplicatepair.status = 'open' AND EXCLUDED.distance < catalog_duplicatepair.distance
    RETURNING product_a_id, product_b_id"""


def _closest_per_pair(rows) -> dict[tuple[int, int], tuple]:
    """{(product a, product b): (image a, image b, kind, distance)}: each pair at its closest match."""
    pairs: dict[tuple[int, int], tuple] = {}
    for image, product, other_image, other_product, distance, same_file in rows:
        distance = 0 if same_file else int(distance)
        if product < other_product:
            key, images = (product, other_product), (image, other_image)
        else:
            key, images = (other_product, product), (other_image, image)
        kind = DuplicatePair.Kind.EXACT if same_file else DuplicatePair.Kind.NEAR
        if key not in pairs or distance < pairs[key][3]:
            pairs[key] = (*images, kind, distance)
    return pairs


def duplicates_detect(*, image_ids) -> int:
    """Pair the images ``image_ids`` (ready, hashed) with near-duplicates of other products and mark
    them checked; returns the pairs added or updated. Their products' rows are touched so that
    cached panels showing them are recomputed (catalog.selectors.products_fingerprint)."""
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(_MATCHES_SQL, {"ids": ids, "n": CANDIDATES, "same": SAME_FILE_PAIRS, "bits": max_bits()})
        pairs = _closest_per_pair(cursor.fetchall())
        changed = []
        if pairs:
            now = timezone.now()
            values = ", ".join(["(%s, %s, %s, %s, %s, %s, 'open', %s, %s)"] * len(pairs))
            params = [p for (a, b), (ia, ib, kind, d) in sorted(pairs.items()) for p in (a, b, ia, ib, kind, d, now, now)]
            cursor.execute(_UPSERT_SQL.format(values=values), params)
            changed = cursor.fetchall()
        if changed:
            Product.objects.filter(id__in={p for pair in changed for p in pair}).update(updated_at=timezone.now())
        # Images of hidden products are left unchecked: compared once their product is shown.
        ProductImage.objects.filter(id__in=ids, status=ProductImage.Status.READY, product__is_active=True).update(
            duplicates_checked_at=timezone.now())
    if changed:
        logger.info("%d possible duplicate pair(s) found for %d image(s)", len(changed), len(ids))
    return len(changed)


def image_hashes_record(*, hashes: dict[int, tuple[str, str]]) -> None:
    """Store {image id: (hash, mirror hash)} (catalog.perceptual.hashes) in one UPDATE."""
    hashes = {i: h for i, h in hashes.items() if h is not None}  # a flat picture has none
    if not hashes:
        return
    values = ", ".join(["(%s, %s::bit(256), %s::bit(256))"] * len(hashes))
    params = [p for image_id, (h, m) in hashes.items() for p in (image_id, h, m)]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE catalog_productimage AS i SET perceptual_hash = v.h, mirror_hash = v.m "
                       f"FROM (VALUES {values}) AS v(id, h, m) WHERE i.id = v.id", params)


def _picture(image: ProductImage):
    from PIL import Image

    with image.image.open("rb") as handle:
        picture = Image.open(handle)
        picture.load()
    return picture


def duplicates_backlog_check(*, before=None, limit: int = BACKLOG_LIMIT) -> int:
    """The periodic recovery's part: check ready images that were never checked (a worker lost
    between ready and the check, images stored before detection existed, images of a product shown
    since it was imported hidden), ready before ``before``
    (the worker that made them ready checks them itself), hashing those without a hash from their
    file; returns how many were checked."""
    from catalog import perceptual

    images = ProductImage.objects.filter(status=ProductImage.Status.READY, duplicates_checked_at__isnull=True,
                                         product__is_active=True)
    if before is not None:
        images = images.filter(status_changed_at__lt=before)
    images = list(images.order_by("status_changed_at")[:limit])
    missing = {}
    for image in images:
        if image.perceptual_hash is None or image.mirror_hash is None:
            try:
                missing[image.id] = perceptual.hashes(_picture(image))
            except Exception as exc:  # a missing or damaged file: the image's own problem, said once
                logger.warning("image %s could not be hashed for duplicate detection: %s", image.id, exc)
    image_hashes_record(hashes={i: h for i, h in missing.items() if h is not None})
    duplicates_detect(image_ids=[image.id for image in images])
    return len(images)


def duplicate_pair_decide(*, pair: DuplicatePair, status: str, user=None) -> DuplicatePair:
    """Staff say "not a duplicate", "ignore" (duplicates, both kept) or reopen a pair; a merged pair
    cannot be changed (its images have moved)."""
    allowed = {DuplicatePair.Status.NOT_DUPLICATE, DuplicatePair.Status.IGNORED, DuplicatePair.Status.OPEN}
    if status not in allowed:
        raise ValueError(f"A pair can be marked {', '.join(sorted(allowed))}; not {status!r}.")
    with transaction.atomic():
        pair = DuplicatePair.objects.select_for_update().get(pk=pair.pk)
        if pair.status == DuplicatePair.Status.MERGED:
            raise ValueError("This pair was merged: its images are on one product now.")
        pair.status, pair.decided_by, pair.decided_at = status, user, timezone.now()
        pair.save(update_fields=["status", "decided_by", "decided_at", "updated_at"])
        Product.objects.filter(id__in=[pair.product_a_id, pair.product_b_id]).update(updated_at=timezone.now())
    return pair


def _images_move(*, source: Product, target: Product) -> list[int]:
    """Move ``source``'s images to ``target`` after its own, pending again (the worker embeds
    them under ``target`` and checks them for duplicates: catalog.signals.images_moved); a file
    ``target`` already has is deleted instead (with its thumbnails). Returns the ids moved."""
    have = dict(target.images.values_list("content_hash", "id"))
    start = (target.images.aggregate(m=Max("position"))["m"] or 0) + 1
    moved = []
    for offset, image in enumerate(source.images.order_by("position", "id")):
        if image.content_hash in have:
            # Pairs that show this picture show the kept product's copy of it from now on.
            DuplicatePair.objects.filter(image_a=image).update(image_a_id=have[image.content_hash])
            DuplicatePair.objects.filter(image_b=image).update(image_b_id=have[image.content_hash])
            product_image_delete(image=image)
            continue
        ProductImage.objects.filter(pk=image.pk).update(
            product=target, position=start + offset, status=ProductImage.Status.PENDING, attempts=0, last_error="",
            processing_token="", status_changed_at=timezone.now(), duplicates_checked_at=None)
        moved.append(image.pk)
    if moved:
        images_moved.send(sender=ProductImage, image_ids=moved, product=target)
    return moved


def _downloads_move(*, source: Product, target: Product) -> None:
    known = set(ImageDownload.objects.filter(product=target).values_list("url", flat=True))
    ImageDownload.objects.filter(product=source).exclude(url__in=known).update(product=target)


def _merge_check(*, source: Product, target: Product) -> None:
    hidden = [p.sku for p in (source, target) if not p.is_active]
    if hidden:
        raise ValueError(f"{' and '.join(hidden)} {'is' if len(hidden) == 1 else 'are'} hidden already (merged "
                         "or taken off the shop): show it again before merging.")
    # A worker holding one of them would embed it under the product it read, after the move.
    busy = ProductImage.objects.select_for_update().filter(
        product=source, status__in=[ProductImage.Status.PENDING, ProductImage.Status.PROCESSING])
    if busy.exists():
        raise ValueError(f"{source.sku}'s pictures are still being processed: merge once they are ready.")


def duplicate_pair_merge(*, pair: DuplicatePair, keep: Product | int, user=None) -> DuplicatePair:
    """Merge the pair into ``keep`` (one of its two products): the other's images move to it (and
    are embedded and checked again under it), the other is hidden (not deleted: its page, orders
    and SKU stay), and the pair is "merged". Refused (ValueError) when either product is hidden
    already or the other's pictures are still being processed."""
    keep_id = getattr(keep, "pk", keep)
    with transaction.atomic():
        pair = DuplicatePair.objects.select_for_update().get(pk=pair.pk)
        if keep_id not in (pair.product_a_id, pair.product_b_id):
            raise ValueError(f"Product {keep_id} is not one of this pair's products "
                             f"({pair.product_a_id}, {pair.product_b_id}).")
        if pair.status == DuplicatePair.Status.MERGED:
            raise ValueError("This pair was merged already.")
        other_id = pair.product_b_id if keep_id == pair.product_a_id else pair.product_a_id
        target, source = (Product.objects.select_for_update().get(pk=pk) for pk in (keep_id, other_id))
        _merge_check(source=source, target=target)
        _images_move(source=source, target=target)
        _downloads_move(source=source, target=target)
        Product.objects.filter(pk=source.pk).update(is_active=False, updated_at=timezone.now())
        Product.objects.filter(pk=target.pk).update(updated_at=timezone.now())
        pair.status, pair.kept, pair.decided_by, pair.decided_at = (
            DuplicatePair.Status.MERGED, target, user, timezone.now())
        pair.save(update_fields=["status", "kept", "decided_by", "decided_at", "updated_at"])
    logger.info("products %s merged into %s", other_id, keep_id)
    return pair


# --------------------------------------------------------------------------- reads

def duplicate_pairs(*, status: str | None = DuplicatePair.Status.OPEN, kind: str | None = None, category=None):
    """Pairs for review, closest first; open ones only where both products are still shown."""
    qs = DuplicatePair.objects.select_related("product_a", "product_b", "image_a", "image_b", "kept")
    if status:
        qs = qs.filter(status=status)
    if status == DuplicatePair.Status.OPEN:
        qs = qs.filter(product_a__is_active=True, product_b__is_active=True)
    if kind:
        qs = qs.filter(kind=kind)
    if category is not None:
        pk = getattr(category, "pk", category)
        qs = qs.filter(Q(product_a__category_id=pk) | Q(product_b__category_id=pk))
    return qs.order_by("distance", "id")


_PAIRED = ~Q(status=DuplicatePair.Status.NOT_DUPLICATE)


def product_duplicate_ids(*, product_id: int) -> list[int]:
    """The products paired with ``product_id`` (all but "not a duplicate"): never in its panel."""
    return sorted(partner_ids(product_ids=[product_id]))


def partner_ids(*, product_ids) -> set[int]:
    """The products paired with any of ``product_ids`` (all but "not a duplicate")."""
    ids = list({int(i) for i in product_ids})
    if not ids:
        return set()
    rows = DuplicatePair.objects.filter(_PAIRED).filter(Q(product_a_id__in=ids) | Q(product_b_id__in=ids))
    return {p for pair in rows.values_list("product_a_id", "product_b_id") for p in pair} - set(ids)


def duplicate_links(*, product_ids) -> set[tuple[int, int]]:
    """The pairs among ``product_ids`` (all but "not a duplicate"), as (lower id, higher id)."""
    ids = list({int(i) for i in product_ids})
    if len(ids) < 2:
        return set()
    rows = DuplicatePair.objects.filter(_PAIRED, product_a_id__in=ids, product_b_id__in=ids)
    return set(rows.values_list("product_a_id", "product_b_id"))


def duplicates_collapse(rows, links: set[tuple[int, int]]) -> list:
    """(product id, distance) rows, nearest first, without any product paired with a nearer one."""
    kept: list = []
    for row in rows:
        if not any((min(row[0], k[0]), max(row[0], k[0])) in links for k in kept):
            kept.append(row)
    return kept


# A product paired with a nearer one in an answer is left out, and the answer topped up: at most
# this many queries for one answer (each asks for as many more as were left out).
DUPLICATE_TOP_UPS = 3


def nearest_without_duplicates(query, k: int) -> list[tuple[int, float]]:
    """``query(n)``'s n nearest (product id, distance) rows, without any product paired with a
    nearer one (catalog.duplicates), k of them whenever the query has k such."""
    n = k
    rows = query(n)
    for _ in range(DUPLICATE_TOP_UPS):
        links = duplicate_links(product_ids=[pid for pid, _ in rows])
        kept = duplicates_collapse(rows, links) if links else rows
        if len(kept) >= k or len(rows) < n:
            return kept[:k]
        n += len(rows) - len(kept)
        rows = query(n)
    return duplicates_collapse(rows, duplicate_links(product_ids=[p for p, _ in rows]))[:k]
