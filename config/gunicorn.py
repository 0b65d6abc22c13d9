"""The production web server's configuration: ``gunicorn -c config/gunicorn.py config.wsgi:application``
(README, Operations; bench/web_load.py measures exactly this). Environment variables override it.

Measured side by side on 2 cores with wrk beside the server, the product page served from its cache
(bench/web_load.py, 1,000 products; a machine loaded by other benchmarks, so ratios, not figures):

- gthread, 2 workers x 8 threads, persistent connections: 595-661 req/s at 32 clients;
- gthread, 3 x 4: 449-495 req/s; sync, 5 workers (2 x cores + 1, the previous setup): 105-298 req/s
  (no keep-alive: a new connection for every request);
- gthread 3 x 4 without persistent connections (CONN_MAX_AGE=0): 145-160 req/s, a third: a new
  PostgreSQL connection (a forked backend) per request costs more than the whole cached page.

In bench/web_load.py's own side-by-side (two runs): this file 868-905 req/s at 32 clients, the sync
workers with a connection per request 178-245 req/s, with the same code.

One worker process per core keeps the cores busy (the views are CPU-bound Python); threads overlap
each request's waits on PostgreSQL and Redis. Search by photo loads TensorFlow and the model in
each worker that answers one, so fewer, threaded workers also keep memory down.
"""

import os

_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_WORKERS", max(2, _cores)))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", 8))
# Keep-alive connections: with gthread, a client (or a proxy) reuses its connection.
keepalive = int(os.environ.get("WEB_KEEPALIVE", 5))
# The first search by photo in a worker loads TensorFlow and the model (seconds on 2 cores).
timeout = int(os.environ.get("WEB_TIMEOUT", 120))
graceful_timeout = 10
accesslog = os.environ.get("WEB_ACCESS_LOG") or None  # e.g. "-" (stdout); off by default
# Persistent database connections for every worker thread (settings.CONN_MAX_AGE; CONN_HEALTH_CHECKS
# is on, so a connection PostgreSQL dropped is replaced instead of failing a request). Set in the
# workers' environment only here: management commands, Celery and tests keep closing theirs.
raw_env = [] if "CONN_MAX_AGE" in os.environ else ["CONN_MAX_AGE=60"]
