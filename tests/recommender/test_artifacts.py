"""recommender.artifacts: versions' files in the "models" storage and each host's bounded cache."""

import os
from pathlib import Path

import pytest

from recommender import artifacts
from recommender.models import ModelVersion

pytestmark = pytest.mark.django_db


def version_row(status="ready") -> ModelVersion:
    """A version whose files are (to be) in the models storage, as every training saves them now."""
    version = ModelVersion.objects.create(status=status, backbone="resnet50:random-seed1234:32", weights="random",
                                          input_size=32)
    ModelVersion.objects.filter(pk=version.pk).update(artifacts=f"v{version.pk}")
    version.artifacts = f"v{version.pk}"
    return version


def written(version, **files) -> dict[str, str]:
    """Files written into the version's cache folder as its training writes them; then published."""
    folder = artifacts.cache_dir(version.pk)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name.replace("_", ".")).write_bytes(content)
    return artifacts.files_publish(version_id=version.pk)


def stored_names(settings, version) -> list[str]:
    folder = Path(settings.MODELS_STORAGE_ROOT, f"v{version.pk}")
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_publishing_stores_content_addressed_objects_once(settings):
    version = version_row()
    checksums = written(version, head_keras=b"head", meta_json=b"{}")
    names = stored_names(settings, version)
    assert names == sorted(f"{checksums[n][:16]}-{n}" for n in ("head.keras", "meta.json"))
    before = {n: Path(settings.MODELS_STORAGE_ROOT, f"v{version.pk}", n).stat().st_mtime_ns for n in names}
    (artifacts.cache_dir(version.pk) / ".head.keras.tmp").write_bytes(b"half written")  # an unfinished write
    assert artifacts.files_publish(version_id=version.pk) == checksums  # a retried publish
    after = {n: Path(settings.MODELS_STORAGE_ROOT, f"v{version.pk}", n).stat().st_mtime_ns for n in names}
    assert after == before and stored_names(settings, version) == names  # nothing uploaded twice
    # A rewritten file is a new object: a reader of the old record still finds the old bytes.
    rewritten = written(version, meta_json=b'{"new": 1}')
    assert rewritten["meta.json"] != checksums["meta.json"] and len(stored_names(settings, version)) == 3


def test_a_host_fetches_a_file_once_into_its_cache(settings):
    version = version_row()
    checksums = written(version, head_keras=b"the head")
    artifacts.cache_dir(version.pk).joinpath("head.keras").unlink()  # another host
    path = artifacts.file_local(version_id=version.pk, name="head.keras", digest=checksums["head.keras"])
    assert path.read_bytes() == b"the head" and path.parent == Path(settings.MODELS_ROOT, f"v{version.pk}")
    Path(settings.MODELS_STORAGE_ROOT, f"v{version.pk}", f"{checksums['head.keras'][:16]}-head.keras").unlink()
    assert artifacts.file_local(version_id=version.pk, name="head.keras",
                                digest=checksums["head.keras"]).read_bytes() == b"the head"  # cached: no fetch


def test_a_file_missing_from_the_storage_leaves_no_partial_file(settings):
    version = version_row()
    with pytest.raises(artifacts.ArtifactMissingError, match=rf"v{version.pk}/0123456789abcdef-head.keras"):
        artifacts.file_local(version_id=version.pk, name="head.keras", digest="0123456789abcdef" * 4)
    assert list(artifacts.cache_dir(version.pk).iterdir()) == []


def test_removing_a_version_removes_its_stored_objects_and_cache(settings):
    version, other = version_row(), version_row()
    written(version, head_keras=b"a")
    written(other, head_keras=b"b")
    artifacts.files_remove(version_id=version.pk)
    assert stored_names(settings, version) == [] and not artifacts.cache_dir(version.pk).exists()
    assert len(stored_names(settings, other)) == 1 and artifacts.cache_dir(other.pk).exists()
    artifacts.files_remove(version_id=version.pk)  # again: nothing left to remove, no error


def test_the_cache_drops_deleted_versions_then_the_least_recently_used_past_its_bound(settings):
    old, recent, training, in_use = (version_row(), version_row(), version_row("training"), version_row())
    for number, version in enumerate((old, recent, training, in_use)):
        written(version, weights=os.urandom(1000))
        os.utime(artifacts.cache_dir(version.pk), (1_000_000 + number, 1_000_000 + number))  # old is least recent
    gone = version_row()
    written(gone, weights=b"x" * 1000)
    ModelVersion.objects.filter(pk=gone.pk).delete()
    settings.MODELS_CACHE_MAX_BYTES = 10_000
    assert artifacts.cache_evict(keep=in_use.pk) == [gone.pk]  # under the bound: only the deleted version
    settings.MODELS_CACHE_MAX_BYTES = 2_500
    # Over it: the least recently used first, never the one in use nor one that is training.
    assert artifacts.cache_evict(keep=in_use.pk) == [old.pk, recent.pk]
    assert {p.name for p in Path(settings.MODELS_ROOT).iterdir() if p.is_dir()} == {f"v{training.pk}", f"v{in_use.pk}"}
    assert len(stored_names(settings, old)) == 1  # the storage keeps them: fetched again when needed


