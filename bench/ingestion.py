"""Benchmark 5: ingestion and retraining.

Retraining: 15,000 Fashion-MNIST feature vectors (the training images' backbone features, from the
cache of bench/quality.py or extracted here) are stored as a catalog. A setup version (1 epoch) is
trained and activated first, so that the timed one is a real retrain through
``model_version_train``: train the head, re-embed the whole catalog with it (inserting into the
HNSW index, which still holds the active version's rows), evaluate, pass the quality gate against
the active version and activate, retiring the old one (v1 -> v2). Both modes do this.

Ingestion: with that version active, real Celery worker processes (one, then two) ingest N new
products with one image each (N = 1,000 in the quick run), uploaded through the catalog services
in transactions of 100 (like the importer). Measured: from the first upload until every image is
ready *and* embedded by the active version, i.e. returned by the similar-items query.

    python bench/ingestion.py [--quick | --full]
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from config.processes import CELERY_READY, ManagedProcess, celery_worker_command, stop_all  # noqa: E402

N_FEATURES = 15_000
UPLOAD_CHUNK = 100


def start_worker(tmp: Path, name: str) -> ManagedProcess:
    """One ``celery worker -c 1`` on every queue, logging to ``tmp``; wait_ready(CELERY_READY) before use."""
    return ManagedProcess(celery_worker_command(node_name=f"bench-{name}@%h"), name="celery worker",
                          log=tmp / f"worker-{name}.log")


# --------------------------------------------------------------------------- retraining


def seed_features(spec, features: np.ndarray, labels: np.ndarray) -> int:
    """Products and image rows (no files) with the given backbone features, COPYed in binary."""
    import psycopg
    from pgvector.psycopg import register_vector

    from catalog.models import Product, ProductImage
    from catalog.services import category_get_or_create

    categories = {name: category_get_or_create(name=name) for name in sorted(set(labels))}
    Product.objects.bulk_create(
        [Product(sku=f"SEED-{i:05d}", title=f"{labels[i]} #{i}", category=categories[labels[i]], price=10 + i % 90)
         for i in range(len(features))], batch_size=5000)
    ids = dict(Product.objects.filter(sku__startswith="SEED-").values_list("sku", "id"))
    ProductImage.objects.bulk_create(
        [ProductImage(product_id=ids[f"SEED-{i:05d}"], image=f"seed/{i}.png", image_format="PNG", width=28,
                      height=28, content_hash=f"{i:064d}", status=ProductImage.Status.READY)
         for i in range(len(features))], batch_size=5000)
    image_of = dict(ProductImage.objects.filter(product__sku__startswith="SEED-")
                    .values_list("product__sku", "id"))
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as raw:
        register_vector(raw)
        with raw.cursor() as cursor, cursor.copy(
                "COPY recommender_backbonefeature (image_id, backbone, vector, created_at) "
                "FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "varchar", "vector", "timestamptz"])
            now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
            for i, vector in enumerate(features):
                copy.write_row([image_of[f"SEED-{i:05d}"], spec.identity, vector, now])
        raw.execute("ANALYZE")
    return len(features)


def timed_training(epochs: int) -> dict:
    """model_version_start + model_version_train in this process; the phases' times are the ones the
    training records itself (``progress["phase_seconds"]``)."""
    from django.conf import settings

    from recommender.models import Embedding, ModelVersion
    from recommender.services.training import model_version_start, model_version_train

    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": epochs}
    started = time.perf_counter()
    version = model_version_start(trigger="benchmark", kind="head", publish=False)
    version = model_version_train(version_id=version.pk)
    total = time.perf_counter() - started
    phases = (version.progress or {}).get("phase_seconds", {})
    gate = phases.get("quality gate", 0.0)
    return {"version": version.pk, "status": version.status, "error": version.error, "epochs": epochs,
            "total_seconds": round(total, 1), "training_seconds": version.metrics.get("training_seconds"),
            "embed_and_index_seconds": round(phases.get("embedding", 0.0), 1),
            "evaluate_seconds": round(phases.get("evaluating", 0.0) - gate, 1), "gate_seconds": round(gate, 1),
            "activate_seconds": round(phases.get("activating", 0.0), 1), "phase_seconds": phases,
            "embeddings": Embedding.objects.filter(version_id=version.pk).count(),
            "val_accuracy": version.val_accuracy, "gate": (version.progress or {}).get("gate"),
            "active": version.status == ModelVersion.Status.ACTIVE}


# --------------------------------------------------------------------------- ingestion


def upload(images: np.ndarray, labels: np.ndarray, prefix: str) -> list[int]:
    """Create one product per image through the catalog services, UPLOAD_CHUNK per transaction."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.db import transaction
    from PIL import Image

    from catalog.models import ProductImage
    from catalog.services import category_get_or_create, product_create

    categories = {}
    product_ids = []
    for start in range(0, len(images), UPLOAD_CHUNK):
        with transaction.atomic():
            for i in range(start, min(start + UPLOAD_CHUNK, len(images))):
                buffer = io.BytesIO()
                Image.fromarray(images[i], mode="L").save(buffer, "PNG")
                name = str(labels[i])
                category = categories.get(name) or categories.setdefault(name, category_get_or_create(name=name))
                product = product_create(sku=f"{prefix}-{i:05d}", title=f"{name} #{i}", category=category,
                                         price=19, uploads=[SimpleUploadedFile(f"{i}.png", buffer.getvalue(),
                                                                               "image/png")])
                product_ids.append(product.pk)
    return list(ProductImage.objects.filter(product_id__in=product_ids).values_list("id", flat=True))


