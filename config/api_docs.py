"""The API's OpenAPI document settings (drf-spectacular), read by config.settings."""

SPECTACULAR_SETTINGS = {
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "TITLE": "Visual-similarity catalog API",
    "DESCRIPTION": (
        "Products, similar items by image embedding, search by photo, recommender control.\n\n"
        "Reading the catalog, similar items, search by photo and health are public; everything else needs a "
        "staff user: a session (sign in at /admin/) or a token from POST /api/v1/auth/token/, sent as "
        "`Authorization: Token <key>`. Every error is JSON: `{status, code, detail, errors: [{field, code, "
        "message}]}`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v[0-9]+",  # tags from the first path segment after it (products, ...)
    # Separate request/response components: write-only upload fields never appear in responses.
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ImageStatusEnum": "catalog.models.ProductImage.Status",
        "ModelVersionStatusEnum": "recommender.models.ModelVersion.Status",
        "ResultSourceEnum": ["model", "backbone", "none"],
        "DuplicatePairKindEnum": "catalog.models.DuplicatePair.Kind",
        "KindEnum": "recommender.models.ModelVersion.Kind",  # its name before DuplicatePair.Kind existed
        "DuplicatePairStatusEnum": "catalog.models.DuplicatePair.Status",
    },
    "TAGS": [
        {"name": "categories", "description": "The catalog's categories (public)."},
        {"name": "products", "description": "Products, their images and similar products. Reads are public; "
                                            "writes need staff."},
        {"name": "search", "description": "Search by photo (public, throttled)."},
        {"name": "duplicates", "description": "Possible duplicate products and the decisions on them (staff)."},
        {"name": "model-versions", "description": "The recommender's model versions and training (staff)."},
        {"name": "health", "description": "Status of the database, Redis, workers and the active model."},
        {"name": "auth", "description": "API tokens."},
    ],
}
