"""Loaded with ``-p tests.bootstrap`` (pytest.ini), before pytest-django imports the settings.

Tests never touch the developer's data: everything lives in a temporary VAR_DIR with its own
embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set, as in CI against
external servers). Keras's dataset cache is primed with the official Fashion-MNIST files from
``../shared/data/fashion-mnist`` (or $FASHION_MNIST_DIR), so the real loader runs offline.
"""

import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_tmp = Path(tempfile.mkdtemp(prefix="catalog-tests-"))

os.environ["VAR_DIR"] = str(_tmp)
os.environ["MEDIA_ROOT"] = str(_tmp / "media")
os.environ["MODELS_ROOT"] = str(_tmp / "models")
os.environ["MODELS_STORAGE_ROOT"] = str(_tmp / "model-store")
os.environ["KERAS_HOME"] = str(_tmp / "keras")
os.environ["CACHE_PREFIX"] = f"test-{os.getpid()}"
os.environ.setdefault("RECOMMENDER_BACKBONE_WEIGHTS", "random")
os.environ.setdefault("RECOMMENDER_INPUT_SIZE", "32")
# The original method unless a test asks for the backbone kind (settings.RECOMMENDER["TRAINING"]):
# with random weights, "auto" (the default) would train the backbone in every test that trains.
os.environ.setdefault("RECOMMENDER_TRAINING", "head")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["DJANGO_ENV"] = "test"
os.environ.pop("CELERY_TASK_ALWAYS_EAGER", None)

FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _prime_keras_cache():
    source = Path(os.environ.get("FASHION_MNIST_DIR", ROOT.parent / "shared" / "data" / "fashion-mnist"))
    target = _tmp / "keras" / "datasets" / "fashion-mnist"
    target.mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        if (source / name).is_file():
            os.symlink(source / name, target / name)


_prime_keras_cache()

from config import embedded  # noqa: E402

embedded.bootstrap()


def _no_autovacuum_in_the_test_cluster():
    """The test suite's own PostgreSQL (never a DATABASE_URL given from outside) runs no
    autovacuum *vacuum*: pgvector 0.8.2's HNSW insert/vacuum race (recommender.db.VECTOR_INDEXES)
    met the suite's inserts in CI once and broke every later embedding insert of the run. The
    rebuild that heals it in production is tested on its own (test_maintenance.py); tests roll
    their rows back, so nothing here needs vacuum. Auto-analyze stays on (the planner's view)."""
    if os.environ.get("EMBEDDED_POSTGRES") != "1":
        return
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET autovacuum_vacuum_threshold = 2147483647")
        conn.execute("ALTER SYSTEM SET autovacuum_vacuum_insert_threshold = -1")
        conn.execute("SELECT pg_reload_conf()")


_no_autovacuum_in_the_test_cluster()


def pytest_unconfigure(config):
    embedded.shutdown()
    shutil.rmtree(_tmp, ignore_errors=True)
