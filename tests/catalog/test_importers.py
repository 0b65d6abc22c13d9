import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from catalog.models import Category, Product, ProductImage
from tests.factories import png_bytes

pytestmark = pytest.mark.django_db


def run(*args, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, verbosity=0, **kwargs)
    return out.getvalue(), err.getvalue()


def media_files(settings):
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_import_fashion_mnist_uses_the_keras_loader_and_is_idempotent(settings):
    out, _ = run("import_fashion_mnist", count=25, split="test")
    assert "25 products created" in out
    assert Category.objects.count() == 10
    assert Product.objects.filter(sku__startswith="FMNIST-test-").count() == 25
    image = ProductImage.objects.first()
    assert (image.width, image.height) == (28, 28) and image.image.name.endswith(".png")
    files = media_files(settings)
    out, _ = run("import_fashion_mnist", count=30, split="test")
    assert "5 products created, 25 already there" in out
    assert Product.objects.count() == 30 and ProductImage.objects.count() == 30
    assert len(media_files(settings)) == len(files) + 5


def test_import_fashion_mnist_labels_match_the_dataset(fashion_mnist):
    run("import_fashion_mnist", count=12, split="train", offset=100)
    (_, y_train), _ = fashion_mnist
    from catalog.management.commands.import_fashion_mnist import CLASS_NAMES

    for product in Product.objects.select_related("category"):
        index = int(product.sku.rsplit("-", 1)[1])
        assert product.category.name == CLASS_NAMES[int(y_train[index])]


def test_import_fashion_mnist_rejects_an_offset_past_the_end():
    with pytest.raises(CommandError, match="past the end"):
        run("import_fashion_mnist", count=5, split="test", offset=10_000)


@pytest.fixture
def shop(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(png_bytes(seed=1))
    (images / "b.png").write_bytes(png_bytes(seed=2))
    (images / "c.jpg").write_bytes(png_bytes(seed=3))  # a PNG named .jpg: stored by content
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "outside.png").write_bytes(png_bytes(seed=4))
    return tmp_path


def write_csv(root, text):
    path = root / "catalog.csv"
    path.write_text(text)
    return path


def test_import_catalog_reports_bad_rows_and_imports_good_ones(shop, settings):
    csv_path = write_csv(shop, "\n".join([
        "sku,title,category,images,price,description",
        "S-1,Red shirt,Shirts,images/a.png,19.99,Cotton",        # line 2: good
        "S-2,Two views,Shirts,images/b.png;images/c.jpg,5,",       # line 3: good, two images
        "S-3,No price,Shoes,images/a.png,,",                       # line 4: good, price 0
        "S-4,Bad price,Shoes,images/a.png,abc,",                   # line 5: bad number
        "S-5,Missing image,Shoes,images/nope.png,1,",              # line 6: unknown path
        "S-1,Duplicate,Shirts,images/a.png,1,",                    # line 7: duplicate sku
        "S-6,Escape,Shoes,../outside.png,1,",                      # line 8: leaves the folder
        "S-7,Broken,Shoes,images/broken.png,1,",                   # line 9: not decodable
        ",No sku,Shoes,images/a.png,1,",                           # line 10: empty sku
        "S-8,Negative,Shoes,images/a.png,-3,",                     # line 11: negative price
    ]) + "\n")
    out, err = run("import_catalog", str(csv_path))
    assert "3 created, 0 updated, 4 images added, 7 rows skipped" in out
    for line, text in [(5, "not a non-negative number"), (6, "not found"), (7, "duplicate sku (first on line 2)"),
                       (8, "leaves the images folder"), (9, "damaged or truncated"), (10, "sku is empty"),
                       (11, "not a non-negative number")]:
        assert f"line {line}" in err and text in err, (line, text, err)
    assert set(Product.objects.values_list("sku", flat=True)) == {"S-1", "S-2", "S-3"}
    assert Product.objects.get(sku="S-2").images.count() == 2
    assert Product.objects.get(sku="S-3").price == 0
    assert len(media_files(settings)) == 4  # nothing written for the bad rows

    out, _ = run("import_catalog", str(csv_path))  # safe to run twice
    assert "0 created, 3 updated, 0 images added" in out
    assert Product.objects.count() == 3 and ProductImage.objects.count() == 4
    assert len(media_files(settings)) == 4


