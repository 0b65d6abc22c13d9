"""Pictures named by URL, downloaded by the worker (issue 16): catalog.downloads against a real
HTTP server on 127.0.0.1 in a thread (allowed through IMAGE_DOWNLOAD_ALLOWED_NETWORKS, as nothing
else is), never any other address: the refused ones are refused before any connection."""

import io
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import call_command
from django.utils import timezone

from catalog import downloads
from catalog.downloads import DownloadError, address_refusal, fetch_image, image_downloads_process
from catalog.importing import catalog_import, catalog_parse, folder_images
from catalog.models import ImageDownload, Product, ProductImage
from tests.conftest import wait_for
from tests.factories import ProductFactory, png_bytes

pytestmark = pytest.mark.django_db

RED, BLUE = png_bytes(size=(40, 48), colour=(200, 10, 10)), png_bytes(size=(40, 48), colour=(10, 10, 200))
HUGE_BODY_BYTES = 64 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # a body without Content-Length ends when the connection closes

    def log_message(self, *args):
        pass

    def send(self, status=200, body=b"", kind="image/png", length=True, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.hits.append(self.path)
        path, port = self.path.split("?")[0], self.server.server_address[1]
        if path in ("/red.png", "/same-red.png"):
            self.send(body=RED)
        elif path == "/blue.png":
            self.send(body=BLUE)
        elif path.startswith("/chain/"):  # /chain/N: N redirects, then a picture
            left = int(path.rsplit("/", 1)[1])
            self.send(302, headers=[("Location", f"/chain/{left - 1}" if left else "/red.png")])
        elif path == "/to-private":
            self.send(302, headers=[("Location", "http://10.0.0.1/x.png")])
        elif path == "/to-other-loopback":
            self.send(302, headers=[("Location", f"http://127.0.0.2:{port}/red.png")])
        elif path == "/endless.png":
            self.stream_endless()
        elif path == "/declared-huge.png":
            self.send(body=b"", headers=[("Content-Length", str(HUGE_BODY_BYTES))], length=False)
        elif path == "/page.png":
            self.send(body=b"<html><body>Not found, but nicely</body></html>", kind="text/html; charset=utf-8")
        elif path == "/trickle.png":  # a picture a byte at a time, each byte well within the read timeout
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.drip(RED)
        elif path == "/slow-headers.png":  # even the headers a byte at a time
            self.wfile.write(b"HTTP/1.0 200 OK\r\n")
            self.drip(b"X-Padding: " + b"a" * 200 + b"\r\n")
        elif path == "/garbage.png":
            self.send(body=b"these bytes are not a picture at all" * 10)
        else:  # /flaky.png and anything else
            self.send(503, body=b"try later", kind="text/plain")

    def drip(self, data: bytes):
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the client hung up
            pass

    def stream_endless(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        chunk = RED + b"\0" * (64 * 1024 - len(RED))
        try:
            for _ in range(HUGE_BODY_BYTES // len(chunk)):
                self.wfile.write(chunk)
            self.server.streamed_all = True
        except OSError:  # the client hung up
            pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.hits, httpd.streamed_all = [], False
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def allowed(settings):
    settings.IMAGE_DOWNLOAD_ALLOWED_NETWORKS = ["127.0.0.1/32"]


def download(url, product=None) -> ImageDownload:
    return ImageDownload.objects.create(product=product or ProductFactory(), url=url)


def run_one(row: ImageDownload) -> ImageDownload:
    image_downloads_process(download_ids=[row.pk])
    row.refresh_from_db()
    return row


def refused(url) -> str:
    with pytest.raises(DownloadError) as caught:
        fetch_image(url)
    return str(caught.value)


def test_a_download_from_an_allowed_server_becomes_a_ready_image(server, allowed):
    from tests.recommender.helpers import process_all

    row = run_one(download(f"{server.url}/red.png?v=3"))
    assert (row.status, row.attempts, row.last_error) == ("done", 1, "")
    image = ProductImage.objects.get(product=row.product)
    assert row.image == image and image.original_name == "red.png" and (image.width, image.height) == (40, 48)
    assert image.status == "pending"  # processed like any upload
    process_all()
    image.refresh_from_db()
    assert image.status == "ready" and image.thumbnails
    assert image_downloads_process(download_ids=[row.pk]) == {"done": 0, "retry": 0, "failed": 0, "skipped": 1}
    assert server.hits == ["/red.png?v=3"]


def test_loopback_is_refused_without_the_allowlist(server, settings):
    settings.IMAGE_DOWNLOAD_ALLOWED_NETWORKS = []
    row = run_one(download(f"{server.url}/red.png"))
    assert row.status == "failed" and row.attempts == 1
    assert "refused: 127.0.0.1 resolves to 127.0.0.1 is a loopback address" in row.last_error
    assert server.hits == [] and not ProductImage.objects.exists()


@pytest.mark.parametrize("address, reason", [
    ("10.0.0.1", "10.0.0.1 is a private address"), ("169.254.169.254", "169.254.169.254 is a link-local address"),
    ("0.0.0.0", "0.0.0.0 is an unspecified address"), ("[::1]", "::1 is a loopback address"),
    ("[::ffff:10.1.2.3]", "10.1.2.3 is a private address"), ("224.0.0.1", "224.0.0.1 is a multicast address"),
    ("100.64.0.1", "100.64.0.1 is not a public address")])
def test_a_literal_private_address_fails_at_once_with_the_reason(allowed, address, reason):
    started = time.monotonic()
    row = run_one(download(f"http://{address}/x.png"))
    assert time.monotonic() - started < 1  # refused before any connection (10.0.0.1 would time out)
    assert row.status == "failed" and reason in row.last_error and row.next_attempt_at is None


def test_the_allowlist_admits_only_its_networks():
    assert address_refusal("127.0.0.1", []) == "127.0.0.1 is a loopback address"
    assert address_refusal("127.0.0.1", [__import__("ipaddress").ip_network("127.0.0.1/32")]) is None
    assert address_refusal("93.184.215.14", []) is None


def test_a_redirect_to_a_refused_address_is_refused(server, allowed):
    assert "10.0.0.1 is a private address" in refused(f"{server.url}/to-private")
    assert "127.0.0.2 is a loopback address" in refused(f"{server.url}/to-other-loopback")
    assert server.hits == ["/to-private", "/to-other-loopback"]  # the targets were never asked


def test_at_most_three_redirects_are_followed(server, allowed):
    assert fetch_image(f"{server.url}/chain/2").content  # 3 redirects: /chain/1, /chain/0, /red.png
    assert refused(f"{server.url}/chain/3") == "more than 3 redirects"
    assert "/red.png" not in server.hits[4:]


def test_an_endless_body_is_cut_at_the_size_cap(server, allowed, settings):
    settings.MAX_UPLOAD_BYTES = 300_000
    started = time.monotonic()
    message = refused(f"{server.url}/endless.png")
    assert message == "the file is larger than the limit of 300,000 bytes (cut while downloading)"
    assert time.monotonic() - started < 5
    time.sleep(0.5)
    assert not server.streamed_all  # the client stopped reading long before the 64 MiB
    assert "64,000,000" not in message
    declared = refused(f"{server.url}/declared-huge.png")
    assert declared == f"the file is too large ({HUGE_BODY_BYTES:,} bytes declared); the limit is 300,000 bytes"


def test_a_page_and_bytes_that_are_no_picture_are_refused(server, allowed):
    assert refused(f"{server.url}/page.png") == "not an image: the server says its type is text/html"
    assert refused(f"{server.url}/garbage.png").startswith("not a usable image: ")
    row = run_one(download(f"{server.url}/garbage.png"))
    assert row.status == "failed" and row.attempts == 1  # retrying cannot help


def test_a_failure_is_retried_with_backoff_then_stays_failed(server, allowed):
    row = download(f"{server.url}/flaky.png")
    delays = []
    for attempt in range(1, downloads.MAX_ATTEMPTS):
        before = timezone.now()
        row = run_one(row)
        assert (row.status, row.attempts, row.last_error) == ("pending", attempt, "the server answered HTTP 503")
        delays.append(round((row.next_attempt_at - before).total_seconds() / 60))
        assert image_downloads_process(download_ids=[row.pk])["skipped"] == 1  # not due yet
        assert row.pk not in downloads.downloads_due(stale=timezone.now() - timedelta(hours=1), limit=10)
        # Its backoff has passed (the clock moved on from the failure to past the retry time).
        ImageDownload.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1),
                                                       updated_at=timezone.now() - timedelta(minutes=10))
        assert row.pk in downloads.downloads_due(stale=timezone.now() - timedelta(hours=1), limit=10)
    assert delays == [1, 2, 4, 8]
    row = run_one(row)
    assert (row.status, row.attempts, row.next_attempt_at) == ("failed", downloads.MAX_ATTEMPTS, None)
    assert row.last_error == "the server answered HTTP 503"
    assert image_downloads_process(download_ids=[row.pk])["skipped"] == 1
    assert len(server.hits) == downloads.MAX_ATTEMPTS


def test_identical_bytes_from_two_urls_are_stored_once(server, allowed):
    product = ProductFactory()
    first, second = download(f"{server.url}/red.png", product), download(f"{server.url}/same-red.png", product)
    assert image_downloads_process(download_ids=[first.pk, second.pk])["done"] == 2
    first.refresh_from_db(), second.refresh_from_db()
    assert product.images.count() == 1 and first.image_id == second.image_id is not None


def import_csv(tmp_path, text) -> tuple[str, str]:
    (tmp_path / "catalog.csv").write_text(text)
    out, err = io.StringIO(), io.StringIO()
    call_command("import_catalog", str(tmp_path / "catalog.csv"), stdout=out, stderr=err, verbosity=0)
    return out.getvalue(), err.getvalue()


def test_an_import_queues_urls_without_files_and_a_reimport_adds_nothing(server, allowed, tmp_path,
                                                                            django_capture_on_commit_callbacks):
    (tmp_path / "blue.png").write_bytes(BLUE)
    csv = ("sku,title,category,images\n"
           f"U-1,Scarf,Scarves,{server.url}/red.png;{server.url}/blue.png\n"  # blue.png is among the files
           f"U-2,Hat,Hats,{server.url}/red.png;{server.url}/same-red.png\n")
    with django_capture_on_commit_callbacks() as callbacks:
        out, err = import_csv(tmp_path, csv)
    assert err == "" and out.splitlines()[-2:] == [
        "3 pictures named by URL queued for download by the worker.", "2 created, 0 updated, 1 images added, "
        "0 rows skipped."]
    assert len(callbacks) >= 1  # the publication, after the commit
    pending = ImageDownload.objects.filter(status="pending")
    assert sorted(pending.values_list("product__sku", "url")) == [
        ("U-1", f"{server.url}/red.png"), ("U-2", f"{server.url}/red.png"), ("U-2", f"{server.url}/same-red.png")]
    assert image_downloads_process(download_ids=list(pending.values_list("pk", flat=True)))["done"] == 3
    assert Product.objects.get(sku="U-2").images.count() == 1
    counts = (ImageDownload.objects.count(), ProductImage.objects.count())
    assert counts == (3, 3)

    out, err = import_csv(tmp_path, csv)  # again: nothing new to download, nothing added
    assert out.splitlines()[-1] == "0 created, 2 updated, 0 images added, 0 rows skipped." and "queued" not in out
    assert (ImageDownload.objects.count(), ProductImage.objects.count()) == counts
    assert not ImageDownload.objects.exclude(status="done").exists()


def test_a_reimport_retries_a_failed_download(server, allowed, tmp_path):
    out, _ = import_csv(tmp_path, f"sku,title,category,images\nU-1,Scarf,Scarves,{server.url}/flaky.png\n")
    row = ImageDownload.objects.get()
    ImageDownload.objects.filter(pk=row.pk).update(status="failed", attempts=5, last_error="HTTP 503")
    out, _ = import_csv(tmp_path, f"sku,title,category,images\nU-1,Scarf,Scarves,{server.url}/flaky.png\n")
    assert "1 pictures named by URL queued" in out
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == ("pending", 0, "")


def test_the_recovery_republishes_lost_and_due_downloads_only():
    from recommender.services.maintenance import recover_lost_work

    fresh, due, lost = download("https://img.example.com/a.png"), download("https://img.example.com/b.png"), \
        download("https://img.example.com/c.png")
    # As a failed attempt leaves it: updated then, its retry due one backoff later (now past).
    ImageDownload.objects.filter(pk=due.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1), attempts=1,
                                                   updated_at=timezone.now() - timedelta(seconds=61))
    ImageDownload.objects.filter(pk=lost.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    assert sorted(downloads.downloads_due(stale=timezone.now() - timedelta(minutes=5), limit=10)) == [due.pk, lost.pk]
    assert recover_lost_work()["downloads"] == 2 and fresh.pk
    # Sent once: not again on every run while a busy queue still holds the message.
    assert recover_lost_work()["downloads"] == 0


def test_a_url_too_long_to_record_is_the_rows_error(tmp_path):
    url = "https://img.example.com/" + "a" * 2000 + ".png"
    parsed = catalog_parse(csv_bytes=f"sku,title,category,images\nL-1,Long,Hats,{url}\n".encode(),
                           open_image=folder_images(tmp_path))
    assert not parsed.rows and "the address is longer than 2,000 bytes" in parsed.errors[0].message
    assert catalog_import(rows=parsed.rows).downloads_queued == 0


@pytest.mark.worker
def test_a_worker_downloads_an_imported_url(server, tmp_path, start_worker):
    start_worker(queues="features", env_overrides={"IMAGE_DOWNLOAD_ALLOWED_NETWORKS": "127.0.0.1/32"})
    parsed = catalog_parse(csv_bytes=f"sku,title,category,images\nW-1,Scarf,Scarves,{server.url}/red.png\n".encode(),
                           open_image=folder_images(tmp_path))
    assert catalog_import(rows=parsed.rows).downloads_queued == 1  # committed: published to the worker
    row = wait_for(lambda: ImageDownload.objects.filter(status="done").first(), timeout=60,
                   message="the download to be done")
    assert row.image.product.sku == "W-1"
    wait_for(lambda: ProductImage.objects.filter(status="ready").exists(), timeout=120,
             message="the downloaded image to be processed")


@pytest.fixture
def short_deadline(monkeypatch):
    monkeypatch.setattr(downloads, "DEADLINE_SECONDS", 1.5)


@pytest.mark.parametrize("path", ["/trickle.png", "/slow-headers.png"])
def test_a_server_that_trickles_is_cut_at_the_deadline(server, allowed, short_deadline, path):
    started = time.monotonic()
    assert "took longer than 1.5 s" in refused(server.url + path)
    assert time.monotonic() - started < 4  # a byte every 0.2 s would last 14 s (the body) or 40 s (headers)


def test_an_internationalised_host_name_is_looked_up_and_sent_in_ascii(server, allowed):
    # Fullwidth "localhost": IDNA maps it to "localhost" (an IDN sent raw broke the Host header).
    port = server.server_address[1]
    assert fetch_image(f"http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:{port}/red.png").width == 40


def test_an_unexpected_error_is_the_rows_not_a_claim_held_forever(monkeypatch):
    def broken(url):
        raise RuntimeError("boom")

    monkeypatch.setattr(downloads, "fetch_image", broken)
    row = run_one(download("https://img.example.com/a.png"))
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error == "unexpected error (RuntimeError: boom)" and row.next_attempt_at is not None


def test_a_download_whose_worker_was_lost_every_time_fails():
    row = download("https://img.example.com/a.png")
    ImageDownload.objects.filter(pk=row.pk).update(status="downloading", attempts=downloads.MAX_ATTEMPTS,
                                                   updated_at=timezone.now() - timedelta(hours=1))
    row = run_one(row)
    assert row.status == "failed" and f"lost {downloads.MAX_ATTEMPTS} times" in row.last_error


@pytest.mark.parametrize("address", ["2002:a00:1::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "fec0::1"])
def test_tunnelled_and_site_local_ipv6_addresses_are_refused(address):
    assert "tunnelled or site-local" in address_refusal(address, [])


def test_recording_downloads_resets_only_the_named_pairs():
    one, two = ProductFactory(), ProductFactory()
    a, b = "https://img.example.com/a.png", "https://img.example.com/b.png"
    failed = ImageDownload.objects.create(product=one, url=a, status="failed", last_error="404")
    other = ImageDownload.objects.create(product=two, url=b, status="failed", last_error="404")
    downloads.downloads_record(pairs=[(one, b), (two, a)])  # the cross product would name (one, a) and (two, b)
    assert set(ImageDownload.objects.filter(pk__in=[failed.pk, other.pk]).values_list("status", flat=True)) == {"failed"}
    assert ImageDownload.objects.filter(status="pending").count() == 2
