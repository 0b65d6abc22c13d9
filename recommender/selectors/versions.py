"""Reads of model versions: which one serves, a training's progress, whether the catalog can be
trained and whether it needs retraining."""

from __future__ import annotations

import pickle
from datetime import timedelta

from django.db.models import Count
from django.utils import timezone

from recommender import runtime
from recommender.backbone import BackboneSpec
from recommender.conf import config
from recommender.models import BackboneFeature, ModelVersion
from recommender.selectors.ingestion import ingestion_backlog

Phase = ModelVersion.Phase

# Where each training phase sits on one 0-100 bar (epochs are most of the time; embedding the
# catalog and evaluating follow).
PHASE_SPAN = {
    Phase.QUEUED: (0, 0),
    Phase.LOADING: (1, 3),
    Phase.TRAINING: (3, 78),
    Phase.SAVING: (78, 80),
    Phase.EXTRACTING: (80, 88),  # the backbone kind only
    Phase.EMBEDDING: (88, 92),
    Phase.NEIGHBOURS: (92, 95),
    Phase.EVALUATING: (95, 98),
    Phase.ACTIVATING: (98, 99),
    Phase.DONE: (100, 100),
}
PROGRESS_FIELDS = ("epoch", "epochs", "accuracy", "val_accuracy", "loss", "images_embedded", "images_extracted",
                   "images_total", "products_listed", "products_total")
# "auto" trains the backbone when a frozen-backbone version's P@6 on its validation split is not
# at least this much above raw pixels' on the same images (services.evaluation measures both).
RAW_PIXELS_MARGIN = 0.02


# The active version's row as last read by this process: (row stamp, pickled field values). Every
# product page and similar-items answer asks for the active version (the API twice): reading the
# whole row through the ORM, with its JSON metrics and history, cost 0.70 ms of CPU a call; the
# stamp and a fresh copy of the kept row 0.15 ms (unpickling the copy: 0.01 ms, copy.deepcopy:
# 0.25 ms). 2 cores, bench/web_load.py's catalog.
_ACTIVE_ROW: tuple[str, bytes] | None = None
_ACTIVE_FIELDS = tuple(f.attname for f in ModelVersion._meta.concrete_fields)
# xmin (the transaction that wrote this row version) and ctid (where it lies) change on every write
# of the row, even twice in one transaction; with the id they name one version of one row.
_ROW_STAMP = "id::text || '/' || xmin::text || '/' || ctid::text"


# The active row's stamp as a scalar subquery, for a caller that reads it beside other rows in
# one query (recommender.selectors.answers: one round trip to PostgreSQL instead of two); its one
# parameter is the active status.
ACTIVE_STAMP_SQL = f"(SELECT {_ROW_STAMP} FROM {ModelVersion._meta.db_table} WHERE status = %s)"


