"""Reads of the recommender, by subject. This package is what other apps (``catalog``, ``config``)
use of the recommender; a test (tests/test_layout.py) keeps it that way.

- ``similarity``: similar products and search by image (pgvector, or backbone features cold)
- ``answers``: whole product pages and API answers, cached and served again while still true
- ``versions``: the active version, a training's progress, training readiness, retrain reasons
- ``ingestion``: the image-processing backlog, its rate and ETA
- ``features``: stored backbone features (training, embedding and evaluation read them)
"""

from recommender.selectors.ingestion import ingestion_counts, ingestion_status
from recommender.selectors.similarity import (
    ImageSearchResult,
    SimilarItem,
    SimilarResult,
    search_by_image,
    similar_products,
)
from recommender.selectors.versions import active_version, training_version

__all__ = ["ImageSearchResult", "SimilarItem", "SimilarResult", "active_version", "ingestion_counts",
           "ingestion_status", "search_by_image", "similar_products", "training_version"]
