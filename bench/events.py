"""Benchmark: shoppers' panel events (issue 17) do not slow the shopper's path.

Builds a small Fashion-MNIST catalog in a temporary VAR_DIR (its own PostgreSQL and Redis) with
an active version and a second, ready one, starts an A/B experiment between them, and measures
in this process, with Django's test client (no network, no server: the view's own cost), CPU
time (time.process_time) and wall time per request, the variants of each comparison interleaved
request by request (their order rotated) so that a slow spell of the machine hits all alike:

- the product page, cached and uncached (the cache cleared before each request), EVENTS on vs
  off, no visitor cookie vs a visitor inside the running experiment (the arm's lookup), and an
  arrival from a panel's link (?via=: a click recorded);
- the beacon (GET /recommender/seen.gif?t=...), beside the cached page it follows;
- the similar-items API, cached and uncached, recording on vs off, with and without X-Visitor-Id;
- POST /api/v1/events/click/;
- panel_event_record alone: the Redis buffer vs Redis down (EVENTS_REDIS_URL at a unix socket
  that does not exist: the direct INSERT), per event;
- panel_events_flush: events/s written to PostgreSQL, and Redis's memory per buffered event.

Every measurement is repeated (ROUNDS); the worst round is reported (the highest mean and the
highest ratio), never the best.

    python bench/events.py [--quick | --full]
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402

SIZES = {  # requests per variant per round (events for record/flush), and the rounds
    "quick": dict(products=300, epochs=3, rounds=3, page_cached=150, page_uncached=40, beacon=300, api_cached=200,
                  api_uncached=40, click=300, record=1000, flush=20_000, flush_rounds=3),
    "full": dict(products=2000, epochs=8, rounds=5, page_cached=500, page_uncached=150, beacon=1000,
                 api_cached=600, api_uncached=150, click=1000, record=5000, flush=100_000, flush_rounds=3),
}
SMOKE = dict(products=0, epochs=0, sample=4, rounds=2, page_cached=6, page_uncached=3, beacon=6, api_cached=6, api_uncached=3,
             click=6, record=20, flush=300, flush_rounds=1)
DEAD_REDIS = "unix:///nonexistent-lookalike-bench/redis.sock"  # refused at once: the direct-insert path
SAMPLE_PRODUCTS = 40


# --------------------------------------------------------------------------- measuring


def interleaved(variants: dict, *, n: int, rounds: int, before=None) -> dict:
    """Each variant ``{"call": f(i), "settings": {...}}`` called ``n`` times per round, the variants
    interleaved (order rotated at every step); settings overridden and ``before()`` run outside the
    timed part. Returns per variant the per-round CPU and wall samples (seconds)."""
    from django.test import override_settings

    names = list(variants)
    out = {name: [] for name in names}
    for _ in range(rounds):
        samples = {name: ([], []) for name in names}
        gc.collect()
        for i in range(n):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                variant = variants[name]
                with override_settings(**variant.get("settings", {})):
                    if before is not None:
                        before()
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    variant["call"](i)
                    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                samples[name][0].append(cpu)
                samples[name][1].append(wall)
        for name in names:
            out[name].append({"cpu": samples[name][0], "wall": samples[name][1]})
    return out


def summary(rounds: list[dict]) -> dict:
    """A variant's worst round: the highest mean CPU and wall (ms), the highest wall p50 and p99."""
    per = [{"cpu_ms": 1000 * float(np.mean(r["cpu"])), "wall_ms": 1000 * float(np.mean(r["wall"])),
            "wall_p50_ms": 1000 * float(np.percentile(r["wall"], 50)),
            "wall_p99_ms": 1000 * float(np.percentile(r["wall"], 99))} for r in rounds]
    worst = {key: round(max(p[key] for p in per), 3) for key in per[0]}
    return {**worst, "n_per_round": len(rounds[0]["cpu"]), "rounds": len(rounds),
            "per_round": [{k: round(v, 3) for k, v in p.items()} for p in per]}


def ratio(measured: dict, a: str, b: str) -> dict:
    """``a`` over ``b`` (CPU and wall means), per round; the worst (highest) round reported."""
    cpu = [float(np.mean(ra["cpu"]) / max(np.mean(rb["cpu"]), 1e-9)) for ra, rb in zip(measured[a], measured[b])]
    wall = [float(np.mean(ra["wall"]) / max(np.mean(rb["wall"]), 1e-9)) for ra, rb in zip(measured[a], measured[b])]
    return {"a": a, "b": b, "cpu_ratio": round(max(cpu), 3), "wall_ratio": round(max(wall), 3),
            "cpu_ratio_per_round": [round(x, 3) for x in cpu], "wall_ratio_per_round": [round(x, 3) for x in wall]}


