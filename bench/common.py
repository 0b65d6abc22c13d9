"""Shared helpers of the benchmark scripts: paths, the temporary environment, the machine's
description, tables, JSON results and the feature cache.

Benchmarks never touch the developer's data: :func:`isolate` points VAR_DIR, MEDIA_ROOT and
MODELS_ROOT at a fresh temporary folder *before* Django or the embedded services are started,
so each script gets its own PostgreSQL + pgvector and Redis, removed when it exits.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "cache"
FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- arguments


def parse_mode(argv=None, extra=None):
    """``--quick`` (default, what ``make bench`` runs) or ``--full`` (the complete protocol)."""
    import argparse

    parser = argparse.ArgumentParser()
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="the shrunk run of make bench (default)")
    group.add_argument("--full", action="store_true", help="the complete protocol (hours on 2 cores)")
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    args.mode = "full" if args.full else "quick"
    return args


# run_all.py probes once (recommender.backbone.imagenet_weights_probe, as ``manage.py rundemo``
# does) and hands the decision to every script through this variable (JSON {"weights",
# "reason"}), next to RECOMMENDER_BACKBONE_WEIGHTS itself.
DECISION_ENV = "BENCH_WEIGHTS_DECISION"
_decision: dict | None = None


def decide_weights() -> dict:
    """The backbone weights of this run and why: {"weights": ..., "reason": ...}.

    RECOMMENDER_BACKBONE_WEIGHTS when set; otherwise ImageNet when the probe loads them, else
    'random'. Decided once: the result is exported (RECOMMENDER_BACKBONE_WEIGHTS and
    BENCH_WEIGHTS_DECISION), so child processes (run_all's scripts, extraction_speed's children)
    reuse it instead of probing again."""
    global _decision
    if _decision is None:
        configured = os.environ.get("RECOMMENDER_BACKBONE_WEIGHTS")
        try:
            inherited = json.loads(os.environ.get(DECISION_ENV) or "null")
        except ValueError:
            inherited = None
        if isinstance(inherited, dict) and configured and inherited.get("weights") == configured:
            _decision = {"weights": configured, "reason": str(inherited.get("reason"))}
        elif configured:
            _decision = {"weights": configured, "reason": "set by RECOMMENDER_BACKBONE_WEIGHTS"}
        else:
            from recommender.backbone import IMAGENET_PROBE_TIMEOUT_S, imagenet_weights_probe

            print(f"Backbone weights: RECOMMENDER_BACKBONE_WEIGHTS is unset; trying ImageNet "
                  f"(at most {IMAGENET_PROBE_TIMEOUT_S} s)...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            prime_keras_cache()  # the probe's child reads (and caches the weights in) this KERAS_HOME
            loaded, why = imagenet_weights_probe()
            seconds = time.perf_counter() - started
            if loaded:
                _decision = {"weights": "imagenet",
                             "reason": f"ImageNet weights loaded by the probe in {seconds:.0f} s"}
            else:
                _decision = {"weights": "random",
                             "reason": f"seeded random weights: the ImageNet weights could not be loaded "
                                       f"(probe failed after {seconds:.0f} s: {why})"}
            print(f"  -> {_decision['weights']}: {_decision['reason']}", file=sys.stderr, flush=True)
        os.environ["RECOMMENDER_BACKBONE_WEIGHTS"] = _decision["weights"]
        os.environ[DECISION_ENV] = json.dumps(_decision)
    return _decision


def weights() -> str:
    """Backbone weights of this run (see :func:`decide_weights`; every table says which)."""
    return decide_weights()["weights"]


def weights_reason() -> str:
    return decide_weights()["reason"]


# --------------------------------------------------------------------------- environment


def prime_keras_cache() -> Path:
    """Make keras.datasets.fashion_mnist.load_data() read the official files from disk.

    Uses $KERAS_HOME (what ``make bench`` exports and primes), copying the four files there when
    they are missing, so ImageNet weights cached in the same folder stay usable."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    source = Path(os.environ.get("FASHION_MNIST_DIR") or ROOT.parent / "shared" / "data" / "fashion-mnist")
    target = home / "datasets" / "fashion-mnist"
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in FASHION_FILES:
            if not (target / name).exists() and (source / name).is_file():
                shutil.copyfile(source / name, target / name)
    except OSError:  # read-only home: a private cache with links to the files
        home = Path(tempfile.mkdtemp(prefix="bench-keras-"))
        target = home / "datasets" / "fashion-mnist"
        target.mkdir(parents=True)
        for name in FASHION_FILES:
            if (source / name).is_file():
                os.symlink(source / name, target / name)
    os.environ["KERAS_HOME"] = str(home)
    return home