def searchable(image_ids) -> tuple[int, int]:
    from catalog.models import ProductImage
    from recommender.models import Embedding
    from recommender.selectors import active_version

    version = active_version()
    ids = sorted(image_ids)
    # A run of consecutive ids (an import's) is counted by its range: an IN list of 4,000 ids every
    # second cost this process and PostgreSQL several percent of the cores under test.
    if ids and ids[-1] - ids[0] + 1 == len(ids):
        embedded = {"image_id__gte": ids[0], "image_id__lte": ids[-1]}
        images = {"id__range": (ids[0], ids[-1])}
    else:
        embedded, images = {"image_id__in": ids}, {"id__in": ids}
    ready = Embedding.objects.filter(version=version, image__status=ProductImage.Status.READY, **embedded).count()
    failed = ProductImage.objects.filter(status=ProductImage.Status.FAILED, **images).count()
    return ready, failed


def ingest(tmp: Path, n_workers: int, images, labels, prefix: str, timeout: float = 600) -> dict:
    from config.celery import app

    app.control.purge()
    workers = [start_worker(tmp, f"{prefix}-{i}") for i in range(n_workers)]
    try:
        for w in workers:
            w.wait_ready(CELERY_READY, timeout=120)
        # Warm-up (not timed): each worker loads TensorFlow, the backbone and the head once.
        warm = upload(images[:2 * n_workers], labels[:2 * n_workers], f"{prefix}-WARM")
        wait_warm(warm)
        batch_images, batch_labels = images[2 * n_workers:], labels[2 * n_workers:]
        started = time.perf_counter()
        ids = upload(batch_images, batch_labels, prefix)
        uploaded = time.perf_counter() - started
        done, failed, timed_out = wait_searchable(ids, timeout)
        total = time.perf_counter() - started
        return {"workers": n_workers, "images": len(ids), "searchable": done, "failed": failed,
                "upload_seconds": round(uploaded, 1), "seconds_to_searchable": round(total, 1),
                "images_per_second": round(done / total, 1), "timed_out": timed_out}
    finally:
        stop_all(workers, timeout=60, kill_timeout=10)


# --------------------------------------------------------------------------- the shop path

IMPORT_PHOTOS = 4000
PHOTO_SIZE = (60, 80)  # a shop's small product photos (width x height), JPEG


