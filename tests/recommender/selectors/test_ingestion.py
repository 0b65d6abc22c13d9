"""Reads of the ingestion backlog (recommender.selectors.ingestion): counts by status, the rate of
recently finished images and the time left at that pace."""

import pytest
from django.utils import timezone

from catalog.models import ProductImage
from recommender.selectors.ingestion import ingestion_backlog, ingestion_counts, ingestion_status
from tests.factories import ProductImageFactory
from tests.recommender.helpers import ingestion_backlog_with_recent_work

pytestmark = pytest.mark.django_db


def test_counts_name_every_status_and_the_backlog_is_what_waits():
    assert ingestion_counts() == {"pending": 0, "processing": 0, "ready": 0, "failed": 0}
    assert ingestion_backlog() == 0
    ingestion_backlog_with_recent_work(timezone.now())
    assert ingestion_counts() == {"pending": 4, "processing": 1, "ready": 6, "failed": 1}
    assert ingestion_backlog() == 5


def test_ingestion_status_counts_rate_and_eta():
    now = timezone.now()
    ingestion_backlog_with_recent_work(now)
    status = ingestion_status(now=now)
    assert {k: status[k] for k in ("pending", "processing", "ready", "failed", "backlog", "total")} == {
        "pending": 4, "processing": 1, "ready": 6, "failed": 1, "backlog": 5, "total": 12}
    assert status["rate_per_second"] == pytest.approx(0.1)  # 6 images in 60 s
    assert status["eta_seconds"] == pytest.approx(50)
    assert status["percent"] == pytest.approx(100 * 7 / 12, abs=0.1)


def test_ingestion_without_recent_work_has_no_rate():
    image = ProductImageFactory()
    status = ingestion_status()
    assert status["backlog"] == 1 and status["rate_per_second"] is None and status["eta_seconds"] is None
    ProductImage.objects.filter(pk=image.pk).update(status="ready")
    status = ingestion_status()
    assert status["eta_seconds"] == 0 and status["backlog"] == 0