@pytest.fixture
def s3_models_storage(settings, monkeypatch):
    """The models storage on S3 through django-storages, as production configures it
    (MODELS_STORAGE_BACKEND=storages.backends.s3.S3Storage): an in-process S3 (moto)."""
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="lookalike-models")
        settings.STORAGES = {**settings.STORAGES, "models": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "lookalike-models", "region_name": "us-east-1"}}}
        yield boto3.client("s3", region_name="us-east-1")


def test_the_models_storage_works_on_s3(s3_models_storage):
    version = version_row()
    checksums = written(version, head_keras=b"head on s3", meta_json=b"{}")
    keys = sorted(o["Key"] for o in s3_models_storage.list_objects_v2(Bucket="lookalike-models")["Contents"])
    assert keys == sorted(artifacts.object_name(version.pk, n, d) for n, d in checksums.items())
    assert artifacts.files_publish(version_id=version.pk) == checksums  # exists() on S3: nothing twice
    artifacts.cache_dir(version.pk).joinpath("head.keras").unlink()  # another host
    path = artifacts.file_local(version_id=version.pk, name="head.keras", digest=checksums["head.keras"])
    assert path.read_bytes() == b"head on s3"
    with pytest.raises(artifacts.ArtifactMissingError):
        artifacts.file_local(version_id=version.pk, name="other", digest="0" * 64)
    artifacts.files_remove(version_id=version.pk)
    assert s3_models_storage.list_objects_v2(Bucket="lookalike-models").get("KeyCount") == 0


def test_the_cache_drops_failed_versions_and_spares_the_only_copy_of_an_unpublished_one(settings):
    failed, legacy, other = version_row(), version_row("retired"), version_row()
    for version in (failed, legacy, other):
        written(version, weights=os.urandom(1000))
    ModelVersion.objects.filter(pk=failed.pk).update(status="failed")
    # Saved before the models storage: its folder is its only copy (the recovery publishes it).
    ModelVersion.objects.filter(pk=legacy.pk).update(artifacts=str(artifacts.cache_dir(legacy.pk)))
    settings.MODELS_CACHE_MAX_BYTES = 0
    assert sorted(artifacts.cache_evict()) == sorted([failed.pk, other.pk])
    assert {p.name for p in Path(settings.MODELS_ROOT).iterdir() if p.is_dir()} == {f"v{legacy.pk}"}


def test_one_process_of_a_host_trims_at_a_time(settings):
    import fcntl

    version = version_row()
    written(version, weights=b"x" * 100)
    settings.MODELS_CACHE_MAX_BYTES = 0
    with open(Path(settings.MODELS_ROOT, "evict.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process trimming
        assert artifacts.cache_evict() == []
    assert artifacts.cache_evict() == [version.pk]


class UnreachableStorage:
    """A models storage whose service is down: every call fails."""

    def __init__(self, **options):
        pass

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("the models storage is unreachable")
        return fail


def test_removing_files_while_the_storage_is_down_removes_the_local_copy_and_the_sweep_the_rest(settings, caplog):
    version, kept = version_row(), version_row()
    written(version, head_keras=b"a")
    written(kept, head_keras=b"b")
    location = settings.STORAGES["models"]
    settings.STORAGES = {**settings.STORAGES, "models": {"BACKEND": f"{__name__}.UnreachableStorage"}}
    artifacts.files_remove(version_id=version.pk)  # a failed training's clean-up: must not raise
    assert not artifacts.cache_dir(version.pk).exists()
    assert "could not remove its files from the models storage" in caplog.text
    settings.STORAGES = {**settings.STORAGES, "models": location}
    ModelVersion.objects.filter(pk=version.pk).update(status="failed")
    gone = version_row()
    written(gone, head_keras=b"c")
    ModelVersion.objects.filter(pk=gone.pk).delete()
    assert artifacts.storage_sweep() == sorted([version.pk, gone.pk])
    assert stored_names(settings, version) == [] and stored_names(settings, gone) == []
    assert len(stored_names(settings, kept)) == 1
    assert artifacts.storage_sweep() == []
