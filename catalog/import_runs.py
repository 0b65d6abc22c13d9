"""A catalog import as staff follow it (ImportRun): its rows as they are written, then its pictures
as the workers process them, with a rate and the time left, and its per-row report.

The run's row is written outside the import's chunk transactions (``rows_done`` after each chunk
commits), so the admin shows a running import, by ``manage.py import_catalog`` or another staff
member, while it runs. The pictures' progress is read from the status columns, the truth about
background work: the images of the run's products added since it started (ProductImage.status),
and its downloads not done yet (ImageDownload.status). An import that raised is "failed" with the
error; the chunks written before it stay (catalog.importing: running the file again finishes it).
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, F, Min, Q
from django.utils import timezone

from catalog.importing import ImportSummary, catalog_import
from catalog.models import ImageDownload, ImportRun, Product, ProductImage

# The pictures' rate is measured over the images finished within this window (as the ingestion
# panel's: a worker added or stopped shows within minutes), and over at least MIN_SECONDS (one
# batch marked ready a moment ago must not read as 1,000 images/s).
RATE_WINDOW = timedelta(minutes=5)
MIN_SECONDS = 5.0
# A run still "importing" whose row has not moved for this long lost its process (a chunk of 200
# rows takes seconds; SIGKILL or a machine restart leaves no chance to say so).
STALLED = timedelta(minutes=15)
Image = ProductImage.Status
Download = ImageDownload.Status


def import_report(parsed) -> dict:
    """Per-row report of a parsed catalog: what each line does (create or update), or why it cannot."""
    skus = [row.sku for row in parsed.rows]
    existing = set(Product.objects.filter(sku__in=skus).values_list("sku", flat=True))
    lines = [{"line": row.line, "sku": row.sku, "title": row.title, "category": row.category, "price": str(row.price),
              "images": len(row.images) + len(row.urls), "ok": True,
              "outcome": "update" if row.sku in existing else "create"}
             for row in parsed.rows]
    lines += [{"line": e.line, "sku": e.sku, "ok": False, "message": e.message} for e in parsed.errors]
    lines.sort(key=lambda item: item["line"])
    return {"lines": lines, "valid": len(parsed.rows), "invalid": len(parsed.errors),
            "create": sum(1 for item in lines if item.get("outcome") == "create"),
            "update": sum(1 for item in lines if item.get("outcome") == "update"),
            "images": sum(item.get("images", 0) for item in lines)}


def import_run_start(*, source: str, origin: str, parsed, user=None) -> ImportRun:
    report = import_report(parsed)
    return ImportRun.objects.create(
        source=source[:255], origin=origin, format=parsed.layout.describe()[:500], rows_total=report["valid"],
        rows_invalid=report["invalid"], report=report["lines"], started_by=user if getattr(user, "pk", None) else None)


def catalog_import_recorded(*, parsed, source: str, origin: str, user=None, progress=None) -> tuple[ImportRun, ImportSummary]:
    """catalog.importing.catalog_import of ``parsed``'s rows, followed by an ImportRun."""
    run = import_run_start(source=source, origin=origin, parsed=parsed, user=user)

    def chunk_done(count: int) -> None:
        ImportRun.objects.filter(pk=run.pk).update(rows_done=F("rows_done") + count, updated_at=timezone.now())
        if progress:
            progress(count)

    try:
        summary = catalog_import(rows=parsed.rows, progress=chunk_done)
    except BaseException as exc:  # Ctrl-C and a stopping process too: never left "importing"
        ImportRun.objects.filter(pk=run.pk).update(status=ImportRun.Status.FAILED, finished_at=timezone.now(),
                                                   error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    ImportRun.objects.filter(pk=run.pk).update(
        status=ImportRun.Status.DONE, finished_at=timezone.now(), created=summary.created, updated=summary.updated,
        images_added=summary.images_added, downloads_queued=summary.downloads_queued,
        product_ids=sorted(set(summary.product_ids)))
    run.refresh_from_db()
    return run, summary


def _picture_counts(run: ImportRun) -> dict[str, int]:
    images = ProductImage.objects.filter(product_id__in=run.product_ids, created_at__gte=run.started_at)
    counts = dict(images.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    downloads = ImageDownload.objects.filter(product_id__in=run.product_ids, updated_at__gte=run.started_at)
    waiting = downloads.filter(status__in=[Download.PENDING, Download.DOWNLOADING]).count()
    failed = downloads.filter(status=Download.FAILED).count()
    return {"pending": counts.get(Image.PENDING, 0) + counts.get(Image.PROCESSING, 0), "ready": counts.get(Image.READY, 0),
            "failed": counts.get(Image.FAILED, 0), "downloading": waiting, "downloads_failed": failed}


def _pictures_rate(run: ImportRun, now) -> float | None:
    since = max(run.started_at, now - RATE_WINDOW)
    done = ProductImage.objects.filter(product_id__in=run.product_ids, created_at__gte=run.started_at).filter(
        Q(status=Image.READY) | Q(status=Image.FAILED), status_changed_at__gte=since).aggregate(
        n=Count("id"), first=Min("status_changed_at"))
    if not done["n"]:
        return None
    return done["n"] / max((now - done["first"]).total_seconds(), MIN_SECONDS)


def import_run_progress(run: ImportRun, *, now=None) -> dict:
    """Rows then pictures: counts, percent, rate, seconds left (None: unknown yet) and state
    ("importing", "processing", "done" or "failed")."""
    now = now or timezone.now()
    run.refresh_from_db(fields=[f.attname for f in ImportRun._meta.concrete_fields if f.name != "report"])
    if run.status != ImportRun.Status.DONE:
        return _rows_progress(run, now)
    counts = _picture_counts(run)
    waiting = counts["pending"] + counts["downloading"]
    total = waiting + counts["ready"] + counts["failed"]
    rate = _pictures_rate(run, now) if waiting else None
    return {"state": "processing" if waiting else "done", "done": total - waiting, "total": total, "unit": "pictures",
            "percent": round(100.0 * (total - waiting) / total, 1) if total else 100.0, "rate": rate,
            "eta_seconds": waiting / rate if rate else (0.0 if not waiting else None), "counts": counts}


def _rows_progress(run: ImportRun, now) -> dict:
    """An import still writing its rows, failed, or stalled (read as failed: see STALLED)."""
    stalled = run.status == ImportRun.Status.IMPORTING and now - run.updated_at > STALLED
    rate = run.rows_done / max((now - run.started_at).total_seconds(), MIN_SECONDS) if run.rows_done else None
    progress = {"state": "failed" if stalled or run.status == ImportRun.Status.FAILED else "importing",
                "done": run.rows_done, "total": run.rows_total, "unit": "rows",
                "percent": round(100.0 * run.rows_done / run.rows_total, 1) if run.rows_total else 100.0,
                "rate": None if stalled else rate, "counts": {}}
    progress["eta_seconds"] = (run.rows_total - run.rows_done) / progress["rate"] if progress["rate"] else None
    if stalled:
        progress["stalled"] = (f"No rows written for over {int(STALLED.total_seconds() / 60)} minutes: the importing "
                               "process stopped (killed, or its machine restarted). The rows written stay; import the "
                               "file again to finish it.")
    return progress


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def import_run_display(progress: dict) -> dict:
    """What the admin's bar says (the same words with or without JavaScript)."""
    state, unit = progress["state"], progress["unit"]
    summary = f"{progress['done']:,} of {progress['total']:,} {unit}"
    counts = progress["counts"]
    if counts:
        summary += (f" · {counts['ready']:,} ready · {counts['pending']:,} waiting · {counts['downloading']:,} to "
                    f"download · {counts['failed'] + counts['downloads_failed']:,} failed")
    if state in ("done", "failed"):
        detail = "Finished." if state == "done" else progress.get(
            "stalled", "The import stopped with an error (below); rows written before it stay.")
    elif progress["rate"]:
        left = "" if progress["eta_seconds"] is None else f" · about {_duration(progress['eta_seconds'])} left"
        detail = f"{progress['rate']:.1f} {unit}/s{left}"
    else:
        detail = "Waiting for a worker…" if unit == "pictures" else "Starting…"
    title = {"importing": "Importing rows", "processing": "Processing pictures", "done": "Done",
             "failed": "Failed"}[state]
    return {"title": title, "summary": summary, "detail": detail, "percent": progress["percent"],
            "state": "running" if state in ("importing", "processing") else state}
