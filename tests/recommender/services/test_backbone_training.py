"""The backbone kind of training (services.backbone_training, selectors.versions.training_kind,
services.features): which kind "auto" chooses and why, what a backbone version starts from, the
whole build in this process (tasks run eagerly: the features queue's chunks run here), and the
pruning of features no kept version reads. tests/recommender/test_backbone_worker.py does the
same with real worker processes."""

from pathlib import Path

import numpy as np
import pytest
from django.utils import timezone
from PIL import Image

from catalog.models import ProductImage
from recommender import artifacts, runtime
from recommender.models import FEATURE_DIM, BackboneFeature, Embedding, ModelVersion
from recommender.selectors.similarity import search_by_image, similar_products
from recommender.selectors.versions import retrain_reason, serving_backbone, serving_identity, training_kind
from recommender.selectors.features import images_missing_features
from recommender.services.features import features_prune
from recommender.services.maintenance import recover_lost_work
from recommender.services.training import model_version_start, model_version_train
from tests.factories import ProductImageFactory
from tests.recommender.helpers import import_products, process_all, train_inline

pytestmark = pytest.mark.django_db
TINY = {"TRAINING": "backbone", "BACKBONE_EPOCHS": 2, "BACKBONE_BATCH_SIZE": 16, "BACKBONE_INPUT_SIZE": 32,
        "BACKBONE_MIN_STEPS": 0}


def use(settings, **values):
    settings.RECOMMENDER = {**settings.RECOMMENDER, **values}


def version_row(*, kind="head", weights="random", backbone="resnet50:random-seed1234:32", **fields):
    return ModelVersion.objects.create(kind=kind, weights=weights, backbone=backbone, input_size=32, **fields)


def featured_images(backbone, categories):
    """One processed image per category name, with (zero) features under ``backbone``."""
    images = []
    for name in categories:
        image = ProductImageFactory(product__category__name=name, product__category__slug=name)
        BackboneFeature.objects.create(image=image, backbone=backbone, vector=np.zeros(FEATURE_DIM, np.float32))
        ProductImage.objects.filter(pk=image.pk).update(status=ProductImage.Status.READY)
        images.append(image)
    return images


def test_a_set_kind_is_used_as_it_is(settings):
    use(settings, TRAINING="head")
    assert training_kind() == ("head", "RECOMMENDER_TRAINING=head")
    use(settings, TRAINING="backbone")
    assert training_kind() == ("backbone", "RECOMMENDER_TRAINING=backbone")


def test_auto_serves_a_frozen_version_first_then_trains_random_weights_once(settings):
    use(settings, TRAINING="auto", BACKBONE_WEIGHTS="random")
    kind, why = training_kind()
    assert kind == "head" and "first version with the frozen backbone" in why
    featured_images("resnet50:random-seed1234:32", ["coats", "shoes"] * 10)
    active = version_row(status="active", classes=["coats", "shoes"], n_images=20, activated_at=timezone.now())
    kind, why = training_kind()
    assert kind == "backbone" and "weights are random" in why
    assert retrain_reason() == why  # the periodic check starts it by itself...
    version_row(status="failed", kind="backbone", backbone="resnet50:ft-v9-abc:32")  # ...the gate refused it
    assert retrain_reason() is None  # ...and it is not retried in a loop
    kind, why = training_kind()
    assert kind == "head" and why.startswith("auto: backbone version v") and "already tried" in why
    assert active.status == "active"


def test_auto_keeps_pretrained_weights_frozen_while_they_beat_raw_pixels(settings):
    use(settings, TRAINING="auto", BACKBONE_WEIGHTS="imagenet")  # only read here: nothing is loaded
    kind, why = training_kind()
    assert kind == "head" and "first version" in why


def test_auto_trains_the_backbone_when_the_frozen_one_does_not_beat_raw_pixels(settings):
    use(settings, TRAINING="auto", BACKBONE_WEIGHTS="imagenet")
    active = version_row(status="active", weights="imagenet", backbone="resnet50:imagenet:32",
                         metrics={"raw_pixels": {"precision_at_6": 0.75, "version": {"precision_at_6": 0.76}}})
    kind, why = training_kind()
    assert kind == "backbone" and f"v{active.pk} (frozen backbone) does not beat raw pixels" in why
    assert "P@6 0.760 vs 0.750" in why
    ModelVersion.objects.filter(pk=active.pk).update(
        metrics={"raw_pixels": {"precision_at_6": 0.75, "version": {"precision_at_6": 0.85}}})
    assert training_kind() == ("head", "auto: the frozen backbone beats raw pixels")


def test_auto_retrains_only_the_head_on_a_trained_backbone_until_new_categories_arrive(settings):
    use(settings, TRAINING="auto", BACKBONE_WEIGHTS="random")
    trained = "resnet50:ft-v1-abc:32"
    active = version_row(status="active", kind="backbone", backbone=trained, classes=["coats", "shoes"])
    featured_images(trained, ["coats", "shoes"])
    kind, why = training_kind()
    assert kind == "head" and f"v{active.pk}'s trained backbone" in why
    featured_images(trained, ["hats"])
    kind, why = training_kind()
    assert kind == "backbone" and "1 new categories" in why and "starting from its weights" in why


def test_a_backbone_version_starts_from_the_serving_weights_at_its_own_input_size(settings):
    use(settings, **{**TINY, "INPUT_SIZE": 64, "BACKBONE_INPUT_SIZE": 48})
    version = model_version_start(trigger="test", publish=False)
    assert (version.kind, version.kind_reason) == ("backbone", "RECOMMENDER_TRAINING=backbone")
    assert (version.weights, version.input_size, version.backbone) == ("random", 48, "resnet50:random-seed1234:48")
    assert version.hyperparameters["zero_init_residual"] is True  # from scratch
    assert version.hyperparameters["epochs"] == 2 and version.hyperparameters["batch_size"] == 16


