"""Celery worker process hooks: a features worker loads its models when it starts.

Contract: the preload runs in a background thread of each pool process (``worker_process_init``
must return within Celery's few seconds, and loading takes longer), holding the same locks as a
task's load (``backbone.get_backbone``, ``runtime.load_head``), so a batch that arrives meanwhile
waits for that one load instead of doing a second. A failure is logged and changes nothing: the
first batch loads as it always did. Only workers that consume the ``features`` queue preload (a
worker of the training queue alone, and web processes, never do; the default worker of every
queue does), only in the prefork pool (``worker_process_init``; ``-P solo`` or ``threads`` load
on the first batch), and only with ``RECOMMENDER_WORKER_PRELOAD=1``. Nothing here imports Django
models or TensorFlow at import time (config.celery imports it).
"""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import celeryd_after_setup, worker_process_init

logger = logging.getLogger(__name__)

FEATURES_QUEUE = "features"
_PRELOAD_ENV = "RECOMMENDER_PRELOAD_THIS_WORKER"  # set by the worker's main process, read by its children


@celeryd_after_setup.connect(dispatch_uid="recommender_preload_queues")
def _preload_decide(sender, instance, **kwargs):
    # Sent after -Q is applied and before the pool forks its processes, which inherit the variable.
    consumed = instance.app.amqp.queues.consume_from or instance.app.amqp.queues
    os.environ[_PRELOAD_ENV] = "1" if preload_wanted(queues=consumed) else "0"


def preload_wanted(*, queues) -> bool:
    """Does a worker consuming ``queues`` (names) extract features, and so want its models loaded?"""
    return FEATURES_QUEUE in set(queues)


@worker_process_init.connect(dispatch_uid="recommender_preload")
def _preload_start(**kwargs):
    if os.environ.get(_PRELOAD_ENV) == "1":
        threading.Thread(target=_preload_thread, name="recommender-preload", daemon=True).start()


def _preload_thread() -> None:
    from django.db import connection

    try:
        models_preload()
    finally:
        connection.close()  # this thread's own connection


def models_preload() -> bool:
    """Load the serving backbone and the active version's head into this process; True when both
    (or the backbone, with no active version) are loaded."""
    from recommender import runtime
    from recommender.conf import config
    from recommender.selectors.versions import active_version, serving_backbone

    try:
        if not config().worker_preload:
            return False
        active = active_version()
        spec, identity = serving_backbone(active)
        runtime.backbone_of(spec)
        if active is not None and active.backbone == identity:
            runtime.load_head(active)
        logger.info("preloaded backbone %s%s", identity, f" and the head of v{active.pk}" if active else "")
        return True
    except Exception:  # the first batch loads (and reports) it instead
        logger.warning("could not preload the models; the first batch will load them", exc_info=True)
        return False
