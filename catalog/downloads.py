"""Pictures named by URL, downloaded by the worker (never by the web request): the import records
an :class:`~catalog.models.ImageDownload` per (product, URL) and sends :data:`downloads_queued`
(the recommender publishes ``download_images`` after the commit); :func:`image_downloads_process`
fetches them and adds each picture like an upload (``product_image_get_or_add``: identical bytes
are stored once per product, and the new image is processed like any other).

The fetcher is built against server-side request forgery (a CSV naming http://169.254.169.254/
or http://localhost:6379/): the host is resolved once and refused when any address is private,
loopback, link-local, multicast, reserved or unspecified (or otherwise not global), unless it is
in ``settings.IMAGE_DOWNLOAD_ALLOWED_NETWORKS``; the connection goes to that validated address
itself (no second lookup that a DNS rebinding could answer differently), with the original Host
header, and for https the certificate checked against the original host name (SNI too). At most
MAX_REDIRECTS redirects, each target validated the same way; connect and read timeouts and a
deadline for the whole download; the body is streamed and cut at ``settings.MAX_UPLOAD_BYTES``
(a Content-Length over it is refused before reading); the type must be image/* and the bytes
must decode within the uploads' limits (``normalise_image``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import io
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import unquote, urljoin, urlsplit

import urllib3
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.dispatch import Signal
from django.utils import timezone

from catalog.models import ImageDownload, Product
from catalog.services import files_removed_on_error, product_image_get_or_add
from catalog.validators import NormalisedImage, normalise_image

logger = logging.getLogger(__name__)
Status = ImageDownload.Status

# Sent by the import (inside its transaction) with ``download_ids``: the pending downloads it
# recorded; recommender.signals publishes them after the commit.
downloads_queued = Signal()

MAX_REDIRECTS = 3
TIMEOUT_SECONDS = 10  # connect, and each read
DEADLINE_SECONDS = 30  # the whole download, redirects included
CHUNK_BYTES = 64 * 1024
# Attempts of a download that fails for a reason that may pass (a timeout, a 503, a reset): the
# images' own RECOMMENDER_MAX_ATTEMPTS semantics (each claim is an attempt; failed after the last),
# kept here so that the catalog needs no recommender setting. Backoff: 1, 2, 4, 8 minutes; the
# periodic recovery publishes the due ones (every minute).
MAX_ATTEMPTS = 5
BACKOFF_SECONDS = 60
# A claim older than this is a lost worker's: one download lasts at most DEADLINE_SECONDS.
CLAIM_STALE_SECONDS = 10 * DEADLINE_SECONDS
USER_AGENT = "Lookalike-image-fetcher/1"


class DownloadError(Exception):
    """Why a download failed. ``final``: retrying cannot help (a refused address, not an image)."""

    def __init__(self, message: str, *, final: bool = True):
        super().__init__(message)
        self.final = final


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as written (the Host header, SNI and the certificate's name)
    port: int
    address: str  # the validated address connected to
    path: str  # path and query

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"


def _allowed_networks():
    return [ipaddress.ip_network(text, strict=False) for text in getattr(settings, "IMAGE_DOWNLOAD_ALLOWED_NETWORKS",
                                                                          ())]


_TUNNELS = ipaddress.ip_network("fec0::/10")
_REFUSED_KINDS = {"unspecified": "an unspecified", "loopback": "a loopback", "link_local": "a link-local",
                  "multicast": "a multicast", "private": "a private", "reserved": "a reserved"}


def address_refusal(address: str, allowed=None) -> str | None:
    """Why a connection to ``address`` is refused, or None: only global unicast addresses, or
    those in the allowlist (``IMAGE_DOWNLOAD_ALLOWED_NETWORKS``)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is link-local anyway
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if ip.version == 6 and (ip.sixtofour or ip.teredo or ip in _TUNNELS):
        # 6to4 (2002::/16) and Teredo embed an IPv4 address (2002:a00:1:: is 10.0.0.1); Python
        # before 3.12.4 calls 2002::/16 global. Site-local fec0::/10 is deprecated but routable.
        return f"{ip} is a tunnelled or site-local IPv6 address"
    allowed = _allowed_networks() if allowed is None else allowed
    if any(ip.version == network.version and ip in network for network in allowed):
        return None
    for kind, words in _REFUSED_KINDS.items():  # the most specific first (a loopback address is private too)
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is {words} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def target_resolve(url: str) -> Target:
    """Parse ``url`` and resolve its host once; DownloadError when any address is refused."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        raise DownloadError(f"not a valid address ({exc})")
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("http", "https") or not host:
        raise DownloadError("only http and https addresses with a host can be downloaded")
    try:  # an internationalised name: its ASCII form for the lookup, the Host header and the certificate
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise DownloadError(f"the host name {host!r} is not a valid internationalised name ({exc})")
    if parts.username or parts.password:
        raise DownloadError("addresses with a user name or password are not downloaded")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadError(f"the host {host} cannot be resolved ({exc})", final=False)
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    allowed = _allowed_networks()
    refusals = [problem for problem in (address_refusal(address, allowed) for address in addresses) if problem]
    if refusals or not addresses:
        raise DownloadError(f"refused: {host} resolves to {', '.join(refusals) or 'no address'}; only public "
                            "addresses are downloaded (IMAGE_DOWNLOAD_ALLOWED_NETWORKS lists exceptions)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme=scheme, host=host, port=port, address=addresses[0], path=path)


def _pool(target: Target, timeout: urllib3.Timeout):
    options = {"timeout": timeout, "retries": False, "maxsize": 1}
    if target.scheme == "https":
        return urllib3.HTTPSConnectionPool(target.address, target.port, server_hostname=target.host,
                                           assert_hostname=target.host, cert_reqs="CERT_REQUIRED", **options)
    return urllib3.HTTPConnectionPool(target.address, target.port, **options)


def _response(target: Target, deadline: float):
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadError(f"took longer than {DEADLINE_SECONDS} s", final=False)
    timeout = urllib3.Timeout(connect=min(TIMEOUT_SECONDS, left), read=min(TIMEOUT_SECONDS, left))
    headers = {"Host": target.host_header, "User-Agent": USER_AGENT, "Accept": "image/*",
               "Accept-Encoding": "identity"}
    try:
        return _pool(target, timeout).urlopen("GET", target.path, headers=headers, redirect=False, retries=False,
                                              preload_content=False, assert_same_host=False)
    except urllib3.exceptions.HTTPError as exc:
        raise DownloadError(f"the connection to {target.host} failed ({type(exc).__name__}: {exc})", final=False)


def _body(response, *, limit: int, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise DownloadError(f"the file is too large ({int(declared):,} bytes declared); the limit is {limit:,} bytes")
    data = bytearray()
    try:
        # read1: whatever one socket read returns, so the deadline is checked at least every
        # TIMEOUT_SECONDS (stream() would wait for a whole chunk: 1 byte per 9 s took days).
        while chunk := response.read1(CHUNK_BYTES):
            data += chunk
            if len(data) > limit:
                raise DownloadError(f"the file is larger than the limit of {limit:,} bytes (cut while downloading)")
            if time.monotonic() > deadline:
                raise DownloadError(f"took longer than {DEADLINE_SECONDS} s", final=False)
    except urllib3.exceptions.HTTPError as exc:
        raise DownloadError(f"the download was interrupted ({type(exc).__name__})", final=False)
    return bytes(data)


class _DeadlinePassed(Exception):
    pass


@contextlib.contextmanager
def _watchdog(seconds: float):
    """Interrupt whatever blocks past ``seconds`` (a DNS lookup, headers trickled a byte at a time):
    an alarm in the main thread, where a prefork worker runs its tasks. Elsewhere (tests' threads)
    only the per-read timeouts and the checks between reads bound it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def passed(signum, frame):
        raise _DeadlinePassed()

    previous = signal.signal(signal.SIGALRM, passed)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fetch(url: str) -> bytes:
    """The bytes of an image at ``url``, following at most MAX_REDIRECTS redirects, each target
    validated, in DEADLINE_SECONDS at most; DownloadError says why not."""
    try:
        with _watchdog(DEADLINE_SECONDS + 1):
            return _fetch(url, time.monotonic() + DEADLINE_SECONDS)
    except _DeadlinePassed:
        raise DownloadError(f"took longer than {DEADLINE_SECONDS} s", final=False) from None


def _fetch(url: str, deadline: float) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        response = _response(target_resolve(url), deadline)
        try:
            location = response.headers.get("Location")
            if response.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise DownloadError(f"the server answered HTTP {response.status}",
                                    final=response.status in (401, 403, 404, 410))
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if not kind.startswith("image/"):
                raise DownloadError(f"not an image: the server says its type is {kind or 'unknown'}")
            return _body(response, limit=settings.MAX_UPLOAD_BYTES, deadline=deadline)
        finally:
            response.release_conn()
            response.close()
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects")


def fetch_image(url: str) -> NormalisedImage:
    """:func:`fetch`, then decoded and normalised with the uploads' limits."""
    data = fetch(url)
    try:
        return normalise_image(io.BytesIO(data))
    except ValidationError as exc:
        raise DownloadError(f"not a usable image: {' '.join(exc.messages)}")


def url_file_name(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1]).strip() or "download"