def test_import_catalog_missing_columns_is_a_clear_error(shop):
    csv_path = write_csv(shop, "sku,title\nS-1,x\n")
    with pytest.raises(CommandError, match="missing the column"):
        run("import_catalog", str(csv_path))
    assert Product.objects.count() == 0


def catalog_rows(count, *, start=0):
    from catalog.importing import CatalogRow
    from catalog.validators import normalise_image

    return [CatalogRow(line=i + 2, sku=f"R-{i}", title=f"Row {i}", category="Rows", price=1, description="",
                       images=[(f"{i}.png", normalise_image(io.BytesIO(png_bytes(seed=1000 + i))))])
            for i in range(start, start + count)]


def test_catalog_import_commits_a_chunk_of_rows_at_a_time():
    """One transaction per row cost ~11 queries, a commit and a broker message per row (30-58
    rows/s); a chunk is one transaction (one wake-up for the workers, sent on its commit)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from catalog.importing import catalog_import

    rows = catalog_rows(25)
    with CaptureQueriesContext(connection) as queries:
        summary = catalog_import(rows=rows, chunk=10)
    assert (summary.created, summary.images_added) == (25, 25)
    # Inside the test's transaction each chunk's atomic block is a savepoint: 10, 10 and 5 rows.
    assert sum(q["sql"].startswith("SAVEPOINT") for q in queries) == 3
    assert len(queries) <= 3 * 25  # ~2 inserts per row, plus a few per chunk
    assert list(Product.objects.get(sku="R-3").images.values_list("position", flat=True)) == [0]


def test_catalog_import_inserts_a_chunks_new_pictures_in_one_statement_and_wakes_the_workers(
        django_capture_on_commit_callbacks):
    """One INSERT per picture was 1.6 ms of a photo's 4.3 ms import (issue 14); the bulk insert
    sends no post_save, so catalog.signals.images_created must still wake a drain on commit."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from catalog.importing import catalog_import
    from recommender.signals import _wake

    rows = catalog_rows(25)
    with django_capture_on_commit_callbacks() as callbacks, CaptureQueriesContext(connection) as queries:
        catalog_import(rows=rows, chunk=10)
    image_inserts = [q for q in queries if q["sql"].startswith('INSERT INTO "catalog_productimage"')]
    assert len(image_inserts) == 3  # one per chunk
    assert _wake in callbacks
    images = ProductImage.objects.filter(product__sku__startswith="R-")
    assert images.count() == 25 and set(images.values_list("status", flat=True)) == {"pending"}
    assert all(image.image.storage.exists(image.image.name) for image in images)


def test_a_chunk_that_fails_leaves_neither_its_rows_nor_its_files(settings):
    from django.db import DataError

    from catalog.importing import catalog_import

    rows = catalog_rows(25)
    rows[17].price = 10 ** 9  # over the column's 10 digits: PostgreSQL refuses the row
    with pytest.raises(DataError):
        catalog_import(rows=rows, chunk=10)
    assert Product.objects.count() == 10  # the first chunk committed; the second rolled back whole
    assert len(media_files(settings)) == 10  # and took its files with it
    rows[17].price = 1
    assert catalog_import(rows=rows, chunk=10).created == 15  # running it again finishes the job
    assert ProductImage.objects.count() == 25 and len(media_files(settings)) == 25


def test_a_row_naming_the_same_picture_twice_gets_it_once():
    from catalog.importing import catalog_import

    [row] = catalog_rows(1)
    other = catalog_rows(1, start=7)[0].images[0]
    row.images = [row.images[0], other, row.images[0]]
    assert catalog_import(rows=[row]).images_added == 2
    assert list(Product.objects.get(sku="R-0").images.order_by("position").values_list("original_name", flat=True)) \
        == ["0.png", "7.png"]


