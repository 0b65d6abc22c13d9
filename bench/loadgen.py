"""A small, bounded HTTP load generator (run as its own process by bench/web_load.py).

Reads a JSON plan on stdin, sends requests from ``concurrency`` threads (one HTTP session each)
until ``duration_s`` has passed or ``max_requests`` were sent, and prints one JSON line with
requests per second, latency percentiles and errors. Only loopback addresses are accepted.

Plan: {"base_url": "http://127.0.0.1:PORT", "method": "GET"|"POST", "paths": [...],
       "files": [paths of images to upload], "field": "photo", "csrf_from": "/search/photo/" | null,
       "concurrency": 8, "duration_s": 10, "max_requests": 5000, "timeout_s": 60}
"""

from __future__ import annotations

import json
import sys
import threading
import time
from urllib.parse import urlparse

import numpy as np
import requests


def main():
    plan = json.loads(sys.stdin.read())
    host = urlparse(plan["base_url"]).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load {host}: the benchmark only targets this machine")
    paths = plan["paths"]
    files = [open(p, "rb").read() for p in plan.get("files", [])]
    concurrency = int(plan["concurrency"])
    max_requests = int(plan.get("max_requests", 5000))
    clock = {"deadline": None, "started": None}

    def start_clock():
        clock["started"] = time.perf_counter()
        clock["deadline"] = time.monotonic() + float(plan["duration_s"])

    # Threads fetch their CSRF cookie first, then all start together: setup is not timed.
    barrier = threading.Barrier(int(plan["concurrency"]) + 1, action=start_clock)
    timeout = float(plan.get("timeout_s", 60))
    lock = threading.Lock()
    counter = {"sent": 0}
    latencies, errors, samples = [], [], []

    def take() -> int | None:
        with lock:
            if counter["sent"] >= max_requests or time.monotonic() >= clock["deadline"]:
                return None
            counter["sent"] += 1
            return counter["sent"] - 1

    def worker(seed: int):
        session = requests.Session()
        headers = {}
        if plan.get("csrf_from"):
            session.get(plan["base_url"] + plan["csrf_from"], timeout=timeout)
            headers["X-CSRFToken"] = session.cookies.get("csrftoken", "")
            headers["Referer"] = plan["base_url"] + plan["csrf_from"]
        barrier.wait()
        rng = np.random.default_rng(seed)
        while (n := take()) is not None:
            path = paths[int(rng.integers(len(paths)))]
            url = plan["base_url"] + path
            started = time.perf_counter()
            try:
                if plan["method"] == "POST":
                    data = files[n % len(files)]
                    response = session.post(url, files={plan.get("field", "photo"): ("query.png", data, "image/png")},
                                            headers=headers, timeout=timeout)
                else:
                    response = session.get(url, headers=headers, timeout=timeout)
                elapsed = time.perf_counter() - started
                ok = 200 <= response.status_code < 300
                detail = f"{response.status_code} {path}: {response.text[:200]!r}" if not ok else None
            except requests.RequestException as exc:
                elapsed, ok, detail = time.perf_counter() - started, False, f"{type(exc).__name__} {path}: {exc}"
            with lock:
                latencies.append(elapsed)
                if not ok:
                    errors.append(1)
                    if len(samples) < 5:
                        samples.append(detail)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait(timeout + 30)
    started = clock["started"]
    for t in threads:
        t.join(float(plan["duration_s"]) + timeout + 30)
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    print(json.dumps({
        "concurrency": concurrency, "requests": len(latencies), "errors": len(errors), "error_samples": samples,
        "seconds": round(wall, 2), "rps": round(len(latencies) / wall, 2) if wall else None,
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "max_ms": round(float(ms.max()), 1) if len(ms) else None,
    }))


if __name__ == "__main__":
    main()
