"""The API tests' client and trained catalog (defined in tests/api/conftest.py), for the health
endpoint's tests."""

from tests.api.conftest import anon_client, small_catalog, trained_catalog  # noqa: F401 (fixtures)
