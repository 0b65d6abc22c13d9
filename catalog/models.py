import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.urls import reverse
from pgvector.django import BitField, HnswIndex

# catalog.perceptual.BITS (not imported: that module pulls numpy's DCT set-up into every start-up);
# tests/catalog/test_duplicates.py checks they agree.
PERCEPTUAL_BITS = 256


class Category(models.Model):
    name = models.CharField(max_length=120, unique=True)
    slug = models.SlugField(max_length=140, unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("catalog:category", kwargs={"slug": self.slug})


class ProductQuerySet(models.QuerySet):
    def active(self):
        return self.filter(is_active=True)


class Product(models.Model):
    sku = models.CharField("SKU", max_length=64, unique=True)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="products")
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0,
                                validators=[MinValueValidator(0)])
    is_active = models.BooleanField("active", default=True, help_text="Shown to shoppers.")
    in_stock = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProductQuerySet.as_manager()

    class Meta:
        ordering = ["title", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(price__gte=0), name="product_price_non_negative"),
        ]
        indexes = [models.Index(fields=["category", "is_active"])]

    def __str__(self):
        return f"{self.title} ({self.sku})"

    def get_absolute_url(self):
        return reverse("catalog:product", kwargs={"pk": self.pk})


def image_upload_to(instance, filename):
    # Never trust the client's file name (``../``, NUL bytes, 300 characters...): the stored name
    # is generated; the extension comes from the decoded format (see catalog.validators).
    ext = (instance.image_format or "png").lower().replace("jpeg", "jpg")
    return f"products/{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}.{ext}"


class ProductImage(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="images")
    image = models.ImageField(upload_to=image_upload_to)
    image_format = models.CharField(max_length=10, blank=True, editable=False)
    position = models.PositiveIntegerField(default=0)
    width = models.PositiveIntegerField(default=0, editable=False)
    height = models.PositiveIntegerField(default=0, editable=False)
    content_hash = models.CharField(max_length=64, editable=False, db_index=True,
                                    help_text="SHA-256 of the stored file.")
    original_name = models.CharField(max_length=255, blank=True, editable=False)
    thumbnails = models.JSONField(default=dict, blank=True, editable=False,
                                  help_text="{size: storage path} of the WebP thumbnails.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING,
                              db_index=True, editable=False)
    attempts = models.PositiveIntegerField(default=0, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    # The Celery task id that holds the row while it is processing: a redelivery of the same task
    # may take it back at once; anyone else waits until the claim is stale.
    processing_token = models.CharField(max_length=64, blank=True, editable=False)
    status_changed_at = models.DateTimeField(auto_now_add=True, editable=False)
    # Near-duplicate detection (catalog.duplicates): the picture's perceptual hash and its mirror
    # image's (catalog.perceptual), written by the worker with the thumbnails; checked against the
    # catalog once the image is ready (null: not yet, and the periodic recovery will).
    perceptual_hash = BitField(length=PERCEPTUAL_BITS, null=True, blank=True, editable=False)
    mirror_hash = BitField(length=PERCEPTUAL_BITS, null=True, blank=True, editable=False)
    duplicates_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["product", "content_hash"], name="unique_image_per_product"),
        ]
        indexes = [
            models.Index(fields=["status", "status_changed_at"]),
            # The nearest hashes of a new image (catalog.duplicates): an index scan, not a scan of
            # every image.
            HnswIndex(name="image_perceptual_hash_hnsw", fields=["perceptual_hash"], m=16, ef_construction=64,
                      opclasses=["bit_hamming_ops"]),
            models.Index(fields=["status_changed_at"], name="image_duplicates_unchecked",
                         condition=models.Q(status="ready", duplicates_checked_at__isnull=True)),
        ]

    def __str__(self):
        return f"image {self.pk} of {self.product_id}"

    def thumbnail_url(self, size=256):
        """URL of the pre-made WebP thumbnail closest to ``size`` (the original if none yet)."""
        if self.thumbnails:
            sizes = sorted(int(s) for s in self.thumbnails)
            best = next((s for s in sizes if s >= size), sizes[-1])
            return settings.MEDIA_URL + self.thumbnails[str(best)]
        return self.image.url if self.image else ""


