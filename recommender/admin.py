"""The recommender dashboard: model versions, their metrics and curves, and the buttons that
train, activate and retire them (each button calls one service; drawing is recommender.presentation).

The buttons need ModelVersion's own permissions, as the API (recommender/api/views.py):
``recommender.train_modelversion`` to train, ``recommender.activate_modelversion`` to activate or
retire; a user without them does not see the buttons and is refused (403) if they post anyway."""

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

from recommender import admin_experiments, presentation
from recommender.models import ModelVersion
from recommender.selectors.ingestion import ingestion_status
from recommender.selectors.versions import (active_version, training_kind, training_readiness, training_status,
                                            training_version)
from recommender.services.training import model_version_start
from recommender.services.versions import model_version_activate, model_version_retire

TRAIN = "recommender.train_modelversion"
ACTIVATE = "recommender.activate_modelversion"  # also retire: both change which version serves


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["version", "status_badge", "buttons", "kind_short", "backbone_and_weights", "accuracy", "precision_at_6",
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

    def get_list_display(self, request):
        shown = super().get_list_display(request)
        return shown if request.user.has_perm(ACTIVATE) else [name for name in shown if name != "buttons"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("history", "hyperparameters")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("train/", wrap(self.train_view), name="recommender_modelversion_train"),
            path("experiment/start/", wrap(self.experiment_start_view), name="recommender_experiment_start"),
            path("experiment/<int:experiment_id>/end/", wrap(self.experiment_end_view),
                 name="recommender_experiment_end"),
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
        return presentation.status_badge_html(obj)  # a running training's progress is in the live panel above

    @admin.display(description="Backbone · weights", ordering="backbone")
    def backbone_and_weights(self, obj):
        if obj.uses_random_weights:
            weights = format_html('<span class="lk-warn" title="{}">random weights</span>',
                                  "Seeded random backbone weights: demo quality only.")
        else:
            weights = obj.weights
        return format_html('<code>{}</code><span class="lk-small">{}</span>', obj.backbone, weights)

    @admin.display(description="Kind", ordering="kind")
    def kind_short(self, obj):
        return format_html('<span title="{}">{}</span>', obj.kind_reason or obj.get_kind_display(),
                           "backbone + head" if obj.trains_backbone else "head")

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
        training = training_status()
        ingestion = ingestion_status()
        return {"training_status": training, "training_display": presentation.training_display(training),
                "ingestion": ingestion, "ingestion_display": presentation.ingestion_display(ingestion),
                "readiness": training_readiness(), **self._next_kind()}

    def _next_kind(self):
        kind, why = training_kind()
        return {"next_kind_label": ModelVersion.Kind(kind).label, "next_kind_reason": why}

    def changelist_view(self, request, extra_context=None):
        active = active_version()
        context = {**self._progress_context(), **admin_experiments.experiment_context(request), "active": active,
                   "active_accuracy": f"{100 * active.val_accuracy:.1f}%" if active and active.val_accuracy is not None
                   else "", "can_train": request.user.has_perm(TRAIN), **(extra_context or {})}
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
            "badge": presentation.status_badge_html(version),
            "can_change": request.user.has_perm(ACTIVATE),  # the template's activate/retire tools
            "can_activate": version.status in (ModelVersion.Status.READY, ModelVersion.Status.RETIRED)
            and bool(version.artifacts),
            "can_retire": version.status in (ModelVersion.Status.ACTIVE, ModelVersion.Status.READY),
            "charts": presentation.training_charts(version.history),
            "cards": presentation.metric_cards(metrics),
            "per_class": presentation.per_class_rows(metrics),
            "confusion": presentation.confusion_table(metrics),
            "hyperparameters": sorted((version.hyperparameters or {}).items()),
            "training_seconds": metrics.get("training_seconds"),
            "holdout_count": len(metrics.get("holdout_image_ids") or []),
            "pruned": metrics.get("embeddings_pruned"),
            "raw_pixels": presentation.raw_pixels_comparison(metrics),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/recommender/modelversion/detail.html", context)

    # ------------------------------------------------------------------ buttons
    def _post_only(self, request, permission):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(permission):
            raise PermissionDenied
        return None

    def _back(self, request, default):
        target = request.POST.get("next") or request.META.get("HTTP_REFERER") or default
        if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                               require_https=request.is_secure()):
            target = default
        return HttpResponseRedirect(target)

    def train_view(self, request):
        refused = self._post_only(request, TRAIN)
        if refused:
            return refused
        changelist = reverse("admin:recommender_modelversion_changelist")
        running = training_version()
        if running:
            self.message_user(request, f"Version v{running.pk} is already training; one training runs at a "
                              "time.", messages.WARNING)
            return HttpResponseRedirect(changelist)
        readiness = training_readiness()
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

    def _transition(self, request, object_id, service, success):
        """POST-only button: call ``service(version=...)``, say ``success(version)`` or why not, go back."""
        refused = self._post_only(request, ACTIVATE)
        if refused:
            return refused
        version = self._version_or_404(request, object_id)
        was_active = version.status == ModelVersion.Status.ACTIVE
        try:
            service(version=version)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        else:
            self.message_user(request, success(version, was_active), messages.SUCCESS)
        return self._back(request, reverse("admin:recommender_modelversion_change", args=[version.pk]))

    def activate_view(self, request, object_id):
        def success(version, was_active):
            pruned = (" Its embeddings had been pruned (it was retired long ago): a worker is embedding the catalog "
                      "again, and its similar items fill in as it goes."
                      if "embeddings_pruned" in (version.metrics or {}) else "")
            return f"Version v{version.pk} is now active: similar items and search by photo use it.{pruned}"

        return self._transition(request, object_id, model_version_activate, success)

    def experiment_start_view(self, request):
        return admin_experiments.experiment_start_view(self, request)

    def experiment_end_view(self, request, experiment_id):
        return admin_experiments.experiment_end_view(self, request, experiment_id)

    def retire_view(self, request, object_id):
        def success(version, was_active):
            note = (" No version is active now: similar items fall back to raw image features until you activate "
                    "one." if was_active else "")
            return f"Version v{version.pk} is retired.{note}"

        return self._transition(request, object_id, model_version_retire, success)
