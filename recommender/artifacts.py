"""Model versions' files in the "models" storage, and this host's cache of them (issue 18).

Hosts share nothing but PostgreSQL, Redis and the storages: a web server, a GPU features worker and
a trainer each keep their own MODELS_ROOT, a cache of what the "models" storage holds
(``settings.STORAGES["models"]``: the file system locally, any S3-compatible store through
django-storages in production).

Contract:

- **Publish, then record.** A training writes a version's files into its own cache folder
  (MODELS_ROOT/v<N>), then :func:`files_publish` uploads each one as ``v<N>/<sha256[:16]>-<name>``
  and returns their SHA-256s, which the training records on the version
  (``ModelVersion.checksums``). A file is readable by another host only through that record, so a
  version becomes visible exactly when all its files are stored. Names are content-addressed: a
  rewritten file (the scaler a backbone training refits) is a new object, never an overwrite that a
  reader could see half of, and a publish that is retried uploads nothing twice.
- **Fetch on first use.** :func:`file_local` returns the cached copy, or fetches it from the
  storage into a temporary file beside it and renames it into place: a crash leaves no half file
  under the real name, and two processes fetching at once both rename identical bytes. The caller
  (``runtime.artifacts_verify``) checks the SHA-256 on the bytes it loads; a cached copy that does
  not match is fetched again (:func:`file_refetch`) and a stored one that does not match is refused.
- **Bounded cache.** After a fetch or a publish, folders of versions that no longer exist or
  failed go, then the least recently used others until the cache is under MODELS_CACHE_MAX_BYTES:
  never the folder in use, one of a version that is training (its files may not be stored yet), nor
  the only copy of a version saved before the storage existed (``artifacts`` a local path, not
  ``v<N>``: published by the recovery, :func:`legacy_publish`, on the host that has it). Best
  effort, one process of a host at a time (a lock file): an error trimming never fails a load.
- :func:`files_remove` removes a version's stored objects and its cached folder (a failed
  training); an object the storage refuses to delete then is swept later (:func:`storage_sweep`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages

from recommender.models import ModelVersion

logger = logging.getLogger(__name__)

STORAGE_ALIAS = "models"
_FOLDER = re.compile(r"v(\d+)")


class ArtifactMissingError(RuntimeError):
    """A version's file is not in the "models" storage."""


def storage():
    return storages[STORAGE_ALIAS]


def published(version) -> bool:
    """Its files are in the models storage (saved since it exists), not only in one host's folder."""
    return version.artifacts == f"v{version.pk}"


def cache_dir(version_id: int) -> Path:
    """This host's cache folder of a version (where its training writes, and fetches land)."""
    return Path(settings.MODELS_ROOT) / f"v{version_id}"


def object_name(version_id: int, name: str, digest: str) -> str:
    return f"v{version_id}/{digest[:16]}-{name}"


def sha256_file(path: Path, *, copy_to: Path | None = None) -> str:
    """SHA-256 of a file; with ``copy_to``, the bytes hashed are also written there (load those:
    a file swapped after the check is never the one loaded)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle, (open(copy_to, "wb") if copy_to else contextlib.nullcontext()) as copy:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if copy is not None:
                copy.write(block)
    return digest.hexdigest()


def files_publish(*, version_id: int, folder: Path | None = None) -> dict[str, str]:
    """Upload every file of the version's cache folder (or ``folder``; temporary dot-files of an
    unfinished write left out) and return their SHA-256s by name, for the version to record."""
    checksums = {}
    for path in sorted((folder or cache_dir(version_id)).iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        digest = checksums[path.name] = sha256_file(path)
        name = object_name(version_id, path.name, digest)
        if storage().exists(name):
            continue  # content-addressed: already stored by an earlier try
        with open(path, "rb") as handle:
            saved = storage().save(name, File(handle, name=path.name))
        if saved != name:  # a storage that renamed it: the record would point at nothing
            raise RuntimeError(f"the models storage saved {name} as {saved}")
    cache_evict(keep=version_id)  # a training host trims its cache too
    return checksums


def file_local(*, version_id: int, name: str, digest: str) -> Path:
    """The cached copy of a stored file, fetched first when this host has none. Unverified: the
    caller hashes what it loads."""
    path = cache_dir(version_id) / name
    if path.is_file():
        cache_touch(version_id)
        return path
    _fetch(version_id, name, digest, path)
    cache_evict(keep=version_id)
    return path


def file_refetch(*, version_id: int, name: str, digest: str) -> Path:
    """Replace a cached copy that did not match its checksum with the stored one."""
    path = cache_dir(version_id) / name
    logger.warning("v%s: the cached %s does not match its recorded SHA-256; fetching it again from the "
                   "models storage", version_id, path)
    _fetch(version_id, name, digest, path)
    return path


def _fetch(version_id: int, name: str, digest: str, path: Path) -> None:
    stored = object_name(version_id, name, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.fetch-", dir=path.parent)
    try:
        try:
            source = storage().open(stored, "rb")
        except FileNotFoundError:
            raise ArtifactMissingError(f"{stored} is not in the models storage") from None
        with source, os.fdopen(handle, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("v%s: fetched %s from the models storage (%.1f MB in %.2f s)", version_id, name,
                path.stat().st_size / 1e6, time.monotonic() - started)


def cache_touch(version_id: int) -> None:
    """Mark a version's cached folder as used now (least recently used is by its modification time)."""
    try:
        os.utime(cache_dir(version_id))
    except FileNotFoundError:
        pass


