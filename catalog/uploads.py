"""A hard cap on what an uploaded file may take in memory or on disk while a request is parsed.

Django's own upload handlers keep every byte of every file (in memory, or in a temporary file
once the request is larger than FILE_UPLOAD_MAX_MEMORY_SIZE) before any view or form sees its
size. :class:`UploadSizeCapHandler` runs first in FILE_UPLOAD_HANDLERS and passes a file's bytes
on to the next handlers only up to its limit; past it, what was stored so far is discarded (the
temporary file is deleted at once) and the rest is only counted. The file then arrives in
``request.FILES`` as an :class:`OversizedUpload`: its name, content type and true size, but no
content. Every consumer checks the size before reading (``catalog.validators.normalise_image``,
``BulkUploadForm``), so the client still gets the usual "The file is too large (N bytes); the
limit is M bytes." (a form error on pages, a 400 in the API).

The limit is per field: the admin bulk upload's ZIP and CSV have their own (larger) limits,
every other file field has MAX_UPLOAD_BYTES. The request body itself is still read to its end
(discarding), so that the fields after the file and the response work; the size of a whole
request is for the web server in front to bound (e.g. nginx ``client_max_body_size``).
"""

from __future__ import annotations

import io

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, MemoryFileUploadHandler
from django.urls import NoReverseMatch, reverse


class OversizedUpload(UploadedFile):
    """A file that went over its limit: its size is the bytes received, its content is empty."""

    oversized = True

    def __init__(self, *, name, content_type, size, charset, content_type_extra, limit):
        super().__init__(io.BytesIO(), name, content_type, size, charset, content_type_extra)
        self.limit = limit


def upload_limit(request, field_name: str) -> int:
    """The most bytes a file of this field may have in this request."""
    from catalog.forms import BulkUploadForm

    limit = settings.MAX_UPLOAD_BYTES
    try:
        bulk_url = reverse("admin:catalog_product_bulk_upload")
    except NoReverseMatch:
        bulk_url = None
    if request is not None and request.path == bulk_url:
        limit = {"archive": settings.BULK_UPLOAD_MAX_BYTES, "catalog": BulkUploadForm.MAX_CSV_BYTES}.get(
            field_name, limit)
    return limit


class UploadSizeCapHandler(FileUploadHandler):
    """First of FILE_UPLOAD_HANDLERS: hands a file's chunks on only while it is within its limit."""

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        self.limit = upload_limit(self.request, field_name)
        self.received = 0
        self.oversized = False

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.oversized:
            return None
        if self.received > self.limit:
            self.oversized = True
            self._discard_stored()
            return None  # the next handlers (memory, temporary file) never see more of this file
        return raw_data

    def _discard_stored(self):
        """Drop what the other handlers kept of this file so far (Django's TemporaryFileUploadHandler
        deletes its temporary file in ``upload_interrupted``)."""
        for handler in getattr(self.request, "upload_handlers", ()):
            if handler is self:
                continue
            handler.upload_interrupted()
            if isinstance(handler, MemoryFileUploadHandler) and getattr(handler, "file", None) is not None:
                handler.file = io.BytesIO()  # let the buffer go

    def file_complete(self, file_size):
        if not self.oversized:
            return None  # the next handler returns the file
        return OversizedUpload(name=self.file_name, content_type=self.content_type, size=self.received,
                               charset=self.charset, content_type_extra=self.content_type_extra, limit=self.limit)
