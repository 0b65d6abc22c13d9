"""The training lock (recommender.locks): a PostgreSQL session-level advisory lock, so it is seen
from every other connection while held, released at the end of the with-block (even by an
error) and when its connection dies. Locks are per connection: the other side of each check
here is a second connection (another thread's Django connection, or a plain psycopg one)."""

import threading

import pytest
from django.db import connection

from recommender.locks import training_alive, training_lock
from tests.conftest import wait_for
from tests.recommender.helpers import lock_from_another_session

pytestmark = pytest.mark.django_db


def in_another_connection(function, *args):
    """``function(*args)`` in a thread, so on another Django connection (closed afterwards)."""
    result = {}

    def run():
        try:
            result["value"] = function(*args)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return result["value"]


def other_connection_can_lock(version_id) -> bool:
    with training_lock(version_id) as acquired:
        return acquired


def test_a_held_lock_is_alive_from_another_connection_and_released_after_the_block():
    with training_lock(41) as acquired:
        assert acquired is True
        assert in_another_connection(training_alive, 41) is True
        assert in_another_connection(other_connection_can_lock, 41) is False  # a second delivery does nothing
        assert in_another_connection(training_alive, 42) is False  # one lock per version
    assert in_another_connection(training_alive, 41) is False
    assert in_another_connection(other_connection_can_lock, 41) is True


def test_the_lock_is_released_when_the_block_raises():
    with pytest.raises(RuntimeError), training_lock(43):
        raise RuntimeError("the training failed")
    assert in_another_connection(training_alive, 43) is False


def test_a_lock_held_by_another_session_goes_with_its_connection():
    other = lock_from_another_session(44)
    try:
        assert training_alive(44) is True
        with training_lock(44) as acquired:
            assert acquired is False
    finally:
        other.close()  # the worker's process died: PostgreSQL drops its session's locks
    # ...as soon as its backend has seen the connection close (a moment later).
    wait_for(lambda: not training_alive(44), timeout=10, message="the lock to be released")
    with training_lock(44) as acquired:
        assert acquired is True