# --------------------------------------------------------------------------- the rows


def downloads_record(*, pairs) -> list[int]:
    """Record the downloads of ``pairs`` ((product, url)), once per (product, URL): an existing
    one is kept (a failed one, or a done one whose picture was deleted since, is made pending
    again: importing the file again finishes the job). Returns the pending ones' ids, and sends
    :data:`downloads_queued` with them (published after the commit). In the caller's transaction."""
    pairs = list(dict.fromkeys((product.pk, url) for product, url in pairs))
    if not pairs:
        return []
    ImageDownload.objects.bulk_create([ImageDownload(product_id=pk, url=url) for pk, url in pairs],
                                      ignore_conflicts=True)
    mine = Q(product_id__in={pk for pk, _ in pairs}, url__in={url for _, url in pairs})
    wanted = set(pairs)  # the query above matches every product with every URL: keep the named pairs
    named = [pk for pk, product_id, url in ImageDownload.objects.filter(mine).values_list("pk", "product_id", "url")
             if (product_id, url) in wanted]
    ImageDownload.objects.filter(pk__in=named).filter(Q(status=Status.FAILED) | Q(status=Status.DONE, image=None)).update(
        status=Status.PENDING, attempts=0, next_attempt_at=None, last_error="", updated_at=timezone.now())
    ids = sorted(ImageDownload.objects.filter(pk__in=named, status=Status.PENDING).values_list("pk", flat=True))
    if ids:
        downloads_queued.send(sender=ImageDownload, download_ids=ids)
    return ids


