"""Property-based contract test: the live API against its own OpenAPI schema (Schemathesis).

A real server (pytest-django's live_server, a thread serving the WSGI app on the test database)
answers requests Schemathesis generates from /api/schema/, valid and invalid, as a staff user (so
every operation is reachable past its permission check). No response may be a 5xx, and every
response must be documented: its status code, content type, headers and body schema.
"""

from collections import Counter, defaultdict

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from recommender.models import ModelVersion
from tests.api.conftest import fashion_products, process_pending, train_and_activate

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.fixture
def contract_data(transactional_db, fashion_mnist, settings):
    """A small real catalog: processed images, a trained active version, an inactive product and a
    failed version, so that the generated requests also meet every kind of object."""
    products = fashion_products(fashion_mnist, classes=[1, 7, 8], per_class=8)
    process_pending()
    version = train_and_activate(settings, epochs=3)
    assert version.status == "active", version.error
    products[-1].is_active = False
    products[-1].save()
    failed = ModelVersion.objects.create(status="failed", backbone=version.backbone, weights="random",
                                         input_size=32, error="Quality gate: example")
    with_images = [p for p in products if p.images.exists()]
    return {"product": products[0].pk, "doomed": products[1].pk, "image_owner": with_images[2].pk,
            "image": with_images[2].images.first().pk, "category": products[0].category_id,
            "version": version.pk, "failed_version": failed.pk}


def real_ids(operation, data) -> dict:
    """Path parameters naming existing objects (random ids are almost always 404s)."""
    path, method = operation.path, operation.method.upper()
    if "{image_id}" in path:
        return {"id": data["image_owner"], "image_id": data["image"]}
    if path == "/api/v1/products/{id}/" and method == "DELETE":
        return {"id": data["doomed"]}
    if path.startswith("/api/v1/products/{id}"):
        return {"id": data["product"]}
    if path.startswith("/api/v1/categories/{id}"):
        return {"id": data["category"]}
    if path.startswith("/api/v1/model-versions/{id}"):
        return {"id": data["failed_version"] if path.endswith("/activate/") else data["version"]}
    return {}


@pytest.fixture
def staff_token(transactional_db, django_user_model):
    from rest_framework.authtoken.models import Token

    # A superuser: every operation is reachable past its permission check (the API checks model
    # permissions, tests/api/test_permissions.py).
    staff = django_user_model.objects.create_user("contract", password="not used", is_staff=True, is_superuser=True)
    return Token.objects.create(user=staff).key


@pytest.fixture
def api_schema(live_server, contract_data):
    return schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")


@pytest.fixture
def _purge_queued_work():
    """Trainings and image processing the generated requests queued must not reach a later test's worker."""
    yield
    from config.celery import app

    with app.connection_for_write() as conn:
        for queue in ("celery", "features", "training"):
            try:
                conn.default_channel.queue_purge(queue)
            except Exception:  # a queue that was never declared
                pass


# Schemathesis' own pytest integration (schemathesis.pytest.from_fixture) does not run under
# pytest 9 (it sets Item._nodeid), so each operation gets a plain Hypothesis test here instead;
# the cases, the requests and the checks are Schemathesis'.
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE


def rounds(operation, data):
    """(generation mode, fixed path parameters, examples) for one operation."""
    ids = real_ids(operation, data)
    if not ids:
        return [(POSITIVE, None, 12), (NEGATIVE, None, 6)]
    return [(POSITIVE, ids, 8), (POSITIVE, None, 4), (NEGATIVE, None, 6)]


def test_api_conforms_to_its_schema(api_schema, staff_token, contract_data, _purge_queued_work):
    headers = {"Authorization": f"Token {staff_token}"}
    # Deletions last, so that the other operations still find the objects.
    operations = sorted((result.ok() for result in api_schema.get_all_operations()),
                        key=lambda operation: operation.method.upper() == "DELETE")
    assert len(operations) >= 20
    failures, statuses = [], defaultdict(Counter)
    for operation in operations:
        for mode, path_parameters, examples in rounds(operation, contract_data):
            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
            @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def check(case):
                response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
                statuses[operation.label][response.status_code] += 1

            try:
                check()
            except Unsatisfiable:
                pass  # negative mode on an operation without inputs: there is nothing invalid to send
            except (Exception, BaseExceptionGroup) as exc:  # report every operation's failure at the end
                where = f"{operation.label} [{mode.value}{', existing objects' if path_parameters else ''}]"
                failures.append(f"{where}:\n{str(exc)[:3000]}")
    for label, counts in sorted(statuses.items()):
        print(f"{label}: {dict(sorted(counts.items()))}")
    assert not failures, "\n\n".join(failures)
    # The generated requests reached real objects, not only 404s.
    for label in ("GET /api/v1/products/{id}/similar/", "GET /api/v1/products/{id}/", "PATCH /api/v1/products/{id}/",
                  "GET /api/v1/model-versions/{id}/", "DELETE /api/v1/products/{id}/images/{image_id}/"):
        assert any(200 <= code < 300 for code in statuses[label]), (label, statuses[label])
