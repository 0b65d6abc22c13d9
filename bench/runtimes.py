"""Inference runtimes for the ResNet50 backbone on the CPU, side by side (issue 14, target 4).

The project's own Keras model (recommender.backbone.build_resnet50: ResNet50 without its top,
global average pooling, 224 px, ``resnet50.preprocess_input``, the configured weights; here the
seeded random weights where ImageNet cannot be loaded: speed does not depend on weight values)
is the source of truth. A ``prepare`` child builds it once, counts its FLOPs, converts it
(OpenVINO IR from the in-memory Keras model, ONNX through Keras 3's ``model.export``) and writes
the preprocessed Fashion-MNIST inputs; then every runtime runs in a child process of its own:

* Keras on TensorFlow fp32 as the product runs it (``Backbone.extract`` on PIL images, and the raw
  ``predict_on_batch`` on preprocessed arrays: the reference features), with oneDNN off, with
  explicit inter/intra threads, with XLA (``jit_compile``); Keras ``mixed_bfloat16`` and
  TensorFlow's oneDNN auto-mixed-precision bf16;
* OpenVINO fp32 and bf16 (``INFERENCE_PRECISION_HINT``), LATENCY and THROUGHPUT hints, and int8
  (NNCF post-training quantization of the fp32 IR);
* ONNX Runtime fp32.

Each reports images/s at batch 32 with 2 threads (the worst of 3 quiet timed repeats after a
warm-up), the load while it ran (os.getloadavg() and the CPU time other processes took, from
/proc/stat), and its features' agreement with the fp32 Keras features on the same inputs. Runtimes
with new numerics (bf16, int8) extract the whole retrieval set (2,000 Fashion-MNIST test images
by default), so that P@6 (Euclidean k-NN on standardised features, leave-one-out, same label) can
be compared with fp32 Keras's. A numpy sgemm gives the machine's fp32 limit.

    python bench/runtimes.py            # ~10 min on 2 cores
    python bench/runtimes.py --quick    # fewer images (~5 min)
    python bench/runtimes.py --only keras_predict,ov_bf16_tput   # a subset (keras_predict is the reference)

Needs ``openvino``, ``onnxruntime``, ``tf2onnx``/``onnx`` and ``nncf`` (see bench/results/runtimes.json
for the versions); a runtime whose package is missing is reported as failed, the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402

SIZE = 224
BATCH = 32
THREADS = 2
QUIET_FOREIGN_CORES = 0.25  # other processes' CPU use (in cores) above which a repeat is "loaded"
MAX_EXTRA_REPEATS = 3  # timed repeats beyond the first 3, while fewer than 3 were quiet
QUIET_WAIT_S = 30
RETRIES_WHEN_LOADED = 1  # a child with fewer than 3 quiet repeats is run once more (--retries)  # before each child, wait at most this long for the machine to be quiet
SLOWER_THAN_REFERENCE = 0.8  # a runtime below this share of fp32 Keras's rate is not extracted in full
MODES = {
    # retrieval-set images (P@6), timed images per repeat (a multiple of 2 batches: the THROUGHPUT
    # hint runs 2 streams of a batch each), calibration images (int8)
    "quick": {"p6_images": 512, "timed": 64, "calib": 96},
    "default": {"p6_images": 2000, "timed": 128, "calib": 300},
}

# name -> (family, precision, what, needs the whole retrieval set)
VARIANTS = {
    "keras_predict": ("tensorflow", "fp32", "Keras predict_on_batch, TF defaults (today's network; the reference)", True),
    "keras_extract": ("tensorflow", "fp32", "Backbone.extract on PIL images (today's product path, with resize+preprocess)", False),
    "tf_onednn_off": ("tensorflow", "fp32", "Keras predict_on_batch, TF_ENABLE_ONEDNN_OPTS=0", False),
    "tf_threads_1x2": ("tensorflow", "fp32", "Keras predict_on_batch, inter_op=1, intra_op=2 (oneDNN on)", False),
    "tf_xla": ("tensorflow", "fp32", "Keras predict_on_batch, model.compile(jit_compile=True) (XLA)", False),
    "keras_mixed_bf16": ("tensorflow", "bf16", "Keras mixed_bfloat16 dtype policy, predict_on_batch", True),
    "tf_amp_onednn_bf16": ("tensorflow", "bf16", "TF grappler auto_mixed_precision_onednn_bfloat16", True),
    "ov_fp32_latency": ("openvino", "fp32", "OpenVINO CPU, f32, LATENCY hint, sync batches", False),
    "ov_fp32_tput": ("openvino", "fp32", "OpenVINO CPU, f32, THROUGHPUT hint, AsyncInferQueue", False),
    "ov_bf16_latency": ("openvino", "bf16", "OpenVINO CPU, bf16, LATENCY hint, sync batches", True),
    "ov_bf16_tput": ("openvino", "bf16", "OpenVINO CPU, bf16, THROUGHPUT hint, AsyncInferQueue", False),
    "ov_int8_latency": ("openvino", "int8", "OpenVINO CPU, NNCF int8 PTQ (rest f32), LATENCY hint", True),
    "ov_int8_bf16_latency": ("openvino", "int8+bf16", "OpenVINO CPU, NNCF int8 PTQ (rest bf16), LATENCY hint", True),
    "ort_fp32": ("onnxruntime", "fp32", "ONNX Runtime CPU EP, ORT_ENABLE_ALL, intra_op=2", False),
}
ORDER = list(VARIANTS)


# --------------------------------------------------------------------------- load


def _cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (steal included: lost to the hypervisor)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class LoadProbe:
    """Other processes' CPU use (in cores) while a block runs: machine busy time less our own."""

    def __enter__(self):
        self.loadavg = [round(x, 2) for x in os.getloadavg()]
        t = os.times()
        self.own0, self.busy0, self.wall0 = t.user + t.system, _cpu_busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        t = os.times()
        wall = time.perf_counter() - self.wall0
        own = t.user + t.system - self.own0
        self.seconds = wall
        self.own_cores = own / wall if wall else 0.0
        self.foreign_cores = max(0.0, (_cpu_busy_seconds() - self.busy0 - own) / wall) if wall else 0.0


