"""Benchmark 7: catalogs the model was never tuned on, used the way a shop uses the product.

Fashion-MNIST is what the method was tuned on; this measures whether the product also works on
catalogs that look nothing like it. For each synthetic catalog of bench/catalogs.py (colour
product photos of 26 kinds of object, category = shape not colour; 10 hand-drawn digits; 10
recoloured texture types), in a fresh instance (a child process with a temporary VAR_DIR: its own
PostgreSQL + pgvector, Redis, media and models):

1. the catalog is written as a shop would have it: a CSV (sku, title, category, images, price) and
   a folder of image files, and imported with ``manage.py import_catalog`` (a subprocess);
2. a real Celery worker process (``celery worker -c 1``, every queue), started before the import,
   extracts the features of every image as it arrives; ingestion seconds = from the start of the
   import until every image is ready (or failed);
3. ``manage.py train_model`` queues a training on that worker and follows it until its verdict
   (train, embed the catalog, evaluate, gate, activate). The kind of training is the product's
   choice (``RECOMMENDER_TRAINING``: head, backbone or auto, passed through unchanged); the value
   and the version's own ``kind`` (when the model has that field) are recorded;
4. gunicorn serves the app (DEBUG off, anonymous image-search throttle lifted) and every held-out
   query image (drawn with another seed: none of them is in the catalog) is sent to
   ``POST /api/v1/search/image/`` (k=6) over real HTTP; the returned product ids are mapped back to
   their catalog categories, and P@1, P@6 and mAP@6 (same category as the query's; the definitions
   of recommender.evaluation) are computed from the answers;
5. side by side, on the same catalog and queries: raw pixels (32x32 RGB, standardised with the
   catalog's per-pixel mean and deviation), Euclidean k-NN (recommender.evaluation.retrieval_metrics).

    python bench/heldout.py [--quick | --full] [--tiny] [--no-write] [--catalogs colour_objects,...]

--quick: 600 catalog images and 200 queries per catalog, input size 32; --full: 5,000 and 1,000 at
$RECOMMENDER_INPUT_SIZE or 224; --tiny (checks the harness): 150 and 50 at 32. With --tiny or
--no-write the JSON goes to a temporary file, never to bench/results/.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench import catalogs, common  # noqa: E402
from config.processes import CELERY_READY, ManagedProcess, celery_worker_command, stop_all  # noqa: E402

SIZES = {"tiny": (150, 50), "quick": (600, 200), "full": (5000, 1000)}  # (catalog images, queries)
TIMEOUTS = {"tiny": 900, "quick": 2400, "full": 6 * 3600}  # per catalog, seconds (two trainings)
# Each kind of training in turn, on the same instance (bench/heldout.py documents the gate's part).
KINDS = tuple(k for k in os.environ.get("HELDOUT_KINDS", "head,backbone").split(",") if k)
K, PIXELS, SEED = 6, 32, 2027  # answers per query, side of the raw-pixel baseline's images, catalogs' seed
COLUMNS = ["Method", "P@1", "P@6", "mAP@6", "Catalog images", "Queries", "Training kind", "Training s",
           "Ingestion s"]


log = functools.partial(print, flush=True)


def input_size(mode: str) -> int:
    return {"tiny": 32, "quick": 32}.get(mode) or int(os.environ.get("RECOMMENDER_INPUT_SIZE", "224"))


# --------------------------------------------------------------------------- metrics (pure)


def ranked_metrics(relevant: np.ndarray, k: int = K) -> dict:
    """P@1, P@k and mAP@k of ranked answers, ``relevant[q, i]`` = 1 when the i-th answer to query q
    has the query's category (answers missing past the end count as wrong). The definitions of
    recommender.evaluation.retrieval_metrics."""
    relevant = np.asarray(relevant, dtype=np.float64)
    if relevant.size == 0:
        return {"precision_at_1": None, f"precision_at_{k}": None, f"map_at_{k}": None, "queries": 0}
    cumulative = relevant.cumsum(axis=1) / np.arange(1, k + 1)
    return {"precision_at_1": float(relevant[:, 0].mean()), f"precision_at_{k}": float(relevant.mean()),
            f"map_at_{k}": float(((cumulative * relevant).sum(axis=1) / k).mean()),
            "queries": len(relevant)}


def api_metrics(answers: list[dict], query_labels, category_of: dict) -> dict:
    """Metrics of the API's answers; a failed request counts as k wrong answers."""
    relevant = np.zeros((len(answers), K))
    correct = 0
    for q, (answer, label) in enumerate(zip(answers, query_labels)):
        for i, pid in enumerate(answer.get("ids", [])[:K]):
            relevant[q, i] = category_of.get(pid) == label
        correct += answer.get("predicted") == label
    metrics = ranked_metrics(relevant)
    metrics["predicted_category_accuracy"] = correct / len(answers) if answers else None
    metrics["failed_requests"] = sum(1 for a in answers if a.get("error"))
    metrics["short_answers"] = sum(1 for a in answers if not a.get("error") and len(a["ids"]) < K)
    metrics["sources"] = dict(Counter(a["source"] for a in answers if a.get("source")))
    metrics["latency"] = common.percentiles_ms([a["seconds"] for a in answers if "seconds" in a])
    return metrics


