"""Following an import (catalog.import_runs): its rows, then its pictures with a rate and the time
left, and its per-row report, from the command and in the admin."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from catalog import import_runs
from catalog.import_runs import import_run_display, import_run_progress
from catalog.models import ImportRun, ProductImage
from recommender.services.ingestion import images_process
from tests.catalog.test_importers import run, shop, write_csv  # noqa: F401 (shop: a fixture)
from tests.ui.data import fast_passwords  # noqa: F401 (autouse)

pytestmark = pytest.mark.django_db


@pytest.fixture
def imported(shop):  # noqa: F811
    csv_path = write_csv(shop, "sku,title,category,images\nS-1,Red,Shirts,images/a.png\n"
                               "S-2,Two,Shirts,images/b.png;images/c.jpg\nS-3,Bad,Shoes,images/nope.png\n")
    out, _ = run("import_catalog", str(csv_path))
    return ImportRun.objects.get(), out


def test_the_command_records_its_run_with_rows_report_and_products(imported):
    record, out = imported
    assert f"/admin/catalog/importrun/{record.pk}/change/" in out
    assert (record.status, record.origin, record.source) == ("done", "command", "catalog.csv")
    assert (record.rows_total, record.rows_done, record.rows_invalid, record.created, record.images_added) == (2, 2, 1, 2, 3)
    assert record.format.startswith("Lookalike catalog CSV")
    assert [(line["line"], line["ok"]) for line in record.report] == [(2, True), (3, True), (4, False)]
    assert "not found" in record.report[2]["message"]
    assert len(record.product_ids) == 2


def test_pictures_progress_follows_the_workers_to_done(imported):
    record, _ = imported
    waiting = import_run_progress(record)
    assert (waiting["state"], waiting["done"], waiting["total"], waiting["unit"]) == ("processing", 0, 3, "pictures")
    assert import_run_display(waiting)["detail"] == "Waiting for a worker…"
    images_process(image_ids=list(ProductImage.objects.values_list("id", flat=True)), token="t")
    done = import_run_progress(record)
    assert (done["state"], done["done"], done["percent"], done["counts"]["ready"]) == ("done", 3, 100.0, 3)
    assert import_run_display(done)["state"] == "done"


def test_a_running_import_shows_its_rate_and_time_left():
    now = timezone.now()
    record = ImportRun.objects.create(source="big.csv", origin="command", rows_total=1000, rows_done=400)
    ImportRun.objects.filter(pk=record.pk).update(started_at=now - timedelta(seconds=40))
    progress = import_run_progress(record, now=now)
    assert (progress["state"], progress["percent"]) == ("importing", 40.0)
    assert progress["rate"] == pytest.approx(10.0) and progress["eta_seconds"] == pytest.approx(60.0)
    shown = import_run_display(progress)
    assert shown["summary"] == "400 of 1,000 rows" and shown["detail"] == "10.0 rows/s · about 1 min 00 s left"


def test_an_import_that_fails_is_recorded_failed_with_its_error(shop, monkeypatch):  # noqa: F811
    def broken(*, rows, progress):
        progress(1)
        raise RuntimeError("the database went away")

    monkeypatch.setattr(import_runs, "catalog_import", broken)
    with pytest.raises(RuntimeError):
        run("import_catalog", str(write_csv(shop, "sku,title,category,images\nS-1,Red,Shirts,images/a.png\n")))
    record = ImportRun.objects.get()
    assert record.status == "failed" and "the database went away" in record.error and record.rows_done == 1
    assert import_run_progress(record)["state"] == "failed"


def test_the_admin_shows_the_bar_the_report_and_live_json(admin_client, imported):
    record, _ = imported
    page = admin_client.get(reverse("admin:catalog_importrun_change", args=[record.pk])).content.decode()
    assert 'id="import-progress"' in page and 'role="progressbar"' in page and "0 of 3 pictures" in page
    assert "skipped:" in page and "not found" in page  # the per-row report
    data = admin_client.get(reverse("admin:catalog_importrun_progress", args=[record.pk])).json()
    assert data["state"] == "processing" and data["display"]["summary"].startswith("0 of 3 pictures")
    listing = admin_client.get(reverse("admin:catalog_importrun_changelist")).content.decode()
    assert "catalog.csv" in listing and "2 / 2" in listing


def test_a_run_whose_process_died_reads_as_failed_after_a_while():
    now = timezone.now()
    record = ImportRun.objects.create(source="big.csv", origin="command", rows_total=1000, rows_done=400)
    ImportRun.objects.filter(pk=record.pk).update(updated_at=now - import_runs.STALLED - timedelta(seconds=1))
    progress = import_run_progress(record, now=now)
    assert progress["state"] == "failed" and "import the file again" in import_run_display(progress)["detail"]
