from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from catalog.admin_merchandising import PanelBlockInline, PanelPinInline, panel_preview_view
from catalog.downloads import downloads_retry
from catalog.forms import BulkUploadForm
from catalog.models import Category, ImageDownload, Product, ProductImage
from catalog.services import (
    files_removed_on_error,
    is_unique_violation,
    product_image_describe,
    product_image_file_store,
)
from catalog.validators import normalise_image
from recommender.services.ingestion import images_retry

admin.site.site_header = "Lookalike admin"
admin.site.site_title = "Lookalike admin"
admin.site.index_title = "Catalog and recommender"


class CurrentImageWidget(forms.Widget):
    """The stored picture of an existing row, shown but not replaceable: a new file would leave
    the row's status, thumbnails, features and embeddings describing the old picture."""

    def render(self, name, value, attrs=None, renderer=None):
        url = getattr(value, "url", "") if value else ""
        if not url:
            return "-"
        return format_html('<a href="{}" target="_blank" rel="noopener">Current file</a>'
                           '<div class="help">To replace the picture, delete this row and add a new one.</div>', url)

    def value_from_datadict(self, data, files, name):
        return None  # whatever the client sends for an existing row is ignored

    def value_omitted_from_data(self, data, files, name):
        return False


class ProductImageForm(forms.ModelForm):
    # A plain file field: normalise_image decides (size first, then decoding) and says why in
    # its own words; the model's ImageField would decode first and only say "not valid".
    image = forms.FileField(label="Image", widget=forms.ClearableFileInput(attrs={"accept": "image/*"}))

    class Meta:
        model = ProductImage
        fields = ["image", "position"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            # An existing row's file is read-only: replacing a picture is deleting its row and adding
            # a new one, so files, thumbnails, features and embeddings always belong to the picture.
            self.fields["image"] = forms.Field(label="Image", required=False, disabled=True,
                                               widget=CurrentImageWidget())

    def clean_image(self):
        if self.instance.pk:
            return self.instance.image  # never replaced (see __init__)
        upload = self.cleaned_data.get("image")
        if upload is None:
            return upload
        self.new_picture = product_image_describe(image=self.instance, normalised=normalise_image(upload),
                                                  original_name=getattr(upload, "name", ""))
        return self.new_picture

    def save(self, commit=True):
        if getattr(self, "new_picture", None) is not None and not self.instance.pk:
            # Stored here rather than by the model field's pre_save, so that the admin's
            # files_removed_on_error (see SavedTogetherAdmin) knows the file and deletes it if the
            # admin's transaction rolls back (a later row or the database fails).
            product_image_file_store(image=self.instance, content=self.new_picture)
        return super().save(commit=commit)


class ProductImageFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        seen = set()
        for form in self.forms:
            if not getattr(form, "cleaned_data", None) or form.cleaned_data.get("DELETE"):
                continue
            digest = form.instance.content_hash
            if not digest:
                continue
            duplicate = digest in seen or (
                self.instance.pk and ProductImage.objects.filter(product=self.instance, content_hash=digest)
                .exclude(pk=form.instance.pk).exists())
            if duplicate:
                form.add_error("image", ValidationError("This picture is already attached to the product."))
            seen.add(digest)


class ProductImageInline(admin.TabularInline):
    model = ProductImage
    form = ProductImageForm
    formset = ProductImageFormSet
    extra = 1
    fields = ["preview", "image", "position", "dimensions", "status_badge", "attempts", "last_error"]
    readonly_fields = ["preview", "dimensions", "status_badge", "attempts", "last_error"]

    @admin.display(description="Preview")
    def preview(self, obj):
        if obj and obj.pk and obj.image:
            return format_html('<img src="{}" style="height:64px;width:64px;object-fit:contain" alt="">',
                               obj.thumbnail_url(128))
        return "-"

    @admin.display(description="Size")
    def dimensions(self, obj):
        return f"{obj.width}x{obj.height}" if obj and obj.pk else "-"

    @admin.display(description="Processing")
    def status_badge(self, obj):
        return status_html(obj) if obj and obj.pk else "-"


class SavedTogetherAdmin(admin.ModelAdmin):
    """A change form's rows and files are saved together or not at all, and a save that lost a race
    is answered with a form error.

    Django's change view saves in one transaction, but storage is not transactional: the files
    written in it are deleted if it rolls back. Two staff saving the same SKU, name or picture at
    once both pass validation (neither has committed), and the second one's INSERT hits the
    unique constraint; its transaction rolls back whole, and the view runs once more, now
    validating against the committed row, so that person sees the usual "already exists" error
    next to the field, with their input kept."""

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            with files_removed_on_error():
                return super().changeform_view(request, object_id, form_url, extra_context)
        except IntegrityError as exc:
            if request.method != "POST" or not is_unique_violation(exc):
                raise
        with files_removed_on_error():
            return super().changeform_view(request, object_id, form_url, extra_context)


def shortened(text: str, limit: int = 80) -> str:
    """A list column's view of a long text (an error): its first ``limit`` characters."""
    return (text[:limit] + "…") if len(text) > limit else text


STATUS_COLOURS = {"pending": "#667085", "processing": "#1570ef", "ready": "#067647", "failed": "#b42318"}


def _new_categories(rows) -> list[str]:
    """Category names of ``rows`` that do not exist yet (the import would create them)."""
    names = {row.category for row in rows}
    return sorted(names - set(Category.objects.filter(name__in=names).values_list("name", flat=True)))


def status_html(image):
    return format_html('<b style="color:{}">{}</b>', STATUS_COLOURS.get(image.status, "#000"),
                       image.get_status_display())


class ImageStatusFilter(admin.SimpleListFilter):
    title = "image processing"
    parameter_name = "images"

    def lookups(self, request, model_admin):
        return [("failed", "Has failed images"), ("pending", "Has unprocessed images"), ("none", "No images")]

    def queryset(self, request, queryset):
        if self.value() == "failed":
            return queryset.filter(images__status=ProductImage.Status.FAILED).distinct()
        if self.value() == "pending":
            return queryset.filter(images__status__in=["pending", "processing"]).distinct()
        if self.value() == "none":
            return queryset.filter(images__isnull=True)
        return queryset


@admin.register(Category)
class CategoryAdmin(SavedTogetherAdmin):
    list_display = ["name", "slug", "product_count"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_products=Count("products"))

    @admin.display(ordering="_products", description="Products")
    def product_count(self, obj):
        return obj._products


@admin.register(Product)
class ProductAdmin(SavedTogetherAdmin):
    list_display = ["sku", "title", "category", "price", "is_active", "in_stock", "image_count",
                    "failed_images", "updated_at"]
    list_filter = ["is_active", "in_stock", "category", ImageStatusFilter, "created_at"]
    list_editable = ["is_active", "in_stock"]
    list_select_related = ["category"]
    search_fields = ["sku", "title", "description"]
    autocomplete_fields = ["category"]
    date_hierarchy = "created_at"
    inlines = [ProductImageInline, PanelPinInline, PanelBlockInline]
    readonly_fields = ["similar_items"]
    actions = ["retry_failed_images", "mark_inactive", "mark_active"]
    list_per_page = 50
    change_list_template = "admin/catalog/product/change_list.html"

    def get_urls(self):
        return [path("bulk-upload/", self.admin_site.admin_view(self.bulk_upload_view),
                     name="catalog_product_bulk_upload"),
                path("<int:pk>/panel/", self.admin_site.admin_view(lambda request, pk: panel_preview_view(self, request, pk)),
                     name="catalog_product_panel"), *super().get_urls()]

    @admin.display(description="Similar items")
    def similar_items(self, obj):
        if not obj.pk:
            return "Shown once the product is saved."
        return format_html('<a href="{}">Preview its panel</a> per model version, with the rules below applied',
                           reverse("admin:catalog_product_panel", args=[obj.pk]))

    def bulk_upload_view(self, request):
        """Validate a ZIP + CSV completely, then (and only then) import. "Check" never writes."""
        from catalog.import_runs import catalog_import_recorded, import_report

        # Every row brings pictures: adding products and adding their images, as the change form asks.
        if not (self.has_add_permission(request) and request.user.has_perm("catalog.add_productimage")):
            raise PermissionDenied
        form = BulkUploadForm(request.POST or None, request.FILES or None)
        report = summary = run = None
        imported = False
        updates_refused, categories_refused = [], []
        status = 200
        if request.method == "POST":
            if form.is_valid():
                parsed = form.parsed
                report = import_report(parsed)
                wants_import = "_import" in request.POST
                if report["update"] and not self.has_change_permission(request):
                    # Existing SKUs would be changed: that needs the change permission, not only add.
                    updates_refused = [line["sku"] for line in report["lines"] if line.get("outcome") == "update"]
                if not request.user.has_perm("catalog.add_category"):
                    categories_refused = _new_categories(parsed.rows)
                if wants_import and (updates_refused or categories_refused):
                    status = 403
                elif wants_import and parsed.rows and (not parsed.errors or form.cleaned_data["skip_invalid"]):
                    run, summary = catalog_import_recorded(parsed=parsed, source=form.csv_name, origin="admin",
                                                           user=request.user)
                    imported = True
                    total = len(parsed.rows) + len(parsed.errors)
                    self.message_user(request, f"Imported {len(parsed.rows)} of {total} rows from {form.csv_name}.",
                                      messages.SUCCESS)
                elif wants_import:
                    status = 400
            else:
                status = 400
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Bulk upload products",
            "form": form,
            "report": report,
            "summary": summary,
            "imported": imported,
            "run_url": reverse("admin:catalog_importrun_change", args=[run.pk]) if run else None,
            "updates_refused": updates_refused,
            "categories_refused": categories_refused,
            "import_refused": status == 403,
            "limits": BulkUploadForm.limits(),
            "changelist_url": reverse("admin:catalog_product_changelist"),
        }
        return TemplateResponse(request, "admin/catalog/product/bulk_upload.html", context, status=status)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _images=Count("images"), _failed=Count("images", filter=Q(images__status="failed")))

    @admin.display(ordering="_images", description="Images")
    def image_count(self, obj):
        return obj._images

    @admin.display(ordering="_failed", description="Failed")
    def failed_images(self, obj):
        return format_html('<b style="color:#b42318">{}</b>', obj._failed) if obj._failed else "0"

    @admin.action(description="Retry failed images of the selected products", permissions=["change"])
    def retry_failed_images(self, request, queryset):
        ids = ProductImage.objects.filter(product__in=queryset, status="failed").values_list("id", flat=True)
        count = images_retry(image_ids=list(ids))
        self.message_user(request, f"{count} failed images queued again.", messages.SUCCESS)

    @admin.action(description="Hide the selected products from shoppers", permissions=["change"])
    def mark_inactive(self, request, queryset):
        self.message_user(request, f"{queryset.update(is_active=False)} products hidden.")

    @admin.action(description="Show the selected products to shoppers", permissions=["change"])
    def mark_active(self, request, queryset):
        self.message_user(request, f"{queryset.update(is_active=True)} products shown.")


