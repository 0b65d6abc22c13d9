"""The embedded PostgreSQL and Redis: start, reuse, stop, and recovery from stale state."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from config.embedded import EmbeddedPostgres, EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def alive(pid: int) -> bool:
    # The postmaster is daemonised; where PID 1 does not reap, a stopped one lingers as a zombie.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def in_subprocess(var_dir: Path, code: str) -> str:
    env = {**os.environ, "VAR_DIR": str(var_dir)}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    script = f"from config import embedded\nembedded.bootstrap()\nimport os\n{code}"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=120).stdout


@pytest.fixture
def var_dir(tmp_path_factory):
    # Short path: unix socket paths are limited to ~107 bytes.
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="emb-", dir="/tmp"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def test_postgres_starts_has_pgvector_and_stops(var_dir):
    pg = EmbeddedPostgres(var_dir)
    url = pg.start()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname='vector'").fetchone()[0]
        server = conn.execute("SHOW server_version").fetchone()[0]
    assert tuple(int(x) for x in version.split(".")[:2]) >= (0, 8)
    assert server.startswith("17")
    pid = pg.pid()
    pg.stop()
    assert not alive(pid)


def test_second_start_reuses_the_running_server_and_last_user_stops_it(var_dir):
    pg = EmbeddedPostgres(var_dir)
    url = pg.start()
    first = postmaster_pid(var_dir / "postgres")
    # Another process (e.g. `manage.py shell` beside `make run`) reuses it and, on exit, leaves it running.
    out = in_subprocess(var_dir, "print(os.environ['DATABASE_URL'])")
    assert out.strip() == url
    assert postmaster_pid(var_dir / "postgres") == first and alive(first)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pg.stop()
    time.sleep(0.5)
    assert not alive(first)


def test_data_survives_a_restart(var_dir):
    pg = EmbeddedPostgres(var_dir)
    with psycopg.connect(pg.start(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    pg.stop()
    pg = EmbeddedPostgres(var_dir)
    with psycopg.connect(pg.start()) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
    pg.stop()


def test_stale_handles_of_killed_processes_do_not_keep_the_server_alive(var_dir):
    (var_dir / "postgres.handles").write_text(json.dumps([dead_pid()]))
    pg = EmbeddedPostgres(var_dir)
    pg.start()
    pid = postmaster_pid(var_dir / "postgres")
    pg.stop()
    time.sleep(0.5)
    assert not alive(pid)


def test_a_killed_postgres_with_a_stale_postmaster_pid_is_recovered(var_dir):
    pg = EmbeddedPostgres(var_dir)
    pg.start()
    pid = postmaster_pid(var_dir / "postgres")
    os.kill(pid, signal.SIGKILL)
    for child in psutil.process_iter():
        try:
            if child.name() == "postgres" and str(var_dir) in " ".join(child.cmdline()):
                child.kill()
        except psutil.Error:
            pass
    time.sleep(0.5)
    assert (var_dir / "postgres" / "postmaster.pid").exists()  # the stale lock file
    again = EmbeddedPostgres(var_dir)
    with psycopg.connect(again.start()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert postmaster_pid(var_dir / "postgres") != pid
    again.stop()


def test_redis_starts_is_reused_and_stops(var_dir):
    server = EmbeddedRedis(var_dir)
    url = server.start()
    client = redis.Redis.from_url(url)
    client.set("k", "v")
    pid = server._running_pid()
    out = in_subprocess(var_dir, "import redis; print(redis.Redis.from_url(os.environ['REDIS_URL']).get('k'))")
    assert "b'v'" in out
    assert server._running_pid() == pid  # reused, not restarted, and still running
    server.stop()
    time.sleep(0.3)
    assert not alive(pid)


def test_redis_recovers_from_a_stale_pidfile_and_socket(var_dir):
    server = EmbeddedRedis(var_dir)
    server.dir.mkdir(parents=True)
    server.pidfile.write_text(str(dead_pid()))
    server.socket.write_text("")  # a leftover socket path
    url = server.start()
    assert redis.Redis.from_url(url).ping()
    server.stop()


def test_urls_in_the_environment_start_nothing(var_dir):
    out = subprocess.run(
        [sys.executable, "-c", "from config import embedded; embedded.bootstrap(); print(embedded._services)"],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "VAR_DIR": str(var_dir), "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
             "REDIS_URL": "redis://127.0.0.1:1/0"}).stdout
    assert out.strip() == "{}"
    assert not (var_dir / "postgres").exists()
