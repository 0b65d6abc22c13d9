"""What staff read (recommender.presentation): SVG chart coordinates, the confusion table's shading,
metric cards, durations and the wording of the progress bars. Pure functions of already-read data:
no database here."""

import pytest

from recommender.models import ModelVersion
from recommender.presentation import (
    confusion_table,
    duration_text,
    ingestion_display,
    line_chart,
    metric_cards,
    training_charts,
    training_display,
)
from recommender.selectors.versions import version_progress

# --------------------------------------------------------------------------- charts


def test_line_chart_places_points_and_ticks_in_the_plot_area():
    chart = line_chart(title="Loss", y_min=0, series=[("training", [1.0, 0.5, 0.25], "train")])
    # 520 x 240 with margins 48 (left), 12 (right and top), 34 (bottom): a 460 x 194 plot.
    assert (chart["left"], chart["top"], chart["right"], chart["bottom"], chart["epochs"]) == (48, 12, 508, 206, 3)
    [line] = chart["lines"]
    assert line["points"] == "48.0,12.0 278.0,109.0 508.0,157.5"  # y from 0 (bottom) to 1 (top)
    assert (line["end_x"], line["end_y"], line["last"]) == ("508.0", "157.5", "0.250")
    # The top is rounded up to a whole step of 0.25; the x axis is labelled by epoch (from 1).
    assert [(t["label"], t["y"]) for t in chart["yticks"]] == [
        ("0", "206.0"), ("0.25", "157.5"), ("0.5", "109.0"), ("0.75", "60.5"), ("1", "12.0")]
    assert [(t["label"], t["x"]) for t in chart["xticks"]] == [("1", "48.0"), ("2", "278.0"), ("3", "508.0")]


def test_line_chart_of_a_long_training_labels_every_tenth_epoch_and_the_last():
    accuracy = [i / 40 for i in range(32)]
    chart = line_chart(title="Accuracy", percent=True, y_min=0, y_max=1,
                       series=[("training", accuracy, "train"), ("validation", [0.5, 0.625], "val")])
    assert [t["label"] for t in chart["xticks"]] == ["1", "11", "21", "31", "32"]
    assert [t["label"] for t in chart["yticks"]] == ["0%", "25%", "50%", "75%", "100%"]
    training, validation = chart["lines"]
    assert training["last"] == "77.5%" and validation["last"] == "62.5%"
    assert validation["end_x"] == "62.8"  # its 2nd epoch, on the 32-epoch axis: 48 + 460 / 31


def test_a_flat_series_still_gets_an_axis():
    chart = line_chart(title="Loss", series=[("training", [2.0, 2.0], "train")])
    assert [t["label"] for t in chart["yticks"]] == ["2", "2.25", "2.5", "2.75", "3"]
    assert chart["lines"][0]["points"] == "48.0,206.0 508.0,206.0"


def test_nothing_to_draw_is_no_chart():
    assert line_chart(title="Loss", series=[("training", [], "train"), ("validation", None, "val")]) is None
    assert training_charts({}) == []
    assert [c["title"] for c in training_charts({"loss": [1.0, 0.5]})] == ["Loss"]


# --------------------------------------------------------------------------- metrics


def test_confusion_table_shades_each_cell_by_its_share_of_the_true_class():
    table = confusion_table({"classes": ["Bags", "Shoes", "Tops"],
                             "confusion_matrix": [[2, 2, 0], [0, 4, 0], [0, 0, 0]]})
    assert table["classes"] == ["Bags", "Shoes", "Tops"]
    bags, shoes, tops = table["rows"]
    assert (bags["name"], bags["total"]) == ("Bags", 4)
    assert [(c["count"], c["share"], c["alpha"], c["dark"]) for c in bags["cells"]] == [
        (2, 0.5, "0.49", False), (2, 0.5, "0.49", False), (0, 0.0, "0", False)]
    assert [c["diagonal"] for c in bags["cells"]] == [True, False, False]
    assert shoes["cells"][1] == {"count": 4, "share": 1.0, "diagonal": True, "dark": True, "alpha": "0.90"}
    assert tops["total"] == 0 and {c["alpha"] for c in tops["cells"]} == {"0"}  # no images: no division by zero
    assert confusion_table({}) is None and confusion_table({"classes": ["a"], "confusion_matrix": []}) is None


def test_metric_cards_show_the_known_metrics_as_percentages_in_order():
    cards = metric_cards({"precision_at_6": 0.1234, "accuracy": 0.9, "map_at_6": None, "training_seconds": 3})
    assert [(c["key"], c["label"], c["display"]) for c in cards] == [
        ("accuracy", "Accuracy", "90.0%"), ("precision_at_6", "Precision@6", "12.3%")]
    assert cards[0]["value"] == 0.9 and "held-out images" in cards[0]["help"]