def shop_catalog(tmp: Path, n: int, prefix: str) -> Path:
    """A shop's export: a CSV and ``n`` colour product photos (bench/catalogs.colour_objects resized
    to PHOTO_SIZE), in the format ``import_catalog`` reads."""
    from bench import catalogs

    folder = tmp / f"shop-{prefix}"
    folder.mkdir()
    files, labels = catalogs.colour_objects(n, seed=11)
    lines = ["sku,title,category,images,price"]
    for i, (data, label) in enumerate(zip(files, labels)):
        catalogs.decode(data).convert("RGB").resize(PHOTO_SIZE).save(folder / f"{i}.jpg", "JPEG", quality=88)
        lines.append(f"{prefix}-{i:05d},{label} {i},{label},{i}.jpg,{10 + i % 90}")
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    return folder


def _extract_share(spec, paths, barrier, results):
    """One worker's share of the batched extractor, in a process of its own (TensorFlow imported here)."""
    from PIL import Image

    from recommender.backbone import Backbone

    common.quiet_tensorflow()
    backbone = Backbone(spec, batch_size=32)
    pictures = []
    for path in paths:
        with Image.open(path) as picture:
            picture.load()
            pictures.append(picture.copy())
    backbone.extract(pictures[:32])  # warm, like the workers
    barrier.wait()
    started, cpu = time.time(), time.process_time()
    backbone.extract(pictures)
    results.put((started, time.time(), len(pictures), time.process_time() - cpu))


def extractor_rate(spec, folder: Path, n_workers: int) -> dict:
    """The batched extractor alone (Backbone.extract, batch 32, decoded pictures in memory) in
    ``n_workers`` processes at once, as many as the ingestion's workers: images/s over all of them."""
    import multiprocessing

    paths = sorted(folder.glob("*.jpg"))
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(n_workers), context.Queue()
    shares = [paths[i::n_workers] for i in range(n_workers)]
    children = [context.Process(target=_extract_share, args=(spec, share, barrier, results)) for share in shares]
    for child in children:
        child.start()
    spans = [results.get(timeout=900) for _ in children]
    for child in children:
        child.join()
    seconds = max(end for _, end, _, _ in spans) - min(start for start, _, _, _ in spans)
    images = sum(n for _, _, n, _ in spans)
    cpu = sum(c for _, _, _, c in spans)
    return {"workers": n_workers, "images": images, "seconds": round(seconds, 2),
            "images_per_second": round(images / seconds, 1), "cpu_seconds": round(cpu, 1),
            "cpu_ms_per_image": round(1000 * cpu / images, 2)}


def wait_searchable(ids, timeout: float) -> tuple[int, int, bool]:
    # Polling thousands of ids ten times a second cost the machine under test ~18% of a core
    # (this process alone, 8.2 CPU-s in 45 s of a 2,000-photo shop run at 224 px, plus PostgreSQL's
    # share), which the extractor it is compared with does not pay: large waits poll once a second
    # (at most 1 s added to runs of minutes), a lone upload's every 0.1 s.
    interval = 0.1 if len(ids) <= 10 else 1.0
    deadline = time.monotonic() + timeout
    while True:
        done, failed = searchable(ids)
        if done + failed >= len(ids) or time.monotonic() > deadline:
            return done, failed, done + failed < len(ids)
        time.sleep(interval)


def wait_warm(ids, timeout: float = 300) -> None:
    """Warm-up (not timed): every worker has loaded TensorFlow, the backbone and the head."""
    if wait_searchable(ids, timeout)[0] < len(ids):
        raise RuntimeError(f"warm-up images were not ingested in {timeout:.0f} s")


