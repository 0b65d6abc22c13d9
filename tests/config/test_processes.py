"""config.processes.ManagedProcess: the one supervisor of rundemo's, the tests' and the benchmarks'
child processes. Tiny Python children only (no Celery, no Django): a few seconds in all."""

import signal
import sys
import time

import psutil
import pytest

from config.processes import ManagedProcess, celery_worker_command, stop_all

# A child that forks a grandchild (like Celery's pool), says so, and sleeps.
PARENT = r"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("ready.", flush=True)
time.sleep(60)
"""
# A child that ignores SIGTERM: stop() must escalate.
STUBBORN = r"""
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready.", flush=True)
time.sleep(60)
"""

# A child whose grandchild ignores SIGTERM (as a fork of a gunicorn worker keeps the worker's handler,
# which only flips a flag): the child exits on SIGTERM, its grandchild would be left behind.
ABANDONS = r"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "time.sleep(60)"])
print("ready.", flush=True)
time.sleep(60)
"""


def python(code, tmp_path, **kwargs):
    return ManagedProcess([sys.executable, "-c", code], log=tmp_path / "child.log", **kwargs)


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_env_overrides_and_output(tmp_path, monkeypatch):
    monkeypatch.setenv("INHERITED", "yes")
    proc = python("import os; print(os.environ['INHERITED'], os.environ['COUNT'])", tmp_path,
                  env_overrides={"COUNT": 3})
    assert proc.wait(30) == 0
    assert proc.output() == "yes 3\n" and proc.env["COUNT"] == "3"


def test_stop_ends_the_whole_process_group(tmp_path):
    with python(PARENT, tmp_path, name="parent") as proc:
        proc.wait_ready("ready.", timeout=30)
        children = proc.child_pids()
        assert len(children) == 1
        assert proc.stop(timeout=10) == -signal.SIGTERM
    assert not proc.running
    deadline = time.monotonic() + 10
    while not gone(children[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(children[0])  # the grandchild got the SIGTERM too
    assert proc.child_pids() == []


def test_kill_sends_the_signal_to_the_group(tmp_path):
    proc = python(PARENT, tmp_path)
    proc.wait_ready("ready.", timeout=30)
    children = proc.child_pids()
    assert proc.kill(signal.SIGKILL) == -signal.SIGKILL
    psutil.wait_procs([psutil.Process(pid) for pid in children if not gone(pid)], timeout=10)
    assert all(gone(pid) for pid in children)
    proc.stop()  # nothing left to do, no error


def test_stop_escalates_to_sigkill(tmp_path):
    proc = python(STUBBORN, tmp_path)
    proc.wait_ready("ready.", timeout=30)
    started = time.monotonic()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_stop_all_stops_in_parallel(tmp_path):
    procs = [ManagedProcess([sys.executable, "-c", STUBBORN], log=tmp_path / f"{i}.log") for i in range(3)]
    for proc in procs:
        proc.wait_ready("ready.", timeout=30)
    started = time.monotonic()
    stop_all(procs, timeout=1)
    assert time.monotonic() - started < 5  # one shared timeout, not one per process
    assert [proc.returncode for proc in procs] == [-signal.SIGKILL] * 3


def test_wait_ready_with_a_predicate_returns_its_value(tmp_path):
    with python(PARENT, tmp_path) as proc:
        assert proc.wait_ready(lambda: "ready." in proc.output() and 42, timeout=30) == 42


def test_wait_ready_reports_an_early_exit_with_the_output(tmp_path):
    proc = python("print('no broker'); raise SystemExit(3)", tmp_path, name="celery worker")
    with pytest.raises(RuntimeError, match=r"celery worker did not start \(exited with code 3\)") as info:
        proc.wait_ready("ready.", timeout=30)
    assert "no broker" in str(info.value)


def test_wait_ready_stops_a_process_that_is_never_ready(tmp_path):
    proc = python("import time; time.sleep(60)", tmp_path, name="sleeper")
    with pytest.raises(RuntimeError, match=r"sleeper did not start \(not ready after 0.5 s\)"):
        proc.wait_ready("ready.", timeout=0.5)
    assert not proc.running


def test_without_a_log_output_is_empty(tmp_path):
    proc = ManagedProcess([sys.executable, "-c", "pass"])
    assert proc.wait(30) == 0 and proc.output() == ""


def test_celery_worker_command():
    cmd = celery_worker_command(concurrency=2, node_name="n@%h", beat_schedule=".beat")
    assert cmd[:6] == [sys.executable, "-m", "celery", "-A", "config", "worker"]
    assert cmd[6:] == ["-Q", "celery,features,training", "-c", "2", "--without-gossip", "--without-mingle",
                       "--without-heartbeat", "-l", "INFO", "-n", "n@%h", "-B", "-s", ".beat"]
    assert "--without-heartbeat" not in celery_worker_command(heartbeat=True)


def test_stop_leaves_nothing_of_the_group_behind(tmp_path):
    proc = python(ABANDONS, tmp_path)
    proc.wait_ready("ready.", timeout=30)
    [grandchild] = proc.child_pids()
    assert proc.stop(timeout=10) == -signal.SIGTERM  # the child itself went at the SIGTERM
    psutil.wait_procs([psutil.Process(grandchild)] if not gone(grandchild) else [], timeout=10)
    assert gone(grandchild)  # the straggler that ignored it was killed with the group