def pixel_vectors(files: list[bytes]) -> np.ndarray:
    pictures = (catalogs.decode(f).convert("RGB").resize((PIXELS, PIXELS), Image.BILINEAR) for f in files)
    return np.stack([np.asarray(p, np.float32).ravel() for p in pictures])


def pixel_baseline(files, labels, query_files, query_labels) -> dict:
    """Standardised raw pixels (mean and deviation of the catalog's), Euclidean k-NN."""
    from recommender.evaluation import retrieval_metrics

    index, queries = pixel_vectors(files), pixel_vectors(query_files)
    mean, std = index.mean(axis=0), index.std(axis=0) + 1e-6
    return retrieval_metrics((queries - mean) / std, query_labels, (index - mean) / std, labels, k=K)


# --------------------------------------------------------------------------- one catalog, one instance


def write_shop(folder: Path, name: str, files: list[bytes], labels: list[str]) -> Path:
    """The catalog as a shop has it: images/ and catalog.csv in the import_catalog format."""
    images = folder / "images"
    images.mkdir(parents=True)
    path = folder / "catalog.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["sku", "title", "category", "images", "price"])
        for i, (data, label) in enumerate(zip(files, labels)):
            file_name = f"{i:05d}.{catalogs.extension(data)}"
            (images / file_name).write_bytes(data)
            writer.writerow([f"{name[:3].upper()}-{i:05d}", f"{label.replace('_', ' ')} no. {i}", label,
                             file_name, f"{10 + i % 90}.00"])
    return path


def manage(*args, timeout: float) -> tuple[float, str]:
    """``manage.py <args>`` as a subprocess (the shop's command line); (seconds, its output)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "manage.py", *args], cwd=common.ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({proc.returncode}):\n{output[-3000:]}")
    return time.perf_counter() - started, output


def wait_ingested(n: int, timeout: float, worker: ManagedProcess) -> dict:
    """Poll until the worker has made all ``n`` images ready (or failed)."""
    from django.db.models import Count

    from catalog.models import ProductImage

    deadline = time.monotonic() + timeout
    while True:
        counts = dict(ProductImage.objects.order_by().values("status").annotate(n=Count("id"))
                      .values_list("status", "n"))
        ready, failed = counts.get(ProductImage.Status.READY, 0), counts.get(ProductImage.Status.FAILED, 0)
        if ready + failed >= n or time.monotonic() > deadline or not worker.running:
            return {"images": n, "ready": ready, "failed": failed, "timed_out": ready + failed < n}
        time.sleep(0.5)


def task_stats(worker_log: str, task: str = "process_images") -> dict:
    """How many ``task`` runs the worker's log reports, and their mean and total seconds."""
    seconds = [float(m) for m in re.findall(rf"Task recommender\.tasks\.{task}\[[^\]]*\] succeeded in ([0-9.]+)s",
                                            worker_log)]
    return {"tasks": len(seconds), "mean_seconds": round(float(np.mean(seconds)), 3) if seconds else None,
            "total_seconds": round(sum(seconds), 1)}


