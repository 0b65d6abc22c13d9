from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError

from catalog.validators import normalise_image


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
            raise ValidationError("The minimum price is above the maximum price.")
        return data


class PhotoSearchForm(forms.Form):
    photo = forms.FileField(label="Photo", help_text="JPEG, PNG, WebP, GIF, BMP or TIFF.")
    same_category = forms.BooleanField(required=False, label="Same predicted category only")

    def clean_photo(self):
        upload = self.cleaned_data["photo"]
        self.normalised = normalise_image(upload)
        return upload
