"""The Celery app. TensorFlow is never imported here: tasks import it lazily in the worker child,
because it does not survive a fork (prefork pool)."""

import os

from config import embedded

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
embedded.bootstrap()

from celery import Celery  # noqa: E402

app = Celery("catalog")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

from recommender import worker  # noqa: E402,F401  (connects the worker process hooks)
