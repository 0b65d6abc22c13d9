import posixpath
import zipfile
import zlib
from decimal import Decimal

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from catalog.cropping import box_from_fields, picture_crop
from catalog.validators import search_photo_open


class ProductFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")
    min_price = forms.DecimalField(required=False, min_value=Decimal("0"), decimal_places=2, label="Min price")
    max_price = forms.DecimalField(required=False, min_value=Decimal("0"), decimal_places=2, label="Max price")
    in_stock = forms.BooleanField(required=False, label="In stock only")
    sort = forms.ChoiceField(required=False, choices=[("", "Relevance"), ("price", "Price: low to high"),
                                                      ("-price", "Price: high to low"),
                                                      ("-created_at", "Newest")])

    def clean(self):
        data = super().clean()
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            raise ValidationError("The minimum price is above the maximum price.", code="invalid_range")
        return data

    def applicable_filters(self) -> dict:
        """The filters of the valid fields: an invalid field is left out (its error is shown next to
        it) instead of dropping every filter; an impossible price range drops both bounds."""
        if not self.is_bound:
            return {}
        if self.is_valid():
            return dict(self.cleaned_data)
        filters = {name: value for name, value in self.cleaned_data.items() if name not in self.errors}
        for name in self.errors:
            if name in self.fields:  # the input points at its error message (see _filters.html)
                self.fields[name].widget.attrs["aria-describedby"] = f"{self[name].auto_id}-error"
        if self.non_field_errors():
            filters.pop("min_price", None)
            filters.pop("max_price", None)
        return filters


def _box_input(label: str) -> forms.FloatField:
    # Fractions of the photo; the checks (and their messages) are catalog.cropping's, for the page
    # and the API alike, so the field itself takes any number.
    return forms.FloatField(required=False, label=label, widget=forms.NumberInput(
        attrs={"min": "0", "max": "1", "step": "any", "inputmode": "decimal", "class": "box-value"}))


