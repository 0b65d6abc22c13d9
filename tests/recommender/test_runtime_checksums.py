"""Model files are verified before they are loaded (recommender.runtime; issue 15, item 4), and
shared through the "models" storage (recommender.artifacts; issue 18): a training stores its
version's files and records their SHA-256s on the version (``ModelVersion.checksums``); a head
(joblib: a pickle) or trained backbone weights whose stored file changed or went missing are
refused with the file and the version named, never unpickled; a host's cached copy that changed is
fetched again from the storage. Versions saved before checksums existed load with a warning."""

import hashlib
import os
from pathlib import Path

import joblib
import pytest

from recommender import artifacts, runtime
from recommender.models import ModelVersion
from tests.recommender.helpers import import_products, process_all, train_inline

pytestmark = pytest.mark.django_db


class Payload:
    """A pickle that runs code when it is loaded: here it only creates a folder, which shows it ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored(settings, version, name) -> Path:
    """The file of the models storage (a FileSystemStorage in tests) that holds a version's file."""
    digest = ModelVersion.objects.get(pk=version.pk).checksums[name]
    return Path(settings.MODELS_STORAGE_ROOT, artifacts.object_name(version.pk, name, digest))


def cached(version, name) -> Path:
    return runtime.artifacts_dir(version.pk) / name


@pytest.fixture
def trained(settings):
    import_products(30)
    process_all()
    version = train_inline(settings, epochs=1)
    assert version.artifacts, version.error
    return version


@pytest.fixture
def joblib_loads(monkeypatch):
    """Every joblib.load call (still loading): to show that a refused file is never unpickled."""
    calls, real = [], joblib.load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(joblib, "load", spy)
    return calls


def test_a_training_stores_every_model_file_and_records_its_checksum(trained, settings):
    folder = runtime.artifacts_dir(trained.pk)  # the training host's cache
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["head.keras", "meta.json", "preprocessing.joblib"]
    recorded = ModelVersion.objects.get(pk=trained.pk).checksums
    assert recorded == {name: sha256(folder / name) for name in files}
    for name in files:  # content-addressed objects, byte for byte the written files
        assert stored(settings, trained, name).read_bytes() == (folder / name).read_bytes()
    assert runtime.artifacts_stored(trained)
    runtime.forget_head(trained.pk)
    assert runtime.load_head(trained).classes == trained.classes  # verified, then loaded


def test_a_host_without_the_files_fetches_them_from_the_storage(trained):
    import shutil

    shutil.rmtree(runtime.artifacts_dir(trained.pk))  # another host: an empty cache
    runtime.forget_head(trained.pk)
    assert runtime.load_head(ModelVersion.objects.get(pk=trained.pk)).classes == trained.classes
    assert sorted(p.name for p in runtime.artifacts_dir(trained.pk).iterdir()) == ["head.keras",
                                                                                   "preprocessing.joblib"]


def test_a_tampered_stored_pickle_is_refused_and_never_unpickled(trained, settings, joblib_loads, tmp_path):
    marker = tmp_path / "the-payload-ran"
    for path in (stored(settings, trained, "preprocessing.joblib"), cached(trained, "preprocessing.joblib")):
        joblib.dump(Payload(marker), path)  # written by someone else, in the storage and in the cache
    joblib_loads.clear()
    runtime.forget_head(trained.pk)
    with pytest.raises(Exception) as refused:
        runtime.load_head(ModelVersion.objects.get(pk=trained.pk))
    assert not marker.exists() and joblib_loads == []  # never unpickled
    assert isinstance(refused.value, runtime.ModelFilesError)
    message = str(refused.value)
    assert f"v{trained.pk}" in message and "preprocessing.joblib" in message and "SHA-256" in message
    assert "models storage" in message


def test_a_tampered_cached_pickle_is_replaced_by_the_stored_one(trained, joblib_loads, tmp_path, caplog):
    marker = tmp_path / "the-payload-ran"
    joblib.dump(Payload(marker), cached(trained, "preprocessing.joblib"))  # this host's copy only
    runtime.forget_head(trained.pk)
    with caplog.at_level("WARNING", logger="recommender.artifacts"):
        head = runtime.load_head(ModelVersion.objects.get(pk=trained.pk))
    assert not marker.exists() and head.classes == trained.classes
    assert sha256(cached(trained, "preprocessing.joblib")) == trained.checksums["preprocessing.joblib"]
    assert "does not match its recorded SHA-256; fetching it again" in caplog.text


def test_a_pickle_swapped_between_its_check_and_its_load_is_never_unpickled(trained, tmp_path, monkeypatch):
    """The bytes that were hashed are the bytes that are loaded (a private copy), so a file replaced
    right after the check (a race with someone who can write MODELS_ROOT) is not what is unpickled."""
    marker = tmp_path / "the-payload-ran"
    verify = runtime.artifacts_verify

    def verify_then_swap(version, **kwargs):
        verify(version, **kwargs)
        joblib.dump(Payload(marker), cached(trained, "preprocessing.joblib"))

    monkeypatch.setattr(runtime, "artifacts_verify", verify_then_swap)
    runtime.forget_head(trained.pk)
    head = runtime.load_head(ModelVersion.objects.get(pk=trained.pk))
    assert not marker.exists()
    assert head.classes == trained.classes