def section(title: str, measured: dict, comparisons: list[tuple[str, str, str]], notes=None) -> dict:
    """Variants' worst rounds and the comparisons' ratios: the JSON of a section and its table."""
    variants = {name: summary(rounds) for name, rounds in measured.items()}
    ratios = [{"label": label, **ratio(measured, a, b)} for label, a, b in comparisons]
    rows = [[r["label"], variants[r["a"]]["cpu_ms"], variants[r["b"]]["cpu_ms"], r["cpu_ratio"],
             variants[r["a"]]["wall_ms"], variants[r["b"]]["wall_ms"], r["wall_ratio"]] for r in ratios]
    t = common.table(title, ["A / B", "CPU ms A", "CPU ms B", "CPU ratio", "wall ms A", "wall ms B", "wall ratio"],
                     rows, notes)
    return {"variants": variants, "ratios": ratios, "table": t}


# --------------------------------------------------------------------------- the setup


def second_version_and_experiment(epochs: int, log=print) -> dict:
    """A second version trained (it activates: the gate is opened for it), the first one, kept
    with its files, made the ready candidate (as the project's tests do), and an experiment (50 %)
    started between them."""
    from django.conf import settings

    from recommender.models import ModelVersion
    from recommender.services.experiments import experiment_start
    from recommender.services.training import model_version_start, model_version_train

    first = ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)
    saved = settings.RECOMMENDER
    settings.RECOMMENDER = {**saved, "EPOCHS": epochs, "GATE_TOLERANCE": 1.0}
    try:
        second = model_version_train(version_id=model_version_start(trigger="benchmark", kind="head",
                                                                      publish=False).pk)
    finally:
        settings.RECOMMENDER = saved
    if second.status != ModelVersion.Status.ACTIVE:
        raise RuntimeError(f"the second version did not activate: {second.status} {second.error}")
    ModelVersion.objects.filter(pk=first.pk).update(status=ModelVersion.Status.READY)
    experiment = experiment_start(candidate=ModelVersion.objects.get(pk=first.pk), split=0.5, started_by="bench")
    log(f"  experiment {experiment.pk}: control v{second.pk} (active), candidate v{first.pk} (ready), split 0.5")
    return {"experiment": experiment.pk, "control": second.pk, "candidate": first.pk}


