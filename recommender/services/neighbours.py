"""Precomputed nearest-neighbour lists per model version: the product panel as a primary-key lookup.

Each product of a version gets the LIST_SIZE nearest other products of its query image (its
first image, as ``similar_products`` picks it), computed exactly in numpy. Embeddings stored
after the lists were built (ingestion) are not lost: the read path
(``recommender.selectors.similarity``) scans them exactly and merges them with the list, and once
there are enough of them they are folded into the lists here. Measured at 100,000 synthetic
512-d products (bench/query_speed.py, 2 cores; docs/benchmarks.md): see the module's constants
and the benchmark for the figures.

Contract: ``neighbours_refresh`` (the ``refresh_neighbours`` task, sent after embeddings are
stored and by the periodic recovery) is idempotent and single-flight per version (an advisory
lock). Lists are exact for the rows they were built from; an image deleted since leaves its
product at its old distance in other lists until the next build (every training builds afresh).

Tables: ``NeighbourList`` (version, product, query image, neighbour ids, distances) and
``NeighbourListState`` (per version: the newest embedding id the lists account for, ``upto``,
and the rows they were built on). Written here with raw SQL (COPY), read by the selector.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from django.db import connection, transaction

from recommender import db
from recommender.conf import config
from recommender.locks import neighbours_lock
from recommender.models import EMBEDDING_DIM, NEIGHBOURS_DELTA_MAX, Embedding, NeighbourList, NeighbourListState

logger = logging.getLogger(__name__)

LIST_SIZE = 32  # neighbours kept per product: serves k <= 32 and filters that keep >= k of them
BLOCK = 256  # query rows per matrix product: 256 x 100,000 float32 distances = 100 MB at a time
SAMPLE_STRIDE, SAMPLE_RANK = 50, 12  # ~600 of a row's entries fall below its bound: >= 128 all but ~1e-5 of rows
# Embeddings newer than the lists are scanned exactly on every panel read (~3 us each at 100,000
# products: the exact SQL scan's 298 ms / 100,000 rows), so they are folded in once they reach
# 1% of the version's rows (>= FOLD_MIN_ROWS): at most ~3 ms added to a read at 100,000 products.
FOLD_MIN_ROWS = 256
FOLD_SHARE = 0.01
FOLD_OVERLAP = 10_000  # ids below ``upto`` a fold looks at again (rows committed after the lists' snapshot)


def _version_rows(version_id: int):
    """(embedding ids, product ids, matrix, index of each product's query image) of a version."""
    rows = db.fetch_binary(
        """SELECT e.id, e.product_id, e.image_id, e.vector FROM recommender_embedding e
           JOIN catalog_productimage i ON i.id = e.image_id
           WHERE e.version_id = %s ORDER BY e.product_id, i.position, e.image_id""", [version_id])
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    products = np.array([r[1] for r in rows], dtype=np.int64)
    images = np.array([r[2] for r in rows], dtype=np.int64)
    matrix = db.to_matrix([r[3] for r in rows], EMBEDDING_DIM)
    first = np.flatnonzero(np.r_[True, products[1:] != products[:-1]]) if len(products) else np.empty(0, int)
    return ids, products, images, matrix, first


def _nearest_rows(d: np.ndarray, take: int) -> list[np.ndarray]:
    """The column indices of each row's ``take`` smallest entries of ``d``, unordered.

    A full argpartition of every row cost 3x the matrix product that made it (0.94 vs 0.33 s for
    256 x 100,000 on 2 cores): instead a strided sample's SAMPLE_RANK-th smallest bounds each row
    (~SAMPLE_RANK x SAMPLE_STRIDE entries fall below it), and only those are partitioned. A row
    whose bound lets fewer than ``take`` through is partitioned in full."""
    if take >= d.shape[1]:
        return [np.arange(d.shape[1])] * len(d)
    sample = d[:, ::SAMPLE_STRIDE]
    rank = min(SAMPLE_RANK, sample.shape[1] - 1)
    bound = np.partition(sample, rank, axis=1)[:, rank]
    rows, cols = np.nonzero(d <= bound[:, None])
    edges = np.searchsorted(rows, np.arange(len(d) + 1))
    out = []
    for row in range(len(d)):
        candidates = cols[edges[row]:edges[row + 1]]
        if len(candidates) < take:
            candidates = np.arange(d.shape[1])
        out.append(candidates[np.argpartition(d[row, candidates], take - 1)[:take]])
    return out


def _top_lists(queries: np.ndarray, query_products: np.ndarray, matrix: np.ndarray, products: np.ndarray,
               size: int = LIST_SIZE, progress=None):
    """For each query row: the ``size`` nearest other products (each at its nearest row), exact.

    Candidates are picked by the expanded squared distance (one matrix product per block), then
    their distances recomputed directly (the expansion loses precision for near points)."""
    squared = np.einsum("ij,ij->i", matrix, matrix)
    # Room for products with several images and for the query's own rows. A product whose
    # candidates are spread over fewer than ``size`` products gets a shorter list; it is still
    # exact, since every row left out is farther than all of those kept.
    take = min(len(matrix), size * 4)
    out = []
    for start in range(0, len(queries), BLOCK):
        block, owners = queries[start:start + BLOCK], query_products[start:start + BLOCK]
        d = block @ matrix.T
        d *= -2.0
        d += squared[None, :]
        for query, owner, candidates in zip(block, owners, _nearest_rows(d, take)):
            exact = np.linalg.norm(matrix[candidates] - query, axis=1)
            exact[products[candidates] == owner] = np.inf
            order = np.lexsort((products[candidates], exact))
            ranked, distances = products[candidates[order]], exact[order]
            _, first = np.unique(ranked, return_index=True)  # each product at its nearest row
            first = np.sort(first)
            first = first[np.isfinite(distances[first])][:size]
            out.append((ranked[first].tolist(), distances[first].tolist()))
        if progress:
            progress(len(block))
    return out


def _lists_write(version_id: int, product_ids, image_ids, lists) -> None:
    """Replace the lists of these products (one COPY into a temporary table, then one statement)."""
    import psycopg

    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS neighbours_load (product_id bigint, image_id bigint, "
                       "neighbour_ids bigint[], distances real[]) ON COMMIT DELETE ROWS")
    with psycopg.Cursor(connection.connection) as cursor:
        with cursor.copy("COPY neighbours_load FROM STDIN") as copy:
            for pid, image, (ids, distances) in zip(product_ids, image_ids, lists):
                copy.write_row([int(pid), int(image), ids, distances])
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO recommender_neighbours (version_id, product_id, image_id, neighbour_ids, distances)
               SELECT %s, l.product_id, l.image_id, l.neighbour_ids, l.distances FROM neighbours_load l
               JOIN catalog_product p ON p.id = l.product_id
               ON CONFLICT (version_id, product_id) DO UPDATE SET image_id = EXCLUDED.image_id,
                   neighbour_ids = EXCLUDED.neighbour_ids, distances = EXCLUDED.distances""", [version_id])
        cursor.execute("TRUNCATE neighbours_load")


def _state_write(version_id: int, upto: int, rows: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO recommender_neighbours_state (version_id, upto, rows, built_at) VALUES (%s, %s, %s, now())
               ON CONFLICT (version_id) DO UPDATE SET upto = EXCLUDED.upto, rows = EXCLUDED.rows,
                   built_at = EXCLUDED.built_at""", [version_id, upto, rows])


