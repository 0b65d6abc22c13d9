"""The API tests' clients and Fashion-MNIST catalogs (defined in tests/api/conftest.py), for the
recommender's endpoints."""

from tests.api.conftest import (  # noqa: F401 (fixtures)
    anon_client,
    clients,
    small_catalog,
    staff,
    staff_client,
    trained_catalog,
    user,
    user_client,
)
