"""Near-duplicate detection and the decisions on it (catalog.duplicates), against the real database:
planted re-encodes, resizes, mirror images and small crops are paired with their source, distinct
pictures are not; decisions stick; merges move images; panels leave duplicates out."""

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from PIL import Image, ImageOps

from catalog import duplicates, perceptual
from catalog.duplicates import duplicate_pair_decide, duplicate_pair_merge, duplicates_backlog_check, duplicates_detect
from catalog.models import PERCEPTUAL_BITS, DuplicatePair, Product, ProductImage
from recommender.models import Embedding
from recommender.selectors.similarity import similar_products
from recommender.services.ingestion import images_process
from tests.factories import ProductFactory, ProductImageFactory

pytestmark = pytest.mark.django_db
Status = DuplicatePair.Status


def photo(seed: int, size=(160, 140)) -> Image.Image:
    """A picture with structure at every scale (smooth colour fields and a few shapes)."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    detail = Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    return Image.blend(field, detail, 0.3)


def encoded(picture: Image.Image, fmt="PNG", **options) -> bytes:
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, fmt, **options)
    return buffer.getvalue()


def cropped(picture: Image.Image, share=0.03) -> Image.Image:
    w, h = picture.size
    return picture.crop((int(w * share), int(h * share), w - int(w * share), h - int(h * share)))


def product_with(data: bytes, **fields) -> Product:
    product = ProductFactory(**fields)
    ProductImageFactory(product=product, data=data)
    return product


def process(*products) -> None:
    ids = list(ProductImage.objects.filter(product__in=products).values_list("id", flat=True))
    images_process(image_ids=ids, token="dup-test")


def pair_of(a: Product, b: Product) -> DuplicatePair | None:
    low, high = sorted([a.pk, b.pk])
    return DuplicatePair.objects.filter(product_a_id=low, product_b_id=high).first()


@pytest.fixture
def planted():
    """A source photo, its near-duplicates and the same file under other products, and distinct
    photos, all processed by the worker's code (images_process)."""
    source = photo(1)
    products = {
        "source": product_with(encoded(source)),
        "re-encoded": product_with(encoded(source.resize((120, 105)), "JPEG", quality=40)),
        "mirrored": product_with(encoded(ImageOps.mirror(source))),
        "cropped": product_with(encoded(cropped(source))),
        "same file": product_with(encoded(source)),
        "distinct 1": product_with(encoded(photo(2))),
        "distinct 2": product_with(encoded(photo(3), "JPEG", quality=60)),
    }
    process(*products.values())
    return products


def test_the_hash_is_the_models_width_and_a_flat_picture_has_none():
    assert perceptual.BITS == PERCEPTUAL_BITS
    assert perceptual.hashes(Image.new("RGB", (50, 40), (200, 10, 10))) is None
    picture = photo(7)
    own, mirror = perceptual.hashes(picture)
    # Equal but for resampling's rounding at a non-integer scale (160 -> 64 px).
    assert perceptual.hamming(mirror, perceptual.hashes(ImageOps.mirror(picture))[0]) <= 16
    assert perceptual.hamming(own, perceptual.hashes(photo(8))[0]) > duplicates.MAX_BITS


def test_planted_duplicates_are_paired_with_their_source_and_distinct_products_are_not(planted):
    source = planted["source"]
    for name in ("re-encoded", "mirrored", "cropped"):
        pair = pair_of(source, planted[name])
        assert pair is not None and pair.kind == "near" and pair.status == Status.OPEN, name
        assert pair.distance <= duplicates.MAX_BITS
    exact = pair_of(source, planted["same file"])
    assert exact.kind == "exact" and exact.distance == 0
    for name in ("distinct 1", "distinct 2"):
        assert not DuplicatePair.objects.filter(product_a=planted[name]).exists()
        assert not DuplicatePair.objects.filter(product_b=planted[name]).exists()
    assert ProductImage.objects.filter(duplicates_checked_at__isnull=True).count() == 0


def test_detecting_again_adds_nothing_and_decisions_are_never_reopened(planted):
    source = planted["source"]
    duplicate_pair_decide(pair=pair_of(source, planted["re-encoded"]), status=Status.NOT_DUPLICATE)
    duplicate_pair_decide(pair=pair_of(source, planted["mirrored"]), status=Status.IGNORED)
    before = DuplicatePair.objects.count()
    assert duplicates_detect(image_ids=ProductImage.objects.values_list("id", flat=True)) == 0
    # Another picture of the re-encoded product, closer still: the decision stands.
    ProductImageFactory(product=planted["re-encoded"], data=encoded(photo(1), "JPEG", quality=90))
    process(planted["re-encoded"])
    assert DuplicatePair.objects.count() == before
    assert pair_of(source, planted["re-encoded"]).status == Status.NOT_DUPLICATE
    assert pair_of(source, planted["mirrored"]).status == Status.IGNORED


