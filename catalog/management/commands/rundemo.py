"""``make run``: the whole application on one machine, with a demo catalog.

Migrates, creates a local admin, imports Fashion-MNIST products when the catalog is empty,
starts a Celery worker (with beat) and the web server on 127.0.0.1:8000, and stops everything
on Ctrl-C or SIGTERM. The embedded PostgreSQL/Redis were started by manage.py (config.embedded) and are
stopped when this process exits.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from catalog.models import Product
from config.processes import ManagedProcess, celery_worker_command, stop_all
from recommender.backbone import IMAGENET_PROBE_TIMEOUT_S, imagenet_weights_probe

ROOT = Path(settings.BASE_DIR)
# How long stopping the worker and the web server may take (SIGTERM), before SIGKILL.
STOP_TIMEOUT_S = 20


def _interrupt(signum, frame):
    # SIGTERM (e.g. `kill`, a process manager) takes the same path as Ctrl-C: the worker and the web
    # server are stopped, and the embedded services by manage.py's atexit handlers.
    raise KeyboardInterrupt()


def banner(lines, char="="):
    width = max(len(line) for line in lines) + 4
    return "\n".join([char * width, *[f"  {line}" for line in lines], char * width])


class Command(BaseCommand):
    help = "Run the demo: web server + Celery worker + beat, with a Fashion-MNIST catalog."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--products", type=int, default=int(os.environ.get("DEMO_PRODUCTS", 1500)),
                            help="Fashion-MNIST products to import into an empty catalog")
        parser.add_argument("--concurrency", type=int, default=2, help="worker processes")

    def handle(self, *args, addr, products, concurrency, **options):
        # First thing: a SIGTERM at any point (the probe, the migrations, the demo import) must end
        # in the cleanup below and in manage.py's atexit handlers, not kill this process outright.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self._run(addr, products, concurrency)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self, addr, products, concurrency):
        env = dict(os.environ)
        # 28x28 demo images lose nothing at 64x64, and ResNet50 runs ~6x faster there than at 224.
        env.setdefault("RECOMMENDER_INPUT_SIZE", "64")
        # The demo checks for a catalog that needs a model every 30 s (production: hourly).
        env.setdefault("RETRAIN_CHECK_EVERY_SECONDS", "30")
        env.setdefault("RECOVER_EVERY_SECONDS", "30")
        env["RECOMMENDER_BACKBONE_WEIGHTS"] = self._weights(env)
        os.environ.update({k: env[k] for k in ("RECOMMENDER_INPUT_SIZE", "RECOMMENDER_BACKBONE_WEIGHTS")})

        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        self._admin()
        children = []
        try:
            children.append(self._spawn("worker", celery_worker_command(
                concurrency=concurrency, heartbeat=True,
                beat_schedule=Path(settings.VAR_DIR) / "celerybeat-schedule"), env))
            if not Product.objects.exists():
                self.stdout.write(f"Empty catalog: importing {products} Fashion-MNIST products...")
                # In a child process: the loader imports Keras, which this long-lived process
                # should not keep in memory.
                subprocess.run([sys.executable, "manage.py", "import_fashion_mnist", f"--count={products}",
                                "--split=train"], cwd=ROOT, env=env, check=True)
            # DEBUG is off unless asked for (config/settings.py); the demo's runserver asks for it (static
            # files, tracebacks on a laptop), its worker does not (DEBUG keeps every query in memory).
            web_env = {**env, "DEBUG": env.get("DEBUG", "1")}
            children.append(self._spawn("web", [sys.executable, "manage.py", "runserver", addr, "--noreload"],
                                        web_env))
            self.stdout.write(self.style.SUCCESS(banner([
                f"Shop:   http://{addr}/",
                f"Admin:  http://{addr}/admin/  (user: admin, password: admin)",
                f"Recommender dashboard: http://{addr}/admin/recommender/modelversion/",
                f"Backbone weights: {env['RECOMMENDER_BACKBONE_WEIGHTS']}, input size {env['RECOMMENDER_INPUT_SIZE']}",
                "Images are processed by the worker now; a model trains automatically once they are.",
                "Press Ctrl-C to stop everything.",
            ])))
            self._wait(children)
        except KeyboardInterrupt:
            pass
        finally:
            # A second SIGTERM must not cut the (bounded: STOP_TIMEOUT_S, then SIGKILL) stop short.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._stop(children)
            self.stdout.write("Stopped the web server and the worker; stopping the embedded services.")

    def _weights(self, env):
        weights = env.get("RECOMMENDER_BACKBONE_WEIGHTS")
        if weights:
            return weights
        self.stdout.write("Checking that the ImageNet weights of ResNet50 can be loaded "
                          f"(at most {IMAGENET_PROBE_TIMEOUT_S} s)...")
        ok, reason = imagenet_weights_probe(env=env)
        if ok:
            return "imagenet"
        self.stderr.write(self.style.ERROR(banner([
            "WARNING: the ImageNet weights of ResNet50 could not be loaded:",
            reason,
            "The demo falls back to RECOMMENDER_BACKBONE_WEIGHTS=random (seeded random weights).",
            "Similar items will be much worse than with ImageNet weights; every model version",
            "records this. Set RECOMMENDER_BACKBONE_WEIGHTS=imagenet or a weights file path.",
        ], char="!")))
        return "random"

    def _admin(self):
        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
            self.stdout.write("Created the local superuser admin / admin (change it in the admin).")

    def _spawn(self, name, cmd, env):
        # Own process group, so Ctrl-C reaches only us and we stop children in order.
        return ManagedProcess(cmd, name=name, env=env, cwd=ROOT)

    def _wait(self, children):
        while True:
            for child in children:
                if child.poll() is not None:
                    self.stderr.write(f"The {child.name} process exited with code {child.returncode}; stopping.")
                    return
            time.sleep(0.5)

    def _stop(self, children):
        stop_all(children, timeout=STOP_TIMEOUT_S)
