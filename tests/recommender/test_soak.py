"""Under load: shoppers read pages and the API at a steady rate while staff upload a few hundred
images and a retraining runs and activates. Afterwards: zero 5xx, every image ready, and the
similar-items panel answered throughout, by the old version and then the new one. Events on: each
shopper's browser loads the panel's beacon and follows one of its links (a view and a click,
through the Redis buffer and the beat's flushes), and every one of them reaches PostgreSQL."""

import io
import json
import os
import random
import re
import uuid
from html import unescape
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.core.management import call_command

from catalog.models import Product, ProductImage
from recommender.models import ModelVersion, PanelEvent
from recommender.services.training import model_version_start, model_version_train
from tests.conftest import wait_for
from tests.recommender.helpers import process_all

pytestmark = [pytest.mark.worker, pytest.mark.slow]


class Shoppers:
    """Reader threads on loopback, at a bounded, steady rate."""

    def __init__(self, base_url, product_ids, threads=2, pause=0.05, max_seconds=600):
        self.base, self.ids, self.pause = base_url, product_ids, pause
        self.stop_at = time.monotonic() + max_seconds
        self.stopped = threading.Event()
        self.statuses, self.versions, self.panels = [], [], []
        self.events = {"views": 0, "clicks": 0}  # distinct (visitor, token) pairs sent
        self.counted = {"views": set(), "clicks": set()}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(threads)]

    def get(self, path, visitor=None):
        request = urllib.request.Request(self.base + path)
        if visitor:
            request.add_header("Cookie", f"lk_visitor={visitor}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def browse(self, body, visitor):
        """What the shopper's browser does next: load the panel's beacon, follow its first link."""
        beacon = re.search(rb'<img class="beacon" src="([^"]+)"', body)
        link = re.search(rb'id="similar".*?<a class="card" href="([^"]+)"', body, re.S)
        if not (beacon and link):
            return []
        beacon_url, link_url = unescape(beacon.group(1).decode()), unescape(link.group(1).decode())
        seen = self.get(beacon_url, visitor)[0]
        clicked = self.get(link_url, visitor)[0]
        with self.lock:
            # A visitor's view or click of one panel counts once (recommender.services.events).
            if seen == 200:
                self.counted["views"].add((visitor, beacon_url))
            if clicked == 200:
                self.counted["clicks"].add((visitor, link_url))
            self.events = {kind: len(pairs) for kind, pairs in self.counted.items()}
        return [seen, clicked]

    def run(self, n):
        rng = random.Random(n)
        visitor = uuid.UUID(int=rng.getrandbits(128)).hex
        while not self.stopped.is_set() and time.monotonic() < self.stop_at:
            pid = rng.choice(self.ids)
            status, body = self.get(f"/p/{pid}/", visitor)
            api_status, api_body = self.get(f"/api/v1/products/{pid}/similar/?k=6")
            browsed = self.browse(body, visitor)
            with self.lock:
                self.statuses += [status, api_status, *browsed]
                self.panels.append(b'id="similar"' in body)
                if api_status == 200:
                    data = json.loads(api_body)
                    version = (data.get("model_version") or {}).get("id")
                    self.versions.append((time.monotonic(), version, len(data["results"])))
            time.sleep(self.pause)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        for thread in self.threads:
            thread.join(60)


def test_soak_uploads_and_retraining_under_steady_reads(settings, live_server, start_worker):
    call_command("import_fashion_mnist", count=150, split="train", verbosity=0, stdout=io.StringIO())
    process_all(token="seed")
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": 3}
    old = model_version_train(version_id=model_version_start(trigger="seed").pk)
    assert old.status == "active"
    served = list(Product.objects.values_list("id", flat=True))

    # The quality gate is tested elsewhere; here the new version must activate.
    # Its embedded beat flushes the events every second (its own schedule keys; nothing else due).
    beat_keys = f"test-soak-{uuid.uuid4().hex[:8]}:"
    start_worker(beat=True, env_overrides={
        "RECOMMENDER_EPOCHS": "12", "RECOMMENDER_GATE_TOLERANCE": "1.0", "REDBEAT_KEY_PREFIX": beat_keys,
        "EVENTS_FLUSH_EVERY_SECONDS": "1", "RECOVER_EVERY_SECONDS": "3600", "RETRAIN_CHECK_EVERY_SECONDS": "36000",
        "PRUNE_EVERY_SECONDS": "36000"})
    marks = {"start": time.monotonic()}
    with Shoppers(live_server.url, served) as shoppers:
        call_command("import_fashion_mnist", count=250, split="train", offset=150, verbosity=0,
                     stdout=io.StringIO())  # staff upload 250 images while shoppers read
        marks["uploaded"] = time.monotonic()
        wait_for(lambda: not ProductImage.objects.exclude(status="ready").exists(), timeout=300,
                 message="every uploaded image ready")
        marks["ready"] = time.monotonic()
        new = model_version_start(trigger="soak")
        wait_for(lambda: ModelVersion.objects.get(pk=new.pk).status not in ("training", "ready"), timeout=300,
                 message="the retraining to finish")
        marks["trained"] = time.monotonic()
        time.sleep(2)  # keep reading for a moment after the switch
    marks["end"] = time.monotonic()
    expected = shoppers.events["views"] + shoppers.events["clicks"]
    wait_for(lambda: PanelEvent.objects.filter(channel="page").count() >= expected, timeout=60,
             message="the events flushed")
    new.refresh_from_db()
    if os.environ.get("SOAK_REPORT"):  # bench/soak.py (make bench) reads the figures of this run
        write_report(os.environ["SOAK_REPORT"], shoppers, marks, old.pk, new)
    assert new.status == "active", new.error
    assert ProductImage.objects.count() == 400 and not ProductImage.objects.exclude(status="ready").exists()
    assert len(shoppers.statuses) > 100
    assert not [s for s in shoppers.statuses if s >= 500]
    assert set(shoppers.statuses) == {200}
    assert all(shoppers.panels)  # the panel was on every product page
    # A panel that changed (new products) is a new view token; the first link's token stays.
    assert shoppers.events["clicks"] > 20 and shoppers.events["views"] >= shoppers.events["clicks"]
    page = PanelEvent.objects.filter(channel="page")
    assert page.filter(kind=PanelEvent.Kind.VIEW).count() == shoppers.events["views"]  # none lost
    assert page.filter(kind=PanelEvent.Kind.CLICK).count() == shoppers.events["clicks"]
    assert all(count == 6 for _, _, count in shoppers.versions)
    sequence = [version for _, version, _ in sorted(shoppers.versions)]
    assert sequence[0] == old.pk and sequence[-1] == new.pk
    switch = sequence.index(new.pk)
    assert set(sequence[:switch]) == {old.pk}  # old version until the switch...
    # ...and the new one after it (a cached answer of the old version may linger briefly).
    assert sequence[switch:].count(new.pk) >= 0.9 * len(sequence[switch:])


def write_report(path, shoppers, marks, old_id, new):
    """Figures of one soak run as JSON, written before the assertions judge them."""
    start = marks["start"]
    with shoppers.lock:
        statuses, panels = list(shoppers.statuses), list(shoppers.panels)
        versions = sorted(shoppers.versions)
    served_by = {"old": sum(v == old_id for _, v, _ in versions), "new": sum(v == new.pk for _, v, _ in versions),
                 "other": sum(v not in (old_id, new.pk) for _, v, _ in versions)}
    first_new = next((t - start for t, v, _ in versions if v == new.pk), None)
    payload = {
        "seconds": round(marks["end"] - start, 1),
        "upload_seconds": round(marks["uploaded"] - start, 1),
        "all_ready_seconds": round(marks["ready"] - start, 1),
        "retraining_seconds": round(marks["trained"] - marks["ready"], 1),
        "requests": len(statuses),
        "requests_per_second": round(len(statuses) / max(marks["end"] - start, 1e-9), 1),
        "status_counts": {str(code): statuses.count(code) for code in sorted(set(statuses))},
        "errors_5xx": sum(code >= 500 for code in statuses),
        "product_pages": len(panels), "pages_with_panel": sum(panels),
        "similar_answers": len(versions), "short_answers": sum(count != 6 for _, _, count in versions),
        "answered_by": served_by,
        "first_answer_by_new_version_at_s": None if first_new is None else round(first_new, 1),
        "new_version_activated_at_s": round(marks["trained"] - start, 1),
        "new_version_status": new.status, "new_version_error": new.error,
        "images": ProductImage.objects.count(),
        "images_ready": ProductImage.objects.filter(status="ready").count(),
        "events_sent": dict(shoppers.events),
        "events_written": {"views": PanelEvent.objects.filter(channel="page", kind=PanelEvent.Kind.VIEW).count(),
                           "clicks": PanelEvent.objects.filter(channel="page", kind=PanelEvent.Kind.CLICK).count()},
    }
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