class PhotoSearchForm(forms.Form):
    """A photo and, optionally, a box on it (catalog.cropping: four fractions, all or none).

    Once valid: ``picture`` is the whole photo decoded reduced (the page's preview), ``box`` the
    checked box or None, and ``query`` the picture to search by (the box's part of the photo, or
    the whole). Box errors are the form's non-field errors."""

    photo = forms.FileField(label="Photo", help_text="JPEG, PNG, WebP, GIF, BMP or TIFF.")
    same_category = forms.BooleanField(required=False, label="Same predicted category only")
    box_x = _box_input("Left edge (x)")
    box_y = _box_input("Top edge (y)")
    box_width = _box_input("Width")
    box_height = _box_input("Height")

    BOX_FIELDS = {"x": "box_x", "y": "box_y", "width": "box_width", "height": "box_height"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.box = self.picture = self.query = None

    def clean(self):
        """The box first (it decides how far the photo is reduced), then the photo decoded reduced
        toward the backbone's input within search by photo's own pixel budget (never re-encoded
        nor stored), then the box's part of it."""
        data = super().clean()
        if not any(name in self.errors for name in self.BOX_FIELDS.values()):
            try:
                self.box = box_from_fields({key: data.get(name) for key, name in self.BOX_FIELDS.items()})
            except ValidationError as exc:
                self.add_error(None, exc)
        upload = data.get("photo")
        if upload is None:
            return data
        try:
            self.picture = search_photo_open(upload, box=self.box)
        except ValidationError as exc:
            self.add_error("photo", exc)
            return data
        try:
            self.query = picture_crop(self.picture, box=self.box)
        except ValidationError as exc:
            self.add_error(None, exc)
        return data

    @property
    def box_given(self) -> bool:
        """Some box value was sent (the page then shows the box's fields open)."""
        return self.is_bound and any(self.data.get(name) not in (None, "") for name in self.BOX_FIELDS.values())


# --------------------------------------------------------------------------- bulk upload


def _unsafe_reason(name: str) -> str | None:
    """Why a path inside a ZIP (or named by the CSV) may not be used, or None when it is fine.

    Nothing is ever extracted to disk, but a name that climbs out of the archive is a sign of a
    crafted file, so it is refused with a clear message instead of being silently resolved."""
    if not name or "\x00" in name:
        return "an empty or NUL-containing name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if any(part == ".." for part in name.replace("\\", "/").split("/")):
        return "a path that leaves the archive (..)"
    return None


def _normalise_member(name: str) -> str:
    name = posixpath.normpath(name.replace("\\", "/"))
    return "" if name == "." else name


class ZipImages:
    """Read access to the files of an uploaded ZIP, with limits checked before anything is read.

    The limits guard against ZIP bombs: the member count and the declared uncompressed sizes are
    checked up front (zipfile never returns more bytes than a member declares, and checks its
    CRC), and each member is read with a cap of ``max_member_bytes``."""

    def __init__(self, upload, *, max_members: int, max_total_bytes: int, max_member_bytes: int):
        self.max_member_bytes = max_member_bytes
        try:
            self.archive = zipfile.ZipFile(upload)
            infos = self.archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
            raise ValidationError("The images file is not a ZIP archive (or it is damaged).", code="not_a_zip")
        files = [i for i in infos if not i.is_dir()]
        if len(infos) > max_members:
            raise ValidationError(f"The ZIP holds {len(infos):,} entries; the limit is {max_members:,}.",
                                  code="too_many_members")
        total = sum(i.file_size for i in files)
        if total > max_total_bytes:
            raise ValidationError(f"The ZIP would expand to {total:,} bytes; the limit is {max_total_bytes:,} bytes.",
                                  code="too_large")
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in files:
            reason = _unsafe_reason(info.filename)
            if reason:
                raise ValidationError(f"The ZIP contains {info.filename[:100]!r}, {reason}; it was refused as a "
                                      "whole.", code="unsafe_path")
            name = _normalise_member(info.filename)
            if name in self.members:
                raise ValidationError(f"The ZIP contains {name[:100]!r} twice.", code="duplicate_member")
            self.members[name] = info

    def csv_names(self) -> list[str]:
        return sorted(n for n in self.members if n.lower().endswith(".csv")
                      and not n.startswith("__MACOSX/") and not posixpath.basename(n).startswith("._"))

    def read(self, name: str, *, limit: int | None = None) -> bytes:
        """The bytes of a member; FileNotFoundError or ValueError (with a reason) otherwise."""
        limit = limit or self.max_member_bytes
        reason = _unsafe_reason(name)
        if reason:
            raise ValueError(f"refused: {reason}")
        info = self.members.get(_normalise_member(name))
        if info is None:
            raise FileNotFoundError(name)
        if info.flag_bits & 0x1:
            raise ValueError("the file is encrypted in the ZIP")
        if info.file_size > limit:
            raise ValueError(f"the file is too large ({info.file_size:,} bytes); the limit is {limit:,} bytes")
        try:
            with self.archive.open(info) as handle:
                data = handle.read(limit + 1)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error) as exc:
            raise ValueError(f"it cannot be read from the ZIP ({exc})")
        if len(data) > limit:
            raise ValueError(f"the file is larger than the limit of {limit:,} bytes")
        return data

    def opener(self, base: str = ""):
        """``open_image`` for catalog_parse: names in the CSV are relative to the CSV's folder (or
        to the root of the ZIP). Its ``resolve`` names the member a name means, so that catalog_parse
        unpacks and decodes a member once however many rows name it, under whatever spelling."""

        def resolve(name):
            reason = _unsafe_reason(name)
            if reason:
                raise ValueError(f"refused: {reason}")
            candidates = [posixpath.join(base, name.replace("\\", "/")), name] if base else [name]
            for candidate in candidates:
                member = _normalise_member(candidate)
                if member in self.members:
                    return member
            raise FileNotFoundError(name)

        def open_image(name):
            return self.read(resolve(name))

        open_image.resolve = resolve
        return open_image