# --------------------------------------------------------------------------- wording


@pytest.mark.parametrize("seconds, text", [
    (None, ""), (-3, "0 s"), (0, "0 s"), (59, "59 s"), (59.4, "59 s"), (59.6, "1 min"), (60, "1 min"),
    (61, "1 min 1 s"), (3599, "59 min 59 s"), (3600, "1 h 0 min"), (3661, "1 h 1 min"), (7325, "2 h 2 min"),
])
def test_duration_text(seconds, text):
    assert duration_text(seconds) == text


def progress_of(pk, status, **progress):
    return version_progress(ModelVersion(pk=pk, status=status, progress=progress,
                                         error="Quality gate: worse" if status == "failed" else ""))


def test_training_display_of_a_running_training():
    running = progress_of(7, "training", phase="training", epoch=16, epochs=32, accuracy=0.712345,
                          val_accuracy=0.65, eta_seconds=30.04)
    shown = training_display({"training": running, "latest": running, "active_id": 5})
    assert shown == {"title": "Training v7", "phase": "Training", "state": "running", "percent": 40.5,
                     "detail": "Epoch 16 of 32 · accuracy 71.2% · validation 65.0% · about 30 s left"}
    embedding = progress_of(7, "training", phase="embedding", images_embedded=1500, images_total=12000,
                            eta_seconds=90)
    shown = training_display({"training": embedding, "latest": embedding, "active_id": None})
    assert (shown["phase"], shown["detail"]) == (
        "Embedding the catalog", "1,500 of 12,000 images embedded · about 1 min 30 s left")
    queued = progress_of(8, "training")
    assert training_display({"training": queued, "latest": queued, "active_id": None})["phase"] == (
        "Waiting for a worker")


def test_training_display_of_the_latest_version():
    failed = progress_of(9, "failed", phase="failed")
    assert training_display({"training": None, "latest": failed, "active_id": 5}) == {
        "title": "Latest: v9", "phase": "Failed", "detail": "Quality gate: worse", "percent": None, "state": "failed"}
    active = progress_of(5, "active", phase="done")
    assert training_display({"training": None, "latest": active, "active_id": 5}) == {
        "title": "Latest: v5", "phase": "Active", "detail": "Serving v5.", "percent": 100.0, "state": "active"}
    retired = progress_of(5, "retired", phase="done")
    assert training_display({"training": None, "latest": retired, "active_id": None})["detail"] == (
        "No active version.")
    assert training_display({"training": None, "latest": None, "active_id": None}) == {
        "title": "No model trained yet", "phase": "", "percent": 0, "state": "",
        "detail": "Train a first version when the images are processed."}


def ingestion(*, pending=0, processing=0, ready=0, failed=0, rate=None, eta=None):
    """A status as recommender.selectors.ingestion.ingestion_status returns it."""
    backlog, total = pending + processing, pending + processing + ready + failed
    return {"pending": pending, "processing": processing, "ready": ready, "failed": failed, "backlog": backlog,
            "total": total, "percent": round(100.0 * (total - backlog) / total, 1) if total else 100.0,
            "rate_per_second": rate, "eta_seconds": eta, "window_seconds": 300}


def test_ingestion_display_while_images_wait():
    shown = ingestion_display(ingestion(pending=4, processing=1, ready=6, failed=1, rate=0.1, eta=50))
    assert shown == {"title": "Image processing", "summary": "5 waiting · 6 ready · 1 failed",
                     "detail": "0.1 images/s · about 50 s left", "percent": 58.3, "state": "running"}
    stalled = ingestion_display(ingestion(pending=1))  # nothing finished recently: no rate
    assert (stalled["detail"], stalled["state"]) == ("Waiting for a worker…", "running")
    big = ingestion_display(ingestion(pending=12_000, ready=1_500, rate=25.0, eta=480))
    assert big["summary"] == "12,000 waiting · 1,500 ready · 0 failed"
    assert big["detail"] == "25.0 images/s · about 8 min left"


def test_ingestion_display_when_nothing_waits():
    assert ingestion_display(ingestion(ready=1, eta=0.0))["detail"] == "All 1 image processed."
    done = ingestion_display(ingestion(ready=2, failed=1, eta=0.0))
    assert (done["detail"], done["state"]) == ("All 3 images processed.", "done")
    assert ingestion_display(ingestion())["detail"] == "No images yet."