def foreign_load(seconds: float = 2.0) -> float:
    with LoadProbe() as probe:
        time.sleep(seconds)
    return probe.foreign_cores


def wait_for_quiet(max_wait: float = QUIET_WAIT_S) -> dict:
    """Before a child: wait (at most max_wait) until other processes use under the threshold."""
    started = time.perf_counter()
    while True:
        foreign = foreign_load(2.0)
        if foreign < QUIET_FOREIGN_CORES or time.perf_counter() - started > max_wait:
            return {"foreign_cores": round(foreign, 2), "waited_s": round(time.perf_counter() - started, 1),
                    "loadavg": [round(x, 2) for x in os.getloadavg()]}


# --------------------------------------------------------------------------- model facts


def conv_macs(model) -> int:
    """Multiply-accumulates per image of the model's convolutions and dense layers (the rest:
    batch norm, ReLU, additions, pooling, is < 1% of ResNet50's arithmetic)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += int(h) * int(w) * int(kh) * int(kw) * int(cin) * int(cout) // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def sgemm_gflops(n: int = 4096, repeats: int = 5) -> dict:
    """Sustained fp32 matmul rate of numpy's BLAS (this process: run with 2 BLAS threads)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: threads, pages
    rates = []
    for _ in range(repeats):
        with LoadProbe() as probe:
            a @ b
        rates.append({"gflops": round(2 * n ** 3 / probe.seconds / 1e9, 1), "seconds": round(probe.seconds, 3),
                      "foreign_cores": round(probe.foreign_cores, 2), "loadavg": probe.loadavg})
    quiet = [r for r in rates if r["foreign_cores"] < QUIET_FOREIGN_CORES]
    any_quiet = bool(quiet)
    quiet = quiet or rates
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        blas = None
    return {"n": n, "quiet": any_quiet, "best_gflops": max(r["gflops"] for r in quiet),
            "median_gflops": float(np.median([r["gflops"] for r in quiet])), "repeats": rates, "blas": blas}


