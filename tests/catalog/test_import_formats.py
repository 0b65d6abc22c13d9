"""The exports shops already have (issue 16): a Shopify or a WooCommerce product CSV, and our own
format under other column names, through ``import_catalog`` and the admin's bulk upload. The
exports name pictures by URL; these tests give the files under the URLs' file names, and a URL
without its file is queued for the worker to download (tests/catalog/test_downloads.py)."""

import io
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.urls import reverse
from PIL import Image

from catalog.models import Category, ImageDownload, Product, ProductImage
from tests.factories import upload
from tests.ui.data import fast_passwords, media_files, zip_bytes  # noqa: F401 (fast_passwords: autouse)

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).parent / "fixtures"
SHOPIFY_CSV = FIXTURES / "shopify_products_export.csv"
WOO_CSV = FIXTURES / "woocommerce_products_export.csv"
BULK_URL = "admin:catalog_product_bulk_upload"
SHOPIFY_CDN = "https://cdn.shopify.com/s/files/1/0533/2089/1234/products/"
WOO_UPLOADS = "https://shop.example.com/wp-content/uploads/2023/05/"

# The pictures the exports name, under their URLs' file names (album-1.jpg, beanie-missing.jpg and
# hoodie-blue-1.jpg are missing on purpose).
SHOPIFY_PICTURES = ["linen-front.jpg", "linen-back.jpg", "linen-detail.png", "canvas tote.jpg"]
WOO_PICTURES = ["vneck-tee-2.jpg", "vnech-tee-green-1.jpg", "vneck-tee.jpg", "beanie-with-logo-1.jpg"]


def picture(name: str, seed: int) -> bytes:
    """A small photo, JPEG or PNG by its name, in a colour of its own (so each is a distinct picture)."""
    buffer = io.BytesIO()
    colour = ((seed * 67) % 256, (seed * 131) % 256, (seed * 29 + 90) % 256)
    Image.new("RGB", (40, 48), colour).save(buffer, "PNG" if name.endswith(".png") else "JPEG", quality=90)
    return buffer.getvalue()


def pictures(names) -> dict[str, bytes]:
    return {name: picture(name, seed) for seed, name in enumerate(names, start=1)}


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("import_catalog", *[str(a) for a in args], stdout=out, stderr=err, verbosity=0)
    return out.getvalue(), err.getvalue()


def export_folder(tmp_path, csv_path: Path, names) -> Path:
    """The export saved with its pictures next to it, as a shop downloads them."""
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(csv_path, folder / csv_path.name)
    for name, data in pictures(names).items():
        (folder / name).write_bytes(data)
    return folder / csv_path.name


def originals(sku: str) -> list[str]:
    images = Product.objects.get(sku=sku).images.order_by("position")
    return list(images.values_list("original_name", flat=True))


# --------------------------------------------------------------------------- Shopify


def downloads_of(sku: str) -> list[str]:
    return list(ImageDownload.objects.filter(product__sku=sku, status="pending").values_list("url", flat=True))


def check_shopify_products():
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["BEANIE-1", "LIN-S", "canvas-tote"]
    # Its picture is not among the files: the product is imported, the picture queued for download.
    assert originals("BEANIE-1") == [] and downloads_of("BEANIE-1") == [f"{SHOPIFY_CDN}beanie-missing.jpg?v=1"]
    shirt = Product.objects.select_related("category").get(sku="LIN-S")  # the first variant's SKU
    assert (shirt.title, shirt.category.name, shirt.price) == ("Classic Linen Shirt", "Shirts", Decimal("49.00"))
    assert shirt.description == ("Breezy linen shirt – pre-washed & soft.\n\n• 100% European flax\n"
                                 "• Mother-of-pearl buttons\n\nCare: machine wash cold.")
    assert originals("LIN-S") == ["linen-front.jpg", "linen-detail.png", "linen-back.jpg"]  # by Image Position
    tote = Product.objects.select_related("category").get(sku="canvas-tote")  # no Variant SKU: the Handle
    assert (tote.title, tote.category.name, tote.price) == ("Canvas Tote", "Shopping Totes", Decimal("25.50"))
    assert tote.description == 'Sturdy canvas tote.\nFits a laptop <15".'
    assert originals("canvas-tote") == ["canvas tote.jpg"]  # canvas%20tote.jpg?v=...
    assert ProductImage.objects.count() == 4


