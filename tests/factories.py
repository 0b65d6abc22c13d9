import io
import random

import factory
from django.core.files.base import ContentFile
from PIL import Image

from catalog.models import Category, Product, ProductImage
from catalog.validators import normalise_image


def png_bytes(size=(32, 32), colour=None, mode="RGB", seed=None) -> bytes:
    rng = random.Random(seed)
    colour = colour or tuple(rng.randrange(256) for _ in range(3 if mode == "RGB" else 1))
    if mode == "L" and isinstance(colour, tuple):
        colour = colour[0]
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


class CategoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Category
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Category {n}")
    slug = factory.Sequence(lambda n: f"category-{n}")


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    sku = factory.Sequence(lambda n: f"SKU-{n:05d}")
    title = factory.Sequence(lambda n: f"Product {n}")
    category = factory.SubFactory(CategoryFactory)
    price = factory.Sequence(lambda n: 10 + n % 50)


class ProductImageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ProductImage

    product = factory.SubFactory(ProductFactory)
    position = 0

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        from catalog.services import product_image_add

        seed = kwargs.pop("seed", None)
        data = kwargs.pop("data", None) or png_bytes(seed=seed if seed is not None else random.random())
        return product_image_add(product=kwargs["product"], normalised=normalise_image(io.BytesIO(data)),
                                 position=kwargs.get("position"))


def upload(data: bytes, name="photo.png", content_type="image/png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type=content_type)


__all__ = ["CategoryFactory", "ProductFactory", "ProductImageFactory", "png_bytes", "upload", "ContentFile"]