# --------------------------------------------------------------------------- children


def _rss_peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _keras_model(spec_weights: str, *, threads=None, dtype_policy=None, amp_bf16=False, jit=False,
                 onednn_note=None):
    common.quiet_tensorflow()
    import tensorflow as tf

    if threads:
        tf.config.threading.set_inter_op_parallelism_threads(threads[0])
        tf.config.threading.set_intra_op_parallelism_threads(threads[1])
    if amp_bf16:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    import keras

    if dtype_policy:
        keras.config.set_dtype_policy(dtype_policy)
    from recommender.backbone import BackboneSpec, build_resnet50

    model = build_resnet50(BackboneSpec(weights=spec_weights, input_size=SIZE))
    if jit:
        model.compile(jit_compile=True)
    return model


def prepare(work: Path, n_p6: int, n_calib: int, spec_weights: str) -> dict:
    """Inputs, FLOPs and converted models, written under ``work`` (one child, before the others)."""
    common.quiet_tensorflow()
    import keras
    from keras.applications.resnet50 import preprocess_input

    from recommender.backbone import to_rgb_array

    info = {}
    (x_train, _), (x_test, y_test) = common.load_fashion_mnist()
    started = time.perf_counter()
    pictures = common.to_pictures(x_test[:n_p6])
    inputs = np.lib.format.open_memmap(work / "inputs.npy", mode="w+", dtype=np.float32,
                                       shape=(n_p6, SIZE, SIZE, 3))
    for start in range(0, n_p6, 256):
        chunk = pictures[start:start + 256]
        inputs[start:start + len(chunk)] = preprocess_input(np.stack([to_rgb_array(p, SIZE) for p in chunk]))
    inputs.flush()
    del inputs
    np.save(work / "labels.npy", y_test[:n_p6])
    calib = preprocess_input(np.stack([to_rgb_array(p, SIZE) for p in common.to_pictures(x_train[:n_calib])]))
    np.save(work / "calib.npy", calib.astype(np.float32))
    info["preprocess_seconds"] = round(time.perf_counter() - started, 1)

    model = _keras_model(spec_weights)
    macs = conv_macs(model)
    info.update(macs_per_image=macs, gflop_per_image=round(2 * macs / 1e9, 3), params=int(model.count_params()),
                keras=keras.__version__)
    import tensorflow as tf

    info["tensorflow"] = tf.__version__
    conversions = {}
    try:
        import openvino as ov

        started = time.perf_counter()
        ov_model = ov.convert_model(model)  # straight from the in-memory Keras model
        ov.save_model(ov_model, str(work / "model.xml"), compress_to_fp16=False)  # keep fp32 weights
        conversions["openvino"] = {"ok": True, "seconds": round(time.perf_counter() - started, 1),
                                   "from": "openvino.convert_model(keras.Model)", "version": ov.__version__}
    except Exception as exc:  # noqa: BLE001 - reported, the other runtimes still run
        conversions["openvino"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600]}
    if conversions["openvino"]["ok"]:
        try:  # int8: NNCF post-training quantization of the fp32 IR, on training images
            import nncf

            started = time.perf_counter()
            quantized = nncf.quantize(ov_model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                                      subset_size=len(calib), preset=nncf.QuantizationPreset.PERFORMANCE)
            ov.save_model(quantized, str(work / "model_int8.xml"), compress_to_fp16=False)
            conversions["openvino_int8"] = {
                "ok": True, "seconds": round(time.perf_counter() - started, 1), "nncf": nncf.__version__,
                "from": "nncf.quantize(fp32 IR, preset=PERFORMANCE)",
                "calibration": f"{len(calib)} Fashion-MNIST training images (not in the retrieval set)"}
        except Exception as exc:  # noqa: BLE001
            conversions["openvino_int8"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600]}
    try:
        started = time.perf_counter()
        model.export(str(work / "model.onnx"), format="onnx", verbose=False)
        import onnx

        conversions["onnx"] = {"ok": True, "seconds": round(time.perf_counter() - started, 1),
                               "from": 'keras.Model.export(format="onnx")', "onnx": onnx.__version__,
                               "bytes": (work / "model.onnx").stat().st_size}
    except Exception as exc:  # noqa: BLE001
        conversions["onnx"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600]}
    info["conversions"] = conversions
    return info


