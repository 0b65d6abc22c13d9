"""ResNet50 feature extraction (pure ML: no Django). TensorFlow is imported lazily, on first use.

``include_top=False`` with global average pooling gives 2048 floats per image. Images are
converted to RGB, resized to the configured input size and passed through
``keras.applications.resnet50.preprocess_input``, in batches (the original notebook sent them
one at a time: see bench/extraction_speed.py for the measured difference).

The Keras model is the source of truth (built, trained and saved as Keras). On a CPU, inference
runs on an OpenVINO conversion of it (``runtime``: ``auto``, ``openvino`` or ``keras``): at
224 px, batch 32, on 2 cores, 29.7 images/s against Keras/TensorFlow's 20.8, features equal to
Keras' within 1e-5 (bench/runtimes.py, docs/benchmarks.md). The conversion is checked against
Keras on a probe batch at load; a mismatch or any error falls back to Keras, with a warning.

:func:`imagenet_weights_probe` tells ``manage.py rundemo`` and the benchmarks, without loading
TensorFlow in their own process, whether the ImageNet weights can be had on this machine.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

FEATURE_DIM = 2048
ARCHITECTURE = "resnet50"
MIN_INPUT_SIZE = 32  # ResNet50 without its top needs at least 32x32 inputs
TRAINED_WEIGHTS_FILE = "backbone.weights.h5"  # a trained backbone's file in its version's folder


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and modification time too: a replaced file is hashed again. ~0.1 s per 95 MB.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class BackboneWeightsError(RuntimeError):
    """The configured backbone weights cannot be loaded."""


@dataclass(frozen=True)
class BackboneSpec:
    weights: str = "imagenet"  # "imagenet", "random" or a path to a weights file
    input_size: int = 224
    seed: int = 1234

    def __post_init__(self):
        if self.input_size < MIN_INPUT_SIZE:
            raise ValueError(f"input size must be at least {MIN_INPUT_SIZE} for ResNet50")

    @property
    def weights_tag(self) -> str:
        if self.weights == "imagenet":
            return "imagenet"
        if self.weights == "random":
            return f"random-seed{self.seed}"
        path = Path(self.weights)
        if not path.is_file():
            raise BackboneWeightsError(
                f"RECOMMENDER_BACKBONE_WEIGHTS={self.weights!r} is neither 'imagenet', 'random' "
                "nor an existing weights file.")
        stat = path.stat()
        digest = _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if path.name == TRAINED_WEIGHTS_FILE and re.fullmatch(r"v\d+", path.parent.name):
            return f"ft-{path.parent.name}-{digest}"  # trained by model version v<N> (recommender.finetune)
        return f"file-{digest}"

    @property
    def identity(self) -> str:
        """Features are only comparable between identical identities (architecture, weights, size)."""
        return f"{ARCHITECTURE}:{self.weights_tag}:{self.input_size}"

    @property
    def is_random(self) -> bool:
        return self.weights == "random"


# The child process of imagenet_weights_probe: Keras downloads the weights (~95 MB) once into
# $KERAS_HOME/models, then reads them from there.
IMAGENET_PROBE = ("import keras; keras.applications.ResNet50(weights='imagenet', include_top=False, "
                  "pooling='avg')")
# Offline the probe fails in seconds ("Name or service not known"), but a firewall that drops
# packets leaves it hanging: past this it counts as "cannot be loaded", and callers fall back to
# random weights instead of waiting for ever.
IMAGENET_PROBE_TIMEOUT_S = 120


def imagenet_weights_probe(*, env: Mapping[str, str] | None = None, timeout: float = IMAGENET_PROBE_TIMEOUT_S,
                           code: str = IMAGENET_PROBE) -> tuple[bool, str]:
    """Can ResNet50's ImageNet weights be loaded here? Tries in a child process (this one keeps
    TensorFlow unloaded), with ``env`` (default: this process's environment, so its KERAS_HOME).

    Returns ``(True, "")``, or ``(False, reason)``: the last line of the child's error output (URLs
    shortened to their host, at most 160 characters), or why the child was stopped. ``code``
    replaces the child's program (tests)."""
    try:
        probe = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=timeout,
                               env={**(os.environ if env is None else env), "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        return False, f"no answer within {timeout:g} s (network blocked or too slow?)"
    except OSError as exc:
        return False, f"the probe could not be started: {exc}"
    if probe.returncode == 0:
        return True, ""
    last = (probe.stderr.decode(errors="replace").strip().splitlines() or ["unknown error"])[-1].strip()
    # The cause comes last ("... storage.googleapis.com: None -- [Errno -2] Name or service not known").
    last = re.sub(r"https?://([^/\s]+)[^\s:]*", r"\1", last)
    return False, last if len(last) <= 160 else f"{last[:60]} ... {last[-95:]}"


def configure_tensorflow():
    """Import the Keras backend, let GPUs grow memory on demand, and report the devices in use.

    Keras 3 picks its backend from ``KERAS_BACKEND`` (TensorFlow by default); with JAX or
    PyTorch the same code runs, and each framework uses a GPU by itself when one is present."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        logger.info("Keras %s on the %s backend", keras.__version__, backend)
        return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised
            pass
    logger.info("TensorFlow %s, devices: %s", tf.__version__, [d.name for d in gpus] or ["CPU"])
    return tf


def accelerator_present() -> bool:
    """Whether the Keras backend in use sees a GPU (or another accelerator)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform != "cpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def build_resnet50(spec: BackboneSpec):
    configure_tensorflow()
    import keras

    shape = (spec.input_size, spec.input_size, 3)
    if spec.is_random:
        message = (
            "RECOMMENDER_BACKBONE_WEIGHTS=random: the ResNet50 backbone uses SEEDED RANDOM weights "
            f"(seed {spec.seed}), not ImageNet. Similarity quality is far below a real deployment; "
            "use this only for tests and offline machines.")
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
        keras.utils.set_random_seed(spec.seed)
        return keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape,
                                           pooling="avg")
    try:
        return keras.applications.ResNet50(include_top=False, weights=spec.weights,
                                           input_shape=shape, pooling="avg")
    except Exception as exc:  # network errors, missing or incompatible files
        raise BackboneWeightsError(
            f"Could not load ResNet50 weights {spec.weights!r} ({type(exc).__name__}: {exc}). "
            "Set RECOMMENDER_BACKBONE_WEIGHTS to a local weights file, or to 'random' for an "
            "offline demo (with much lower quality).") from exc