def test_a_shopify_export_imports_one_product_per_handle(tmp_path, settings):
    csv_path = export_folder(tmp_path, SHOPIFY_CSV, SHOPIFY_PICTURES)
    out, err = run(csv_path)
    assert ("Format: Shopify product export, one product per Handle: sku <- Variant SKU of the first variant, else "
            "Handle; title <- Title; category <- Type, else the last level of Product Category;") in out
    assert out.splitlines()[-2:] == ["1 pictures named by URL queued for download by the worker.",
                                     "3 created, 0 updated, 4 images added, 0 rows skipped."]
    assert err == ""
    check_shopify_products()
    files = media_files(settings)
    assert len(files) == 4

    out, _ = run(csv_path)  # the same export again: no duplicates
    assert "0 created, 3 updated, 0 images added, 0 rows skipped" in out
    check_shopify_products()
    assert ImageDownload.objects.count() == 1
    assert media_files(settings) == files


def test_a_shopify_export_without_its_pictures_queues_them_for_download(tmp_path):
    out, err = run(export_folder(tmp_path, SHOPIFY_CSV, []))
    assert out.splitlines()[-2:] == ["5 pictures named by URL queued for download by the worker.",
                                     "3 created, 0 updated, 0 images added, 0 rows skipped."]
    assert err == "" and not ProductImage.objects.exists()
    # One download per picture of a product (not per row), in the export's order.
    assert downloads_of("LIN-S") == [f"{SHOPIFY_CDN}{name}?v=1699999999"
                                     for name in ("linen-front.jpg", "linen-detail.png", "linen-back.jpg")]
    tote = "https://cdn.shopify.com/s/files/1/0533/2089/1234/files/canvas%20tote.jpg?v=1700000000"
    assert downloads_of("canvas-tote") == [tote]


# --------------------------------------------------------------------------- WooCommerce


def check_woo_products():
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["woo-53", "woo-album", "woo-vneck-tee"]
    assert downloads_of("woo-album") == [f"{WOO_UPLOADS}album-1.jpg"]  # not among the files: queued
    tee = Product.objects.select_related("category").get(sku="woo-vneck-tee")
    # The variable product's own row has no price: its first variation's (20, not the green one's 22).
    assert (tee.title, tee.category.name, tee.price) == ("V-Neck T-Shirt", "Tshirts", Decimal("20.00"))
    assert tee.description == ("Everyday tee\n\nSoft & breathable cotton.\nCut for a relaxed fit.\n\n"
                               "• Pre-shrunk\n• Made in Portugal")
    # Its own pictures, then its variations' (the green one's is already there).
    assert originals("woo-vneck-tee") == ["vneck-tee-2.jpg", "vnech-tee-green-1.jpg", "vneck-tee.jpg"]
    beanie = Product.objects.select_related("category").get(sku="woo-53")  # no SKU: woo-<ID>
    # The regular price, not the sale price; "Hats\, Caps" is one category; the short description.
    assert (beanie.title, beanie.category.name, beanie.price) == ("Beanie with Logo", "Hats, Caps", Decimal("20.00"))
    assert beanie.description == "Warm & cosy knit – one size."
    assert not Product.objects.filter(sku__startswith="woo-vneck-tee-").exists()  # variations are not products
    assert not Category.objects.filter(name="Clothing").exists()
    assert ProductImage.objects.count() == 4


def test_a_woocommerce_export_imports_products_with_their_variations_folded_in(tmp_path, settings):
    csv_path = export_folder(tmp_path, WOO_CSV, WOO_PICTURES)
    out, err = run(csv_path)
    assert ("Format: WooCommerce product export, variations folded into their parent: sku <- SKU, else woo-<ID>; "
            "title <- Name; category <- the last level of the first Categories path;") in out
    assert "1 pictures named by URL queued for download by the worker.\n3 created, 0 updated, 4 images added, " \
        "1 rows skipped" in out
    assert "skipped line 7 (woo-hoodie-blue): a variation of 'id:98', which is not in this file" in err
    check_woo_products()
    files = media_files(settings)

    out, _ = run(csv_path)
    assert "0 created, 3 updated, 0 images added, 1 rows skipped" in out
    check_woo_products()
    assert media_files(settings) == files


# --------------------------------------------------------------------------- the admin's bulk upload


def post_bulk(client, archive: bytes, csv: bytes | None = None, csv_name="catalog.csv", **fields):
    data = {"archive": upload(archive, "images.zip", "application/zip"), "_import": "1", **fields}
    if csv is not None:
        data["catalog"] = upload(csv, csv_name, "text/csv")
    return client.post(reverse(BULK_URL), data)


