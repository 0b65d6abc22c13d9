"""The production web server's configuration: ``gunicorn -c config/gunicorn.py config.wsgi:application``
(README, Operations; bench/web_load.py measures exactly this). Environment variables override it.

Measured on 2 cores with wrk beside the server (bench/web_load.py --quick, 1,000 products, cached
product page and similar-items API at 32 clients, a quiet machine, one run each; the previous setup,
sync workers 2 x cores + 1 with a connection per request, served 156-192 and 143-185 req/s):

- gthread 2 workers x 8 threads: page 513 req/s (p99 210 ms), API 531 (p99 202 ms);
- gthread 4 x 4: page 564 (p99 136 ms), API 673 (p99 122 ms);
- gthread 6 x 2: page 586 (p99 157 ms), API 776 (p99 101 ms).

Re-measured side by side in one run (bench/web_load.py --quick --shapes-only: interleaved rounds,
a 2 s warm-up per level, the worst round; page / API): 4 x 4 620 req/s p99 125 ms / 571 req/s p99
146 ms; 6 x 2 824 / 725 req/s but p99 141 / 402 ms; 8 x 1 731 / 649 req/s, p99 234 / 187 ms. 4 x 4
keeps the best worst-case tail.

The garbage collector frozen after start-up (WEB_GC=freeze, below), measured side by side in 3
interleaved rounds (bench/web_load.py --quick --shapes-only, worst round, page / API): 4 x 4 with
CPython's collector as it is 899 req/s p99 114 ms / 728 req/s p99 346 ms; 4 x 4 frozen 979 req/s p99
94 ms / 704 req/s p99 160 ms; 6 x 2 frozen 788 / 655 req/s, p99 128 / 176 ms. Also measured, and left
out: keep-alive off (every request a new connection: worse, page p99 160 ms) and connections spread
evenly over the workers (worker_connections 8: [8, 8, 8, 8] instead of e.g. [1, 2, 2, 27], yet p99
97-133 ms: the tail is both cores being busy, not one crowded worker).

Two workers per core: each process's threads share one GIL, so more processes serve the tail more
fairly (p99) at about the same throughput; four threads each overlap the waits on PostgreSQL and
Redis. Without persistent connections (CONN_MAX_AGE=0) the same server served a third: a new
PostgreSQL connection (a forked backend) per request costs more than the whole cached page. Search
by photo loads TensorFlow and the model (~1 GB) in each worker that answers one: on a small host
with much photo search, fewer workers (WEB_WORKERS) keep memory down.
"""

import os

_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_WORKERS", 2 * _cores))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", 4))
# Keep-alive connections: with gthread, a client (or a proxy) reuses its connection.
keepalive = int(os.environ.get("WEB_KEEPALIVE", 5))
# The first search by photo in a worker loads TensorFlow and the model (seconds on 2 cores).
timeout = int(os.environ.get("WEB_TIMEOUT", 120))
# Stopping (SIGTERM: a deploy, a scale-in): the master stops listening and each worker finishes
# its in-flight requests for at most this long, then is killed. Bounded below by the slowest
# legitimate request: a worker's first search by photo loads TensorFlow and the model, 9-14 s
# measured on 2 cores (tests/config/test_shutdown.py keeps one in flight through a stop; the former
# 10 s cut it short). Bounded above by the supervisor's own stop timeout, which must be longer or
# it kills the server mid-drain: Kubernetes' terminationGracePeriodSeconds (30 s by default),
# docker compose's stop_grace_period (10 s by default), systemd's TimeoutStopSec (90 s).
graceful_timeout = int(os.environ.get("WEB_GRACEFUL_TIMEOUT", 25))
accesslog = os.environ.get("WEB_ACCESS_LOG") or None  # e.g. "-" (stdout); off by default
# Persistent database connections for every worker thread (settings.CONN_MAX_AGE; CONN_HEALTH_CHECKS
# is on, so a connection PostgreSQL dropped is replaced instead of failing a request). Set in the
# workers' environment only here: management commands, Celery and tests keep closing theirs.
raw_env = [] if "CONN_MAX_AGE" in os.environ else ["CONN_MAX_AGE=60"]

# The garbage collector and the tail (WEB_GC): "freeze" (the default) moves everything a worker
# holds once Django and its URLs are loaded into the collector's permanent generation, so a full
# collection, which holds the GIL and so stalls every thread of the worker, no longer walks the
# framework's hundreds of thousands of long-lived objects; "default" leaves CPython's collector as
# it is. Measured side by side: bench/web_load.py --shapes-only (docs/benchmarks.md, 4b).
gc_mode = os.environ.get("WEB_GC", "freeze")


def post_worker_init(worker):
    _refuse_new_connections_once_stopping(worker)
    from django.apps import apps

    # bench/web_floor.py serves a plain WSGI app with this file: no Django to load.
    if gc_mode != "freeze" or not apps.ready:
        return
    import gc

    from django.urls import get_resolver

    get_resolver().url_patterns  # imports every view module now, not on the first request
    gc.collect()
    gc.freeze()


def _refuse_new_connections_once_stopping(worker):
    """A stopping gthread worker stops accepting but keeps its copy of the listening socket open
    until its last request is answered: the kernel goes on completing connections that nobody
    accepts, so a client (or a proxy choosing an upstream) waits out the whole drain and then gets
    a reset. Measured: connections made during a stop hung ~9 s, then were reset. Closed as the
    worker stops accepting, they are refused at once (the master closed its own copy first), and a
    proxy retries another server. Only the worker's own file descriptor is closed: a reload (HUP),
    whose new workers share the socket, is unaffected."""
    set_accept_enabled = getattr(worker, "set_accept_enabled", None)
    if set_accept_enabled is None:  # another worker class, or no worker (tests call the hook)
        return

    def accept_or_close(enabled):
        set_accept_enabled(enabled)
        if not enabled and not worker.alive:
            for listener in worker.sockets:
                listener.close()

    worker.set_accept_enabled = accept_or_close
