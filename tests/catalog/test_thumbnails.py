"""Thumbnails (catalog.thumbnails): made by the worker, one WebP per size worth making."""

import errno
import os
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from PIL import Image

from catalog.thumbnails import thumbnail_names, thumbnail_sizes, thumbnails_create
from tests.factories import ProductImageFactory


@pytest.mark.parametrize("source, made", [
    ((28, 28), [128]),          # Fashion-MNIST: one crisp upscale, the rest would copy it
    ((60, 80), [128]),
    ((200, 150), [128, 256]),
    ((256, 100), [128, 256]),
    ((900, 1200), [128, 256, 512]),
])
def test_only_sizes_up_to_the_first_covering_the_source_are_made(source, made):
    assert thumbnail_sizes(source=source, sizes=(512, 128, 256)) == made


@pytest.mark.django_db
def test_a_small_source_gets_one_file_and_pages_ask_for_any_size(settings):
    image = ProductImageFactory()
    picture = Image.new("RGB", (60, 80), (200, 30, 30))
    image.thumbnails = thumbnails_create(image_field=image.image, picture=picture, sizes=(128, 256, 512))
    assert list(image.thumbnails) == ["128"]
    with Image.open(image.image.storage.path(image.thumbnails["128"])) as thumb:
        assert thumb.size == (96, 128)
    assert image.thumbnail_url(512) == image.thumbnail_url(128) == settings.MEDIA_URL + image.thumbnails["128"]


class FullDiskStorage(FileSystemStorage):
    """A real FileSystemStorage on the test's MEDIA_ROOT whose disk is full after ``room``
    thumbnails (originals are still written): the next one is cut short, as a full disk leaves
    it, and the write raises ENOSPC."""

    room = 0

    def _save(self, name, content):
        if name.startswith("thumbs/"):
            if FullDiskStorage.room <= 0:
                super()._save(name, ContentFile(content.read()[:100]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
            FullDiskStorage.room -= 1
        return super()._save(name, content)


def thumbnail_files(settings) -> list[str]:
    root = Path(settings.MEDIA_ROOT) / "thumbs"
    return sorted(str(p.relative_to(settings.MEDIA_ROOT)) for p in root.rglob("*") if p.is_file())


@pytest.mark.django_db
def test_a_disk_that_fills_midway_leaves_no_thumbnail_behind(settings):
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": f"{__name__}.FullDiskStorage"}}
    FullDiskStorage.room = 1  # the 128 px file fits, the 256 px one does not
    image = ProductImageFactory()
    picture = Image.new("RGB", (900, 1200), (200, 30, 30))
    with pytest.raises(OSError, match="No space left on device"):
        thumbnails_create(image_field=image.image, picture=picture, sizes=(128, 256, 512))
    assert thumbnail_files(settings) == []
    assert Path(image.image.path).is_file()  # the original is not touched


@pytest.mark.django_db
def test_each_claim_writes_names_of_its_own(settings):
    """Two claims of one image never write (or delete) each other's files; the same claim run
    again overwrites its own."""
    image = ProductImageFactory()
    picture = Image.new("RGB", (60, 80), (200, 30, 30))
    first = thumbnails_create(image_field=image.image, picture=picture, sizes=(128,), claim=1)
    second = thumbnails_create(image_field=image.image, picture=picture, sizes=(128,), claim=2)
    assert first["128"] != second["128"]
    assert thumbnails_create(image_field=image.image, picture=picture, sizes=(128,), claim=2) == second
    assert thumbnail_files(settings) == sorted([first["128"], second["128"]])
    assert thumbnail_names(image_field=image.image, source=picture.size, sizes=(128,), claim=1) == [first["128"]]