def to_rgb_array(image, size: int) -> np.ndarray:
    """PIL image -> (size, size, 3) float32 RGB array, before model-specific preprocessing."""
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")  # grayscale (Fashion-MNIST) becomes three equal channels
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


RUNTIMES = ("auto", "openvino", "keras")
# A conversion whose features differ from Keras' by more than this share of the largest feature
# is not used (fp32 OpenVINO measured 8.6e-6 absolute, features up to ~10).
RUNTIME_TOLERANCE = 1e-3


def default_runtime() -> str:
    return os.environ.get("RECOMMENDER_BACKBONE_RUNTIME", "auto")


_OVC_TELEMETRY_USERS = ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils",
                        "openvino.tools.ovc.utils", "openvino.tools.ovc.main")


def openvino_telemetry_off() -> None:
    """OpenVINO's model converter sends usage telemetry (Google Analytics) unless the machine's user
    declined it in ~/intel/openvino_telemetry, each event from a forked process: 25 forks of the
    converting process (a web worker, a Celery child: ~0.5 GB each) per conversion, which in a
    threaded process can deadlock and outlive it (a CI run was left with 24 of a web worker's), and
    a shop's servers must send nothing out. The converter's own stub, what it uses when
    openvino-telemetry is not installed (openvino requires that package), replaces it: for modules
    not imported yet through the import system (None in sys.modules makes the import fail), for
    those imported already by replacing their reference."""
    sys.modules.setdefault("openvino_telemetry", None)
    loaded = [sys.modules[name] for name in _OVC_TELEMETRY_USERS if sys.modules.get(name) is not None]
    if loaded:
        from openvino.tools.ovc import telemetry_stub

        for module in loaded:
            if hasattr(module, "tm"):
                module.tm = telemetry_stub


def _openvino_infer(model, input_size: int, threads: int | None):
    """An fp32 OpenVINO compilation of the Keras ``model`` (batch size left open) -> a callable
    batch -> features. The precision is set explicitly: on a CPU with bf16 support OpenVINO would
    otherwise run in bf16, whose features differ (and would need an identity of their own)."""
    openvino_telemetry_off()
    import openvino as ov

    with warnings.catch_warnings():
        # Keras warns that the converter's traced inputs are a tuple, not its one input tensor:
        # harmless (the probe in _runtime_choose checks the result), and once per worker.
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
        converted = ov.convert_model(model)
    converted.reshape([-1, input_size, input_size, 3])
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(converted, "CPU", config)
    request = compiled.create_infer_request()

    def infer(batch: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: batch})[compiled.output(0)], dtype=np.float32)

    return infer, f"openvino {ov.__version__.split('-')[0]} fp32"