def _batches(x: np.ndarray, batch: int = BATCH):
    for start in range(0, len(x), batch):
        yield start, x[start:start + batch]


def _keras_infer(model):
    out_dim = model.output.shape[-1]

    def infer(x):
        out = np.empty((len(x), out_dim), np.float32)
        for start, chunk in _batches(x):
            out[start:start + len(chunk)] = np.asarray(model.predict_on_batch(np.ascontiguousarray(chunk)),
                                                       dtype=np.float32)
        return out

    # Same warm-up as Backbone._warm (batch sizes 1 and 2: a graph with the batch size left open).
    for n in (1, 2):
        model.predict_on_batch(np.zeros((n, SIZE, SIZE, 3), np.float32))
    return infer


def _openvino_infer(work: Path, precision: str, hint: str, int8: bool):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(work / ("model_int8.xml" if int8 else "model.xml")))
    model.reshape([BATCH, SIZE, SIZE, 3])  # static batch: a short batch is padded
    config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": THREADS,
              "INFERENCE_PRECISION_HINT": "bf16" if "bf16" in precision else "f32"}
    started = time.perf_counter()
    compiled = core.compile_model(model, "CPU", config)
    compile_seconds = time.perf_counter() - started
    props = {"compile_seconds": round(compile_seconds, 2), "openvino": ov.__version__, "config": config}
    for key in ("INFERENCE_PRECISION_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                "OPTIMAL_NUMBER_OF_INFER_REQUESTS"):
        try:
            props[key] = str(compiled.get_property(key))
        except Exception:  # noqa: BLE001
            pass
    pad = np.zeros((BATCH, SIZE, SIZE, 3), np.float32)

    def padded(chunk):
        if len(chunk) == BATCH:
            return np.ascontiguousarray(chunk)
        pad[:len(chunk)] = chunk
        pad[len(chunk):] = 0
        return pad

    if hint == "LATENCY":
        request = compiled.create_infer_request()

        def infer(x):
            out = np.empty((len(x), 2048), np.float32)
            for start, chunk in _batches(x):
                request.infer({0: padded(chunk)})
                out[start:start + len(chunk)] = request.get_output_tensor(0).data[:len(chunk)]
            return out
    else:
        nreq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, nreq)
        props["infer_requests"] = nreq
        state = {}

        def done(request, userdata):
            start, n = userdata
            state["out"][start:start + n] = request.get_output_tensor(0).data[:n]

        queue.set_callback(done)

        def infer(x):
            state["out"] = np.empty((len(x), 2048), np.float32)
            for start, chunk in _batches(x):
                # each request gets its own copy (the pad buffer is shared)
                queue.start_async({0: np.array(padded(chunk))}, (start, len(chunk)))
            queue.wait_all()
            return state["out"]

    infer(np.zeros((BATCH, SIZE, SIZE, 3), np.float32))  # first inference: allocations, kernels
    return infer, props


