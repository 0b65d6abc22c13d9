"""bench/events.py on a tiny catalog with a running experiment: every section measures requests
that succeed, the variants that record do record (one event each), and the figures it reports
(worst rounds, ratios, flush throughput, Redis bytes per event) are there and sane."""

import pytest

from bench import events as bench
from recommender.models import ModelVersion
from recommender.services import events
from recommender.services.experiments import experiment_start
from tests.recommender.helpers import trained_catalog
from tests.ui.data import model_version

pytestmark = pytest.mark.django_db


def test_a_minimal_run_measures_every_section(settings):
    active = trained_catalog(settings, count=30, epochs=1)
    # The candidate is never served: the bench's visitors are all in arm a (the active version).
    experiment = experiment_start(candidate=model_version(status=ModelVersion.Status.READY, artifacts={"head": "stored"}), split=0.5)
    fx = bench.fixtures(experiment.pk, active.pk, sample=bench.SMOKE["sample"])
    assert len(fx["visitors"]) == 16 and len(fx["products"]) == bench.SMOKE["sample"]
    results = bench.measure(fx, bench.SMOKE, log=lambda *a: None)

    for part in ("product_page", "similar_api"):
        for mode in ("cached", "uncached"):
            section = results[part][mode]
            assert section["events"]["recorded"] == section["events"]["expected"] > 0
            assert all(r["cpu_ratio"] > 0 and r["wall_ratio"] > 0 for r in section["ratios"])
    for part in ("beacon", "click_api"):
        assert results[part]["events"]["recorded"] == results[part]["events"]["expected"] > 0
    variant = results["beacon"]["variants"]["beacon, visitor cookie, events on"]
    assert variant["rounds"] == 2 and variant["wall_ms"] >= max(r["wall_ms"] for r in variant["per_round"])

    record = results["record"]["events"]
    expected = bench.SMOKE["record"] * bench.SMOKE["rounds"]
    assert record["kept"] == {"redis": expected, "direct": expected}
    assert record["buffered"] == record["inserted"] == expected

    flush = results["flush"]["rounds"][0]
    assert flush["inserted"] == flush["events"] == bench.SMOKE["flush"] and flush["lost"] == 0
    assert results["flush"]["worst_events_per_s"] > 0 and 50 < results["flush"]["redis_bytes_per_event"] < 2000
    assert events.panel_events_buffered() == 0

    headline = bench.headline(results)
    assert headline["page_cached_visitor_events_on_off"]["cpu_ratio"] > 0
    titles = [t["title"] for t in bench.tables_of(results)]
    assert len(titles) == 8 and all(t["rows"] for t in bench.tables_of(results))


def test_the_worst_round_is_reported():
    rounds = [{"cpu": [0.001, 0.001], "wall": [0.002, 0.002]}, {"cpu": [0.003, 0.003], "wall": [0.001, 0.001]}]
    s = bench.summary(rounds)
    assert (s["cpu_ms"], s["wall_ms"]) == (3.0, 2.0)
    r = bench.ratio({"a": rounds, "b": [rounds[1], rounds[0]]}, "a", "b")
    assert r["cpu_ratio"] == 3.0 and r["cpu_ratio_per_round"] == [0.333, 3.0]