def neighbours_rebuild(*, version_id: int, product_ids=None, progress=None) -> dict:
    """Every product's list of a version, exact; ``product_ids``: only theirs (the benchmark's
    1,000,000-row point); ``progress(done, total)`` after each block of products. The rows are read in one statement (one snapshot) and the lists computed
    outside any transaction; only the write is one."""
    started = time.perf_counter()
    ids, products, images, matrix, first = _version_rows(version_id)
    read = time.perf_counter() - started
    if product_ids is not None:
        first = first[np.isin(products[first], np.asarray(product_ids))]
    done = 0

    def listed(n):
        nonlocal done
        done += n
        progress(done, len(first))

    lists = _top_lists(matrix[first], products[first], matrix, products, progress=listed if progress else None)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM recommender_neighbours WHERE version_id = %s", [version_id])
        _lists_write(version_id, products[first], images[first], lists)
        _state_write(version_id, int(ids.max()) if len(ids) else 0, len(ids))
    seconds = round(time.perf_counter() - started, 2)
    logger.info("neighbour lists of v%s: %s products in %s s", version_id, len(first), seconds)
    return {"products": len(first), "seconds": seconds, "read_seconds": round(read, 2)}


def _merge(ids, distances, extra: dict[int, float], size: int = LIST_SIZE):
    """A list with more candidates taken in; idempotent (each product once, at its least distance)."""
    best = dict(zip(ids, distances))
    for pid, distance in extra.items():
        if distance < best.get(pid, np.inf):
            best[pid] = distance
    ranked = sorted(best.items(), key=lambda item: (item[1], item[0]))[:size]
    return [p for p, _ in ranked], [d for _, d in ranked]