def isolate(name: str, **env) -> Path:
    """A temporary VAR_DIR (own PostgreSQL, Redis, media and models) for this process."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    os.environ["VAR_DIR"] = str(tmp)
    os.environ["MEDIA_ROOT"] = str(tmp / "media")
    os.environ["MODELS_ROOT"] = str(tmp / "models")
    os.environ["MODELS_STORAGE_ROOT"] = str(tmp / "model-store")
    os.environ["CACHE_PREFIX"] = f"bench-{name}-{os.getpid()}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["RECOMMENDER_BACKBONE_WEIGHTS"] = weights()
    # Never inherit servers from the caller's shell: the benchmark owns its own.
    for key in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER"):
        os.environ.pop(key, None)
    os.environ.update({k: str(v) for k, v in env.items()})
    prime_keras_cache()

    def cleanup():
        try:
            from config import embedded

            embedded.shutdown()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(cleanup)
    return tmp


def django_setup(migrate: bool = True) -> None:
    """Start the embedded services of the isolated VAR_DIR, set Django up and migrate."""
    import logging
    import warnings

    from config import embedded

    embedded.bootstrap()
    import django

    django.setup()
    warnings.filterwarnings("ignore", message=".*SEEDED RANDOM weights.*")
    logging.getLogger("recommender").setLevel(logging.ERROR)
    logging.getLogger("recommender.backbone").setLevel(logging.ERROR)
    if migrate:
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)


def quiet_tensorflow() -> None:
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", message=".*SEEDED RANDOM weights.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("recommender.backbone").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().replace("\n", "; ")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def machine() -> dict:
    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2 ** 30, 1)
    except ImportError:  # the GPU machine may lack psutil
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": _cpu_model(), "cores": cores, "memory_gib": memory, "gpu": _gpu(), "load_average": load,
            "os": platform.platform(), "python": platform.python_version(), "commit": commit}


# --------------------------------------------------------------------------- timing & tables


class Timer:
    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started


def _process_group(process) -> str:
    name, cmdline = process.name(), " ".join(process.cmdline())
    if "celery" in cmdline:
        return "workers"
    if name.startswith("postgres") or "postgres:" in cmdline:
        return "postgres"
    if "redis" in name or "redis" in cmdline:
        return "redis"
    if process.pid == os.getpid():
        return "bench"
    return "other"


def cpu_snapshot() -> dict:
    """CPU seconds (user + system) so far: the machine's busy time from /proc/stat, and per
    group of living processes (workers, postgres, redis, this bench, other), each process with its
    reaped children (PostgreSQL's ended backends count under postgres, a command this script ran
    and waited for under bench). What no living process accounts for is "exited" in
    :func:`cpu_spent`."""
    import psutil

    groups: dict = {}
    for process in psutil.process_iter():
        try:
            times = process.cpu_times()
            group = _process_group(process)
            spent = times.user + times.system + getattr(times, "children_user", 0) + getattr(times, "children_system", 0)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        groups[(group, process.pid, process.create_time())] = spent
    with open("/proc/stat") as handle:
        fields = [float(v) for v in handle.readline().split()[1:]]
    # user, nice, system, irq, softirq: not idle, iowait, steal (another VM's) or guest (counted in user)
    busy = (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")
    return {"busy": busy, "processes": groups}


def cpu_spent(before: dict, after: dict) -> dict:
    """CPU seconds spent between two :func:`cpu_snapshot` calls, per group; "exited" is the
    machine's busy time that no living process accounts for (processes that ended meanwhile whose
    parent has not reaped them into its own times, and the kernel's own work)."""
    spent: dict = {}
    for key, value in after["processes"].items():
        spent[key[0]] = spent.get(key[0], 0.0) + value - before["processes"].get(key, 0.0)
    total = after["busy"] - before["busy"]
    spent = {group: round(value, 1) for group, value in sorted(spent.items())}
    spent["exited"] = round(max(total - sum(spent.values()), 0.0), 1)
    spent["machine"] = round(total, 1)
    return spent


