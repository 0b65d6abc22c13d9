"""Benchmark 2: feature extraction speed, batched (ours) against the original one-image-at-a-time
``predict`` loop, at input 224 and at the configured smaller size, with the peak memory of each.

Each measurement runs in its own child process (same machine, same run), so that peak memory is
that of one mode alone. On a machine with a GPU the same table is measured on the GPU too (the
children see the GPU; the CPU rows hide it with CUDA_VISIBLE_DEVICES="").

    python bench/extraction_speed.py [--quick | --full]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from recommender.backbone import FEATURE_DIM  # noqa: E402

CONFIGURED_BATCH = 32  # settings.RECOMMENDER["EXTRACT_BATCH_SIZE"] default
# Images timed per mode (after a warm-up), by input size: (batched, loop).
QUICK_COUNTS = {224: (96, 12), 64: (512, 32), 32: (1024, 48)}
FULL_COUNTS = {224: (512, 64), 64: (2048, 128), 32: (4096, 192)}
GPU_FACTOR = 8  # a GPU gets through more images in the same time


def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _images(n: int):
    """Fashion-MNIST test images through the real loader; synthetic 28x28 images where the data
    files are not on the machine (the GPU machine). Speed does not depend on the pixels."""
    try:
        if os.environ.get("BENCH_SYNTHETIC_IMAGES"):  # no data files (and no network) on that machine
            raise FileNotFoundError("BENCH_SYNTHETIC_IMAGES is set")
        (_, _), (x_test, _) = common.load_fashion_mnist()
        source = "fashion-mnist"
    except Exception:
        rng = np.random.default_rng(0)
        x_test = rng.integers(0, 256, size=(max(n, 1), 28, 28), dtype=np.uint8)
        source = "synthetic 28x28"
    reps = -(-n // len(x_test))
    return common.to_pictures(np.concatenate([x_test] * reps)[:n]), source


def _backend_setup():
    """TensorFlow is the project's backend. Where it is not installed (the lent GPU machine has
    JAX and PyTorch but no TensorFlow, and its wheels are too large to carry), Keras 3 runs the same
    model on JAX: skip our TensorFlow-only device configuration."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        import recommender.backbone as bb

        bb.configure_tensorflow = lambda: None
    return backend


def _gpu_devices(backend: str) -> list[str]:
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def _gpu_peak_mib(backend: str):
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20
        if backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return gpus[0].memory_stats()["peak_bytes_in_use"] / 2 ** 20
    except Exception:
        return None
    return None