def downloads_retry(*, download_ids) -> list[int]:
    """Staff action: failed downloads start again with fresh attempts (sent after the commit)."""
    ids = sorted(ImageDownload.objects.filter(pk__in=download_ids, status=Status.FAILED).values_list("pk", flat=True))
    ImageDownload.objects.filter(pk__in=ids).update(status=Status.PENDING, attempts=0, next_attempt_at=None,
                                                    last_error="", updated_at=timezone.now())
    if ids:
        downloads_queued.send(sender=ImageDownload, download_ids=ids)
    return ids


def _claimable(now) -> Q:
    due = Q(status=Status.PENDING) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    return due | Q(status=Status.DOWNLOADING, updated_at__lt=now - timedelta(seconds=CLAIM_STALE_SECONDS))


def downloads_due(*, stale, limit: int) -> list[int]:
    """Downloads whose task may have been lost (pending since before ``stale``, or a claim gone
    stale) or whose retry is due: what the periodic recovery publishes again."""
    now = timezone.now()
    lost = Q(status=Status.PENDING, updated_at__lt=stale) & (Q(next_attempt_at__isnull=True) |
                                                              Q(next_attempt_at__lte=now))
    retry = Q(status=Status.PENDING, next_attempt_at__lte=now, updated_at__lt=F("next_attempt_at"))
    stuck = Q(status=Status.DOWNLOADING, updated_at__lt=now - timedelta(seconds=CLAIM_STALE_SECONDS))
    return list(ImageDownload.objects.filter(lost | retry | stuck).order_by("pk").values_list("pk", flat=True)[:limit])