def _taken_in(block: np.ndarray, owners: np.ndarray, limits: np.ndarray, fresh: np.ndarray, fresh_products):
    """For each row of ``block``: {product: distance} of the ``fresh`` rows nearer than its limit."""
    squared = np.einsum("ij,ij->i", fresh, fresh)
    d = np.einsum("ij,ij->i", block, block)[:, None] - 2.0 * (block @ fresh.T) + squared[None, :]
    # Slack: the expansion is approximate; the exact distance below decides.
    near = (d < (limits * 1.001 + 1e-3)[:, None] ** 2) & (fresh_products[None, :] != owners[:, None])
    out = {}
    for r in np.flatnonzero(near.any(axis=1)):
        cols = np.flatnonzero(near[r])
        exact = np.linalg.norm(fresh[cols] - block[r], axis=1)
        extra: dict[int, float] = {}
        for q, distance in zip(fresh_products[cols].tolist(), exact.tolist()):
            extra[q] = min(distance, extra.get(q, np.inf))
        out[r] = extra
    return out


def neighbours_fold(*, version_id: int) -> dict:
    """Fold the embeddings stored since the lists were built into them, exactly: the products
    that got embeddings are listed afresh (their query image may have changed), and every other
    list takes in the new rows that come nearer than its last entry.

    "Since" reaches FOLD_OVERLAP ids below the lists' ``upto``: a row whose id was drawn before
    the lists' snapshot but committed after it is taken in too (taking a row in twice changes
    nothing)."""
    started = time.perf_counter()
    state = NeighbourListState.objects.filter(version_id=version_id).values_list("upto", flat=True).first()
    if state is None:
        return {"products": 0, "seconds": 0.0}
    ids, products, images, matrix, first = _version_rows(version_id)
    fresh = ids > state
    if not fresh.any():
        return {"products": 0, "seconds": 0.0}
    fresh |= ids > state - FOLD_OVERLAP
    stored = {pid: (n, d) for pid, n, d in NeighbourList.objects.filter(version_id=version_id).values_list(
        "product_id", "neighbour_ids", "distances")}
    # Listed afresh: products with new rows, and products of the overlap that have no list (their
    # rows were committed after the build's snapshot).
    unlisted = [p for p in np.unique(products[fresh]).tolist() if p not in stored]
    changed = np.isin(products[first], np.union1d(products[ids > state], unlisted))
    mine = first[changed]
    lists = _top_lists(matrix[mine], products[mine], matrix, products)
    others = first[~changed]
    new_rows = np.flatnonzero(fresh)
    updates_p, updates_i, updates_l = [], [], []
    for start in range(0, len(others), BLOCK * 4):
        rows = others[start:start + BLOCK * 4]
        owned = [stored.get(int(p), ([], [])) for p in products[rows]]
        limits = np.array([d[-1] if len(d) >= LIST_SIZE else np.inf for _, d in owned])
        for r, extra in _taken_in(matrix[rows], products[rows], limits, matrix[new_rows],
                                  products[new_rows]).items():
            n, dist = owned[r]
            updates_p.append(int(products[rows[r]]))
            updates_i.append(int(images[rows[r]]))
            updates_l.append(_merge(list(n), list(dist), extra))
    with transaction.atomic():
        _lists_write(version_id, [*products[mine], *updates_p], [*images[mine], *updates_i], [*lists, *updates_l])
        _state_write(version_id, int(ids.max()), len(ids))
    seconds = round(time.perf_counter() - started, 2)
    return {"products": len(mine) + len(updates_p), "seconds": seconds}


def neighbours_refresh(*, version_id: int, progress=None) -> dict | None:
    """After embeddings were stored for a version: build its lists when it has none, fold the new
    rows in once they are FOLD_SHARE of the version (else the read path scans them), else
    nothing. A version above ``NEIGHBOUR_LISTS_MAX_ROWS`` has no lists (the index answers).

    One refresh per version at a time (an advisory lock; a second one returns None at once: the
    periodic recovery sends another later). Idempotent."""
    with neighbours_lock(version_id) as acquired:
        if not acquired:
            return None
        rows = Embedding.objects.filter(version_id=version_id).count()
        if rows == 0 or rows > config().neighbour_lists_max_rows:
            neighbours_delete(version_id=version_id)
            return None
        state = NeighbourListState.objects.filter(version_id=version_id).values_list("upto", "rows").first()
        if state is None:
            return neighbours_rebuild(version_id=version_id, progress=progress)
        if Embedding.objects.filter(version_id=version_id, id__gt=state[0]).count() < _fold_rows(state[1]):
            return None
        return neighbours_fold(version_id=version_id)


def _fold_rows(rows: int) -> int:
    return min(NEIGHBOURS_DELTA_MAX, max(FOLD_MIN_ROWS, int(rows * FOLD_SHARE)))


def neighbours_delete(*, version_id: int) -> None:
    """A version's lists (its embeddings are being pruned, or it grew past the lists' limit)."""
    NeighbourListState.objects.filter(version_id=version_id).delete()
    NeighbourList.objects.filter(version_id=version_id).delete()