def test_the_bulk_upload_imports_a_shopify_export_twice_without_duplicates(admin_client, settings):
    archive = zip_bytes(pictures(SHOPIFY_PICTURES))
    csv = SHOPIFY_CSV.read_bytes()
    checked = admin_client.post(reverse(BULK_URL), {
        "archive": upload(archive, "images.zip", "application/zip"),
        "catalog": upload(csv, SHOPIFY_CSV.name, "text/csv"), "_check": "1"})
    assert checked.status_code == 200
    html = checked.content.decode()
    # The beanie's picture is not in the ZIP: its row is valid, the picture to be downloaded.
    assert "All 3 rows are valid: 3 new products, 0 updates, 5 images." in html
    assert ("shopify_products_export.csv was read as a Shopify product export, one product per Handle: "
            "sku &lt;- Variant SKU") in html
    assert '<p class="lk-detail" id="format">Read as Shopify product export, one product per Handle: ' in html
    assert not Product.objects.exists()

    for created, updated, images in [(3, 0, 4), (0, 3, 0)]:
        response = post_bulk(admin_client, archive, csv, csv_name=SHOPIFY_CSV.name)
        assert response.status_code == 200
        html = response.content.decode()
        assert f"{created} products created, {updated} updated, {images} image" in html
        assert ('<span id="downloads-queued">1 picture named by URL queued for download by the worker</span>'
                in html)
        assert [str(m) for m in get_messages(response.wsgi_request)] == [
            "Imported 3 of 3 rows from shopify_products_export.csv (Shopify product export)."]
        check_shopify_products()
    assert len(media_files(settings)) == 4


def test_the_bulk_upload_imports_a_woocommerce_export_from_inside_the_zip(admin_client):
    # The export and its pictures zipped together, in a folder: the pictures are looked up next to the CSV.
    files = {f"shop/{name}": data for name, data in pictures(WOO_PICTURES).items()}
    files["shop/wc-product-export-1-5-2024.csv"] = WOO_CSV.read_bytes()
    archive = zip_bytes(files)
    for created in (3, 0):
        response = post_bulk(admin_client, archive, skip_invalid="on")
        assert response.status_code == 200, response.content.decode()[:3000]
        html = response.content.decode()
        assert f"{created} products created" in html and "1 row with errors skipped" in html
        assert "wc-product-export-1-5-2024.csv was read as a WooCommerce product export" in html
        assert "a variation of &#x27;id:98&#x27;, which is not in this file" in html
        check_woo_products()


# --------------------------------------------------------------------------- our format's column names


ALIASED_CSV = ("SKU,Product Name,Type,Image,Price,Colour\n"
               "A-1,Red scarf,Scarves,red.png,12.50,red\n"
               "A-2,Blue scarf,Scarves,blue.png,14,blue\n")


def test_our_format_under_other_column_names_is_read_and_the_mapping_said(tmp_path):
    folder = tmp_path / "aliased"
    folder.mkdir()
    (folder / "catalog.csv").write_text(ALIASED_CSV)
    for name, data in pictures(["red.png", "blue.png"]).items():
        (folder / name).write_bytes(data)
    out, err = run(folder / "catalog.csv")
    assert ('Format: Lookalike catalog CSV: sku; title <- "Product Name"; category <- "Type"; images <- "Image"; '
            'price (ignored: Colour)') in out
    assert "2 created, 0 updated, 2 images added, 0 rows skipped" in out and err == ""
    red = Product.objects.select_related("category").get(sku="A-1")
    assert (red.title, red.category.name, red.price, originals("A-1")) == ("Red scarf", "Scarves", Decimal("12.50"),
                                                                        ["red.png"])


def test_the_bulk_upload_reads_an_image_column_and_says_so(admin_client):
    csv = b"sku,title,category,image\nA-1,Red scarf,Scarves,red.png\n"
    response = post_bulk(admin_client, zip_bytes(pictures(["red.png"])), csv)
    assert response.status_code == 200
    html = response.content.decode()
    assert "catalog.csv was read as a Lookalike catalog CSV: sku; title; category; images &lt;- &quot;image&quot;." \
        in html
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Imported 1 of 1 rows from catalog.csv (Lookalike catalog CSV)."]
    assert originals("A-1") == ["red.png"]


