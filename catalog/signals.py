"""Files follow their rows: deleting an image (directly or with its product) removes its file
and thumbnails once the transaction commits (not before: a rollback must keep them).

``images_created`` is sent (``images=[ProductImage, ...]``, inside the writer's transaction) when
images were inserted in bulk, which sends no ``post_save``; receivers that react to new images
listen to both.

``images_moved`` is sent (``image_ids=[...]``, ``product=`` the product they moved to, inside the
merge's transaction: catalog.duplicates) when a merge moved images to another product; they are
pending again, so that the worker embeds them under their new product and checks them for
duplicates. Receivers fix what names an image's product outside the catalog."""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import Signal, receiver

from catalog.models import ProductImage

images_created = Signal()
images_moved = Signal()


@receiver(post_delete, sender=ProductImage, dispatch_uid="catalog_delete_image_files")
def delete_image_files(sender, instance, **kwargs):
    storage = instance.image.storage
    names = [n for n in [instance.image.name, *instance.thumbnails.values()] if n]
    transaction.on_commit(lambda: [storage.delete(name) for name in names])
