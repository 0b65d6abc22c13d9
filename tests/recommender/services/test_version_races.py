"""Version transitions racing each other (issue 15, item 6): activation, retirement and failure of
the same versions from two database connections, each interleaving forced in a fixed order.

Each side runs in its own thread, so on its own Django connection. A side is paused *inside* its
lock by running it in an outer transaction that stays open until the test releases it; the other
side is then known to wait for that lock when PostgreSQL reports it blocked (pg_blocking_pids),
not after a sleep. transactional_db: both connections see each other's commits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction

from recommender.models import ModelVersion
from recommender.services.training import model_version_fail
from recommender.services.versions import model_version_activate, model_version_retire
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def version_row(settings, status):
    version = ModelVersion.objects.create(status=status, backbone="resnet50:random-seed1234:32", weights="random",
                                          input_size=32, classes=["a", "b"])
    folder = Path(settings.MODELS_ROOT, f"v{version.pk}")
    folder.mkdir(parents=True)
    (folder / "head.keras").write_bytes(b"model files")
    version.artifacts = str(folder)
    version.save(update_fields=["artifacts"])
    return version


def fresh(version) -> ModelVersion:
    return ModelVersion.objects.get(pk=version.pk)


def statuses(*versions) -> list[str]:
    return [fresh(v).status for v in versions]


class Side:
    """``function()`` in a thread of its own (its own connection). ``hold=True``: in an outer
    transaction kept open, with its locks, after ``function`` returned, until :meth:`finish`."""

    def __init__(self, function, *, hold=False):
        self.function, self.hold = function, hold
        self.pid = self.result = self.error = None
        self.started, self.holding, self.release = threading.Event(), threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.pid = cursor.fetchone()[0]
            self.started.set()
            if self.hold:
                with transaction.atomic():
                    self.result = self.function()
                    self.holding.set()
                    assert self.release.wait(30)
            else:
                self.result = self.function()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
        finally:
            self.started.set()
            self.holding.set()
            connection.close()

    def start(self) -> Side:
        self.thread.start()
        assert self.started.wait(30)
        if self.hold:
            assert self.holding.wait(30)
            assert self.error is None, self.error
        return self

    def finish(self) -> Side:
        self.release.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self


def blocked(side: Side) -> None:
    """Until PostgreSQL reports ``side``'s connection waiting for a lock another session holds."""
    def waiting():
        with connection.cursor() as cursor:
            cursor.execute("SELECT cardinality(pg_blocking_pids(%s)) > 0", [side.pid])
            return cursor.fetchone()[0]

    wait_for(waiting, timeout=30, interval=0.02, message=f"backend {side.pid} to wait for the other's lock")


def test_a_version_retired_while_its_activation_waits_for_the_lock_is_not_activated(settings):
    old, new = version_row(settings, "active"), version_row(settings, "ready")
    seen_by_training = fresh(new)  # ready: the training passed the gate and is activating it
    staff = Side(lambda: model_version_retire(version=fresh(new)), hold=True).start()  # retired, not committed yet
    training = Side(lambda: model_version_activate(version=seen_by_training)).start()
    blocked(training)
    staff.finish()
    training.finish()
    assert staff.error is None
    assert statuses(old, new) == ["active", "retired"]  # staff's retirement wins: the old one serves on
    assert isinstance(training.error, ValidationError)
    assert f"v{new.pk} is retired" in " ".join(training.error.messages)


def test_retiring_a_ready_version_that_was_activated_meanwhile_does_not_leave_none_active(settings):
    old, new = version_row(settings, "active"), version_row(settings, "ready")
    seen_by_staff = fresh(new)  # staff's page shows it ready
    training = Side(lambda: model_version_activate(version=fresh(new)), hold=True).start()
    staff = Side(lambda: model_version_retire(version=seen_by_staff)).start()
    blocked(staff)
    training.finish()
    staff.finish()
    assert training.error is None
    assert statuses(old, new) == ["retired", "active"]
    assert ModelVersion.objects.filter(status="active").count() == 1
    # Said to staff, who retired a *ready* version: it is active now, and nothing was changed.
    assert isinstance(staff.error, ValidationError)
    message = " ".join(staff.error.messages)
    assert f"v{new.pk} is active now" in message and "nothing was retired" in message


def test_a_version_failed_between_the_activation_checks_and_its_lock_is_not_activated(settings):
    old, new = version_row(settings, "active"), version_row(settings, "ready")
    seen_by_staff = fresh(new)
    locked, go = threading.Event(), threading.Event()

    def recovery_fails_it():
        with transaction.atomic():
            ModelVersion.objects.select_for_update().get(pk=new.pk)  # the failure has the row...
            locked.set()
            assert go.wait(30)
            model_version_fail(version=fresh(new), reason="Training stopped sending heartbeats (worker lost).")

    recovery = Side(recovery_fails_it).start()
    assert locked.wait(30)
    staff = Side(lambda: model_version_activate(version=seen_by_staff)).start()  # ...the files are still there
    blocked(staff)
    go.set()
    recovery.finish()
    staff.finish()
    assert recovery.error is None
    assert statuses(old, new) == ["active", "failed"]  # never active with its files gone
    assert not Path(settings.MODELS_ROOT, f"v{new.pk}").exists()
    assert isinstance(staff.error, ValidationError) and f"v{new.pk} is failed" in " ".join(staff.error.messages)


def test_a_failure_after_the_activation_leaves_the_version_serving_with_its_files(settings):
    old, new = version_row(settings, "active"), version_row(settings, "ready")
    seen_by_recovery = fresh(new)
    activation = Side(lambda: model_version_activate(version=fresh(new)), hold=True).start()
    recovery = Side(lambda: model_version_fail(version=seen_by_recovery, reason="late")).start()
    blocked(recovery)
    activation.finish()
    recovery.finish()
    assert (activation.error, recovery.error) == (None, None)
    assert statuses(old, new) == ["retired", "active"]
    assert Path(settings.MODELS_ROOT, f"v{new.pk}", "head.keras").exists()


def test_two_concurrent_activations_end_with_the_second_active_and_no_error(settings):
    first, second, third = (version_row(settings, status) for status in ("active", "ready", "ready"))
    seen = fresh(third)
    one = Side(lambda: model_version_activate(version=fresh(second)), hold=True).start()
    other = Side(lambda: model_version_activate(version=seen)).start()
    blocked(other)
    one.finish()
    other.finish()
    assert (one.error, other.error) == (None, None)  # not the one_active_version constraint
    assert statuses(first, second, third) == ["retired", "retired", "active"]
