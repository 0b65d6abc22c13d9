"""The newcomer's walk through the demo, in headless Chromium (Debian's package, driven by
Playwright), against the live test server and a real Celery worker:

import a Fashion-MNIST catalog -> the worker processes it while the admin shows the backlog ->
log into the admin and train a version, watching the progress bar move -> see similar items on a
product page -> search by photo (and a bad file) -> bulk-upload a new product and watch it
become searchable. Screenshots (desktop and phone widths) go to test-artifacts/browser/.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from PIL import Image

from catalog.models import Product, ProductImage
from recommender.models import ModelVersion
from tests.ui.data import fast_passwords, zip_bytes  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
PRODUCTS = 120

# A missing browser fails these tests (`make test` installs it where it can); skipping them is an
# explicit choice: LOOKALIKE_SKIP_BROWSER=1.
SKIP_ENV = "LOOKALIKE_SKIP_BROWSER"
INSTALL_COMMAND = "sudo apt-get install -y chromium chromium-driver"

pytestmark = [pytest.mark.browser]  # make test-fast leaves them out by this marker
if os.environ.get(SKIP_ENV, "0").strip() not in ("", "0"):
    pytestmark.append(pytest.mark.skip(reason=f"browser tests skipped on request ({SKIP_ENV}={os.environ[SKIP_ENV]})"))


@pytest.fixture(scope="module", autouse=True)
def _chromium_installed():
    """Before anything else of this module starts (worker, browser): is Chromium there?"""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is not installed ({CHROMIUM} is missing), so the browser tests cannot run. "
                    f"`make test` installs it when run as root with apt-get; otherwise run: {INSTALL_COMMAND} "
                    f"(or set {SKIP_ENV}=1 to skip these tests on purpose).", pytrace=False)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Playwright's sync API keeps an event loop on this thread while the browser is open, and
    # Django refuses ORM calls from a thread with a running loop. The tests (and the database
    # flush between them) only use the ORM synchronously between browser steps, which is safe:
    # Django's documented escape hatch, for as long as the browser is open.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Pages:
    """A desktop and a phone tab that share one session (the staff login)."""

    def __init__(self, browser, base_url):
        self.base = base_url
        self.context = browser.new_context(viewport=DESKTOP, base_url=base_url)
        self.context.set_default_timeout(20_000)
        self.desktop = self.context.new_page()
        self.phone = self.context.new_page()
        self.phone.set_viewport_size(PHONE)
        self.errors = []
        for page in (self.desktop, self.phone):
            # Script errors, and responses that are broken (not the 400 of a refused upload).
            page.on("pageerror", lambda exc: self.errors.append(str(exc)))
            page.on("response", lambda r: (r.status >= 500 or r.status == 404 and "favicon" not in r.url)
                    and self.errors.append(f"{r.status} {r.url}"))

    def shot(self, page, name):
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def both(self, path, name, ready=None):
        for page, suffix in ((self.desktop, "desktop"), (self.phone, "phone")):
            page.goto(path)
            if ready:
                page.wait_for_selector(ready)
            self.shot(page, f"{name}-{suffix}")


def png_of(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.worker
def test_newcomer_walkthrough(live_server, start_worker, browser, fashion_mnist, settings):
    (_, _), (x_test, y_test) = fashion_mnist
    # Enough epochs that the training lasts several polls of the progress bar.
    start_worker(env_overrides={"RECOMMENDER_EPOCHS": "80"})
    User.objects.create_superuser("admin", "admin@example.com", "walkthrough-pw")
    pages = Pages(browser, live_server.url)
    desktop, phone = pages.desktop, pages.phone

    # 1. The catalog arrives; the worker makes thumbnails and features while the admin watches.
    call_command("import_fashion_mnist", count=PRODUCTS, verbosity=0)
    desktop.goto("/admin/login/?next=/admin/catalog/product/")
    desktop.fill("#id_username", "admin")
    desktop.fill("#id_password", "walkthrough-pw")
    desktop.click("input[type=submit]")
    desktop.wait_for_selector("#ingestion-progress")
    pages.shot(desktop, "01-admin-products-ingesting-desktop")
    desktop.wait_for_function(
        "() => document.querySelector('#ingestion-progress [data-field=detail]').textContent.startsWith('All ')",
        timeout=240_000)
    assert ProductImage.objects.filter(status="ready").count() == PRODUCTS
    assert ProductImage.objects.exclude(thumbnails={}).count() == PRODUCTS  # made by the worker

    # 2. Train a version from the dashboard and watch the bar move (the page polls; no reload).
    desktop.goto("/admin/recommender/modelversion/")
    desktop.click("#train-button")
    desktop.wait_for_selector("#training-progress[data-state=running]")
    phone.goto("/admin/recommender/modelversion/")
    seen, details, shot = [], set(), False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            state = desktop.get_attribute("#training-progress", "data-state", timeout=3000)
            value = desktop.get_attribute("#training-progress .lk-bar", "aria-valuenow", timeout=3000)
            detail = desktop.text_content("#training-progress [data-field=detail]", timeout=3000)
        except Exception:  # the page reloads itself once the training ends
            continue
        if state != "running":
            break
        seen.append(float(value))
        details.add(detail)
        if not shot and "Epoch" in detail and 20 < float(value) < 70:
            pages.shot(desktop, "02-dashboard-training-desktop")
            pages.shot(phone, "02-dashboard-training-phone")
            shot = True
        time.sleep(0.3)
    desktop.wait_for_selector("#training-progress[data-state=active]", timeout=120_000)
    version = ModelVersion.objects.get()
    assert version.status == "active", version.error
    distinct = sorted(set(seen))
    assert seen == sorted(seen), "the bar went backwards"
    assert len(distinct) >= 3 and distinct[-1] > distinct[0], f"the bar did not move: {seen}"
    assert any(d.startswith("Epoch ") and "accuracy" in d and "left" in d for d in details), details
    desktop.locator("#result_list .lk-badge", has_text="Active").wait_for()  # the page reloaded itself
    pages.shot(desktop, "03-dashboard-trained-desktop")
    pages.both(f"/admin/recommender/modelversion/{version.pk}/change/", "04-version", ready="svg[data-chart=loss]")
    assert desktop.locator("#confusion tbody tr").count() == 10

    # 3. A shopper sees similar items on a product page (phone and desktop).
    product = Product.objects.order_by("id").first()
    pages.both("/", "05-home")
    pages.both(product.get_absolute_url(), "06-product", ready="#similar")
    assert desktop.locator("#similar .card").count() == 6
    assert desktop.locator("#similar .card img").first.get_attribute("src").endswith(".webp")
    desktop.check("#similar input[name=same]")
    desktop.click("#similar button[type=submit]")
    desktop.wait_for_url("**same=1*")
    assert desktop.locator("#similar .card").count() >= 1
    pages.both(f"{product.category.get_absolute_url()}?min_price=20&in_stock=on", "07-category")

    # 4. Search by photo: a Fashion-MNIST test picture the catalog has never seen.
    sneaker = png_of(x_test[list(y_test).index(7)])  # 7 = Sneaker
    for page, suffix in ((desktop, "desktop"), (phone, "phone")):
        page.goto("/search/photo/")
        page.set_input_files("#photo-input", files=[{"name": "sneaker.png", "mimeType": "image/png",
                                                      "buffer": sneaker}])
        page.click("#photo-form button[type=submit]")
        page.wait_for_selector("#results", timeout=120_000)
        pages.shot(page, f"08-photo-search-{suffix}")
    assert desktop.text_content("#predicted").strip() in version.classes
    assert "% sure" in desktop.text_content(".confidence")
    assert desktop.locator("#results .card").count() == 12
    desktop.goto("/search/photo/")
    desktop.set_input_files("#photo-input", files=[{"name": "notes.png", "mimeType": "image/png",
                                                    "buffer": b"shopping list, not a photo"}])
    desktop.click("#photo-form button[type=submit]")
    assert "The file is not an image" in desktop.text_content("#photo-error")
    pages.shot(desktop, "09-photo-search-bad-file-desktop")

    # 5. Staff bulk-upload a new product; it becomes searchable once the worker has processed it.
    boot = png_of(x_test[list(y_test).index(9)])  # 9 = Ankle boot
    archive = zip_bytes({"new/catalog.csv": b"sku,title,category,images,price\nNEW-BOOT,Walkthrough boot,Ankle boot,"
                                            b"boot.png,89.00\n", "new/boot.png": boot})
    desktop.goto("/admin/catalog/product/bulk-upload/")
    desktop.set_input_files("#id_archive", files=[{"name": "new.zip", "mimeType": "application/zip",
                                                   "buffer": archive}])
    desktop.click("input[name=_import]")
    desktop.wait_for_selector("#import-summary")
    assert "1 product created" in desktop.text_content("#import-summary")
    desktop.wait_for_function(
        "() => document.querySelector('#ingestion-progress [data-field=detail]').textContent.startsWith('All ')",
        timeout=120_000)
    pages.shot(desktop, "10-bulk-upload-done-desktop")
    new = Product.objects.get(sku="NEW-BOOT")
    desktop.goto("/search/photo/")
    desktop.set_input_files("#photo-input", files=[{"name": "boot.png", "mimeType": "image/png", "buffer": boot}])
    desktop.click("#photo-form button[type=submit]")
    desktop.wait_for_selector("#results")
    assert desktop.locator("#results .card .title").first.text_content() == "Walkthrough boot"
    desktop.goto(new.get_absolute_url())
    assert desktop.locator("#similar .card").count() == 6

    # 6. Retire and re-activate the version with the buttons of its row on the dashboard.
    desktop.goto("/admin/recommender/modelversion/")
    desktop.click(f"#result_list button[formaction$='/{version.pk}/retire/']")
    assert f"Version v{version.pk} is retired" in desktop.text_content(".messagelist")
    desktop.click(f"#result_list button[formaction$='/{version.pk}/activate/']")
    assert f"Version v{version.pk} is now active" in desktop.text_content(".messagelist")
    version.refresh_from_db()
    assert version.status == "active"

    assert not pages.errors, pages.errors
    pages.context.close()


def test_basics_work_without_javascript(live_server, browser, transactional_db):
    """Browsing, the similar-items toggle and search by photo are plain links and forms."""
    from tests.factories import CategoryFactory, ProductFactory, ProductImageFactory, png_bytes
    from tests.ui.data import add_features, catalog

    products = catalog(per_category=4, categories=("Shoes", "Bags"))
    product = ProductFactory(category=CategoryFactory(name="Bags", slug="bags"), title="Plain tote")
    ProductImageFactory(product=product, data=png_bytes(seed=1))
    add_features([*products, product])  # processed images (cold start: no model yet)
    context = browser.new_context(java_script_enabled=False, viewport=PHONE, base_url=live_server.url)
    page = context.new_page()
    page.goto("/")
    page.click(".categories a:has-text('Bags')")
    page.fill(".filters input[name=max_price]", "1000")
    page.click(".filters button[type=submit]")
    page.click("text=Plain tote")
    assert page.text_content("h1") == "Plain tote"

    # The similar-items toggle is a plain GET form.
    assert page.locator("#similar .card").count() == 6
    assert "same=1" not in page.url
    page.check("#similar input[name=same]")
    page.click("#similar button[type=submit]")
    page.wait_for_url("**same=1**")
    assert "same=1" in page.url
    assert page.locator("#similar").count() == 1 and page.is_checked("#similar input[name=same]")
    titles = page.locator("#similar .card .title").all_text_contents()
    assert titles and all(t.startswith("Bags") for t in titles)

    # Search by photo: a bad file, then a real one.
    page.goto("/search/photo/")
    page.set_input_files("#photo-input", files=[{"name": "x.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.click("#photo-form button[type=submit]")
    assert "The file is not an image" in page.text_content("#photo-error")
    page.set_input_files("#photo-input", files=[{"name": "bag.png", "mimeType": "image/png",
                                                 "buffer": png_bytes((48, 48), seed=2)}])
    page.click("#photo-form button[type=submit]")
    page.wait_for_selector("#results")
    assert page.locator("#results .card").count() == len(products) + 1  # the whole (small) catalog
    assert "No trained model yet" in page.text_content("#prediction")
    page.screenshot(path=str(ARTIFACTS / "11-no-javascript-phone.png"), full_page=True)
    context.close()


def test_a_shopper_draws_a_box_on_the_photo_and_searches_inside_it(live_server, browser, transactional_db):
    """Search by photo with a box: choose a photo, drag across it (the mouse's pointer events), see
    the box fill the form's four fields, clear it, draw it again, search, and see it was used."""
    from tests.ui.data import add_features, catalog

    add_features(catalog(per_category=3, categories=("Shoes", "Bags")))  # processed images, no model yet
    photo = Image.new("RGB", (300, 150), (30, 30, 200))
    photo.paste(Image.new("RGB", (150, 150), (200, 30, 30)), (150, 0))
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    context = browser.new_context(viewport=DESKTOP, base_url=live_server.url)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/search/photo/")
    assert not page.is_visible("#box-stage")  # nothing to draw on before a photo is chosen
    page.set_input_files("#photo-input", files=[{"name": "two.png", "mimeType": "image/png",
                                                 "buffer": buffer.getvalue()}])
    page.wait_for_function("() => document.getElementById('box-image').naturalWidth > 0")
    image = page.locator("#box-image").bounding_box()

    def drag(x0, y0, x1, y1):
        page.mouse.move(image["x"] + x0 * image["width"], image["y"] + y0 * image["height"])
        page.mouse.down()
        page.mouse.move(image["x"] + x1 * image["width"], image["y"] + y1 * image["height"], steps=6)
        page.mouse.up()

    def box():
        return [float(page.input_value(f"input[name={name}]") or "nan")
                for name in ("box_x", "box_y", "box_width", "box_height")]

    drag(0.9, 0.8, 0.2, 0.1)  # any direction
    assert box() == pytest.approx([0.2, 0.1, 0.7, 0.7], abs=0.02)
    assert page.is_visible("#box-rect") and page.is_enabled("#box-clear")
    page.click("#box-clear")
    assert page.input_value("input[name=box_x]") == "" and not page.is_visible("#box-rect")
    drag(0.52, 0.05, 0.98, 0.95)  # the red right half
    drag(0.3, 0.3, 0.31, 0.31)  # a click: keeps the box there was
    assert box() == pytest.approx([0.52, 0.05, 0.46, 0.9], abs=0.02)
    page.screenshot(path=str(ARTIFACTS / "12-photo-search-box-drawn-desktop.png"), full_page=True)
    page.click("#photo-form button[type=submit]")
    page.wait_for_selector("#results")
    assert page.locator("#results .card").count() == 6
    assert "Searched inside your box (46% x 90% of the photo)" in page.text_content("#box-used")
    used = [float(v) for v in page.get_attribute("#box-used", "data-box").split(",")]
    assert used == pytest.approx([0.52, 0.05, 0.46, 0.9], abs=0.02)
    page.screenshot(path=str(ARTIFACTS / "13-photo-search-box-used-desktop.png"), full_page=True)
    assert not errors, errors
    context.close()


def _pick(page, group, text):
    """Add a row to an admin inline and choose a product in its autocomplete (select2) box."""
    page.click(f"#{group}-group .add-row a")
    page.locator(f"#{group}-group .select2-selection").last.click()
    page.fill(".select2-search__field", text)
    page.click(f".select2-results__option:has-text('{text}')")


def test_a_merchandiser_pins_blocks_and_runs_an_experiment(live_server, browser, transactional_db, settings):
    """Staff pin a product to the top of a panel and block another (the product's page, select2
    boxes), check the preview, start an A/B experiment from the dashboard, see a shopper's view
    and click counted in the arm the shopper was given, and promote the candidate."""
    from recommender.selectors import similar_products
    from recommender.services import events
    from tests.recommender.helpers import retired_and_active

    old, new = retired_and_active(settings)
    ModelVersion.objects.filter(pk=old.pk).update(status="ready")  # a candidate to compare with v(new)
    User.objects.create_superuser("merch", "merch@example.com", "merch-pw")
    product = Product.objects.order_by("id").first()
    before = [item.product.pk for item in similar_products(product=product, k=6).items]
    pin = Product.objects.exclude(pk__in=[product.pk, *before]).order_by("-id").first()
    blocked = Product.objects.get(pk=before[0])
    pages = Pages(browser, live_server.url)
    desktop = pages.desktop
    desktop.goto(f"/admin/login/?next=/admin/catalog/product/{product.pk}/change/")
    desktop.fill("#id_username", "merch")
    desktop.fill("#id_password", "merch-pw")
    desktop.click("input[type=submit]")

    # 1. Pin and block on the product's page, then check the preview.
    _pick(desktop, "panel_pins", pin.sku)
    _pick(desktop, "panel_blocks", blocked.sku)
    desktop.click("input[name=_continue]")
    assert "was changed successfully" in desktop.text_content(".messagelist")
    desktop.goto(f"/admin/catalog/product/{product.pk}/panel/")
    active_panel = desktop.locator(f"#panel-{new.pk} li")
    assert active_panel.first.get_attribute("data-product") == str(pin.pk)
    assert "lk-pinned" in active_panel.first.get_attribute("class")
    assert str(blocked.pk) not in [active_panel.nth(n).get_attribute("data-product") for n in range(6)]
    pages.shot(desktop, "14-panel-preview-desktop")

    # 2. Start an experiment: v(new) as A, the ready v(old) as B, half of the visitors each.
    desktop.goto("/admin/recommender/modelversion/")
    desktop.select_option("#experiment-candidate", str(old.pk))
    desktop.select_option("#experiment-split", "0.5")
    desktop.click("#experiment-start-button")
    assert "started" in desktop.text_content(".messagelist")
    assert desktop.text_content("#verdict").strip() == "Not enough data yet"

    # 3. A shopper: the first page gives the browser its visitor id (the beacon), the next ones are
    # answered by its arm; the pin is first whichever version answers, the blocked product absent.
    shopper = browser.new_context(viewport=DESKTOP, base_url=live_server.url).new_page()
    for _ in range(2):
        shopper.goto(product.get_absolute_url())
        shopper.locator("img.beacon").scroll_into_view_if_needed()
        shopper.wait_for_function("() => document.querySelector('img.beacon').complete")
    cards = shopper.locator("#similar .card")
    assert cards.count() == 6 and f"/p/{pin.pk}/" in cards.first.get_attribute("href")
    assert not shopper.locator(f"#similar .card[href^='/p/{blocked.pk}/']").count()
    cards.nth(1).click()
    shopper.wait_for_selector("h1")
    # Three views (the product twice, then the clicked product's own panel) and a click; the beat
    # writes them every few seconds, the test at once.
    assert events.panel_events_flush() == 4

    # 4. The dashboard counts them in the shopper's arm; staff promote the candidate.
    desktop.reload()  # the dashboard, again
    rows = desktop.locator("#experiment-arms tbody tr")
    cells = [rows.nth(n).locator("td").all_text_contents() for n in range(rows.count())]
    counts = [(int(row[1]), int(row[2])) for row in cells]  # arm, views, clicks, CTR, per 1,000
    assert sorted(counts) == [(0, 0), (2, 1)]  # the first view came before the shopper had an id: outside
    pages.shot(desktop, "15-ab-experiment-desktop")
    desktop.click("#experiment-end button[value=promote]")
    assert "promoted" in desktop.text_content(".messagelist")
    assert ModelVersion.objects.get(pk=old.pk).status == "active"
    assert not pages.errors, pages.errors
    pages.context.close()
