"""Reads of the ingestion backlog: counts by status, throughput and time left.

Computed from the status column (the truth about background work), so any number of staff pages
and health checks can poll it and a restarted web process loses nothing.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Min
from django.utils import timezone

from catalog.models import ProductImage

Status = ProductImage.Status

# Rate window of the ingestion backlog: long enough to smooth batches (a worker marks a whole
# chunk ready at once), short enough to follow a worker that was added or stopped.
RATE_WINDOW = timedelta(minutes=5)


def ingestion_counts() -> dict[str, int]:
    """Images by processing status: pending, processing, ready, failed (zeros included)."""
    counts = dict(ProductImage.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    return {status.value: counts.get(status.value, 0) for status in Status}


def ingestion_backlog() -> int:
    """Images waiting for a worker or being processed."""
    return ProductImage.objects.filter(status__in=[Status.PENDING, Status.PROCESSING]).count()


def ingestion_status(*, now=None, window: timedelta = RATE_WINDOW) -> dict:
    """Backlog counts, throughput over the last ``window`` and the time left at that pace.

    Throughput counts images that *finished* (ready or failed) in the window, over the time from
    the first of them to now: a burst that started a minute ago is not diluted over five minutes,
    and a worker that stopped makes the rate fall off instead of freezing at its last value."""
    now = now or timezone.now()
    counts = ingestion_counts()
    recent = ProductImage.objects.filter(status__in=[Status.READY, Status.FAILED],
                                         status_changed_at__gte=now - window).aggregate(
        n=Count("id"), first=Min("status_changed_at"))
    rate = None
    if recent["n"]:
        # At least a few seconds: one chunk marked ready a moment ago must not read as 1000/s.
        elapsed = max((now - recent["first"]).total_seconds(), 5.0)
        rate = recent["n"] / elapsed
    backlog = counts["pending"] + counts["processing"]
    eta = backlog / rate if rate and backlog else (0.0 if not backlog else None)
    total = sum(counts.values())
    return {
        **counts,
        "backlog": backlog,
        "total": total,
        "percent": round(100.0 * (total - backlog) / total, 1) if total else 100.0,
        "rate_per_second": None if rate is None else round(rate, 2),
        "eta_seconds": None if eta is None else round(eta, 1),
        "window_seconds": int(window.total_seconds()),
    }
