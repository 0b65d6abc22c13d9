"""Files follow their rows: deleting an image (directly or with its product) removes its file
and thumbnails once the transaction commits (not before: a rollback must keep them).

``images_created`` is sent (``images=[ProductImage, ...]``, inside the writer's transaction) when
images were inserted in bulk, which sends no ``post_save``; receivers that react to new images
listen to both."""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import Signal, receiver

from catalog.models import ProductImage

images_created = Signal()


@receiver(post_delete, sender=ProductImage, dispatch_uid="catalog_delete_image_files")
def delete_image_files(sender, instance, **kwargs):
    storage = instance.image.storage
    names = [n for n in [instance.image.name, *instance.thumbnails.values()] if n]
    transaction.on_commit(lambda: [storage.delete(name) for name in names])
