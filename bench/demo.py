"""Benchmark 8: the demo by itself. What ``make run`` does on a machine without ImageNet weights,
with no one touching it: a worker (2 processes, with beat, retraining checked every 30 s as the
demo does) ingests 1,500 Fashion-MNIST products imported by ``manage.py import_fashion_mnist``, the
periodic check trains a first, frozen-backbone version (RECOMMENDER_TRAINING=auto), then a version
with the backbone trained on the catalog, which the gate compares with the first. Measured: when
each step ends, each version's phase times, and its held-out P@6 beside raw pixels' on the same
images (the dashboard's figures).

    python bench/demo.py [--quick | --full]     # the same run in both modes
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from config.processes import CELERY_READY, ManagedProcess, celery_worker_command, stop_all  # noqa: E402

PRODUCTS, TIMEOUT_S = 1500, 45 * 60


def snapshot() -> dict:
    from catalog.models import ProductImage
    from recommender.models import ModelVersion

    versions = list(ModelVersion.objects.order_by("id").values("id", "kind", "status", "progress", "metrics", "error",
                                                               "kind_reason", "backbone", "val_accuracy"))
    return {"ready": ProductImage.objects.filter(status=ProductImage.Status.READY).count(), "versions": versions}


def version_row(v: dict, events: dict) -> list:
    raw = (v["metrics"] or {}).get("raw_pixels") or {}
    phases = (v["progress"] or {}).get("phase_seconds", {})
    return [f"v{v['id']}", v["kind"], v["status"], events.get(f"v{v['id']} {v['status']}"),
            round(sum(t for name, t in phases.items() if name != "quality gate"), 1),
            phases.get("training"), phases.get("extracting"), (raw.get("version") or {}).get("precision_at_6"),
            raw.get("precision_at_6"), (v["progress"] or {}).get("gate") or v["error"][:200]]


def main():
    common.parse_mode()
    tmp = common.isolate("demo", RECOMMENDER_INPUT_SIZE=64, RETRAIN_CHECK_EVERY_SECONDS=30, RECOVER_EVERY_SECONDS=30)
    import os

    os.environ.pop("RECOMMENDER_TRAINING", None)  # the demo's default: auto
    common.django_setup()
    worker = ManagedProcess(celery_worker_command(concurrency=2, beat_schedule=tmp / "beat", node_name="demo@%h"),
                            name="celery worker", log=tmp / "worker.log")
    events, started = {}, time.perf_counter()
    try:
        worker.wait_ready(CELERY_READY, timeout=180)
        subprocess.run([sys.executable, "manage.py", "import_fashion_mnist", f"--count={PRODUCTS}", "--split=train"],
                       cwd=common.ROOT, check=True, capture_output=True)
        events["imported"] = round(time.perf_counter() - started, 1)
        while time.perf_counter() - started < TIMEOUT_S:
            state = snapshot()
            now = round(time.perf_counter() - started, 1)
            if state["ready"] >= PRODUCTS:
                events.setdefault("all images ready", now)
            for v in state["versions"]:
                events.setdefault(f"v{v['id']} {v['status']}", now)
            backbone = [v for v in state["versions"] if v["kind"] == "backbone"]
            if backbone and backbone[-1]["status"] in ("active", "failed") or any(
                    v["status"] == "failed" for v in state["versions"]):
                break
            time.sleep(2)
    finally:
        stop_all([worker], timeout=60, kill_timeout=10)
    state = snapshot()
    rows = [version_row(v, events) for v in state["versions"]]
    tables = [common.table("The demo by itself: 1,500 Fashion-MNIST products, RECOMMENDER_TRAINING=auto, 2-core worker",
                           ["Version", "Kind", "Status", "Reached it at (s)", "Its phases (s)", "Training (s)",
                            "Re-extraction (s)", "P@6 held out", "P@6 raw pixels, same images", "Gate"], rows,
                           [f"Events (s from the start of the import): {events}.",
                            f"Backbone weights: {common.weights()} ({common.weights_reason()}); input size 64 for "
                            "the frozen backbone (the demo's), the backbone kind's own size for the trained one."])]
    for t in tables:
        common.print_table(t)
    common.write_result("demo", {"mode": "quick", "events": events, "versions": state["versions"], "tables": tables,
                                 "seconds": round(time.perf_counter() - started, 1)})
    if not any(v["kind"] == "backbone" and v["status"] == "active" for v in state["versions"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
