"""The benchmark's load generators: wrk for GETs, when it is installed, and this small Python one.

wrk (Debian's ``wrk`` package: ``apt-get install wrk``) is compiled and event-driven: on 2 cores
shared with the server it takes a few percent of one core where this thread pool took most of one
(one Python thread per client, under the GIL), so it measures the server rather than itself.
:func:`run` chooses: wrk for GET plans when it is on PATH, otherwise (POST uploads, or no wrk, with a
loud message) the thread pool below, in its own process. Both report the same JSON.

The thread pool, run as its own process (``python bench/loadgen.py`` with a JSON plan on stdin),
sends requests from ``concurrency`` threads (one HTTP session each) until ``duration_s`` has passed
or ``max_requests`` were sent, and prints one JSON line with requests per second, latency
percentiles and errors. Only loopback addresses are accepted.

Plan: {"base_url": "http://127.0.0.1:PORT", "method": "GET"|"POST", "paths": [...],
       "files": [paths of images to upload], "field": "photo", "csrf_from": "/search/photo/" | null,
       "concurrency": 8, "duration_s": 10, "max_requests": 5000, "timeout_s": 60}
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
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


# --------------------------------------------------------------------------- wrk

# Random paths from a file, and one JSON line at the end with the same fields as the thread pool's.
WRK_SCRIPT = r"""
local paths = {}
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  math.randomseed(tonumber(args[2]) + math.floor(os.clock() * 1e6))
end
function request()
  return wrk.format("GET", paths[math.random(#paths)])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "non_2xx": %d, "socket_errors": %d, "timeouts": %d, ' ..
    '"p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""
WRK_MISSING = ("\n" + "!" * 78 + "\n!! wrk is not installed: GET levels fall back to bench/loadgen.py, a Python thread\n"
               "!! pool that shares the cores with the server and caps what it can measure. Install it:\n"
               "!!     sudo apt-get install -y wrk\n" + "!" * 78 + "\n")


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(plan: dict) -> dict:
    """A GET plan through wrk (keep-alive connections, one per client, 2 threads at most)."""
    base = plan["base_url"]
    if urlparse(base).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load {base}: the benchmark only targets this machine")
    concurrency = int(plan["concurrency"])
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script, paths = Path(tmp) / "paths.lua", Path(tmp) / "paths.txt"
        script.write_text(WRK_SCRIPT)
        paths.write_text("\n".join(plan["paths"]) + "\n")
        seconds = max(1, round(float(plan["duration_s"])))  # wrk takes whole seconds
        cmd = [wrk_path(), "-t", str(min(2, concurrency)), "-c", str(concurrency), "-d", f"{seconds}s",
               "--timeout", f"{int(plan.get('timeout_s', 60))}s", "-s", str(script), base, "--", str(paths),
               str(plan.get("seed", 0))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=float(plan["duration_s"]) + 120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1000:]} {proc.stderr[-1000:]}")
    r = json.loads(lines[-1])
    errors = r["non_2xx"] + r["socket_errors"] + r["timeouts"]
    return {"concurrency": concurrency, "requests": r["requests"], "errors": errors,
            "error_samples": [f"{r['non_2xx']} non-2xx, {r['socket_errors']} socket errors, "
                              f"{r['timeouts']} timeouts"] if errors else [],
            "seconds": round(r["seconds"], 2), "rps": round(r["requests"] / r["seconds"], 2) if r["seconds"] else None,
            "p50_ms": round(r["p50_ms"], 2), "p99_ms": round(r["p99_ms"], 2), "max_ms": round(r["max_ms"], 1),
            "generator": "wrk"}


def run_threads(plan: dict) -> dict:
    """A plan through the thread pool, in its own process."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], input=json.dumps(plan),
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                          timeout=plan["duration_s"] + plan.get("timeout_s", 60) + 120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {**json.loads(lines[-1]), "generator": "python threads"}


_warned = []


def run(plan: dict) -> dict:
    if plan.get("method", "GET") == "GET" and not plan.get("csrf_from"):
        if wrk_path():
            return run_wrk(plan)
        if not _warned:
            _warned.append(True)
            print(WRK_MISSING, file=sys.stderr, flush=True)
    return run_threads(plan)


if __name__ == "__main__":
    main()