# --------------------------------------------------------------------------- bad CSV files (issue 15, item 12)


def test_import_catalog_a_field_over_the_csv_limit_is_a_clear_error_and_imports_nothing(shop, settings):
    import csv as csv_module

    limit = csv_module.field_size_limit()
    csv_path = write_csv(shop, "sku,title,category,images,price,description\n"
                               "S-1,Red shirt,Shirts,images/a.png,1,ok\n"
                               f'S-2,Long,Shirts,images/b.png,1,"{"x" * (limit + 1)}"\n')
    with pytest.raises(CommandError, match=rf"line 3: a field is longer than {limit:,} characters"):
        run("import_catalog", str(csv_path))
    assert not Product.objects.exists() and media_files(settings) == []


def nul_csv(shop, *, at=10_000):
    """A CSV of 40-byte rows (all naming one picture) with a NUL byte at offset ``at``, in the
    description of a row past the first IMPORT_CHUNK rows (those would be committed first)."""
    from catalog.importing import IMPORT_CHUNK

    header = b"sku,title,category,images,price,description\n"
    rows = [b"S-%04d,T,C,images/a.png,1," % i for i in range(400)]
    rows = [row + b"d" * (39 - len(row)) + b"\n" for row in rows]
    data = bytearray(header + b"".join(rows))
    row, column = divmod(at - len(header), 40)
    assert row > IMPORT_CHUNK and column > len(b"S-0000,T,C,images/a.png,1,")  # inside that description
    data[at] = 0
    path = shop / "catalog.csv"
    path.write_bytes(bytes(data))
    return path, row + 2


def test_import_catalog_a_nul_byte_past_the_first_kilobytes_is_refused_before_anything_is_written(shop, settings):
    path, line = nul_csv(shop)
    message = rf"The CSV file is binary, not text: it has a NUL byte \(line {line}, byte 10,001\)"
    with pytest.raises(CommandError, match=message):
        run("import_catalog", str(path))
    assert not Product.objects.exists() and not Category.objects.exists() and media_files(settings) == []


def test_import_catalog_refuses_a_huge_image_by_its_size_without_reading_it(shop, settings):
    """A 50 MB file named as a picture: refused by its size on disk (stat), never read whole."""
    import tracemalloc

    with (shop / "images" / "huge.png").open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: 50 MB on paper, nothing written
    csv_path = write_csv(shop, "sku,title,category,images\nS-1,Huge,Shirts,images/huge.png\n"
                               "S-2,Fine,Shirts,images/a.png\n")
    tracemalloc.start()
    try:
        out, err = run("import_catalog", str(csv_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < settings.MAX_UPLOAD_BYTES, f"peak {peak:,} bytes"  # reading it would take 50 MB
    assert f"line 2 (S-1): image 'images/huge.png': the file is too large (52,428,800 bytes); the limit is " \
           f"{settings.MAX_UPLOAD_BYTES:,} bytes" in err
    assert "1 created" in out and list(Product.objects.values_list("sku", flat=True)) == ["S-2"]


def test_a_picture_named_by_many_rows_is_read_and_decoded_once(shop, monkeypatch):
    import catalog.importing as importing
    from catalog.importing import catalog_parse

    decodes = []
    real = importing.normalise_image
    monkeypatch.setattr(importing, "normalise_image", lambda *a, **k: decodes.append(1) or real(*a, **k))
    opened = []
    opener = importing.folder_images(shop)

    def open_image(name):
        opened.append(name)
        return opener(name)

    open_image.resolve = opener.resolve
    csv = b"sku,title,category,images\n" + b"".join(b"S-%d,T,C,images/a.png;./images/a.png\n" % i for i in range(50))
    parsed = catalog_parse(csv_bytes=csv, open_image=open_image)
    assert len(parsed.rows) == 50 and not parsed.errors
    assert (len(opened), len(decodes)) == (1, 1)  # two spellings of one file, 100 references
