"""Evaluating a version (recommender.services.evaluation, through ``manage.py evaluate_model``): on
its held-out images, and on a custom set without the images it trained on."""

import io

import pytest
from django.core.management import call_command

from recommender.services.ingestion import images_process
from tests.recommender.helpers import import_products, process_all, train_inline

pytestmark = pytest.mark.django_db


def test_evaluate_model_on_its_holdout_and_on_new_products(settings, capsys):
    import_products(100)
    process_all()
    version = train_inline(settings, epochs=3)
    out = io.StringIO()
    call_command("evaluate_model", stdout=out)
    assert '"accuracy"' in out.getvalue() and "precision" in out.getvalue()
    assert "index recall against an exact scan" in capsys.readouterr().err  # the progress bar
    version.refresh_from_db()
    stored = version.val_accuracy
    assert stored == version.metrics["accuracy"]
    # New products plus some it trained on: those are left out, the validation figures stay.
    new = import_products(140)[100:]
    images_process(image_ids=new, token="t2")
    out = io.StringIO()
    call_command("evaluate_model", sku_prefix="FMNIST-train-", stdout=out)
    version.refresh_from_db()
    custom = version.metrics["custom"]
    assert custom["images"] == 40 + len(version.metrics["holdout_image_ids"])
    assert custom["excluded_training_images"] == version.n_train
    assert version.val_accuracy == stored and "left out because" in out.getvalue()
