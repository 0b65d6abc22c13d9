"""Reads for the live progress bars of the admin: a running training and the ingestion backlog.

Both are computed from the status columns (the truth about background work), so any number of
staff pages can poll them and a restarted web process loses nothing.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Min
from django.utils import timezone

from catalog.models import ProductImage
from recommender.models import ModelVersion

# Where each training phase sits on one 0-100 bar (epochs are most of the time; embedding the
# catalog and evaluating follow). The phases are the ones recommender.services reports.
PHASE_SPAN = {
    "queued": (0, 0),
    "loading features": (1, 3),
    "training": (3, 80),
    "saving": (80, 82),
    "embedding": (82, 94),
    "evaluating": (94, 98),
    "activating": (98, 99),
    "done": (100, 100),
}
PHASE_LABELS = {
    "queued": "Waiting for a worker",
    "loading features": "Loading image features",
    "training": "Training",
    "saving": "Saving the model",
    "embedding": "Embedding the catalog",
    "evaluating": "Evaluating",
    "activating": "Activating",
    "done": "Done",
    "failed": "Failed",
}

# Rate window of the ingestion backlog: long enough to smooth batches (a worker marks a whole
# chunk ready at once), short enough to follow a worker that was added or stopped.
RATE_WINDOW = timedelta(minutes=5)


def _round(value, digits=4):
    return None if value is None else round(float(value), digits)


def version_progress(version: ModelVersion) -> dict:
    """What a progress bar needs about one version, whatever its state."""
    progress = version.progress or {}
    phase = progress.get("phase") or ("queued" if version.status == ModelVersion.Status.TRAINING else "")
    if version.status == ModelVersion.Status.TRAINING:
        low, high = PHASE_SPAN.get(phase, (0, 0))
        fraction = 0.0
        if phase == "training" and progress.get("epochs"):
            fraction = min(1.0, (progress.get("epoch") or 0) / progress["epochs"])
        elif phase == "embedding" and progress.get("images_total"):
            fraction = min(1.0, (progress.get("images_embedded") or 0) / progress["images_total"])
        percent = low + (high - low) * fraction
    elif version.status == ModelVersion.Status.FAILED:
        percent = None
    else:
        percent = 100.0
    # The services' ETA is for the current phase (the epochs, then embedding the catalog).
    eta = progress.get("eta_seconds") if version.status == ModelVersion.Status.TRAINING else None
    return {
        "id": version.pk,
        "status": version.status,
        "running": version.status == ModelVersion.Status.TRAINING,
        "phase": phase,
        "phase_label": PHASE_LABELS.get(phase, phase.capitalize() if phase else version.get_status_display()),
        "percent": None if percent is None else round(percent, 1),
        "epoch": progress.get("epoch"),
        "epochs": progress.get("epochs"),
        "accuracy": _round(progress.get("accuracy")),
        "val_accuracy": _round(progress.get("val_accuracy")),
        "loss": _round(progress.get("loss")),
        "images_embedded": progress.get("images_embedded"),
        "images_total": progress.get("images_total"),
        "eta_seconds": None if eta is None else round(float(eta), 1),
        "error": version.error[:500] if version.status == ModelVersion.Status.FAILED else "",
        "heartbeat_at": version.heartbeat_at.isoformat() if version.heartbeat_at else None,
    }


def training_status() -> dict:
    """The running training (or None) and the most recent version, for the dashboard's bar."""
    running = ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING).defer("history", "metrics").first()
    latest = running or ModelVersion.objects.defer("history", "metrics").order_by("-id").first()
    active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).values_list("id", flat=True).first()
    return {
        "training": version_progress(running) if running else None,
        "latest": version_progress(latest) if latest else None,
        "active_id": active,
    }