def fixtures(experiment_id: int, control_id: int, sample: int = SAMPLE_PRODUCTS) -> dict:
    """Products, visitors of arm a (served by the active version, as a visitor without a cookie:
    only the arm's lookup differs) and the signed tokens the requests carry."""
    from catalog.models import Product
    from recommender.selectors.events import PanelOrigin, click_token, view_token
    from recommender.selectors.experiments import arm_assign

    ids = list(Product.objects.filter(is_active=True).order_by("id").values_list("id", flat=True))
    step = max(len(ids) // sample, 1)
    products = ids[::step][:sample]
    candidates = (f"{n:032x}" for n in range(10_000))
    visitors = [v for v in candidates if arm_assign(experiment_id=experiment_id, split=0.5, visitor=v) == "a"][:16]
    origin = lambda pid: PanelOrigin(pid, control_id, experiment_id, "a", "")  # noqa: E731
    shown = lambda pid: [p for p in ids[:7] if p != pid][:6]  # noqa: E731
    return {"products": products, "visitors": visitors,
            "view": {pid: view_token(origin(pid), shown(pid)) for pid in products},
            # A click on product p from the panel of the product before it in the list.
            "via": {pid: click_token(origin(products[k - 1]), target_id=pid, position=1 + k % 6)
                    for k, pid in enumerate(products)}}


# --------------------------------------------------------------------------- the requests


class Shopper:
    """The test client's requests, each checked (a failing request would time an error page)."""

    def __init__(self, fx: dict):
        from django.test import Client

        self.client = Client()
        self.fx = fx

    def _check(self, response, expected=200):
        if response.status_code != expected:
            raise RuntimeError(f"{response.request['PATH_INFO']}: {response.status_code} {response.content[:300]!r}")
        return response

    def product(self, i):
        return self.fx["products"][i % len(self.fx["products"])]

    def cookie(self, i, with_visitor):
        return f"lk_visitor={self.fx['visitors'][i % len(self.fx['visitors'])]}" if with_visitor else ""

    def page(self, i, *, visitor=False, via=False):
        pid = self.product(i)
        data = {"via": self.fx["via"][pid]} if via else {}
        return self._check(self.client.get(f"/p/{pid}/", data, HTTP_COOKIE=self.cookie(i, visitor)))

    def beacon(self, i, *, visitor=True):
        token = self.fx["view"][self.product(i)]
        return self._check(self.client.get("/recommender/seen.gif", {"t": token}, HTTP_COOKIE=self.cookie(i, visitor)))

    def api(self, i, *, visitor=True):
        headers = {"HTTP_X_VISITOR_ID": self.fx["visitors"][i % len(self.fx["visitors"])]} if visitor else {}
        return self._check(self.client.get(f"/api/v1/products/{self.product(i)}/similar/", HTTP_COOKIE="", **headers))

    def click(self, i):
        pid = self.product(i)
        body = json.dumps({"token": self.fx["via"][pid], "product": pid})
        # Each from its own address: the click throttle (600/min per address) stays out of the way.
        return self._check(self.client.post("/api/v1/events/click/", body, content_type="application/json",
                                            HTTP_COOKIE="", HTTP_X_VISITOR_ID=self.fx["visitors"][i % 16],
                                            REMOTE_ADDR=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"),
                           expected=204)


def buffered() -> int:
    from recommender.services.events import panel_events_buffered

    return panel_events_buffered()


def run_counting(variants: dict, *, n: int, rounds: int, recording: list[str], before=None) -> tuple[dict, dict]:
    """interleaved(), and how many events the buffer gained against what the recording variants
    should have added (one each per request)."""
    start = buffered()
    measured = interleaved(variants, n=n, rounds=rounds, before=before)
    return measured, {"recorded": buffered() - start, "expected": n * rounds * len(recording)}


def with_events(out: dict, events: dict) -> dict:
    """The section with the events its recording variants kept (a shortfall is a finding)."""
    out["events"] = events
    out["table"]["notes"].append(f"Events buffered while measuring: {events['recorded']:,} of {events['expected']:,} "
                                 "expected (one per request of each recording variant).")
    return out


ON, OFF = {"EVENTS": True}, {"EVENTS": False}


def measure_page(shopper: Shopper, size: dict, log=print) -> dict:
    from django.core.cache import cache

    out = {}
    for mode, n in (("cached", size["page_cached"]), ("uncached", size["page_uncached"])):
        variants = {
            "no cookie, events on": {"call": lambda i: shopper.page(i), "settings": ON},
            "no cookie, events off": {"call": lambda i: shopper.page(i), "settings": OFF},
            "visitor in experiment, events on": {"call": lambda i: shopper.page(i, visitor=True), "settings": ON},
            "visitor in experiment, events off": {"call": lambda i: shopper.page(i, visitor=True), "settings": OFF},
            "from a panel link (?via=), events on": {"call": lambda i: shopper.page(i, visitor=True, via=True),
                                                     "settings": ON},
            "from a panel link (?via=), events off": {"call": lambda i: shopper.page(i, visitor=True, via=True),
                                                      "settings": OFF},
        }
        if mode == "cached":  # every variant's pages once (their cache keys differ by arm)
            interleaved(variants, n=len(shopper.fx["products"]), rounds=1)
        measured, events = run_counting(variants, n=n, rounds=size["rounds"],
                                        recording=["from a panel link (?via=), events on"],
                                        before=cache.clear if mode == "uncached" else None)
        out[mode] = section(
            f"Product page GET /p/<id>/, {mode} ({'page served from the cache' if mode == 'cached' else 'cache cleared before each request'})",
            measured,
            [("no cookie: events on / off", "no cookie, events on", "no cookie, events off"),
             ("visitor in experiment: events on / off", "visitor in experiment, events on",
              "visitor in experiment, events off"),
             ("visitor in experiment / no cookie (arm lookup), on", "visitor in experiment, events on",
              "no cookie, events on"),
             ("?via= click: events on / off", "from a panel link (?via=), events on",
              "from a panel link (?via=), events off"),
             ("?via= click / same page without it, on", "from a panel link (?via=), events on",
              "visitor in experiment, events on")])
        with_events(out[mode], events)
        log(f"  page {mode}: done ({events['recorded']} of {events['expected']} clicks buffered)")
    return out


def measure_beacon(shopper: Shopper, size: dict, log=print) -> dict:
    variants = {
        "beacon, visitor cookie, events on": {"call": lambda i: shopper.beacon(i), "settings": ON},
        "beacon, visitor cookie, events off": {"call": lambda i: shopper.beacon(i), "settings": OFF},
        "beacon, no cookie yet (sets it), events on": {"call": lambda i: shopper.beacon(i, visitor=False),
                                                       "settings": ON},
        "cached page, visitor in experiment, on": {"call": lambda i: shopper.page(i, visitor=True), "settings": ON},
    }
    interleaved({"p": variants["cached page, visitor in experiment, on"]}, n=len(shopper.fx["products"]), rounds=1)
    measured, events = run_counting(variants, n=size["beacon"], rounds=size["rounds"],
                                    recording=["beacon, visitor cookie, events on",
                                               "beacon, no cookie yet (sets it), events on"])
    out = section("The panel's beacon GET /recommender/seen.gif?t=<view token> (one view recorded)", measured,
                  [("beacon: events on / off", "beacon, visitor cookie, events on",
                    "beacon, visitor cookie, events off"),
                   ("beacon setting the cookie / with it", "beacon, no cookie yet (sets it), events on",
                    "beacon, visitor cookie, events on"),
                   ("beacon / the cached page it follows", "beacon, visitor cookie, events on",
                    "cached page, visitor in experiment, on")],
                  ["The beacon is a second request per page view, loaded lazily after the page."])
    with_events(out, events)
    log(f"  beacon: done ({events['recorded']} of {events['expected']} views buffered)")
    return out


def measure_api(shopper: Shopper, size: dict, log=print) -> dict:
    from django.core.cache import cache

    out = {}
    for mode, n in (("cached", size["api_cached"]), ("uncached", size["api_uncached"])):
        variants = {
            "X-Visitor-Id, events on": {"call": lambda i: shopper.api(i), "settings": ON},
            "X-Visitor-Id, events off": {"call": lambda i: shopper.api(i), "settings": OFF},
            "no visitor header, events on": {"call": lambda i: shopper.api(i, visitor=False), "settings": ON},
        }
        if mode == "cached":
            interleaved(variants, n=len(shopper.fx["products"]), rounds=1)
        measured, events = run_counting(variants, n=n, rounds=size["rounds"],
                                        recording=["X-Visitor-Id, events on", "no visitor header, events on"],
                                        before=cache.clear if mode == "uncached" else None)
        out[mode] = section(
            f"Similar-items API GET /api/v1/products/<id>/similar/, {mode}", measured,
            [("X-Visitor-Id: recording on / off", "X-Visitor-Id, events on", "X-Visitor-Id, events off"),
             ("X-Visitor-Id (arm lookup) / no header, on", "X-Visitor-Id, events on",
              "no visitor header, events on")],
            ["Each answer records one view (with or without the header: no header is visitor \"\")."])
        with_events(out[mode], events)
        log(f"  API {mode}: done ({events['recorded']} of {events['expected']} views buffered)")
    return out


def measure_click(shopper: Shopper, size: dict, log=print) -> dict:
    variants = {"click POST, events on": {"call": shopper.click, "settings": ON},
                "click POST, events off": {"call": shopper.click, "settings": OFF}}
    measured, events = run_counting(variants, n=size["click"], rounds=size["rounds"],
                                    recording=["click POST, events on"])
    out = section("POST /api/v1/events/click/ (token checked, one click recorded, 204)", measured,
                  [("click POST: events on / off", "click POST, events on", "click POST, events off")])
    with_events(out, events)
    log(f"  click API: done ({events['recorded']} of {events['expected']} clicks buffered)")
    return out


def record_one(i, fx):
    from recommender.services.events import panel_event_record

    pid = fx["products"][i % len(fx["products"])]
    return panel_event_record(kind="view", channel="page", visitor=fx["visitors"][i % 16], product_id=pid,
                              version_id=1, experiment_id=1, arm="a", rules="", shown=fx["products"][:6])


def measure_record(fx: dict, size: dict, log=print) -> dict:
    from recommender.models import PanelEvent

    kept = {"redis": 0, "direct": 0}

    def keep(path):
        def call(i):
            kept[path] += bool(record_one(i, fx))
        return call

    rows = PanelEvent.objects.count()
    start = buffered()
    measured = interleaved({
        "Redis buffer (RPUSH)": {"call": keep("redis"), "settings": ON},
        "Redis down: direct INSERT": {"call": keep("direct"), "settings": {"EVENTS_REDIS_URL": DEAD_REDIS}},
        "events off (no-op)": {"call": lambda i: record_one(i, fx), "settings": OFF},
    }, n=size["record"], rounds=size["rounds"])
    expected = size["record"] * size["rounds"]
    events = {"buffered": buffered() - start, "inserted": PanelEvent.objects.count() - rows, "expected_each": expected,
              "kept": kept}
    out = section("panel_event_record alone, per event", measured,
                  [("Redis down (direct INSERT) / Redis buffer", "Redis down: direct INSERT", "Redis buffer (RPUSH)"),
                   ("Redis buffer / events off", "Redis buffer (RPUSH)", "events off (no-op)")],
                  [f"Redis down: EVENTS_REDIS_URL={DEAD_REDIS} (connection refused at once); a Redis that hangs "
                   "instead costs up to EVENT_TIMEOUT_SECONDS per event before the insert.",
                   "The warning logged per event while Redis is down is silenced here (logger at ERROR)."])
    out["events"] = events
    out["table"]["notes"].append(
        f"Kept: {kept['redis']:,} buffered (Redis's list grew by {events['buffered']:,}), {kept['direct']:,} inserted "
        f"directly (the events table grew by {events['inserted']:,}), of {expected:,} each.")
    log(f"  record: done ({events['buffered']} buffered, {events['inserted']} inserted directly, "
        f"{expected} expected each)")
    return out


def redis_client():
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.EVENTS_REDIS_URL)


def measure_flush(fx: dict, size: dict, log=print) -> dict:
    """Rounds of: buffer cleared, ``flush`` events recorded, Redis memory read, flushed (timed)."""
    from recommender.models import PanelEvent
    from recommender.services.events import BUFFER_KEY, FLUSHING_KEY, panel_events_flush

    client, n, rounds = redis_client(), size["flush"], []
    for _ in range(size["flush_rounds"]):
        panel_events_flush()  # what earlier sections left
        client.delete(BUFFER_KEY, FLUSHING_KEY)
        used0 = int(client.info("memory")["used_memory"])
        t0 = time.perf_counter()
        kept = sum(bool(record_one(i, fx)) for i in range(n))
        record_s = time.perf_counter() - t0
        used1 = int(client.info("memory")["used_memory"])
        key_bytes = int(client.memory_usage(BUFFER_KEY, samples=0) or 0)
        line = client.lindex(BUFFER_KEY, 0) or b""
        rows = PanelEvent.objects.count()
        t0, c0 = time.perf_counter(), time.process_time()
        read = panel_events_flush()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        inserted = PanelEvent.objects.count() - rows
        rounds.append({"events": n, "kept": kept, "read": read, "inserted": inserted, "lost": n - inserted,
                       "flush_s": round(seconds, 3), "flush_cpu_s": round(cpu, 3),
                       "events_per_s": round(inserted / seconds, 1), "record_us_each": round(1e6 * record_s / n, 1),
                       "redis_used_memory_bytes_per_event": round((used1 - used0) / n, 1),
                       "memory_usage_of_list_per_event": round(key_bytes / n, 1), "json_line_bytes": len(line)})
        log(f"  flush: {inserted:,} of {n:,} events written in {seconds:.2f} s ({inserted / seconds:,.0f}/s)")
    worst = min(rounds, key=lambda r: r["events_per_s"])
    rows = [[i + 1, r["events"], r["inserted"], r["flush_s"], r["events_per_s"], r["record_us_each"],
             r["redis_used_memory_bytes_per_event"], r["memory_usage_of_list_per_event"], r["json_line_bytes"]]
            for i, r in enumerate(rounds)]
    t = common.table("panel_events_flush: buffered events written to PostgreSQL, and Redis memory per event",
                     ["Round", "Events", "Rows inserted", "Flush s", "Events/s", "Record us/event",
                      "Redis used_memory B/event", "MEMORY USAGE B/event", "JSON line B"], rows,
                     [f"Worst round: {worst['events_per_s']:,.0f} events/s. Chunks of FLUSH_CHUNK, one statement each "
                      "(events, day counts, shown products; a chunk already written is skipped by its digest); "
                      "'Rows inserted' below 'Events' would be events lost."])
    return {"rounds": rounds, "worst_events_per_s": worst["events_per_s"],
            "redis_bytes_per_event": max(r["redis_used_memory_bytes_per_event"] for r in rounds), "table": t}


def measure(fx: dict, size: dict, log=print) -> dict:
    """Every section on a catalog with a running experiment (see :func:`fixtures`). The check that
    counts a visitor's view or click of one token once (a Redis SET NX) is off while measuring:
    the same few visitors repeat the same tokens here, and every request must record."""
    from recommender.services import events

    counted_once, events.ONCE_SECONDS = events.ONCE_SECONDS, 0
    try:
        return _measure_all(fx, size, log)
    finally:
        events.ONCE_SECONDS = counted_once


def _measure_all(fx: dict, size: dict, log) -> dict:
    shopper = Shopper(fx)
    out = {"product_page": measure_page(shopper, size, log)}
    out["beacon"] = measure_beacon(shopper, size, log)
    out["similar_api"] = measure_api(shopper, size, log)
    out["click_api"] = measure_click(shopper, size, log)
    out["record"] = measure_record(fx, size, log)
    out["flush"] = measure_flush(fx, size, log)
    return out


def tables_of(results: dict) -> list[dict]:
    found = []
    for value in results.values():
        if "table" in value:
            found.append(value["table"])
        else:
            found.extend(v["table"] for v in value.values() if isinstance(v, dict) and "table" in v)
    return found


def headline(results: dict) -> dict:
    """The ratios a reader looks for first (worst rounds)."""
    def pick(part, label):
        return next(r for r in part["ratios"] if r["label"] == label)

    page, api = results["product_page"], results["similar_api"]
    return {
        "page_cached_visitor_events_on_off": pick(page["cached"], "visitor in experiment: events on / off"),
        "page_uncached_visitor_events_on_off": pick(page["uncached"], "visitor in experiment: events on / off"),
        "page_cached_arm_lookup": pick(page["cached"], "visitor in experiment / no cookie (arm lookup), on"),
        "page_cached_click_via": pick(page["cached"], "?via= click / same page without it, on"),
        "beacon_over_cached_page": pick(results["beacon"], "beacon / the cached page it follows"),
        "api_cached_events_on_off": pick(api["cached"], "X-Visitor-Id: recording on / off"),
        "api_uncached_events_on_off": pick(api["uncached"], "X-Visitor-Id: recording on / off"),
        "click_api_events_on_off": pick(results["click_api"], "click POST: events on / off"),
        "record_direct_over_redis": pick(results["record"], "Redis down (direct INSERT) / Redis buffer"),
        "flush_worst_events_per_s": results["flush"]["worst_events_per_s"],
        "redis_bytes_per_event": results["flush"]["redis_bytes_per_event"],
    }


def main(argv=None) -> int:
    args = common.parse_mode(argv)
    size = SIZES[args.mode]
    started = time.perf_counter()
    common.isolate("events", RECOMMENDER_INPUT_SIZE=32 if args.mode == "quick"
                   else os.environ.get("RECOMMENDER_INPUT_SIZE", 64), RECOMMENDER_TRAINING="head")
    common.django_setup()
    common.quiet_tensorflow()
    from bench.web_load import build_catalog

    print(f"Building a catalog of {size['products']:,} products and two versions...")
    catalog = build_catalog(size["products"], epochs=size["epochs"])
    catalog["experiment"] = second_version_and_experiment(size["epochs"])
    setup_s = round(time.perf_counter() - started, 1)
    fx = fixtures(catalog["experiment"]["experiment"], catalog["experiment"]["control"])
    print("Measuring (in-process, Django's test client; variants interleaved, worst round reported)...")
    results = measure(fx, size)
    tables = tables_of(results)
    for t in tables:
        common.print_table(t)
    common.write_result("events", {
        "mode": args.mode, "sizes": size, "catalog": catalog, "headline": headline(results), "results": results,
        "tables": tables, "setup_seconds": setup_s, "seconds": round(time.perf_counter() - started, 1),
        "method": "in-process (django.test.Client), CPU = time.process_time of this process (PostgreSQL's and "
                  "Redis's own CPU not included; wall time includes them); variants interleaved request by "
                  "request, order rotated; worst of the rounds reported"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
