"""Saving a product image enqueues its processing after the transaction commits; so does an
import's recording of pictures to download (catalog.downloads.downloads_queued).

One wake-up per transaction, whatever it saved (an admin form with several inlines, an
importer's chunk): the drains claim the images themselves, in full batches
(recommender.services.ingestion)."""

from django.db import connection, transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from catalog.downloads import downloads_queued
from catalog.models import ImageDownload, ProductImage
from catalog.signals import images_created, images_moved
from recommender import publishing


def _wake():
    from recommender.services.ingestion import ingestion_wake

    ingestion_wake()


@receiver(post_save, sender=ProductImage, dispatch_uid="recommender_enqueue_image")
def enqueue_new_image(sender, instance, created, raw=False, **kwargs):
    if raw or not created or instance.status != ProductImage.Status.PENDING:
        return
    _wake_on_commit()


@receiver(images_created, sender=ProductImage, dispatch_uid="recommender_enqueue_images")
def enqueue_new_images(sender, images, **kwargs):
    if any(image.status == ProductImage.Status.PENDING for image in images):
        _wake_on_commit()


@receiver(images_moved, sender=ProductImage, dispatch_uid="recommender_images_moved")
def reembed_moved_images(sender, image_ids, product, **kwargs):
    """A merge moved these images (catalog.duplicates): every version's embeddings name their new
    product, and the active version's are dropped so that the worker embeds them again as new
    rows (the precomputed neighbour lists read rows newer than they are exactly; rows they already
    hold would keep the old product's place)."""
    from recommender.models import Embedding, ModelVersion

    Embedding.objects.filter(image_id__in=image_ids).update(product=product)
    Embedding.objects.filter(image_id__in=image_ids, version__status=ModelVersion.Status.ACTIVE).delete()
    _wake_on_commit()


def _wake_on_commit():
    # Register the wake-up once per transaction (the drains find the images themselves). A
    # rollback drops it from run_on_commit.
    if not any(entry[1] is _wake for entry in connection.run_on_commit):
        transaction.on_commit(_wake)


@receiver(downloads_queued, sender=ImageDownload, dispatch_uid="recommender_enqueue_downloads")
def enqueue_downloads(sender, download_ids, **kwargs):
    # After the commit (the worker must find the rows); a rollback drops it.
    ids = list(download_ids)
    transaction.on_commit(lambda: publishing.downloads_publish(download_ids=ids))