def test_a_model_file_missing_from_the_storage_is_refused_naming_it(trained, settings, joblib_loads):
    stored(settings, trained, "head.keras").unlink()
    cached(trained, "head.keras").unlink()
    joblib_loads.clear()
    runtime.forget_head(trained.pk)
    assert not runtime.artifacts_stored(trained)
    with pytest.raises(runtime.ModelFilesError, match=rf"v{trained.pk}.*head\.keras.*missing from the models storage"):
        runtime.load_head(trained)
    assert joblib_loads == []
    assert not list(runtime.artifacts_dir(trained.pk).glob(".*"))  # no half-fetched leftover


def test_a_version_saved_before_checksums_loads_with_a_warning(trained, caplog):
    ModelVersion.objects.filter(pk=trained.pk).update(checksums={})
    legacy = ModelVersion.objects.get(pk=trained.pk)
    runtime.forget_head(trained.pk)
    with caplog.at_level("WARNING", logger="recommender.runtime"):
        assert runtime.load_head(legacy).classes == trained.classes
    assert f"v{trained.pk} has no recorded checksums" in caplog.text


def weights_version(settings, *, content=b"trained weights", **fields):
    """A backbone version whose weights file is written and stored, its checksum recorded."""
    version = ModelVersion.objects.create(kind="backbone", weights="random", backbone="resnet50:ft-v0-x:32",
                                          input_size=32, **{"status": "ready", **fields})
    folder = runtime.artifacts_dir(version.pk)
    folder.mkdir(parents=True)
    (folder / "backbone.weights.h5").write_bytes(content)
    version.artifacts = f"v{version.pk}"
    version.checksums = runtime.artifacts_publish(version.pk)
    assert version.checksums == {"backbone.weights.h5": hashlib.sha256(content).hexdigest()}
    version.save()
    return version


@pytest.fixture
def backbone_builds(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "get_backbone", lambda spec, **kwargs: calls.append(spec))
    return calls


def test_tampered_trained_backbone_weights_are_refused_before_they_are_loaded(settings, backbone_builds):
    version = weights_version(settings)
    spec = runtime.version_spec(version)
    runtime.backbone_of(spec)  # verified: handed to the loader
    assert backbone_builds == [spec]
    for path in (stored(settings, version, "backbone.weights.h5"), cached(version, "backbone.weights.h5")):
        path.write_bytes(b"other weights")
    with pytest.raises(runtime.ModelFilesError, match=rf"v{version.pk}.*backbone\.weights\.h5"):
        runtime.backbone_of(spec)
    assert backbone_builds == [spec]  # not loaded again
    # A head trained on that backbone records it by version, not by this host's path, and reads the
    # same file: verified against the version that made it.
    head = ModelVersion.objects.create(kind="head", weights=runtime.weights_portable(spec.weights),
                                       backbone=version.backbone, input_size=32, status="ready")
    assert head.weights == f"models:v{version.pk}/backbone.weights.h5"
    assert runtime.version_spec(head).weights == spec.weights
    with pytest.raises(runtime.ModelFilesError, match=rf"v{version.pk}.*backbone\.weights\.h5"):
        runtime.backbone_of(runtime.version_spec(head))
    stored(settings, version, "backbone.weights.h5").unlink()
    cached(version, "backbone.weights.h5").unlink()
    with pytest.raises(runtime.ModelFilesError, match=rf"v{version.pk}.*backbone\.weights\.h5.*missing"):
        runtime.backbone_of(spec)


def test_trained_backbone_weights_are_fetched_by_a_host_without_them(settings, backbone_builds):
    version = weights_version(settings, content=b"weights to share")
    cached(version, "backbone.weights.h5").unlink()  # another host
    spec = runtime.version_spec(version)
    runtime.backbone_of(spec)
    assert backbone_builds == [spec]
    assert cached(version, "backbone.weights.h5").read_bytes() == b"weights to share"


def test_a_backbone_training_does_not_start_from_tampered_weights(settings):
    from recommender.services.training import model_version_start, model_version_train

    settings.RECOMMENDER = {**settings.RECOMMENDER, "BACKBONE_EPOCHS": 1, "BACKBONE_BATCH_SIZE": 16,
                            "BACKBONE_INPUT_SIZE": 32, "BACKBONE_MIN_STEPS": 0}
    import_products(30)
    process_all()
    served = weights_version(settings, status="active", classes=["a", "b"])
    for path in (stored(settings, served, "backbone.weights.h5"), cached(served, "backbone.weights.h5")):
        path.write_bytes(b"replaced")
    version = model_version_train(version_id=model_version_start(trigger="test", kind="backbone", publish=False).pk)
    assert version.weights == f"models:v{served.pk}/backbone.weights.h5"
    assert version.status == "failed"
    assert f"v{served.pk}" in version.error and "backbone.weights.h5" in version.error
    assert "SHA-256" in version.error
