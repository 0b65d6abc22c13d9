"""``make run`` (manage.py rundemo): the ImageNet probe gives up and falls back to random weights,
and a SIGTERM at any point stops the children it started. No server, worker or Keras: the heavy
parts are stubbed, and the probe runs a tiny child process."""

import io
import os
import signal
import sys
import time

import pytest

from catalog.management.commands import rundemo
from config.processes import ManagedProcess
from recommender import backbone


class Unhandled(Exception):
    """Raised by the test's own SIGTERM handler: rundemo did not install its handler in time."""


@pytest.fixture
def guard_sigterm():
    """If rundemo failed to handle SIGTERM, fail the test instead of killing pytest."""
    def handler(signum, frame):
        raise Unhandled()

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


def command():
    out, err = io.StringIO(), io.StringIO()
    return rundemo.Command(stdout=out, stderr=err), out, err


def test_probe_timeout_is_a_short_named_constant():
    assert 30 <= backbone.IMAGENET_PROBE_TIMEOUT_S <= 180


def test_probe_gives_up_on_a_hanging_child_and_kills_it():
    started = time.monotonic()
    ok, reason = backbone.imagenet_weights_probe(env=dict(os.environ), timeout=0.5,
                                                 code="import time; time.sleep(60)")
    assert not ok and "no answer within 0.5 s" in reason
    assert time.monotonic() - started < 10


def test_probe_reports_success_and_the_last_error_line():
    assert backbone.imagenet_weights_probe(env=dict(os.environ), timeout=30, code="pass") == (True, "")
    ok, reason = backbone.imagenet_weights_probe(env=dict(os.environ), timeout=30,
                                                 code="import sys; sys.exit('URL fetch failure: no route')")
    assert not ok and reason == "URL fetch failure: no route"


def test_weights_fall_back_to_random_loudly_when_the_probe_times_out(monkeypatch):
    real = backbone.imagenet_weights_probe
    monkeypatch.setattr(rundemo, "imagenet_weights_probe",
                        lambda env: real(env=env, timeout=0.5, code="import time; time.sleep(60)"))
    cmd, _, err = command()
    assert cmd._weights({k: v for k, v in os.environ.items() if k != "RECOMMENDER_BACKBONE_WEIGHTS"}) == "random"
    warning = err.getvalue()
    assert "could not be loaded" in warning and "no answer within 0.5 s" in warning
    assert "falls back to RECOMMENDER_BACKBONE_WEIGHTS=random" in warning


def test_weights_from_the_environment_skip_the_probe(monkeypatch):
    monkeypatch.setattr(rundemo, "imagenet_weights_probe", lambda env: pytest.fail("probed"))
    assert command()[0]._weights({"RECOMMENDER_BACKBONE_WEIGHTS": "random"}) == "random"


def test_sigterm_during_the_demo_import_stops_the_worker(monkeypatch, guard_sigterm):
    # _run writes these two into os.environ: restore them afterwards.
    for key in ("RECOMMENDER_INPUT_SIZE", "RECOMMENDER_BACKBONE_WEIGHTS"):
        monkeypatch.setenv(key, os.environ.get(key, "32" if key == "RECOMMENDER_INPUT_SIZE" else "random"))
    monkeypatch.setattr(rundemo, "call_command", lambda *a, **k: None)
    monkeypatch.setattr(rundemo.Command, "_admin", lambda self: None)
    monkeypatch.setattr(rundemo, "Product", type("Product", (), {"objects": type("Manager", (), {
        "exists": staticmethod(lambda: False)})}))
    spawned = []

    def spawn(self, name, cmd, env):  # a stand-in worker in its own session, like the real one
        proc = ManagedProcess([sys.executable, "-c", "import time; time.sleep(60)"], name=name)
        spawned.append(proc)
        return proc

    def import_catalog(*args, **kwargs):  # SIGTERM arrives while the demo catalog is imported
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        pytest.fail("SIGTERM did not interrupt the import")

    monkeypatch.setattr(rundemo.Command, "_spawn", spawn)
    monkeypatch.setattr(rundemo.subprocess, "run", import_catalog)
    cmd, out, _ = command()
    cmd.handle(addr="127.0.0.1:0", products=10, concurrency=1)
    assert len(spawned) == 1 and spawned[0].poll() is not None  # the worker was stopped
    assert "Stopped the web server and the worker" in out.getvalue()
    assert signal.getsignal(signal.SIGTERM) is guard_sigterm  # the caller's handler is back


def test_sigterm_before_any_child_exits_cleanly(monkeypatch, guard_sigterm):
    def weights(self, env):  # SIGTERM while the ImageNet probe runs
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        pytest.fail("SIGTERM did not interrupt the probe")

    monkeypatch.setattr(rundemo.Command, "_weights", weights)
    command()[0].handle(addr="127.0.0.1:0", products=10, concurrency=1)  # returns: manage.py's atexit runs
    assert signal.getsignal(signal.SIGTERM) is guard_sigterm
