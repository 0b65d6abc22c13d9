"""The soak test of the suite's slow tier, run as a benchmark: shoppers read product pages and the
similar-items API at a steady rate (2 reader threads) while staff upload 250 images and a
retraining runs and activates, against a real Celery worker, PostgreSQL and Redis.

    python bench/soak.py --quick     # what make bench runs (the same scenario in both modes)

It runs ``tests/recommender/test_soak.py`` through pytest (so the test's assertions judge the run:
zero 5xx, every image ready, the panel on every page, old version then new) and prints the figures
the test records: requests, status codes, how many answers each version gave and when the new one
took over. The exit code is pytest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

TEST = "tests/recommender/test_soak.py"


def main():
    args = common.parse_mode()
    common.prime_keras_cache()
    report = Path(tempfile.mkdtemp(prefix="bench-soak-")) / "soak.json"
    env = {**os.environ, "SOAK_REPORT": str(report), "PYTHONUNBUFFERED": "1"}
    # tests.bootstrap gives the run its own VAR_DIR, PostgreSQL, Redis and media; never the caller's.
    # Nor run_all's backbone weights: the test runs on the suite's seeded random weights (its note says so).
    for key in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "VAR_DIR", "MEDIA_ROOT", "MODELS_ROOT",
                "MODELS_STORAGE_ROOT", "RECOMMENDER_BACKBONE_WEIGHTS", common.DECISION_ENV):
        env.pop(key, None)
    print(f"running {TEST} (real worker, PostgreSQL, Redis)...", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider"],
                          cwd=common.ROOT, env=env, text=True, capture_output=True)
    seconds = round(time.perf_counter() - started, 1)
    passed = proc.returncode == 0
    print(proc.stdout[-3000:])
    if not passed:
        print(proc.stderr[-3000:])
    if not report.is_file():
        print("the soak test wrote no figures (it failed before the load phase ended)")
        sys.exit(proc.returncode or 1)
    r = json.loads(report.read_text())
    rows = [
        ["Duration of the load phase (s)", r["seconds"]],
        ["Staff upload of 250 images took (s)", r["upload_seconds"]],
        ["All 400 images ready after (s)", r["all_ready_seconds"]],
        ["Retraining (train, embed, evaluate, activate) took (s)", r["retraining_seconds"]],
        ["Shopper requests (product page + similar API)", r["requests"]],
        ["Shopper requests per second", r["requests_per_second"]],
        ["Status codes", ", ".join(f"{k}: {v}" for k, v in r["status_counts"].items())],
        ["5xx responses", r["errors_5xx"]],
        ["Product pages with the similar-items panel", f"{r['pages_with_panel']} of {r['product_pages']}"],
        ["Similar-items answers with fewer than 6 results", r["short_answers"]],
        ["Answers by the old version / the new version / other",
         f"{r['answered_by']['old']} / {r['answered_by']['new']} / {r['answered_by']['other']}"],
        ["New version activated at (s) / first answer by it at (s)",
         f"{r['new_version_activated_at_s']} / {r['first_answer_by_new_version_at_s']}"],
        ["Images ready at the end", f"{r['images_ready']} of {r['images']}"],
        ["The test's assertions", "passed" if passed else "FAILED"],
    ]
    t = common.table("Soak: steady shopper reads during uploads and a retraining", ["Figure", "Value"], rows, notes=[
        "150 products and a first model exist before the load starts; 2 reader threads on loopback, each "
        "fetching a product page and its similar-items API with a 50 ms pause, against Django's live test server.",
        "One Celery worker process (one child) does the ingestion and the retraining on the same "
        "2 cores as the readers.",
        "Backbone weights: random (the test suite's seeded random initialisation), input 32px."])
    common.print_table(t)
    common.write_result("soak", {"mode": args.mode, "seconds": seconds, "passed": passed, "results": r,
                                 "tables": [t]})
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
