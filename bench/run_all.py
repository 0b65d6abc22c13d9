"""Run every benchmark, one after another, each as its own process; then regenerate
docs/benchmarks.md from the JSON results.

    python bench/run_all.py --quick      # make bench: about an hour on 2 cores
    python bench/run_all.py --full       # the complete protocol
    python bench/run_all.py --quick --only quality,query_speed

quality runs first: it caches the Fashion-MNIST features and our embeddings that query_speed and
ingestion reuse. A failing script is reported and the others still run; the exit code is non-zero
if any failed.

The backbone weights are decided once, before the first script: RECOMMENDER_BACKBONE_WEIGHTS when
set, else ImageNet if a probe can load them, else seeded random weights; the decision and its
reason reach every script through the environment (bench.common.decide_weights).

bench/results/run_all.json describes the last complete run (its command, date, total and per-script
times: the header of docs/benchmarks.md). A ``--only`` run does not replace it: it is appended to
that file's ``partial_reruns``, and the report lists it as a rerun of those scripts.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

# Run only when named with --only (make bench-backbone): the backbone kind on the whole protocol with
# a 12-epoch schedule, ~30 min on 2 cores (quality.py's row trains the product's default, 6 epochs).
ON_REQUEST = ["backbone_training", "runtimes"]
SCRIPTS = ["quality", "extraction_speed", "query_speed", "web_load", "web_floor", "ingestion", "model_storage", "duplicates", "soak",
           "heldout", "demo", "diversity", "crop_search", "events"]
# TensorFlow's and absl's start-up chatter: kept in the logs, not on the console.
NOISE = re.compile(r"^([IWE]\d{4} |WARNING: All log messages before absl|.*oneDNN custom operations|"
                   r".*cuda_platform|.*cudart_stub|.*SEEDED RANDOM weights|\s*warnings\.warn|.*UserWarning)")


def run_script(name: str, mode: str, timeout: float, logs: Path) -> dict:
    log_path = logs / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    print(f"\n=== {name} ({mode}) ===", flush=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name(f"{name}.py")), f"--{mode}"],
                                cwd=common.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            for line in proc.stdout:
                log.write(line)
                if not NOISE.match(line):
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(name, timeout)
            proc.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            print(f"!!! {name} ran past {timeout:.0f} s and was stopped")
    seconds = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        print(f"!!! {name} failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(tail))
    return {"name": name, "returncode": proc.returncode, "seconds": seconds, "log": str(log_path)}


def record_partial(record: dict) -> None:
    """A --only run: keep the last complete run's header (command, date, total, per-script times)
    and append this rerun to its ``partial_reruns``; with no run on file, write the partial run
    itself, marked ``partial`` (later --only runs are appended to it)."""
    record = {**record, "finished_at": common.now(), "machine": common.machine()}
    full = common.read_result("run_all")
    if full and full.get("scripts"):
        full["partial_reruns"] = [*full.get("partial_reruns", []), record]
        common.write_json("run_all", full)
    else:
        common.write_json("run_all", {"benchmark": "run_all", "partial": True, **record})


def main():
    def extra(parser):
        parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(SCRIPTS + ON_REQUEST))

    args = common.parse_mode(extra=extra)
    names = [n.strip() for n in args.only.split(",")] if args.only else SCRIPTS
    unknown = set(names) - set(SCRIPTS) - set(ON_REQUEST)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    logs = common.CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    common.prime_keras_cache()
    decision = common.decide_weights()
    print(f"Backbone weights for every script: {decision['weights']} ({decision['reason']})", flush=True)
    # Quick scripts get 30 min each, but the held-out catalogs train two kinds of version on three
    # catalogs (each backbone version for at least RECOMMENDER_BACKBONE_MIN_STEPS steps).
    quick_timeouts = {"heldout": 90 * 60, "backbone_training": 60 * 60}
    started_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    started = time.perf_counter()
    scripts = [run_script(name, args.mode, quick_timeouts.get(name, 30 * 60) if args.mode == "quick" else 12 * 3600,
                          logs) for name in names]
    seconds = round(time.perf_counter() - started, 1)
    command = "make bench" if args.mode == "quick" and not args.only else \
        f"python bench/run_all.py --{args.mode}" + (f" --only {args.only}" if args.only else "")
    record = {"mode": args.mode, "command": command, "started_at": started_at, "seconds": seconds,
              "weights": decision["weights"], "weights_reason": decision["reason"], "scripts": scripts}
    if args.only:
        record_partial(record)
    else:
        common.write_result("run_all", record)
    subprocess.run([sys.executable, str(Path(__file__).with_name("report.py"))], cwd=common.ROOT, check=False)
    print(f"\nAll benchmarks: {seconds / 60:.1f} min")
    for s in scripts:
        print(f"  {s['name']:18} {s['seconds']:7.1f} s  {'ok' if s['returncode'] == 0 else 'FAILED'}")
    if any(s["returncode"] != 0 for s in scripts):
        sys.exit(1)


if __name__ == "__main__":
    main()