class BulkUploadForm(forms.Form):
    """A ZIP of images plus a catalog CSV (any format ``import_catalog`` reads: ours, a Shopify or a
    WooCommerce product export). ``clean`` validates every row and every image; nothing is written
    here. Once valid, ``format_note`` says which format was recognised and how its columns were read
    (also shown in the catalog field's help, and after the file's name in ``csv_name``)."""

    archive = forms.FileField(
        label="Images (ZIP)",
        help_text="The pictures the CSV names. Sub-folders are fine; names are relative to the CSV's folder.")
    catalog = forms.FileField(
        label="Catalog (CSV)", required=False,
        help_text="Columns sku, title, category, images (several separated by ; or |), optional price and "
                  "description; or a Shopify or WooCommerce product export as it is, with its pictures in the ZIP "
                  "under the file names of their URLs. Leave empty if the ZIP contains exactly one .csv file.")
    skip_invalid = forms.BooleanField(
        label="Import the valid rows even if other rows have errors", required=False,
        help_text="Unticked (the default), a single bad row means nothing is imported.")

    MAX_CSV_BYTES = settings.BULK_UPLOAD_MAX_CSV_BYTES

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.parsed = None
        self.csv_name = ""
        self.format_note = ""

    @staticmethod
    def limits() -> dict:
        return {
            "max_members": settings.BULK_UPLOAD_MAX_FILES,
            "max_total_bytes": settings.BULK_UPLOAD_MAX_BYTES,
            "max_member_bytes": settings.MAX_UPLOAD_BYTES,
        }

    def clean_archive(self):
        upload = self.cleaned_data["archive"]
        limits = self.limits()
        if upload.size > limits["max_total_bytes"]:
            raise ValidationError(f"The ZIP is too large ({upload.size:,} bytes); the limit is "
                                  f"{limits['max_total_bytes']:,} bytes.", code="too_large")
        self.zip = ZipImages(upload, **limits)
        return upload

    def clean(self):
        from catalog.importing import CatalogFormatError, catalog_parse

        data = super().clean()
        if self.errors:
            return data
        csv_upload, base = data.get("catalog"), ""
        if csv_upload is not None:
            if csv_upload.size > self.MAX_CSV_BYTES:
                raise ValidationError({"catalog": f"The CSV is too large; the limit is {self.MAX_CSV_BYTES:,} bytes."})
            csv_bytes, self.csv_name = csv_upload.read(), csv_upload.name
        else:
            names = self.zip.csv_names()
            if len(names) != 1:
                found = f"{len(names)} .csv files ({', '.join(names[:5])})" if names else "no .csv file"
                raise ValidationError({"catalog": f"Choose the catalog CSV: the ZIP has {found}."})
            self.csv_name = names[0]
            base = posixpath.dirname(names[0])
            try:
                csv_bytes = self.zip.read(names[0], limit=self.MAX_CSV_BYTES)
            except ValueError as exc:
                raise ValidationError({"catalog": f"{names[0]}: {exc}."})
        try:
            self.parsed = catalog_parse(csv_bytes=csv_bytes, open_image=self.zip.opener(base))
        except CatalogFormatError as exc:
            raise ValidationError({"catalog": str(exc)})
        if not self.parsed.rows and not self.parsed.errors:
            raise ValidationError({"catalog": "The CSV has a header but no rows."})
        self._format_show(self.parsed.layout)
        return data

    def _format_show(self, layout):
        """Say which format the CSV was read as: the admin's result message names the file by
        ``csv_name``, and the page shows the catalog field's help."""
        name, field = self.csv_name, self.fields["catalog"]
        self.format_note = layout.describe()
        self.csv_name = f"{name} ({layout.name})"
        field.help_text = f"{name} was read as a {self.format_note}. {field.help_text}"
        self["catalog"].help_text = field.help_text  # the bound field copied it when the form was cleaned
