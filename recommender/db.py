"""Binary reads of pgvector columns, shared by services (training) and selectors (cold start)."""

from __future__ import annotations

import numpy as np
from django.db import connection


def fetch_binary(sql: str, params) -> list[tuple]:
    """Rows of ``sql`` read with psycopg's binary protocol and pgvector's numpy loader: 10x faster
    than the ORM's text parsing (1,500 x 2048 floats: 0.08 s against 1.8 s through the ORM, 22x).

    Django's connections use client-side binding cursors, which cannot return binary results, so a
    plain psycopg cursor on the same connection (and transaction) is used."""
    import psycopg
    from pgvector.psycopg import register_vector

    connection.ensure_connection()
    raw = connection.connection
    if not getattr(raw, "_vector_registered", False):
        register_vector(raw)
        raw._vector_registered = True
    with psycopg.Cursor(raw) as cursor:
        cursor.execute(sql, params, binary=True)
        return cursor.fetchall()


def to_matrix(vectors, dim: int) -> np.ndarray:
    if not vectors:
        return np.empty((0, dim), np.float32)
    matrix = np.stack([v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v) for v in vectors])
    return matrix.astype(np.float32, copy=False)
