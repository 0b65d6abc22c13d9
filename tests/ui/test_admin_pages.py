"""Every admin screen renders for staff (changelists, add and change pages of each registered
model, the dashboard and the bulk upload), and the admin configuration passes Django's checks."""

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.urls import reverse

from catalog.models import ProductImage
from recommender.models import ModelVersion
from tests.factories import ProductImageFactory
from tests.ui.data import fast_passwords, model_version  # noqa: F401

pytestmark = pytest.mark.django_db


def test_admin_configuration_passes_the_system_checks():
    call_command("check", fail_level="WARNING")


def test_every_admin_screen_renders(admin_client):
    image = ProductImageFactory()
    ProductImage.objects.filter(pk=image.pk).update(status="failed", last_error="decoder error")
    model_version(status=ModelVersion.Status.READY, artifacts="/nowhere")
    assert admin_client.get(reverse("admin:index")).status_code == 200
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        name = f"admin:{opts.app_label}_{opts.model_name}"
        response = admin_client.get(reverse(f"{name}_changelist"), follow=True)  # possible duplicates: to the open ones
        assert response.status_code == 200, name
        if model_admin.has_add_permission(response.wsgi_request):
            assert admin_client.get(reverse(f"{name}_add")).status_code == 200, name
        obj = model.objects.first()
        if obj is not None:
            assert admin_client.get(reverse(f"{name}_change", args=[obj.pk])).status_code == 200, name
            assert admin_client.get(reverse(f"{name}_history", args=[obj.pk])).status_code == 200, name
    for url in [reverse("admin:catalog_product_bulk_upload"), reverse("admin:app_list", args=["recommender"])]:
        assert admin_client.get(url).status_code == 200, url
    # Versions are made by training, never typed in or deleted by hand.
    assert admin_client.get(reverse("admin:recommender_modelversion_add")).status_code == 403
