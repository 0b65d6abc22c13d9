"""Benchmark 4: the web under load, against the production server configuration.

Builds a Fashion-MNIST catalog in a temporary VAR_DIR (real image files, features extracted and a
head trained and activated through the services), starts gunicorn (sync workers, 2 x cores + 1,
DEBUG off, bound to 127.0.0.1 only), and drives it from a load generator in another process
(bench/loadgen.py) with 1, 8 and 32 concurrent clients, for:

- the product page with its similar-items panel (GET /p/<id>/);
- the similar-items API (GET /api/v1/products/<id>/similar/), when it exists;
- search by photo: the page (POST /search/photo/, with its CSRF token) and the API
  (POST /api/v1/search/image/), when it exists.

The similar-items cache (Redis) is on, as in production, and cleared before each level; products
are drawn at random from the whole catalog, so most requests of a level miss it.

    python bench/web_load.py [--quick | --full]
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench import common  # noqa: E402
from config.processes import ManagedProcess  # noqa: E402

LEVELS = [1, 8, 32]


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


def run_load(plan: dict) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("loadgen.py"))], input=json.dumps(plan),
                          capture_output=True, text=True, cwd=common.ROOT,
                          timeout=plan["duration_s"] + plan.get("timeout_s", 60) + 120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


class Server(ManagedProcess):
    """gunicorn on 127.0.0.1 with the production settings that matter here (DEBUG off); ready (its
    home page answers 200) when constructed."""

    def __init__(self, tmp: Path, workers: int):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(workers), "--worker-class", "sync", "--timeout", "120", "--graceful-timeout", "10",
             "--log-level", "warning"],
            name="gunicorn", log=tmp / "gunicorn.log",
            env_overrides={"DEBUG": "false", "DJANGO_ENV": "local", "SERVE_MEDIA": "true",
                           "ALLOWED_HOSTS": "127.0.0.1", "THROTTLE_IMAGE_SEARCH_ANON": "100000/min",
                           "THROTTLE_IMAGE_SEARCH_USER": "100000/min", "LOG_LEVEL": "WARNING"})
        self.wait_ready(self.answers, timeout=90, interval=0.5)

    def answers(self) -> bool:
        import requests

        try:
            return requests.get(self.base + "/", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self):
        return super().stop(timeout=30, kill_timeout=10)


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


def main():
    args = common.parse_mode()
    quick = args.mode == "quick"
    tmp = common.isolate("web", RECOMMENDER_INPUT_SIZE=32 if quick else os.environ.get("RECOMMENDER_INPUT_SIZE", 64))
    common.django_setup()
    common.quiet_tensorflow()
    started_all = time.perf_counter()
    n_products = 1000 if quick else 5000
    duration = 5.0 if quick else 30.0
    cores = common.machine()["cores"] or 2
    workers = 2 * cores + 1
    print(f"Building a catalog of {n_products:,} products (input size {os.environ['RECOMMENDER_INPUT_SIZE']})...")
    catalog = build_catalog(n_products, epochs=5 if quick else 32)
    from django.core.cache import cache

    from catalog.models import Product

    product_ids = list(Product.objects.values_list("id", flat=True))
    images = query_images(tmp)
    endpoints = [
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
    print(f"Starting gunicorn ({workers} sync workers) on 127.0.0.1...")
    server = Server(tmp, workers)
    results = {}
    try:
        for ep in endpoints:
            if not ep["available"]:
                print(f"  {ep['label']}: not available at this run")
                results[ep["key"]] = {"label": ep["label"], "available": False, "levels": []}
                continue
            if ep["key"] == "image_api":
                ep["field"] = image_api_field(server, images[0])
                if ep["field"] is None:
                    print(f"  {ep['label']}: route exists but no probe upload succeeded; skipped")
                    results[ep["key"]] = {"label": ep["label"], "available": False, "levels": [],
                                          "note": "route exists but rejected the probe upload"}
                    continue
            plan = {"base_url": server.base, "method": ep["method"], "paths": ep["paths"],
                    "files": ep.get("files", []), "field": ep.get("field", "photo"),
                    "csrf_from": ep.get("csrf_from"), "timeout_s": 60}
            # Warm-up: every worker loads what the endpoint needs (TensorFlow and the model for photos).
            warm = run_load({**plan, "concurrency": workers, "duration_s": 60, "max_requests": 4 * workers})
            levels = []
            for level in LEVELS:
                cache.clear()
                r = run_load({**plan, "concurrency": level, "duration_s": duration, "max_requests": 20_000})
                levels.append(r)
                print(f"  {ep['label']}, {level:>2} clients: {r['rps']:7.1f} req/s, p50 {r['p50_ms']} ms, "
                      f"p99 {r['p99_ms']} ms, {r['requests']} requests, {r['errors']} errors"
                      + (f" e.g. {r['error_samples'][0]}" if r["error_samples"] else ""))
            results[ep["key"]] = {"label": ep["label"], "available": True, "warmup": warm, "levels": levels,
                                  "field": ep.get("field")}
    finally:
        server.stop()

    rows = []
    for ep in endpoints:
        res = results[ep["key"]]
        if not res["available"]:
            rows.append([res["label"], "-", "not available at this run", "", "", "", ""])
            continue
        for r in res["levels"]:
            rows.append([res["label"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["requests"], r["errors"]])
    total_errors = sum(r["errors"] for res in results.values() for r in res["levels"])
    t = common.table(
        "The web under load (gunicorn, DEBUG off, load generator in another process on the same machine)",
        ["Endpoint", "Clients", "Requests/s", "p50 ms", "p99 ms", "Requests", "Errors"], rows,
        [f"gunicorn {workers} sync workers (2 x {cores} cores + 1), 127.0.0.1 only; the load generator is a "
         "Python thread pool (one HTTP session per client) sharing the same "
         f"{cores} cores; each level runs {duration:.0f} s after a warm-up.",
         f"Catalog: {catalog['products']:,} Fashion-MNIST products, backbone {catalog['backbone']}, "
         f"active model v{catalog['version']}; the similar-items cache is on and cleared before each level.",
         f"Errors across all levels: {total_errors}."])
    common.print_table(t)
    shrunk = [f"{duration:.0f} s per level (full: 30 s)", f"catalog of {n_products:,} products (full: 5,000)",
              "input size 32 (full: $RECOMMENDER_INPUT_SIZE or 64)", "head trained 5 epochs"] if quick else []
    common.write_result("web_load", {
        "mode": args.mode, "workers": workers, "duration_s": duration, "catalog": catalog, "results": results,
        "total_errors": total_errors, "server_command": " ".join(server.command[1:]),
        "server_env": {k: server.env[k] for k in ("DEBUG", "DJANGO_ENV", "SERVE_MEDIA", "ALLOWED_HOSTS",
                                                  "THROTTLE_IMAGE_SEARCH_ANON")},
        "shrunk": shrunk, "tables": [t], "seconds": round(time.perf_counter() - started_all, 1)})


if __name__ == "__main__":
    main()
