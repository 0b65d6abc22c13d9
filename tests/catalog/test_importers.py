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