def test_decisions_stick_across_a_new_model_version(settings, planted):
    from tests.recommender.helpers import import_products, process_all, train_inline

    source = planted["source"]
    duplicate_pair_decide(pair=pair_of(source, planted["re-encoded"]), status=Status.NOT_DUPLICATE)
    import_products(60)
    process_all()
    version = train_inline(settings, epochs=2)
    assert version.status == "active"
    ProductImage.objects.update(duplicates_checked_at=None)  # as if every image were checked again
    duplicates_backlog_check()
    assert pair_of(source, planted["re-encoded"]).status == Status.NOT_DUPLICATE
    panel = [item.product.pk for item in similar_products(product=source, k=40, use_cache=False).items]
    assert planted["re-encoded"].pk in panel  # not a duplicate: shown
    for name in ("mirrored", "cropped", "same file"):  # open pairs: the product's own duplicates
        assert planted[name].pk not in panel


def test_a_panel_never_shows_two_products_paired_with_each_other(settings, planted):
    from tests.recommender.helpers import import_products, process_all, train_inline

    import_products(60)
    process_all()
    assert train_inline(settings, epochs=2).status == "active"
    group = {planted[n].pk for n in ("source", "re-encoded", "mirrored", "cropped", "same file")}
    everyone = [item.product.pk for item in similar_products(product=planted["distinct 1"], k=100, use_cache=False).items]
    assert len(group & set(everyone)) == 1  # the nearest of the group; the others are its duplicates
    assert not duplicates.duplicate_links(product_ids=everyone)
    panel = [item.product.pk for item in similar_products(product=planted["distinct 1"], k=6).items]
    assert len(panel) == 6 and not duplicates.duplicate_links(product_ids=panel)  # topped up to k


def test_merge_moves_the_images_and_hides_the_other_product(planted, django_capture_on_commit_callbacks):
    source, twin = planted["source"], planted["same file"]
    twin_file = twin.images.get().image.name
    other = planted["cropped"]
    moved = other.images.get()
    with django_capture_on_commit_callbacks(execute=True):
        duplicate_pair_merge(pair=pair_of(source, twin), keep=source)
        duplicate_pair_merge(pair=pair_of(source, other), keep=source)
    twin.refresh_from_db()
    other.refresh_from_db()
    assert not twin.is_active and not other.is_active
    assert not twin.images.exists() and not default_storage.exists(twin_file)  # the same file: not kept twice
    assert list(source.images.values_list("id", flat=True)) == [source.images.first().pk, moved.pk]
    assert not Embedding.objects.filter(product=other).exists()
    pair = pair_of(source, other)
    assert pair.status == Status.MERGED and pair.kept_id == source.pk
    with pytest.raises(ValueError, match="merged already"):
        duplicate_pair_merge(pair=pair, keep=source)
    with pytest.raises(ValueError, match="not one of this pair"):
        duplicate_pair_merge(pair=pair_of(source, planted["mirrored"]), keep=planted["distinct 1"])
    with pytest.raises(ValueError, match="merged"):
        duplicate_pair_decide(pair=pair, status=Status.OPEN)


def test_the_recovery_checks_images_no_worker_checked_hashing_their_files(planted):
    source, copy = planted["source"], planted["re-encoded"]
    DuplicatePair.objects.all().delete()
    ProductImage.objects.update(perceptual_hash=None, mirror_hash=None, duplicates_checked_at=None)
    assert duplicates_backlog_check() == ProductImage.objects.count()
    assert pair_of(source, copy) is not None
    assert not ProductImage.objects.filter(duplicates_checked_at__isnull=True).exists()


def test_admin_lists_pairs_side_by_side_and_its_actions_decide(admin_client, planted):
    from django.urls import reverse

    url = reverse("admin:catalog_duplicatepair_changelist")
    assert admin_client.get(url).status_code == 302  # to the open pairs: a review queue
    html = admin_client.get(url, {"status__exact": "open"}).content.decode()
    source = planted["source"]
    assert html.count("<img") >= 2 * DuplicatePair.objects.filter(status=Status.OPEN).count()
    assert source.sku in html and planted["same file"].sku in html
    exact = pair_of(source, planted["same file"])
    near = pair_of(source, planted["mirrored"])
    admin_client.post(url, {"action": "mark_not_duplicate", "_selected_action": [near.pk]})
    admin_client.post(url, {"action": "merge_into_older", "_selected_action": [exact.pk]})
    near.refresh_from_db()
    exact.refresh_from_db()
    assert near.status == Status.NOT_DUPLICATE and exact.status == Status.MERGED and exact.kept_id == source.pk
    assert not Product.objects.get(pk=planted["same file"].pk).is_active
    page = admin_client.get(reverse("admin:catalog_duplicatepair_change", args=[exact.pk])).content.decode()
    assert "Merged" in page and page.count("<img") >= 2