def test_our_format_may_name_its_pictures_by_url_too(tmp_path):
    folder = tmp_path / "urls"
    folder.mkdir()
    (folder / "catalog.csv").write_text("sku,title,category,images\n"
                                        "U-1,Scarf,Scarves,https://img.example.com/a/red%20scarf.png?w=800;b.png\n")
    for name, data in pictures(["red scarf.png", "b.png"]).items():
        (folder / name).write_bytes(data)
    out, _ = run(folder / "catalog.csv")
    assert "1 created" in out and originals("U-1") == ["red scarf.png", "b.png"]


# --------------------------------------------------------------------------- files in no format we read


def test_an_unknown_format_is_refused_with_what_was_expected(tmp_path, admin_client):
    csv = "Artikel,Bezeichnung,Bild\n1,Schal,schal.png\n"
    (tmp_path / "katalog.csv").write_text(csv)
    with pytest.raises(CommandError) as refused:
        run(tmp_path / "katalog.csv")
    message = str(refused.value)
    assert message.startswith("The CSV's columns (Artikel, Bezeichnung, Bild) match no format this import reads.")
    for expected in ("sku, title, category, images", "a Shopify product export (Handle, Title",
                     "a WooCommerce product export (ID, Type, SKU, Name"):
        assert expected in message

    response = post_bulk(admin_client, zip_bytes(pictures(["schal.png"])), csv.encode())
    assert response.status_code == 400
    assert "match no format this import reads" in response.content.decode()
    assert not Product.objects.exists()


@pytest.mark.parametrize("header, message", [
    ("sku,title,category,image,images", 'The columns "image" and "images" both mean images'),
    ("sku,name,title,category,images", 'The columns "name" and "title" both mean title'),
    ("sku,title,photo", "The CSV is missing the column(s): category (or product category"),
    ("Handle,Title,Body (HTML),Variant SKU", "looks like a Shopify product export (it has a Handle column), but it "
                                             "lacks the column(s): Image Src, Type or Product Category"),
    ("ID,Type,SKU,Name,Published,Short description,Regular price", "looks like a WooCommerce product export, but "
                                                                   "it lacks the column(s): Images, Categories"),
])
def test_a_header_that_cannot_be_read_as_its_format_is_refused_whole(tmp_path, header, message):
    (tmp_path / "catalog.csv").write_text(header + "\n" + ",".join("x" * len(header.split(","))) + "\n")
    with pytest.raises(CommandError) as refused:
        run(tmp_path / "catalog.csv")
    assert message in str(refused.value)


# --------------------------------------------------------------------------- formats, without the database


def test_image_references_keep_their_kind():
    from catalog.formats import image_ref

    assert image_ref("img/a.png") == image_ref(" img/a.png ")
    assert (image_ref("img/a.png").kind, image_ref("img/a.png").name) == ("file", "img/a.png")
    ref = image_ref("HTTPS://cdn.example.com/s/files/Red%20Shirt%C3%A9.jpg?v=17#top")
    assert (ref.kind, ref.is_url, ref.name, ref.problem) == ("url", True, "Red Shirté.jpg", "")
    for text in ("https://example.com/", "https://example.com", "https://example.com/a/..",
                 "https://example.com/a/%2e%2e", "https://example.com/a%2F..%2Fsecret.png",
                 "https://example.com/a%5Cb.png", "https://example.com/a%00.png"):
        assert image_ref(text).name == "" and "names no file" in image_ref(text).problem, text
    assert "only http and https" in image_ref("file:///etc/passwd").problem
    assert "only http and https" in image_ref("ftp://example.com/a.png").problem
    assert "not a valid address" in image_ref("http://[::1/a.png").problem


def read(csv_text: str):
    import csv

    from catalog.formats import detect_layout
    from catalog.formats.base import header_key

    reader = csv.reader(io.StringIO(csv_text))
    header = next(reader)
    layout = detect_layout(header)
    keys = [header_key(name) for name in header]
    return layout, list(layout.read((line, dict(zip(keys, row))) for line, row in enumerate(reader, start=2)))


