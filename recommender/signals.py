"""Saving a product image enqueues its processing after the transaction commits.

Images saved in one transaction (an admin form with several inlines, an importer's chunk) are
published together, so the worker extracts their features in one batch."""

from django.db import connection, transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from catalog.models import ProductImage

_PENDING_ATTR = "_recommender_pending_images"


def _flush():
    ids = connection.__dict__.pop(_PENDING_ATTR, None)
    if ids:
        from recommender.services.ingestion import images_enqueue

        images_enqueue(image_ids=ids)


@receiver(post_save, sender=ProductImage, dispatch_uid="recommender_enqueue_image")
def enqueue_new_image(sender, instance, created, raw=False, **kwargs):
    if raw or not created or instance.status != ProductImage.Status.PENDING:
        return
    connection.__dict__.setdefault(_PENDING_ATTR, []).append(instance.pk)
    # Register the flush once per transaction. A rollback drops it from run_on_commit (and the
    # ids it would have sent name rows that no longer exist, which the task ignores).
    if not any(entry[1] is _flush for entry in connection.run_on_commit):
        transaction.on_commit(_flush)
