"""The periodic healers (recommender.services.maintenance), run inline: a training whose message was
lost is sent again, and a retraining starts only when none runs. With a real worker and beat:
tests/recommender/test_pipeline.py (lost ingestion) and test_faults.py (a killed training)."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from recommender.models import Embedding, ModelVersion
from recommender.services.maintenance import recover_lost_work, retrain_if_needed
from recommender.services.training import model_version_start

pytestmark = pytest.mark.django_db


def test_the_recovery_resends_a_training_whose_message_was_lost(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        version = model_version_start(trigger="test")  # Redis lost the message
    assert recover_lost_work()["republished_trainings"] == []  # not stale yet
    ModelVersion.objects.filter(pk=version.pk).update(created_at=timezone.now() - timedelta(hours=1))
    report = recover_lost_work()
    assert report["republished_trainings"] == [version.pk] and report["dead_trainings"] == []
    assert ModelVersion.objects.get(pk=version.pk).status == "training"


def test_a_retraining_starts_only_when_none_is_running(django_capture_on_commit_callbacks):
    assert retrain_if_needed() is None  # an empty catalog: nothing to retrain
    with django_capture_on_commit_callbacks(execute=False) as published:
        started = retrain_if_needed(force_reason="staff asked")
    assert (started.status, started.trigger) == ("training", "automatic: staff asked")
    assert len(published) == 1  # its training, sent after commit
    assert retrain_if_needed(force_reason="staff asked again") is None  # one training at a time
    assert ModelVersion.objects.count() == 1


def test_the_recovery_asks_for_the_active_versions_neighbour_lists(settings, broker):
    """A refresh lost with the broker (or never sent) is sent again; the task itself decides
    whether anything is to do. Nothing without an active version or with the lists turned off."""
    from django.core.cache import cache

    from recommender import publishing
    from tests.recommender.conftest import messages

    assert recover_lost_work()["neighbours"] is None  # no active version
    version = ModelVersion.objects.create(status=ModelVersion.Status.ACTIVE, backbone="b", weights="random",
                                          input_size=32, activated_at=timezone.now())
    cache.delete(publishing.NEIGHBOURS_FLAG.format(version.pk))
    assert recover_lost_work()["neighbours"] == version.pk
    [message] = messages(broker, "training")
    assert (message.headers["task"], message.payload[0]) == (publishing.REFRESH_NEIGHBOURS, [version.pk])
    settings.RECOMMENDER = {**settings.RECOMMENDER, "NEIGHBOUR_LISTS_MAX_ROWS": 0}
    assert recover_lost_work()["neighbours"] is None


# --------------------------------------------------------------------------- versions left ready


class WorkerKilled(BaseException):
    """The worker's process dies here (as by SIGKILL): not an Exception, so no handler of the
    training runs; its advisory lock goes as its connection would."""


def ready_row(settings, **fields):
    """A version left ready (it passed the gate) with its model folder."""
    from pathlib import Path

    version = ModelVersion.objects.create(
        status=ModelVersion.Status.READY, backbone="resnet50:random-seed1234:32", weights="random", input_size=32,
        classes=["a", "b"], finished_at=timezone.now(), **{
            "progress": {"phase": "activating", "gate": "passed against v1: ...", "gate_passed": True}, **fields})
    folder = Path(settings.MODELS_ROOT, f"v{version.pk}")
    folder.mkdir(parents=True)
    ModelVersion.objects.filter(pk=version.pk).update(artifacts=str(folder))
    return ModelVersion.objects.get(pk=version.pk)


def test_a_version_left_ready_by_a_worker_lost_before_its_activation_is_activated_once(settings, monkeypatch):
    from recommender.locks import training_alive
    from recommender.services import training
    from recommender.services.training import model_version_train
    from tests.recommender.helpers import import_products, process_all, train_inline

    import_products(40)
    process_all()
    first = train_inline(settings, epochs=2)
    assert first.status == "active"
    settings.RECOMMENDER = {**settings.RECOMMENDER, "GATE_TOLERANCE": 1.0}

    def killed(**kwargs):
        raise WorkerKilled

    monkeypatch.setattr(training, "model_version_activate", killed)  # dies after the READY commit
    version = model_version_start(trigger="test", publish=False)
    with pytest.raises(WorkerKilled):
        model_version_train(version_id=version.pk)
    monkeypatch.undo()
    version.refresh_from_db()
    assert version.status == "ready" and not training_alive(version.pk)  # stranded
    report = recover_lost_work()
    assert [ModelVersion.objects.get(pk=v.pk).status for v in (first, version)] == ["retired", "active"]
    assert report["ready_versions"] == {"activated": [version.pk], "retired": [], "failed": []}
    assert ModelVersion.objects.get(pk=version.pk).progress["phase"] == "done"
    # Idempotent: the next runs find nothing left ready.
    assert recover_lost_work()["ready_versions"] == {"activated": [], "retired": [], "failed": []}
    assert ModelVersion.objects.get(status="active").pk == version.pk


def test_the_recovery_retires_a_ready_version_superseded_since_and_leaves_one_whose_worker_lives(settings):
    from tests.recommender.helpers import lock_from_another_session

    superseded = ready_row(settings)
    served = ModelVersion.objects.create(status="active", backbone="b", weights="random", input_size=32,
                                         activated_at=timezone.now())  # newer, activated after it
    activating = ready_row(settings)
    other = lock_from_another_session(activating.pk)  # its worker is activating it right now
    try:
        report = recover_lost_work()
    finally:
        other.close()
    # Never activated over the version that serves now; kept (files too) for staff to activate.
    assert [ModelVersion.objects.get(pk=v.pk).status for v in (superseded, served, activating)] == [
        "retired", "active", "ready"]
    assert report["ready_versions"] == {"activated": [], "retired": [superseded.pk], "failed": []}


def test_a_version_left_ready_before_its_gate_was_recorded_is_gated_again(settings):
    active = ModelVersion.objects.create(status="active", backbone="b", weights="random", input_size=32,
                                         classes=["a", "b", "c"], activated_at=timezone.now() - timedelta(hours=1))
    legacy = ready_row(settings, progress={"phase": "evaluating"})  # no recorded gate outcome
    report = recover_lost_work()
    assert [ModelVersion.objects.get(pk=v.pk).status for v in (active, legacy)] == ["retired", "active"]
    assert report["ready_versions"]["activated"] == [legacy.pk]  # categories changed: the gate lets it through
    assert ModelVersion.objects.get(pk=legacy.pk).progress["gate"] == (
        "catalog categories changed; versions are not comparable")


# --------------------------------------------------------------------------- a long stale backlog


def test_a_stale_backlog_costs_the_features_queue_one_drain_per_stale_period(broker):
    """5,000 images pending for an hour (no worker takes them) and 20 recovery runs: the features
    queue holds one drain. Back to back, the drain's own flag (15 s) stops the repeats; runs further
    apart than that (every 30 s in the demo, every 60 s by default) found the flag expired and
    sent one more drain each time, so the queue grew by one per run for as long as the backlog
    waited: the recovery now records its republish for a stale period (STALE_SECONDS)."""
    from django.core.cache import cache

    from catalog.models import Category, Product, ProductImage
    from recommender import publishing
    from recommender.services import maintenance

    product = Product.objects.create(sku="BULK", title="bulk", category=Category.objects.create(name="Bulk", slug="b"))
    ProductImage.objects.bulk_create([ProductImage(product=product, image=f"x/{i}.png", content_hash=f"{i:064d}")
                                      for i in range(5000)], batch_size=2000)
    ProductImage.objects.update(status_changed_at=timezone.now() - timedelta(hours=1))
    cache.delete_many([publishing.DRAIN_FLAG, maintenance.RECOVERY_DRAIN_FLAG])
    for _ in range(20):  # back to back
        assert recover_lost_work()["requeued"] == 5000
    assert broker.client.llen("features") == 1
    for _ in range(20):  # each run after the drain flag's lifetime: no worker has taken the drain
        cache.delete(publishing.DRAIN_FLAG)
        assert recover_lost_work()["requeued"] == 5000
        assert broker.client.llen("features") == 1
    cache.delete_many([publishing.DRAIN_FLAG, maintenance.RECOVERY_DRAIN_FLAG])  # a whole stale period later
    recover_lost_work()
    assert broker.client.llen("features") == 2  # one more, in case the first was lost
    [first, second] = [m.headers["task"] for m in messages(broker, "features")]
    assert first == second == publishing.DRAIN_BACKLOG


def messages(channel, queue):
    from tests.recommender.conftest import messages as read

    return read(channel, queue)


def test_a_drain_the_broker_refused_is_sent_again_at_the_next_run(broker, monkeypatch):
    """The recovery's once-per-stale-period record is kept only for a drain that was sent: a broker
    outage must not silence the recovery for a whole STALE_SECONDS."""
    from django.core.cache import cache

    from catalog.models import Category, Product, ProductImage
    from recommender import publishing
    from recommender.services import maintenance

    product = Product.objects.create(sku="LOST", title="lost", category=Category.objects.create(name="Lost", slug="l"))
    ProductImage.objects.create(product=product, image="x/lost.png", content_hash="f" * 64)
    ProductImage.objects.update(status_changed_at=timezone.now() - timedelta(hours=1))
    cache.delete_many([publishing.DRAIN_FLAG, maintenance.RECOVERY_DRAIN_FLAG])
    monkeypatch.setattr(publishing, "drain_publish", lambda: False)  # the send failed
    recover_lost_work()
    assert broker.client.llen("features") == 0
    monkeypatch.undo()
    recover_lost_work()
    assert broker.client.llen("features") == 1


# --------------------------------------------------------------------------- a damaged vector index


def _index_state(name):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT c.relfilenode, i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                       "WHERE c.relname = %s", [name])
        return cursor.fetchone()


@pytest.mark.django_db(transaction=True)  # REINDEX CONCURRENTLY runs outside any transaction
def test_the_recovery_rebuilds_a_vector_index_that_met_a_zeroed_element():
    """pgvector's insert/vacuum race cannot be triggered on purpose (it needs a debugger between
    two backends), so the error's record is planted, as recommender.db.vector_index_watch leaves
    it; the rebuild itself is real: a new index file, valid, and the leftover of an interrupted
    rebuild (invalid ``_ccnew`` and ``_ccold`` copies) dropped. Without the record, nothing is rebuilt."""
    from django.core.cache import cache
    from django.db import IntegrityError, connection

    from recommender import db
    from tests.factories import ProductImageFactory

    version = ModelVersion.objects.create(status="retired", backbone="b", weights="random", input_size=32)
    images = [ProductImageFactory() for _ in range(2)]
    db.bulk_insert_binary([Embedding(image=i, product=i.product, version=version, vector=[0.5] * 512,
                                     predicted="x", confidence=1.0) for i in images])
    # An interrupted concurrent build leaves its index behind, invalid (here: a unique build over
    # duplicate values fails); the same for the old copy a rebuild interrupted at its swap leaves.
    for leftover in ("embedding_vector_hnsw_ccnew", "embedding_vector_hnsw_ccold"):
        with pytest.raises(IntegrityError), connection.cursor() as cursor:
            cursor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {leftover} ON recommender_embedding (version_id)")
    try:
        assert _index_state("embedding_vector_hnsw_ccnew")[1] is False
        before = _index_state("embedding_vector_hnsw")

        cache.delete(db.VECTOR_INDEX_DAMAGED_FLAG)
        assert recover_lost_work()["vector_indexes_rebuilt"] == []
        assert _index_state("embedding_vector_hnsw") == before

        cache.set(db.VECTOR_INDEX_DAMAGED_FLAG, 1, None)
        assert recover_lost_work()["vector_indexes_rebuilt"] == ["embedding_vector_hnsw"]
        after = _index_state("embedding_vector_hnsw")
        assert after[0] != before[0] and after[1] is True
        assert _index_state("embedding_vector_hnsw_ccnew") is None
        assert _index_state("embedding_vector_hnsw_ccold") is None
        assert cache.get(db.VECTOR_INDEX_DAMAGED_FLAG) is None
        assert recover_lost_work()["vector_indexes_rebuilt"] == []  # once per record
        # The rebuilt index serves: the nearest image of the version comes from it.
        from recommender.selectors.similarity import nearest_images

        assert {i for i, _ in nearest_images(version=version, vector=[0.5] * 512, k=2)} == {i.pk for i in images}
    finally:  # the cluster outlives the test
        with connection.cursor() as cursor:
            for leftover in ("embedding_vector_hnsw_ccnew", "embedding_vector_hnsw_ccold"):
                cursor.execute(f"DROP INDEX IF EXISTS {leftover}")


@pytest.mark.django_db(transaction=True)
def test_a_rebuild_that_fails_keeps_its_record_for_the_next_run():
    """Another session holds the table (here: a lock REINDEX CONCURRENTLY waits for, past this
    session's lock_timeout): the rebuild fails, the rest of the recovery still runs, and the next
    run rebuilds."""
    import psycopg
    from django.core.cache import cache
    from django.db import connection

    from recommender import db

    cache.set(db.VECTOR_INDEX_DAMAGED_FLAG, 1, None)
    try:
        with psycopg.connect(**connection.get_connection_params()) as other:
            other.execute("LOCK TABLE recommender_embedding IN SHARE UPDATE EXCLUSIVE MODE")
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '300ms'")
            report = recover_lost_work()
            assert report["vector_indexes_rebuilt"] == [] and "requeued" in report
            assert cache.get(db.VECTOR_INDEX_DAMAGED_FLAG) == 1
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        assert recover_lost_work()["vector_indexes_rebuilt"] == ["embedding_vector_hnsw"]
        assert cache.get(db.VECTOR_INDEX_DAMAGED_FLAG) is None
        assert _index_state("embedding_vector_hnsw")[1] is True
    finally:
        cache.delete(db.VECTOR_INDEX_DAMAGED_FLAG)
        with connection.cursor() as cursor:  # the connection outlives the test
            cursor.execute("RESET lock_timeout")


@pytest.mark.django_db
def test_no_rebuild_is_tried_inside_a_transaction():
    """REINDEX CONCURRENTLY cannot run in one: the recovery called inside a transaction (not as
    its task) leaves the record for a later run and does the rest of its work."""
    from django.core.cache import cache

    from recommender import db
    from recommender.services.maintenance import vector_index_rebuild

    cache.set(db.VECTOR_INDEX_DAMAGED_FLAG, 1, None)
    report = recover_lost_work()
    assert report["vector_indexes_rebuilt"] == [] and "requeued" in report
    assert cache.get(db.VECTOR_INDEX_DAMAGED_FLAG) == 1
    with pytest.raises(RuntimeError, match="outside any transaction"):
        vector_index_rebuild()
    cache.delete(db.VECTOR_INDEX_DAMAGED_FLAG)


def legacy(version, folder):
    """As a version saved before the models storage existed: its files only in this host's folder."""
    import shutil

    from django.conf import settings

    shutil.rmtree(Path(settings.MODELS_STORAGE_ROOT, f"v{version.pk}"), ignore_errors=True)
    ModelVersion.objects.filter(pk=version.pk).update(artifacts=str(folder))
    return ModelVersion.objects.get(pk=version.pk)


def test_the_recovery_publishes_a_version_saved_before_the_models_storage(settings):
    import shutil

    from recommender import artifacts, runtime
    from tests.recommender.helpers import import_products, process_all, train_inline

    import_products(30)
    process_all()
    trained = train_inline(settings, epochs=1)
    version = legacy(trained, runtime.artifacts_dir(trained.pk))
    assert version.status == "active" and runtime.artifacts_stored(version)  # its folder is here
    runtime.forget_head(version.pk)
    assert runtime.load_head(version).classes == version.classes  # verified against its checksums, locally
    settings.MODELS_CACHE_MAX_BYTES = 0
    artifacts.cache_evict()
    assert runtime.artifacts_dir(version.pk).is_dir()  # its only copy: never trimmed
    assert recover_lost_work()["model_files_published"] == [version.pk]
    published = ModelVersion.objects.get(pk=version.pk)
    assert published.artifacts == f"v{version.pk}" and published.checksums == version.checksums
    shutil.rmtree(runtime.artifacts_dir(version.pk))  # now any host loads it from the storage
    runtime.forget_head(version.pk)
    assert runtime.load_head(published).classes == version.classes
    assert recover_lost_work()["model_files_published"] == []


def test_legacy_files_that_do_not_match_their_checksums_are_not_published(settings, caplog):
    import hashlib

    trained = ModelVersion.objects.create(status="retired", kind="backbone", backbone="resnet50:ft-v0-x:32",
                                          weights="random", input_size=32)
    folder = Path(settings.MODELS_ROOT, f"v{trained.pk}")
    folder.mkdir(parents=True)
    (folder / "backbone.weights.h5").write_bytes(b"weights")
    ModelVersion.objects.filter(pk=trained.pk).update(
        artifacts=str(folder), checksums={"backbone.weights.h5": hashlib.sha256(b"weights").hexdigest()})
    head = ModelVersion.objects.create(status="retired", backbone="resnet50:ft-v0-x:32", input_size=32,
                                       weights=str(folder / "backbone.weights.h5"))  # a path of this host
    head_folder = Path(settings.MODELS_ROOT, f"v{head.pk}")
    head_folder.mkdir()
    (head_folder / "head.keras").write_bytes(b"changed since")
    ModelVersion.objects.filter(pk=head.pk).update(
        artifacts=str(head_folder), checksums={"head.keras": hashlib.sha256(b"as saved").hexdigest()})
    with caplog.at_level("ERROR"):
        assert recover_lost_work()["model_files_published"] == [trained.pk]
    assert f"v{head.pk}: head.keras in {head_folder} do not match" in caplog.text
    assert ModelVersion.objects.get(pk=head.pk).artifacts == str(head_folder)  # left as it was
    ModelVersion.objects.filter(pk=head.pk).update(checksums={"head.keras": hashlib.sha256(b"changed since").hexdigest()})
    assert recover_lost_work()["model_files_published"] == [head.pk]
    assert ModelVersion.objects.get(pk=head.pk).weights == f"models:v{trained.pk}/backbone.weights.h5"