def wait_preloaded(workers, timeout: float = 300) -> None:
    """Every worker has loaded its models (recommender.worker's preload), as the extractor it is
    compared with has: a warm-up upload alone warmed only the worker that took its one batch, and
    the other one loaded its backbone during the timed import (~10 s of one core at 64 px)."""
    from recommender.conf import config

    if not config().worker_preload:
        return  # RECOMMENDER_WORKER_PRELOAD=0: the warm-up upload is all there is
    deadline = time.monotonic() + timeout
    while not all("preloaded backbone" in w.output() for w in workers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not preload their models in {timeout:.0f} s")
        time.sleep(0.5)


def import_path(tmp: Path, spec, n_workers: int, n_photos: int, lone_uploads: int = 5) -> dict:
    """``manage.py import_catalog`` of a shop's photos (its own process, as a shop runs it) with
    ``n_workers`` warmed workers, until every image is searchable; beside it, in the same run, the
    batched extractor alone at the same input size and worker count, before and after (the rate
    compared is over both). Then lone uploads on the idle
    workers: seconds from the upload's commit until it is searchable (the worst is reported)."""
    from config.celery import app
    from catalog.models import ProductImage

    folder = shop_catalog(tmp, n_photos, f"SHOP{n_workers}")
    print(f"  the batched extractor alone, {n_workers} processes, {n_photos:,} photos (before the import)...")
    extractor_before = extractor_rate(spec, folder, n_workers)
    print(f"  {extractor_before}")
    app.control.purge()
    workers = [start_worker(tmp, f"shop-{i}") for i in range(n_workers)]
    try:
        for w in workers:
            w.wait_ready(CELERY_READY, timeout=120)
        images, labels = common.load_fashion_mnist()[1]
        wait_preloaded(workers)
        warm = upload(images[:2 * n_workers], np.array(common.CLASS_NAMES)[labels[:2 * n_workers]], "SHOPWARM")
        wait_warm(warm)
        before = set(ProductImage.objects.values_list("id", flat=True))
        cpu_before = common.cpu_snapshot()
        started = time.perf_counter()
        command = ManagedProcess([sys.executable, "manage.py", "import_catalog", str(folder / "catalog.csv"),
                                  "--verbosity", "0"], name="import_catalog", log=tmp / "import_catalog.log")
        command.wait(timeout=900)
        imported_s = time.perf_counter() - started
        ids = list(ProductImage.objects.exclude(id__in=before).values_list("id", flat=True))
        done, failed, timed_out = wait_searchable(ids, 900)
        total = time.perf_counter() - started
        cpu = common.cpu_spent(cpu_before, common.cpu_snapshot())
        ingest = {"images": len(ids), "searchable": done, "failed": failed, "timed_out": timed_out,
                  "import_seconds": round(imported_s, 1), "seconds_to_searchable": round(total, 1),
                  "images_per_second": round(done / total, 1), "cpu_seconds": cpu,
                  "cpu_ms_per_image": {group: round(1000 * value / max(len(ids), 1), 2) for group, value in cpu.items()}}
        lone = []
        for i in range(lone_uploads):
            time.sleep(1.0)  # idle workers
            t0 = time.perf_counter()
            [image_id] = upload(images[100 + i:101 + i], np.array(common.CLASS_NAMES)[labels[100 + i:101 + i]],
                                f"LONE{n_workers}-{i}")
            wait_searchable([image_id], 60)
            lone.append(round(time.perf_counter() - t0, 2))
    finally:
        stop_all(workers, timeout=60, kill_timeout=10)
    # Measured again after it: this shared machine's speed drifts by 10-40% within minutes, and one
    # measurement before a 5-minute import compared the path with a machine that was not there.
    print("  the batched extractor alone again (after the import)...")
    extractor_after = extractor_rate(spec, folder, n_workers)
    print(f"  {extractor_after}")
    extractor = {**extractor_after, "images": extractor_before["images"] + extractor_after["images"],
                 "seconds": round(extractor_before["seconds"] + extractor_after["seconds"], 2),
                 "cpu_seconds": round(extractor_before["cpu_seconds"] + extractor_after["cpu_seconds"], 1)}
    extractor["images_per_second"] = round(extractor["images"] / extractor["seconds"], 1)
    extractor["cpu_ms_per_image"] = round(1000 * extractor["cpu_seconds"] / extractor["images"], 2)
    extractor["before"], extractor["after"] = extractor_before, extractor_after
    return {"workers": n_workers, "photo_size": list(PHOTO_SIZE), "extractor": extractor, "import_catalog": ingest,
            "ratio": round(ingest["images_per_second"] / extractor["images_per_second"], 3),
            "lone_upload_seconds": lone, "lone_upload_worst_seconds": max(lone)}


BACKLOG = 50_000


def backlog_queue(n: int = BACKLOG, commits: int = 1000, recoveries: int = 3) -> dict:
    """Broker messages held for a backlog of ``n`` pending images (rows only, no worker running):
    ``commits`` arrivals each asking for a drain, then ``recoveries`` runs of the periodic recovery
    with every row older than STALE_SECONDS. Before drains, each commit published its own task and
    each recovery run published RECOVER_BATCH (5,000) ids in INGEST_CHUNK-image tasks (79 more
    messages per run for as long as the backlog lasted)."""
    from datetime import timedelta

    from django.utils import timezone

    from catalog.models import Product, ProductImage
    from catalog.services import category_get_or_create
    from config.celery import app
    from recommender import publishing
    from recommender.services.ingestion import ingestion_wake
    from recommender.services.maintenance import RECOVER_BATCH, recover_lost_work

    app.control.purge()
    publishing.drain_taken()
    product = Product.objects.create(sku="BACKLOG", title="backlog", category=category_get_or_create(name="Backlog"))
    ProductImage.objects.bulk_create([ProductImage(product=product, image=f"backlog/{i}.jpg", content_hash=f"b{i:063d}")
                                      for i in range(n)], batch_size=5000)
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        for _ in range(commits):
            ingestion_wake()
        after_commits = client.llen("features")
        ProductImage.objects.filter(product=product).update(status_changed_at=timezone.now() - timedelta(hours=1))
        timings = []
        for _ in range(recoveries):
            t0 = time.perf_counter()
            recover_lost_work()
            timings.append(round(time.perf_counter() - t0, 3))
        after = client.llen("features")
    app.control.purge()
    ProductImage.objects.filter(product=product).delete()
    product.delete()
    from django.conf import settings

    chunk = settings.RECOMMENDER["INGEST_CHUNK"]
    return {"pending_images": n, "commits": commits, "recoveries": recoveries,
            "queue_after_commits": after_commits, "queue_after_recoveries": after,
            "recovery_seconds": timings,
            "before_drains_messages": commits + recoveries * -(-RECOVER_BATCH // chunk)}


def shop_only(args) -> None:
    """``--shop-only``: the shop path and the backlog alone at ``--input-size`` (224 by default,
    the production size), on a small setup catalog: 300 Fashion-MNIST products processed in this
    process and a head trained on them (2 epochs), active, so imported photos become searchable."""
    size = args.input_size or 224
    tmp = common.isolate("ingest-shop", RECOMMENDER_INPUT_SIZE=size, RECOMMENDER_TRAINING="head")
    common.django_setup()
    common.quiet_tensorflow()
    started_all = time.perf_counter()
    from django.conf import settings
    from django.core.management import call_command

    from recommender import runtime
    from recommender.services.ingestion import images_drain
    from recommender.services.training import model_version_start, model_version_train

    spec = runtime.backbone_spec()
    print(f"Setup: 300 Fashion-MNIST products at {size} px, a head trained on them (2 epochs)...")
    call_command("import_fashion_mnist", count=300, split="train", verbosity=0)
    images_drain(token="setup", eager=True)
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": 2}
    version = model_version_train(version_id=model_version_start(trigger="benchmark", kind="head", publish=False).pk)
    if version.status != "active":
        raise RuntimeError(f"the setup version did not activate: {version.error}")
    n = args.photos or IMPORT_PHOTOS
    print(f"import_catalog of {n:,} colour photos at {size} px with 2 workers, beside the batched extractor alone...")
    shop = import_path(tmp, spec, 2, n)
    print(f"  {shop}")
    backlog = backlog_queue()
    print(f"  {backlog}")
    imp, ext = shop["import_catalog"], shop["extractor"]
    table = common.table(
        f"The shop path at {size} px: import_catalog of {imp['images']:,} colour photos until all are searchable, "
        "beside the batched extractor alone (same run, input size, worker count)",
        ["Path", "Worker processes", "Images", "Seconds", "Images/s", "Share of the extractor"],
        [["Batched extractor alone", ext["workers"], ext["images"], ext["seconds"], ext["images_per_second"], "1.00"],
         ["`manage.py import_catalog` until searchable", shop["workers"], imp["images"], imp["seconds_to_searchable"],
          imp["images_per_second"], f"{shop['ratio']:.2f}"]],
        [f"Backbone {spec.identity}; photos {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG; import_catalog itself took "
         f"{imp['import_seconds']} s. The extractor alone ran before the import ({ext['before']['images_per_second']} "
         f"images/s) and after it ({ext['after']['images_per_second']}); its row is both together. Lone uploads on idle workers: "
         f"{', '.join(f'{v:.2f}' for v in shop['lone_upload_seconds'])} s (worst {shop['lone_upload_worst_seconds']:.2f} s).",
         f"Backlog of {backlog['pending_images']:,} pending images: {backlog['queue_after_recoveries']} message(s) in the "
         f"broker after {backlog['commits']:,} arrivals and {backlog['recoveries']} recoveries "
         f"({backlog['before_drains_messages']:,} before drains)."])
    common.print_table(table)
    cpu = cpu_table(shop, size)
    common.print_table(cpu)
    previous = common.read_result("ingestion_shop") or {}
    runs = {**previous.get("runs", {}), str(size): {"shop_path": shop, "backlog": backlog, "table": table,
                                                   "cpu_table": cpu, "backbone": spec.identity}}
    ordered = [r for _, r in sorted(runs.items(), key=lambda kv: int(kv[0]))]
    common.write_result("ingestion_shop", {"mode": "shop-only", "runs": runs,
                                           "tables": [t for r in ordered for t in (r["table"], r.get("cpu_table")) if t],
                                           "seconds": round(time.perf_counter() - started_all, 1)})


CPU_GROUPS = {"workers": "Celery workers (decode, backbone, thumbnails, head, bookkeeping)",
              "bench": "import_catalog (a child of this script) and this script's polling",
              "postgres": "PostgreSQL, its ended backends included (rows, HNSW inserts, the scaler's refits)",
              "redis": "Redis", "other": "other processes",
              "exited": "ended processes not reaped into a living one's times, and the kernel"}


def cpu_table(shop: dict, size: int) -> dict:
    """Where the shop path's CPU went, per image, beside the extractor alone's: the ceiling of the
    ratio on these cores is the extractor's CPU per image over the whole path's."""
    imp, ext = shop["import_catalog"], shop["extractor"]
    per_image = imp["cpu_ms_per_image"]
    rows = [["Batched extractor alone (both processes)", f"{ext['cpu_ms_per_image']:.2f}"]]
    rows += [[CPU_GROUPS.get(group, group), f"{value:.2f}"] for group, value in per_image.items()
             if group not in ("machine",) and value >= 0.05]
    rows.append(["**The whole shop path (machine busy time)**", f"{per_image['machine']:.2f}"])
    cores = os.cpu_count() or 1
    busy = imp["cpu_seconds"]["machine"] / (cores * imp["seconds_to_searchable"])
    ceiling = ext["cpu_ms_per_image"] / per_image["machine"]
    return common.table(
        f"The shop path at {size} px: CPU milliseconds per image, by process group (same run)", ["Where", "CPU ms per image"],
        rows, [f"The machine was {busy:.0%} busy over the {imp['seconds_to_searchable']} s ({cores} cores). With every "
               f"core busy, the path's ratio could reach at most the extractor's CPU per image over the path's: "
               f"{ext['cpu_ms_per_image']:.2f} / {per_image['machine']:.2f} = {ceiling:.2f} of the extractor "
               f"(measured {shop['ratio']:.2f}).", "From psutil (per living process) and /proc/stat (the machine)."])


def main():
    def extra(parser):
        parser.add_argument("--shop-only", action="store_true",
                            help="only the import_catalog path and the backlog, at --input-size (default 224)")
        parser.add_argument("--input-size", type=int, default=None)
        parser.add_argument("--photos", type=int, default=None, help=f"photos to import (default {IMPORT_PHOTOS:,})")

    args = common.parse_mode(extra=extra)
    if args.shop_only:
        return shop_only(args)
    quick = args.mode == "quick"
    # 64 in the quick run: the input size of the shop measurement (4,000 photos at 64 px).
    input_size = 64 if quick else int(os.environ.get("RECOMMENDER_INPUT_SIZE", 224))
    epochs = 6 if quick else int(os.environ.get("RECOMMENDER_EPOCHS", 32))
    n_ingest = 1000 if quick else 5000
    n_import = 1500 if quick else IMPORT_PHOTOS
    tmp = common.isolate("ingest", RECOMMENDER_INPUT_SIZE=input_size)
    common.django_setup()
    common.quiet_tensorflow()
    started_all = time.perf_counter()
    from django.db import connection

    from recommender import runtime

    spec = runtime.backbone_spec()
    (x_train, y_train), (x_test, y_test) = common.load_fashion_mnist()
    names = np.array(common.CLASS_NAMES)
    features, info = common.extract_cached(spec, f"fmnist-train-0-{N_FEATURES}", x_train[:N_FEATURES])
    print(f"Seeding {N_FEATURES:,} feature vectors ({spec.identity}, "
          f"{'cached' if info['cached'] else 'extracted'})...")
    seed_features(spec, features, names[y_train[:N_FEATURES]])

    def index_mib():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_relation_size('embedding_vector_hnsw')")
            return round(cursor.fetchone()[0] / 2 ** 20, 1)

    from recommender.models import ModelVersion

    # A real retrain (both modes): a first version is active, its rows are in the index, the gate
    # compares the new version with it, and activation retires it.
    print("Training a first version (1 epoch, setup: the version the retrain replaces)...")
    first = timed_training(epochs=1)
    first["index_mib_after"] = index_mib()
    print(f"  v{first['version']} {first['status']} in {first['total_seconds']} s")
    if not first["active"]:
        raise RuntimeError(f"the setup version did not activate: {first['error']}")
    print(f"Retraining on {N_FEATURES:,} feature vectors ({epochs} epochs), re-embedding and re-indexing the "
          f"catalog, gate against v{first['version']}...")
    retrain = timed_training(epochs=epochs)
    retrain["index_mib_after"] = index_mib()
    print(f"  v{retrain['version']} {retrain['status']}: {retrain}")
    if not retrain["active"]:
        raise RuntimeError(f"the retrained version did not activate: {retrain['error']}")
    switch = {"from_version": first["version"], "to_version": retrain["version"],
              "from_status_after": ModelVersion.objects.get(pk=first["version"]).status,
              "active_after": list(ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE)
                                   .values_list("pk", flat=True)),
              "gate": retrain["gate"]}
    print(f"  switch: v{switch['from_version']} -> v{switch['to_version']} (v{switch['from_version']} now "
          f"{switch['from_status_after']}); gate: {switch['gate']}")

    runs = []
    offset = 0
    for n_workers in (1, 2):
        count = n_ingest + 2 * n_workers
        images, labels = x_test[offset:offset + count], names[y_test[offset:offset + count]]
        offset += count
        print(f"Ingesting {n_ingest:,} images with {n_workers} worker process{'es' if n_workers > 1 else ''}...")
        run = ingest(tmp, n_workers, images, labels, f"ING{n_workers}")
        runs.append(run)
        print(f"  {run}")

    print(f"import_catalog of {n_import:,} colour photos ({PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG) with 2 workers, "
          "beside the batched extractor alone...")
    shop = import_path(tmp, spec, 2, n_import)
    print(f"  {shop}")
    print(f"A backlog of {BACKLOG:,} pending images: broker messages after 1,000 arrivals and 3 recoveries...")
    backlog = backlog_queue()
    print(f"  {backlog}")

    ingest_rows = [[r["workers"], r["images"], r["upload_seconds"], r["seconds_to_searchable"],
                    r["images_per_second"], r["failed"]] for r in runs]
    speedup = round(runs[0]["seconds_to_searchable"] / runs[1]["seconds_to_searchable"], 2)
    def row(label, r):
        r["other_seconds"] = round(r["total_seconds"] - (r["training_seconds"] or 0) - r["embed_and_index_seconds"]
                                   - r["evaluate_seconds"] - r.get("gate_seconds", 0), 1)
        return [label, f"{N_FEATURES:,}", r["epochs"], r["training_seconds"], r["embed_and_index_seconds"],
                r["evaluate_seconds"], r.get("gate_seconds"), r["other_seconds"], r["total_seconds"],
                r["index_mib_after"]]

    old, new = f"v{switch['from_version']}", f"v{switch['to_version']}"
    retrain_rows = [row(f"Setup: {old}, first version (empty index, nothing to compare with)", first),
                    row(f"Retrain: {new} replaces the active {old}", retrain)]
    retrain_note = (f"Retrain: the index still holds {old}'s {N_FEATURES:,} rows while {new} adds its own; the "
                    f"quality gate scores {new} and the active {old} on held-out images; activation retired "
                    f"{old} ({old} is now {switch['from_status_after']}). Gate: {switch['gate']}.")
    imp, ext = shop["import_catalog"], shop["extractor"]
    shop_table = common.table(
        f"The shop path: import_catalog of {imp['images']:,} colour photos until all are searchable, beside the "
        "batched extractor alone (same run, input size, worker count)",
        ["Path", "Worker processes", "Images", "Seconds", "Images/s", "Share of the extractor"],
        [["Batched extractor alone (Backbone.extract, batch 32, decoded in memory)", ext["workers"], ext["images"],
          ext["seconds"], ext["images_per_second"], "1.00"],
         ["`manage.py import_catalog` until searchable (read, validate, store, drain, extract, thumbnails, embed)",
          shop["workers"], imp["images"], imp["seconds_to_searchable"], imp["images_per_second"],
          f"{shop['ratio']:.2f}"]],
        [f"Photos {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG (bench/catalogs.colour_objects), input size {input_size}; "
         f"import_catalog itself took {imp['import_seconds']} s of the {imp['seconds_to_searchable']} s (it runs "
         "beside the workers on the same 2 cores). Target (issue 14): at least 0.80 of the extractor.",
         f"A lone upload on idle workers, upload to searchable: {', '.join(f'{v:.2f}' for v in shop['lone_upload_seconds'])} "
         f"s (worst {shop['lone_upload_worst_seconds']:.2f} s; target 2 s).",
         f"Backlog of {backlog['pending_images']:,} pending images: {backlog['queue_after_commits']} message(s) in the "
         f"broker after {backlog['commits']:,} arrivals, {backlog['queue_after_recoveries']} after "
         f"{backlog['recoveries']} recovery runs (each {max(backlog['recovery_seconds']):.2f} s at most); before "
         f"drains the same events published {backlog['before_drains_messages']:,}."])
    tables = [
        shop_table,
        common.table(f"Ingestion: {n_ingest:,} uploaded images until all are searchable",
                     ["Worker processes", "Images", "Upload s", "Seconds to all searchable", "Images/s", "Failed"],
                     ingest_rows,
                     [f"Backbone {spec.identity} ({common.weights_reason()}); each worker is `celery worker -c 1` on the same 2-core machine "
                      "as the uploader and the database; workers were warmed up (TensorFlow and models loaded) "
                      "before the clock started.",
                      f"Searchable = status ready (features, thumbnails) and embedded by the active version. "
                      f"Two workers vs one: {speedup}x."]),
        common.table("Training a new version on 15,000 stored feature vectors (model_version_train)",
                     ["Run", "Feature vectors", "Epochs", "Train head s", "Re-embed + index s", "Evaluate s",
                      "Gate s", "Other s", "Total s", "HNSW index MiB after"], retrain_rows,
                     ["Total = start to active: load the stored features, train, save, embed the catalog into the "
                      "HNSW index, evaluate on the held-out 20%, quality gate against the active version, "
                      "activate. Other = loading features, saving the model and activation. No CNN run: features "
                      "are stored per backbone.",
                      retrain_note]),
    ]
    for t in tables:
        common.print_table(t)
    shrunk = [f"{n_ingest:,} images (full: 5,000)", f"input size {input_size} (full: $RECOMMENDER_INPUT_SIZE or 224)",
              f"head trained {epochs} epochs (full: 32)"] if quick else []
    common.write_result("ingestion", {
        "mode": args.mode, "backbone": spec.identity, "ingestion": runs, "two_worker_speedup": speedup,
        "shop_path": shop, "backlog": backlog,
        "first_training": first, "retraining": retrain, "switch": switch, "shrunk": shrunk, "tables": tables,
        "seconds": round(time.perf_counter() - started_all, 1)})


if __name__ == "__main__":
    main()
