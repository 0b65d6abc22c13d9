"""Benchmark 4: the web under load, against the production server configuration.

Builds a Fashion-MNIST catalog in a temporary VAR_DIR (real image files, features extracted and a
head trained and activated through the services), starts gunicorn exactly as production runs it
(``-c config/gunicorn.py``: gthread workers, two per core, persistent database connections; DEBUG
off, bound to 127.0.0.1 only), and drives it with 1, 8 and 32 concurrent clients from a load
generator in other processes (bench/loadgen.py: wrk for GETs when it is installed, else a Python
thread pool, with a loud message) for:

- the product page with its similar-items panel (GET /p/<id>/);
- the similar-items API (GET /api/v1/products/<id>/similar/);
- search by photo: the page (POST /search/photo/, with its CSRF token) and the API
  (POST /api/v1/search/image/), when they exist.

Products are drawn at random from the whole catalog. The two GET endpoints are measured twice:
*cached* (every product's page and answer were requested once before: a shop's steady state) and
*cold* (the cache, Redis, cleared before each level, so most requests of a level miss it: a
search, the panel's products read and the page rendered). Also measured: the single-client server
time of each (gunicorn's own request time, from its access log, on a second instance of the same
server), and the previous server setup (sync workers, 2 x cores + 1, a new database connection per
request) at 32 clients, side by side with the same code.

    python bench/web_load.py [--quick | --full]
"""

from __future__ import annotations

import io
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench import common, loadgen  # noqa: E402
from config.processes import ManagedProcess  # noqa: E402

