"""The API as a whole: token and session authentication, the error shape of an unexpected error and
of an unknown path, and the public root and schema pages (assembled in config/api_urls.py)."""

import pytest
from rest_framework.authtoken.models import Token

from tests.factories import CategoryFactory, ProductFactory

pytestmark = pytest.mark.django_db

VERSIONS = "/api/v1/model-versions/"


def test_token_endpoint_and_token_auth(anon_client, staff):
    response = anon_client.post("/api/v1/auth/token/", {"username": "sam", "password": "wrong"}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "authorization"
    response = anon_client.post("/api/v1/auth/token/", {"username": "sam",
                                                        "password": "correct horse battery staple"})
    assert response.status_code == 200
    key = response.json()["token"]
    assert Token.objects.get(user=staff).key == key
    anon_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert anon_client.get(VERSIONS).status_code == 200
    anon_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    bad = anon_client.get("/api/v1/products/")  # even a public endpoint refuses a wrong token
    assert bad.status_code == 401 and bad.json()["detail"] == "Invalid token."


def test_session_auth_needs_csrf_for_writes(staff):
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="sam", password="correct horse battery staple")
    assert client.get(VERSIONS).status_code == 200
    response = client.post("/api/v1/products/", {"sku": "x", "title": "x", "category": CategoryFactory().pk},
                           format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


def test_an_unexpected_error_is_a_logged_json_500(anon_client, monkeypatch, caplog):
    from recommender.api import views

    def broken(**kwargs):
        raise RuntimeError("index unavailable")

    monkeypatch.setattr(views, "similar_products", broken)
    response = anon_client.get(f"/api/v1/products/{ProductFactory().pk}/similar/")
    assert response.status_code == 500
    assert response.json() == {"status": 500, "code": "server_error",
                               "detail": "Internal server error; it has been logged.", "errors": []}
    assert "index unavailable" in caplog.text  # the traceback is in the log, not in the response


def test_unknown_api_path_is_a_json_404(anon_client):
    response = anon_client.get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found" and "/api/schema/swagger/" in response.json()["detail"]


def test_api_root_and_schema_pages_are_public(anon_client):
    assert anon_client.get("/api/v1/").status_code == 200
    schema = anon_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/v1/products/{id}/similar/", "/api/v1/search/image/", "/api/v1/health/",
            "/api/v1/model-versions/{id}/activate/"} <= set(paths)
    # Every operation documents its errors with the shared error shape.
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert "401" in operation["responses"], (method, path)
            for code, response in operation["responses"].items():
                if code >= "400" and path != "/api/v1/health/":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error", (method, path, code)
    assert "Retry-After" in paths["/api/v1/search/image/"]["post"]["responses"]["429"]["headers"]
    for page in ("/api/schema/swagger/", "/api/schema/redoc/"):
        response = anon_client.get(page)
        assert response.status_code == 200 and b"/api/schema/" in response.content
        assert b"cdn.jsdelivr" not in response.content and b"/static/drf_spectacular_sidecar/" in response.content


def test_schema_generates_without_warnings():
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")
