"""Reading settings from the environment (config/settings.py): typed helpers, and a STORAGES entry."""

import json
import os


def env(name, default=None):
    return os.environ.get(name, default)


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_float(name, default):
    return float(os.environ.get(name, default))


def env_list(name, default=""):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def storage_from_env(prefix: str, **local_options) -> dict:
    """A STORAGES entry from <prefix>_STORAGE_BACKEND (a dotted class, e.g. django-storages'
    "storages.backends.s3.S3Storage") and <prefix>_STORAGE_OPTIONS (JSON, e.g. {"bucket_name": ...});
    by default the local file system."""
    backend = env(f"{prefix}_STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage")
    options = json.loads(env(f"{prefix}_STORAGE_OPTIONS", "{}"))
    if backend == "django.core.files.storage.FileSystemStorage":
        options = {**local_options, **options}
    return {"BACKEND": backend, "OPTIONS": options}