def test_merged_pictures_are_embedded_again_under_the_kept_product_and_checked(settings, planted):
    from recommender.models import Embedding
    from tests.recommender.helpers import import_products, process_all, train_inline

    import_products(40)
    process_all()
    version = train_inline(settings, epochs=2)
    assert version.status == "active"
    source, other = planted["source"], planted["cropped"]
    moved = other.images.get()
    duplicate_pair_merge(pair=pair_of(source, other), keep=source)
    moved.refresh_from_db()
    assert moved.product_id == source.pk and moved.status == "pending" and moved.duplicates_checked_at is None
    assert not Embedding.objects.filter(image=moved, version=version).exists()  # embedded again, as a new row
    images_process(image_ids=[moved.pk], token="after-merge")
    moved.refresh_from_db()
    assert moved.status == "ready" and moved.duplicates_checked_at is not None
    assert Embedding.objects.get(image=moved, version=version).product_id == source.pk
    panel = {i.product.pk for i in similar_products(product=source, k=40, use_cache=False).items}
    assert not panel & {planted[n].pk for n in ("re-encoded", "mirrored", "same file", "cropped")}


def test_a_merge_is_refused_while_pictures_are_processed_or_a_product_is_hidden(planted):
    source, copy, twin = planted["source"], planted["re-encoded"], planted["same file"]
    ProductImageFactory(product=copy, data=encoded(photo(9)))  # pending: not processed yet
    with pytest.raises(ValueError, match="still being processed"):
        duplicate_pair_merge(pair=pair_of(source, copy), keep=source)
    Product.objects.filter(pk=twin.pk).update(is_active=False)
    with pytest.raises(ValueError, match="hidden already"):
        duplicate_pair_merge(pair=pair_of(source, twin), keep=source)
    assert pair_of(source, copy).status == Status.OPEN and copy.images.count() == 2


def test_a_cached_panel_never_shows_two_products_paired_after_it_was_cached(settings, planted):
    from django.utils import timezone

    from tests.recommender.helpers import import_products, process_all, train_inline

    import_products(40)
    process_all()
    assert train_inline(settings, epochs=2).status == "active"
    query = Product.objects.filter(sku__startswith="FM").order_by("id").first()
    first = [i.product.pk for i in similar_products(product=query, k=6).items]  # cached
    a, b = sorted(first[:2])
    DuplicatePair.objects.filter(product_a_id=a, product_b_id=b).delete()
    DuplicatePair.objects.create(product_a_id=a, product_b_id=b, kind="near", distance=20)
    Product.objects.filter(pk__in=[a, b]).update(updated_at=timezone.now())  # as detection does
    again = [i.product.pk for i in similar_products(product=query, k=6).items]
    assert not {a, b} <= set(again) and len(again) == 6


def test_a_hidden_products_pictures_are_checked_once_it_is_shown():
    source = product_with(encoded(photo(4)))
    draft = product_with(encoded(photo(4), "JPEG", quality=50), is_active=False)
    process(source, draft)
    assert pair_of(source, draft) is None and draft.images.get().duplicates_checked_at is None
    Product.objects.filter(pk=draft.pk).update(is_active=True)
    assert duplicates_backlog_check() == 1
    assert pair_of(source, draft) is not None


def test_the_admin_merge_needs_the_product_change_permission_too(client, planted):
    from django.contrib.auth.models import Permission, User
    from django.urls import reverse

    staff = User.objects.create_user("dee", password="x", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_duplicatepair", "change_duplicatepair"]))
    client.force_login(staff)
    url = reverse("admin:catalog_duplicatepair_changelist")
    page = client.get(url, {"status__exact": "open"}).content.decode()
    assert "mark_not_duplicate" in page and "merge_into_older" not in page
    exact = pair_of(planted["source"], planted["same file"])
    client.post(url, {"action": "merge_into_older", "_selected_action": [exact.pk]})
    assert pair_of(planted["source"], planted["same file"]).status == Status.OPEN
