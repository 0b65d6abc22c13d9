import json

from django.core.management.base import BaseCommand, CommandError

from recommender.models import ModelVersion
from recommender.services import model_version_evaluate


class Command(BaseCommand):
    help = ("Evaluate a model version on held-out images (its validation split by default, or the "
            "images of the given products) and store the results on the version.")

    def add_arguments(self, parser):
        parser.add_argument("--version", type=int, help="version id (default: the active one)")
        parser.add_argument("--sku-prefix", help="evaluate on the images of products whose SKU starts so")

    def handle(self, *args, version=None, sku_prefix=None, **options):
        qs = ModelVersion.objects.all()
        target = qs.filter(pk=version).first() if version else qs.filter(status="active").first()
        if target is None or not target.artifacts:
            raise CommandError("No such trained version (give --version, or activate one).")
        image_ids = None
        if sku_prefix:
            from catalog.models import ProductImage

            image_ids = list(ProductImage.objects.filter(product__sku__startswith=sku_prefix)
                             .values_list("id", flat=True))
        metrics = model_version_evaluate(version=target, image_ids=image_ids)
        shown = {k: v for k, v in metrics.items() if k not in ("holdout_image_ids", "confusion_matrix", "per_class")}
        self.stdout.write(json.dumps(shown, indent=2, default=str))
        for name, row in metrics.get("per_class", {}).items():
            self.stdout.write(f"  {name:<14} precision {row['precision']:.3f}  recall {row['recall']:.3f}  n={row['support']}")
