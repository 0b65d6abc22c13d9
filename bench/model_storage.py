"""What a host pays to use a model version it has never seen (issue 18): publishing a version's
files to the "models" storage, a cold host's first load (fetch into its empty MODELS_ROOT cache,
then SHA-256 of the bytes it loads), and a warm host's check of its cached copy, side by side in
one run, for a head version and a version with a trained backbone (its weights file besides).

    python bench/model_storage.py [--quick | --full] [--repeats N]

The files are real ones, written by the project's code; the storage is the local file system (what `make run` uses) and, with moto installed (a
dev requirement), an in-process S3 through django-storages' S3Storage: it measures the client's
cost (boto3, multipart, hashing), not a network. Prints a table and writes
bench/results/model_storage.json. Worst of the repeats is reported.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

HEAD_NAMES = ("head.keras", "preprocessing.joblib", "meta.json")


def real_files(folder: Path) -> dict[str, Path]:
    """A real head version's files and a trained backbone's weights file, written by the project's own
    code (a head trained 1 epoch on random features of 10 classes; ResNet50 with seeded random weights:
    the weights' size does not depend on their values nor on the input size)."""
    import numpy as np

    from recommender.backbone import BackboneSpec, build_resnet50
    from recommender.finetune import backbone_save
    from recommender.head import HeadConfig, train_head

    rng = np.random.default_rng(0)
    result = train_head(rng.normal(size=(500, 2048)).astype("float32"), [str(i % 10) for i in range(500)],
                        HeadConfig(epochs=1, batch_size=64))
    result.head.save(folder, meta={"bench": True})
    weights = backbone_save(build_resnet50(BackboneSpec(weights="random", input_size=32)), folder)
    return {**{name: folder / name for name in HEAD_NAMES}, weights.name: weights}


def _version(files: dict[str, Path]):
    from recommender import runtime
    from recommender.models import ModelVersion

    version = ModelVersion.objects.create(status="ready", backbone="resnet50:random-seed1234:224", weights="random",
                                          input_size=224)
    folder = runtime.artifacts_dir(version.pk)
    folder.mkdir(parents=True)
    for name, path in files.items():
        shutil.copyfile(path, folder / name)
    return version


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _measure(files: dict[str, Path], repeats: int) -> dict:
    from recommender import runtime

    publish, cold, warm = [], [], []
    for _ in range(repeats):
        version = _version(files)
        publish.append(_timed(lambda: setattr(version, "checksums", runtime.artifacts_publish(version.pk))))
        version.artifacts = f"v{version.pk}"  # as a training records it once its files are stored
        version.save(update_fields=["checksums", "artifacts"])
        shutil.rmtree(runtime.artifacts_dir(version.pk))  # a host that never had it
        cold.append(_timed(lambda: runtime.artifacts_verify(version, names=list(files))))
        warm.append(_timed(lambda: runtime.artifacts_verify(version, names=list(files))))
        runtime.artifacts_remove(version.pk)
    return {"megabytes": round(sum(p.stat().st_size for p in files.values()) / 1e6, 1), "publish_s": max(publish), "cold_s": max(cold),
            "warm_s": max(warm), "repeats": repeats}


def _s3():
    """The models storage on an in-process S3 (moto), or None without moto."""
    try:
        from moto import mock_aws
    except ImportError:
        return None
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    mock = mock_aws()
    mock.start()
    import boto3

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bench-models")
    return mock


def main():
    args = common.parse_mode(extra=lambda p: p.add_argument("--repeats", type=int, default=None))
    repeats = args.repeats or (3 if args.mode == "quick" else 10)
    tmp = common.isolate("model-storage")
    common.django_setup()
    from django.conf import settings

    started = time.perf_counter()
    backends = [("file system", "django.core.files.storage.FileSystemStorage",
                 {"location": str(tmp / "model-store")})]
    mock = _s3()
    if mock is not None:
        backends.append(("S3 (in-process moto, django-storages S3Storage)", "storages.backends.s3.S3Storage",
                         {"bucket_name": "bench-models", "region_name": "us-east-1"}))
    from django.test.utils import override_settings

    print("writing a real head and trained backbone's files...", flush=True)
    every = real_files(tmp / "real-files")
    head = {name: every[name] for name in HEAD_NAMES}
    rows, measured = [], []
    try:
        for label, backend, options in backends:
            with override_settings(STORAGES={**settings.STORAGES, "models": {"BACKEND": backend, "OPTIONS": options}}):
                for kind, files in (("head version", head), ("trained-backbone version", every)):
                    m = {"storage": label, "kind": kind, **_measure(files, repeats)}
                    print(f"  {label}, {kind}: {m}", flush=True)
                    measured.append(m)
                    rows.append([label, kind, m["megabytes"], m["publish_s"], m["cold_s"], m["warm_s"],
                                 common.fmt(m["cold_s"] / m["warm_s"], 2)])
    finally:
        if mock is not None:
            mock.stop()
    table = common.table(
        "A version's files through the models storage: publish, a cold host's first load, a warm host's check",
        ["Storage", "Version", "MB", "Publish s", "Cold host: fetch + verify s", "Warm host: verify s", "Cold / warm"],
        rows,
        [f"Worst of {repeats} repeats each. Publish = SHA-256 and upload of every file (recommender.artifacts."
         "files_publish); cold = runtime.artifacts_verify on an empty MODELS_ROOT (fetch into a temporary file, "
         "rename, hash while copying); warm = the same with the files cached (hash while copying).",
         "Real files written by the project's code (recommender.head, recommender.finetune.backbone_save); the S3 "
         "row is moto inside this process (no network): the client's cost only; a real store adds the transfer "
         "(at 1 Gbit/s, 8 ms per MB)."])
    common.print_table(table)
    common.write_result("model_storage", {"mode": args.mode, "results": measured, "tables": [table],
                                          "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