def ingestion_status(*, now=None, window: timedelta = RATE_WINDOW) -> dict:
    """Backlog counts, throughput over the last ``window`` and the time left at that pace.

    Throughput counts images that *finished* (ready or failed) in the window, over the time from
    the first of them to now: a burst that started a minute ago is not diluted over five minutes,
    and a worker that stopped makes the rate fall off instead of freezing at its last value."""
    now = now or timezone.now()
    counts = dict(ProductImage.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    counts = {s.value: counts.get(s.value, 0) for s in ProductImage.Status}
    recent = ProductImage.objects.filter(
        status__in=[ProductImage.Status.READY, ProductImage.Status.FAILED],
        status_changed_at__gte=now - window).aggregate(n=Count("id"), first=Min("status_changed_at"))
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


# --------------------------------------------------------------------------- display text
# One wording for the page the server renders and for the script that redraws it.


def duration_text(seconds) -> str:
    if seconds is None:
        return ""
    seconds = max(0, round(float(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {rest} s" if rest else "")
    return f"{minutes // 60} h {minutes % 60} min"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _training_detail(t: dict) -> str:
    parts = []
    if t["phase"] == "training" and t["epochs"]:
        parts.append(f"Epoch {t['epoch'] or 0} of {t['epochs']}")
        if t["accuracy"] is not None:
            parts.append(f"accuracy {_pct(t['accuracy'])}")
        if t["val_accuracy"] is not None:
            parts.append(f"validation {_pct(t['val_accuracy'])}")
    elif t["phase"] == "embedding" and t["images_total"]:
        parts.append(f"{t['images_embedded'] or 0:,} of {t['images_total']:,} images embedded")
    if t["running"] and t["eta_seconds"] is not None:
        parts.append(f"about {duration_text(t['eta_seconds'])} left")
    return " · ".join(parts)


def training_display(status: dict) -> dict:
    running, latest = status["training"], status["latest"]
    if running:
        return {"title": f"Training v{running['id']}", "phase": running["phase_label"],
                "detail": _training_detail(running), "percent": running["percent"], "state": "running"}
    if latest:
        failed = latest["status"] == ModelVersion.Status.FAILED
        serving = f"Serving v{status['active_id']}." if status["active_id"] else "No active version."
        return {"title": f"Latest: v{latest['id']}",
                "phase": "Failed" if failed else ModelVersion.Status(latest["status"]).label,
                "detail": latest["error"] if failed else serving,
                "percent": latest["percent"], "state": latest["status"]}
    return {"title": "No model trained yet", "phase": "", "detail": "Train a first version when the images are "
            "processed.", "percent": 0, "state": ""}


def ingestion_display(status: dict) -> dict:
    if not status["backlog"]:
        total = status["total"]
        detail = f"All {total:,} image{'s' if total != 1 else ''} processed." if total else "No images yet."
    elif status["rate_per_second"]:
        detail = (f"{status['rate_per_second']:.1f} images/s · about "
                  f"{duration_text(status['eta_seconds'])} left")
    else:
        detail = "Waiting for a worker…"
    summary = (f"{status['backlog']:,} waiting · {status['ready']:,} ready · {status['failed']:,} failed")
    return {"title": "Image processing", "summary": summary, "detail": detail, "percent": status["percent"],
            "state": "running" if status["backlog"] else "done"}


def training_readiness() -> dict:
    """Whether a training started now has enough to learn from (the service enforces the same
    minimums; checking first avoids a failed version for a predictable reason)."""
    from django.conf import settings

    from recommender.models import BackboneFeature
    from recommender.runtime import backbone_spec

    identity = backbone_spec().identity
    featured = BackboneFeature.objects.filter(backbone=identity, image__product__is_active=True)
    stats = featured.aggregate(images=Count("id"), categories=Count("image__product__category", distinct=True))
    minimum = settings.RECOMMENDER["MIN_IMAGES_TO_TRAIN"]
    reason = ""
    if stats["images"] < minimum:
        reason = (f"{stats['images']} images have features for the backbone {identity}; at least {minimum} "
                  "are needed (wait for the image processing, or add products).")
    elif stats["categories"] < 2:
        reason = "the processed images are all in one category; training needs at least two."
    return {"ready": not reason, "reason": reason, "images": stats["images"], "categories": stats["categories"],
            "minimum": minimum, "backbone": identity}