def trained_version(output: str, seconds: float) -> dict:
    """The version train_model ended with (tolerating models without a ``kind`` field)."""
    from recommender.conf import config
    from recommender.models import ModelVersion

    version = ModelVersion.objects.order_by("-id").first()
    metrics = version.metrics or {}
    return {"version": version.pk, "status": version.status, "error": version.error,
            "active": version.status == ModelVersion.Status.ACTIVE, "kind": getattr(version, "kind", None),
            "kind_reason": getattr(version, "kind_reason", None), "backbone": version.backbone,
            "weights": version.weights, "input_size": version.input_size, "n_train": version.n_train,
            "n_val": version.n_val, "val_accuracy": version.val_accuracy,
            "training_seconds": metrics.get("training_seconds"), "train_model_seconds": round(seconds, 1),
            "version_metrics": {key: metrics.get(key) for key in ("precision_at_1", "precision_at_6", "map_at_6")},
            "recommender_training_env": os.environ.get("RECOMMENDER_TRAINING"),
            "recommender_training_config": getattr(config(), "training", None),
            "train_model_output": output[-500:]}


def search_all(base: str, files: list[bytes]) -> list[dict]:
    """Every query image through POST /api/v1/search/image/ (one client, one request at a time)."""
    import requests

    session = requests.Session()
    url = base + "/api/v1/search/image/"

    def ask(data: bytes) -> dict:
        kind = catalogs.extension(data)
        mime = "image/png" if kind == "png" else "image/jpeg"
        started = time.perf_counter()
        try:
            response = session.post(url, files={"image": (f"query.{kind}", data, mime)}, data={"k": K}, timeout=180)
        except requests.RequestException as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "ids": []}
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            return {"error": f"{response.status_code}: {response.text[:300]}", "ids": [], "seconds": seconds}
        body = response.json()
        return {"ids": [item["product"]["id"] for item in body["results"]], "predicted": body.get("predicted"),
                "source": body.get("source"), "version": (body.get("model_version") or {}).get("id"),
                "seconds": seconds}

    ask(files[0])  # warm-up, not counted: the web process loads TensorFlow, the backbone and the head
    return [ask(data) for data in files]


def search_served(tmp: Path, query_files, query_labels) -> dict:
    """Every held-out query through the API of a fresh gunicorn; the metrics of the answers."""
    from bench.web_load import Server
    from catalog.models import Product

    log(f"  searching with {len(query_files):,} held-out images through POST /api/v1/search/image/...")
    server = Server(tmp, workers=1)  # gunicorn, DEBUG off, THROTTLE_IMAGE_SEARCH_ANON lifted
    try:
        answers = search_all(server.base, query_files)
    finally:
        server.stop()
    category_of = dict(Product.objects.values_list("id", "category__name"))
    api = api_metrics(answers, query_labels, category_of)
    api["error_samples"] = [a["error"] for a in answers if a.get("error")][:3]
    log(f"  API {api}")
    return api


def build_instance(name: str, mode: str, tmp: Path, files, labels, query_files, query_labels) -> dict:
    """Import the catalog with a worker running, wait for ingestion, then train each kind and search
    with it: the shop's steps. The gate is lifted (RECOMMENDER_GATE_TOLERANCE=1), so that each kind's
    version serves while it is measured; in the product, the gate keeps the better of the two."""
    csv_path = write_shop(tmp / "shop", name, files, labels)
    timeout = TIMEOUTS[mode]
    worker = ManagedProcess(celery_worker_command(node_name=f"heldout-{name}@%h"), name="celery worker",
                            log=tmp / "worker.log", env_overrides={"RECOMMENDER_GATE_TOLERANCE": "1.0"})
    try:
        worker.wait_ready(CELERY_READY, timeout=180)
        log(f"  importing {len(files):,} products with manage.py import_catalog (worker running)...")
        started = time.perf_counter()
        import_seconds, import_output = manage("import_catalog", str(csv_path), "--images",
                                               str(csv_path.parent / "images"), "-v", "1", timeout=timeout)
        ingestion = wait_ingested(len(files), timeout, worker)
        ingestion.update(seconds=round(time.perf_counter() - started, 1), import_seconds=round(import_seconds, 1),
                         import_output=import_output.splitlines()[-1:], worker_tasks=task_stats(worker.output()))
        log(f"  ingested: {ingestion}")
        if ingestion["timed_out"]:
            raise RuntimeError(f"ingestion did not finish: {ingestion}\n{worker.output()[-3000:]}")
        by_kind = {}
        for kind in KINDS:
            log(f"  training the {kind} kind with manage.py train_model --kind {kind} (on the worker)...")
            seconds, output = manage("train_model", "--kind", kind, "-v", "0", timeout=timeout)
            t = trained_version(output, seconds)
            log(f"  v{t['version']} {t['status']} ({kind_label(t)}) in {t['train_model_seconds']} s")
            by_kind[kind] = {"training": t, "api": search_served(tmp, query_files, query_labels)}
    finally:
        stop_all([worker], timeout=30, kill_timeout=10)
    last = by_kind[KINDS[-1]]
    return {"ingestion": ingestion, "by_kind": by_kind, "training": last["training"], "api": last["api"]}