def files_remove(*, version_id: int) -> None:
    """Remove a version's stored objects and this host's cache of them (other hosts' caches are
    evicted when the version no longer exists, or by size)."""
    try:
        _objects_delete(version_id)
    except Exception:  # an unreachable store: the sweep removes them later; the local copy goes now
        logger.exception("v%s: could not remove its files from the models storage; swept later", version_id)
    folder = cache_dir(version_id)
    shutil.rmtree(folder, ignore_errors=True)
    for leftover in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _objects_delete(version_id: int) -> int:
    store = storage()
    try:
        _, names = store.listdir(f"v{version_id}")
    except FileNotFoundError:
        return 0
    for name in names:
        store.delete(f"v{version_id}/{name}")
    return len(names)


def storage_sweep() -> list[int]:
    """Remove the stored objects of versions that no longer exist or failed (a removal that met an
    unreachable store, a version deleted in the admin). Returns their ids."""
    try:
        folders, _ = storage().listdir("")
    except FileNotFoundError:
        return []
    stored = {int(m.group(1)) for name in folders if (m := _FOLDER.fullmatch(name.rstrip("/")))}
    if not stored:
        return []
    kept = set(ModelVersion.objects.filter(pk__in=stored).exclude(status=ModelVersion.Status.FAILED)
               .values_list("pk", flat=True))
    swept = [version_id for version_id in sorted(stored - kept) if _objects_delete(version_id)]
    if swept:
        logger.info("models storage: removed the files of %s", ", ".join(f"v{pk}" for pk in swept))
    return swept


def _cached() -> dict[int, Path]:
    root = Path(settings.MODELS_ROOT)
    if not root.is_dir():
        return {}
    return {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _FOLDER.fullmatch(p.name))}


def _size(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:  # a fetch's temporary file, renamed meanwhile
            pass
    return total


def cache_evict(*, keep: int | None = None) -> list[int]:
    """Remove cached folders of deleted or failed versions, then the least recently used others
    while the cache is over MODELS_CACHE_MAX_BYTES. Returns the versions whose folders were removed
    (none when another process of this host is trimming, or on an error: logged, never raised)."""
    root = Path(settings.MODELS_ROOT)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / "evict.lock", "w") as lock:  # not a dot-file: dot-files here are unfinished writes
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # another process of this host is trimming right now
            return _evict(keep)
    except Exception:
        logger.exception("model cache: trimming %s failed; it is tried again after the next fetch", root)
        return []


def _evict(keep: int | None) -> list[int]:
    cached = _cached()
    if not cached:
        return []
    rows = {pk: (status, artifacts) for pk, status, artifacts in
            ModelVersion.objects.filter(pk__in=cached).values_list("pk", "status", "artifacts")}
    Status = ModelVersion.Status
    removed = [pk for pk in cached if pk != keep and (pk not in rows or rows[pk][0] == Status.FAILED)]
    # Spared: in use, training (not stored yet), and the only copy of a version not yet published.
    spared = {pk for pk, (status, artifacts) in rows.items() if status == Status.TRAINING or artifacts != f"v{pk}"}
    others = sorted((pk for pk in cached if pk in rows and pk not in spared | {keep} and pk not in removed),
                    key=lambda pk: cached[pk].stat().st_mtime)
    total = sum(_size(cached[pk]) for pk in cached if pk not in removed)
    for pk in others:
        if total <= settings.MODELS_CACHE_MAX_BYTES:
            break
        total -= _size(cached[pk])
        removed.append(pk)
    for pk in removed:
        shutil.rmtree(cached[pk], ignore_errors=True)
    if removed:
        logger.info("model cache: removed the folders of %s", ", ".join(f"v{pk}" for pk in removed))
    return removed
