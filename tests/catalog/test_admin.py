"""The catalog admin through the test client: adding a product with an image, image status,
the failed filter and retry, and the bulk upload (ZIP + CSV) with its per-row report."""

import io
import zipfile

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from catalog.models import Category, Product, ProductImage
from tests.factories import CategoryFactory, ProductFactory, ProductImageFactory, png_bytes, upload
from tests.ui.data import fast_passwords, media_files, zip_bytes  # noqa: F401 (fast_passwords: autouse)

pytestmark = pytest.mark.django_db

ADD_URL = "admin:catalog_product_add"
BULK_URL = "admin:catalog_product_bulk_upload"


def inline_management(total=1, initial=0):
    empty = {f"{prefix}-{field}": value for prefix in ("panel_pins", "panel_blocks")  # the panel rules' inlines
             for field, value in (("TOTAL_FORMS", "0"), ("INITIAL_FORMS", "0"), ("MIN_NUM_FORMS", "0"),
                                  ("MAX_NUM_FORMS", "1000"))}
    return {"images-TOTAL_FORMS": str(total), "images-INITIAL_FORMS": str(initial),
            "images-MIN_NUM_FORMS": "0", "images-MAX_NUM_FORMS": "1000", **empty}


def product_form(category, **overrides):
    data = {"sku": "NEW-1", "title": "New boot", "description": "Waterproof", "category": str(category.pk),
            "price": "49.90", "is_active": "on", "in_stock": "on", "_save": "Save", **inline_management()}
    data.update(overrides)
    return data


# --------------------------------------------------------------------------- add a product


