"""An HTTP probe for container healthchecks: exit 0 when every URL answers 200, 1 otherwise.

    python deploy/probe.py http://127.0.0.1:8000/readyz [URL...]

It sends what a request that came through the reverse proxy carries, so that production settings
answer it as they would a shopper's: a ``Host`` that ALLOWED_HOSTS allows (its first entry, taken
from this process's environment; "localhost" when unset or "*"), else Django answers 400, and
``X-Forwarded-Proto: https``, else DJANGO_ENV=production's redirect to HTTPS answers 301 whatever
the readiness. Redirects are not followed. Standard library only (the image has no curl); each
request times out after TIMEOUT_S.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 5.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx is an answer to report, not to follow


def host_header(allowed_hosts: str | None) -> str:
    first = next((entry.strip() for entry in (allowed_hosts or "").split(",") if entry.strip()), "")
    return first.lstrip(".") if first and first != "*" else "localhost"


def probe(url: str, *, host: str) -> tuple[int, str]:
    """(status, first line of the body); status 0 when nothing answered."""
    request = urllib.request.Request(url, headers={"Host": host, "X-Forwarded-Proto": "https"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read(200).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(200).decode(errors="replace").strip()
    except OSError as exc:  # refused, timed out, name not resolved
        return 0, str(exc)


def main(urls: list[str]) -> int:
    if not urls:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    host = host_header(os.environ.get("ALLOWED_HOSTS"))
    failed = 0
    for url in urls:
        status, body = probe(url, host=host)
        print(f"{url}: {status or 'no answer'} {body}", file=sys.stdout if status == 200 else sys.stderr)
        failed += status != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