LEVELS = [1, 8, 32]
WARMUP_S = 2  # a cached level's unmeasured warm-up at its own concurrency
# The previous production setup, measured beside the current one (gunicorn's sync workers).
SYNC_BEFORE = ["--worker-class", "sync", "--workers", "{sync_workers}", "--timeout", "120"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_catalog(n_products: int, epochs: int, log=print) -> dict:
    """Products through the importer, features and thumbnails through images_process, a model
    version trained and activated through the services (all in this process, no worker)."""
    from django.conf import settings
    from django.core.management import call_command

    from catalog.models import ProductImage
    from recommender.models import ModelVersion
    from recommender.services.ingestion import images_process
    from recommender.services.training import model_version_start, model_version_train

    timings = {}
    with common.Timer() as t:
        call_command("import_fashion_mnist", count=n_products, split="train", verbosity=0)
    timings["import_seconds"] = round(t.seconds, 1)
    # Setup only: one thumbnail size instead of three (pages fall back to the nearest size).
    sizes = settings.THUMBNAIL_SIZES
    settings.THUMBNAIL_SIZES = (256,)
    ids = list(ProductImage.objects.order_by("id").values_list("id", flat=True))
    with common.Timer() as t:
        for start in range(0, len(ids), 256):
            images_process(image_ids=ids[start:start + 256], token="bench-setup")
    settings.THUMBNAIL_SIZES = sizes
    timings["process_seconds"] = round(t.seconds, 1)
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": epochs}
    with common.Timer() as t:
        version = model_version_start(trigger="benchmark", kind="head")
        version = model_version_train(version_id=version.pk)
    timings["train_seconds"] = round(t.seconds, 1)
    if version.status != ModelVersion.Status.ACTIVE:
        raise RuntimeError(f"the benchmark's model version did not activate: {version.status} {version.error}")
    ready = ProductImage.objects.filter(status=ProductImage.Status.READY).count()
    log(f"  catalog: {ready:,} ready images, v{version.pk} active "
        f"(val accuracy {version.val_accuracy})")
    return {"products": n_products, "ready_images": ready, "version": version.pk,
            "backbone": version.backbone, "timings": timings}


def query_images(tmp: Path, count: int = 40) -> list[str]:
    """PNG files of Fashion-MNIST test images (not in the catalog) to search with."""
    from PIL import Image

    (_, _), (x_test, _) = common.load_fashion_mnist()
    folder = tmp / "queries"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(x_test[i], mode="L").save(buffer, "PNG")
        path = folder / f"q{i}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(str(path))
    return paths


def route_exists(path: str) -> bool:
    from django.urls import Resolver404, resolve

    try:
        resolve(path)
        return True
    except Resolver404:
        return False


class Server(ManagedProcess):
    """gunicorn on 127.0.0.1, with config/gunicorn.py (production) or the given arguments, and the
    production settings that matter here (DEBUG off); ready (its home page answers 200) when
    constructed."""

    def __init__(self, tmp: Path, *, name: str = "gunicorn", args: list[str] | None = None, env: dict | None = None,
                 access_log: Path | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = ["-c", str(common.ROOT / "config" / "gunicorn.py")] if args is None else list(args)
        logging = ["--access-logfile", str(access_log), "--access-logformat", "%(U)s %(s)s %(D)s"] if access_log else []
        super().__init__(
            [sys.executable, "-m", "gunicorn", "config.wsgi:application", *config, "--bind",
             f"127.0.0.1:{self.port}", "--log-level", "warning", *logging],
            name=name, log=tmp / f"{name}.log",
            env_overrides={"DEBUG": "false", "DJANGO_ENV": "local", "SERVE_MEDIA": "true",
                           "ALLOWED_HOSTS": "127.0.0.1", "THROTTLE_IMAGE_SEARCH_ANON": "100000/min",
                           "THROTTLE_IMAGE_SEARCH_USER": "100000/min", "LOG_LEVEL": "WARNING", **(env or {})})
        self.wait_ready(self.answers, timeout=90, interval=0.5)

    def answers(self) -> bool:
        import requests

        try:
            return requests.get(self.base + "/", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self):
        return super().stop(timeout=30, kill_timeout=10)


def prime(server: Server, paths: list[str]) -> float:
    """Request every path once (4 clients): the cache then holds every page and answer."""
    import requests

    local = threading.local()

    def get(path):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session.get(server.base + path, timeout=60).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(get, paths))
    bad = [c for c in codes if c != 200]
    if bad:
        raise RuntimeError(f"priming: {len(bad)} of {len(paths)} requests failed ({bad[:5]})")
    return round(time.perf_counter() - started, 1)


def server_times(tmp: Path, endpoints: list[dict], count: int = 300) -> dict:
    """Each GET endpoint's single-client server time (gunicorn's %(D)s), cached: a second instance
    of the production server with its access log on, one client with a keep-alive connection."""
    import requests

    log = tmp / "access.log"
    server = Server(tmp, name="gunicorn-timed", access_log=log)
    out = {}
    try:
        session = requests.Session()
        for ep in endpoints:
            paths = ep["paths"][:count]
            prime(server, paths)  # cached, as in the steady state (the cold levels emptied the cache)
            time.sleep(0.5)
            before = len(log.read_text().splitlines()) if log.exists() else 0
            for path in paths:
                session.get(server.base + path, timeout=60)
            time.sleep(0.5)  # the log is written after each response
            lines = log.read_text().splitlines()[before:]
            ms = [int(line.split()[-1]) / 1000 for line in lines if line.split()[1] == "200"]
            out[ep["key"]] = {"requests": len(ms), **common.percentiles_ms([m / 1000 for m in ms])}
    finally:
        server.stop()
    return out


def image_api_field(server: Server, image: str) -> str | None:
    """The multipart field name the image-search API accepts (probed once)."""
    import requests

    data = Path(image).read_bytes()
    for field in ("image", "photo", "file", "picture"):
        try:
            response = requests.post(server.base + "/api/v1/search/image/",
                                     files={field: ("q.png", data, "image/png")}, timeout=120)
        except requests.RequestException:
            continue
        if response.status_code == 200:
            return field
    return None


def run_levels(server: Server, ep: dict, *, duration: float, modes=("cached", "cold"), levels=LEVELS) -> dict:
    """The levels of one endpoint; GETs cached (primed) then cold (cache cleared before each level)."""
    from django.core.cache import cache

    plan = {"base_url": server.base, "method": ep["method"], "paths": ep["paths"], "files": ep.get("files", []),
            "field": ep.get("field", "photo"), "csrf_from": ep.get("csrf_from"), "timeout_s": 60}
    out = {}
    if ep["method"] == "POST":  # warm-up: every worker loads TensorFlow and the model
        out["warmup"] = loadgen.run({**plan, "concurrency": 8, "duration_s": 60, "max_requests": 32})
        modes = ("uncached",)
    for mode in modes:
        if mode == "cached":
            out["prime_seconds"] = prime(server, ep["paths"])
        levels_out = out.setdefault(mode, [])
        for level in levels:
            if mode == "cold":
                cache.clear()
            elif mode == "cached":
                # The steady state: every worker thread has made its database and cache connections
                # (their first requests, seconds apart on 2 busy cores, are not what a running
                # server's clients wait for).
                loadgen.run({**plan, "concurrency": level, "duration_s": WARMUP_S, "max_requests": 20_000})
            r = loadgen.run({**plan, "concurrency": level, "duration_s": duration, "max_requests": 20_000,
                             "seed": level})
            levels_out.append(r)
            print(f"  {ep['label']}, {mode}, {level:>2} clients: {r['rps']:7.1f} req/s, p50 {r['p50_ms']} ms, "
                  f"p99 {r['p99_ms']} ms, {r['requests']} requests, {r['errors']} errors ({r['generator']})"
                  + (f" e.g. {r['error_samples'][0]}" if r["error_samples"] else ""), flush=True)
    return out


def endpoints_of(product_ids, images) -> list[dict]:
    return [
        {"key": "product_page", "label": "Product page with similar items (GET /p/<id>/)", "method": "GET",
         "paths": [f"/p/{pid}/" for pid in product_ids], "available": route_exists(f"/p/{product_ids[0]}/")},
        {"key": "similar_api", "label": "Similar-items API (GET /api/v1/products/<id>/similar/)", "method": "GET",
         "paths": [f"/api/v1/products/{pid}/similar/" for pid in product_ids],
         "available": route_exists(f"/api/v1/products/{product_ids[0]}/similar/")},
        {"key": "photo_page", "label": "Search by photo, page (POST /search/photo/)", "method": "POST",
         "paths": ["/search/photo/"], "files": images, "field": "photo", "csrf_from": "/search/photo/",
         "available": route_exists("/search/photo/")},
        {"key": "image_api", "label": "Search by photo, API (POST /api/v1/search/image/)", "method": "POST",
         "paths": ["/api/v1/search/image/"], "files": images, "available": route_exists("/api/v1/search/image/")},
    ]


def _server_shape() -> str:
    """Workers x threads as config/gunicorn.py sets them in this environment."""
    import runpy

    conf = runpy.run_path(str(common.ROOT / "config" / "gunicorn.py"))
    return f"{conf['workers']} workers x {conf['threads']} threads"


def measure_before(tmp: Path, endpoints: list[dict], *, duration: float, sync_workers: int) -> dict:
    """The previous setup (sync workers, no persistent connections) at 32 clients, cached, same code."""
    args = [a.format(sync_workers=sync_workers) for a in SYNC_BEFORE]
    server = Server(tmp, name="gunicorn-sync", args=args, env={"CONN_MAX_AGE": "0"})
    try:
        return {ep["key"]: run_levels(server, ep, duration=duration, modes=("cached",), levels=[32])
                for ep in endpoints}
    finally:
        server.stop()


def rows_of(endpoints, results) -> list[list]:
    rows = []
    for ep in endpoints:
        res = results[ep["key"]]
        if not res["available"]:
            rows.append([res["label"], "-", "-", "not available at this run", "", "", "", ""])
        for mode in ("cached", "cold", "uncached", "before: sync workers"):
            for r in res.get(mode, []):
                rows.append([res["label"], mode, r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"],
                             r["requests"], r["errors"]])
    return rows


# Server shapes (workers x threads, the workers' garbage collector: config/gunicorn.py's WEB_GC,
# and keep-alive: WEB_KEEPALIVE) measured side by side in the same run, cached, at 32 clients: what
# config/gunicorn.py's defaults are chosen by.
# Dropped after being measured (their figures are not in docs/benchmarks.md's current 4b): keep-alive
# off, worse (4x4, freeze, worst of 3 interleaved rounds: page p99 160 ms, API 182 ms); 8x1, worse
# than 4x4 and 6x2 in an earlier run (config/gunicorn.py's notes).
SHAPES = [dict(workers=4, threads=4, gc="default", keepalive=5), dict(workers=4, threads=4, gc="freeze", keepalive=5),
          dict(workers=6, threads=2, gc="freeze", keepalive=5)]
SHAPE_ROUNDS = 3  # each shape measured this many times, interleaved; the worst round is reported


def shape_name(shape: dict) -> str:
    return f"{shape['workers']}x{shape['threads']}, gc {shape['gc']}, keep-alive {shape['keepalive']} s"


def measure_shapes(tmp: Path, endpoints: list[dict], *, duration: float) -> list[dict]:
    """Cached GETs at 32 clients on each server shape, in interleaved rounds (a slow spell of the
    machine hits every shape alike); per shape and endpoint the worst round."""
    gets = [ep for ep in endpoints if ep["method"] == "GET" and ep["available"]]
    worst: dict[tuple, dict] = {}
    for round_ in range(SHAPE_ROUNDS):
        for i, shape in enumerate(SHAPES):
            server = Server(tmp, name=f"gunicorn-shape{i}", env={
                "WEB_WORKERS": str(shape["workers"]), "WEB_THREADS": str(shape["threads"]), "WEB_GC": shape["gc"],
                "WEB_KEEPALIVE": str(shape["keepalive"])})
            try:
                for ep in gets:
                    r = run_levels(server, ep, duration=duration, modes=("cached",), levels=[32])["cached"][0]
                    print(f"    round {round_ + 1}, {shape_name(shape)}: {ep['key']} {r['rps']} req/s p99 {r['p99_ms']} ms",
                          flush=True)
                    key = (i, ep["key"])
                    if key not in worst or r["p99_ms"] > worst[key]["p99_ms"]:
                        worst[key] = {**shape, **r, "round": round_ + 1}
            finally:
                server.stop()
    return [{"shape": shape_name(r), "endpoint": k, **r} for (_, k), r in worst.items()]


def main():
    args = common.parse_mode(extra=lambda parser: parser.add_argument(
        "--shapes-only", action="store_true", help="only the server shapes side by side (SHAPES)"))
    quick = args.mode == "quick"
    tmp = common.isolate("web", RECOMMENDER_INPUT_SIZE=32 if quick else os.environ.get("RECOMMENDER_INPUT_SIZE", 64))
    common.django_setup()
    common.quiet_tensorflow()
    started_all = time.perf_counter()
    n_products = 1000 if quick else 5000
    duration = 5.0 if quick else 30.0
    cores = common.machine()["cores"] or 2
    print(f"Building a catalog of {n_products:,} products (input size {os.environ['RECOMMENDER_INPUT_SIZE']})...")
    catalog = build_catalog(n_products, epochs=5 if quick else 32)
    from catalog.models import Product

    endpoints = endpoints_of(list(Product.objects.values_list("id", flat=True)), query_images(tmp))
    gets = [ep for ep in endpoints if ep["method"] == "GET" and ep["available"]]
    generator = "wrk" if loadgen.wrk_path() else "a Python thread pool (wrk is not installed)"
    print("Starting gunicorn -c config/gunicorn.py on 127.0.0.1...")
    if args.shapes_only:
        shapes = measure_shapes(tmp, endpoints, duration=duration)
        t = common.table(
            "Server shapes side by side (gunicorn gthread; cached, 32 clients, wrk beside it)",
            ["Shape", "Endpoint", "Requests/s", "p50 ms", "p99 ms", "Errors", "Worst of rounds"],
            [[s["shape"], s["endpoint"], s["rps"], s["p50_ms"], s["p99_ms"], s["errors"],
              f"round {s['round']} of {SHAPE_ROUNDS}"] for s in shapes],
            [f"Each shape measured {SHAPE_ROUNDS} times, the shapes interleaved; the round with the worst p99 "
             f"is shown. {duration:.0f} s per measurement; catalog of {n_products:,} products."])
        common.print_table(t)
        common.write_result("web_shapes", {"mode": args.mode, "shapes": shapes, "tables": [t],
                                           "seconds": round(time.perf_counter() - started_all, 1)})
        return
    server = Server(tmp)
    results = {}
    try:
        for ep in endpoints:
            results[ep["key"]] = {"label": ep["label"], "available": ep["available"]}
            if not ep["available"]:
                print(f"  {ep['label']}: not available at this run")
                continue
            if ep["key"] == "image_api":
                ep["field"] = image_api_field(server, ep["files"][0])
                if ep["field"] is None:
                    results[ep["key"]].update(available=False, note="route exists but rejected the probe upload")
                    continue
            measured = run_levels(server, ep, duration=duration)
            # "levels": what the report's headline reads (the steady state: cached, or uncached uploads).
            results[ep["key"]].update(measured, levels=measured.get("cached") or measured.get("uncached"),
                                      field=ep.get("field"))
    finally:
        server.stop()
    timed = server_times(tmp, gets)
    for key, before in measure_before(tmp, gets, duration=duration, sync_workers=2 * cores + 1).items():
        results[key]["before: sync workers"] = before["cached"]
    for ep in gets:
        results[ep["key"]]["server_time_single_client"] = timed[ep["key"]]
        print(f"  {ep['label']}: single-client server time p50 {timed[ep['key']]['p50_ms']} ms, "
              f"p99 {timed[ep['key']]['p99_ms']} ms (cached)")
    report(args, tmp, server, endpoints, results, catalog=catalog, cores=cores, duration=duration,
           n_products=n_products, generator=generator, started=started_all)


def report(args, tmp, server, endpoints, results, *, catalog, cores, duration, n_products, generator, started):
    levels = [r for res in results.values() for mode in ("cached", "cold", "uncached", "before: sync workers")
              for r in res.get(mode, [])]
    total_errors = sum(r["errors"] for r in levels)
    timed = {k: v["server_time_single_client"] for k, v in results.items() if "server_time_single_client" in v}
    t = common.table(
        "The web under load (gunicorn -c config/gunicorn.py, DEBUG off, load generator on the same machine)",
        ["Endpoint", "Cache", "Clients", "Requests/s", "p50 ms", "p99 ms", "Requests", "Errors"],
        rows_of(endpoints, results),
        [f"Server: {' '.join(server.command[3:])} (config/gunicorn.py: gthread, {_server_shape()}, "
         f"persistent database connections), 127.0.0.1 only; load generator: {generator}, sharing the same "
         f"{cores} cores; each level runs {duration:.0f} s.",
         "cached: every page and answer requested once before (the steady state); cold: the cache cleared "
         "before each level; before: sync workers: the previous setup (sync, 2 x cores + 1 workers, a new "
         "database connection per request) with the same code, cached.",
         "Single-client server time (gunicorn's own request time, cached, 300 requests): "
         + "; ".join(f"{k} p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms" for k, v in timed.items()) + ".",
         f"Catalog: {catalog['products']:,} Fashion-MNIST products, backbone {catalog['backbone']}, "
         f"active model v{catalog['version']}.",
         f"Errors across all levels: {total_errors}."])
    common.print_table(t)
    shrunk = [f"{duration:.0f} s per level (full: 30 s)", f"catalog of {n_products:,} products (full: 5,000)",
              "input size 32 (full: $RECOMMENDER_INPUT_SIZE or 64)", "head trained 5 epochs"] if args.mode == "quick" else []
    common.write_result("web_load", {
        "mode": args.mode, "duration_s": duration, "catalog": catalog, "results": results,
        "total_errors": total_errors, "server_command": " ".join(server.command[1:]), "load_generator": generator,
        "server_env": {k: server.env[k] for k in ("DEBUG", "DJANGO_ENV", "SERVE_MEDIA", "ALLOWED_HOSTS",
                                                  "THROTTLE_IMAGE_SEARCH_ANON")},
        "shrunk": shrunk, "tables": [t], "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
