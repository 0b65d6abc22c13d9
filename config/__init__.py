"""Project configuration: settings, URLs, WSGI/ASGI apps, the Celery app and embedded services."""
