"""A catalog of synthetic products with one stored embedding each, loaded fast for the query
benchmarks: raw INSERTs for the rows, a binary COPY for the vectors, then the project's own HNSW
index rebuilt (timed and measured). Used by bench/query_speed.py.
"""

from __future__ import annotations

import os
import time

import numpy as np

from bench import common


def _insert_rows_sql(category_of: list[int]) -> None:
    """Products and their image rows (no files: nothing here reads them) in two statements."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO catalog_product (sku, title, description, category_id, price, is_active, in_stock, "
            "created_at, updated_at) "
            "SELECT 'BENCH-' || lpad((t.i - 1)::text, 6, '0'), 'Product #' || (t.i - 1), '', t.category, "
            "10 + (t.i - 1) %% 90, true, true, now(), now() "
            "FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(category, i)", [category_of])
        cursor.execute(
            "INSERT INTO catalog_productimage (product_id, image, image_format, position, width, height, "
            "content_hash, original_name, thumbnails, status, attempts, last_error, processing_token, "
            "status_changed_at, created_at) "
            "SELECT id, 'bench/' || id || '.png', 'PNG', 0, 28, 28, lpad(id::text, 64, '0'), '', '{}'::jsonb, "
            "'ready', 0, '', '', now(), now() FROM catalog_product WHERE sku LIKE 'BENCH-%%'", [])


def _product_rows_create(labels, categories) -> None:
    """One product and one (ready) image row per vector: raw INSERTs, or bulk_create as a fallback."""
    from django.db import connection

    from catalog.models import Product, ProductImage

    category_of = [categories[label].pk for label in labels]
    try:
        _insert_rows_sql(category_of)
    except Exception as exc:  # a column added since this was written: the slower, model-aware path
        print(f"  (raw INSERT failed: {type(exc).__name__}; using bulk_create)")
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE catalog_productimage, catalog_product RESTART IDENTITY CASCADE")
        Product.objects.bulk_create(
            [Product(sku=f"BENCH-{i:06d}", title=f"{labels[i]} #{i}", category_id=category_of[i],
                     price=10 + i % 90) for i in range(len(labels))], batch_size=5000)
        ids = Product.objects.filter(sku__startswith="BENCH-").values_list("id", flat=True)
        ProductImage.objects.bulk_create(
            [ProductImage(product_id=pid, image=f"bench/{pid}.png", image_format="PNG", width=28, height=28,
                          content_hash=f"{pid:064d}", status=ProductImage.Status.READY) for pid in ids],
            batch_size=5000)


def _hnsw_index_drop() -> str:
    """Drop the HNSW index (rebuilt after the COPY, much faster than inserting into it); its definition."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'embedding_vector_hnsw'")
        row = cursor.fetchone()
        if row is None:
            raise RuntimeError("the HNSW index embedding_vector_hnsw is missing from recommender_embedding")
        cursor.execute("DROP INDEX embedding_vector_hnsw")
    return row[0]


def work_mem_gib(rows: int) -> int:
    """Room for the whole graph in memory while building (pgvector slows down a lot once it no
    longer fits): ~2.6 KiB a 512-d row with its m=16 neighbour lists, plus a margin."""
    return max(1, -(-rows * 3 * 1024 // 2 ** 30))


def _embeddings_copy_and_index(rows, version_id: int, indexdef: str) -> dict:
    """COPY (image, product, vector, label) rows in binary on a connection of our own (the vector
    type registered there only), then build the index; the timings and sizes."""
    import psycopg
    from pgvector.psycopg import register_vector

    timings = {}
    started = time.perf_counter()
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as raw:
        register_vector(raw)
        with raw.cursor() as cursor, cursor.copy(
                "COPY recommender_embedding (image_id, product_id, version_id, vector, predicted, confidence) "
                "FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int8", "int8", "vector", "varchar", "float8"])
            for image_id, product_id, vector, label in rows:
                copy.write_row([image_id, product_id, version_id, vector, label, 1.0])
        raw.execute("ANALYZE recommender_embedding")
        raw.execute("ANALYZE catalog_product")
        timings["copy_seconds"] = round(time.perf_counter() - started, 1)
        rows_loaded = raw.execute("SELECT count(*) FROM recommender_embedding").fetchone()[0]
        raw.execute(f"SET maintenance_work_mem = '{work_mem_gib(rows_loaded)}GB'")
        started = time.perf_counter()
        raw.execute(indexdef)
        timings["index_build_seconds"] = round(time.perf_counter() - started, 2)
        size = raw.execute("SELECT pg_relation_size('embedding_vector_hnsw'), "
                           "pg_total_relation_size('recommender_embedding')").fetchone()
        timings["index_mib"] = round(size[0] / 2 ** 20, 1)
        timings["table_total_mib"] = round(size[1] / 2 ** 20, 1)
        timings["index_definition"] = indexdef
        timings["parallel_maintenance_workers"] = raw.execute("SHOW max_parallel_maintenance_workers").fetchone()[0]
    return timings


def load_catalog(vectors: np.ndarray, labels: np.ndarray):
    """Products, images (rows only) and one embedding each, under a fresh active version.
    Returns (version, product ids aligned with ``vectors``, category ids aligned, timings)."""
    from django.db import connection

    from catalog.models import Category, Product, ProductImage
    from catalog.services import category_get_or_create
    from recommender.models import ModelVersion

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE recommender_embedding, recommender_backbonefeature, catalog_productimage, "
                       "catalog_product, recommender_modelversion RESTART IDENTITY CASCADE")
    categories = {name: category_get_or_create(name=name) for name in sorted(set(labels))}
    started = time.perf_counter()
    _product_rows_create(labels, categories)
    products = list(Product.objects.filter(sku__startswith="BENCH-").order_by("sku").values_list("id", "category_id"))
    product_ids = np.array([p for p, _ in products])
    category_ids = np.array([c for _, c in products])
    image_of = dict(ProductImage.objects.filter(product_id__in=product_ids.tolist()).values_list("product_id", "id"))
    version = ModelVersion.objects.create(status=ModelVersion.Status.ACTIVE, backbone="bench:synthetic",
                                          weights=common.weights(), input_size=0, classes=sorted(categories))
    timings = {"rows_seconds": round(time.perf_counter() - started, 1)}
    rows = ((image_of[int(pid)], int(pid), vector, str(label)) for pid, vector, label in zip(product_ids, vectors,
                                                                                              labels))
    timings.update(_embeddings_copy_and_index(rows, version.pk, _hnsw_index_drop()))
    assert Category.objects.count() >= len(categories)
    return version, product_ids, category_ids, timings


def rebuild_index(indexdef: str) -> float:
    """Drop and rebuild the HNSW index exactly as load_catalog built it; returns the build seconds."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as raw:
        rows = raw.execute("SELECT count(*) FROM recommender_embedding").fetchone()[0]
        raw.execute(f"SET maintenance_work_mem = '{work_mem_gib(rows)}GB'")
        raw.execute("DROP INDEX embedding_vector_hnsw")
        started = time.perf_counter()
        raw.execute(indexdef)
        return round(time.perf_counter() - started, 2)