def test_admin_adds_a_product_with_an_image(admin_client, settings, django_capture_on_commit_callbacks):
    category = CategoryFactory(name="Boots", slug="boots")
    response = admin_client.get(reverse(ADD_URL))
    assert response.status_code == 200 and 'name="images-0-image"' in response.content.decode()

    data = product_form(category, **{"images-0-image": upload(png_bytes((48, 40), seed=5), "boot.png"),
                                     "images-0-position": "0"})
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(reverse(ADD_URL), data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    product = Product.objects.get(sku="NEW-1")
    assert (product.title, str(product.price), product.category) == ("New boot", "49.90", category)
    image = product.images.get()
    assert image.status == ProductImage.Status.PENDING
    assert (image.width, image.height, image.original_name) == (48, 40, "boot.png")
    assert image.image.name.startswith("products/") and image.image.name.endswith(".png")
    assert (settings.MEDIA_ROOT / image.image.name).is_file()
    assert callbacks, "saving the image must enqueue its processing after commit"

    page = admin_client.get(reverse("admin:catalog_product_change", args=[product.pk])).content.decode()
    assert "Pending" in page and "48x40" in page


def test_admin_refuses_a_product_whose_image_is_not_an_image(admin_client, settings):
    category = CategoryFactory()
    before = media_files(settings)
    data = product_form(category, **{"images-0-image": upload(b"%PDF-1.4 not a picture", "spec.png"),
                                     "images-0-position": "0"})
    response = admin_client.post(reverse(ADD_URL), data)
    assert response.status_code == 200
    assert "The file is not an image" in response.content.decode()
    assert not Product.objects.exists() and not ProductImage.objects.exists()
    assert media_files(settings) == before


def test_admin_edits_a_product_and_keeps_its_image(admin_client):
    image = ProductImageFactory(product=ProductFactory(sku="KEEP-1", title="Old title"))
    product = image.product
    data = product_form(product.category, sku="KEEP-1", title="New title", **inline_management(total=2, initial=1),
                        **{"images-0-id": str(image.pk), "images-0-product": str(product.pk),
                           "images-0-position": "3", "images-1-position": "0"})
    response = admin_client.post(reverse("admin:catalog_product_change", args=[product.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    product.refresh_from_db()
    kept = product.images.get()
    assert (product.title, kept.pk, kept.image.name, kept.position) == ("New title", image.pk, image.image.name, 3)


def test_admin_refuses_a_product_image_that_is_too_large(admin_client, settings):
    settings.MAX_UPLOAD_BYTES = 2_000
    from PIL import Image

    noisy = io.BytesIO()
    Image.effect_noise((64, 64), 90).convert("RGB").save(noisy, "PNG")
    data = product_form(CategoryFactory(), **{"images-0-image": upload(noisy.getvalue(), "big.png"),
                                              "images-0-position": "0"})
    html = admin_client.post(reverse(ADD_URL), data).content.decode()
    assert "The file is too large" in html and "the limit is 2,000 bytes" in html
    assert not Product.objects.exists()


def test_admin_refuses_the_same_picture_twice_on_one_product(admin_client):
    category = CategoryFactory()
    data = png_bytes(seed=11)
    form = product_form(category, **inline_management(total=2),
                        **{"images-0-image": upload(data, "a.png"), "images-0-position": "0",
                           "images-1-image": upload(data, "b.png"), "images-1-position": "1"})
    response = admin_client.post(reverse(ADD_URL), form)
    assert response.status_code == 200
    assert "This picture is already attached to the product." in response.content.decode()
    assert not Product.objects.exists()


# --------------------------------------------------------------------------- status, filter, retry


@pytest.fixture
def mixed_images():
    ok = ProductImageFactory(product=ProductFactory(title="All good"))
    ProductImage.objects.filter(pk=ok.pk).update(status="ready")
    bad = ProductImageFactory(product=ProductFactory(title="Broken picture"))
    ProductImage.objects.filter(pk=bad.pk).update(status="failed", attempts=5,
                                                  last_error="Could not decode the image: OSError: truncated")
    waiting = ProductImageFactory(product=ProductFactory(title="Still waiting"))
    return ok, bad, waiting


def test_product_changelist_shows_image_counts_and_filters_failed(admin_client, mixed_images,
                                                                   django_assert_max_num_queries):
    url = reverse("admin:catalog_product_changelist")
    with django_assert_max_num_queries(14):
        response = admin_client.get(url)
    html = response.content.decode()
    assert all(t in html for t in ["All good", "Broken picture", "Still waiting"])
    assert "Bulk upload (ZIP + CSV)" in html
    assert 'id="ingestion-progress"' in html and "1 waiting · 1 ready · 1 failed" in html

    failed = admin_client.get(url, {"images": "failed"}).content.decode()
    assert "Broken picture" in failed and "All good" not in failed and "Still waiting" not in failed
    pending = admin_client.get(url, {"images": "pending"}).content.decode()
    assert "Still waiting" in pending and "Broken picture" not in pending


def test_product_change_page_shows_each_image_status_and_error(admin_client, mixed_images):
    _, bad, _ = mixed_images
    html = admin_client.get(reverse("admin:catalog_product_change", args=[bad.product_id])).content.decode()
    assert "Failed" in html
    assert "Could not decode the image: OSError: truncated" in html


def test_retry_action_requeues_failed_images(admin_client, mixed_images, django_capture_on_commit_callbacks):
    ok, bad, waiting = mixed_images
    url = reverse("admin:catalog_product_changelist")
    ids = [str(ok.product_id), str(bad.product_id), str(waiting.product_id)]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(url, {"action": "retry_failed_images", "_selected_action": ids}, follow=True)
    assert "1 failed images queued again." in response.content.decode()
    bad.refresh_from_db()
    assert (bad.status, bad.attempts, bad.last_error) == ("pending", 0, "")
    assert ProductImage.objects.get(pk=ok.pk).status == "ready"
    assert len(callbacks) == 1


def test_image_admin_filters_by_status_and_retries(admin_client, mixed_images):
    ok, bad, _ = mixed_images
    url = reverse("admin:catalog_productimage_changelist")
    html = admin_client.get(url, {"status__exact": "failed"}).content.decode()
    assert "truncated" in html and f"image {ok.pk} of" not in html
    response = admin_client.post(url, {"action": "retry", "_selected_action": [str(bad.pk), str(ok.pk)]}, follow=True)
    assert "1 failed images queued again." in response.content.decode()
    assert ProductImage.objects.get(pk=bad.pk).status == "pending"


def test_admin_pages_need_staff(client):
    User.objects.create_user("shopper", password="pw")
    client.login(username="shopper", password="pw")
    for name in ["admin:catalog_product_changelist", BULK_URL, "admin:recommender_modelversion_changelist"]:
        response = client.get(reverse(name))
        assert response.status_code == 302 and "/admin/login/" in response["Location"], name


# --------------------------------------------------------------------------- bulk upload

CSV = (b"sku,title,category,images,price,description\n"
       b"B-1,Red sneaker,Sneakers,img/red.png,59.90,Bright\n"
       b"B-2,Blue tote,Bags,img/blue.png;img/blue-2.png,35,\n")


def good_zip(extra=None, csv=None):
    files = {"img/red.png": png_bytes(seed=21), "img/blue.png": png_bytes(seed=22),
             "img/blue-2.png": png_bytes(seed=23)}
    if csv is not None:
        files["catalog.csv"] = csv
    files.update(extra or {})
    return zip_bytes(files)


def post_bulk(admin_client, archive: bytes, csv: bytes | None = CSV, button="_import", **fields):
    data = {"archive": upload(archive, "images.zip", "application/zip"), button: "1", **fields}
    if csv is not None:
        data["catalog"] = upload(csv, "catalog.csv", "text/csv")
    return admin_client.post(reverse(BULK_URL), data)


def test_bulk_upload_page_renders(admin_client):
    response = admin_client.get(reverse(BULK_URL))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="archive"' in html and 'name="catalog"' in html and 'name="skip_invalid"' in html
    assert "Check only" in html and "Import" in html


def test_bulk_upload_check_only_reports_and_writes_nothing(admin_client, settings):
    before = media_files(settings)
    response = post_bulk(admin_client, good_zip(), button="_check")
    assert response.status_code == 200
    html = response.content.decode()
    assert "All 2 rows are valid" in html and html.count("Will create") == 2
    assert "3 images" in html
    assert not Product.objects.exists() and not Category.objects.exists()
    assert media_files(settings) == before


def test_bulk_upload_imports_products_and_images(admin_client, settings, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = post_bulk(admin_client, good_zip())
    assert response.status_code == 200
    html = response.content.decode()
    assert "2 products created, 0 updated, 3 images added" in html
    assert 'id="ingestion-progress"' in html and html.count("Created") >= 2
    red = Product.objects.get(sku="B-1")
    assert (red.title, str(red.price), red.category.name, red.description) == ("Red sneaker", "59.90", "Sneakers",
                                                                             "Bright")
    assert Product.objects.get(sku="B-2").images.count() == 2
    assert ProductImage.objects.filter(status="pending").count() == 3
    assert sorted(ProductImage.objects.values_list("original_name", flat=True)) == ["blue-2.png", "blue.png",
                                                                                   "red.png"]

    # The same upload again changes nothing (existing SKUs are updated, pictures deduplicated).
    again = post_bulk(admin_client, good_zip()).content.decode()
    assert "0 products created, 2 updated, 0 images added" in again
    assert ProductImage.objects.count() == 3


def test_bulk_upload_takes_the_csv_from_inside_the_zip(admin_client):
    csv = CSV.replace(b"img/", b"")  # names relative to the CSV's folder
    archive = zip_bytes({"shop/catalog.csv": csv, "shop/red.png": png_bytes(seed=21),
                         "shop/blue.png": png_bytes(seed=22), "shop/blue-2.png": png_bytes(seed=23),
                         "__MACOSX/shop/._catalog.csv": b"\x00\x05junk"})
    response = post_bulk(admin_client, archive, csv=None)
    assert response.status_code == 200, response.content.decode()[:2000]
    assert Product.objects.count() == 2 and ProductImage.objects.count() == 3


def test_bulk_upload_with_a_bad_row_writes_nothing_and_reports_each_row(admin_client, settings):
    csv = CSV + (b"B-3,,Bags,img/missing.png,abc,\n"
                 b"B-4,Fake photo,Bags,img/fake.png,10,\n"
                 b"B-1,Duplicate,Sneakers,img/red.png,1,\n")
    archive = good_zip({"img/fake.png": b"<html>not a picture</html>"})
    before = media_files(settings)
    response = post_bulk(admin_client, archive, csv=csv)
    assert response.status_code == 400
    html = response.content.decode()
    assert "Nothing was imported: 3 rows of 5 have errors" in html
    assert "import the 2 valid rows only" in html
    assert "title is empty" in html and "image &#x27;img/missing.png&#x27; not found" in html
    assert "price &#x27;abc&#x27; is not a non-negative number" in html
    assert "image &#x27;img/fake.png&#x27;: The file is not an image" in html
    assert "duplicate sku (first on line 2)" in html
    for line in (2, 3, 4, 5, 6):
        assert f'<td class="num">{line}</td>' in html
    assert not Product.objects.exists() and not Category.objects.exists() and not ProductImage.objects.exists()
    assert media_files(settings) == before


def test_bulk_upload_can_import_only_the_valid_rows_when_asked(admin_client):
    csv = CSV + b"B-3,Ghost,Bags,img/missing.png,1,\n"
    response = post_bulk(admin_client, good_zip(), csv=csv, skip_invalid="on")
    assert response.status_code == 200
    html = response.content.decode()
    assert "1 row with errors skipped" in html
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["B-1", "B-2"]


@pytest.mark.parametrize("member", ["../evil.png", "/etc/evil.png", "C:/evil.png", "img/../../evil.png"])
def test_bulk_upload_refuses_a_zip_with_unsafe_paths(admin_client, member):
    response = post_bulk(admin_client, good_zip({member: png_bytes(seed=1)}))
    assert response.status_code == 400
    html = response.content.decode()
    assert "it was refused as a whole" in html
    assert not Product.objects.exists()


@pytest.mark.parametrize("name", ["../img/red.png", "/img/red.png"])
def test_bulk_upload_refuses_unsafe_names_in_the_csv(admin_client, name):
    csv = b"sku,title,category,images\nU-1,Escape,Bags," + name.encode() + b"\n"
    response = post_bulk(admin_client, good_zip(), csv=csv)
    assert response.status_code == 400
    assert "refused:" in response.content.decode()
    assert not Product.objects.exists()


def test_bulk_upload_bounds_member_count_and_uncompressed_size(admin_client, settings):
    settings.BULK_UPLOAD_MAX_FILES = 3
    html = post_bulk(admin_client, good_zip({"img/extra.png": png_bytes(seed=3)})).content.decode()
    assert "The ZIP holds 4 entries; the limit is 3." in html

    settings.BULK_UPLOAD_MAX_FILES = 100
    settings.BULK_UPLOAD_MAX_BYTES = 1_000_000
    bomb = zip_bytes({"img/red.png": png_bytes(seed=21), "zeros.bin": b"\0" * 2_000_000})
    assert len(bomb) < 10_000  # compresses ~1000:1
    html = post_bulk(admin_client, bomb).content.decode()
    assert "The ZIP would expand to" in html and "the limit is 1,000,000 bytes" in html
    assert not Product.objects.exists()


def test_bulk_upload_refuses_an_oversized_image_inside_the_zip(admin_client, settings):
    settings.MAX_UPLOAD_BYTES = 5_000
    noisy = io.BytesIO()
    from PIL import Image

    Image.effect_noise((96, 96), 90).convert("RGB").save(noisy, "PNG")
    csv = b"sku,title,category,images\nL-1,Large,Bags,big.png\n"
    html = post_bulk(admin_client, zip_bytes({"big.png": noisy.getvalue()}), csv=csv).content.decode()
    assert "image &#x27;big.png&#x27;: the file is too large" in html
    assert not Product.objects.exists()


@pytest.mark.parametrize("archive,csv,message", [
    (b"PK\x03\x04 this is not really a zip", CSV, "The images file is not a ZIP archive"),
    (b"plain text", CSV, "The images file is not a ZIP archive"),
    (zip_bytes({"a.png": png_bytes(seed=1)}), None, "the ZIP has no .csv file"),
    (zip_bytes({"a.csv": CSV, "b.csv": CSV}), None, "the ZIP has 2 .csv files"),
    (zip_bytes({"a.png": png_bytes(seed=1)}), b"name,picture\nx,a.png\n", "The CSV is missing the column(s): sku"),
    (zip_bytes({"a.png": png_bytes(seed=1)}), b"sku,title,category,images\n", "The CSV has a header but no rows."),
    (zip_bytes({"a.png": png_bytes(seed=1)}), b"\x89PNG\r\n\x1a\n\x00\x00binary", "The CSV file is binary"),
])
def test_bulk_upload_explains_unusable_files(admin_client, archive, csv, message):
    response = post_bulk(admin_client, archive, csv=csv)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Product.objects.exists()


def test_bulk_upload_refuses_an_encrypted_member(admin_client):
    archive = bytearray(good_zip())
    # Set the "encrypted" flag bit of every entry (local and central headers): zipfile then
    # refuses to read it without a password; the form must report it, not crash.
    with zipfile.ZipFile(io.BytesIO(bytes(archive))) as probe:
        offsets = [info.header_offset for info in probe.infolist()]
    for offset in offsets:
        archive[offset + 6] |= 0x1
    central = bytes(archive).find(b"PK\x01\x02")
    while central != -1:
        archive[central + 8] |= 0x1
        central = bytes(archive).find(b"PK\x01\x02", central + 4)
    html = post_bulk(admin_client, bytes(archive)).content.decode()
    assert "the file is encrypted in the ZIP" in html
    assert not Product.objects.exists()


def test_bulk_upload_needs_the_add_permission(client):
    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    client.login(username="clerk", password="pw")
    assert client.get(reverse(BULK_URL)).status_code == 403
    changelist = client.get(reverse("admin:catalog_product_changelist"))
    assert changelist.status_code == 200


# --------------------------------------------------------------------------- permissions of a view-only clerk


def clerk(client, *codenames):
    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.login(username="clerk", password="pw")
    return user


def test_view_only_staff_is_not_offered_the_actions_that_change_rows(client, mixed_images):
    ok, bad, waiting = mixed_images
    clerk(client, "view_product", "view_productimage")
    products = reverse("admin:catalog_product_changelist")
    images = reverse("admin:catalog_productimage_changelist")
    html = client.get(products).content.decode()
    assert "Broken picture" in html  # the clerk does see the list
    for action in ["retry_failed_images", "mark_inactive", "mark_active"]:
        assert f'value="{action}"' not in html, action
    assert 'value="retry"' not in client.get(images).content.decode()

    # Posting an action anyway changes nothing.
    ids = [str(ok.product_id), str(bad.product_id), str(waiting.product_id)]
    for action in ["retry_failed_images", "mark_inactive"]:
        response = client.post(products, {"action": action, "_selected_action": ids})
        assert response.status_code in (200, 302)
    client.post(images, {"action": "retry", "_selected_action": [str(bad.pk)]})
    bad.refresh_from_db()
    assert (bad.status, bad.attempts) == ("failed", 5)
    assert Product.objects.filter(is_active=True).count() == 3


def test_staff_with_the_change_permission_gets_the_actions(client, mixed_images):
    clerk(client, "view_product", "change_product", "view_productimage", "change_productimage")
    html = client.get(reverse("admin:catalog_product_changelist")).content.decode()
    assert all(f'value="{a}"' in html for a in ["retry_failed_images", "mark_inactive", "mark_active"])
    assert 'value="retry"' in client.get(reverse("admin:catalog_productimage_changelist")).content.decode()


def test_bulk_upload_without_the_change_permission_refuses_to_update_existing_products(client, settings):
    ProductFactory(sku="B-1", title="Old title", price=1)
    clerk(client, "view_product", "add_product", "add_productimage", "add_category")
    before = media_files(settings)

    check = post_bulk(client, good_zip(), button="_check")
    assert check.status_code == 200
    html = check.content.decode()
    assert "1 row would update existing products (B-1), and you may add products but not change them" in html
    assert "press “Import”" not in html

    response = post_bulk(client, good_zip())
    assert response.status_code == 403
    html = response.content.decode()
    assert "Nothing was imported: 1 row would update existing products (B-1)" in html
    assert "“Can change product” permission" in html
    assert list(Product.objects.values_list("sku", "title")) == [("B-1", "Old title")]
    assert not ProductImage.objects.exists() and media_files(settings) == before

    # Only new SKUs: the add permission is enough.
    csv = b"sku,title,category,images\nB-9,New tote,Bags,img/blue.png\n"
    response = post_bulk(client, good_zip(), csv=csv)
    assert response.status_code == 200, response.content.decode()[:2000]
    assert Product.objects.filter(sku="B-9").exists()


def test_bulk_upload_needs_the_permission_to_add_images(client):
    """Every row brings pictures: the change form would refuse them without add_productimage."""
    clerk(client, "view_product", "add_product", "add_category")
    assert client.get(reverse(BULK_URL)).status_code == 403
    assert post_bulk(client, good_zip()).status_code == 403
    assert not Product.objects.exists()


def test_bulk_upload_without_the_category_permission_refuses_new_categories(client, settings):
    clerk(client, "view_product", "add_product", "add_productimage")
    before = media_files(settings)
    csv = b"sku,title,category,images\nB-9,New tote,Bags,img/blue.png\n"
    response = post_bulk(client, good_zip(), csv=csv)
    assert response.status_code == 403
    html = response.content.decode()
    assert "Nothing was imported: the CSV names 1 new category (Bags), and you may not add categories" in html
    assert not Product.objects.exists() and not Category.objects.exists() and media_files(settings) == before

    # Existing categories need no such permission.
    CategoryFactory(name="Bags")
    assert post_bulk(client, good_zip(), csv=csv).status_code == 200
    assert Product.objects.filter(sku="B-9", category__name="Bags").exists()


# --------------------------------------------------------------------------- images of an existing product


def ready_image_with_thumbnails(settings):
    from PIL import Image

    from catalog.thumbnails import thumbnails_create

    image = ProductImageFactory(data=png_bytes((64, 64), seed=31))
    with image.image.open("rb") as handle:
        picture = Image.open(handle)
        picture.load()
    image.thumbnails = thumbnails_create(image_field=image.image, picture=picture, sizes=settings.THUMBNAIL_SIZES)
    image.status = ProductImage.Status.READY
    image.save(update_fields=["thumbnails", "status"])
    return image


def test_an_existing_image_row_shows_its_file_but_cannot_replace_it(admin_client, settings):
    image = ready_image_with_thumbnails(settings)
    product = image.product
    url = reverse("admin:catalog_product_change", args=[product.pk])
    html = admin_client.get(url).content.decode()
    assert 'name="images-0-image"' not in html  # no file input on the existing row
    assert image.image.url in html and "delete this row and add a new one" in html
    assert 'name="images-1-image"' in html  # the empty row still takes a new picture

    before = (media_files(settings), image.image.name, image.content_hash, image.thumbnails)
    data = product_form(product.category, sku=product.sku, title=product.title,
                        **inline_management(total=2, initial=1),
                        **{"images-0-id": str(image.pk), "images-0-product": str(product.pk),
                           "images-0-position": "0", "images-0-image": upload(png_bytes((48, 48), seed=32), "new.png"),
                           "images-1-position": "0"})
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    image.refresh_from_db()
    assert (media_files(settings), image.image.name, image.content_hash, image.thumbnails) == before
    assert (image.status, image.width, image.height) == ("ready", 64, 64)
    assert product.images.count() == 1


def test_deleting_an_image_row_removes_its_file_and_thumbnails(admin_client, settings,
                                                               django_capture_on_commit_callbacks):
    image = ready_image_with_thumbnails(settings)
    product = image.product
    assert len(media_files(settings)) == 1 + len(image.thumbnails) and image.thumbnails
    data = product_form(product.category, sku=product.sku, title=product.title,
                        **inline_management(total=1, initial=1),
                        **{"images-0-id": str(image.pk), "images-0-product": str(product.pk),
                           "images-0-position": "0", "images-0-DELETE": "on"})
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:catalog_product_change", args=[product.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert not product.images.exists()
    assert media_files(settings) == []


# --------------------------------------------------------------------------- files follow the transaction


def test_inline_pictures_written_before_the_admin_save_rolls_back_are_removed(admin_client, settings):
    """The change view saves the product, then each new inline row: the first row's file and row
    are written, then the database refuses the second row (a CHECK this test adds, standing for
    any failure after a file was stored). The admin's transaction rolls back: no file may stay."""
    from django.db import IntegrityError, connection

    product = ProductFactory(sku="ROLL-1", title="Boot")
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE catalog_productimage ADD CONSTRAINT test_refuses_position_7 CHECK (position <> 7)")
    data = product_form(product.category, sku="ROLL-1", title="Renamed", **inline_management(total=2),
                        **{"images-0-image": upload(png_bytes(seed=41), "a.png"), "images-0-position": "0",
                           "images-1-image": upload(png_bytes(seed=42), "b.png"), "images-1-position": "7"})
    with pytest.raises(IntegrityError, match="test_refuses_position_7"):
        admin_client.post(reverse("admin:catalog_product_change", args=[product.pk]), data)
    product.refresh_from_db()
    assert product.title == "Boot" and not product.images.exists()
    assert media_files(settings) == []


# --------------------------------------------------------------------------- bad CSV in the bulk upload


def test_bulk_upload_a_field_over_the_csv_limit_is_a_clear_error_and_imports_nothing(admin_client, settings):
    import csv as csv_module

    limit = csv_module.field_size_limit()
    csv = CSV + b'B-3,Long,Bags,img/red.png,1,"' + b"x" * (limit + 10) + b'"\n'
    response = post_bulk(admin_client, good_zip(), csv=csv)
    assert response.status_code == 400
    html = response.content.decode()
    assert f"longer than {limit:,} characters" in html and "line 4" in html
    assert not Product.objects.exists() and media_files(settings) == []


def test_bulk_upload_decodes_a_member_named_by_thousands_of_rows_once(settings, monkeypatch):
    """5,000 rows naming one ~50 KB picture: decoded once and held once, not 5,000 times
    (250 MB), and imported as 5,000 products each with its own stored copy."""
    import tracemalloc

    from PIL import Image

    import catalog.importing as importing
    from catalog.forms import BulkUploadForm

    noisy = io.BytesIO()
    Image.effect_noise((128, 128), 90).convert("RGB").save(noisy, "PNG")
    member = noisy.getvalue()
    csv = b"sku,title,category,images\n" + b"".join(b"M-%d,Same,Bags,img/same.png\n" % i for i in range(5000))
    decodes = []
    real = importing.normalise_image
    monkeypatch.setattr(importing, "normalise_image", lambda *a, **k: decodes.append(1) or real(*a, **k))
    form = BulkUploadForm({}, {"archive": upload(zip_bytes({"img/same.png": member}), "images.zip"),
                               "catalog": upload(csv, "catalog.csv", "text/csv")})
    tracemalloc.start()
    try:
        assert form.is_valid(), form.errors
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(decodes) == 1
    # Held once per reference, the pictures alone would take 5,000 x ~50 KB = ~250 MB.
    assert peak < 20_000_000, f"peak {peak:,} bytes for a {len(member):,}-byte member"
    assert len(form.parsed.rows) == 5000 and not form.parsed.errors
    assert len({id(row.images[0][1]) for row in form.parsed.rows}) == 1

    from catalog.importing import catalog_import

    summary = catalog_import(rows=form.parsed.rows)
    assert (summary.created, summary.images_added) == (5000, 5000)
    assert ProductImage.objects.count() == 5000 and len(media_files(settings)) == 5000


def test_downloads_list_shows_failures_and_retries_them(admin_client, django_capture_on_commit_callbacks):
    from catalog.models import ImageDownload
    from tests.factories import ProductFactory

    failed = ImageDownload.objects.create(product=ProductFactory(), url="https://shop.example/a.jpg", status="failed",
                                          attempts=5, last_error="HTTP 404 from shop.example")
    url = reverse("admin:catalog_imagedownload_changelist")
    html = admin_client.get(url, {"status__exact": "failed"}).content.decode()
    assert "HTTP 404 from shop.example" in html and "https://shop.example/a.jpg" in html
    with django_capture_on_commit_callbacks() as sent:
        admin_client.post(url, {"action": "retry", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert failed.status == "pending" and failed.attempts == 0 and failed.last_error == ""
    assert sent  # published to the workers after the commit