def test_shopify_rows_of_a_handle_make_one_product():
    layout, products = read(
        "Handle,Title,Body (HTML),Type,Product Category,Variant SKU,Variant Price,Image Src,Image Position\n"
        "tee,Tee,<b>Hi</b>,,Apparel > Clothing > Shirts,,,https://x/3.jpg,3\n"  # the first row: no variant
        "tee,,,,,,12.00,https://x/1.jpg,1\n"                                      # the first variant: no SKU
        "tee,,,,,T-2,13.00,,\n"
        "other,Other,,Mugs,,M-1,5,https://x/m.jpg,\n"
        ",,,,,,,https://x/orphan.jpg,\n")
    assert layout.name == "Shopify product export"
    error, tee, other = products
    assert (error.line, "the Handle is empty" in error.message) == (6, True)
    assert (tee.line, tee.sku, tee.title, tee.category, tee.price, tee.description) == (
        2, "tee", "Tee", "Shirts", "12.00", "Hi")
    assert [ref.name for ref in tee.images] == ["1.jpg", "3.jpg"]
    assert (other.sku, other.category, [ref.text for ref in other.images]) == ("M-1", "Mugs", ["https://x/m.jpg"])


def test_woocommerce_variations_fold_into_their_parent_by_id_or_sku():
    layout, products = read(
        "ID,Type,SKU,Name,Published,Short description,Description,Regular price,Categories,Images,Parent\n"
        "7,variable,'-dash,Hoodie,1,Short,,,\"Clothing > Hoodies > Zip, Sale\",https://x/h.jpg,\n"
        "8,variation,h-red,Hoodie - Red,1,,,30,,https://x/red.jpg,id:7\n"
        "9,variation,h-blue,Hoodie - Blue,1,,,35,,https://x/blue.jpg,-dash\n"
        "10,variation,x-1,Lost,1,,,1,,https://x/l.jpg,id:11\n")
    assert layout.name == "WooCommerce product export"
    error, hoodie = products
    assert (error.line, error.sku) == (5, "x-1") and "a variation of 'id:11'" in error.message
    assert (hoodie.sku, hoodie.category, hoodie.price, hoodie.description) == ("-dash", "Zip", "30", "Short")
    assert [ref.name for ref in hoodie.images] == ["h.jpg", "red.jpg", "blue.jpg"]


def test_without_a_type_column_a_woocommerce_row_with_a_parent_is_a_variation():
    _, products = read("ID,SKU,Name,Regular price,Categories,Images,Parent\n"
                       "7,h,Hoodie,,Clothing,https://x/h.jpg,\n"
                       "8,h-red,Hoodie - Red,30,,https://x/red.jpg,id:7\n")
    [hoodie] = products
    assert (hoodie.sku, hoodie.price, [ref.name for ref in hoodie.images]) == ("h", "30", ["h.jpg", "red.jpg"])


def test_rows_past_the_limit_are_not_read():
    from catalog.importing import catalog_parse
    from tests.factories import png_bytes

    csv = b"sku,title,category,images\n" + b"".join(b"S-%d,T,C,a.png\n" % i for i in range(5))
    parsed = catalog_parse(csv_bytes=csv, open_image=lambda name: png_bytes(seed=1), max_rows=3)
    assert [row.sku for row in parsed.rows] == ["S-0", "S-1", "S-2"]
    assert [str(error) for error in parsed.errors] == ["line 5: more than 3 rows; the rest was not read"]
    assert [(ref.kind, ref.name) for ref in parsed.rows[0].image_refs] == [("file", "a.png")]


def _rewritten(path: Path, column: str, value: str, where) -> None:
    """The export at ``path`` with ``column`` set to ``value`` on the rows ``where(row)`` selects."""
    import csv

    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        rows, header = list(reader), reader.fieldnames
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        writer.writerows({**row, column: value} if where(row) else row for row in rows)


def test_drafts_are_imported_hidden_and_shown_once_the_export_says_so(tmp_path):
    """Shopify's Status (draft, archived) and WooCommerce's Published (0 private, -1 draft)."""
    shopify = export_folder(tmp_path, SHOPIFY_CSV, SHOPIFY_PICTURES)
    _rewritten(shopify, "Status", "draft", lambda row: row["Handle"] == "wool-beanie" and row["Status"])
    run(shopify)
    beanie = Product.objects.get(title__icontains="beanie")
    assert not beanie.is_active and Product.objects.filter(is_active=True).count() == 2
    _rewritten(shopify, "Status", "active", lambda row: row["Handle"] == "wool-beanie" and row["Status"])
    run(shopify)  # published in Shopify since: shown after the next import
    beanie.refresh_from_db()
    assert beanie.is_active

    woo = tmp_path / "woo.csv"
    shutil.copy(WOO_CSV, woo)
    _rewritten(woo, "Published", "-1", lambda row: row["SKU"] == "woo-album")
    run(woo)
    assert not Product.objects.get(sku="woo-album").is_active
    assert Product.objects.get(sku="woo-vneck-tee").is_active
