import pytest


@pytest.fixture
def broker_unreachable(tmp_path):
    """For the test, the Celery app's broker is a unix socket with nothing behind it; restored after.

    Only the URL changes: the app keeps the connection and producer pools of the URL it first
    connected to, so they are dropped here and built again on the next publish (for the original
    URL, kombu hands back its existing pool)."""
    from config.celery import app

    original = app.conf.broker_url

    def point_at(url):
        app.conf.broker_url = url
        app._pool = None
        app.amqp._producer_pool = None

    point_at(f"redis+socket://{tmp_path / 'no-broker.sock'}")
    try:
        yield
    finally:
        point_at(original)


@pytest.fixture
def eager():
    """CELERY_TASK_ALWAYS_EAGER for one test (the Celery app read it from the settings at start-up)."""
    from config.celery import app

    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = False


QUEUES = ("celery", "features", "training")


@pytest.fixture
def broker():
    """A channel on the real broker; the queues are emptied before and after the test, so no worker
    of a later test receives these messages."""
    from config.celery import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in QUEUES:
            channel.queue_purge(queue)
        yield channel
        for queue in QUEUES:
            channel.queue_purge(queue)


def messages(channel, queue) -> list:
    found = []
    while (message := channel.basic_get(queue, no_ack=True)) is not None:
        found.append(message)
    return found
