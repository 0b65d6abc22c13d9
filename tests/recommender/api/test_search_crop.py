"""Search by photo with a box (POST /api/v1/search/image/ with ``box``): the box's part of the photo
is what is searched, the answer echoes the box, bad boxes are a 400 that says what is wrong, and
the schema documents it. The catalog is tests/api/conftest.py's small real one (cold start:
backbone features answer, no version trained)."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import png
from tests.factories import upload

pytestmark = pytest.mark.django_db

SEARCH = "/api/v1/search/image/"


def side_by_side(fashion_mnist, left, right) -> bytes:
    """The two products' own Fashion-MNIST pictures in one photo, left and right."""
    (x_train, _), _ = fashion_mnist
    pictures = [x_train[int(product.sku.rsplit("-", 1)[1])] for product in (left, right)]
    buffer = io.BytesIO()
    Image.fromarray(np.hstack(pictures), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def search(client, data, **params):
    return client.post(SEARCH, {"image": upload(data), "k": 6, **params}, format="multipart")


def test_a_box_searches_its_part_of_the_photo_and_is_echoed(anon_client, small_catalog, fashion_mnist):
    left = next(p for p in small_catalog if p.category.name == "Trouser")
    right = next(p for p in small_catalog if p.category.name == "Bag")
    data = side_by_side(fashion_mnist, left, right)
    answers = {}
    for name, box in (("left", "0,0,0.5,1"), ("right", "0.5, 0, 0.5, 1")):
        response = search(anon_client, data, box=box)
        assert response.status_code == 200, response.json()
        body = response.json()
        assert body["source"] == "backbone" and len(body["results"]) == 6
        answers[name] = [r["product"] for r in body["results"]]
        assert body["box"] == {"x": 0.5 if name == "right" else 0.0, "y": 0.0, "width": 0.5, "height": 1.0}
    # The product whose own picture the box holds comes first, and mostly its own category after it.
    assert answers["left"][0]["id"] == left.pk and answers["right"][0]["id"] == right.pk
    for name, product in (("left", left), ("right", right)):
        same = sum(r["category"]["id"] == product.category_id for r in answers[name])
        assert same >= 4, (name, [r["category"]["name"] for r in answers[name]])
    whole = search(anon_client, data).json()
    assert whole["box"] is None
    ids = lambda products: [p["id"] for p in products]  # noqa: E731
    assert ids(r["product"] for r in whole["results"]) not in (ids(answers["left"]), ids(answers["right"]))
    # An empty box field is no box.
    assert search(anon_client, data, box="").json()["box"] is None


@pytest.mark.parametrize("box,code,message", [
    ("0.1,0.2,0.5", "box_invalid", "The box must be four numbers separated by commas, x,y,width,height"),
    ("0.6,0,0.5,1", "box_outside", "The box goes outside the photo: its right edge (x + width) is at 1.1"),
    ("0,0,0.5,0", "box_empty", "The box has no area: its height is 0."),
    ("0,0,0.02,0.5", "box_too_small", "The box is too small: its width is 2% of the photo"),
    ("0,0,0.1,0.5", "box_too_small", "The box is too small for this photo: it covers 4x20 pixels of its 40x40"),
])
def test_a_bad_box_is_a_400_that_says_what_is_wrong(anon_client, box, code, message):
    response = search(anon_client, png((40, 40)), box=box)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == code and [(e["field"], e["code"]) for e in body["errors"]] == [("box", code)]
    assert body["errors"][0]["message"].startswith(message), body
    assert body["detail"].startswith("box: ")


def test_the_schema_documents_the_box(anon_client):
    schema = anon_client.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/search/image/"]["post"]
    request = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    field = schema["components"]["schemas"][request]["properties"]["box"]
    assert field["type"] == "string" and "x,y,width,height" in field["description"]
    response = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    echoed = schema["components"]["schemas"][response]["properties"]["box"]
    assert echoed.get("nullable") or any(option.get("type") == "null" for option in echoed.get("oneOf", [])), echoed
