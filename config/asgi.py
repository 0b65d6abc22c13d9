import os

from config import embedded

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
embedded.bootstrap()

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
