"""Child processes that are started, watched and stopped as a whole: the one supervisor of
``manage.py rundemo`` (worker + beat, web server), the test suite's Celery workers and the
benchmarks' workers and gunicorn.

Each child runs in its own session, so it leads a process group of its own: a Ctrl-C in the
terminal reaches only the parent, which then stops its children itself, and a signal sent by
:class:`ManagedProcess` reaches the child *and* everything it forked (Celery's pool processes,
gunicorn's workers). Stopping is bounded: SIGTERM to the group, then SIGKILL to whatever is still
running when the timeout expires.

Only the standard library is imported here (psutil lazily, for :meth:`ManagedProcess.child_pids`):
product code, tests and benchmarks can all use it without loading Django or TensorFlow.

    with ManagedProcess(celery_worker_command(), name="celery worker", log=tmp / "worker.log",
                        env_overrides={"RECOMMENDER_EPOCHS": "5"}) as worker:
        worker.wait_ready(CELERY_READY, timeout=60)
        ...
    # stopped here (SIGTERM, then SIGKILL after 30 s)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# What ``celery worker`` logs (at INFO) once it consumes from its queues.
CELERY_READY = "ready."
CELERY_QUEUES = "celery,features,training"


def celery_worker_command(*, queues: str = CELERY_QUEUES, concurrency: int = 1, node_name: str | None = None,
                          beat_schedule: str | os.PathLike | None = None, heartbeat: bool = False,
                          loglevel: str = "INFO") -> list[str]:
    """``python -m celery -A config worker`` for these queues, without gossip and mingle (workers
    need not know each other); ``beat_schedule`` embeds beat (``-B``) with that schedule file (``-s``).

    The project's scheduler (config/beat.py, settings.CELERY_BEAT_SCHEDULER) keeps the schedule and
    its lock in Redis and does not read the file: any number of workers may embed beat, one sends.
    The file is still passed, for a configuration that names Celery's file-based scheduler."""
    cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-c", str(concurrency),
           "--without-gossip", "--without-mingle", *([] if heartbeat else ["--without-heartbeat"]), "-l", loglevel]
    if node_name:
        cmd += ["-n", node_name]
    if beat_schedule is not None:
        cmd += ["-B", "-s", str(beat_schedule)]
    return cmd


class ManagedProcess:
    """A child process in its own process group, optionally logging stdout and stderr to a file.

    Started by the constructor, like :class:`subprocess.Popen`:

    - ``cmd``: the command line; ``name``: what messages call it (default: the program's name);
    - ``env``: the child's whole environment (default: this process's), ``env_overrides``: merged
      over it (values are turned into strings); the result stays readable as ``.env``;
    - ``log``: a file that receives stdout and stderr (truncated first), read back by
      :meth:`output`; ``None`` leaves both on this process's terminal;
    - ``cwd``: the repository root by default.

    Attributes ``proc`` (the :class:`subprocess.Popen`), ``pid``, ``command``, ``env``, ``log``.
    Used as a context manager it is stopped (:meth:`stop`) on leaving the block.
    """

    def __init__(self, cmd: Sequence[str], *, name: str | None = None, env: Mapping[str, str] | None = None,
                 env_overrides: Mapping[str, object] | None = None, log: str | os.PathLike | None = None,
                 cwd: str | os.PathLike = BASE_DIR):
        self.command = [str(part) for part in cmd]
        self.name = name or Path(self.command[0]).name
        self.env = {**(os.environ if env is None else env), **{k: str(v) for k, v in (env_overrides or {}).items()}}
        self.log = Path(log) if log is not None else None
        stdout = self.log.open("wb") if self.log is not None else None
        try:
            self.proc = subprocess.Popen(self.command, cwd=cwd, env=self.env, stdout=stdout,
                                         stderr=subprocess.STDOUT if stdout else None, start_new_session=True)
        finally:
            if stdout is not None:
                stdout.close()  # the child has its own copy
        self.pid = self.proc.pid

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} returncode={self.proc.returncode}>"

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ state

    def poll(self) -> int | None:
        """The exit code, or None while the process runs."""
        return self.proc.poll()

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit (:class:`subprocess.TimeoutExpired` past ``timeout``)."""
        return self.proc.wait(timeout)

    def output(self) -> str:
        """Everything the process wrote to its log so far ("" without a log)."""
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        """Pids of the process's descendants (e.g. Celery's pool processes); [] once it is gone."""
        import psutil

        try:
            return [child.pid for child in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def wait_ready(self, ready: str | Callable[[], object], timeout: float = 60, interval: float = 0.2):
        """Wait until ``ready`` (a line fragment of :meth:`output`, or a predicate) holds, and return
        its value. If the process exits first, or ``timeout`` seconds pass, it is stopped and
        RuntimeError is raised with the end of its output."""
        check = (lambda: ready in self.output()) if isinstance(ready, str) else ready
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with code {self.proc.returncode}" if self.proc.poll() is not None
                       else f"not ready after {timeout:g} s")
                self.stop()
                raise RuntimeError(f"{self.name} did not start ({why}):\n{self.output()[-3000:]}")
            time.sleep(interval)

    # ------------------------------------------------------------------ signals

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group; nothing if the group is gone already."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self, sig: int = signal.SIGKILL, timeout: float | None = 30) -> int | None:
        """Send ``sig`` to the process group and wait for the process to exit (``timeout`` None:
        do not wait). Fault-injection tests kill a whole worker, pool included, this way."""
        self.send_signal(sig)
        return None if timeout is None else self.proc.wait(timeout)

    def stop(self, timeout: float = 30, kill_timeout: float = 30) -> int | None:
        """SIGTERM to the process group, then SIGKILL if the process still runs after ``timeout``
        seconds. Does nothing to a process that has exited already. Returns the exit code."""
        stop_all([self], timeout=timeout, kill_timeout=kill_timeout)
        return self.proc.returncode


def stop_all(processes: Iterable[ManagedProcess], timeout: float = 30, kill_timeout: float = 30) -> None:
    """Stop several processes at once: SIGTERM to each running one first, so they shut down in
    parallel, then wait for all of them within a shared ``timeout``; any still running then is
    sent SIGKILL and waited for up to ``kill_timeout`` seconds. One that survives even that (stuck in
    the kernel) does not keep the others from being stopped: its TimeoutExpired is raised last."""
    running = [p for p in processes if p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    stuck = None
    for p in running:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                p.kill(signal.SIGKILL, timeout=kill_timeout)
            except subprocess.TimeoutExpired as exc:
                stuck = stuck or exc
    for p in running:
        # Stragglers in the group whose leader has exited (a fork of a gunicorn worker keeps the
        # worker's SIGTERM handler, which only flips a flag): nothing of the group outlives stop().
        p.send_signal(signal.SIGKILL)
    if stuck is not None:
        raise stuck
