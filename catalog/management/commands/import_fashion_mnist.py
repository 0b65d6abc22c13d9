import io
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from PIL import Image
from tqdm import tqdm

from catalog.models import Product
from catalog.services import category_get_or_create, files_removed_on_error, product_image_add
from catalog.validators import normalise_image

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_fashion_mnist():
    """The real Keras loader: reads $KERAS_HOME/datasets/fashion-mnist/ (downloads if missing)."""
    from keras.datasets import fashion_mnist

    return fashion_mnist.load_data()


def demo_price(index: int) -> Decimal:
    return Decimal(9 + (index * 37) % 120) + Decimal("0.99")


class Command(BaseCommand):
    help = "Create products from Fashion-MNIST (one 28x28 PNG each), through keras.datasets.fashion_mnist."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=1000, help="how many images (default 1000)")
        parser.add_argument("--split", choices=["train", "test"], default="train")
        parser.add_argument("--offset", type=int, default=0, help="index of the first image")
        parser.add_argument("--chunk", type=int, default=200, help="products per transaction")

    def handle(self, *args, count, split, offset, chunk, **options):
        try:
            (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
        except Exception as exc:
            raise CommandError(f"Could not load Fashion-MNIST ({exc}). Offline, copy the four official "
                               "files into $KERAS_HOME/datasets/fashion-mnist/.") from exc
        images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
        stop = min(len(images), offset + count)
        if offset >= stop:
            raise CommandError(f"--offset {offset} is past the end of the {split} split ({len(images)} images).")
        categories = {i: category_get_or_create(name=name) for i, name in enumerate(CLASS_NAMES)}
        prefix = f"FMNIST-{split}-"
        existing = set(Product.objects.filter(sku__startswith=prefix).values_list("sku", flat=True))
        created = 0
        indices = [i for i in range(offset, stop) if f"{prefix}{i:05d}" not in existing]
        with tqdm(total=stop - offset, initial=stop - offset - len(indices), desc=f"fashion-mnist {split}",
                  unit="product", disable=options["verbosity"] == 0) as bar:
            for start in range(0, len(indices), chunk):
                with files_removed_on_error(), transaction.atomic():
                    for i in indices[start:start + chunk]:
                        label = int(labels[i])
                        product = Product.objects.create(
                            sku=f"{prefix}{i:05d}", title=f"{CLASS_NAMES[label]} #{i}",
                            category=categories[label], price=demo_price(i),
                            description=f"Fashion-MNIST {split} image {i} ({CLASS_NAMES[label]}).")
                        buffer = io.BytesIO()
                        Image.fromarray(images[i], mode="L").save(buffer, "PNG")
                        product_image_add(product=product, normalised=normalise_image(buffer),
                                          original_name=f"{split}-{i}.png", position=0)
                        created += 1
                bar.update(len(indices[start:start + chunk]))
        self.stdout.write(self.style.SUCCESS(
            f"{created} products created, {stop - offset - created} already there."))
