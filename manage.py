#!/usr/bin/env python
"""Django's command-line utility. Starts the embedded PostgreSQL/Redis when no URL is set."""
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from config import embedded

    try:
        embedded.bootstrap()
    except embedded.EmbeddedServiceError as exc:
        # One line the user can act on (the message says what to do), not a traceback.
        sys.exit(f"error: {exc}")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