def percentiles_ms(samples_s) -> dict:
    samples = np.asarray(samples_s, dtype=np.float64) * 1000
    if samples.size == 0:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "n": 0}
    return {"p50_ms": round(float(np.percentile(samples, 50)), 2),
            "p99_ms": round(float(np.percentile(samples, 99)), 2),
            "mean_ms": round(float(samples.mean()), 2), "n": int(samples.size)}


def fmt(value, digits=3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(digits - 1, 1)}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, columns: list[str], rows: list[list], notes: list[str] | None = None) -> dict:
    return {"title": title, "columns": columns, "rows": rows, "notes": notes or []}


def print_table(t: dict) -> None:
    cells = [[fmt(c) for c in row] for row in t["rows"]]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(t["columns"])]
    print(f"\n{t['title']}")
    print("  ".join(str(h).ljust(w) for h, w in zip(t["columns"], widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    for note in t["notes"]:
        print(f"  * {note}")
    sys.stdout.flush()


def write_result(name: str, payload: dict) -> Path:
    """bench/results/<name>.json, written atomically (a killed run leaves the old file); with the
    weights and their reason when this process used them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "finished_at": now(), "machine": machine(), **payload}
    if _decision is not None:  # this script used the backbone weights: record which and why
        payload.setdefault("weights", _decision["weights"])
        payload.setdefault("weights_reason", _decision["reason"])
    return write_json(name, payload)


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def read_result(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(name: str, payload: dict) -> Path:
    """bench/results/<name>.json exactly as given, written atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# --------------------------------------------------------------------------- data & features


def load_fashion_mnist():
    """The real Keras loader, reading the primed cache (no network)."""
    prime_keras_cache()
    quiet_tensorflow()
    from keras.datasets import fashion_mnist

    return fashion_mnist.load_data()


def to_pictures(images):
    from PIL import Image

    # 2-D arrays are grey levels, (h, w, 3) ones RGB: Pillow infers the mode from the shape.
    return [Image.fromarray(np.asarray(a, dtype=np.uint8)) for a in images]


def cache_key(identity: str, name: str) -> Path:
    safe = identity.replace(":", "_").replace("/", "_")
    return CACHE / f"{safe}__{name}.npy"


def extract_cached(spec, name: str, images, batch_size: int = 256, log=print) -> tuple[np.ndarray, dict]:
    """Backbone features of uint8 images through our batched extractor, cached on disk by backbone
    identity (architecture, weights, input size) and set name. Returns (features, info)."""
    path = cache_key(spec.identity, name)
    if path.is_file():
        features = np.load(path)
        if len(features) == len(images):
            return features, {"cached": True, "seconds": None, "images_per_second": None}
    from recommender.backbone import get_backbone

    quiet_tensorflow()
    backbone = get_backbone(spec, batch_size=batch_size)  # built once per process
    pictures = to_pictures(images)
    log(f"  extracting {len(pictures):,} images ({name}) at {spec.input_size}px, batch {batch_size}...")
    started = time.perf_counter()
    features = backbone.extract(pictures)
    seconds = time.perf_counter() - started
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, features)
    os.replace(tmp, path)
    return features, {"cached": False, "seconds": round(seconds, 1),
                      "images_per_second": round(len(pictures) / seconds, 1)}