def active_version() -> ModelVersion | None:
    """The version that serves, read afresh on every call (a version activated or changed a moment
    ago, by any process, with .save() or .update(), is what the next call returns): one small query
    for the active row's id and stamp; the row itself is read again only when the stamp changed.
    Each call returns its own instance (callers may change it)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {ACTIVE_STAMP_SQL}", [ModelVersion.Status.ACTIVE])
        row = cursor.fetchone()
    return active_version_at(stamp=row[0])


def active_version_at(*, stamp: str | None) -> ModelVersion | None:
    """The active version whose row stamp (ACTIVE_STAMP_SQL) the caller has just read, or None when
    there was none: no query while this process already holds that very row version."""
    global _ACTIVE_ROW
    from django.db import connection
    from django.db.models.expressions import RawSQL

    if stamp is None:
        return None
    memo = _ACTIVE_ROW
    if memo is None or memo[0] != stamp:
        values = (ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE)
                  .annotate(row_stamp=RawSQL(_ROW_STAMP, ())).values_list("row_stamp", *_ACTIVE_FIELDS).first())
        if values is None:  # retired in between
            return None
        memo = _ACTIVE_ROW = (values[0], pickle.dumps(values[1:], pickle.HIGHEST_PROTOCOL))
    return ModelVersion.from_db(connection.alias, _ACTIVE_FIELDS, pickle.loads(memo[1]))


def candidate_versions(*, limit: int = 3) -> list[ModelVersion]:
    """Ready versions (trained, not serving), newest first: what staff may compare or activate."""
    return list(ModelVersion.objects.filter(status=ModelVersion.Status.READY).order_by("-id")[:limit])


def training_version() -> ModelVersion | None:
    """The version training now (at most one: a partial unique constraint)."""
    return ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING).first()


def _round(value, digits=4):
    return None if value is None else round(float(value), digits)


def _percent(version: ModelVersion, phase: str, progress: dict) -> float | None:
    if version.status == ModelVersion.Status.FAILED:
        return None
    if version.status != ModelVersion.Status.TRAINING:
        return 100.0
    low, high = PHASE_SPAN.get(phase, (0, 0))
    fraction = 0.0
    if phase == Phase.TRAINING and progress.get("epochs"):
        fraction = min(1.0, (progress.get("epoch") or 0) / progress["epochs"])
    elif phase == Phase.EMBEDDING and progress.get("images_total"):
        fraction = min(1.0, (progress.get("images_embedded") or 0) / progress["images_total"])
    elif phase == Phase.EXTRACTING and progress.get("images_total"):
        fraction = min(1.0, (progress.get("images_extracted") or 0) / progress["images_total"])
    elif phase == Phase.NEIGHBOURS and progress.get("products_total"):
        fraction = min(1.0, (progress.get("products_listed") or 0) / progress["products_total"])
    return round(low + (high - low) * fraction, 1)


def version_progress(version: ModelVersion) -> dict:
    """A version's progress, whatever its state: the one representation behind the dashboard's bar,
    its JSON poller and the API's ``progress``."""
    progress = version.progress or {}
    running = version.status == ModelVersion.Status.TRAINING
    phase = progress.get("phase") or (Phase.QUEUED.value if running else "")
    label = Phase(phase).label if phase in Phase.values else (phase.capitalize() if phase
                                                               else version.get_status_display())
    eta = progress.get("eta_seconds") if running else None  # the ETA of the current phase
    return {
        "id": version.pk,
        "status": version.status,
        "running": running,
        "phase": phase,
        "phase_label": label,
        "percent": _percent(version, phase, progress),
        **{key: progress.get(key) for key in PROGRESS_FIELDS},
        **{key: _round(progress.get(key)) for key in ("accuracy", "val_accuracy", "loss")},
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


def serving_backbone(active: ModelVersion | None = None) -> tuple[BackboneSpec, str]:
    """(spec, identity) of the backbone that new images and photo searches are read with, from one
    read of the active version: its own when it is a trained one (its own, or the one its head was
    retrained on), else the configured one. The identity of a trained backbone is the one stored on
    its version: no weights file is read for it (a web host need not have one)."""
    active = active if active is not None else active_version()
    if active is not None and runtime.built_on_trained_backbone(active):
        return runtime.version_spec(active), active.backbone
    spec = runtime.backbone_spec()
    return spec, spec.identity


def serving_identity() -> str:
    return serving_backbone()[1]


def _categories(identity: str) -> set[str]:
    return set(BackboneFeature.objects.filter(backbone=identity, image__product__is_active=True)
               .values_list("image__product__category__name", flat=True).distinct())


def _raw_pixels_lift(version: ModelVersion) -> tuple[float, float] | None:
    # Both measured on the same queries and pool (services.evaluation.raw_pixels_evaluate).
    raw = (version.metrics or {}).get("raw_pixels") or {}
    mine = (raw.get("version") or {}).get("precision_at_6")
    if raw.get("precision_at_6") is None or mine is None:
        return None
    return mine, raw["precision_at_6"]


def _backbone_tried(active: ModelVersion) -> ModelVersion | None:
    """A backbone version started since ``active`` was activated (so one the gate refused, or that
    failed, or that trains now): "auto" does not start another for the same served version."""
    since = active.activated_at or active.created_at
    return ModelVersion.objects.filter(kind=ModelVersion.Kind.BACKBONE, created_at__gt=since).order_by("-pk").first()


def _auto_kind(active: ModelVersion | None) -> tuple[str, str]:
    Kind = ModelVersion.Kind
    if active is None:
        # Minutes instead of tens of minutes, and a version for the backbone's to beat at the gate
        # (a catalog too small to train a backbone from scratch keeps the frozen one).
        return Kind.HEAD, ("auto: a first version with the frozen backbone, to serve while the backbone "
                           "trains and to gate it against")
    if runtime.built_on_trained_backbone(active):
        new = _categories(active.backbone) - set(active.classes)
        if new:
            return Kind.BACKBONE, (f"auto: {len(new)} new categories that v{active.pk}'s trained backbone has not "
                                   "learnt; it is trained again, starting from its weights")
        return Kind.HEAD, f"auto: the head is retrained on v{active.pk}'s trained backbone (kept frozen)"
    if runtime.backbone_spec().is_random:
        return Kind.BACKBONE, ("auto: the backbone's weights are random, and frozen random features barely "
                               "beat raw pixels; the backbone is trained from scratch")
    lift = _raw_pixels_lift(active)
    if lift is not None and lift[0] < lift[1] + RAW_PIXELS_MARGIN:
        return Kind.BACKBONE, (f"auto: v{active.pk} (frozen backbone) does not beat raw pixels on its validation "
                               f"split (P@6 {lift[0]:.3f} vs {lift[1]:.3f}); the backbone is fine-tuned")
    return Kind.HEAD, ("auto: the frozen backbone beats raw pixels" if lift else
                       "auto: pretrained weights; the original method (frozen backbone, head only)")


def training_kind() -> tuple[str, str]:
    """(kind, why) of the next training: RECOMMENDER_TRAINING, or the choice of "auto"."""
    mode = config().training
    if mode != "auto":
        return mode, f"RECOMMENDER_TRAINING={mode}"
    active = active_version()
    kind, why = _auto_kind(active)
    tried = _backbone_tried(active) if kind == ModelVersion.Kind.BACKBONE else None
    if tried is not None:  # never a loop of backbone trainings the gate refuses
        return ModelVersion.Kind.HEAD, (f"auto: backbone version v{tried.pk} ({tried.status}) was already tried "
                                        f"for v{active.pk}; the head is retrained")
    return kind, why


def _backbone_reason(active: ModelVersion) -> str | None:
    """"auto" wants a trained backbone for the catalog the active version serves (and has not tried
    one since it was activated: training_kind)."""
    kind, why = training_kind()
    if kind != ModelVersion.Kind.BACKBONE or runtime.built_on_trained_backbone(active):
        return None
    return why


def training_blocker(*, images: int, categories: int, backbone: str) -> str:
    """Why a catalog of ``images`` images with features in ``categories`` categories cannot be
    trained ("" when it can): the one statement of the minimums, used by the dashboard's button,
    the training itself and the retraining check."""
    minimum = config().min_images_to_train
    if images < minimum:
        return (f"{images} images have features for the backbone {backbone}; at least {minimum} are needed "
                "(wait for the image processing, or add products).")
    if categories < 2:
        return "the processed images are all in one category; training needs at least two."
    return ""


def training_readiness() -> dict:
    """Whether a training started now has enough to learn from (checking first avoids a failed
    version for a predictable reason)."""
    identity = serving_identity()
    featured = BackboneFeature.objects.filter(backbone=identity, image__product__is_active=True)
    stats = featured.aggregate(images=Count("id"), categories=Count("image__product__category", distinct=True))
    reason = training_blocker(images=stats["images"], categories=stats["categories"], backbone=identity)
    return {"ready": not reason, "reason": reason, "images": stats["images"], "categories": stats["categories"],
            "minimum": config().min_images_to_train, "backbone": identity}


# A reason's list of names: at most this many characters, so that "automatic: new categories: "
# and the list fit a version's trigger (200 characters) with whole names.
REASON_LIST_CHARS = 170


def names_listed(names: list[str], *, budget: int) -> str:
    """``names`` comma-separated, as many whole ones as fit in ``budget`` characters, then how many
    were left out: "a, b and 37 more" (a long first name is kept whole; the caller bounds it)."""
    shown: list[str] = []
    for name in names:
        rest = len(names) - len(shown) - 1
        text = ", ".join([*shown, name]) + (f" and {rest} more" if rest else "")
        if shown and len(text) > budget:
            break
        shown.append(name)
    left = len(names) - len(shown)
    return ", ".join(shown) + (f" and {left} more" if left else "")


def retrain_reason() -> str | None:
    """Why the catalog needs a new version, or None."""
    readiness = training_readiness()
    total, backlog = readiness["images"], ingestion_backlog()
    if backlog > 0.1 * (total + backlog):
        return None  # let ingestion drain first: a model trained now would be stale at once
    if not readiness["ready"]:
        return None
    active = active_version()
    if active is None:
        return "no active version"
    identity = readiness["backbone"]
    if active.backbone != identity:
        return f"backbone changed from {active.backbone} to {identity}"
    new_categories = _categories(identity) - set(active.classes)
    if new_categories:
        return f"new categories: {names_listed(sorted(new_categories), budget=REASON_LIST_CHARS)}"
    share = (total - active.n_images) / total  # images newer than the version (see settings)
    if share >= config().retrain_new_share:
        return f"{share:.0%} of the images are newer than v{active.pk}"
    backbone = _backbone_reason(active)
    if backbone:
        return backbone
    max_age = config().retrain_max_age_hours
    if max_age and active.activated_at and timezone.now() - active.activated_at > timedelta(hours=max_age):
        return f"scheduled: v{active.pk} is older than {max_age} h"
    return None
