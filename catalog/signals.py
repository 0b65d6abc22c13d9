"""Files follow their rows: deleting an image (directly or with its product) removes its file
and thumbnails once the transaction commits (not before: a rollback must keep them)."""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from catalog.models import ProductImage


@receiver(post_delete, sender=ProductImage, dispatch_uid="catalog_delete_image_files")
def delete_image_files(sender, instance, **kwargs):
    storage = instance.image.storage
    names = [n for n in [instance.image.name, *instance.thumbnails.values()] if n]
    transaction.on_commit(lambda: [storage.delete(name) for name in names])
