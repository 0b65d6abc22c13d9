import json

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recommender.models import ModelVersion
from recommender.services.evaluation import model_version_evaluate


class Command(BaseCommand):
    help = ("Evaluate a model version on held-out images (its validation split by default, or the "
            "images of the given products, less those it trained on) and store the results on the version.")

    def add_arguments(self, parser):
        parser.add_argument("--model-version", dest="model_version", type=int,
                            help="model version id (default: the active one)")
        parser.add_argument("--sku-prefix", help="evaluate on the images of products whose SKU starts so")

    def handle(self, *args, model_version=None, sku_prefix=None, **options):
        qs = ModelVersion.objects.all()
        target = qs.filter(pk=model_version).first() if model_version else qs.filter(status="active").first()
        if target is None or not target.artifacts:
            raise CommandError("No such trained version (give --model-version, or activate one).")
        image_ids = None
        if sku_prefix:
            from catalog.models import ProductImage

            image_ids = list(ProductImage.objects.filter(product__sku__startswith=sku_prefix)
                             .values_list("id", flat=True))
        bars = {}

        def progress(stage, done, total):
            if stage not in bars:
                bars[stage] = tqdm(total=total, desc=stage, disable=options["verbosity"] == 0)
            bars[stage].n = done
            bars[stage].refresh()

        try:
            metrics = model_version_evaluate(version=target, image_ids=image_ids, progress=progress)
        finally:
            for bar in bars.values():
                bar.close()
        if image_ids is not None:
            self.stdout.write(f"{metrics['images']} images evaluated; {metrics['excluded_training_images']} left "
                              f"out because v{target.pk} trained on them. Stored under metrics['custom'].")
        shown = {k: v for k, v in metrics.items() if k not in ("holdout_image_ids", "confusion_matrix", "per_class")}
        self.stdout.write(json.dumps(shown, indent=2, default=str))
        for name, row in metrics.get("per_class", {}).items():
            self.stdout.write(f"  {name:<14} precision {row['precision']:.3f}  recall {row['recall']:.3f}  n={row['support']}")