def run_catalog(name: str, mode: str) -> dict:
    """The whole protocol for one catalog, in this (child) process's own instance."""
    n_catalog, n_queries = SIZES[mode]
    tmp = common.isolate(f"heldout-{name}", RECOMMENDER_INPUT_SIZE=input_size(mode))
    common.django_setup()
    started = time.perf_counter()
    log(f"[{name}] generating {n_catalog:,} catalog images and {n_queries:,} held-out queries...")
    files, labels = catalogs.generate(name, n_catalog, seed=SEED)
    query_files, query_labels = catalogs.generate(name, n_queries, seed=SEED + 1)
    result = {"catalog": name, "classes": len(set(labels)), "catalog_images": n_catalog, "queries": n_queries,
              "input_size": input_size(mode),
              **build_instance(name, mode, tmp, files, labels, query_files, query_labels)}
    result["raw_pixels"] = pixel_baseline(files, labels, query_files, query_labels)
    result["seconds"] = round(time.perf_counter() - started, 1)
    log(f"  API {result['api']}\n  raw pixels {result['raw_pixels']}")
    return result


# --------------------------------------------------------------------------- the run


def run_child(name: str, mode: str) -> dict:
    """One catalog in a child process (a fresh instance each); its result, or the failure."""
    out = Path(tempfile.mkdtemp(prefix="bench-heldout-")) / f"{name}.json"
    cmd = [sys.executable, __file__, "--child", name, "--size", mode, "--child-out", str(out)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=common.ROOT)
    try:
        code = proc.wait(TIMEOUTS[mode] + 300)
    except subprocess.TimeoutExpired:  # SIGTERM: the child stops its worker, server and services, then exits
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        code = "timeout"
    result = json.loads(out.read_text()) if code == 0 and out.is_file() else None
    shutil.rmtree(out.parent, ignore_errors=True)
    seconds = round(time.perf_counter() - started, 1)
    return result or {"catalog": name, "failed": True, "returncode": code, "seconds": seconds}


def kind_label(training: dict) -> str:
    env = training.get("recommender_training_env") or f"unset, {training.get('recommender_training_config')}"
    return f"{training['kind']} (RECOMMENDER_TRAINING={env})" if training.get("kind") else \
        f"RECOMMENDER_TRAINING={env}"


def catalog_table(r: dict) -> dict:
    if r.get("failed"):
        return common.table(f"Held-out catalog {r['catalog']}: FAILED (exit {r['returncode']})", COLUMNS, [])
    t, i, a, p = r["training"], r["ingestion"], r["api"], r["raw_pixels"]
    shared = [r["catalog_images"], r["queries"]]
    rows = [[f"Lookalike v{k['training']['version']} ({k['training']['status']}), POST /api/v1/search/image/",
             k["api"]["precision_at_1"], k["api"]["precision_at_6"], k["api"]["map_at_6"], *shared,
             kind_label(k["training"]), k["training"]["training_seconds"], i["seconds"]]
            for k in r.get("by_kind", {"": {"training": t, "api": a}}).values()]
    rows += [[f"Raw pixels ({PIXELS}x{PIXELS} RGB, standardised), L2 k-NN", p["precision_at_1"],
             p["precision_at_6"], p["map_at_6"], *shared, "none", None, None]]
    setup = (f"{r['classes']} categories (chance P@1 = {1 / r['classes']:.3f}); backbone {t['backbone']} "
             f"({common.weights_reason()}); input size {t['input_size']}; the catalog was imported with "
             "manage.py import_catalog, ingested by a real worker and trained with manage.py train_model.")
    timing = (f"Ingestion s: import start to all {i['images']:,} images ready ({i['import_seconds']} s of it "
              f"importing; {i['failed']} failed; the worker loads TensorFlow and the backbone on its first batch, "
              f"inside this time, as in a shop's first import; it ran {i['worker_tasks']['tasks']} ingestion "
              f"tasks, {i['worker_tasks']['mean_seconds']} s each on average). Training s: the version's own "
              f"training time; train_model took {t['train_model_seconds']} s in all (train, embed, evaluate, gate, "
              "activate).")
    answers = (f"API: predicted category accuracy {common.fmt(a['predicted_category_accuracy'])}, answered by "
               f"{a['sources']}, {a['failed_requests']} failed and {a['short_answers']} short answers, latency "
               f"p50 {a['latency']['p50_ms']} ms; the version's own held-out figures: {t['version_metrics']}.")
    notes = [setup, timing, answers]
    return common.table(f"Held-out catalog {r['catalog']}: search by photo vs raw pixels", COLUMNS, rows, notes)