class ImageDownload(models.Model):
    """A picture a catalog row named by an http(s) URL that was not among the given files: the
    worker downloads it (catalog.downloads), never the web request. Pending -> downloading -> done
    (``image`` the picture, added like an upload) or, after an error, pending again with a backoff
    (``next_attempt_at``), failed after the last attempt or at once when retrying cannot help (a
    refused address, not an image). One row per (product, URL): a re-import adds none."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DOWNLOADING = "downloading", "Downloading"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="downloads")
    url = models.CharField("URL", max_length=2000)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="When a failed attempt is retried.")
    image = models.ForeignKey(ProductImage, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["product", "url"], name="unique_download_per_product")]
        indexes = [models.Index(fields=["status", "updated_at"])]

    def __str__(self):
        return f"download {self.pk} of {self.product_id}: {self.url[:80]}"


class DuplicatePair(models.Model):
    """Two products whose pictures are the same file, or near-duplicates (catalog.duplicates), and
    what staff decided. One row per pair of products, ``product_a`` the older (lower id): a pair
    found again (another image, a re-check, a new model version) never reopens a decision; only an
    open pair's match is updated."""

    class Status(models.TextChoices):
        OPEN = "open", "To review"
        MERGED = "merged", "Merged"
        NOT_DUPLICATE = "not_duplicate", "Not a duplicate"
        IGNORED = "ignored", "Ignored (duplicates kept)"

    class Kind(models.TextChoices):
        EXACT = "exact", "Same file"
        NEAR = "near", "Near-duplicate"

    product_a = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="+")
    product_b = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="+")
    image_a = models.ForeignKey(ProductImage, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    image_b = models.ForeignKey(ProductImage, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    distance = models.PositiveSmallIntegerField(help_text=(
        f"Bits of the {PERCEPTUAL_BITS}-bit perceptual hashes that differ (0: the same picture)."))
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN, db_index=True)
    kept = models.ForeignKey(Product, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
                             help_text="The product a merge kept.")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["distance", "id"]
        verbose_name = "possible duplicate"
        constraints = [
            models.UniqueConstraint(fields=["product_a", "product_b"], name="one_duplicate_pair_per_products"),
            models.CheckConstraint(condition=models.Q(product_a__lt=models.F("product_b")),
                                   name="duplicate_pair_ordered"),
        ]
        indexes = [models.Index(fields=["product_b", "status"])]

    def __str__(self):
        return f"possible duplicate {self.product_a_id} / {self.product_b_id} ({self.status})"


class ImportRun(models.Model):
    """One catalog import (the admin's bulk upload or ``manage.py import_catalog``): its rows as
    they are written, its per-row report, and the products it wrote, whose pictures' statuses are
    its progress once the rows are in (catalog.import_runs)."""

    class Status(models.TextChoices):
        IMPORTING = "importing", "Importing rows"
        DONE = "done", "Rows imported"
        FAILED = "failed", "Failed"

    source = models.CharField(max_length=255, help_text="The CSV's file name.")
    origin = models.CharField(max_length=20, help_text="admin or command")
    format = models.CharField(max_length=500, blank=True, help_text="The format recognised and its column mapping.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.IMPORTING, db_index=True)
    rows_total = models.PositiveIntegerField(default=0, help_text="Valid rows to import.")
    rows_done = models.PositiveIntegerField(default=0)
    rows_invalid = models.PositiveIntegerField(default=0, help_text="Rows skipped for an error (see the report).")
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    images_added = models.PositiveIntegerField(default=0)
    downloads_queued = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=list, blank=True, help_text="Per row: line, SKU and outcome or error.")
    product_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    error = models.TextField(blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, help_text="Last progress (each chunk of rows written).")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "catalog import"

    def __str__(self):
        return f"import {self.pk} of {self.source}"


class PanelPin(models.Model):
    """A product staff pinned to the top of another's similar-items panel, in ``position`` order
    (catalog.merchandising): shown whatever the model version says."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="panel_pins")
    pinned = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        verbose_name = "pinned product"
        constraints = [
            models.UniqueConstraint(fields=["product", "pinned"], name="one_pin_per_product_pair"),
            models.CheckConstraint(condition=~models.Q(product=models.F("pinned")), name="pin_not_itself",
                                   violation_error_message="A product cannot be pinned to its own panel."),
        ]

    def __str__(self):
        return f"{self.pinned_id} pinned under {self.product_id}"


class PanelBlock(models.Model):
    """A product staff never want in another's similar-items panel (catalog.merchandising)."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="panel_blocks")
    blocked = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="+")

    class Meta:
        ordering = ["id"]
        verbose_name = "blocked product"
        constraints = [
            models.UniqueConstraint(fields=["product", "blocked"], name="one_block_per_product_pair"),
            models.CheckConstraint(condition=~models.Q(product=models.F("blocked")), name="block_not_itself",
                                   violation_error_message="A product is never in its own panel."),
        ]

    def __str__(self):
        return f"{self.blocked_id} blocked under {self.product_id}"


class CategoryRule(models.Model):
    """Never recommend products of ``hidden`` under products of ``category`` ("no socks under
    suits"), in every panel of the category (catalog.merchandising)."""

    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="+",
                                 help_text="Under products of this category...")
    hidden = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="+",
                               help_text="...never recommend products of this one.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["category__name", "hidden__name"]
        verbose_name = "category rule"
        constraints = [
            models.UniqueConstraint(fields=["category", "hidden"], name="one_rule_per_category_pair"),
            models.CheckConstraint(condition=~models.Q(category=models.F("hidden")), name="category_rule_not_itself",
                                   violation_error_message="A category rule needs two different "
                                                           "categories."),
        ]

    def __str__(self):
        return f"never {self.hidden} under {self.category}"
