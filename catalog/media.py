"""Serving uploaded media with safe headers (local use; production puts a web server in front)."""

from django.conf import settings
from django.views.static import serve

SAFE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def serve_media(request, path):
    response = serve(request, path, document_root=settings.MEDIA_ROOT)
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    # Only images we re-encoded ourselves live here; never let a browser sniff one into HTML.
    response["Content-Type"] = SAFE_TYPES.get(suffix, "application/octet-stream")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; sandbox"
    response["Content-Disposition"] = "inline" if suffix in SAFE_TYPES else "attachment"
    response["Cache-Control"] = "public, max-age=86400"
    return response
