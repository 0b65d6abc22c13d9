"""Two writers at once (issue 15, item 11): the same new category, SKU or picture written by two
staff, two API calls or two bulk uploads. Each race is played deterministically: one writer runs in
a thread of its own (its own database connection) and stops just before a chosen statement, inside
its transaction, while the other commits the same row; then it goes on. No IntegrityError may
escape: a row that lost its race is reused or updated, or the writer gets a clear conflict (409 in
the API, a form error in the admin), and nothing is left half-written (rows or files)."""

from __future__ import annotations

import io
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from catalog.models import Category, Product, ProductImage
from catalog.validators import normalise_image
from tests.conftest import wait_for
from tests.factories import CategoryFactory, ProductFactory, png_bytes, upload
from tests.ui.data import fast_passwords, media_files  # noqa: F401 (fast_passwords: autouse)

pytestmark = pytest.mark.django_db(transaction=True)

INSERT_CATEGORY = 'INSERT INTO "catalog_category"'
INSERT_PRODUCT = 'INSERT INTO "catalog_product"'
INSERT_IMAGE = 'INSERT INTO "catalog_productimage"'


class Writer:
    """``write()`` in a thread with its own connection. With ``stop_before``, it stops just before
    its first statement that starts with it (inside its transaction) until :meth:`finish`; with
    ``stop_after``, just after that statement (its row written, not committed)."""

    def __init__(self, write, *, stop_before=None, stop_after=None):
        self.arrived, self.proceed = threading.Event(), threading.Event()
        self.result = self.error = None
        self.backend_pid = None
        prefix = stop_before or stop_after

        def gate(execute, sql, params, many, context):
            stop = prefix is not None and sql.startswith(prefix) and not self.arrived.is_set()
            if stop and stop_before:
                self._wait()
            result = execute(sql, params, many, context)
            if stop and stop_after:
                self._wait()
            return result

        def run():
            try:
                self.backend_pid = _backend_pid()
                with connection.execute_wrapper(gate):
                    self.result = write()
            except BaseException as exc:  # handed to the test, which asserts on it
                self.error = exc
            finally:
                self.arrived.set()  # a writer that never reached its statement does not hang the test
                connection.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def _wait(self):
        self.arrived.set()
        assert self.proceed.wait(60), "the test never let this writer go on"

    def wait_arrived(self):
        assert self.arrived.wait(60), "the writer never reached its statement"
        assert self.error is None, self.error
        return self

    def finish(self):
        self.proceed.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the writer is still running"
        return self.result


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def waiting_on_a_lock(pid) -> bool:
    """Whether the backend ``pid`` waits for a lock another transaction holds (observed, not slept)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return bool(row) and row[0] == "Lock"


def picture(seed):
    return normalise_image(io.BytesIO(png_bytes((40, 40), seed=seed)))


def product_files(settings):
    return [p for p in media_files(settings) if "thumbs" not in p.parts]


# --------------------------------------------------------------------------- services


def test_a_category_created_meanwhile_is_reused():
    from catalog.services import category_get_or_create

    writer = Writer(lambda: category_get_or_create(name="Rain boots"), stop_before=INSERT_CATEGORY).wait_arrived()
    theirs = category_get_or_create(name="rain  boots")  # another request commits the same name first
    mine = writer.finish()
    assert writer.error is None, writer.error
    assert mine == theirs and Category.objects.count() == 1


def test_a_category_whose_slug_was_taken_meanwhile_gets_the_next_one():
    from catalog.services import category_get_or_create

    writer = Writer(lambda: category_get_or_create(name="Rain boots!"), stop_before=INSERT_CATEGORY).wait_arrived()
    theirs = category_get_or_create(name="Rain boots?")  # another name, the same slug
    mine = writer.finish()
    assert writer.error is None, writer.error
    assert (theirs.slug, mine.slug, mine.name) == ("rain-boots", "rain-boots-2", "Rain boots!")


def test_a_product_created_meanwhile_with_the_same_sku_is_a_clear_conflict(settings):
    from catalog.services import product_create

    category = CategoryFactory()
    writer = Writer(lambda: product_create(sku="RACE-1", title="Mine", category=category,
                                           uploads=[upload(png_bytes(seed=3), "mine.png")]),
                    stop_before=INSERT_PRODUCT).wait_arrived()
    ProductFactory(sku="RACE-1", title="Theirs", category=category)
    writer.finish()
    assert type(writer.error).__name__ == "CatalogConflict", repr(writer.error)
    assert "RACE-1" in str(writer.error) and "nothing was saved" in str(writer.error)
    assert list(Product.objects.values_list("title", flat=True)) == ["Theirs"]
    assert not ProductImage.objects.exists() and product_files(settings) == []


def test_a_picture_attached_meanwhile_is_returned_not_duplicated(settings):
    from catalog.services import product_image_add

    product = ProductFactory()
    writer = Writer(lambda: product_image_add(product=product, normalised=picture(5), original_name="mine.png"),
                    stop_before=INSERT_IMAGE).wait_arrived()
    theirs = product_image_add(product=product, normalised=picture(5), original_name="theirs.png")
    mine = writer.finish()
    assert writer.error is None, writer.error
    assert mine.pk == theirs.pk and product.images.count() == 1
    assert product_files(settings) == [settings.MEDIA_ROOT / theirs.image.name]  # the loser's file is gone


# --------------------------------------------------------------------------- imports


def rows(count, *, seed=0):
    from catalog.importing import CatalogRow

    return [CatalogRow(line=i + 2, sku=f"IMP-{i}", title=f"Row {i}", category="Race", price=1, description="",
                       images=[(f"{i}.png", picture(seed + i))]) for i in range(count)]


@pytest.mark.parametrize("statement", [INSERT_CATEGORY, INSERT_PRODUCT])
def test_an_import_finishes_when_its_category_or_skus_were_committed_meanwhile(settings, statement):
    from catalog.importing import catalog_import

    if statement == INSERT_PRODUCT:
        CategoryFactory(name="Race", slug="race")  # else the other import would wait for this one's new category
    writer = Writer(lambda: catalog_import(rows=rows(6), chunk=4), stop_before=statement).wait_arrived()
    other = catalog_import(rows=rows(3))  # a second bulk upload with some of the same SKUs, committed first
    mine = writer.finish()
    assert writer.error is None, writer.error
    assert (other.created, other.images_added) == (3, 3)
    assert (mine.created, mine.updated, mine.images_added) == (3, 3, 3)
    assert Product.objects.count() == 6 and ProductImage.objects.count() == 6
    assert Category.objects.count() == 1
    assert len(product_files(settings)) == 6  # the loser's copies of the same pictures are gone


def test_two_imports_of_the_same_skus_at_once_both_finish(settings):
    """The first holds its new SKUs uncommitted; the second waits for it, then updates them."""
    from catalog.importing import catalog_import

    CategoryFactory(name="Race", slug="race")
    first = Writer(lambda: catalog_import(rows=rows(5)), stop_after=INSERT_PRODUCT).wait_arrived()
    second = Writer(lambda: catalog_import(rows=rows(5)))
    wait_for(lambda: second.backend_pid and waiting_on_a_lock(second.backend_pid), timeout=30,
             message="the second import to wait for the first one's SKUs")
    first.finish()
    second.finish()
    assert first.error is None and second.error is None, (first.error, second.error)
    assert (first.result.created, second.result.updated, second.result.images_added) == (5, 5, 0)
    assert Product.objects.count() == 5 and ProductImage.objects.count() == 5
    assert len(product_files(settings)) == 5


# --------------------------------------------------------------------------- API and admin


@pytest.fixture
def api_staff():
    user = get_user_model().objects.create_superuser("editor", "editor@example.com", "pw")
    return Token.objects.create(user=user).key


def test_the_api_answers_409_when_the_same_sku_was_created_meanwhile(api_staff):
    category = CategoryFactory()

    def post():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {api_staff}")
        return client.post("/api/v1/products/", {"sku": "API-1", "title": "Mine", "category": category.pk,
                                                 "price": "5"}, format="json")

    writer = Writer(post, stop_before=INSERT_PRODUCT).wait_arrived()
    ProductFactory(sku="API-1", title="Theirs", category=category)
    response = writer.finish()
    assert writer.error is None, writer.error
    assert response.status_code == 409, response.content
    body = response.json()
    assert body["code"] == "conflict" and "API-1" in body["detail"] and body["status"] == 409
    assert list(Product.objects.values_list("title", flat=True)) == ["Theirs"]


def _admin_post(user, url, data):
    from django.test import Client

    def post():
        client = Client()
        client.force_login(user)
        return client.post(url, data)

    return post


def _inline(total=1, initial=0):
    empty = {f"{prefix}-{field}": value for prefix in ("panel_pins", "panel_blocks")  # the panel rules' inlines
             for field, value in (("TOTAL_FORMS", "0"), ("INITIAL_FORMS", "0"), ("MIN_NUM_FORMS", "0"),
                                  ("MAX_NUM_FORMS", "1000"))}
    return {"images-TOTAL_FORMS": str(total), "images-INITIAL_FORMS": str(initial),
            "images-MIN_NUM_FORMS": "0", "images-MAX_NUM_FORMS": "1000", **empty}


def test_the_admin_shows_a_form_error_when_the_same_sku_was_saved_meanwhile(admin_user, settings):
    category = CategoryFactory()
    data = {"sku": "ADM-1", "title": "Mine", "category": str(category.pk), "price": "1", "is_active": "on",
            "in_stock": "on", "_save": "Save", **_inline(),
            "images-0-image": upload(png_bytes(seed=8), "mine.png"), "images-0-position": "0"}
    writer = Writer(_admin_post(admin_user, reverse("admin:catalog_product_add"), data),
                    stop_before=INSERT_PRODUCT).wait_arrived()
    ProductFactory(sku="ADM-1", title="Theirs", category=category)
    response = writer.finish()
    assert writer.error is None, writer.error
    assert response.status_code == 200
    assert "Product with this SKU already exists." in response.content.decode()
    assert list(Product.objects.values_list("title", flat=True)) == ["Theirs"]
    assert product_files(settings) == []


def test_the_admin_shows_a_form_error_when_the_same_picture_was_attached_meanwhile(admin_user, settings):
    from catalog.services import product_image_add

    product = ProductFactory(sku="ADM-2", title="Boot")
    data = {"sku": "ADM-2", "title": "Boot", "category": str(product.category_id), "price": "1",
            "is_active": "on", "in_stock": "on", "_save": "Save", **_inline(),
            "images-0-image": upload(png_bytes((40, 40), seed=9), "mine.png"), "images-0-position": "0"}
    writer = Writer(_admin_post(admin_user, reverse("admin:catalog_product_change", args=[product.pk]), data),
                    stop_before=INSERT_IMAGE).wait_arrived()
    theirs = product_image_add(product=product, normalised=picture(9), original_name="theirs.png")
    response = writer.finish()
    assert writer.error is None, writer.error
    assert response.status_code == 200
    assert "This picture is already attached to the product." in response.content.decode()
    assert list(product.images.values_list("pk", flat=True)) == [theirs.pk]
    assert product_files(settings) == [settings.MEDIA_ROOT / theirs.image.name]  # no orphan of the loser


def test_the_admin_shows_a_form_error_when_the_same_category_was_saved_meanwhile(admin_user):
    data = {"name": "Clogs", "slug": "clogs", "_save": "Save"}
    writer = Writer(_admin_post(admin_user, reverse("admin:catalog_category_add"), data),
                    stop_before=INSERT_CATEGORY).wait_arrived()
    CategoryFactory(name="Clogs", slug="clogs")
    response = writer.finish()
    assert writer.error is None, writer.error
    assert response.status_code == 200
    assert "Category with this Name already exists." in response.content.decode()
    assert Category.objects.count() == 1


def test_a_sku_changed_to_one_taken_meanwhile_is_a_clear_conflict():
    from catalog.services import product_update

    product = ProductFactory(sku="OLD-1", title="Mine")
    writer = Writer(lambda: product_update(product=Product.objects.get(pk=product.pk), sku="NEW-1"),
                    stop_before='UPDATE "catalog_product"').wait_arrived()
    ProductFactory(sku="NEW-1", title="Theirs")
    writer.finish()
    assert type(writer.error).__name__ == "CatalogConflict", repr(writer.error)
    assert "NEW-1" in str(writer.error)
    assert Product.objects.get(pk=product.pk).sku == "OLD-1"