def _ort_infer(work: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    started = time.perf_counter()
    session = ort.InferenceSession(str(work / "model.onnx"), options, providers=["CPUExecutionProvider"])
    props = {"session_seconds": round(time.perf_counter() - started, 2), "onnxruntime": ort.__version__,
             "providers": session.get_providers()}
    name = session.get_inputs()[0].name

    def infer(x):
        out = np.empty((len(x), 2048), np.float32)
        for start, chunk in _batches(x):
            out[start:start + len(chunk)] = session.run(None, {name: np.ascontiguousarray(chunk)})[0]
        return out

    return infer, props


def child(variant: str, work: Path, n_timed: int, spec_weights: str) -> dict:
    family, precision, _what, whole_set = VARIANTS[variant]
    inputs = np.load(work / "inputs.npy", mmap_mode="r")
    started = time.perf_counter()
    props: dict = {}
    if variant == "keras_extract":
        from recommender.backbone import Backbone, BackboneSpec

        common.quiet_tensorflow()
        (_, _), (x_test, _) = common.load_fashion_mnist()
        backbone = Backbone(BackboneSpec(weights=spec_weights, input_size=SIZE), batch_size=BATCH)
        pictures = common.to_pictures(x_test[:len(inputs)])
        backbone.extract(pictures[:BATCH])  # warm-up batch, as extraction_speed.py
        source = pictures

        def infer(x):
            return backbone.extract(x)
    elif family == "tensorflow":
        kwargs = {
            "keras_predict": {}, "tf_onednn_off": {}, "tf_threads_1x2": {"threads": (1, THREADS)},
            "tf_xla": {"jit": True}, "keras_mixed_bf16": {"dtype_policy": "mixed_bfloat16"},
            "tf_amp_onednn_bf16": {"amp_bf16": True},
        }[variant]
        infer = _keras_infer(_keras_model(spec_weights, **kwargs))
        import tensorflow as tf

        props["tensorflow"] = tf.__version__
        props["TF_ENABLE_ONEDNN_OPTS"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset: on)")
        source = inputs
    elif family == "openvino":
        hint = "THROUGHPUT" if variant.endswith("_tput") else "LATENCY"
        infer, props = _openvino_infer(work, precision, hint, precision.startswith("int8"))
        source = inputs
    else:
        infer, props = _ort_infer(work)
        source = inputs
    build_seconds = time.perf_counter() - started
    # Warm-up: one full batch (graph tracing, XLA compilation, kernel selection).
    with LoadProbe() as warm:
        infer(source[:BATCH] if variant == "keras_extract" else np.array(source[:BATCH]))
    n_timed = min(n_timed, len(inputs) // 3)
    slices = [(i * n_timed, (i + 1) * n_timed) for i in range(3)]
    features = np.empty((len(inputs), 2048), np.float32)
    repeats = []

    def timed(a, b, keep):
        x = source[a:b] if variant == "keras_extract" else np.array(source[a:b])  # in RAM before the clock
        with LoadProbe() as probe:
            f = infer(x)
        if keep:
            features[a:b] = f
        return {"images": b - a, "seconds": round(probe.seconds, 3),
                "images_per_second": round((b - a) / probe.seconds, 2),
                "foreign_cores": round(probe.foreign_cores, 2), "own_cores": round(probe.own_cores, 2),
                "loadavg": probe.loadavg, "quiet": probe.foreign_cores < QUIET_FOREIGN_CORES}

    for a, b in slices:
        repeats.append(timed(a, b, keep=True))
    extra = 0
    while sum(r["quiet"] for r in repeats) < 3 and extra < MAX_EXTRA_REPEATS:
        a, b = slices[extra % 3]
        repeats.append(timed(a, b, keep=False))  # a loaded repeat: time the same images again
        extra += 1
    quiet = [r for r in repeats if r["quiet"]]
    chosen = quiet if len(quiet) >= 3 else repeats  # fewer than 3 quiet: the worst of all (flagged)
    worst = min(chosen, key=lambda r: r["images_per_second"])
    rows, bulk, skipped = 3 * n_timed, None, None
    if whole_set:
        floor = float(os.environ.get("BENCH_RUNTIMES_FLOOR") or 0)
        best = max(r["images_per_second"] for r in repeats)
        if best < floor:
            skipped = (f"not extracted in full: its best repeat ({best:.1f} images/s) is under "
                       f"{SLOWER_THAN_REFERENCE:.0%} of fp32 Keras's rate")
        else:  # the rest of the retrieval set (its P@6), timed as one more figure
            bulk = timed(rows, len(inputs), keep=True)
            rows = len(inputs)
    np.save(work / f"features_{variant}.npy", features[:rows])
    return {"variant": variant, "family": family, "precision": precision, "images_per_second": worst["images_per_second"],
            "best_images_per_second": max(r["images_per_second"] for r in chosen),
            "quiet_repeats": len(quiet), "all_quiet": len(quiet) >= 3, "worst_repeat": worst, "repeats": repeats,
            "bulk": bulk,
            "features_rows": rows, "full_set_skipped": skipped,
            "build_seconds": round(build_seconds, 1), "warmup_seconds": round(warm.seconds, 2),
            "peak_rss_mib": _rss_peak_mib(), **props}


# --------------------------------------------------------------------------- parent


def _run_child(argv: list[str], env: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=common.ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("I0000", "W0000", "WARNING"))]
        return {"error": f"exit {proc.returncode}: " + "\n".join(tail[-12:])[-2000:]}
    return json.loads(lines[-1])


def measure_sgemm(env: dict, attempts: int = 3) -> dict:
    """numpy sgemm in a child; again (after waiting for quiet) while its repeats were all loaded."""
    for _ in range(attempts):
        wait_for_quiet()
        sgemm = _run_child(["--sgemm"], env, 300)
        if sgemm.get("quiet"):
            break
    return sgemm


def agreement(reference: np.ndarray, features: np.ndarray) -> dict:
    ref = reference[:len(features)]
    dots = (ref * features).sum(axis=1)
    cos = dots / (np.linalg.norm(ref, axis=1) * np.linalg.norm(features, axis=1) + 1e-30)
    diff = np.abs(ref - features)
    return {"rows": int(len(features)), "max_abs_diff": float(diff.max()),
            "max_abs_diff_relative": float(diff.max() / np.abs(ref).max()),
            "mean_abs_diff": float(diff.mean()), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def retrieval(features: np.ndarray, labels: np.ndarray) -> tuple[dict, np.ndarray]:
    """Leave-one-out same-label k-NN on the retrieval set, features standardised on the set itself."""
    from bench.quality import standardised
    from recommender.evaluation import nearest, retrieval_metrics

    (z,) = standardised(features, features)
    metrics = retrieval_metrics(z, labels, z, labels, k=6, exclude_self=True)
    return metrics, nearest(z, z, 6, exclude_self=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (~5 min)")
    parser.add_argument("--full", action="store_true", help="the default run (bench/run_all.py --full)")
    parser.add_argument("--only", default=None, help="comma-separated variants (keras_predict is always run)")
    parser.add_argument("--name", default="runtimes", help="result file name under bench/results")
    parser.add_argument("--retries", type=int, default=RETRIES_WHEN_LOADED,
                        help="runs again of a child with fewer than 3 quiet repeats (0 on a busy machine)")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "WORKDIR", "N_TIMED"))
    parser.add_argument("--prepare", nargs=3, metavar=("WORKDIR", "N_P6", "N_CALIB"))
    parser.add_argument("--sgemm", action="store_true")
    args = parser.parse_args()
    if args.child:
        variant, work, n_timed = args.child
        print(json.dumps(child(variant, Path(work), int(n_timed), common.weights())))
        return
    if args.prepare:
        work, n_p6, n_calib = args.prepare
        print(json.dumps(prepare(Path(work), int(n_p6), int(n_calib), common.weights())))
        return
    if args.sgemm:
        print(json.dumps(sgemm_gflops()))
        return

    mode = "quick" if args.quick else "default"
    sizes = MODES[mode]
    variants = ORDER if not args.only else \
        ["keras_predict"] + [v for v in args.only.split(",") if v != "keras_predict"]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(ORDER)}")
    common.prime_keras_cache()
    common.decide_weights()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    # Two threads everywhere: TF (intra/inter default to the cores), OpenVINO and ORT (set), BLAS.
    base_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                "RECOMMENDER_BACKBONE_WEIGHTS": common.weights(), "OPENBLAS_NUM_THREADS": str(THREADS),
                "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    try:
        print(f"runtimes ({mode}): {SIZE}px, batch {BATCH}, {THREADS} threads; weights {common.weights()}; "
              f"retrieval set {sizes['p6_images']} images; work dir {work}", flush=True)
        sgemm = measure_sgemm(base_env)
        print(f"  numpy sgemm (2 threads): {sgemm.get('best_gflops')} GFLOP/s", flush=True)
        info = _run_child(["--prepare", str(work), str(sizes["p6_images"]), str(sizes["calib"])], base_env, 900)
        if "error" in info:
            raise SystemExit(f"prepare failed: {info['error']}")
        gflop = info["gflop_per_image"]
        limit = sgemm["best_gflops"] / gflop if sgemm.get("best_gflops") else None
        print(f"  model: {gflop} GFLOP/image -> fp32 limit {limit:.1f} images/s; conversions: "
              + ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in info["conversions"].items()), flush=True)
        labels = np.load(work / "labels.npy")
        results, reference, ref_neighbours, reference_rate = {}, None, None, None
        for variant in variants:
            family, precision, what, _ = VARIANTS[variant]
            if family == "openvino" and not info["conversions"]["openvino"]["ok"]:
                results[variant] = {"variant": variant, "error": "OpenVINO conversion failed"}
                continue
            if family == "onnxruntime" and not info["conversions"]["onnx"]["ok"]:
                results[variant] = {"variant": variant, "error": "ONNX export failed"}
                continue
            if precision.startswith("int8") and not info["conversions"].get("openvino_int8", {}).get("ok"):
                results[variant] = {"variant": variant, "error": "NNCF int8 quantization failed"}
                continue
            env = dict(base_env)
            if reference_rate:
                env["BENCH_RUNTIMES_FLOOR"] = str(SLOWER_THAN_REFERENCE * reference_rate)
            if variant == "tf_onednn_off":
                env["TF_ENABLE_ONEDNN_OPTS"] = "0"
            attempts = []
            for _attempt in range(1 + args.retries):  # loaded (fewer than 3 quiet repeats): again
                before = wait_for_quiet()
                r = _run_child(["--child", variant, str(work), str(sizes["timed"])], env, 900)
                r.update(variant=variant, family=family, precision=precision, what=what, before=before)
                attempts.append(r)
                if "error" in r or r["all_quiet"] or _attempt == args.retries:
                    break
                print(f"  {variant}: only {r['quiet_repeats']} quiet repeats (others used up to "
                      f"{max(x['foreign_cores'] for x in r['repeats'])} cores); running it again", flush=True)
            if "error" not in r:  # the attempt with the most quiet repeats (the last among equals)
                r = max(attempts, key=lambda x: (x.get("quiet_repeats", -1), attempts.index(x)))
                r["attempts"] = [{k: x.get(k) for k in ("images_per_second", "quiet_repeats", "all_quiet")}
                                 for x in attempts]
            if "error" not in r:
                features = np.load(work / f"features_{variant}.npy")
                if variant == "keras_predict":
                    reference, reference_rate = features, r["images_per_second"]
                    r["retrieval"], ref_neighbours = retrieval(reference, labels)
                elif reference is not None:
                    r["agreement"] = agreement(reference, features)
                    if len(features) == len(reference):
                        r["retrieval"], neighbours = retrieval(features, labels)
                        r["agreement"]["top6_overlap_with_fp32"] = float(np.mean(
                            [len(set(a) & set(b)) / 6 for a, b in zip(neighbours, ref_neighbours)]))
                r["percent_of_fp32_limit"] = round(100 * r["images_per_second"] / limit, 1) if limit else None
                p6 = r.get("retrieval", {}).get("precision_at_6")
                print(f"  {variant:22} {precision:9} {r['images_per_second']:7.2f} img/s "
                      f"({r['percent_of_fp32_limit']}% of fp32 limit)"
                      + (f"  P@6 {p6:.4f}" if p6 is not None else "")
                      + (f"  max|d| {r['agreement']['max_abs_diff']:.2g} cos {r['agreement']['mean_cosine']:.6f}"
                         if "agreement" in r else "")
                      + f"  quiet {r['quiet_repeats']}/{len(r['repeats'])}; worst repeat: others "
                        f"{r['worst_repeat']['foreign_cores']} cores, loadavg {r['worst_repeat']['loadavg'][0]}",
                      flush=True)
            else:
                print(f"  {variant:22} FAILED: {r['error'][:300]}", flush=True)
            results[variant] = r
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # The limit again at the end (the machine is shared): the best quiet figure of both.
    again = measure_sgemm(base_env, attempts=1)
    if again.get("quiet") and (not sgemm.get("quiet") or again["best_gflops"] > sgemm["best_gflops"]):
        again["start_of_run"] = {k: sgemm.get(k) for k in ("best_gflops", "quiet")}
        sgemm = again
        limit = sgemm["best_gflops"] / gflop
        for r in results.values():
            if "images_per_second" in r:
                r["percent_of_fp32_limit"] = round(100 * r["images_per_second"] / limit, 1)
    ref_p6 = results.get("keras_predict", {}).get("retrieval", {}).get("precision_at_6")
    rows = []
    for variant in variants:
        r = results[variant]
        if "error" in r:
            rows.append([variant, VARIANTS[variant][1], None, None, None, None, None, None, f"failed: {r['error'][:80]}"])
            continue
        p6 = r.get("retrieval", {}).get("precision_at_6")
        ag = r.get("agreement", {})
        rows.append([variant, r["precision"], r["images_per_second"], r["percent_of_fp32_limit"], p6,
                     None if p6 is None or ref_p6 is None else round(p6 - ref_p6, 4),
                     ag.get("max_abs_diff"), ag.get("mean_cosine"),
                     f"{r['quiet_repeats']}/{len(r['repeats'])} quiet{'' if r['all_quiet'] else ' (LOADED)'}; "
                     f"others {r['worst_repeat']['foreign_cores']} cores, loadavg {r['worst_repeat']['loadavg'][0]}"])
        r["p6_minus_fp32"] = rows[-1][5]
    tables = [common.table(
        f"ResNet50 backbone at {SIZE}px, batch {BATCH}, {THREADS} threads: runtimes side by side",
        ["Variant", "Precision", "Images/s", "% fp32 limit", "P@6", "dP@6", "max |d|", "mean cos", "Load"], rows,
        [f"fp32 limit: numpy sgemm {sgemm.get('best_gflops')} GFLOP/s / {gflop} GFLOP per image "
         f"= {limit:.1f} images/s; images/s is the worst of the quiet timed repeats (after a warm-up batch); "
         f"quiet: other processes used under {QUIET_FOREIGN_CORES} cores (/proc/stat less our own CPU time); with "
         "fewer than 3 quiet repeats, the worst of all (LOADED).",
         f"P@6: leave-one-out Euclidean 6-NN on standardised features of {sizes['p6_images']} Fashion-MNIST "
         "test images, same label; computed for the runtimes with their own numerics or the whole set "
         "extracted; agreement (max |d|, mean cosine) against keras_predict's fp32 features on the same rows.",
         f"Weights: {common.weights()} ({common.weights_reason()})."])]
    for t in tables:
        common.print_table(t)
    versions = {"tensorflow": info.get("tensorflow"), "keras": info.get("keras"), "numpy": np.__version__}
    for package in ("openvino", "onnxruntime", "onnx", "tf2onnx", "nncf"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # noqa: BLE001
            versions[package] = None
    common.write_result(args.name, {
        "command": "python bench/runtimes.py " + " ".join(sys.argv[1:]), "mode": mode, "retries": args.retries, "size": SIZE, "batch": BATCH,
        "threads": THREADS, "counts": sizes, "quiet_threshold_foreign_cores": QUIET_FOREIGN_CORES,
        "versions": versions, "sgemm": sgemm, "model": info, "fp32_limit_images_per_second": round(limit, 2),
        "reference_precision_at_6": ref_p6, "variants": results, "tables": tables,
        "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