@admin.register(ProductImage)
class ProductImageAdmin(admin.ModelAdmin):
    list_display = ["id", "thumb", "product", "status_badge", "attempts", "short_error", "status_changed_at"]
    list_filter = ["status"]
    list_select_related = ["product"]
    search_fields = ["product__sku", "product__title", "content_hash", "last_error"]
    readonly_fields = ["product", "image", "width", "height", "content_hash", "original_name", "status",
                       "attempts", "last_error", "thumbnails", "status_changed_at", "created_at"]
    fields = readonly_fields[:1] + ["position"] + readonly_fields[1:]
    actions = ["retry"]

    def has_add_permission(self, request):
        return False  # images are added on their product

    @admin.display(description="")
    def thumb(self, obj):
        return format_html('<img src="{}" style="height:40px;width:40px;object-fit:contain" alt="">',
                           obj.thumbnail_url(128))

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj):
        return status_html(obj)

    @admin.display(description="Last error")
    def short_error(self, obj):
        return shortened(obj.last_error)

    @admin.action(description="Retry the selected failed images", permissions=["change"])
    def retry(self, request, queryset):
        count = images_retry(image_ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{count} failed images queued again.", messages.SUCCESS)


@admin.register(ImageDownload)
class ImageDownloadAdmin(admin.ModelAdmin):
    """Pictures that catalog rows named by URL (catalog.downloads): what failed and why, retried."""

    list_display = ["id", "product", "short_url", "status", "attempts", "short_error", "next_attempt_at", "updated_at"]
    list_filter = ["status"]
    list_select_related = ["product"]
    search_fields = ["url", "product__sku", "last_error"]
    readonly_fields = ["product", "url", "status", "attempts", "last_error", "next_attempt_at", "image",
                       "created_at", "updated_at"]
    actions = ["retry"]

    def has_add_permission(self, request):
        return False  # recorded by imports

    @admin.display(description="URL")
    def short_url(self, obj):
        return format_html('<a href="{}" rel="noopener noreferrer">{}</a>', obj.url, obj.url[:60])

    @admin.display(description="Last error")
    def short_error(self, obj):
        return shortened(obj.last_error)

    @admin.action(description="Retry the selected failed downloads", permissions=["change"])
    def retry(self, request, queryset):
        count = len(downloads_retry(download_ids=list(queryset.values_list("id", flat=True))))
        self.message_user(request, f"{count} failed downloads queued again.", messages.SUCCESS)


from catalog import admin_duplicates, admin_imports  # noqa: E402,F401 (register the duplicates' and imports' lists)
