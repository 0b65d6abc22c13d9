"""The floor under the web targets on this machine: the production server setup (gunicorn with
config/gunicorn.py, the same workers x threads) serving a WSGI app that does nothing but return
fixed bytes of a product page's size, loaded by wrk at 32 clients on the same cores, as
bench/web_load.py loads the real pages. No Django, no database, no cache: whatever p99 this
shows, no page served by that setup on these cores can beat it.

    python bench/web_floor.py [--quick] [--rounds N] [--bytes N]

Prints req/s, p50 and p99 per round and writes bench/results/web_floor.json; the report shows the
worst round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, loadgen  # noqa: E402
from config.processes import ManagedProcess  # noqa: E402

# The cached product page with its panel (bench/web_load.py's 1,000-product catalog): ~24 KB.
PAGE_BYTES = 24_000
BODY = b""


def application(environ, start_response):
    """A response that costs nothing: fixed bytes (PAGE_BYTES, or WEB_FLOOR_BYTES)."""
    global BODY
    if not BODY:
        BODY = b"x" * int(os.environ.get("WEB_FLOOR_BYTES", PAGE_BYTES))
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def floor_server(tmp: Path, body_bytes: int) -> tuple[ManagedProcess, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ManagedProcess(
        [sys.executable, "-m", "gunicorn", "bench.web_floor:application", "-c", str(common.ROOT / "config" / "gunicorn.py"),
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        name="gunicorn-floor", log=tmp / "gunicorn-floor.log", env_overrides={"WEB_FLOOR_BYTES": str(body_bytes)})
    base = f"http://127.0.0.1:{port}"

    def answers():
        import requests

        try:
            return requests.get(base + "/", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    server.wait_ready(answers, timeout=60, interval=0.5)
    return server, base


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="the default: 5 rounds of 20 s")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--bytes", type=int, default=PAGE_BYTES)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    rounds, duration = (args.rounds or (3 if args.quick else 5)), (10 if args.quick else 20)
    if not loadgen.wrk_path():
        raise SystemExit("wrk is needed (Debian: apt-get install wrk; make bench installs it)")
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-web-floor-"))
    started = time.perf_counter()
    server, base = floor_server(tmp, args.bytes)
    try:
        loadgen.run({"base_url": base, "paths": ["/"], "concurrency": args.clients, "duration_s": 2})  # warm
        results = []
        for i in range(rounds):
            r = loadgen.run({"base_url": base, "paths": ["/"], "concurrency": args.clients, "duration_s": duration})
            r["round"] = i + 1
            r["load_average"] = list(os.getloadavg())
            print(f"  round {i + 1}: {r['rps']} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['errors']} errors",
                  flush=True)
            results.append(r)
    finally:
        server.stop(timeout=30, kill_timeout=10)
    worst = max(results, key=lambda r: r["p99_ms"])
    table = common.table(
        f"The floor: the production gunicorn setup returning {args.bytes:,} fixed bytes (no Django), "
        f"{args.clients} clients, wrk on the same cores",
        ["Round", "Req/s", "p50 ms", "p99 ms", "Errors"],
        [[r["round"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"]] for r in results],
        [f"Worst round (by p99): {worst['rps']} req/s, p99 {worst['p99_ms']} ms. {rounds} rounds of {duration} s "
         "after a 2 s warm-up; config/gunicorn.py's workers x threads for these cores."])
    common.print_table(table)
    common.write_result("web_floor", {"mode": "quick" if args.quick else "full", "rounds": results, "worst": worst,
                                      "bytes": args.bytes, "clients": args.clients, "tables": [table],
                                      "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
