"""Model files are verified before they are loaded (recommender.runtime; issue 15, item 4): a
training records the SHA-256 of every file of its version's folder on the version
(``ModelVersion.checksums``), and a head (joblib: a pickle) or trained backbone weights whose file
changed or went missing are refused with the file and the version named, never unpickled. Versions
saved before checksums existed load with a warning."""

import hashlib
import os
from pathlib import Path

import joblib
import pytest

from recommender import runtime
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


def test_a_training_records_the_checksum_of_every_model_file(trained):
    folder = Path(trained.artifacts)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["head.keras", "meta.json", "preprocessing.joblib"]
    assert ModelVersion.objects.get(pk=trained.pk).checksums == {name: sha256(folder / name) for name in files}
    runtime.forget_head(trained.pk)
    assert runtime.load_head(trained).classes == trained.classes  # verified, then loaded


def test_a_tampered_pickle_is_refused_and_never_unpickled(trained, joblib_loads, tmp_path):
    marker = tmp_path / "the-payload-ran"
    joblib.dump(Payload(marker), Path(trained.artifacts, "preprocessing.joblib"))  # written by someone else
    joblib_loads.clear()
    runtime.forget_head(trained.pk)
    with pytest.raises(Exception) as refused:
        runtime.load_head(ModelVersion.objects.get(pk=trained.pk))
    assert not marker.exists() and joblib_loads == []  # never unpickled
    assert isinstance(refused.value, runtime.ModelFilesError)
    message = str(refused.value)
    assert f"v{trained.pk}" in message and "preprocessing.joblib" in message and "SHA-256" in message


def test_a_pickle_swapped_between_its_check_and_its_load_is_never_unpickled(trained, tmp_path, monkeypatch):
    """The bytes that were hashed are the bytes that are loaded (a private copy), so a file replaced
    right after the check (a race with someone who can write MODELS_ROOT) is not what is unpickled."""
    marker = tmp_path / "the-payload-ran"
    verify = runtime.artifacts_verify

    def verify_then_swap(version, **kwargs):
        verify(version, **kwargs)
        joblib.dump(Payload(marker), Path(trained.artifacts, "preprocessing.joblib"))

    monkeypatch.setattr(runtime, "artifacts_verify", verify_then_swap)
    runtime.forget_head(trained.pk)
    head = runtime.load_head(ModelVersion.objects.get(pk=trained.pk))
    assert not marker.exists()
    assert head.classes == trained.classes


def test_a_missing_model_file_is_refused_naming_it(trained, joblib_loads):
    Path(trained.artifacts, "head.keras").unlink()
    joblib_loads.clear()
    runtime.forget_head(trained.pk)
    with pytest.raises(runtime.ModelFilesError, match=rf"v{trained.pk}.*head\.keras.*missing"):
        runtime.load_head(trained)
    assert joblib_loads == []


def test_a_version_saved_before_checksums_loads_with_a_warning(trained, caplog):
    ModelVersion.objects.filter(pk=trained.pk).update(checksums={})
    legacy = ModelVersion.objects.get(pk=trained.pk)
    runtime.forget_head(trained.pk)
    with caplog.at_level("WARNING", logger="recommender.runtime"):
        assert runtime.load_head(legacy).classes == trained.classes
    assert f"v{trained.pk} has no recorded checksums" in caplog.text


def weights_version(settings, *, content=b"trained weights", **fields):
    """A backbone version's folder with a weights file, its checksum recorded."""
    version = ModelVersion.objects.create(kind="backbone", weights="random", backbone="resnet50:ft-v0-x:32",
                                          input_size=32, **{"status": "ready", **fields})
    folder = Path(settings.MODELS_ROOT, f"v{version.pk}")
    folder.mkdir(parents=True)
    (folder / "backbone.weights.h5").write_bytes(content)
    version.artifacts = str(folder)
    version.checksums = {"backbone.weights.h5": hashlib.sha256(content).hexdigest()}
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
    Path(version.artifacts, "backbone.weights.h5").write_bytes(b"other weights")
    with pytest.raises(runtime.ModelFilesError, match=rf"v{version.pk}.*backbone\.weights\.h5"):
        runtime.backbone_of(spec)
    assert backbone_builds == [spec]  # not loaded again
    # A head trained on that backbone reads the same file: verified against the version that made it.
    head = ModelVersion.objects.create(kind="head", weights=str(Path(version.artifacts, "backbone.weights.h5")),
                                       backbone=version.backbone, input_size=32, status="ready")
    with pytest.raises(runtime.ModelFilesError, match=rf"v{version.pk}.*backbone\.weights\.h5"):
        runtime.backbone_of(runtime.version_spec(head))
    Path(version.artifacts, "backbone.weights.h5").unlink()
    with pytest.raises(runtime.ModelFilesError, match=rf"v{version.pk}.*backbone\.weights\.h5.*missing"):
        runtime.backbone_of(spec)


def test_a_backbone_training_does_not_start_from_tampered_weights(settings):
    from recommender.services.training import model_version_start, model_version_train

    settings.RECOMMENDER = {**settings.RECOMMENDER, "BACKBONE_EPOCHS": 1, "BACKBONE_BATCH_SIZE": 16,
                            "BACKBONE_INPUT_SIZE": 32, "BACKBONE_MIN_STEPS": 0}
    import_products(30)
    process_all()
    served = weights_version(settings, status="active", classes=["a", "b"])
    Path(served.artifacts, "backbone.weights.h5").write_bytes(b"replaced")
    version = model_version_train(version_id=model_version_start(trigger="test", kind="backbone", publish=False).pk)
    assert version.weights == str(Path(served.artifacts, "backbone.weights.h5"))
    assert version.status == "failed"
    assert f"v{served.pk}" in version.error and "backbone.weights.h5" in version.error
    assert "SHA-256" in version.error
