import time

from django.core.management.base import BaseCommand
from tqdm import tqdm

from recommender.models import ModelVersion
from recommender.services.training import model_version_start, model_version_train

Phase = ModelVersion.Phase


class Command(BaseCommand):
    help = ("Train a new model version on the catalog's features. By default the training is queued "
            "for a worker and this command follows its progress; --inline trains in this process.")

    def add_arguments(self, parser):
        parser.add_argument("--inline", action="store_true", help=(
            "train here instead of on a worker (the backbone kind still sends its re-extraction to the features "
            "queue, and extracts here what no features worker has taken after 120 s)"))
        parser.add_argument("--no-wait", action="store_true", help="queue it and return at once")
        parser.add_argument("--kind", choices=ModelVersion.Kind.values,
                            help="head or backbone (default: RECOMMENDER_TRAINING decides)")

    def handle(self, *args, inline=False, no_wait=False, kind=None, **options):
        version = model_version_start(trigger="manual (train_model command)", kind=kind, publish=not inline)
        self.stdout.write(f"v{version.pk}: {version.get_kind_display()} ({version.kind_reason}); backbone "
                          f"{version.backbone} (weights: {version.weights})")
        if inline:
            version = model_version_train(version_id=version.pk)
        elif not no_wait:
            version = self._follow(version, quiet=options["verbosity"] == 0)
        else:
            return
        style = self.style.SUCCESS if version.status == ModelVersion.Status.ACTIVE else self.style.WARNING
        self.stdout.write(style(f"v{version.pk} is {version.status}. accuracy={version.val_accuracy} "
                                f"precision@6={version.metrics.get('precision_at_6')} {version.error}"))

    def _follow(self, version, quiet):
        with tqdm(total=1, desc="queued", disable=quiet) as bar:
            # "ready" is a moment between training and the gate's verdict: follow until the verdict.
            while version.status == ModelVersion.Status.TRAINING or (
                    version.status == ModelVersion.Status.READY and version.progress.get("phase") != Phase.DONE):
                time.sleep(1)
                version.refresh_from_db()
                p = version.progress
                if p.get("phase") == Phase.TRAINING and p.get("epochs"):
                    bar.total, bar.n = p["epochs"], p.get("epoch", 0)
                elif p.get("phase") == Phase.EMBEDDING and p.get("images_total"):
                    bar.total, bar.n = p["images_total"], p.get("images_embedded", 0)
                bar.set_description(p.get("phase", Phase.QUEUED))
                bar.refresh()
        return version
