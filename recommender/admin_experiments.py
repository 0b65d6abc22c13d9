"""A/B experiments in the admin: the dashboard's experiment panel (start one, follow both arms,
promote or drop the candidate) and the list of past experiments with their results; and the
shoppers' clicks per version beside the offline metrics.

Starting and ending an experiment need ``recommender.run_experiment`` and
``recommender.activate_modelversion`` (ending one activates or retires a version); reading needs
the view permission. Each button calls one service (recommender.services.experiments)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.html import format_html

from recommender.models import Experiment, ModelVersion
from recommender.selectors.events import version_panel_stats
from recommender.selectors.experiments import CANDIDATE_STATUSES, experiment_results
from recommender.services.experiments import experiment_end, experiment_start

RUN = ("recommender.run_experiment", "recommender.activate_modelversion")
SPLITS = (0.1, 0.2, 0.5)  # the candidate's share of visitors offered by the form


def rate_text(rate: dict) -> str:
    """"4.2% (3.8-4.7%)": the CTR with its 95% interval, or a dash with no views."""
    if not rate["views"]:
        return "–"
    return f"{100 * rate['ctr']:.1f}% ({100 * rate['ctr_low']:.1f}–{100 * rate['ctr_high']:.1f}%)"


def _row(version, stats) -> dict:
    return {"version": version, "stats": stats, "ctr": rate_text(stats),
            "per_1000": "–" if stats["per_1000"] is None else f"{stats['per_1000']:.1f}",
            "coverage_shown": f"{100 * stats['coverage_shown']:.1f}%",
            "coverage_lists": "–" if stats["coverage_lists"] is None else f"{100 * stats['coverage_lists']:.1f}%",
            "precision_at_6": (version.metrics or {}).get("precision_at_6")}


def clicks_per_version(*, limit: int = 8) -> list[dict]:
    """The dashboard's table: the active and ready versions and the latest others that were shown."""
    versions = list(ModelVersion.objects.filter(status__in=["active", "ready", "retired"]).defer(
        "history", "hyperparameters").order_by("-id")[:limit])
    stats = version_panel_stats(version_ids=[v.pk for v in versions])
    return [_row(v, stats[v.pk]) for v in versions if v.status != "retired" or stats[v.pk]["views"]]


def experiment_context(request) -> dict:
    """The dashboard's experiment panel: the running experiment and its results, or the start form."""
    running = Experiment.objects.select_related("control", "candidate").filter(status="running").first()
    results = experiment_results(experiment=running) if running else None
    return {
        "experiment": running,
        "experiment_results": results,
        "experiment_rates": {arm: rate_text(results[arm]) for arm in ("a", "b")} if results else None,
        "candidates": list(ModelVersion.objects.filter(status__in=CANDIDATE_STATUSES).exclude(artifacts={})
                           .order_by("-id").values_list("pk", flat=True)[:20]),
        "splits": [(s, f"{s:.0%}") for s in SPLITS],
        "can_experiment": request.user.has_perms(RUN),
        "clicks_per_version": clicks_per_version(),
    }


def _post_with(request, permissions):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if not request.user.has_perms(permissions):
        raise PermissionDenied
    return None


def _dashboard():
    return HttpResponseRedirect(reverse("admin:recommender_modelversion_changelist") + "#experiment")


def experiment_start_view(model_admin, request):
    refused = _post_with(request, RUN)
    if refused:
        return refused
    try:
        candidate = ModelVersion.objects.get(pk=int(request.POST.get("candidate", "")))
        split = float(request.POST.get("split", ""))
        experiment = experiment_start(candidate=candidate, split=split, started_by=request.user.get_username())
    except (ValueError, ModelVersion.DoesNotExist):
        model_admin.message_user(request, "Choose a ready candidate and a share of visitors.", messages.ERROR)
    except ValidationError as exc:
        model_admin.message_user(request, " ".join(exc.messages), messages.ERROR)
    else:
        model_admin.message_user(
            request, f"Experiment {experiment.pk} started: v{experiment.candidate_id} answers {experiment.split:.0%} "
                     f"of visitors, v{experiment.control_id} the others.", messages.SUCCESS)
    return _dashboard()


def experiment_end_view(model_admin, request, experiment_id):
    refused = _post_with(request, RUN)
    if refused:
        return refused
    experiment = get_object_or_404(Experiment, pk=experiment_id)
    promote = request.POST.get("end") == "promote"
    try:
        experiment = experiment_end(experiment=experiment, promote=promote)
    except ValidationError as exc:
        model_admin.message_user(request, " ".join(exc.messages), messages.ERROR)
    else:
        done = (f"v{experiment.candidate_id} promoted: it now serves every visitor." if promote
                else f"v{experiment.candidate_id} dropped (retired); v{experiment.control_id} serves every visitor.")
        model_admin.message_user(request, f"Experiment {experiment.pk} ended. {done}", messages.SUCCESS)
    return _dashboard()


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    """Past and running experiments, read-only: they are started and ended from the dashboard."""

    list_display = ["name", "split_text", "status", "outcome", "arm_a", "arm_b", "verdict", "started_at", "ended_at"]
    list_filter = ["status", "outcome"]
    actions = None

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def _results(self, obj):
        # One aggregate query per row and column set; the list holds tens of experiments.
        if not hasattr(obj, "_lk_results"):
            obj._lk_results = experiment_results(experiment=obj)
        return obj._lk_results

    @admin.display(description="Experiment", ordering="id")
    def name(self, obj):
        return f"#{obj.pk}: v{obj.control_id} (A) vs v{obj.candidate_id} (B)"

    @admin.display(description="B's share")
    def split_text(self, obj):
        return f"{obj.split:.0%}"

    @admin.display(description="A: views · CTR (95% CI)")
    def arm_a(self, obj):
        r = self._results(obj)["a"]
        return format_html("{} · {}", r["views"], rate_text(r))

    @admin.display(description="B: views · CTR (95% CI)")
    def arm_b(self, obj):
        r = self._results(obj)["b"]
        return format_html("{} · {}", r["views"], rate_text(r))

    @admin.display(description="Verdict")
    def verdict(self, obj):
        return self._results(obj)["verdict"]
