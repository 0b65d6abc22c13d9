"""The admin's list of catalog imports (catalog.import_runs): a running import's rows, then its
pictures, with a rate and the time left (live without reloading; complete without JavaScript),
and its per-row report. Registered by catalog.admin."""

from django.contrib import admin
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse

from catalog.import_runs import import_run_display, import_run_progress
from catalog.models import ImportRun

REPORT_LINES_SHOWN = 1000  # a 100,000-row report is kept whole but not rendered whole


@admin.register(ImportRun)
class ImportRunAdmin(admin.ModelAdmin):
    list_display = ["source", "origin", "status", "rows", "created", "updated", "images_added", "rows_invalid",
                    "started_by", "started_at"]
    list_filter = ["status", "origin"]
    search_fields = ["source"]
    list_select_related = ["started_by"]
    change_form_template = "admin/catalog/importrun/change_form.html"
    fields = ["source", "origin", "format", "status", "started_by", "started_at", "finished_at", "error"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False  # runs are recorded by the imports themselves

    def has_change_permission(self, request, obj=None):
        return False  # a record: viewed, never edited

    @admin.display(description="Rows")
    def rows(self, obj):
        return f"{obj.rows_done:,} / {obj.rows_total:,}"

    def get_urls(self):
        return [path("<int:pk>/progress/", self.admin_site.admin_view(self.progress_view),
                     name="catalog_importrun_progress"), *super().get_urls()]

    def progress_view(self, request, pk):
        """The bar's JSON (catalog/static/catalog/admin-progress.js polls it)."""
        if not self.has_view_permission(request):
            return JsonResponse({"detail": "forbidden"}, status=403)
        progress = import_run_progress(get_object_or_404(ImportRun.objects.defer("report"), pk=pk))
        return JsonResponse({**progress, "display": import_run_display(progress)})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, object_id)
        if run is None:  # the admin's own answer to an unknown or malformed id
            return super().change_view(request, object_id, form_url, extra_context)
        progress = import_run_progress(run)
        lines = run.report[:REPORT_LINES_SHOWN]
        extra = {"progress": progress, "display": import_run_display(progress), "report_lines": lines,
                 "report_hidden": len(run.report) - len(lines),
                 "progress_url": reverse("admin:catalog_importrun_progress", args=[run.pk])}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})