def _memory_guard(limit_mib: float) -> None:
    """Stop this process (with a JSON line saying why) before it can push the machine into the
    out-of-memory killer, which might hit someone else's process."""
    import threading

    def watch():
        while True:
            rss = _rss_mib()
            if rss > limit_mib:
                print(json.dumps({"aborted": "memory", "rss_mib": round(rss), "limit_mib": round(limit_mib)}),
                      flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def memory_limit_mib() -> float:
    if os.environ.get("BENCH_MEMORY_LIMIT_MIB"):
        return float(os.environ["BENCH_MEMORY_LIMIT_MIB"])
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20
    return min(12 * 1024, 0.4 * total)


def child(size: int, mode: str, batch: int, n: int) -> dict:
    """One measurement in this process: build, warm up, time ``n`` images."""
    _memory_guard(memory_limit_mib())
    common.quiet_tensorflow()
    backend = _backend_setup()
    from recommender.backbone import Backbone, BackboneSpec

    gpus = _gpu_devices(backend)
    pictures, source = _images(n + max(batch, 2))
    warmup, timed = pictures[:max(batch, 2)], pictures[max(batch, 2):]
    started = time.perf_counter()
    backbone = Backbone(BackboneSpec(weights=common.weights(), input_size=size), batch_size=batch)
    build_seconds = time.perf_counter() - started
    rss_after_build = _rss_mib()
    if backend == "tensorflow" and gpus:
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
    run = backbone.extract if mode == "batched" else backbone.extract_one_at_a_time
    run(warmup)  # graph tracing, kernel selection, first allocations
    started = time.perf_counter()
    features = run(timed)
    seconds = time.perf_counter() - started
    assert features.shape == (len(timed), FEATURE_DIM) and np.isfinite(features).all()
    return {"size": size, "mode": mode, "batch": batch if mode == "batched" else 1, "images": len(timed),
            "seconds": round(seconds, 3), "images_per_second": round(len(timed) / seconds, 2),
            "ms_per_image": round(1000 * seconds / len(timed), 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_after_build_mib": round(rss_after_build, 1), "gpu_peak_mib": _gpu_peak_mib(backend),
            "build_seconds": round(build_seconds, 2), "backend": backend, "gpus": gpus, "images_source": source,
            "weights": common.weights()}


def probe() -> dict:
    common.quiet_tensorflow()
    backend = _backend_setup()
    import keras

    return {"backend": backend, "keras": keras.__version__, "gpus": _gpu_devices(backend)}


def _run_child(argv: list[str], env: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=common.ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines and '"aborted"' in lines[-1]:
        return json.loads(lines[-1])
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {argv} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main():
    def extra(parser):
        parser.add_argument("--child", nargs=4, metavar=("SIZE", "MODE", "BATCH", "N"))
        parser.add_argument("--probe", action="store_true")
        parser.add_argument("--sizes", default=None, help="comma-separated input sizes")
        parser.add_argument("--no-cpu", action="store_true", help="GPU rows only (on a GPU machine)")
        parser.add_argument("--name", default="extraction_speed", help="result file name")

    args = common.parse_mode(extra=extra)
    if args.child:
        size, mode, batch, n = args.child
        print(json.dumps(child(int(size), mode, int(batch), int(n))))
        return
    if args.probe:
        print(json.dumps(probe()))
        return

    common.prime_keras_cache()
    quick = args.mode == "quick"
    counts = QUICK_COUNTS if quick else FULL_COUNTS
    configured_small = int(os.environ.get("RECOMMENDER_INPUT_SIZE") or 64)
    if configured_small == 224:
        configured_small = 64
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        ([224, configured_small] if quick else sorted({224, configured_small, 32}, reverse=True))
    common.decide_weights()  # probes once if needed and exports the decision to the children below
    base_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RECOMMENDER_BACKBONE_WEIGHTS": common.weights(),
                "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    cpu_env = {**base_env, "CUDA_VISIBLE_DEVICES": ""}
    started = time.perf_counter()
    info = _run_child(["--probe"], base_env, 300)
    targets = [] if args.no_cpu else [("CPU", cpu_env, 1)]
    if info["gpus"]:
        targets.append(("GPU", base_env, GPU_FACTOR))
    print(f"Keras {info['keras']} on {info['backend']}; GPUs: {info['gpus'] or 'none'}; "
          f"weights {common.weights()}; sizes {sizes}")

    measurements, tables = [], []
    for device, env, factor in targets:
        rows = []
        for size in sizes:
            n_batched, n_loop = counts.get(size, (256, 32))
            plan = [("batched", CONFIGURED_BATCH, n_batched * factor),
                    ("batched", 128, max(n_batched * factor, 256)), ("loop", 1, n_loop * factor)]
            by_mode = {}
            for mode, batch, n in plan:
                m = _run_child(["--child", str(size), mode, str(batch), str(n)], env, 900)
                m.update(device=device, size=size, mode=mode)
                if m.get("aborted"):
                    # Seen once at 224px, batch 128, on the 24 GiB machine: killed for memory.
                    m.update(batch=batch, images_per_second=None, ms_per_image=None, images=0,
                             peak_rss_mib=m["rss_mib"])
                    measurements.append(m)
                    by_mode[(mode, batch)] = m
                    print(f"  {device} {size}px {mode:7} batch {batch:>3}: stopped, resident memory passed "
                          f"{m['limit_mib']:,} MiB")
                    continue
                measurements.append(m)
                by_mode[(mode, batch)] = m
                print(f"  {device} {size}px {mode:7} batch {m['batch']:>3}: {m['images_per_second']:8.1f} img/s, "
                      f"peak RSS {m['peak_rss_mib']:.0f} MiB"
                      + (f", GPU peak {m['gpu_peak_mib']:.0f} MiB" if m.get("gpu_peak_mib") else ""))
            loop = by_mode[("loop", 1)]["images_per_second"]
            for (mode, batch), m in by_mode.items():
                label = ("Original: predict() per image" if mode == "loop" else
                         f"Ours: batched, batch {batch}" + (" (configured)" if batch == CONFIGURED_BATCH else ""))
                if m.get("aborted"):
                    rows.append([f"{size}px", label, 0, f"stopped: over {m['limit_mib']:,} MiB", None, None,
                                 m["rss_mib"]] + ([None] if device == "GPU" else []))
                    continue
                row = [f"{size}px", label, m["images"], m["images_per_second"], m["ms_per_image"],
                       round(m["images_per_second"] / loop, 1) if loop else None, m["peak_rss_mib"]]
                if device == "GPU":
                    row.append(round(m["gpu_peak_mib"], 0) if m.get("gpu_peak_mib") else None)
                rows.append(row)
        columns = ["Input", "Method", "Images timed", "Images/s", "ms/image", "x original", "Peak RSS MiB"]
        if device == "GPU":
            columns.append("GPU peak MiB")
        notes = [f"Weights: {common.weights()} ({common.weights_reason()}); Keras {info['keras']} on the {info['backend']} backend; "
                 "each row is a separate process (peak RSS = that process's maximum resident memory, "
                 "framework and model included), timed after a warm-up batch.",
                 "Batch 32 is RECOMMENDER_EXTRACT_BATCH_SIZE's default; batch 128 shows the headroom. A process "
                 f"whose resident memory passes {memory_limit_mib():,.0f} MiB is stopped (and shown so) rather "
                 "than left to the out-of-memory killer."]
        if device == "GPU":
            notes.append(f"GPU: {common.machine()['gpu'] or ', '.join(info['gpus'])}; preprocessing (PIL resize, "
                         "preprocess_input) runs on the CPU in the same thread.")
        tables.append(common.table(f"Feature extraction speed on the {device}", columns, rows, notes))
    for t in tables:
        common.print_table(t)

    def ratio(device, size, batch=CONFIGURED_BATCH):
        pick = {(m["mode"], m["batch"]): m for m in measurements if m["device"] == device and m["size"] == size}
        if ("loop", 1) in pick and ("batched", batch) in pick and pick[("batched", batch)]["images_per_second"]:
            return round(pick[("batched", batch)]["images_per_second"] / pick[("loop", 1)]["images_per_second"], 1)
        return None

    headline = {f"{d}_{s}px_speedup": ratio(d, s) for d, _, _ in targets for s in sizes}
    shrunk = ["images timed per mode: " + ", ".join(
        f"{s}px {counts.get(s, (256, 32))[0]} batched / {counts.get(s, (256, 32))[1]} in the loop" for s in sizes)]
    if quick:
        shrunk.append("input size 32 is measured only by --full (quality.py records its batched rate)")
    backend_env = f"KERAS_BACKEND={os.environ['KERAS_BACKEND']} " if os.environ.get("KERAS_BACKEND") else ""
    common.write_result(args.name, {
        "command": f"{backend_env}python bench/extraction_speed.py " + " ".join(sys.argv[1:]), "mode": args.mode, "weights": common.weights(), "backend": info["backend"], "keras": info["keras"],
        "gpus": info["gpus"], "sizes": sizes, "measurements": measurements, "headline": headline,
        "shrunk": shrunk if quick else [], "tables": tables, "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