def test_features_no_kept_version_reads_are_pruned(settings):
    use(settings, KEEP_RETIRED_EMBEDDINGS=0)
    base = serving_identity()  # the configured backbone: always kept (cold start, head trainings)
    version_row(status="active", kind="backbone", backbone="resnet50:ft-v1-aaa:32")
    version_row(status="failed", kind="backbone", backbone="resnet50:ft-v2-bbb:32")
    version_row(status="retired", kind="backbone", backbone="resnet50:ft-v3-ccc:32")  # its embeddings were pruned
    for identity in (base, "resnet50:ft-v1-aaa:32", "resnet50:ft-v2-bbb:32", "resnet50:ft-v3-ccc:32"):
        featured_images(identity, ["coats", "shoes"])
    assert features_prune(batch_size=1) == {"backbones": ["resnet50:ft-v2-bbb:32", "resnet50:ft-v3-ccc:32"],
                                            "rows": 4}
    left = set(BackboneFeature.objects.values_list("backbone", flat=True))
    assert left == {base, "resnet50:ft-v1-aaa:32"}
    assert features_prune() == {"backbones": [], "rows": 0}  # safe to run again


def test_the_recovery_sends_ready_images_lacking_the_serving_backbones_features(settings,
                                                                              django_capture_on_commit_callbacks):
    use(settings, STALE_SECONDS=0)  # (sooner, an image may still be in a queued chunk)
    active = version_row(status="active", kind="backbone", classes=["coats", "shoes"])
    weights = Path(settings.MODELS_ROOT, f"v{active.pk}", "backbone.weights.h5")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"trained weights")  # its identity is read from the version, its spec from the file
    active.backbone = serving_backbone()[0].identity
    active.save()
    assert active.backbone.startswith(f"resnet50:ft-v{active.pk}-") and serving_identity() == active.backbone
    have = featured_images(active.backbone, ["coats"])
    lacking = featured_images("resnet50:random-seed1234:32", ["shoes", "coats"])  # extracted before the swap
    with django_capture_on_commit_callbacks(execute=False) as published:
        assert recover_lost_work()["reextract"] == 2
    assert len(published) == 1  # one chunk for the features queue
    assert images_missing_features(backbone=active.backbone) == sorted(i.pk for i in lacking)
    assert have[0].pk not in images_missing_features(backbone=active.backbone)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # chunks are sent on commit, as on a worker
def test_a_backbone_version_is_trained_reextracted_gated_and_served(settings, eager, caplog):
    import_products(60)
    process_all()
    head = train_inline(settings, epochs=2)  # the original method serves first
    assert head.status == "active" and head.kind == "head"
    # Two epochs from scratch on 48 images lose to the head: the tolerance lets it through, and
    # the gate's reason shows it was compared (other backbone, same held-out images).
    use(settings, **TINY, GATE_TOLERANCE=1.0)
    version = model_version_train(version_id=model_version_start(trigger="test", publish=False).pk)
    assert version.status == "active", version.error
    assert "no features worker" not in caplog.text  # the (eager) features queue did it, not the fallback
    assert version.kind == "backbone" and version.weights == "random"
    assert version.backbone.startswith(f"resnet50:ft-v{version.pk}-") and version.backbone.endswith(":32")
    assert version.progress["gate"].startswith(f"passed against v{head.pk}: accuracy")
    assert {"training", "saving", "extracting", "embedding", "evaluating"} <= set(version.progress["phase_seconds"])
    folder = runtime.artifacts_dir(version.pk)
    assert sorted(p.name for p in folder.iterdir()) == [
        "backbone.weights.h5", "head.keras", "meta.json", "preprocessing.joblib"]
    # Each file's checksum, recorded after the last write (the embedding scaler's rewrite of the
    # preprocessing file, a new stored object): the loads of this test were verified against them.
    assert version.checksums == {p.name: artifacts.sha256_file(p) for p in folder.iterdir()}
    assert runtime.artifacts_stored(version) and len(version.checksums) == 4
    images = ProductImage.objects.count()
    assert BackboneFeature.objects.filter(backbone=version.backbone).count() == images
    assert Embedding.objects.filter(version=version).count() == images
    raw = version.metrics["raw_pixels"]
    assert raw["queries"] == version.n_val and 0 <= raw["version"]["precision_at_6"] <= 1
    # It serves: similar items, search by photo and new images use its own backbone.
    assert serving_backbone()[0].identity == version.backbone
    product = ProductImage.objects.first().product
    answer = similar_products(product=product, use_cache=False)
    assert answer.source == "model" and answer.version == version and len(answer.items) == 6
    found = search_by_image(picture=Image.open(product.images.first().image.path))
    assert found.version == version and found.items and found.predicted in version.classes
    import_products(65)  # five more, processed like any upload
    process_all()
    assert BackboneFeature.objects.filter(backbone=version.backbone).count() == images + 5
    assert Embedding.objects.filter(version=version).count() == images + 5
    # A head retrained later reads the trained backbone's features, kept frozen.
    use(settings, TRAINING="auto", EPOCHS=2)
    head = model_version_train(version_id=model_version_start(trigger="test", publish=False).pk)
    assert head.kind == "head" and f"v{version.pk}'s trained backbone" in head.kind_reason
    assert (head.backbone, head.input_size) == (version.backbone, 32)
    assert head.weights == f"models:v{version.pk}/backbone.weights.h5"  # by version: any host finds it
    assert head.status == "active", head.error
    assert serving_identity() == version.backbone and Embedding.objects.filter(version=head).count() == images + 5