def downloads_resent(*, download_ids) -> None:
    """The recovery sent these again: each is sent again only after another stale period (or its
    next retry), not on every run while a busy queue holds the first message."""
    ImageDownload.objects.filter(pk__in=download_ids, status=Status.PENDING).update(updated_at=timezone.now())


def _claim(download_id: int) -> ImageDownload | None:
    with transaction.atomic():
        download = (ImageDownload.objects.select_for_update(skip_locked=True, of=("self",)).select_related("product")
                    .filter(_claimable(timezone.now()), pk=download_id).first())
        if download is None:
            return None  # done, failed, not due yet, held by another worker, or its product deleted
        if download.status == Status.DOWNLOADING and download.attempts >= MAX_ATTEMPTS:
            # Its worker was lost (killed, or hung past the claim) on every attempt: stop here.
            download.status, download.last_error = Status.FAILED, (
                f"the worker downloading it was lost {download.attempts} times (killed, or stuck past "
                f"{CLAIM_STALE_SECONDS} s)")
            download.save(update_fields=["status", "last_error", "updated_at"])
            return None
        download.status, download.attempts = Status.DOWNLOADING, download.attempts + 1
        download.save(update_fields=["status", "attempts", "updated_at"])
    return download


def _succeed(download: ImageDownload, normalised: NormalisedImage) -> bool:
    with files_removed_on_error(), transaction.atomic():
        claim = ImageDownload.objects.select_for_update().filter(
            pk=download.pk, status=Status.DOWNLOADING, attempts=download.attempts)
        if not claim.exists():
            return False  # the claim went stale and another worker took it
        product = Product.objects.get(pk=download.product_id)
        image, _ = product_image_get_or_add(product=product, normalised=normalised,
                                            original_name=url_file_name(download.url))
        claim.update(status=Status.DONE, image=image, last_error="", next_attempt_at=None, updated_at=timezone.now())
    return True


def _fail(download: ImageDownload, error: DownloadError) -> str:
    final = error.final or download.attempts >= MAX_ATTEMPTS
    status = Status.FAILED if final else Status.PENDING
    retry_at = None if final else timezone.now() + timedelta(seconds=BACKOFF_SECONDS * 2 ** (download.attempts - 1))
    ImageDownload.objects.filter(pk=download.pk, status=Status.DOWNLOADING, attempts=download.attempts).update(
        status=status, last_error=str(error)[:2000], next_attempt_at=retry_at, updated_at=timezone.now())
    logger.info("download %s (%s) attempt %s: %s", download.pk, download.url[:200], download.attempts, error)
    return status


def image_downloads_process(*, download_ids) -> dict:
    """Download each claimable one of ``download_ids`` (one at a time: a claim lasts one
    download) and add its picture; an error is the row's (pending with a backoff, or failed).
    Safe to run twice: a download done, failed or held by another worker is skipped."""
    outcome = {"done": 0, "retry": 0, "failed": 0, "skipped": 0}
    for download_id in sorted(set(download_ids)):
        download = _claim(download_id)
        if download is None:
            outcome["skipped"] += 1
            continue
        try:
            normalised = fetch_image(download.url)
        except DownloadError as exc:
            outcome["failed" if _fail(download, exc) == Status.FAILED else "retry"] += 1
            continue
        except DatabaseError:
            raise  # the task's retry with backoff; the claim is healed by the recovery
        except Exception as exc:  # a bug or an odd input must not leave the row claimed forever
            logger.exception("download %s (%s) failed unexpectedly", download.pk, download.url[:200])
            error = DownloadError(f"unexpected error ({type(exc).__name__}: {exc})"[:500], final=False)
            outcome["failed" if _fail(download, error) == Status.FAILED else "retry"] += 1
            continue
        outcome["done" if _succeed(download, normalised) else "skipped"] += 1
    return outcome