def _p6(r: dict, kind: str):
    return (r.get("by_kind", {}).get(kind) or {}).get("api", {}).get("precision_at_6")


def summary_table(results: list[dict]) -> dict:
    rows = [[r["catalog"], *[_p6(r, kind) for kind in KINDS], r["raw_pixels"]["precision_at_6"], 1 / r["classes"]]
            for r in results if not r.get("failed")]
    return common.table("Held-out catalogs: P@6 of each kind of version (through the API) vs raw pixels",
                        ["Catalog", *[f"P@6 {kind} kind" for kind in KINDS], "P@6 raw pixels", "Chance P@6"], rows)


def headline(h: dict) -> list[str]:
    """The line of docs/benchmarks.md's headline (bench/report.py), from bench/results/heldout.json."""
    done = [r for r in h.get("catalogs", {}).values() if not r.get("failed")]
    if not done:
        return []
    parts = [f"{r['catalog']} P@6 " + ", ".join(f"{kind} kind {_p6(r, kind):.3f}" for kind in r.get("by_kind", {}))
             + f" vs raw pixels {r['raw_pixels']['precision_at_6']:.3f} (chance {1 / r['classes']:.3f})" for r in done]
    return [f"**Held-out catalogs** (never tuned on: imported with import_catalog, ingested by a worker, trained with "
            f"train_model --kind head then --kind backbone, {done[0]['queries']} unseen query images each through "
            "POST /api/v1/search/image/), ours vs raw pixels: " + "; ".join(parts) + "."]


def main():
    def extra(parser):
        parser.add_argument("--tiny", action="store_true", help="check the harness: 150 images, results not kept")
        parser.add_argument("--catalogs", default=",".join(catalogs.CATALOGS))
        parser.add_argument("--no-write", action="store_true", help="print only; the JSON goes to a temporary file")
        for hidden in ("--child", "--size", "--child-out"):  # how run_child starts one catalog's instance
            parser.add_argument(hidden, help=argparse.SUPPRESS)

    args = common.parse_mode(extra=extra)
    if args.child:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks and atexit cleanup run
        result = run_catalog(args.child, args.size)
        Path(args.child_out).write_text(json.dumps(result, default=str))
        return
    size = "tiny" if args.tiny else args.mode
    names = [n.strip() for n in args.catalogs.split(",") if n.strip()]
    unknown = set(names) - set(catalogs.CATALOGS)
    if unknown:
        raise SystemExit(f"unknown catalog(s): {', '.join(sorted(unknown))}")
    common.decide_weights()  # once, inherited by every child
    started = time.perf_counter()
    results = [run_child(name, size) for name in names]
    tables = [summary_table(results), *[catalog_table(r) for r in results]]
    for t in tables:
        common.print_table(t)
    n_catalog, n_queries = SIZES[size]
    shrunk = [f"{n_catalog:,} catalog images and {n_queries:,} queries per catalog (full: 5,000 and 1,000)",
              f"input size {input_size(size)} (full: $RECOMMENDER_INPUT_SIZE or 224)"] if size != "full" else []
    payload = {"mode": size, "catalogs": {r["catalog"]: r for r in results}, "shrunk": shrunk, "tables": tables,
               "recommender_training": os.environ.get("RECOMMENDER_TRAINING"),
               "seconds": round(time.perf_counter() - started, 1)}
    if size == "tiny" or args.no_write:  # a check of the harness, not a result: kept out of bench/results/
        path = Path(tempfile.mkdtemp(prefix="bench-heldout-unsaved-")) / "heldout.json"
        path.write_text(json.dumps({"benchmark": "heldout", "finished_at": common.now(), **payload}, default=str))
        log(f"\nwrote {path} (not in bench/results/)")
    else:
        common.write_result("heldout", payload)
    if any(r.get("failed") for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
