"""The recommender dashboard: model versions, their metrics and curves, and the buttons that
train, activate and retire them (each button calls one function of recommender.services)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe

from recommender import progress
from recommender.models import ModelVersion

STATUS_COLOURS = {"training": "#1570ef", "ready": "#475467", "active": "#067647", "failed": "#b42318",
                  "retired": "#98a2b3"}


def status_badge_html(version: ModelVersion):
    return format_html('<span class="lk-badge" style="--badge:{}">{}</span>',
                       STATUS_COLOURS.get(version.status, "#475467"), version.get_status_display())


# --------------------------------------------------------------------------- charts


def _nice_step(span: float, target: int = 5) -> float:
    import math

    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def line_chart(*, title: str, series, y_min=None, y_max=None, percent=False, width=520, height=240) -> dict | None:
    """Coordinates for an inline-SVG line chart of per-epoch values (drawn by a template).

    ``series``: [(label, values, css class)]. Returns None when there is nothing to draw."""
    series = [(label, [float(v) for v in values], cls) for label, values, cls in series if values]
    if not series:
        return None
    left, right, top, bottom = 48, 12, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(values) for _, values, _ in series)
    values = [v for _, vs, _ in series for v in vs]
    low = min(values) if y_min is None else y_min
    high = max(values) if y_max is None else y_max
    if high - low < 1e-9:
        high = low + 1
    step = _nice_step(high - low, 4)
    if y_max is None:
        high = step * -(-high // step)
    if y_min is None:
        low = step * (low // step)

    def x(i):
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v):
        return top + plot_h * (1 - (v - low) / (high - low))

    lines = []
    for label, vs, cls in series:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vs))
        last = vs[-1]
        lines.append({"label": label, "cls": cls, "points": points, "end_x": f"{x(len(vs) - 1):.1f}",
                      "end_y": f"{y(last):.1f}", "last": f"{100 * last:.1f}%" if percent else f"{last:.3f}"})
    yticks = []
    tick = low
    while tick <= high + 1e-9:
        yticks.append({"y": f"{y(tick):.1f}", "label": f"{100 * tick:.0f}%" if percent else f"{tick:g}"})
        tick += step
    epoch_step = max(1, int(_nice_step(max(n - 1, 1), 5)))
    xticks = [{"x": f"{x(i):.1f}", "label": str(i + 1)} for i in range(0, n, epoch_step)]
    if (n - 1) % epoch_step:
        xticks.append({"x": f"{x(n - 1):.1f}", "label": str(n)})
    return {"title": title, "width": width, "height": height, "left": left, "top": top, "right": left + plot_w,
            "bottom": top + plot_h, "lines": lines, "yticks": yticks, "xticks": xticks, "epochs": n}


def training_charts(history: dict) -> list[dict]:
    history = history or {}
    charts = [
        line_chart(title="Accuracy", percent=True, y_min=0, y_max=1,
                   series=[("training", history.get("accuracy"), "train"),
                           ("validation", history.get("val_accuracy"), "val")]),
        line_chart(title="Loss", y_min=0,
                   series=[("training", history.get("loss"), "train"),
                           ("validation", history.get("val_loss"), "val")]),
    ]
    return [c for c in charts if c]


def confusion_table(metrics: dict) -> dict | None:
    """Rows of the confusion matrix with a shade per cell (share of the true class's row)."""
    matrix, classes = metrics.get("confusion_matrix"), metrics.get("classes")
    if not matrix or not classes:
        return None
    rows = []
    for i, (name, counts) in enumerate(zip(classes, matrix)):
        total = sum(counts)
        cells = []
        for j, count in enumerate(counts):
            share = count / total if total else 0.0
            cells.append({"count": count, "share": share, "diagonal": i == j, "dark": share > 0.55,
                          "alpha": f"{0.08 + 0.82 * share:.2f}" if count else "0"})
        rows.append({"name": name, "total": total, "cells": cells})
    return {"classes": classes, "rows": rows}


def per_class_rows(metrics: dict) -> list[dict]:
    per_class = metrics.get("per_class") or {}
    return [{"name": name, "precision": values.get("precision"), "recall": values.get("recall"),
             "support": values.get("support")} for name, values in per_class.items()]


METRIC_LABELS = [
    ("accuracy", "Accuracy", "Share of held-out images whose category the head predicts correctly."),
    ("precision_at_1", "Precision@1", "Share of held-out images whose nearest neighbour has the same category."),
    ("precision_at_6", "Precision@6", "Share of the 6 nearest neighbours with the query's category."),
    ("map_at_6", "mAP@6", "Mean average precision of the 6 nearest neighbours."),
    ("hnsw_recall_at_6", "HNSW recall@6", "Share of the exact 6 nearest neighbours the pgvector index returns."),
]


def metric_cards(metrics: dict) -> list[dict]:
    return [{"key": key, "label": label, "help": help_text, "value": metrics[key],
             "display": f"{100 * metrics[key]:.1f}%"}
            for key, label, help_text in METRIC_LABELS if metrics.get(key) is not None]


# --------------------------------------------------------------------------- admin


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["version", "status_badge", "buttons", "backbone_and_weights", "accuracy", "precision_at_6",
                    "n_images", "trigger_short", "created_at"]
    list_display_links = ["version"]
    # No filter sidebar: a catalog has tens of versions, and the table needs the width.
    search_fields = ["trigger", "backbone", "error"]
    change_list_template = "admin/recommender/modelversion/change_list.html"
    actions = None
    list_per_page = 30

    # Versions are made by training (the button), never typed in; they are kept for history.
    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).defer("history", "hyperparameters")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("train/", wrap(self.train_view), name="recommender_modelversion_train"),
            path("<path:object_id>/activate/", wrap(self.activate_view), name="recommender_modelversion_activate"),
            path("<path:object_id>/retire/", wrap(self.retire_view), name="recommender_modelversion_retire"),
            *super().get_urls(),
        ]

    # ------------------------------------------------------------------ columns
    @admin.display(description="Version", ordering="id")
    def version(self, obj):
        return f"v{obj.pk}"

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj):
        return status_badge_html(obj)  # a running training's progress is in the live panel above

    @admin.display(description="Backbone · weights", ordering="backbone")
    def backbone_and_weights(self, obj):
        if obj.uses_random_weights:
            weights = format_html('<span class="lk-warn" title="{}">random weights</span>',
                                  "Seeded random backbone weights: demo quality only.")
        else:
            weights = obj.weights
        return format_html('<code>{}</code><span class="lk-small">{}</span>', obj.backbone, weights)

    @admin.display(description="Trigger", ordering="trigger")
    def trigger_short(self, obj):
        text = obj.trigger or "–"
        return format_html('<span title="{}">{}</span>', text, text if len(text) <= 48 else text[:47] + "…")

    @admin.display(description="Val. accuracy", ordering="val_accuracy")
    def accuracy(self, obj):
        return "–" if obj.val_accuracy is None else f"{100 * obj.val_accuracy:.1f}%"

    @admin.display(description="Precision@6")
    def precision_at_6(self, obj):
        value = (obj.metrics or {}).get("precision_at_6")
        return "–" if value is None else f"{100 * value:.1f}%"

    @admin.display(description="")
    def buttons(self, obj):
        # Buttons that submit the changelist's own form (it carries the CSRF token) to another URL:
        # a form cannot be nested in the changelist form.
        out = []
        if obj.status in (ModelVersion.Status.READY, ModelVersion.Status.RETIRED) and obj.artifacts:
            out.append(format_html('<button type="submit" class="lk-button" formmethod="post" formaction="{}">'
                                   "Activate</button>",
                                   reverse("admin:recommender_modelversion_activate", args=[obj.pk])))
        if obj.status in (ModelVersion.Status.ACTIVE, ModelVersion.Status.READY):
            out.append(format_html('<button type="submit" class="lk-button lk-secondary" formmethod="post" '
                                   'formaction="{}">Retire</button>',
                                   reverse("admin:recommender_modelversion_retire", args=[obj.pk])))
        # An empty cell, not the admin's "-" placeholder.
        return format_html("".join(["{}"] * len(out)), *out) if out else mark_safe("<span></span>")

    # ------------------------------------------------------------------ pages
    def _progress_context(self):
        training = progress.training_status()
        ingestion = progress.ingestion_status()
        return {"training_status": training, "training_display": progress.training_display(training),
                "ingestion": ingestion, "ingestion_display": progress.ingestion_display(ingestion),
                "readiness": progress.training_readiness()}

    def changelist_view(self, request, extra_context=None):
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).defer("history").first()
        context = {**self._progress_context(), "active": active,
                   "active_accuracy": f"{100 * active.val_accuracy:.1f}%" if active and active.val_accuracy is not None
                   else "", "can_train": self.has_change_permission(request), **(extra_context or {})}
        context["title"] = "Recommender dashboard"
        return super().changelist_view(request, context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = self.get_object(request, unquote(object_id))
        if version is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_or_change_permission(request, version):
            raise PermissionDenied
        metrics = version.metrics or {}
        context = {
            **self.admin_site.each_context(request),
            **self._progress_context(),
            "opts": self.opts,
            "title": f"Model version v{version.pk}",
            "version": version,
            "badge": status_badge_html(version),
            "can_change": self.has_change_permission(request, version),
            "can_activate": version.status in (ModelVersion.Status.READY, ModelVersion.Status.RETIRED)
            and bool(version.artifacts),
            "can_retire": version.status in (ModelVersion.Status.ACTIVE, ModelVersion.Status.READY),
            "charts": training_charts(version.history),
            "cards": metric_cards(metrics),
            "per_class": per_class_rows(metrics),
            "confusion": confusion_table(metrics),
            "hyperparameters": sorted((version.hyperparameters or {}).items()),
            "training_seconds": metrics.get("training_seconds"),
            "holdout_count": len(metrics.get("holdout_image_ids") or []),
            "pruned": metrics.get("embeddings_pruned"),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/recommender/modelversion/detail.html", context)

    # ------------------------------------------------------------------ buttons
    def _post_only(self, request):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        return None

    def _back(self, request, default):
        target = request.POST.get("next") or request.META.get("HTTP_REFERER") or default
        if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                               require_https=request.is_secure()):
            target = default
        return HttpResponseRedirect(target)

    def train_view(self, request):
        from recommender.services import model_version_start

        refused = self._post_only(request)
        if refused:
            return refused
        changelist = reverse("admin:recommender_modelversion_changelist")
        running = ModelVersion.objects.filter(status=ModelVersion.Status.TRAINING).first()
        if running:
            self.message_user(request, f"Version v{running.pk} is already training; one training runs at a "
                              "time.", messages.WARNING)
            return HttpResponseRedirect(changelist)
        readiness = progress.training_readiness()
        if not readiness["ready"]:
            self.message_user(request, f"Not enough to train on yet: {readiness['reason']}", messages.ERROR)
            return HttpResponseRedirect(changelist)
        version = model_version_start(trigger=f"manual ({request.user.get_username()})")
        self.message_user(request, f"Training of v{version.pk} queued; its progress shows below.", messages.SUCCESS)
        return HttpResponseRedirect(changelist)

    def _version_or_404(self, request, object_id):
        from django.http import Http404

        version = self.get_object(request, unquote(object_id))
        if version is None:
            raise Http404("No such model version.")
        return version

    def activate_view(self, request, object_id):
        from recommender.services import model_version_activate

        refused = self._post_only(request)
        if refused:
            return refused
        version = self._version_or_404(request, object_id)
        try:
            model_version_activate(version=version)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            pruned = (" Its embeddings had been pruned (it was retired long ago): a worker is embedding the catalog "
                      "again, and its similar items fill in as it goes."
                      if "embeddings_pruned" in (version.metrics or {}) else "")
            self.message_user(request, f"Version v{version.pk} is now active: similar items and search by photo "
                              f"use it.{pruned}", messages.SUCCESS)
        return self._back(request, reverse("admin:recommender_modelversion_change", args=[version.pk]))

    def retire_view(self, request, object_id):
        from recommender.services import model_version_retire

        refused = self._post_only(request)
        if refused:
            return refused
        version = self._version_or_404(request, object_id)
        was_active = version.status == ModelVersion.Status.ACTIVE
        try:
            model_version_retire(version=version)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            note = (" No version is active now: similar items fall back to raw image features until you activate "
                    "one." if was_active else "")
            self.message_user(request, f"Version v{version.pk} is retired.{note}", messages.SUCCESS)
        return self._back(request, reverse("admin:recommender_modelversion_change", args=[version.pk]))
