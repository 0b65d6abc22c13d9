"""PostgreSQL advisory locks of the recommender.

A training holds a session-level advisory lock (namespace, version id) for as long as it runs;
PostgreSQL releases it when that process's connection dies. So "is a training of v<id> alive?"
has an exact answer, unlike a heartbeat, and a second delivery of the same training finds the
lock taken and does nothing.

Changing which version serves takes a *transaction-level* advisory lock (:func:`serving_lock`):
activations queue behind each other instead of racing for the one active row.
"""

from __future__ import annotations

from contextlib import contextmanager

from django.db import connection

TRAINING_LOCK_NAMESPACE = 0x4C4B
NEIGHBOURS_LOCK_NAMESPACE = 0x4C4E  # a version's neighbour lists being built or folded
SERVING_LOCK_NAMESPACE = 0x4C53  # which version serves (one key: there is one active version)
VECTOR_INDEX_LOCK_NAMESPACE = 0x4C49  # a rebuild of the vector indexes (one key)


def _try_lock(namespace: int, version_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [namespace, version_id])
        return bool(cursor.fetchone()[0])


def _unlock(namespace: int, version_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [namespace, version_id])


@contextmanager
def _lock(namespace: int, version_id: int):
    if not _try_lock(namespace, version_id):
        yield False
        return
    try:
        yield True
    finally:
        _unlock(namespace, version_id)


def training_lock(version_id: int):
    """Yields True while this process holds the training lock of ``version_id``, False (and holds
    nothing) when another process has it."""
    return _lock(TRAINING_LOCK_NAMESPACE, version_id)


def neighbours_lock(version_id: int):
    """The same for the refresh of a version's neighbour lists."""
    return _lock(NEIGHBOURS_LOCK_NAMESPACE, version_id)


def vector_index_lock():
    """Yields True while this process holds the (one) lock of a vector index rebuild."""
    return _lock(VECTOR_INDEX_LOCK_NAMESPACE, 0)


def training_alive(version_id: int) -> bool:
    """Whether some process is training this version right now."""
    with training_lock(version_id) as acquired:
        return not acquired


def serving_lock() -> None:
    """Wait for, and hold until the end of the current transaction, the lock of "which version
    serves". Two activations started together then run one after the other: the second sees the
    first one's result (committed) instead of both retiring the same old version and the second
    hitting the one_active_version constraint. Must be called inside ``transaction.atomic``."""
    if not connection.in_atomic_block:
        raise RuntimeError("serving_lock() outside a transaction would be released at once")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [SERVING_LOCK_NAMESPACE])