class Backbone:
    """A loaded feature extractor. Build once per process (loading costs seconds)."""

    def __init__(self, spec: BackboneSpec, batch_size: int = 32, runtime: str | None = None):
        self.spec = spec
        self.batch_size = batch_size
        self.model = build_resnet50(spec)
        self._lock = threading.Lock()  # Keras models are not safe to call from several threads
        self._infer, self.runtime = self.model.predict_on_batch, "keras"
        self._runtime_choose(runtime or default_runtime())
        self._warm()

    def _runtime_choose(self, wanted: str) -> None:
        if wanted not in RUNTIMES:
            raise ValueError(f"backbone runtime must be one of {', '.join(RUNTIMES)}, not {wanted!r}")
        if wanted == "keras" or (wanted == "auto" and accelerator_present()):
            return  # a GPU runs Keras (its backend) itself
        try:
            infer, name = _openvino_infer(self.model, self.spec.input_size, len(os.sched_getaffinity(0)))
            probe = np.random.default_rng(0).uniform(-120, 150, (2, self.spec.input_size, self.spec.input_size, 3))
            probe = probe.astype(np.float32)
            reference = np.asarray(self.model.predict_on_batch(probe))
            drift = float(np.abs(infer(probe) - reference).max())
            if drift > RUNTIME_TOLERANCE * max(float(np.abs(reference).max()), 1e-6):
                raise RuntimeError(f"its features differ from Keras' by {drift:.3g}")
        except Exception as exc:  # not installed, a conversion error, a mismatch
            level = logging.WARNING if wanted == "openvino" or not isinstance(exc, ImportError) else logging.INFO
            logger.log(level, "backbone runtime: Keras, not OpenVINO (%s: %s)", type(exc).__name__, exc)
            return
        self._infer, self.runtime = infer, name
        logger.info("backbone runtime: %s (max difference from Keras on a probe batch: %.2g)", name, drift)

    def _warm(self) -> None:
        """Trace the compiled predict function now, for any batch size. Keras traces it with
        ``reduce_retracing``: a second input shape makes it trace a graph with the batch size left
        open, so batches of one and two images (two traces, ~1.1 s each at 64 px on 2 cores, next to
        no compute) leave nothing to trace for later batches of any size: a full batch of 32 then
        ran at once (163 ms), a lone image in 17-26 ms where padding it to 32 cost 240 ms. Warming
        with a full batch instead cost a whole batch of blank images (seconds at 224 px)."""
        size = self.spec.input_size
        for n in (1, 2):
            self._infer(np.zeros((n, size, size, 3), np.float32))

    def preprocess(self, images) -> np.ndarray:
        from keras.applications.resnet50 import preprocess_input

        batch = np.stack([to_rgb_array(image, self.spec.input_size) for image in images])
        return preprocess_input(batch)

    def extract(self, images, progress=None) -> np.ndarray:
        """Features for a sequence of PIL images, ``batch_size`` at a time -> (N, 2048) float32."""
        images = list(images)
        out = np.empty((len(images), FEATURE_DIM), dtype=np.float32)
        with self._lock:
            for start in range(0, len(images), self.batch_size):
                chunk = self.preprocess(images[start:start + self.batch_size])
                n = len(chunk)
                # predict_on_batch runs the compiled graph: 2.4x the img/s of an eager call
                # (34 -> 83 img/s at 64 px, batch 32, 2-core CPU). A short batch is not padded:
                # the graph traced in _warm takes any batch size.
                out[start:start + n] = np.asarray(self._infer(chunk))
                if progress:
                    progress(n)
        return out

    def extract_one_at_a_time(self, images) -> np.ndarray:
        """The original notebook's loop (``predict`` per image); kept only for benchmarks."""
        rows = [self.model.predict(self.preprocess([image]), verbose=0)[0] for image in images]
        return np.asarray(rows, dtype=np.float32)


# Each trained backbone is a spec of its own: a worker would otherwise keep every version's
# ResNet50 (~100 MB each) for ever. Three: the serving one, a training's new one, and a spare.
CACHE_SIZE = 3
_cache: OrderedDict[tuple, Backbone] = OrderedDict()
_cache_lock = threading.Lock()


def get_backbone(spec: BackboneSpec, batch_size: int = 32, runtime: str | None = None) -> Backbone:
    """A process-wide backbone per spec (workers keep it loaded between tasks), least recently used
    dropped past CACHE_SIZE."""
    runtime = runtime or default_runtime()
    with _cache_lock:
        key = (spec, batch_size, runtime)
        if key not in _cache:
            _cache[key] = Backbone(spec, batch_size, runtime)
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
        _cache.move_to_end(key)
        return _cache[key]
