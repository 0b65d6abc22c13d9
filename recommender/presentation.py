"""Presentation of the recommender for staff: badges, SVG line charts, the confusion table, metric
cards and the wording of the progress bars. Pure functions of already-read data (no queries), so
the page the server renders and the JSON its script polls say the same thing.
"""

from __future__ import annotations

import math

from django.utils.html import format_html

from recommender.models import ModelVersion

STATUS_COLOURS = {"training": "#1570ef", "ready": "#475467", "active": "#067647", "failed": "#b42318",
                  "retired": "#98a2b3"}


def status_badge_html(version: ModelVersion):
    return format_html('<span class="lk-badge" style="--badge:{}">{}</span>',
                       STATUS_COLOURS.get(version.status, "#475467"), version.get_status_display())


# --------------------------------------------------------------------------- charts


def _nice_step(span: float, target: int = 5) -> float:
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


def raw_pixels_comparison(metrics: dict) -> dict | None:
    """This version's P@6 beside raw pixels' on the same held-out images (services.evaluation)."""
    raw = (metrics or {}).get("raw_pixels") or {}
    mine = (raw.get("version") or {}).get("precision_at_6")
    if raw.get("precision_at_6") is None or mine is None:
        return None
    return {"version_p6": _pct(mine), "raw_p6": _pct(raw["precision_at_6"]), "queries": raw.get("queries"),
            "pool": raw.get("pool")}


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
    if t["phase"] == ModelVersion.Phase.TRAINING and t["epochs"]:
        parts.append(f"Epoch {t['epoch'] or 0} of {t['epochs']}")
        if t["accuracy"] is not None:
            parts.append(f"accuracy {_pct(t['accuracy'])}")
        if t["val_accuracy"] is not None:
            parts.append(f"validation {_pct(t['val_accuracy'])}")
    elif t["phase"] == ModelVersion.Phase.EXTRACTING and t["images_total"]:
        parts.append(f"{t['images_extracted'] or 0:,} of {t['images_total']:,} images re-extracted")
    elif t["phase"] == ModelVersion.Phase.EMBEDDING and t["images_total"]:
        parts.append(f"{t['images_embedded'] or 0:,} of {t['images_total']:,} images embedded")
    elif t["phase"] == ModelVersion.Phase.NEIGHBOURS and t.get("products_total"):
        parts.append(f"{t['products_listed'] or 0:,} of {t['products_total']:,} products")
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
