import os

from config import embedded

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
embedded.bootstrap()

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
